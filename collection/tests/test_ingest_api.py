"""POST /api/v1/ingest/ through real HTTP requests (Django's test client), as the personas."""

from __future__ import annotations

import orjson
import pytest
from django.core.cache import cache

from collection.choices import Origin, Quality
from collection.ingest_formats import UNKNOWN_CHANNEL
from collection.models import IngestBatch, RejectedSample, Sample, TextSample
from instruments.choices import ChannelKind
from instruments.tests.factories import make_channel

pytestmark = pytest.mark.usefixtures("module_world")  # one world for the module's tests

URL = "/api/v1/ingest/"
T0 = 1_767_323_045  # 2026-01-02T03:04:05Z


@pytest.fixture(autouse=True)
def _fresh_throttle_counters():
    cache.clear()
    yield
    cache.clear()


def post(persona, body, content_type="application/json", **extra):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return persona.client.generic("POST", URL, data, content_type=content_type, **extra)


def rows(ref, n=3, start=T0, value=1.5):
    return [{"channel": ref, "t": start + i, "v": value + i} for i in range(n)]


def ref(channel) -> str:
    return f"{channel.instrument.slug}/{channel.slug}"


def test_agent_pushes_to_its_instrument(world, agent_scoped):
    channel = world.alpha_channel
    response = post(agent_scoped, rows(ref(channel)))
    assert response.status_code == 200, response.content
    body = response.json()
    assert body | {"rejections": None} == {
        "batch_id": None,
        "received": 3,
        "accepted": 3,
        "duplicates": 0,
        "conflicts": 0,
        "flagged": 0,
        "rejected": 0,
        "rejections": None,
        "rejections_truncated": False,
        "rejections_aggregated": 0,
        "replayed": False,
    }
    stored = list(Sample.objects.filter(channel=channel).order_by("ts").values_list("ts", "value"))
    assert stored == [(T0 * 1_000_000, 1.5), ((T0 + 1) * 1_000_000, 2.5), ((T0 + 2) * 1_000_000, 3.5)]


def test_resending_stores_nothing_twice(world, agent_scoped):
    body = rows(ref(world.alpha_channel), n=5)
    post(agent_scoped, body)
    again = post(agent_scoped, body).json()
    assert (again["accepted"], again["duplicates"], again["replayed"]) == (0, 5, False)
    assert Sample.objects.filter(channel=world.alpha_channel).count() == 5


def test_a_retried_batch_id_is_recognised(world, agent_scoped):
    body = {
        "batch_id": "upload-0001",
        "readings": [*rows(ref(world.alpha_channel)), {"channel": "x/y", "t": 1, "v": 1}],
    }
    first = post(agent_scoped, body).json()
    rejected_before = RejectedSample.objects.count()
    second = post(agent_scoped, body).json()
    assert second["replayed"] is True
    assert {k: v for k, v in second.items() if k != "replayed"} == {k: v for k, v in first.items() if k != "replayed"}
    assert RejectedSample.objects.count() == rejected_before, "a replayed batch must not be quarantined twice"
    assert IngestBatch.objects.filter(batch_id="upload-0001").count() == 1


def test_same_batch_id_from_another_sender_is_another_batch(world, agent_scoped, owner):
    body = {"batch_id": "shared-name", "readings": rows(ref(world.alpha_channel))}
    assert post(agent_scoped, body).json()["replayed"] is False
    assert post(owner, body).json()["replayed"] is False


def test_agent_cannot_push_outside_its_scope_and_learns_nothing(world, agent_scoped, agent_unscoped):
    zulu = ref(world.zulu_channel)
    body = post(agent_scoped, rows(zulu, n=2)).json()
    assert body["accepted"] == 0
    assert [r["reason"] for r in body["rejections"]] == [UNKNOWN_CHANNEL, UNKNOWN_CHANNEL]
    # the same answer as for a channel that does not exist at all
    missing = post(agent_scoped, rows("no-such/channel", n=2)).json()
    assert [r["reason"] for r in missing["rejections"]] == [UNKNOWN_CHANNEL, UNKNOWN_CHANNEL]
    # by id, too
    by_id = post(agent_scoped, rows(world.zulu_channel.id, n=1)).json()
    assert by_id["rejections"][0]["reason"] == UNKNOWN_CHANNEL
    unscoped = post(agent_unscoped, rows(ref(world.alpha_channel), n=1)).json()
    assert unscoped["accepted"] == 0 and unscoped["rejected"] == 1
    assert not Sample.objects.filter(channel=world.zulu_channel).exists()


