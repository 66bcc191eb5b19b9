import os
import secrets

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from collection import demo
from collection.models import Sample


class Command(BaseCommand):
    help = (
        "Create the admin user (password from DAQBROKER_ADMIN_PASSWORD, or generated and printed once), "
        "the demo weather station with its channels, and a week of its history. Safe to run again."
    )

    def add_arguments(self, parser):
        parser.add_argument("--username", default=os.environ.get("DAQBROKER_ADMIN_USER", "admin"))
        parser.add_argument("--email", default=os.environ.get("DAQBROKER_ADMIN_EMAIL", "admin@localhost"))
        parser.add_argument("--days", type=int, default=7, help="days of history to write (default 7)")
        parser.add_argument(
            "--url", default="", help="where the web server will listen: end with the start banner for that address"
        )

    def handle(self, *args, username, email, days, url, **options):
        User = get_user_model()
        admin = User.objects.filter(username=username).first()
        change_it = f".venv/bin/python manage.py changepassword {username}"
        if admin is None:
            password = os.environ.get("DAQBROKER_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
            admin = User.objects.create_superuser(username=username, email=email, password=password)
            if os.environ.get("DAQBROKER_ADMIN_PASSWORD"):
                self.stdout.write(f"Created admin user {username!r} with the password from DAQBROKER_ADMIN_PASSWORD.")
                login = f"Log in as {username} with the password in DAQBROKER_ADMIN_PASSWORD."
            else:
                self.stdout.write(self.style.SUCCESS(f"Created admin user {username!r} with password: {password}"))
                self.stdout.write(f"  (shown only this once; change it with: {change_it})")
                login = f"Log in as {username} with the password printed above (shown only this once)."
        else:
            self.stdout.write(f"Admin user {username!r} exists (password unchanged).")
            login = (
                f"Log in as {username} with the password you were given when it was created (forgotten? {change_it})."
            )

        instrument, source = demo.register(admin)
        run_list = demo.register_runs(instrument, admin)
        self.stdout.write(f"Demo run list {run_list.slug!r}: {run_list.runs.count()} runs.")
        if Sample.objects.filter(channel__instrument=instrument).exists():
            self.stdout.write(f"Demo instrument {instrument.slug!r} already has history.")
        else:
            stored = demo.seed_history(instrument, days=days)
            self.stdout.write(f"Wrote {stored:,} readings of history for {instrument.slug!r}.")
        self.stdout.write(f"The demo instrument is collected from {source.config['path']}.")
        if url:
            self.stdout.write(banner(url, login))


def banner(url: str, login: str) -> str:
    """What ``scripts/run`` shows before it starts the processes."""
    return (
        f"\n  DAQBroker is starting at {url} (the administrators' admin at {url}admin/).\n"
        f"  {login}\n"
        "  The demo weather station gets a reading every few seconds, collected by the Celery worker.\n"
        "  Press Ctrl-C to stop everything.\n"
    )
