"""Column codecs for compressed reading blocks (docs/storage.md): pure numpy and pyarrow's zstd, no Django.

A block holds one channel's readings of one time window as three byte strings, one per column. Every
encoding is lossless to the bit (NaN payloads, infinities and negative zero included) and self-describing:
a one-byte method tag, the element count and the raw length, then the zstd frame. The methods, chosen by
measurement (``bench/storage.py``, docs/performance.md#storage):

* **timestamps** (int64 µs): delta-of-delta, zigzag, byte-shuffled, zstd. Regular sampling gives a run of
  zeros, which costs almost nothing; irregular sampling costs what its jitter is worth. All arithmetic
  wraps modulo 2**64, so any int64 round-trips, sorted or not.
* **values** (float64): *decimal* when every value is exactly ``integer / 10**k`` for one k ≤ 9 (what a
  logger printing 3 decimals gives): the integers, delta, zigzag, shuffled, zstd — ~1.2 bytes a reading
  for noisy 3-decimal data where any float transform keeps ~6 bytes of mantissa noise. Otherwise *xor*:
  each value's bits XOR the previous value's (Gorilla's idea), byte-shuffled, zstd. Both measured against
  plain shuffle + zstd and lz4 in the bench; the decimal test is a bit-exact round trip, so a single
  value that is not a short decimal (or is -0.0, NaN or infinite) sends the block to *xor*.
* **quality** (ints 0 to 32767): run-length (value, length) pairs, zstd.
* **text**: a dictionary of the distinct strings (UTF-8, length-prefixed) and one uint32 index per
  reading, zstd.
* **tables** (several columns of one length: the rollup buckets of a packed hour): each int64 column as
  timestamps, each float64 column as values, then one zstd frame over them all (one decompression to
  read a table back, not one per column). A float column that is not exactly decimal may also take
  *residual*: the values rounded to k decimals as integers, plus each value's bits XOR its rounded
  value's — a bucket's sum or M2 of short decimals is one but for its last bits' rounding. On the
  column's first 64 values, residual is judged at every k by the bytes its words need up to their
  highest set bit, and of xor and the two best k the one zstd makes smallest is kept (three trial
  compressions, not eleven). ``encode_tables`` encodes many tables at once (the same bytes).

zstd comes from pyarrow (already a dependency for Parquet exports), through its ``Codec``.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

ZSTD_LEVEL = 3  # level 3 is zstd's default: levels up to 9 gained < 3% here for several times the time
_ZSTD = pa.Codec("zstd", compression_level=ZSTD_LEVEL)
_HEADER = struct.Struct("<BII")  # method, element count, raw (uncompressed payload) length
MAX_DECIMALS = 9

# Method tags (never reuse a number: stored blocks keep them).
TS_DOD = 1
VALUE_DECIMAL = 2
VALUE_XOR = 3
VALUE_SHUFFLE = 4  # measured only (bench); decoded for completeness
QUALITY_RLE = 5
TEXT_DICT = 6
TABLE = 7
VALUE_RESIDUAL = 8

_COLUMN_HEAD = struct.Struct("<BI")  # a table column's method and payload length

_U8, _I8 = np.dtype("<u8"), np.dtype("<i8")


class CodecError(ValueError):
    """A block column that cannot be decoded (corrupt, truncated, or of an unknown method)."""


# --- framing ------------------------------------------------------------------------------------------


def _frame(method: int, count: int, payload: bytes) -> bytes:
    return _HEADER.pack(method, count, len(payload)) + (_ZSTD.compress(payload, asbytes=True) if payload else b"")


def _unframe(data: bytes, expected: Sequence[int]) -> tuple[int, int, bytes]:
    if len(data) < _HEADER.size:
        raise CodecError("block column shorter than its header")
    method, count, raw = _HEADER.unpack_from(data)
    if method not in expected:
        raise CodecError(f"unexpected block column method {method}")
    body = bytes(data[_HEADER.size :])
    try:
        payload = _ZSTD.decompress(body, decompressed_size=raw, asbytes=True) if raw else b""
    except (OSError, ValueError, pa.ArrowException) as error:
        raise CodecError(f"corrupt block column: {error}") from error
    if len(payload) != raw:
        raise CodecError("block column decompressed to the wrong length")
    return method, count, payload


def _shuffle(words: np.ndarray) -> bytes:
    """Byte-shuffle 8-byte words: all first bytes, then all second bytes, ... (zeros gather in runs)."""
    return np.ascontiguousarray(words.astype(_U8, copy=False).view(np.uint8).reshape(-1, 8).T).tobytes()


def _unshuffle(payload: bytes, count: int) -> np.ndarray:
    planes = np.frombuffer(payload, dtype=np.uint8)
    if planes.size != count * 8:
        raise CodecError("block column holds the wrong number of words")
    return np.ascontiguousarray(planes.reshape(8, count).T).view(_U8).reshape(count)


def _zigzag(x: np.ndarray) -> np.ndarray:
    u = x.view(_U8)
    return (u << np.uint64(1)) ^ (np.uint64(0) - (u >> np.uint64(63)))


def _unzigzag(z: np.ndarray) -> np.ndarray:
    return (z >> np.uint64(1)) ^ (np.uint64(0) - (z & np.uint64(1)))


def _delta(u: np.ndarray) -> np.ndarray:
    """First element, then successive differences, modulo 2**64."""
    out = u.copy()
    out[1:] = u[1:] - u[:-1]
    return out


def _undelta(d: np.ndarray) -> np.ndarray:
    return np.cumsum(d, dtype=_U8)


# --- timestamps ---------------------------------------------------------------------------------------


def _dod_payload(ts: np.ndarray) -> bytes:
    u = np.ascontiguousarray(ts, dtype=_I8).view(_U8)
    return _shuffle(_zigzag(_delta(_delta(u)).view(_I8)))


def _dod_rows(ints: np.ndarray) -> list[bytes]:
    """``_dod_payload`` of each row of a 2-D int64 array, all rows at once."""
    if ints.shape[1] == 0:
        return [b""] * len(ints)
    u = ints.view(_U8)
    d = u.copy()
    d[:, 1:] = u[:, 1:] - u[:, :-1]
    dd = d.copy()
    dd[:, 1:] = d[:, 1:] - d[:, :-1]
    zigzagged = (dd << np.uint64(1)) ^ (np.uint64(0) - (dd >> np.uint64(63)))
    return [row.tobytes() for row in _shuffle_rows(zigzagged)]


def _undod(payload: bytes, count: int) -> np.ndarray:
    return _undelta(_undelta(_unzigzag(_unshuffle(payload, count)))).view(_I8)


def encode_timestamps(ts: np.ndarray) -> bytes:
    return _frame(TS_DOD, len(ts), _dod_payload(ts))


def decode_timestamps(data: bytes) -> np.ndarray:
    _, count, payload = _unframe(data, (TS_DOD,))
    return _undod(payload, count)


# --- values -------------------------------------------------------------------------------------------


_SCALES = 10.0 ** np.arange(MAX_DECIMALS + 1)  # 10**k for every k, as a column for broadcasting
_HEAD = 64  # values a method is judged on (a column of one kind: its first values tell as well as all)
_SHORTLIST = 2  # residual scales tried by compression, of those whose words need the fewest bytes


def _round_trips(values: np.ndarray, k: int) -> bool | None:
    """Whether every value is bit-for-bit ``round(v * 10**k) / 10**k`` (None: an integer reaches 2**53,
    as it then does at every larger k)."""
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.rint(values * _SCALES[k])
        if np.max(np.abs(scaled)) >= 2.0**53:
            return None
        # Through int64, as decoding goes: -0.0 becomes 0 and fails the comparison, as it must.
        return np.array_equal((scaled.astype(_I8).astype("<f8") / _SCALES[k]).view(_U8), values.view(_U8))


def _head_scale(head: np.ndarray) -> int | None:
    """``decimal_scale`` of a few finite values, every k at once (one pass of numpy calls, not ten)."""
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.rint(head * _SCALES[:, None])
        fits = np.max(np.abs(scaled), axis=1) < 2.0**53  # once false, false for every larger k
        back = (np.where(fits[:, None], scaled, 0.0).astype(_I8).astype("<f8") / _SCALES[:, None]).view(_U8)
    exact = fits & np.all(back == head.view(_U8), axis=1)
    return int(np.argmax(exact)) if exact.any() else None


def decimal_scale(values: np.ndarray) -> int | None:
    """The least k ≤ ``MAX_DECIMALS`` for which every value is bit-for-bit ``round(v * 10**k) / 10**k``
    with the integer below 2**53, or None.

    The first values' least k, every k at once, then the whole column from there up (usually one check):
    no k below the first values' can hold for all of them."""
    if len(values) == 0:
        return 0
    values = np.ascontiguousarray(values, dtype="<f8")
    if not np.all(np.isfinite(values)):
        return None
    start = _head_scale(values[:_HEAD])
    if start is None or len(values) <= _HEAD:
        return start
    for k in range(start, MAX_DECIMALS + 1):
        exact = _round_trips(values, k)
        if exact is None:
            return None
        if exact:
            return k
    return None


