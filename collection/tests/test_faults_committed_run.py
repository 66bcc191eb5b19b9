"""Fault: something raises after a run committed (issue 13, item 7): a soft time limit arriving just after
the commit, a failing follow-up. The readings, the cursor and the run's success are stored; the run stays
recorded as committed, no failure is counted and the next run is not pushed back. All engines."""

from __future__ import annotations

import pytest
from celery.exceptions import SoftTimeLimitExceeded

from collection.choices import RunStatus
from collection.models import CollectionRun, Sample
from collection.services import collect
from collection.services.ingest import samples_ingested
from collection.tests.faults import expected_readings, write_readings
from instruments.models import DataSource
from instruments.tests.factories import make_channel, make_instrument, make_source

# Real commits: the exception must come after the transaction really committed (on_commit runs).
pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def logger_source(tmp_path):
    instrument = make_instrument()
    source = make_source(
        instrument,
        config={
            "path": str(tmp_path),
            "pattern": "data*.csv",
            "columns": ["time", "a", "b"],
            "timestamp": {"columns": ["time"]},
        },
    )
    channels = [make_channel(instrument, slug=f, source=source, source_field=f) for f in ("a", "b")]
    return source, channels


def stored(channel) -> list[list]:
    return [
        [ts, value] for ts, value in Sample.objects.filter(channel=channel).order_by("ts").values_list("ts", "value")
    ]


def test_a_soft_time_limit_raised_after_the_commit_leaves_the_run_recorded_as_committed(logger_source, tmp_path):
    source, (a, b) = logger_source
    write_readings(tmp_path, 0, 2000)

    def time_is_up(**kwargs):
        raise SoftTimeLimitExceeded()  # as Celery raises it, at whatever instant the limit falls

    samples_ingested.connect(time_is_up, dispatch_uid="test-time-is-up")  # runs once the run has committed
    try:
        run = collect.collect_source(source.pk)
    finally:
        samples_ingested.disconnect(dispatch_uid="test-time-is-up")

    assert run is not None and run.status == RunStatus.SUCCESS
    recorded = CollectionRun.objects.get()
    assert recorded.status == RunStatus.SUCCESS and recorded.error == "" and recorded.accepted == 4000
    source.refresh_from_db()
    assert source.consecutive_failures == 0 and source.last_error == ""
    assert source.next_run_at is None  # still due at once: not pushed back by a backoff
    assert source.lease_owner == "" and source.cursor  # the cursor moved with the readings
    expected_a, expected_b = expected_readings(0, 2000)
    assert stored(a) == expected_a and stored(b) == expected_b

    # The next run starts from the committed cursor: only the new lines, nothing twice.
    write_readings(tmp_path, 2000, 10)
    again = collect.collect_source(source.pk)
    assert again.status == RunStatus.SUCCESS and again.accepted == 20 and again.duplicates == 0
    expected_a, expected_b = expected_readings(0, 2010)
    assert stored(a) == expected_a and stored(b) == expected_b


def test_an_exception_before_the_commit_is_still_a_failure_that_commits_nothing(logger_source, tmp_path):
    source, _channels = logger_source
    write_readings(tmp_path, 0, 10)
    DataSource.objects.filter(pk=source.pk).update(config={**source.config, "columns": ["time", "a"]})
    run = collect.collect_source(source.pk)
    assert run.status == RunStatus.FAILED
    source.refresh_from_db()
    assert source.consecutive_failures == 1 and source.next_run_at is not None
    assert not Sample.objects.exists()
