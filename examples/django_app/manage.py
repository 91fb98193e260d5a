#!/usr/bin/env python
"""Django's command-line utility for the example site.

    diffusionmaster emulator --port 8765 --api-key k      # in another terminal
    DIFFUSIONMASTER_URL=ws://127.0.0.1:8765/v1/ DIFFUSIONMASTER_API_KEY=k \\
        python manage.py runserver
    curl -o fox.jpg "http://127.0.0.1:8000/generate?prompt=a+red+fox"
"""

from __future__ import annotations

import os
import sys

if __name__ == "__main__":
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesite.settings")
    from django.core.management import execute_from_command_line

    execute_from_command_line(sys.argv)
