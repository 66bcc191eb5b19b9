"""Readings as CSV text, byte for byte what PostgreSQL's ``COPY ... TO STDOUT (FORMAT CSV)`` writes for the
same rows, built column-wise in numpy.

Every text is a matrix of 64-bit words, a row per reading, fields in words of their own; a 0 byte is
"nothing here" (a leading zero of a number, a trailing zero of a fraction, a sign a positive number has
not), and rows are joined by dropping every 0 byte at once (CSV text of readings never holds one: times and
numbers are digits, labels are slugs, text values are formatted apart). So a million rows cost a few array
operations (table look-ups, shifts), not a million Python calls.

* Floats: PostgreSQL's shortest exact text (``float8out``, extra_float_digits = 1): the fewest digits that
  read back to the same double, fixed notation for a decimal exponent from -4 to 14, else ``1.5e-05`` /
  ``1e+15``; ``NaN``, ``Infinity``, ``-Infinity``; ``-0``. orjson writes the digits of the whole column in
  one call (``floats``); the exponent forms one at a time (``pg_float``).
* Times, in the export's formats (``export_read``): ISO 8601 in a time zone as PostgreSQL's ISO ``DateStyle``
  with a "T" (``2024-05-06T09:00:00.25+02``), exact decimal seconds or milliseconds, microseconds, Igor
  Pro's seconds since 1904, MATLAB datenums rounded half up to 11 decimals.
* Text values are quoted as PostgreSQL quotes them: when they hold a comma, a quote or a line break, or are
  empty (an empty string is ``""``; a missing value would be nothing).
"""

from __future__ import annotations

import functools
import math
import zoneinfo
from fractions import Fraction

import numpy as np
import orjson
import pandas as pd
from numpy.lib.stride_tricks import sliding_window_view

from collection.services.export_read import DAY_US, IGOR_EPOCH_US, MATLAB_DECIMALS, MATLAB_EPOCH_DAYS, UTC

ZERO, DIGIT = 0, ord("0")
POW10 = 10 ** np.arange(19, dtype=np.int64)
U64 = np.uint64
MINUTE_US = 60_000_000

COMMA, DOT = ord(","), ord(".")
TOKEN_BYTES = 24  # the longest text of a double: "-1.7976931348623157e+308"; "-0.00012345678901234567" is 23
FLOAT_WORDS = 4  # the text, and a last byte free for the row's end


# Texts are matrices of 64-bit words, 8 bytes of text each (little-endian: the first character is the low
# byte), a row per reading; a 0 byte is nothing. Fields sit in words of their own, so putting a row
# together is stacking words, and a field is mostly a table look-up or two joined by a shift.


def joined(*columns: np.ndarray) -> bytes:
    """Word matrices of the same number of rows, side by side, row after row, without their 0 bytes."""
    table = np.hstack(columns) if len(columns) > 1 else columns[0]
    flat = np.ascontiguousarray(table).view(np.uint8).reshape(-1)
    return flat[flat != ZERO].tobytes()


def lines(words: np.ndarray) -> list[str]:
    """Each row of a word matrix as a string."""
    if not len(words):
        return []
    return joined(words, constant(b"\n", len(words))).decode().split("\n")[:-1]


def constant(text: bytes, rows: int) -> np.ndarray:
    return np.broadcast_to(_pack([text], _words_for(len(text)))[0], (rows, _words_for(len(text))))


