"""Security findings 3, 4, 5, 6 and 9 of issue 12 ("Bounded work per request"), reproduced through HTTP.

Django's test client where the finding is about what a request is answered; a real gunicorn (gthread)
where it is about workers and threads: a body refused before it is read, stalled downloads that must
not take every thread. See docs/security.md, "Bounded work per request".
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.request
from datetime import UTC, datetime

import numpy as np
import orjson
import pytest
import redis
from django.core.cache import cache
from django.test import override_settings

from accounts import services
from accounts.choices import TokenScope
from collection.choices import Origin
from collection.ingest_formats import UNKNOWN_CHANNEL
from collection.models import RejectedSample, Sample
from collection.services import statistics
from collection.services.ingest import SampleBatch, ingest_samples
from conftest import REPO, database_url_for_subprocess, wait_for
from daqbroker_agent.parsing import datetime_to_us
from instruments.tests.factories import make_channel, make_instrument, make_user

INGEST = "/api/v1/ingest/"
T0 = 1_767_323_045  # 2026-01-02T03:04:05Z, seconds
T0_US = datetime_to_us(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))


@pytest.fixture(autouse=True)
def _fresh_cache():
    cache.clear()  # throttle counters and export slots
    yield
    cache.clear()


def post(persona, body, content_type="application/json", path=INGEST):
    data = body if isinstance(body, bytes) else orjson.dumps(body)
    return persona.client.generic("POST", path, data, content_type=content_type)


def ref(channel) -> str:
    return f"{channel.instrument.slug}/{channel.slug}"


def nested(depth: int) -> str:
    """JSON text of a value nested ``depth`` lists deep (orjson writes at most 254 levels)."""
    return "[" * depth + "1.5" + "]" * depth


# --- finding 3: upload limits ------------------------------------------------------------------------


def test_every_route_but_ingest_keeps_djangos_upload_limit(settings):
    assert settings.DATA_UPLOAD_MAX_MEMORY_SIZE == 2_621_440
    assert settings.DATA_UPLOAD_MAX_NUMBER_FIELDS == 1000
    assert settings.DAQBROKER_INGEST_MAX_BYTES == 64 * 1024 * 1024


def test_a_large_anonymous_form_post_to_login_is_refused(world, anonymous):
    assert anonymous.client.get("/login/").status_code == 200
    body = b"username=a&password=" + b"x" * 3_000_000
    response = anonymous.client.generic("POST", "/login/", body, content_type="application/x-www-form-urlencoded")
    assert response.status_code == 400
    small = anonymous.client.post("/login/", {"username": "nobody", "password": "x" * 1000})
    assert small.status_code == 200  # the form again, with its error: the limit is not in the way


def test_ingest_accepts_a_body_above_djangos_limit_up_to_its_own(world, owner, settings):
    channel = world.alpha_channel
    rows = [{"channel": ref(channel), "t": T0 + i, "v": float(i), "pad": "x" * 40} for i in range(3)]
    # Unknown keys in a row are ignored; the padding takes the body past Django's 2.5 MB.
    rows += [{"channel": ref(channel), "t": T0 + 3, "v": 3.0, "pad": "y" * 3_000_000}]
    body = orjson.dumps(rows)
    assert len(body) > settings.DATA_UPLOAD_MAX_MEMORY_SIZE
    response = post(owner, body)
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 4
    settings.DAQBROKER_INGEST_MAX_BYTES = len(body) - 1
    refused = post(owner, body)
    assert refused.status_code == 413
    assert "DAQBROKER_INGEST_MAX_BYTES" in refused.json()["detail"]


# --- finding 4: CSV header width ---------------------------------------------------------------------


@pytest.fixture
def stranger_token(world) -> str:
    """bob in the issue: a read-write token and no instruments at all."""
    _, clear = services.create_personal_token(user=world.users["stan"], name="stan", scope=TokenScope.READ_WRITE)
    return clear


def token_post(client, token: str, body: bytes, content_type: str):
    return client.generic("POST", INGEST, body, content_type=content_type, HTTP_AUTHORIZATION=f"Bearer {token}")


def test_a_csv_header_of_a_million_columns_is_refused_before_parsing(world, stranger_token, client):
    body = b"channel,t,v," + b",".join(b"c%d" % i for i in range(1_000_000)) + b"\nnobody/nothing,1,2\n"
    response = token_post(client, stranger_token, body, "text/csv")
    assert response.status_code == 400
    assert "DAQBROKER_INGEST_CSV_MAX_HEADER_BYTES" in response.json()["detail"]


def test_a_csv_header_of_too_many_short_columns_is_refused(world, stranger_token, client, settings):
    header = ",".join(["channel", "t", "v", *("x" * 17)]).encode()
    assert len(header) < settings.DAQBROKER_INGEST_CSV_MAX_HEADER_BYTES
    response = token_post(client, stranger_token, header + b"\nnobody/nothing,1,2\n", "text/csv")
    assert response.status_code == 400
    detail = response.json()["detail"]
    assert "20 columns" in detail and "DAQBROKER_INGEST_CSV_MAX_COLUMNS" in detail


def test_a_csv_row_wider_than_its_header_is_refused(world, owner):
    body = f"channel,t,v\n{ref(world.alpha_channel)},{T0},1.5" + "," * 200_000 + "\n"
    response = post(owner, body.encode(), "text/csv")
    assert response.status_code == 400
    assert "a CSV row has 200,003 fields but the header has 3" in response.json()["detail"]


def test_a_csv_with_an_ordinary_header_is_still_stored(world, owner):
    body = f"channel,t,v,comment\n{ref(world.alpha_channel)},{T0},1.5,fine\n".encode()
    response = post(owner, body, "text/csv")
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 1


# --- finding 5: quarantine flooding ------------------------------------------------------------------


def test_readings_for_channels_the_sender_may_not_write_are_one_aggregate_record(world, stranger_token, client):
    before = RejectedSample.objects.count()
    rows = [{"channel": "nobody/nothing", "t": T0 + i, "v": "x" * 10_000} for i in range(6000)]
    response = token_post(client, stranger_token, orjson.dumps(rows), "application/json")
    assert response.status_code == 200, response.content
    body = response.json()
    assert (body["received"], body["rejected"], body["rejections_aggregated"]) == (6000, 6000, 6000)
    assert RejectedSample.objects.count() == before + 1
    record = RejectedSample.objects.latest("id")
    assert (record.count, record.reason, record.sender_user, record.sender_agent) == (
        6000,
        UNKNOWN_CHANNEL,
        world.users["stan"],
        None,
    )
    assert record.context["references"] == ["nobody/nothing"]
    assert record.context["indexes"] == list(range(10))
    assert len(record.raw_value) <= 200  # not 10 kB per reading, nor even for the one kept


def test_a_hidden_instruments_channel_counts_like_an_unknown_one(world, stranger_token, client):
    zulu = world.zulu_channel
    rows = [{"channel": ref(zulu), "t": T0 + i, "v": 1.0} for i in range(5)] + [
        {"channel": zulu.pk, "t": T0 + 9, "v": 2.0}
    ]
    response = token_post(client, stranger_token, orjson.dumps(rows), "application/json")
    assert response.json()["rejections_aggregated"] == 6
    records = list(RejectedSample.objects.filter(sender_user=world.users["stan"]))
    assert len(records) == 1  # one per request, whichever way the channel was named
    assert records[0].count == 6
    assert not Sample.objects.filter(channel=zulu).exists()


def test_rejections_past_the_per_request_limit_are_counted_and_reported(world, owner, settings):
    settings.DAQBROKER_QUARANTINE_PER_REQUEST = 10
    rows = [{"channel": ref(world.alpha_channel), "t": T0 + i, "v": f"not a number {i}"} for i in range(30)]
    response = post(owner, rows)
    body = response.json()
    assert (body["rejected"], body["rejections_aggregated"]) == (30, 20)
    assert len(body["rejections"]) == 30  # the response still lists each one with its index
    records = list(RejectedSample.objects.filter(sender_user=world.users["olivia"]).order_by("id"))
    assert [r.count for r in records] == [1] * 10 + [20]
    assert [r.raw_value for r in records[:10]] == [f"not a number {i}" for i in range(10)]
    aggregate = records[-1]
    assert "DAQBROKER_QUARANTINE" not in aggregate.reason  # the reason says what happened in words
    assert "20 rejected readings past the quarantine limits" in aggregate.reason
    assert aggregate.context["indexes"] == list(range(10, 20))
    assert aggregate.context["reasons"] == ["value is not a number, and the channel is numeric"]


def test_rejections_past_the_hourly_limit_per_sender_are_counted_and_reported(world, owner, settings):
    settings.DAQBROKER_QUARANTINE_PER_SENDER_HOUR = 15
    olivia = world.users["olivia"]
    for batch in range(3):
        rows = [{"channel": ref(world.alpha_channel), "t": T0 + i, "v": f"bad {batch}-{i}"} for i in range(10)]
        response = post(owner, rows)
        assert response.status_code == 200
        assert response.json()["rejections_aggregated"] == [0, 5, 10][batch]
    # 10, then 5 more and an aggregate of 5, then only an aggregate (the hour's 15 are used up).
    counts = list(RejectedSample.objects.filter(sender_user=olivia).order_by("id").values_list("count", flat=True))
    assert counts == [1] * 15 + [5, 10]
    assert sum(counts) == 30  # every rejected reading is counted somewhere


def test_a_legitimate_sender_within_the_limits_has_each_rejection_kept(world, agent_scoped):
    rows = [
        {"channel": ref(world.alpha_channel), "t": T0, "v": "oops"},
        {"channel": ref(world.alpha_channel), "t": T0 + 1, "v": 2.0},
        {"channel": ref(world.alpha_channel), "t": "yesterday", "v": 3.0},
    ]
    response = post(agent_scoped, rows)
    body = response.json()
    assert (body["accepted"], body["rejected"], body["rejections_aggregated"]) == (1, 2, 0)
    records = list(RejectedSample.objects.filter(sender_agent=world.agents["alpha-logger"]))
    assert sorted((r.count, r.context.get("index")) for r in records) == [(1, 0), (1, 2)]
    assert all(r.sender_user is None and r.origin == Origin.AGENT for r in records)


def test_unparsed_lines_from_an_agent_name_the_agent(world, agent_scoped):
    body = {"batch_id": "b1", "lines": [{"text": "garbage", "reason": "no delimiter"}]}
    response = post(agent_scoped, body, path="/api/v1/agent/unparsed/")
    assert response.status_code == 200, response.content
    assert response.json()["aggregated"] == 0
    record = RejectedSample.objects.latest("id")
    assert (record.raw_value, record.sender_agent) == ("garbage", world.agents["alpha-logger"])


# --- finding 9: nesting and NUL ----------------------------------------------------------------------


@pytest.mark.parametrize("field", ["v", "channel", "t"])
def test_a_value_nested_a_thousand_deep_is_a_rejection_not_a_500(world, owner, field):
    row = {"channel": f'"{ref(world.alpha_channel)}"', "t": str(T0), "v": "1.5"} | {field: nested(1000)}
    text = "{" + ", ".join(f'"{key}": {value}' for key, value in row.items()) + "}"
    body = f'[{text}, {{"channel": "{ref(world.alpha_channel)}", "t": {T0 + 1}, "v": 2.5}}]'
    response = post(owner, body.encode())
    assert response.status_code == 200, response.content[:300]
    body = response.json()
    assert (body["accepted"], body["rejected"]) == (1, 1)
    assert body["rejections"][0]["index"] == 0
    kept = RejectedSample.objects.latest("id")
    assert kept.count == 1


def test_a_nested_value_in_a_columns_body_is_a_rejection_too(world, owner):
    body = f'{{"channels": {{"{ref(world.alpha_channel)}": {{"t": [{T0}, {T0 + 1}], "v": [{nested(1000)}, 1.0]}}}}}}'
    response = post(owner, body.encode())
    assert response.status_code == 200, response.content[:300]
    assert (response.json()["accepted"], response.json()["rejected"]) == (1, 1)


NUL_PAGES = [
    "/?q=a%00b",
    "/alarms/?instrument=a%00b",
    "/alarms/?state=%00",
    "/plot/?channels=a%00b",
    "/dashboards/?page=1%00",
    "/instruments/alpha-station/?tab=a%00b",
    "/login/?next=/%00",
    "/admin/collection/rejectedsample/?q=a%00b",
    "/admin/instruments/instrument/?a%00b=1",
]
NUL_API = [
    "/api/v1/instruments/?search=a%00b",
    "/api/v1/channels/?instrument=a%00b",
    "/api/v1/sources/?kind=%00",
    "/api/v1/logbook/?instrument=alpha-station%00",
    "/api/v1/agents/?name=%00",
    "/api/v1/tokens/?q%00=1",
    "/api/v1/samples/?channels=alpha-station/alpha-temp%00",
    "/api/v1/statistics/?channels=1&start=0%00",
    "/api/v1/export/?instrument=alpha-station%00",
    "/api/v1/instruments/alpha-station/latest/?x=%00",
]


@pytest.mark.parametrize("url", NUL_PAGES)
def test_a_nul_in_a_query_parameter_of_a_page_is_a_400(world, administrator, url):
    response = administrator.client.get(url)
    assert response.status_code == 400
    assert b"NUL" in response.content
    assert administrator.client.get(url.replace("%00", "")).status_code != 400


@pytest.mark.parametrize("url", NUL_API)
def test_a_nul_in_a_query_parameter_of_the_api_is_a_400(world, owner, url):
    response = owner.client.get(url)
    assert response.status_code == 400
    assert "NUL" in response.json()["detail"]


def test_a_nul_in_a_query_parameter_is_refused_for_anonymous_too(world, anonymous):
    assert anonymous.client.get("/?q=a%00b").status_code == 400
    assert anonymous.client.get("/api/v1/instruments/?search=%00").status_code == 400


# --- finding 6: heavy requests per user, exact percentiles -------------------------------------------


@pytest.fixture(params=["local", "redis"])
def slot_cache(request, redis_url):
    """The export slots in the local in-process cache, or in Redis (as when REDIS_URL is configured)."""
    if request.param == "local":
        yield
        return
    caches = {
        "default": {
            "BACKEND": "django.core.cache.backends.redis.RedisCache",
            "LOCATION": redis_url,
            "KEY_PREFIX": f"bounds-test-{time.monotonic_ns()}",
        }
    }
    with override_settings(CACHES=caches):
        cache.clear()
        yield
        cache.clear()


def stored_readings(channel, n: int, seed: int = 7) -> np.ndarray:
    values = np.round(np.random.default_rng(seed).normal(20, 5, n), 1)  # rounded: many ties
    ts = T0_US + np.arange(n, dtype=np.int64) * 1_000_000
    ingest_samples(SampleBatch(np.full(n, channel.pk), ts, values))
    return values


def test_a_users_concurrent_exports_are_limited_with_429_and_retry_after(world, owner, shared_viewer, slot_cache):
    stored_readings(world.alpha_channel, 500)
    export = "/api/v1/export/?instrument=alpha-station"
    first, second = owner.client.get(export), owner.client.get(export)  # streaming: held until closed
    assert (first.status_code, second.status_code) == (200, 200)
    third = owner.client.get(export)
    assert third.status_code == 429
    assert third["Retry-After"] == "10"
    assert "at most 2 exports" in third.json()["detail"]
    percentiles = owner.client.get(f"/api/v1/statistics/?channels={world.alpha_channel.pk}&start=0&percentiles=50")
    assert percentiles.status_code == 429
    plain = owner.client.get(f"/api/v1/statistics/?channels={world.alpha_channel.pk}&start=0")
    assert plain.status_code == 200  # statistics without percentiles come from the tiers: not limited
    elsewhere = shared_viewer.client.get(export)
    assert elsewhere.status_code == 200  # another user has slots of their own
    assert len(b"".join(first.streaming_content).decode().splitlines()) == 501  # a download ends: its slot is free
    again = owner.client.get(export)
    assert again.status_code == 200
    for response in (second, elsewhere, again):
        b"".join(response.streaming_content)


def test_percentiles_are_exact_when_computed_in_bounded_passes(world, owner, monkeypatch):
    values = stored_readings(world.alpha_channel, 20_000)
    # Small bounds, so that this test's 20,000 readings take several narrowing passes.
    monkeypatch.setattr(statistics, "SELECT_COLLECT", 300)
    monkeypatch.setattr(statistics, "SELECT_BINS", 16)
    monkeypatch.setattr(statistics, "PERCENTILE_CHUNK_ROWS", 3000)
    wanted = [0, 1, 5, 33.3, 50, 95, 99.9, 100]
    response = owner.client.get(
        f"/api/v1/statistics/?channels={world.alpha_channel.pk}&start=0&end={T0_US + 10**12}"
        f"&percentiles={','.join(map(str, wanted))}"
    )
    assert response.status_code == 200, response.content
    got = response.json()["statistics"][0]["percentiles"]
    expected = np.percentile(values, wanted)
    assert [got[f"p{p:g}"] for p in wanted] == expected.tolist()


# --- real gunicorn: bodies refused before reading, stalled downloads dropped --------------------------


class Gunicorn:
    def __init__(self, start_process, service_env: dict[str, str], **env: str):
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        self.port = sock.getsockname()[1]
        sock.close()
        argv = [sys.executable, "-m", "gunicorn", "daqbroker_site.wsgi", "--worker-class", "gthread",
                "--workers", "1", "--threads", "2", "--bind", f"127.0.0.1:{self.port}",
                "--timeout", "120", "--log-level", "warning"]  # fmt: skip
        self.process = start_process(
            "gunicorn",
            argv,
            {**service_env, "DATABASE_URL": database_url_for_subprocess(), "DAQBROKER_DEBUG": "true", **env},
        )
        wait_for(self.answers, timeout=60, message="gunicorn answering")

    def answers(self) -> bool:
        assert self.process.process.poll() is None, self.process.log()
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/login/", timeout=5) as response:
                return response.status == 200
        except OSError:
            return False

    def csrf_cookie(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/login/", timeout=30) as response:
            return next(c.split(";")[0] for c in response.headers.get_all("Set-Cookie") if c.startswith("csrftoken="))

    def connect(self, *, receive_buffer: int | None = None) -> socket.socket:
        sock = socket.socket()
        if receive_buffer is not None:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(60)
        sock.connect(("127.0.0.1", self.port))
        return sock

    def request(self, method: str, path: str, headers: dict[str, str], body: bytes = b"") -> bytes:
        lines = [
            f"{method} {path} HTTP/1.1",
            f"Host: 127.0.0.1:{self.port}",
            *(f"{k}: {v}" for k, v in headers.items()),
        ]
        return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def read_until_closed(sock: socket.socket) -> bytes:
    data = bytearray()
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            break
        if not piece:
            break
        data += piece
    return bytes(data)


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_oversized_bodies_are_refused_before_they_are_sent(start_process, service_env):
    """The issue's 60 MB POST to /login/ peaked a worker at 5.1 GB: now it is answered on its headers."""
    server = Gunicorn(start_process, service_env)
    for path, declared, status in (("/login/", 60_000_000, b"400"), (INGEST, 100_000_000, b"413")):
        sock = server.connect()
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Content-Length": str(declared)}
        if path == "/login/":  # with the CSRF cookie from GET /login/, as in the issue
            headers["Cookie"] = server.csrf_cookie()
        else:
            token = services.create_personal_token(user=make_user(), name="t", scope=TokenScope.READ_WRITE)[1]
            headers |= {"Content-Type": "application/json", "Authorization": f"Bearer {token}"}
        # Only the headers and 1 kB: the answer must come without the rest of the body ever being sent.
        sock.sendall(server.request("POST", path, headers, b"x" * 1024))
        answer = read_until_closed(sock) if path == INGEST else sock.recv(65536)
        sock.close()
        assert answer.split(b" ")[1] == status, answer[:300]


