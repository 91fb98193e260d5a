"""Settings of the example site: no database, one view."""

from __future__ import annotations

import os

SECRET_KEY = os.environ.get("DJANGO_SECRET_KEY", "insecure-example-only")
DEBUG = os.environ.get("DJANGO_DEBUG") == "1"
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]
ROOT_URLCONF = "imagesite.urls"
WSGI_APPLICATION = "imagesite.wsgi.application"
INSTALLED_APPS: list[str] = []
MIDDLEWARE = ["django.middleware.common.CommonMiddleware"]
DATABASES: dict[str, dict[str, str]] = {}
USE_TZ = True

# The diffusionmaster client (see imagesite/diffusion.py). Without a URL the client
# talks to the production service.
DIFFUSIONMASTER_API_KEY = os.environ.get("DIFFUSIONMASTER_API_KEY")
DIFFUSIONMASTER_URL = os.environ.get("DIFFUSIONMASTER_URL")
DIFFUSIONMASTER_TIMEOUT = 60.0  # seconds a request may wait for its image
