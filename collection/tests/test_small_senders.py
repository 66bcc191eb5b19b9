"""Many small senders: what one small ingest request costs in database statements, counted (never timed),
with everything it must still do: store, flag, count duplicates and conflicts, refuse what the sender may
not write, move last values, and leave the rollup and follow-up work to a worker. Timings: bench/ingest_small.py.

The tests run in real transactions (``transaction=True``), as a web process does: inside a test's own
transaction every ``atomic`` would add savepoints a production request does not have."""

from __future__ import annotations

import sys
import time

import orjson
import pytest
from django.core.cache import cache
from django.db import connection
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from accounts import services, tokens
from accounts.choices import TokenScope
from collection.models import FollowUpBacklog, RejectedSample, RollupBacklog, Sample
from collection.services import pending
from collection.services.rollups import merge_spans
from instruments.models import Channel, Instrument
from instruments.tests.factories import make_channel, make_instrument, make_user

pytestmark = pytest.mark.django_db(transaction=True)
URL = "/api/v1/ingest/"
T0 = 1_767_323_045_000_000  # µs; each test moves it to a minute ago (live_readings)

# Statements of a small request once its token is remembered, BEGIN not counted (on PostgreSQL it goes
# out with the first statement): the channel look-up (which carries the permission check as a subquery),
# the write, and COMMIT. On PostgreSQL the write is one statement (the insert, the channels' last values,
# the rollup and follow-up backlogs: data-modifying CTEs); on SQLite and MariaDB two: the insert, then the
# statement that moves the last values and widens the channels' pending spans, which stand for the backlog
# rows until a worker takes them up (collection.services.pending). The instrument's latest reading is
# written after the commit, in a statement of its own, at most once per second of readings per instrument
# and process (one more statement then: FRESHNESS_UPDATE; see
# test_the_instruments_freshness_costs_one_statement_after_commit).
BUDGET = {"postgresql": 3, "sqlite": 4, "mysql": 4}
FRESHNESS_UPDATE = 1


