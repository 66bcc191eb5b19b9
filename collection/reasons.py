"""Which ``RejectionKind`` a quarantine reason is: one classification for every writer of the quarantine.

``ingest_samples`` knows the kind of the rejections it makes itself; reasons written by a parser (the
server's collectors, or an agent's, whose version may differ from the server's) arrive as text, so they
are classified by their wording here. Migration 0011 classifies the rows kept before kinds existed with
the same function. A reason matching nothing is ``other`` (``unparsed`` for a whole line).
"""

from __future__ import annotations

import re

from collection.choices import RejectionKind

# Checked in order: the first match wins (a "line not parsed: timestamp ..." is a bad timestamp).
_RULES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), kind)
    for pattern, kind in (
        (r"^conflict\b", RejectionKind.CONFLICT),
        (r"unknown channel|channel .*not one the sender may write", RejectionKind.UNKNOWN_CHANNEL),
        (r"derived channels", RejectionKind.DERIVED),
        (r"past the quarantine limits", RejectionKind.OVER_LIMIT),
        (r"parse budget", RejectionKind.PARSE_BUDGET),
        (
            r"outside the accepted window|not_before|not_after|before the window|after the window|\bwindow\b",
            RejectionKind.OUT_OF_WINDOW,
        ),
        # Before "not finite": a timestamp that is NaN or infinite is a bad time, not a bad value.
        (r"\btimestamp\b.*\bis not finite", RejectionKind.BAD_TIME),
        (r"not a finite number|is not finite", RejectionKind.NOT_FINITE),
        (r"value is not a number", RejectionKind.NOT_NUMBER),
        (r"value is not text|text value longer|NUL character", RejectionKind.BAD_TEXT),
        (r"value is empty", RejectionKind.EMPTY),
        (r"is missing from the line|missing field|no field", RejectionKind.MISSING_FIELD),
        (r"timestamp|\btime\b|\byear\b|date", RejectionKind.BAD_TIME),
        (r"^line not parsed|regular expression|empty line|columns?\b", RejectionKind.UNPARSED),
    )
)


def classify_reason(reason: str, *, whole_line: bool = False) -> str:
    """The kind of ``reason``; ``whole_line``: the record holds a whole line (its default is ``unparsed``)."""
    for pattern, kind in _RULES:
        if pattern.search(reason):
            return kind
    return RejectionKind.UNPARSED if whole_line else RejectionKind.OTHER


_RUN_OF_BLANKS = re.compile(r" {4,}")
_MARKS = {" ": "·", "\t": "⇥", "\r": "␍", "\n": "␤", "\xa0": "⍽", "\x7f": "␡"}


def _mark(char: str) -> str:
    if char in _MARKS:
        return _MARKS[char]
    code = ord(char)
    if code < 0x20:
        return chr(0x2400 + code)  # the Unicode control pictures: ␀ ␁ ... ␟
    return f"\\u{code:04x}"  # another invisible or format character (a zero-width space, a BOM, ...)


def _invisible(char: str) -> bool:
    return char in _MARKS or ord(char) < 0x20 or (char.isspace() and char != " ") or not char.isprintable()


def visible_text(text: str, limit: int | None = None) -> str:
    """``text`` with what a person cannot see made visible: runs of 4+ blanks as ``⟨1,600 blanks⟩``,
    leading and trailing blanks as ``·``, tabs ``⇥``, control characters as their pictures (``␀``, ``␍``),
    other invisible characters as ``\\uXXXX``. Single blanks inside the text stay as they are.
    Cut to ``limit`` characters (with ``…``) when given."""
    stripped = text.strip(" ")
    lead, trail = len(text) - len(text.lstrip(" ")), len(text) - len(text.rstrip(" "))
    if not stripped:
        lead, trail = len(text), 0

    def blanks(n: int) -> str:
        return "·" * n if n < 4 else f"⟨{n:,} blanks⟩"

    inner = _RUN_OF_BLANKS.sub(lambda m: blanks(len(m.group())), stripped)
    shown = blanks(lead) if lead else ""
    shown += "".join(_mark(c) if c != " " and _invisible(c) else c for c in inner)
    shown += blanks(trail) if trail else ""
    if limit is not None and len(shown) > limit:
        return shown[: limit - 1] + "…"
    return shown
