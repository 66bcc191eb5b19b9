from django.core.management.base import BaseCommand, CommandError

from collection.services.rollups import rebuild_rollups, refresh_rollups
from instruments.choices import ChannelKind
from instruments.models import Channel


class Command(BaseCommand):
    help = (
        "Rollup tiers. 'refresh' works through the backlog now, in this process (what the worker does after "
        "each ingest); 'rebuild' recomputes every bucket of the chosen channels from their raw readings."
    )

    def add_arguments(self, parser):
        parser.add_argument("action", choices=["refresh", "rebuild"])
        parser.add_argument("--instrument", action="append", default=[], help="slug; repeat for several")
        parser.add_argument("--all", dest="everything", action="store_true", help="rebuild every numeric channel")

    def handle(self, *args, action, instrument, everything, **options):
        if action == "refresh":
            rounds = spans = rows = 0
            while True:
                result = refresh_rollups()
                rounds, spans, rows = rounds + 1, spans + result.spans, rows + result.raw_rows
                if not result.remaining:
                    break
            self.stdout.write(f"Refreshed {spans} span(s) in {rounds} round(s), reading {rows:,} raw readings.")
            return
        if not instrument and not everything:
            raise CommandError("name --instrument SLUG (repeatable) or --all")
        channels = Channel.objects.exclude(kind=ChannelKind.TEXT)
        if instrument:
            channels = channels.filter(instrument__slug__in=instrument)
        ids = list(channels.order_by("pk").values_list("pk", flat=True))
        rows = rebuild_rollups(ids)
        self.stdout.write(f"Rebuilt the tiers of {len(ids)} channel(s) from {rows:,} raw readings.")
