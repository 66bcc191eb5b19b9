import contextlib

from django.core.management.base import BaseCommand

from collection import demo


class Command(BaseCommand):
    help = "Run the simulated weather station: append a CSV line to the demo folder every few seconds."

    def add_arguments(self, parser):
        parser.add_argument("--interval", type=float, default=2.0, help="seconds between lines (default 2)")
        parser.add_argument("--lines", type=int, default=None, help="stop after this many lines (default: never)")

    def handle(self, *args, interval, lines, **options):
        self.stdout.write(f"Simulated weather station writing to {demo.demo_dir() / demo.FILE_NAME} every {interval} s")
        with contextlib.suppress(KeyboardInterrupt):
            demo.run_simulator(interval, iterations=lines)