@pytest.mark.slow
@pytest.mark.django_db(transaction=True)
def test_stalled_downloads_do_not_starve_other_requests(start_process, service_env):
    """carol's 8 exports read 20 bytes and stopped: every thread was held and /login/ timed out.

    Here: one gunicorn worker with two threads, four downloads that stop reading. The server drops
    them after DAQBROKER_SEND_TIMEOUT_SECONDS, the login page answers, and the export slots they held
    are free again."""
    owner, other = make_user(), make_user()
    instrument = make_instrument(owner, slug="big-station")
    channel = make_channel(instrument, slug="temp")
    from accounts.choices import ShareLevel

    services.share(instrument, other, ShareLevel.VIEW)
    stored_readings(channel, 200_000)  # ~9 MB of CSV: more than the socket buffers hold
    tokens = {
        user.pk: services.create_personal_token(user=user, name="exports", scope=TokenScope.READ)[1]
        for user in (owner, other)
    }
    server = Gunicorn(start_process, service_env, DAQBROKER_SEND_TIMEOUT_SECONDS="5")
    export = "/api/v1/export/?instrument=big-station&time_format=epoch_us"

    stalled = []
    for user in (owner, other, owner, other):  # two each: within the per-user limit of 2
        sock = server.connect(receive_buffer=4096)
        sock.sendall(server.request("GET", export, {"Authorization": f"Bearer {tokens[user.pk]}"}))
        stalled.append(sock)
    first_bytes = [sock.recv(20) for sock in stalled]  # then nothing more is read from them
    assert all(piece.startswith(b"HTTP/1.1 200") for piece in first_bytes), first_bytes
    slots = redis.Redis.from_url(service_env["REDIS_URL"])

    def held() -> list:
        return [key for user in (owner, other) for key in slots.scan_iter(match=f"*daqbroker:heavy:user:{user.pk}:*")]

    seen_held = held()  # the last two served, at least, still hold theirs (for DAQBROKER_SEND_TIMEOUT_SECONDS)

    with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/login/", timeout=60) as login:
        assert login.status == 200

    # Each stalled download holds an export slot (in Redis, as the server is configured) until its
    # response ends; as nothing more is read from them, they end only by being dropped.
    wait_for(lambda: not held(), timeout=120, message="the stalled downloads to be dropped")
    assert seen_held, "the stalled downloads held no export slot in Redis"
    for sock in stalled:
        received = read_until_closed(sock)
        sock.close()
        assert not received.endswith(b"0\r\n\r\n")  # dropped mid-stream: no final chunk

    request = urllib.request.Request(
        f"http://127.0.0.1:{server.port}{export}", headers={"Authorization": f"Bearer {tokens[owner.pk]}"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:  # noqa: S310 (our own test server)
        assert response.status == 200  # not 429: the dropped downloads gave their slots back
        assert response.read().count(b"\n") == 200_001


# --- the settings refuse bad values at start-up -----------------------------------------------------


@pytest.mark.parametrize(
    ("name", "value", "message"),
    [
        ("DAQBROKER_SEND_TIMEOUT_SECONDS", "0", "DAQBROKER_SEND_TIMEOUT_SECONDS=0 is below the minimum of 1"),
        ("DAQBROKER_HEAVY_REQUESTS_PER_USER", "two", "DAQBROKER_HEAVY_REQUESTS_PER_USER='two' is not a whole number"),
        ("DAQBROKER_INGEST_CSV_MAX_COLUMNS", "2", "DAQBROKER_INGEST_CSV_MAX_COLUMNS=2 is below the minimum of 3"),
        ("DAQBROKER_INGEST_CSV_MAX_HEADER_BYTES", "8", "is below the minimum of 16"),
        ("DAQBROKER_QUARANTINE_PER_REQUEST", "-1", "DAQBROKER_QUARANTINE_PER_REQUEST=-1 is below the minimum of 0"),
        ("DAQBROKER_QUARANTINE_PER_SENDER_HOUR", "1e4", "is not a whole number"),
    ],
)
def test_a_bad_limit_setting_stops_the_process_at_start(tmp_path, name, value, message):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DAQBROKER_", "PYTEST", "DJANGO_"))}
    env.pop("DATABASE_URL", None)
    env.update(DAQBROKER_DATA_DIR=str(tmp_path / "var"), **{name: value})
    proc = subprocess.run(
        [sys.executable, "manage.py", "check"], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode != 0
    assert message in proc.stderr