@pytest.fixture(autouse=True)
def live_readings(monkeypatch):
    """Readings stamped a minute ago, as a live sender's are. Older ones may fall in an hour compressed
    storage has compacted (on by default): they take the block-aware path, a lock and a look-up more
    (test_an_old_reading_costs_the_block_aware_path_more; docs/storage.md)."""
    monkeypatch.setattr(sys.modules[__name__], "T0", (time.time_ns() // 1000 // 1_000_000 - 60) * 1_000_000)


@pytest.fixture(autouse=True)
def _fresh():
    cache.clear()
    tokens.forget_all()
    yield
    tokens.forget_all()


@pytest.fixture
def plc():
    """A PLC gateway's owner (not an administrator), its instrument with ten channels, and two ways in: a
    personal read-write token and an agent's token."""
    owner = make_user("plc-owner")
    instrument = make_instrument(owner, slug="plc")
    channels = [make_channel(instrument, slug=f"s{i}", valid_max=100.0) for i in range(10)]
    _, personal = services.create_personal_token(user=owner, name="plc", scope=TokenScope.READ_WRITE)
    _, agent = services.create_agent(owner=owner, name="gateway", instruments=[instrument], actor=owner)
    return {"channels": channels, "user": personal, "agent": agent}


def client_for(token: str) -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return client


def body(channels, n: int, step: int, value: float = 1.5) -> bytes:
    return orjson.dumps(
        [{"channel": f"plc/{c.slug}", "t": T0 + step, "v": value + i} for i, c in enumerate(channels[:n])]
    )


def counted(queries) -> list[str]:
    return [q["sql"] for q in queries.captured_queries if not q["sql"].startswith("BEGIN")]


@pytest.mark.parametrize("compaction", [3600, 0])
def test_an_old_reading_costs_the_block_aware_path_more(plc, settings, compaction):
    """A reading older than five minutes may belong in an hour compressed storage has compacted: while
    compaction is on, the request takes its channels' block locks (the compactor's) and looks for a block,
    two statements more once the channels have their lock rows; off, and no block ever made, none more."""
    settings.DAQBROKER_COMPACT_AFTER = compaction
    client = client_for(plc["agent"])
    day = 86_400_000_000
    assert client.post(URL, body(plc["channels"], 10, -day), content_type="application/json").json()["accepted"] == 10

    with CaptureQueriesContext(connection) as queries:
        response = client.post(URL, body(plc["channels"], 10, 1 - day), content_type="application/json")
    assert response.status_code == 200 and response.json()["accepted"] == 10
    statements = counted(queries)
    assert len(statements) == BUDGET[connection.vendor] + (2 if compaction else 0), "\n".join(statements)
    quoted = [s.replace("`", '"') for s in statements]
    block_aware = [
        s for s in quoted if s.startswith(('SELECT "collection_rollupstate"', 'SELECT "collection_readingblock"'))
    ]
    assert len(block_aware) == (2 if compaction else 0), statements


@pytest.mark.parametrize("who", ["user", "agent"])
@pytest.mark.parametrize("n", [1, 10])
def test_a_small_request_costs_a_bounded_number_of_statements(plc, who, n):
    client = client_for(plc[who])
    assert client.post(URL, body(plc["channels"], n, 0), content_type="application/json").json()["accepted"] == n

    with CaptureQueriesContext(connection) as queries:
        response = client.post(URL, body(plc["channels"], n, 1), content_type="application/json")
    assert response.status_code == 200 and response.json()["accepted"] == n
    statements = counted(queries)
    assert len(statements) <= BUDGET[connection.vendor], "\n".join(s[:150] for s in statements)
    selects = [s for s in statements if s.startswith("SELECT")]
    assert len(selects) == 1 and 'FROM "instruments_channel"' in selects[0].replace("`", '"'), statements
    assert not [s for s in statements if "SAVEPOINT" in s or "accounts_apitoken" in s], statements

    # ... and it did all it did before.
    for i, channel in enumerate(plc["channels"][:n]):
        assert Sample.objects.filter(channel=channel).count() == 2
        channel.refresh_from_db()
        assert (channel.last_ts, channel.last_value) == (T0 + 1, 1.5 + i)
    # The follow-up work of both requests is waiting for a worker: in the backlogs once taken up.
    pending.take_pending()
    for channel in plc["channels"][:n]:
        backlog = RollupBacklog.objects.filter(channel=channel).values_list("start_ts", "end_ts")
        assert merge_spans(backlog) == [(T0, T0 + 1)]
    follow_up: dict[str, list[list[int]]] = {}
    for spans in FollowUpBacklog.objects.values_list("spans", flat=True):
        for key, (first, last, *_) in spans.items():
            follow_up.setdefault(key, []).append([first, last])
    assert {int(k): merge_spans(v) for k, v in follow_up.items()} == {c.pk: [(T0, T0 + 1)] for c in plc["channels"][:n]}


def test_duplicates_conflicts_flags_and_refusals_are_counted_as_before(plc):
    client = client_for(plc["agent"])
    channels = plc["channels"]
    first = client.post(URL, body(channels, 3, 0), content_type="application/json").json()
    assert (first["accepted"], first["duplicates"], first["conflicts"]) == (3, 0, 0)
    stranger = make_channel(make_instrument(make_user("stranger"), slug="elsewhere"), slug="x")
    readings = [
        {"channel": "plc/s0", "t": T0, "v": 1.5},  # the same value again: a duplicate
        {"channel": "plc/s1", "t": T0, "v": 99.0},  # another value at a stored time: a conflict
        {"channel": "plc/s2", "t": T0 + 1, "v": 500.0},  # above valid_max: stored, flagged
        {"channel": f"elsewhere/{stranger.slug}", "t": T0, "v": 1.0},  # not the sender's: refused
    ]
    answer = client.post(URL, orjson.dumps(readings), content_type="application/json").json()
    assert {k: answer[k] for k in ("received", "accepted", "duplicates", "conflicts", "flagged", "rejected")} == {
        "received": 4,
        "accepted": 1,
        "duplicates": 1,
        "conflicts": 1,
        "flagged": 1,
        "rejected": 1,
    }
    assert not Sample.objects.filter(channel=stranger).exists()
    assert Sample.objects.get(channel=channels[1], ts=T0).value == 2.5  # the stored value stays
    reasons = set(RejectedSample.objects.values_list("reason", flat=True))
    assert any(r.startswith("conflict: 99.0 differs from the stored 2.5") for r in reasons), reasons
    assert Channel.objects.get(pk=channels[2].pk).last_value == 500.0


def test_an_unshared_instrument_is_refused_at_once_even_with_a_remembered_token(plc):
    """The token is remembered; the permission is not: it is a subquery of every request's channel look-up."""
    owner = make_user("other-owner")
    theirs = make_instrument(owner, slug="theirs")
    channel = make_channel(theirs, slug="t")
    guest_user = make_user("guest")
    _, token = services.create_personal_token(user=guest_user, name="g", scope=TokenScope.READ_WRITE)
    guest = client_for(token)
    services.share(theirs, guest_user, "collect", actor=owner)
    reading = orjson.dumps([{"channel": "theirs/t", "t": T0, "v": 1.0}])
    assert guest.post(URL, reading, content_type="application/json").json()["accepted"] == 1
    services.unshare(theirs, guest_user, actor=owner)
    answer = guest.post(
        URL, orjson.dumps([{"channel": "theirs/t", "t": T0 + 1, "v": 1.0}]), content_type="application/json"
    )
    assert answer.json()["accepted"] == 0 and answer.json()["rejected"] == 1
    assert Sample.objects.filter(channel=channel).count() == 1


def test_the_instruments_freshness_costs_one_statement_after_commit_once_per_second_of_readings(plc):
    client = client_for(plc["agent"])
    channels = plc["channels"]
    assert client.post(URL, body(channels, 10, 0), content_type="application/json").json()["accepted"] == 10
    with CaptureQueriesContext(connection) as queries:
        response = client.post(URL, body(channels, 10, 1_000_000), content_type="application/json")
    assert response.json()["accepted"] == 10
    statements = counted(queries)
    assert len(statements) <= BUDGET[connection.vendor] + FRESHNESS_UPDATE, "\n".join(s[:150] for s in statements)
    # The instrument's row is written once, after the readings' COMMIT (outside their transaction).
    written = [i for i, s in enumerate(statements) if "last_reading_ts" in s]
    commits = [i for i, s in enumerate(statements) if s.startswith("COMMIT")]
    assert len(written) == 1 and commits and written[0] > commits[-1], statements
    assert Instrument.objects.get(slug="plc").last_reading_ts == T0 + 1_000_000


@pytest.mark.skipif(connection.vendor != "postgresql", reason="prepared statements: PostgreSQL's")
def test_the_look_up_and_the_write_are_prepared_once_per_connection_on_postgresql(plc):
    """Planning the look-up (with its permission subquery) cost more than running it: on PostgreSQL both
    hot statements are prepared by the connection's first request and reused by the next ones."""
    client = client_for(plc["agent"])

    def prepared() -> list[str]:
        with connection.cursor() as cursor:
            cursor.execute("SELECT statement FROM pg_prepared_statements")
            return [row[0] for row in cursor.fetchall()]

    for step in range(3):
        assert (
            client.post(URL, body(plc["channels"], 10, step), content_type="application/json").json()["accepted"] == 10
        )
    statements = prepared()
    assert len([s for s in statements if 'FROM "instruments_channel" c JOIN' in s]) == 1, statements
    assert len([s for s in statements if "numeric_last AS" in s and 'INSERT INTO "collection_sample"' in s]) == 1
    assert Sample.objects.filter(channel__in=plc["channels"]).count() == 30