@pytest.mark.parametrize(
    ("persona_name", "status", "stored"),
    [
        ("anonymous", 401, False),
        ("stranger", 200, False),
        ("shared_viewer", 200, False),
        ("group_member", 200, False),
        ("shared_editor", 200, True),
        ("owner", 200, True),
        ("administrator", 200, True),
        ("agent_scoped", 200, True),
        ("agent_unscoped", 200, False),
        ("personal_read_token", 403, False),
        ("personal_write_token", 200, True),
    ],
)
def test_who_may_push(world, request, persona_name, status, stored):
    persona = request.getfixturevalue(persona_name)
    response = post(persona, rows(ref(world.alpha_channel), n=1))
    assert response.status_code == status, response.content
    assert Sample.objects.filter(channel=world.alpha_channel).exists() is stored
    if status == 200 and not stored:
        assert response.json()["rejections"][0]["reason"] == UNKNOWN_CHANNEL


def test_columnar_and_csv_bodies(world, owner):
    channel = world.alpha_channel
    columns = {"batch_id": "c1", "channels": {ref(channel): {"t": [T0, T0 + 1], "v": [1, 2]}}}
    assert post(owner, columns).json()["accepted"] == 2
    csv = f"channel,t,v\n{ref(channel)},2026-01-02T03:04:14Z,7.25\n{channel.id},{T0 + 11},8\n".encode()
    response = post(owner, csv, "text/csv", QUERY_STRING="batch_id=csv-1")
    assert response.json()["accepted"] == 2, response.content
    assert response.json()["batch_id"] == "csv-1"
    assert Sample.objects.filter(channel=channel, ts=(T0 + 9) * 1_000_000, value=7.25).exists()


def test_bad_readings_are_listed_and_the_good_ones_stored(world, owner):
    alpha = world.alpha_instrument
    numeric = world.alpha_channel
    text = make_channel(alpha, kind=ChannelKind.TEXT, slug="status", name="status")
    ranged = make_channel(alpha, slug="rh", name="rh", valid_min=0, valid_max=100, missing_values=[-9999])
    body = [
        {"channel": ref(numeric), "t": T0, "v": 1.0},  # 0 fine
        {"channel": "alpha-station/nope", "t": T0, "v": 1.0},  # 1 unknown channel
        {"channel": ref(world.zulu_channel), "t": T0, "v": 1.0},  # 2 another instrument's channel
        {"channel": ref(numeric), "t": T0 + 1, "v": "warm"},  # 3 text into a numeric channel
        {"channel": ref(numeric), "t": "not a time", "v": 1.0},  # 4 unparseable time
        {"channel": ref(numeric), "t": "2999-01-01T00:00:00Z", "v": 1.0},  # 5 far future
        {"channel": ref(numeric), "t": T0 + 2, "v": 1.7e308},  # 6 huge but finite
        {"channel": ref(numeric), "t": T0, "v": 1.0},  # 7 duplicate of 0 within the batch
        {"channel": ref(text), "t": T0, "v": "OK"},  # 8 text fine
        {"channel": ref(ranged), "t": T0, "v": 120},  # 9 out of range: stored, flagged
        {"channel": ref(ranged), "t": T0 + 1, "v": -9999},  # 10 sentinel: stored, flagged missing
        {"channel": ref(numeric), "t": T0 + 3, "v": None},  # 11 empty value
        {"channel": ref(numeric), "t": 1.5e9 * 1000 * 1000 * 1000 * 100, "v": 1},  # 12 beyond any time
    ]
    response = post(owner, body)
    assert response.status_code == 200, response.content
    result = response.json()
    reasons = {r["index"]: r["reason"] for r in result["rejections"]}
    assert reasons[1] == UNKNOWN_CHANNEL
    assert reasons[2] == UNKNOWN_CHANNEL
    assert reasons[3] == "value is not a number, and the channel is numeric"
    assert reasons[4] == "timestamp 'not a time' is not an ISO 8601 time or a number"
    assert reasons[5].startswith("timestamp outside the accepted window")
    assert reasons[11] == "value is empty"
    assert 12 in reasons
    assert set(reasons) == {1, 2, 3, 4, 5, 11, 12}
    assert result["rejections"][0]["channel"] == "alpha-station/nope"
    assert (result["accepted"], result["duplicates"], result["flagged"]) == (5, 1, 2)
    assert Sample.objects.get(channel=ranged, ts=T0 * 1_000_000).quality == Quality.OUT_OF_RANGE
    assert Sample.objects.get(channel=ranged, ts=(T0 + 1) * 1_000_000).quality == Quality.MISSING
    assert TextSample.objects.get(channel=text).value == "OK"
    kept = RejectedSample.objects.filter(origin=Origin.API, context__index=3).get()
    assert kept.raw_value == "warm"


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b'[{"channel": 1, "t": 1,', "application/json", 400, "the body is not valid JSON"),
        (b'[{"channel": 1, "t": 1, "v": NaN}]', "application/json", 400, "the body is not valid JSON"),
        (b'[{"channel": 1, "t": 1, "v": 1e999}]', "application/json", 400, "infinity"),
        (b"\xff\xfe\xfd", "application/json", 400, "the body is not valid JSON"),
        (b"\xff\xfe\xfd", "text/csv", 400, "the body is not UTF-8 text"),
        (b"[]", "application/json", 400, "the batch holds no readings"),
        (b'{"readings": []}', "application/json", 400, "the batch holds no readings"),
        (b"<readings/>", "application/xml", 415, "unsupported content type"),
        (b"channel,t,v\n", "text/csv", 400, "the batch holds no readings"),
    ],
)
def test_unreadable_bodies_get_a_clear_4xx(owner, body, content_type, status, message):
    response = post(owner, body, content_type)
    assert response.status_code == status, response.content
    assert message in response.json()["detail"]


