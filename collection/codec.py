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
  value's — a bucket's sum or M2 of short decimals is one but for its last bits' rounding. The smallest
  of xor and residual at every k is kept (a trial compression each on the column's first 64 values).

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


def _undod(payload: bytes, count: int) -> np.ndarray:
    return _undelta(_undelta(_unzigzag(_unshuffle(payload, count)))).view(_I8)


def encode_timestamps(ts: np.ndarray) -> bytes:
    return _frame(TS_DOD, len(ts), _dod_payload(ts))


def decode_timestamps(data: bytes) -> np.ndarray:
    _, count, payload = _unframe(data, (TS_DOD,))
    return _undod(payload, count)


# --- values -------------------------------------------------------------------------------------------


def decimal_scale(values: np.ndarray) -> int | None:
    """The least k ≤ ``MAX_DECIMALS`` for which every value is bit-for-bit ``round(v * 10**k) / 10**k``
    with the integer below 2**53, or None."""
    if len(values) == 0:
        return 0
    if not np.all(np.isfinite(values)):
        return None
    bits = values.view(_U8)
    with np.errstate(over="ignore", invalid="ignore"):
        for k in range(MAX_DECIMALS + 1):
            scale = 10.0**k
            scaled = np.rint(values * scale)
            if np.max(np.abs(scaled)) >= 2.0**53:
                return None
            # Through int64, as decoding goes: -0.0 becomes 0 and fails the comparison, as it must.
            if np.array_equal((scaled.astype(_I8).astype("<f8") / scale).view(_U8), bits):
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


def _smallest_value_payload(values: np.ndarray, sample: int = 64) -> tuple[int, bytes]:
    """Of *decimal* (when exact), *xor* and *residual* at every scale, the payload zstd makes smallest,
    judged by a trial compression of each on the first ``sample`` values (a table column is a few hundred
    values of one kind: the first ones tell the scale as well as all of them, at a fraction of the cost)."""
    method, payload = _value_payload(values)
    if method == VALUE_DECIMAL:
        return method, payload
    v = np.ascontiguousarray(values, dtype="<f8")
    head = v[:sample]
    best_k, size = None, len(_ZSTD.compress(_value_payload(head, VALUE_XOR)[1], asbytes=True))
    for k in range(MAX_DECIMALS + 1):
        candidate = _residual_payload(head, k)
        if candidate is not None and (n := len(_ZSTD.compress(candidate, asbytes=True))) < size:
            best_k, size = k, n
    if best_k is not None and (whole := _residual_payload(v, best_k)) is not None:
        return VALUE_RESIDUAL, whole
    return method, payload


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
    count = len(columns[0]) if len(columns) else 0
    if len(columns) > 255:
        raise ValueError("a table holds at most 255 columns")
    heads, payloads = [], []
    for column in columns:
        if len(column) != count:
            raise ValueError("table columns must have one length")
        if column.dtype.kind == "f":
            method, payload = _smallest_value_payload(column)
        elif column.dtype.kind in "iu":
            method, payload = TS_DOD, _dod_payload(column)
        else:
            raise TypeError(f"no table encoding for {column.dtype}")
        heads.append(_COLUMN_HEAD.pack(method, len(payload)))
        payloads.append(payload)
    return _frame(TABLE, count, bytes([len(columns)]) + b"".join(heads) + b"".join(payloads))


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
