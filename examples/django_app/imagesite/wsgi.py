"""The WSGI application of the example site.

Served by gunicorn, from ``examples/django_app``::

    DIFFUSIONMASTER_URL=ws://127.0.0.1:8765/v1/ DIFFUSIONMASTER_API_KEY=... \\
        gunicorn --preload --workers 4 imagesite.wsgi

``--preload`` is safe: a client made and used in the master before the fork opens
a session and download connections of its own in each worker
(tests/test_gunicorn.py runs this site so, and checks that every response carries
its own image).
"""

from __future__ import annotations

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "imagesite.settings")
application = get_wsgi_application()