def _value_payload(values: np.ndarray, method: int | None = None) -> tuple[int, bytes]:
    v = np.ascontiguousarray(values, dtype="<f8")
    if method in (None, VALUE_DECIMAL):
        k = decimal_scale(v)
        if k is not None:
            ints = np.rint(v * 10.0**k).astype(_I8)
            return VALUE_DECIMAL, bytes([k]) + _shuffle(_zigzag(_delta(ints.view(_U8)).view(_I8)))
        if method == VALUE_DECIMAL:
            raise ValueError("values are not all short decimals")
    u = v.view(_U8)
    if method == VALUE_SHUFFLE:
        return VALUE_SHUFFLE, _shuffle(u)
    xored = u.copy()
    xored[1:] ^= u[:-1]
    return VALUE_XOR, _shuffle(xored)


def _residual_payload(values: np.ndarray, k: int) -> bytes | None:
    """The values rounded to k decimals as integers (delta, zigzag, shuffled), then each value's bits
    XOR the rounded value's (shuffled): a sum or M2 of short decimals is a short decimal but for the
    rounding of its last bits, which is all the XOR keeps. None when a value has no such integer."""
    scale = 10.0**k
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.rint(values * scale)
    if len(values) and (not np.all(np.isfinite(scaled)) or np.max(np.abs(scaled)) >= 2.0**53):
        return None
    ints = scaled.astype(_I8)
    residual = values.view(_U8) ^ (ints.astype("<f8") / scale).view(_U8)
    return bytes([k]) + _shuffle(_zigzag(_delta(ints.view(_U8)).view(_I8))) + _shuffle(residual)


