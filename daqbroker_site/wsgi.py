"""
WSGI config for daqbroker_site project.

It exposes the WSGI callable as a module-level variable named ``application``: Django's handler inside
``BoundedWrites`` (a client that stops reading is dropped after DAQBROKER_SEND_TIMEOUT_SECONDS).

For more information on this file, see
https://docs.djangoproject.com/en/5.2/howto/deployment/wsgi/
"""

import os

from django.conf import settings
from django.core.wsgi import get_wsgi_application

from daqbroker_site.bounded_writes import BoundedWrites

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "daqbroker_site.settings")

application = BoundedWrites(get_wsgi_application(), lambda: settings.DAQBROKER_SEND_TIMEOUT_SECONDS)