def _words_for(length: int) -> int:
    return max(1, -(-length // 8))


def _pack(texts: list[bytes], words: int) -> np.ndarray:
    """Byte strings (at most ``words`` * 8 bytes) as a word matrix."""
    data = b"".join(text.ljust(8 * words, b"\0") for text in texts)
    return np.frombuffer(data, np.uint8).view(U64).reshape(len(texts), words).copy()


def _bytes(words: np.ndarray) -> np.ndarray:
    """The byte view of a (contiguous) word matrix, a row per reading."""
    return words.view(np.uint8).reshape(len(words), 8 * words.shape[1])


# --- tables ---------------------------------------------------------------------------------------


@functools.cache
def _digit_bytes(width: int) -> np.ndarray:
    """Every integer below 10**width as ``width`` digits, zero-padded: a byte matrix, row n for n."""
    n = np.arange(10**width, dtype=np.int64)
    return ((n[:, None] // POW10[width - 1 :: -1][None, :width]) % 10 + DIGIT).astype(np.uint8)


@functools.cache
def _table(width: int, *, dot: bool = False, stripped: bool = False) -> np.ndarray:
    """Every integer below 10**width as one word: its ``width`` digits, after a "." if ``dot``; ``stripped``:
    without trailing zeros, and 0 as nothing at all (not even the dot)."""
    digits = _digit_bytes(width).copy()
    if stripped:
        kept = width - np.argmax((digits != DIGIT)[:, ::-1], axis=1)
        kept[0] = 0
        digits[np.arange(width)[None, :] >= kept[:, None]] = ZERO
    columns = [np.full((len(digits), 1), ord("."), np.uint8)] if dot else []
    columns += [digits, np.zeros((len(digits), 8 - width - dot), np.uint8)]
    table = np.hstack(columns)
    if dot and stripped:
        table[0] = ZERO
    words = table.view(U64).reshape(-1)
    words.flags.writeable = False
    return words


def _shifted(words: np.ndarray, by_bytes: int) -> np.ndarray:
    return words << U64(8 * by_bytes)


def _byte(character: str, at: int) -> np.uint64:
    return U64(ord(character)) << U64(8 * at)


# --- numbers --------------------------------------------------------------------------------------


def _natural(n: np.ndarray, words: int, minimum: int = 1) -> np.ndarray:
    """Integers 0 <= n < 10**(8 * words), right-aligned in ``words`` words, without leading zeros beyond
    ``minimum`` digits; the first byte is always free (for a sign) when n < 10**(8 * words - 1)."""
    four = _table(4)
    out = np.empty((len(n), words), U64)
    rest = n
    for word in range(words - 1, -1, -1):
        rest, low = np.divmod(rest, 100_000_000)
        high, low = np.divmod(low, 10_000)
        out[:, word] = four[high] | _shifted(four[low], 4)
    width = 8 * words
    count = np.maximum(minimum, np.searchsorted(POW10[: min(width, 19)], n, side="right"))
    _bytes(out)[np.arange(width)[None, :] < (width - count)[:, None]] = ZERO
    return out


def _signed(words: np.ndarray, negative: np.ndarray) -> np.ndarray:
    """A "-" in the first byte of the rows where ``negative`` (a byte the numbers leave free)."""
    words[:, 0] |= np.where(negative, _byte("-", 0), U64(0))
    return words


def integers(n: np.ndarray) -> np.ndarray:
    """Integers (|n| < 10**19) as PostgreSQL writes them (three words)."""
    n = np.asarray(n, dtype=np.int64)
    return _signed(_natural(np.abs(n), 3), n < 0)


def _decimal(n: np.ndarray, scale: int, digits: int) -> np.ndarray:
    """Integers ``n`` as exact decimals ``n / scale`` (scale 10**digits) with all ``digits`` decimals
    (PostgreSQL's ``numeric(p, digits)``)."""
    q, r = np.divmod(np.abs(n), scale)
    fraction = np.zeros((len(n), _words_for(digits + 1) * 8), np.uint8)
    fraction[:, 0] = ord(".")
    rest = r
    for end in range(digits, 0, -4):
        start = max(0, end - 4)
        rest, part = np.divmod(rest, POW10[end - start])
        fraction[:, 1 + start : 1 + end] = _digit_bytes(end - start)[part]
    return np.hstack([_signed(_natural(q, 3), n < 0), fraction.view(U64)])


# --- floats ---------------------------------------------------------------------------------------


def pg_float(value: float) -> str:
    """One double as PostgreSQL writes it (the slow path: any double)."""
    if value != value:
        return "NaN"
    if value in (math.inf, -math.inf):
        return "Infinity" if value > 0 else "-Infinity"
    sign = "-" if math.copysign(1.0, value) < 0 else ""
    if value == 0:
        return sign + "0"
    digits, power = _shortest(abs(value))
    if -4 <= power < 15:
        if power >= 0:
            whole, rest = digits[: power + 1].ljust(power + 1, "0"), digits[power + 1 :]
            return sign + whole + ("." + rest if rest else "")
        return sign + "0." + "0" * (-power - 1) + digits
    return f"{sign}{digits[0]}{'.' + digits[1:] if len(digits) > 1 else ''}e{'-' if power < 0 else '+'}{abs(power):02d}"


def _shortest(value: float) -> tuple[str, int]:
    """The significant digits of a positive double's shortest text, and the decimal exponent of the first.

    Python's ``repr`` and PostgreSQL (Ryu) both give the fewest digits that read back, the closest such,
    with one difference: ``repr`` also takes a text lying exactly halfway to the next double (it reads back
    by rounding to even), which PostgreSQL never takes; it writes one digit more, or more. Such a halfway
    text has at most 17 digits only for a double of 2**53 or more, so the others never need the check."""
    text = repr(value)
    if value >= 2.0**53:
        exact = Fraction(value)
        lower = (exact + Fraction(math.nextafter(value, 0.0))) / 2
        above = math.nextafter(value, math.inf)  # the largest double's is infinite: its gap is the one below
        upper = (exact + Fraction(above)) / 2 if above != math.inf else 2 * exact - lower
        if Fraction(text) in (lower, upper):
            length = len(_digits_of(text)[0])
            while not lower < Fraction(text) < upper:
                length += 1
                text = f"{value:.{length - 1}e}"
    return _digits_of(text)


def _digits_of(text: str) -> tuple[str, int]:
    mantissa, _, exponent = text.partition("e")
    whole, _, fraction = mantissa.partition(".")
    everything = whole + fraction
    significant = everything.lstrip("0")
    power = len(whole) - 1 + int(exponent or 0) - (len(everything) - len(significant))
    return significant.rstrip("0") or "0", power


def floats(values: np.ndarray) -> np.ndarray:
    """Doubles as PostgreSQL writes them: a word matrix of FLOAT_WORDS words.

    orjson writes the shortest text of every double at once (Ryu, as PostgreSQL); between 1e-4 and 1e15
    the two differ only by orjson's ".0" after a whole number. Each text is picked out of orjson's array by
    a window on its bytes. The rest (tiny, huge, infinite, NaN: exponents written otherwise) are formatted
    one by one, which also keeps PostgreSQL's halfway cases (``_shortest``) out of the fast path."""
    values = np.ascontiguousarray(values, dtype=np.float64)
    rows = len(values)
    out = np.zeros((rows, FLOAT_WORDS), U64)
    if not rows:
        return out
    raw = orjson.dumps(values, option=orjson.OPT_SERIALIZE_NUMPY)
    data = np.frombuffer(raw + bytes(TOKEN_BYTES), np.uint8)
    commas = np.flatnonzero(data[: len(raw)] == COMMA)
    starts = np.concatenate([[1], commas + 1])
    ends = np.concatenate([commas, [len(raw) - 1]])
    whole = (data[ends - 2] == DOT) & (data[ends - 1] == DIGIT)
    lengths = ends - starts - 2 * whole
    text = _bytes(out)[:, :TOKEN_BYTES]
    text[:] = sliding_window_view(data, TOKEN_BYTES)[starts]
    text[np.arange(TOKEN_BYTES)[None, :] >= lengths[:, None]] = ZERO
    magnitude = np.abs(values)
    fixed = ((magnitude >= 1e-4) & (magnitude < 1e15)) | (magnitude == 0)
    slow = np.flatnonzero(~fixed)  # NaN compares false: slow too
    if len(slow):
        out[slow] = _pack([pg_float(v).encode() for v in values[slow].tolist()], FLOAT_WORDS)
    return out


# --- times ----------------------------------------------------------------------------------------


def times(ts: np.ndarray, time_format: str, zone: zoneinfo.ZoneInfo = UTC) -> np.ndarray:
    """Timestamps (µs) as the export writes them: a word matrix."""
    ts = np.asarray(ts, dtype=np.int64)
    if time_format == "epoch_us":
        return integers(ts)
    if time_format == "epoch_ms":
        return _decimal(ts, 1_000, 3)
    if time_format == "epoch_s":
        return _decimal(ts, 1_000_000, 6)
    if time_format == "igor":
        return _decimal(ts + IGOR_EPOCH_US, 1_000_000, 6)
    if time_format == "matlab":
        return _decimal(_matlab_units(ts), 10**MATLAB_DECIMALS, MATLAB_DECIMALS)
    return iso(ts, zone)


def _matlab_units(ts: np.ndarray) -> np.ndarray:
    """Units of 1e-11 day since year 0, rounded half up: round((ts + epoch) * 10**11 / DAY_US), where
    10**11 / DAY_US = 125 / 108, split so that nothing overflows 64 bits."""
    assert 10**MATLAB_DECIMALS * 108 == DAY_US * 125
    since = ts + MATLAB_EPOCH_DAYS * DAY_US
    q, r = np.divmod(since, 108)
    return q * 125 + (r * 250 + 108) // 216


def iso(ts: np.ndarray, zone: zoneinfo.ZoneInfo) -> np.ndarray:
    """ISO 8601 with the zone's offset at each instant: ``2024-05-06T09:00:00.25+02``. The date, hour and
    minute are formatted once per minute the readings fall in (``np.repeat`` spreads them)."""
    if not len(ts):
        return np.zeros((0, 1), U64)
    if zone is UTC or zone.key == "UTC":
        local = ts
    else:
        converted = pd.to_datetime(ts, unit="us", utc=True).tz_convert(zone).tz_localize(None)
        local = converted.to_numpy().astype("datetime64[us]").astype(np.int64)
    minutes, micros = np.divmod(local, MINUTE_US)
    starts = np.flatnonzero(np.r_[True, minutes[1:] != minutes[:-1]])
    lengths = np.diff(np.r_[starts, len(ts)])
    prefix = np.repeat(_minutes(minutes[starts]), lengths, axis=0)
    second, fraction = np.divmod(micros, 1_000_000)
    high, low = np.divmod(fraction, 1_000)
    dotted = np.where(low == 0, _table(3, dot=True, stripped=True)[high], _table(3, dot=True)[high])
    seconds = _byte(":", 0) | _shifted(_table(2)[second], 1) | _shifted(dotted, 3)
    offsets, inverse = np.unique((local - ts) // 1_000_000, return_inverse=True)
    texts = [_offset(int(o)).encode() for o in offsets.tolist()]
    head = _pack([t[:5] for t in texts], 1)[:, 0][inverse.reshape(-1)]
    columns = [prefix, seconds[:, None], (_table(3, stripped=True)[low] | _shifted(head, 3))[:, None]]
    if max(len(t) for t in texts) > 5:  # an offset with seconds: "+00:19:32" (Amsterdam before 1937)
        columns.append(_pack([t[5:] for t in texts], 1)[inverse.reshape(-1)])
    return np.hstack(columns)


def _minutes(minutes: np.ndarray) -> np.ndarray:
    """Minutes since 1970 (local) as "YYYY-MM-DDTHH:MM", two words (three for a year beyond 9999)."""
    days, minute = np.divmod(minutes, 1440)
    hour, minute = np.divmod(minute, 60)
    year, month, day = _civil(days)
    if ((year < 1) | (year > 9999)).any():  # a year PostgreSQL writes otherwise ("BC"), left as ISO would
        texts = [
            f"{y:04d}-{m:02d}-{d:02d}T{h:02d}:{i:02d}".encode()
            for y, m, d, h, i in zip(
                year.tolist(), month.tolist(), day.tolist(), hour.tolist(), minute.tolist(), strict=True
            )
        ]
        return _pack(texts, 3)
    two = _table(2)
    first = _table(4)[year] | _byte("-", 4) | _shifted(two[month], 5) | _byte("-", 7)
    second = two[day] | _byte("T", 2) | _shifted(two[hour], 3) | _byte(":", 5) | _shifted(two[minute], 6)
    return np.stack([first, second], axis=1)


def _civil(days: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Days since 1970-01-01 as proleptic Gregorian (year, month, day), vectorised (H. Hinnant's
    ``civil_from_days``)."""
    z = days + 719_468
    era = np.floor_divide(z, 146_097)
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    day = doy - (153 * mp + 2) // 5 + 1
    month = np.where(mp < 10, mp + 3, mp - 9)
    year = yoe + era * 400 + (month <= 2)
    return year, month, day


def _offset(seconds: int) -> str:
    sign = "-" if seconds < 0 else "+"
    hours, rest = divmod(abs(seconds), 3600)
    minutes, secs = divmod(rest, 60)
    text = f"{sign}{hours:02d}"
    if minutes or secs:
        text += f":{minutes:02d}"
    if secs:
        text += f":{secs:02d}"
    return text


# --- text values and rows -------------------------------------------------------------------------


def field(text: str) -> str:
    """A text as PostgreSQL's CSV writes it: quoted, quotes doubled, when it holds a comma, a quote or a
    line break, or is empty (unquoted empty is a missing value); also ``\\.`` alone, the end-of-data mark."""
    if text == "" or text == "\\." or any(c in text for c in ',"\n\r'):
        return '"' + text.replace('"', '""') + '"'
    return text


def rows(
    ts: np.ndarray,
    label: str,
    values: np.ndarray,
    quality: np.ndarray | None,
    time_format: str,
    zone: zoneinfo.ZoneInfo,
) -> bytes:
    """Long-layout CSV rows ``time,label,value[,quality]\\n`` of one channel's readings."""
    count = len(ts)
    if not count:
        return b""
    time_text = times(ts, time_format, zone)
    if values.dtype == object:  # text: formatted one by one, with the times from the matrix
        middle = "," + field(label) + ","
        tail = [""] * count if quality is None else ["," + q for q in map(str, quality.tolist())]
        return "".join(
            h + middle + field(v) + t + "\n" for h, v, t in zip(lines(time_text), values.tolist(), tail, strict=True)
        ).encode()
    value_text = floats(values)
    columns = [time_text, constant(("," + field(label) + ",").encode(), count), value_text]
    if quality is None:
        value_text[:, -1] |= _byte("\n", 7)  # a double's text leaves the last byte free
    else:
        quality_text = integers(quality)
        quality_text[:, 0] |= _byte(",", 0)  # a quality is never negative: its sign byte is free
        columns += [quality_text, constant(b"\n", count)]
    return joined(*columns)
