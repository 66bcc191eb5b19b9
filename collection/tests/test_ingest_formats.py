"""Decoding ingest bodies: each form, each kind of bad input, positions of rejections."""

import orjson
import pytest

from collection.ingest_formats import UNKNOWN_CHANNEL, PayloadError, decode_ingest_body

KNOWN = {"station/air": 11, "station/rh": 12}


def resolve(refs):
    return {ref: KNOWN[ref] for ref in refs if ref in KNOWN}


def decode(body, content_type="application/json", **kwargs):
    if not isinstance(body, bytes):
        body = orjson.dumps(body)
    kwargs.setdefault("max_readings", 1000)
    return decode_ingest_body(body, content_type, resolve=resolve, **kwargs)


def test_rows_with_slug_and_id_references():
    payload = decode(
        [
            {"channel": "station/air", "t": "2026-01-02T03:04:05.123456Z", "v": 1.5},
            {"channel": 12, "t": 1767323045, "v": 2},
            {"channel": "12", "t": 1767323045123, "v": 3.25},
        ]
    )
    assert payload.received == 3
    assert payload.rejections == []
    assert payload.batch.channel.tolist() == [11, 12, 12]
    assert payload.batch.ts.tolist() == [1767323045123456, 1767323045000000, 1767323045123000]
    assert payload.batch.value.tolist() == [1.5, 2.0, 3.25]
    assert payload.batch.position.tolist() == [0, 1, 2]


def test_columnar_form_and_batch_id():
    payload = decode(
        {
            "batch_id": "upload-7",
            "channels": {"station/air": {"t": [1, 2], "v": [10.0, 11.0]}, "station/rh": {"t": [1], "v": [50]}},
        }
    )
    assert payload.batch_id == "upload-7"
    assert sorted(zip(payload.batch.channel.tolist(), payload.batch.ts.tolist(), strict=True)) == [
        (11, 1_000_000),
        (11, 2_000_000),
        (12, 1_000_000),
    ]


def test_time_units_by_magnitude_and_explicit():
    payload = decode(
        [{"channel": 11, "t": t, "v": 0} for t in (1_700_000_000, 1_700_000_000_500, 1_700_000_000_000_007)]
    )
    assert payload.batch.ts.tolist() == [1_700_000_000_000_000, 1_700_000_000_500_000, 1_700_000_000_000_007]
    payload = decode({"time_unit": "ms", "readings": [{"channel": 11, "t": 5, "v": 0}]})
    assert payload.batch.ts.tolist() == [5_000]


def test_naive_iso_is_utc_and_offsets_are_honoured():
    payload = decode(
        [
            {"channel": 11, "t": "2026-01-02 03:04:05", "v": 0},
            {"channel": 11, "t": "2026-01-02T04:04:05+01:00", "v": 0},
        ]
    )
    assert payload.batch.ts[0] == payload.batch.ts[1] == 1767323045000000


def test_csv_body():
    body = b"channel,t,v\nstation/air,2026-01-02T03:04:05Z,1.5\n11,1767323046,not-a-number\n"
    payload = decode(body, "text/csv; charset=utf-8")
    assert payload.batch.channel.tolist() == [11, 11]
    assert payload.batch.value.tolist() == ["1.5", "not-a-number"]  # ingest_samples judges the values


def test_bad_readings_are_listed_with_their_index_and_the_rest_kept():
    payload = decode(
        [
            {"channel": "station/air", "t": 1, "v": 1},
            {"channel": "elsewhere/x", "t": 1, "v": 1},
            {"channel": "station/air", "t": "yesterday", "v": 1},
            {"channel": "station/air", "t": None, "v": 1},
            {"channel": "station/air", "t": 1e300, "v": 1},
            {"channel": ["not", "a", "ref"], "t": 2, "v": 1},
            {"channel": "station/air", "t": 3, "v": 1},
        ]
    )
    reasons = {r.index: r.reason for r in payload.rejections}
    assert reasons == {
        1: UNKNOWN_CHANNEL,
        2: "timestamp 'yesterday' is not an ISO 8601 time or a number",
        3: "timestamp None is neither ISO 8601 text nor a number",
        4: "timestamp 1e+300 is not a usable number of seconds since 1970",
        5: UNKNOWN_CHANNEL,
    }
    assert payload.batch.position.tolist() == [0, 6]
    assert payload.received == 7


@pytest.mark.parametrize(
    ("body", "content_type", "status", "message"),
    [
        (b"{", "application/json", 400, "the body is not valid JSON"),
        (b"\xff\xfe\x00", "application/json", 400, "the body is not valid JSON"),
        (b"[]", "application/json", 400, "the batch holds no readings"),
        (b'{"readings": 5}', "application/json", 400, "the body must be a list of readings"),
        (b'{"readings": [], "channels": {}}', "application/json", 400, 'exactly one of "readings"'),
        (b'{"rows": []}', "application/json", 400, "unknown key(s) rows"),
        (b"[1]", "application/json", 400, "reading 0 is not an object"),
        (b'[{"channel": 1, "t": 1}]', "application/json", 400, "reading 0 has no 'v'"),
        (b'{"channels": {"a/b": {"t": [1, 2], "v": [1]}}}', "application/json", 400, "has 2 times but 1 values"),
        (b'{"batch_id": 5, "readings": [{"channel": 1, "t": 1, "v": 1}]}', "application/json", 400, "batch_id"),
        (b'{"time_unit": "days", "readings": [{"channel": 1, "t": 1, "v": 1}]}', "application/json", 400, "time_unit"),
        (b"\xff\xfe", "text/csv", 400, "the body is not UTF-8 text"),
        (b"a,b\n1,2\n", "text/csv", 400, "the CSV header lacks channel, t, v"),
        (b"<xml/>", "application/xml", 415, "unsupported content type"),
        (b"[" + b",".join([b'{"channel":1,"t":1,"v":1}'] * 1001) + b"]", "application/json", 413, "the limit is 1,000"),
    ],
)
def test_bad_bodies_are_refused_whole(body, content_type, status, message):
    with pytest.raises(PayloadError) as caught:
        decode(body, content_type)
    assert caught.value.status == status
    assert message in caught.value.message
