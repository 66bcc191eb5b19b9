"""``manage.py run_stream_collectors``: the long-lived process reading streaming (MQTT, OPC UA) sources.

Runs beside the Celery worker (docs/operations.md, "Processes"); see ``collection.streams``. SIGTERM or
SIGINT stops it: each source's connection is closed and its lease released, and what the broker sent and
was not stored yet stays with the broker for the next start.
"""

from __future__ import annotations

import signal

from django.core.management.base import BaseCommand

from collection.streams import StreamSupervisor


class Command(BaseCommand):
    help = (
        "Read streaming sources (MQTT, OPC UA) continuously: one connection per source, picking up added, changed "
        "and removed sources every DAQBROKER_STREAM_RELOAD_SECONDS. Run it beside the Celery worker."
    )

    def add_arguments(self, parser):
        parser.add_argument(
            "--reload-seconds", type=float, default=None, help="override DAQBROKER_STREAM_RELOAD_SECONDS"
        )

    def handle(self, *args, reload_seconds=None, **options):
        supervisor = StreamSupervisor(reload_seconds)

        def stop(signum, frame):
            supervisor.stop_event.set()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
        supervisor.run()