def test_batch_over_the_limit_is_413(world, owner, settings):
    settings.DAQBROKER_INGEST_MAX_READINGS = 10
    response = post(owner, rows(ref(world.alpha_channel), n=11))
    assert response.status_code == 413
    assert response.json()["detail"] == "the batch holds 11 readings; the limit is 10 per request"
    assert post(owner, rows(ref(world.alpha_channel), n=10)).status_code == 200


def test_body_over_the_limit_is_413_before_it_is_read(world, owner, settings):
    settings.DAQBROKER_INGEST_MAX_BYTES = 2048
    body = orjson.dumps(rows(ref(world.alpha_channel), n=100))
    response = post(owner, body)
    assert response.status_code == 413
    detail = f"the body is {len(body):,} bytes; the limit is 2,048 (DAQBROKER_INGEST_MAX_BYTES)"
    assert response.json()["detail"] == detail


def test_ingest_is_throttled_per_token(world, agent_scoped, personal_write_token, settings):
    settings.REST_FRAMEWORK = {**settings.REST_FRAMEWORK, "DEFAULT_THROTTLE_RATES": {"ingest": "2/minute"}}
    body = rows(ref(world.alpha_channel), n=1)
    assert [post(agent_scoped, body).status_code for _ in range(3)] == [200, 200, 429]
    limited = post(agent_scoped, body)
    assert int(limited["Retry-After"]) > 0
    assert post(personal_write_token, body).status_code == 200, "another token has its own allowance"


def test_nul_characters_are_refused_per_reading_and_kept_visible(world, owner):
    """A NUL (serial-line noise; PostgreSQL cannot store it) rejects its reading, never the request."""
    text = make_channel(world.alpha_instrument, kind=ChannelKind.TEXT, slug="status", name="status")
    before = RejectedSample.objects.count()
    body = [
        {"channel": ref(text), "t": T0, "v": "door\u0000open"},  # 0 NUL in a text value
        {"channel": "alpha-station/te\u0000mp", "t": T0, "v": 1.0},  # 1 NUL in a channel reference
        {"channel": ref(world.alpha_channel), "t": "2026-01-02\u0000", "v": 1.0},  # 2 NUL in a time
        {"channel": ref(world.alpha_channel), "t": T0, "v": "1\u00002"},  # 3 NUL in a number
        {"channel": ref(text), "t": T0 + 1, "v": "closed"},  # 4 fine
    ]
    response = post(owner, body)
    assert response.status_code == 200, response.content
    nul_value = "text value contains a NUL character (shown as \\x00)"
    reasons = {r["index"]: r["reason"] for r in response.json()["rejections"]}
    assert set(reasons) == {0, 1, 2, 3}
    assert (reasons[0], reasons[1], reasons[3]) == (
        nul_value,
        UNKNOWN_CHANNEL,
        "value is not a number, and the channel is numeric",
    )
    csv = "\n".join(["channel,t,v", f"{ref(text)},{T0 + 5},a\x00b", f"{ref(text)},{T0 + 6},fine"])
    response = post(owner, csv.encode(), "text/csv")
    assert response.status_code == 200, response.content
    assert [r["reason"] for r in response.json()["rejections"]] == [nul_value]

    kept = {(r.channel_ref, r.raw_value): r.reason for r in list(RejectedSample.objects.order_by("id"))[before:]}
    assert len(kept) == 5
    assert kept[(str(text.pk), "door\\x00open")] == nul_value
    assert kept[("alpha-station/te\\x00mp", "1.0")] == UNKNOWN_CHANNEL
    assert kept[(str(text.pk), "a\\x00b")] == nul_value
    assert sorted(TextSample.objects.filter(channel=text).values_list("value", flat=True)) == ["closed", "fine"]
