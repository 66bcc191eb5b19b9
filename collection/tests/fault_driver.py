"""A plain Python process that makes the same service calls a Celery worker or the dispatcher makes, for the
fault tests (``test_faults_*.py``): it runs against whatever ``DATABASE_URL`` it is given and prints one
``RESULT {json}`` line. The fault itself is real (a stopped database, a SIGSTOP, a raise); the hooks below
only decide the instant, from outside the code under test:

    python -m collection.tests.fault_driver setup FOLDER [--sources N]
    python -m collection.tests.fault_driver collect SOURCE_ID [--pause-after-collect | --freeze-before-commit]
    python -m collection.tests.fault_driver claim
    python -m collection.tests.fault_driver state SOURCE_ID

``--pause-after-collect``: the run has its lease and has read its input; it prints ``PAUSED`` and waits for a
line on stdin before committing (the test stops the database in between). ``--freeze-before-commit``: the
run has written its readings and the source's new cursor inside its transaction (row locks held); it prints
``FREEZING`` and stops itself with SIGSTOP before the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time

import django


def _setup(folder: str, sources: int) -> dict:
    from django.contrib.auth import get_user_model

    from instruments.choices import SourceKind
    from instruments.models import Channel, DataSource, Instrument

    out = []
    owner = get_user_model().objects.create(username=f"fault-owner-{os.getpid()}")
    instrument = Instrument.objects.create(
        owner=owner, name=f"fault station {os.getpid()}", slug=f"fault-station-{os.getpid()}"
    )
    for n in range(sources):
        source = DataSource.objects.create(
            instrument=instrument,
            kind=SourceKind.FILE,
            name=f"logger {n}",
            config={
                "path": os.path.join(folder, str(n)),
                "pattern": "data*.csv",
                "columns": ["time", "a", "b"],
                "timestamp": {"columns": ["time"]},
            },
        )
        channels = {
            field: Channel.objects.create(
                instrument=instrument, name=f"{field} {n}", slug=f"{field}{n}", source=source, source_field=field
            ).pk
            for field in ("a", "b")
        }
        out.append({"source": source.pk, "channels": channels})
    return {"sources": out}


def _collect(source_id: int, *, pause: bool, freeze: bool) -> dict:
    from collection.models import CollectionRun
    from collection.services import collect

    if pause:
        collector = collect.COLLECTORS["file"]
        original = collector.collect

        def paused(*args, **kwargs):
            collected = original(*args, **kwargs)
            print("PAUSED", flush=True)
            sys.stdin.readline()
            return collected

        collector.collect = paused  # this process only
    if freeze:
        original_save = CollectionRun.save

        def freezing_save(run, *args, **kwargs):
            if run.status == "success":
                print("FREEZING", flush=True)
                os.kill(os.getpid(), signal.SIGSTOP)
            return original_save(run, *args, **kwargs)

        CollectionRun.save = freezing_save
    run = collect.collect_source(source_id)
    if run is None:
        return {"run": None}
    return {"run": run.pk, "status": run.status, "accepted": run.accepted, "error": run.error}


def _state(source_id: int) -> dict:
    from collection.models import CollectionRun, Sample
    from instruments.models import DataSource

    source = DataSource.objects.get(pk=source_id)
    return {
        "lease_owner": source.lease_owner,
        "lease_expires": source.lease_expires.isoformat() if source.lease_expires else None,
        "consecutive_failures": source.consecutive_failures,
        "last_error": source.last_error,
        "next_run_at": source.next_run_at.isoformat() if source.next_run_at else None,
        "runs": list(
            CollectionRun.objects.filter(source_id=source_id).order_by("id").values("status", "error", "accepted")
        ),
        "samples": {
            str(channel.pk): [
                [ts, value] for ts, value in Sample.objects.filter(channel=channel).values_list("ts", "value")
            ]
            for channel in source.channels.all()
        },
    }


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("command", choices=["setup", "collect", "claim", "state"])
    parser.add_argument("arg", nargs="?")
    parser.add_argument("--sources", type=int, default=1)
    parser.add_argument("--pause-after-collect", action="store_true")
    parser.add_argument("--freeze-before-commit", action="store_true")
    args = parser.parse_args(argv)
    os.environ.setdefault("DJANGO_SETTINGS_MODULE", "daqbroker_site.settings")
    django.setup()
    from collection.services import collect

    started = time.perf_counter()
    if args.command == "setup":
        result = _setup(args.arg, args.sources)
    elif args.command == "collect":
        result = _collect(int(args.arg), pause=args.pause_after_collect, freeze=args.freeze_before_commit)
    elif args.command == "claim":
        result = {"claimed": collect.claim_due_sources()}
    else:
        result = _state(int(args.arg))
    if args.command in ("collect", "claim"):
        result["seconds"] = round(time.perf_counter() - started, 4)  # the service call alone (for bench/faults.py)
    print("RESULT " + json.dumps(result, default=str), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
