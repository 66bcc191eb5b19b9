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

    def handle(self, *args, username, email, days, **options):
        User = get_user_model()
        admin = User.objects.filter(username=username).first()
        if admin is None:
            password = os.environ.get("DAQBROKER_ADMIN_PASSWORD") or secrets.token_urlsafe(12)
            admin = User.objects.create_superuser(username=username, email=email, password=password)
            if os.environ.get("DAQBROKER_ADMIN_PASSWORD"):
                self.stdout.write(f"Created admin user {username!r} with the password from DAQBROKER_ADMIN_PASSWORD.")
            else:
                self.stdout.write(self.style.SUCCESS(f"Created admin user {username!r} with password: {password}"))
                self.stdout.write("  (shown only this once; change it with: python manage.py changepassword admin)")
        else:
            self.stdout.write(f"Admin user {username!r} exists (password unchanged).")

        instrument, source = demo.register(admin)
        if Sample.objects.filter(channel__instrument=instrument).exists():
            self.stdout.write(f"Demo instrument {instrument.slug!r} already has history.")
        else:
            stored = demo.seed_history(instrument, days=days)
            self.stdout.write(f"Wrote {stored:,} readings of history for {instrument.slug!r}.")
        self.stdout.write(f"The demo instrument is collected from {source.config['path']}.")
