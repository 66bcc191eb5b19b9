"""The block column codecs (collection.codec): lossless to the bit on every kind of input."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from collection import codec

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
FLOATS = st.floats(allow_nan=True, allow_infinity=True, allow_subnormal=True, width=64)


def same_bits(a: np.ndarray, b: np.ndarray) -> bool:
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


@settings(max_examples=300)
@given(hnp.arrays(np.int64, st.integers(0, 300), elements=INT64))
def test_any_int64_timestamps_round_trip(ts):
    assert same_bits(codec.decode_timestamps(codec.encode_timestamps(ts)), ts.astype("<i8"))


@given(st.integers(0, 2**60), st.integers(0, 10**9), st.integers(0, 5000))
def test_equally_spaced_timestamps_round_trip_in_a_few_bytes(first, step, n):
    ts = first + step * np.arange(n, dtype=np.int64)
    data = codec.encode_timestamps(ts)
    assert same_bits(codec.decode_timestamps(data), ts)
    # Delta-of-delta of regular sampling is all zeros after the first two words: a bounded size whatever n
    # (header 9 bytes, zstd's frame and the two 8-byte words as literals).
    assert len(data) < 100


@given(hnp.arrays(np.int64, st.integers(1, 500), elements=st.integers(0, 10**7)))
def test_irregular_sorted_timestamps_round_trip(steps):
    ts = 1_700_000_000_000_000 + np.cumsum(steps)
    assert same_bits(codec.decode_timestamps(codec.encode_timestamps(ts)), ts)


@settings(max_examples=300)
@given(hnp.arrays(np.float64, st.integers(0, 300), elements=FLOATS))
def test_any_float64_values_round_trip_bit_for_bit(values):
    for method in (None, codec.VALUE_XOR, codec.VALUE_SHUFFLE):
        assert same_bits(codec.decode_values(codec.encode_values(values, method)), values.astype("<f8"))


@given(
    hnp.arrays(np.int64, st.integers(1, 300), elements=st.integers(-(10**12), 10**12)),
    st.integers(0, codec.MAX_DECIMALS),
)
def test_short_decimals_take_the_decimal_method_and_round_trip(ints, k):
    values = np.array([float(f"{i}e-{k}") for i in ints.tolist()])  # what parsing a printed decimal gives
    data = codec.encode_values(values)
    assert same_bits(codec.decode_values(data), values)
    if np.all(np.abs(ints) < 2**53):
        assert data[0] == codec.VALUE_DECIMAL


@pytest.mark.parametrize(
    "special", [np.nan, np.inf, -np.inf, -0.0, 5e-324, np.float64(1) / 3, float.fromhex("0x1.fffffffffffffp+1023")]
)
def test_one_special_value_in_decimals_still_round_trips(special):
    values = np.array([20.125, 20.5, special, 21.0, 19.75])
    data = codec.encode_values(values)
    assert same_bits(codec.decode_values(data), values)
    assert data[0] == codec.VALUE_XOR  # the block cannot be written as short decimals


def test_nan_payload_is_kept():
    values = np.array([1.0, 2.0]).view(np.uint64)
    values[1] = 0x7FF8_0000_DEAD_BEEF
    values = values.view(np.float64)
    assert same_bits(codec.decode_values(codec.encode_values(values)), values)


def test_noisy_three_decimals_cost_under_two_bytes_a_reading():
    rng = np.random.default_rng(1)
    values = np.round(20 + rng.normal(0, 0.5, 3600), 3)
    assert len(codec.encode_values(values)) / 3600 < 2


@given(hnp.arrays(np.int16, st.integers(0, 500), elements=st.integers(0, 32767)))
def test_quality_flags_round_trip(quality):
    assert same_bits(codec.decode_quality(codec.encode_quality(quality)), quality)


def test_quality_flags_out_of_range_are_refused():
    with pytest.raises(ValueError, match="between 0 and 32767"):
        codec.encode_quality(np.array([0, -1]))


@given(st.lists(st.text(max_size=30) | st.sampled_from(["OK", "ALARM", ""]), max_size=200))
def test_text_round_trips(texts):
    assert codec.decode_text(codec.encode_text(texts)) == texts


def test_lone_surrogate_text_round_trips():
    texts = ["a\ud800b", "ok", "a\ud800b"]
    assert codec.decode_text(codec.encode_text(texts)) == texts


@pytest.mark.parametrize(
    "data", [b"", b"\x01", codec.encode_values(np.arange(10.0))[:-3], b"\x63" + codec.encode_values(np.arange(3.0))[1:]]
)
def test_corrupt_columns_raise_a_codec_error(data):
    with pytest.raises(codec.CodecError):
        codec.decode_values(data)


def test_a_column_of_another_kind_is_refused():
    with pytest.raises(codec.CodecError, match="unexpected"):
        codec.decode_timestamps(codec.encode_values(np.arange(3.0)))


@settings(max_examples=200)
@given(
    st.integers(0, 200).flatmap(
        lambda n: st.lists(
            st.one_of(hnp.arrays(np.int64, n, elements=INT64), hnp.arrays(np.float64, n, elements=FLOATS)),
            min_size=1,
            max_size=12,
        )
    )
)
def test_tables_of_int_and_float_columns_round_trip(columns):
    decoded = codec.decode_table(codec.encode_table(columns))
    assert len(decoded) == len(columns)
    for got, column in zip(decoded, columns, strict=True):
        assert same_bits(got, column.astype(column.dtype.newbyteorder("<")))


def test_a_table_of_short_decimals_keeps_their_method():
    buckets = np.arange(0, 3600, 10, dtype=np.int64) * 1_000_000
    minima = np.round(np.random.default_rng(1).normal(20, 0.5, len(buckets)), 3)
    data = codec.encode_table([buckets, minima])
    assert same_bits(codec.decode_table(data)[1], minima)
    # 360 regular buckets and 360 noisy 3-decimal minima: the minima as decimals (~1.5 B each), not xor (~6).
    assert len(data) < 360 * 3


@pytest.mark.parametrize(
    "data",
    [
        b"",
        codec.encode_table([np.arange(10), np.arange(10.0)])[:-3],
        codec.encode_values(np.arange(3.0)),
        codec._frame(codec.TABLE, 3, b"\x02" + bytes(5)),  # two column heads promised, half of one there
        codec._frame(codec.TABLE, 3, b"\x01" + bytes([codec.TS_DOD]) + (99).to_bytes(4, "little")),
    ],
)
def test_corrupt_tables_raise_a_codec_error(data):
    with pytest.raises(codec.CodecError):
        codec.decode_table(data)


def test_table_columns_of_different_lengths_are_refused():
    with pytest.raises(ValueError, match="one length"):
        codec.encode_table([np.arange(3), np.arange(4.0)])


@settings(max_examples=300)
@given(hnp.arrays(np.float64, st.integers(0, 200), elements=FLOATS), st.integers(0, codec.MAX_DECIMALS))
def test_residual_values_round_trip_bit_for_bit(values, k):
    payload = codec._residual_payload(values, k)
    if payload is None:  # a value with no integer at this scale (NaN, infinite, too large)
        with np.errstate(over="ignore", invalid="ignore"):
            scaled = values * 10.0**k
        assert not np.all(np.isfinite(scaled)) or np.max(np.abs(np.rint(scaled))) >= 2.0**53
        return
    assert same_bits(codec._unvalue(codec.VALUE_RESIDUAL, payload, len(values)), values)


def test_sums_of_short_decimals_take_the_residual_method_in_a_table():
    rng = np.random.default_rng(4)
    readings = np.round(20 + rng.normal(0, 0.5, (360, 10)), 3)
    sums = readings.sum(axis=1)  # what a 10 s bucket of 1 Hz readings holds
    assert codec.decimal_scale(sums) is None or codec.decimal_scale(sums) > 3  # float rounding: not 3 decimals
    method, _ = codec._smallest_value_payload(sums)
    assert method == codec.VALUE_RESIDUAL
    table = codec.encode_table([sums])
    assert same_bits(codec.decode_table(table)[0], sums)
    assert len(table) < 0.6 * len(codec.encode_values(sums, codec.VALUE_XOR))


def _least_scale_one_k_at_a_time(values: np.ndarray) -> int | None:
    """``decimal_scale`` as it was first written (every k in turn over every value): the reference."""
    if len(values) == 0:
        return 0
    if not np.all(np.isfinite(values)):
        return None
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(codec.MAX_DECIMALS + 1):
            scaled = np.rint(values * 10.0**k)
            if np.max(np.abs(scaled)) >= 2.0**53:
                return None
            if np.array_equal((scaled.astype("<i8").astype("<f8") / 10.0**k).view("<u8"), values.view("<u8")):
                return k
    return None


SHORT_DECIMALS = st.builds(
    lambda ints, k, tail: np.concatenate([np.array(ints, dtype=np.int64) / 10.0**k, np.array(tail, dtype=np.float64)]),
    st.lists(st.integers(-(10**12), 10**12), max_size=150),
    st.integers(0, codec.MAX_DECIMALS + 1),
    st.lists(FLOATS, max_size=3),
)


@settings(max_examples=300)
@given(st.one_of(SHORT_DECIMALS, hnp.arrays(np.float64, st.integers(0, 150), elements=FLOATS)))
def test_decimal_scale_is_the_least_exact_scale(values):
    assert codec.decimal_scale(values) == _least_scale_one_k_at_a_time(values)


@settings(max_examples=200)
@given(
    st.integers(0, 150).flatmap(
        lambda n: st.lists(SHORT_DECIMALS.map(lambda v: np.resize(v, n)), min_size=1, max_size=5)
    )
)
def test_table_float_columns_judged_together_take_decimal_at_their_least_scale(columns):
    payloads = codec._float_payloads(np.stack(columns).astype("<f8"))
    for (method, payload), column in zip(payloads, columns, strict=True):
        k = _least_scale_one_k_at_a_time(column)
        assert (method == codec.VALUE_DECIMAL) == (k is not None)
        if k is not None:
            assert payload == codec._value_payload(column)[1]
        assert same_bits(codec._unvalue(method, payload, len(column)), column)


@settings(max_examples=100)
@given(
    st.tuples(st.integers(1, 6), st.integers(0, 100)).flatmap(lambda shape: hnp.arrays(np.int64, shape, elements=INT64))
)
def test_int_columns_of_a_table_encode_as_one_at_a_time(rows):
    assert codec._dod_rows(rows) == [codec._dod_payload(row) for row in rows]


@settings(max_examples=100)
@given(
    st.lists(
        st.integers(0, 80).flatmap(
            lambda n: st.lists(
                st.one_of(SHORT_DECIMALS.map(lambda v: np.resize(v, n)), hnp.arrays(np.int64, n, elements=INT64)),
                min_size=1,
                max_size=4,
            )
        ),
        max_size=6,
    )
)
def test_tables_encoded_together_are_the_bytes_of_each_alone(tables):
    together = codec.encode_tables(tables)
    assert together == [codec.encode_table(columns) for columns in tables]
    for data, columns in zip(together, tables, strict=True):
        for got, column in zip(codec.decode_table(data), columns, strict=True):
            assert same_bits(got, column)


def test_a_column_decimal_in_its_first_values_only_takes_its_least_scale_over_all():
    column = np.round(np.random.default_rng(5).normal(20, 1, 300), 2)
    column[200] = 20.125  # three decimals, past the first values the scale is judged on
    (method, payload), *_ = codec._float_payloads(column[None, :])
    assert (method, payload[0]) == (codec.VALUE_DECIMAL, 3)
    assert same_bits(codec._unvalue(method, payload, len(column)), column)
    column[250] = 0.1 + 0.2  # no short decimal at all now
    (method, payload), *_ = codec._float_payloads(column[None, :])
    assert method in (codec.VALUE_RESIDUAL, codec.VALUE_XOR)
    assert same_bits(codec._unvalue(method, payload, len(column)), column)
