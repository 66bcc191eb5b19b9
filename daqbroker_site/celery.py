"""The Celery application shared by every worker and the beat scheduler."""

import os
from logging.config import dictConfig
from pathlib import Path

from celery import Celery
from celery.signals import setup_logging
from django.conf import settings

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


@setup_logging.connect
def use_the_logging_setting(**kwargs) -> None:
    """Worker and beat log as the web process does, through Django's LOGGING (DAQBROKER_LOG_LEVEL), instead
    of Celery's own set-up (``--loglevel``): one format, one level, and Celery's per-task lines at DEBUG."""
    dictConfig(settings.LOGGING)