def _shuffle_rows(words: np.ndarray) -> np.ndarray:
    """``_shuffle`` of each row of a 2-D array of 8-byte words at once: row i's bytes are ``out[i]``."""
    rows, count = words.shape
    return np.ascontiguousarray(words.view(np.uint8).reshape(rows, count, 8).transpose(0, 2, 1)).reshape(rows, -1)


def _bytes_needed(words: np.ndarray) -> np.ndarray:
    """Bytes of each unsigned word up to its highest set bit (0 for 0): what its byte-shuffled planes cost
    zstd, roughly (all-zero planes compress to almost nothing)."""
    _, exponent = np.frexp(words.astype(np.float64))  # 2**64 - 1 rounds up to 2**64: capped below
    return np.minimum((exponent + 7) // 8, 8)


def _at_scales(values: np.ndarray, scales: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each value rounded at its row's scale(s) (``scales`` broadcast against ``values``): (fits: no integer
    reaches 2**53 and none is NaN or infinite, along the last axis; the integers, 0 where they do not fit;
    each value's bits XOR the bits of its integer over the scale — all zero where the value is exact)."""
    with np.errstate(over="ignore", invalid="ignore"):
        scaled = np.rint(values * scales)
        fits = np.max(np.abs(scaled), axis=-1) < 2.0**53  # NaN compares false
        ints = np.where(fits[..., None], scaled, 0.0).astype(_I8)
        back = (ints.astype("<f8") / scales).view(_U8)
    return fits, ints, values.view(_U8) ^ back


def _float_payloads(values: np.ndarray) -> list[tuple[int, bytes]]:
    """(method, payload) of each row of ``values`` (float64 columns of one length, as rows): *decimal* at
    its least k when exact, else the smaller of *xor* and *residual* at the best k.

    Judged on each row's first ``_HEAD`` values at every k at once (a table's columns are a few hundred
    values of one kind: the first ones tell the scale as well as all of them), then each row's choice made
    on all its values. Residual's k is shortlisted by the bytes its words need up to their highest set
    bit (what zstd makes of byte-shuffled planes, roughly), and only xor and the two best k are compressed
    on trial: the bytes of eleven trials (within 0.1%) at a fraction of the time (docs/performance.md)."""
    rows, count = values.shape
    if count == 0:
        return [_value_payload(row) for row in values]
    head = values[:, :_HEAD]
    fits, ints, residual = _at_scales(head[:, None, :], _SCALES[None, :, None])  # (row, k, value)
    exact = fits & ~residual.any(axis=2)  # through int64, as decoding goes: -0.0 fails, as it must
    # Decimal: no k below the first values' least can hold for all; check that one on every value.
    scale = np.where(exact.any(axis=1), np.argmax(exact, axis=1), -1)
    decimal = scale >= 0
    if decimal.any():
        whole, _, wrong = _at_scales(values[decimal], _SCALES[scale[decimal]][:, None])
        late = np.flatnonzero(decimal)[~(whole & ~wrong.any(axis=1))]
        for row in late.tolist():  # exact in the first values only: from there up, one k at a time
            k = decimal_scale(values[row])
            scale[row] = -1 if k is None else k
        decimal = scale >= 0
    # The others: xor, or residual at one of the two k whose words need the fewest bytes: whichever zstd
    # makes smallest of the first values (three trial compressions, not eleven).
    xor_rows = np.zeros(rows, dtype=bool)
    if not decimal.all():
        others = np.flatnonzero(~decimal)
        xored = head[others].view(_U8).copy()
        xored[:, 1:] ^= head[others, :-1].view(_U8)
        deltas_head = _zigzag_rows(ints[others])
        needed = _bytes_needed(deltas_head).sum(axis=2) + _bytes_needed(residual[others]).sum(axis=2)
        cost = np.where(fits[others], needed, np.inf)
        shortlist = np.argsort(cost, axis=1, kind="stable")[:, :_SHORTLIST]
        for i, row in enumerate(others.tolist()):
            best_k, size = None, len(_ZSTD.compress(_shuffle(xored[i]), asbytes=True))
            for k in shortlist[i].tolist():
                if not np.isfinite(cost[i, k]):
                    break
                trial = bytes([k]) + _shuffle(deltas_head[i, k]) + _shuffle(residual[row, k])
                if (n := len(_ZSTD.compress(trial, asbytes=True))) < size:
                    best_k, size = k, n
            scale[row] = best_k if best_k is not None else 0
            xor_rows[row] = best_k is None
    at = ~xor_rows
    fits_all, ints_all, residual_all = _at_scales(values[at], _SCALES[scale[at]][:, None])
    xor_rows[np.flatnonzero(at)[~fits_all]] = True  # a later value too large at that scale: xor
    deltas = _zigzag_rows(ints_all)
    out: list[tuple[int, bytes]] = []
    where = np.cumsum(at) - 1  # each row's place among those at a scale
    for row in range(rows):
        if xor_rows[row]:
            out.append(_value_payload(values[row], VALUE_XOR))
        elif decimal[row]:
            out.append((VALUE_DECIMAL, bytes([int(scale[row])]) + _shuffle(deltas[where[row]])))
        else:
            i = where[row]
            out.append((VALUE_RESIDUAL, bytes([int(scale[row])]) + _shuffle(deltas[i]) + _shuffle(residual_all[i])))
    return out


def _zigzag_rows(ints: np.ndarray) -> np.ndarray:
    """zigzag(delta) along the last axis, modulo 2**64 (``_delta`` and ``_zigzag`` of every row)."""
    u = ints.view(_U8)
    d = u.copy()
    d[..., 1:] = u[..., 1:] - u[..., :-1]
    return (d << np.uint64(1)) ^ (np.uint64(0) - (d >> np.uint64(63)))


def _smallest_value_payload(values: np.ndarray) -> tuple[int, bytes]:
    """``_float_payloads`` of one column."""
    return _float_payloads(np.ascontiguousarray(values, dtype="<f8")[None, :])[0]


def encode_values(values: np.ndarray, method: int | None = None) -> bytes:
    """Float64 values, by ``method`` (VALUE_DECIMAL when exact, else VALUE_XOR, if None)."""
    chosen, payload = _value_payload(values, method)
    return _frame(chosen, len(values), payload)


def decode_values(data: bytes) -> np.ndarray:
    method, count, payload = _unframe(data, (VALUE_DECIMAL, VALUE_XOR, VALUE_SHUFFLE, VALUE_RESIDUAL))
    return _unvalue(method, payload, count)


def _unvalue(method: int, payload: bytes, count: int) -> np.ndarray:
    if method == VALUE_DECIMAL:
        if not payload:
            raise CodecError("decimal values without their scale")
        k = payload[0]
        ints = _undelta(_unzigzag(_unshuffle(payload[1:], count))).view(_I8)
        return ints.astype("<f8") / 10.0**k
    if method == VALUE_RESIDUAL:
        if len(payload) != 1 + 16 * count:
            raise CodecError("residual values of the wrong length")
        k = payload[0]
        ints = _undelta(_unzigzag(_unshuffle(payload[1 : 1 + 8 * count], count))).view(_I8)
        residual = _unshuffle(payload[1 + 8 * count :], count)
        return ((ints.astype("<f8") / 10.0**k).view(_U8) ^ residual).view("<f8")
    words = _unshuffle(payload, count)
    if method == VALUE_XOR:
        words = np.bitwise_xor.accumulate(words) if count else words
    return words.view("<f8")


# --- quality ------------------------------------------------------------------------------------------


def encode_quality(quality: np.ndarray) -> bytes:
    q = np.ascontiguousarray(quality, dtype=np.int64)
    if len(q) and (q.min() < 0 or q.max() > 0x7FFF):
        raise ValueError("quality flags must be between 0 and 32767")
    if len(q) == 0:
        return _frame(QUALITY_RLE, 0, b"")
    starts = np.concatenate(([0], np.flatnonzero(q[1:] != q[:-1]) + 1))
    lengths = np.diff(np.append(starts, len(q))).astype("<u4")
    runs = q[starts].astype("<u2")
    return _frame(QUALITY_RLE, len(q), struct.pack("<I", len(runs)) + runs.tobytes() + lengths.tobytes())


def decode_quality(data: bytes) -> np.ndarray:
    _, count, payload = _unframe(data, (QUALITY_RLE,))
    if count == 0:
        return np.empty(0, dtype=np.int16)
    (n,) = struct.unpack_from("<I", payload)
    runs = np.frombuffer(payload, dtype="<u2", count=n, offset=4)
    lengths = np.frombuffer(payload, dtype="<u4", count=n, offset=4 + 2 * n)
    if int(lengths.sum()) != count:
        raise CodecError("quality runs do not add up to the block's count")
    return np.repeat(runs, lengths).astype(np.int16)


# --- text ---------------------------------------------------------------------------------------------


def encode_text(texts: Sequence[str]) -> bytes:
    words: dict[str, int] = {}
    index = np.fromiter((words.setdefault(t, len(words)) for t in texts), dtype="<u4", count=len(texts))
    encoded = [w.encode("utf-8", "surrogatepass") for w in words]
    lengths = np.array([len(e) for e in encoded], dtype="<u4")
    payload = struct.pack("<I", len(encoded)) + lengths.tobytes() + b"".join(encoded) + index.tobytes()
    return _frame(TEXT_DICT, len(texts), payload)


def decode_text(data: bytes) -> list[str]:
    _, count, payload = _unframe(data, (TEXT_DICT,))
    (n,) = struct.unpack_from("<I", payload)
    lengths = np.frombuffer(payload, dtype="<u4", count=n, offset=4)
    position = 4 + 4 * n
    words = []
    for length in lengths.tolist():
        words.append(payload[position : position + length].decode("utf-8", "surrogatepass"))
        position += length
    index = np.frombuffer(payload, dtype="<u4", count=count, offset=position)
    if count and int(index.max()) >= n:
        raise CodecError("text index outside the dictionary")
    return [words[i] for i in index.tolist()]


# --- tables -------------------------------------------------------------------------------------------


def encode_table(columns: Sequence[np.ndarray]) -> bytes:
    """Columns of one length in one byte string: int64 columns as timestamps (delta-of-delta), float64
    columns as values (decimal when exact, else the smaller of xor and residual); each column's method and
    payload length up front, one zstd frame over everything."""
    return encode_tables([columns])[0]


_BATCH_VALUES = 1 << 16  # values judged in one call of _float_payloads (x11 scales: a few MB at most)


def encode_tables(tables: Sequence[Sequence[np.ndarray]]) -> list[bytes]:
    """``encode_table`` of each of ``tables``, the same bytes: the float columns of every table of one
    length judged together, and their int columns encoded together (numpy costs per call, not per value:
    a run of packed hours pays it once a length and batch, not once a table)."""
    floats: dict[int, list[np.ndarray]] = {}
    ints: dict[int, list[np.ndarray]] = {}
    for columns in tables:
        count = len(columns[0]) if len(columns) else 0
        if len(columns) > 255:
            raise ValueError("a table holds at most 255 columns")
        for column in columns:
            if len(column) != count:
                raise ValueError("table columns must have one length")
            if column.dtype.kind == "f":
                floats.setdefault(count, []).append(np.ascontiguousarray(column, dtype="<f8"))
            elif column.dtype.kind in "iu":
                ints.setdefault(count, []).append(np.ascontiguousarray(column, dtype=_I8))
            else:
                raise TypeError(f"no table encoding for {column.dtype}")
    float_payloads = {}
    for count, found in floats.items():
        step = max(1, _BATCH_VALUES // max(count, 1))
        float_payloads[count] = iter(
            [p for i in range(0, len(found), step) for p in _float_payloads(np.stack(found[i : i + step]))]
        )
    int_payloads = {count: iter(_dod_rows(np.stack(found))) for count, found in ints.items()}
    out = []
    for columns in tables:
        count = len(columns[0]) if len(columns) else 0
        heads, payloads = [], []
        for column in columns:
            if column.dtype.kind == "f":
                method, payload = next(float_payloads[count])
            else:
                method, payload = TS_DOD, next(int_payloads[count])
            heads.append(_COLUMN_HEAD.pack(method, len(payload)))
            payloads.append(payload)
        out.append(_frame(TABLE, count, bytes([len(columns)]) + b"".join(heads) + b"".join(payloads)))
    return out


def decode_table(data: bytes) -> list[np.ndarray]:
    """The columns of ``encode_table`` (int64 and float64), in their order."""
    _, count, payload = _unframe(data, (TABLE,))
    if not payload:
        raise CodecError("table without its column count")
    n = payload[0]
    position = 1 + n * _COLUMN_HEAD.size
    if len(payload) < position:
        raise CodecError("table shorter than its column heads")
    columns = []
    for i in range(n):
        method, length = _COLUMN_HEAD.unpack_from(payload, 1 + i * _COLUMN_HEAD.size)
        body = payload[position : position + length]
        if len(body) != length:
            raise CodecError("table column shorter than its head says")
        position += length
        if method == TS_DOD:
            columns.append(_undod(body, count))
        elif method in (VALUE_DECIMAL, VALUE_XOR, VALUE_SHUFFLE, VALUE_RESIDUAL):
            columns.append(_unvalue(method, body, count))
        else:
            raise CodecError(f"unexpected table column method {method}")
    if position != len(payload):
        raise CodecError("table longer than its columns")
    return columns


def encode_lz4_shuffled(values: np.ndarray) -> bytes:
    """Byte-shuffle + lz4, for the bench's comparison only (not a stored method)."""
    return pa.Codec("lz4").compress(_shuffle(np.ascontiguousarray(values, dtype="<f8").view(_U8)), asbytes=True)
