"""The Celery application shared by every worker and the beat scheduler."""

import os
from pathlib import Path

from celery import Celery

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "daqbroker_site.settings")

app = Celery("daqbroker")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.autodiscover_tasks()


def _prepare_filesystem_broker() -> None:
    """kombu's filesystem transport expects its folders to exist."""
    options = app.conf.broker_transport_options or {}
    if str(app.conf.broker_url).startswith("filesystem://"):
        for key in ("data_folder_in", "data_folder_out", "processed_folder", "control_folder"):
            if options.get(key):
                Path(options[key]).mkdir(parents=True, exist_ok=True)


_prepare_filesystem_broker()
