"""A minimal Django site that generates images with one shared diffusionmaster client."""
