"""Regular expressions from source configurations, with a time budget.

A pattern a collaborator writes runs on every line an instrument sends. Python's ``re`` has no time
limit: a pattern with nested repetition (``^(a|aa)+$``, ``^([a-z:/0-9]+)+!$``) backtracks exponentially on
the wrong line and holds a worker's CPU for minutes. Patterns are therefore compiled with the `regex`
package, whose matching takes a ``timeout=``:

- at save time, :func:`check_pattern_speed` runs the pattern on pathological probe lines (long runs of one
  character or token, ending in a character that breaks the match) and refuses it when one probe takes
  longer than :data:`REGEX_TIMEOUT_SECONDS`;
- at run time, :func:`search` matches one line under the same budget and raises :class:`PatternTimeout`,
  which the parser turns into a line error: the line is quarantined with that reason, never lost and
  never hanging the run.

Shared by the server and the agent; no Django here.
"""

from __future__ import annotations

from functools import lru_cache

import regex

#: The longest one match of a configured pattern on one line may take, in seconds (save-time probes and
#: run-time lines alike). Instrument lines are short: a sane pattern takes microseconds on them.
REGEX_TIMEOUT_SECONDS = 0.1

# What a pathological line is made of: runs of one character class, or of tokens seen in real output
# (/etc/passwd-like records, CSV, key=value), each followed by a character that makes the match fail.
_UNITS = (
    "a", "A", "0", "1", " ", "\t", ":", "/", ".", "-", "_", ",", ";", "=", "+", "x",
    "ab", "a ", "a:", "a/", "a,", "0.", "01", "a1", "a-", "a_", "a=1 ", "root:x:0:0:root:/root:/bin/bash:",
    "2024-01-01T00:00:00Z,1.5,",
)  # fmt: skip
_LENGTHS = (40, 600)
_ENDINGS = ("", "!", " ", "\x7f")

Pattern = regex.Pattern


class PatternTimeout(Exception):
    """A match took longer than the time budget."""


def compile_pattern(pattern: str) -> regex.Pattern:
    """``pattern`` compiled the way the parser uses it (``regex.error`` when it is not valid)."""
    return regex.compile(pattern)


def search(compiled: regex.Pattern, line: str, timeout: float = REGEX_TIMEOUT_SECONDS) -> regex.Match | None:
    try:
        return compiled.search(line, timeout=timeout)
    except TimeoutError:
        raise PatternTimeout(
            f"the regular expression took longer than {timeout * 1000:.0f} ms on this line "
            "(simplify it: avoid nested repetition such as (a+)+)"
        ) from None


def probe_lines() -> list[str]:
    """The pathological lines a pattern is tried on before it is accepted."""
    lines: list[str] = []
    for unit in _UNITS:
        for length in _LENGTHS:
            body = unit * max(1, length // len(unit))
            lines.extend(body + ending for ending in _ENDINGS)
    return lines


def check_pattern_speed(compiled: regex.Pattern, timeout: float = REGEX_TIMEOUT_SECONDS) -> str | None:
    """None when ``compiled`` matches every probe line within ``timeout``; else why it is refused.

    Remembered per pattern: the server checks a source's configuration again at every collection run."""
    return _verdict(compiled.pattern, compiled.flags, timeout)


@lru_cache(maxsize=512)
def _verdict(pattern: str, flags: int, timeout: float) -> str | None:
    compiled = regex.compile(pattern, flags)
    for line in probe_lines():
        try:
            compiled.search(line, timeout=timeout)
        except TimeoutError:
            return (
                f"this pattern takes too long: more than {timeout * 1000:.0f} ms on a test line of "
                f"{len(line)} characters ({line[:12]!r}...). Nested repetition such as (a+)+ or (a|aa)+ "
                "backtracks exponentially; write each part once, e.g. [a-z:/0-9]+ instead of ([a-z:/0-9]+)+"
            )
    return None
