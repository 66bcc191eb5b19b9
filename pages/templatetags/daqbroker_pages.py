"""Small formatting helpers for the collaborators' pages."""

from __future__ import annotations

import math
from datetime import UTC, datetime

from django import template
from django.utils import timezone
from django.utils.html import format_html

from collection.choices import Quality
from pages.status import STATE_CLASS, now_us

register = template.Library()


def _age_words(seconds: float) -> str:
    seconds = max(0, seconds)
    if seconds < 60:
        return f"{int(seconds)} s"
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 86400 * 2:
        hours, minutes = divmod(int(seconds // 60), 60)
        return f"{hours} h {minutes} min" if hours < 10 and minutes else f"{hours} h"
    if seconds < 86400 * 60:
        return f"{int(seconds // 86400)} days"
    if seconds < 86400 * 730:
        return f"{int(seconds // (86400 * 30.44))} months"
    return f"{int(seconds // (86400 * 365.25))} years"


@register.filter
def ago_us(ts_us) -> str:
    """µs since the epoch -> "12 s ago" (or "never")."""
    if ts_us is None:
        return "never"
    return f"{_age_words((now_us() - int(ts_us)) / 1e6)} ago"


@register.filter
def ago(moment) -> str:
    """A datetime -> "3 min ago" (or "never")."""
    if moment is None:
        return "never"
    return f"{_age_words((timezone.now() - moment).total_seconds())} ago"


@register.filter
def every(seconds) -> str:
    """An interval in seconds -> "every 10 s"."""
    if not seconds:
        return ""
    return f"every {_age_words(seconds)}"


@register.filter
def us_datetime(ts_us):
    """µs since the epoch -> an aware datetime (for Django's |date filter)."""
    if ts_us is None:
        return None
    return datetime.fromtimestamp(int(ts_us) / 1e6, tz=UTC)


@register.filter
def reading(value) -> str:
    """A reading as people read it: six significant digits, no float noise."""
    if value is None:
        return "—"
    if isinstance(value, float):
        if not math.isfinite(value):
            return str(value)
        return f"{value:.6g}"
    return str(value)


_QUALITY_CSS = {Quality.OK: "ok", Quality.OUT_OF_RANGE: "bad", Quality.MISSING: "warn", Quality.SUSPECT: "warn"}


@register.filter
def quality_badge(quality):
    if quality is None:
        return ""
    try:
        label = Quality(quality).label
    except ValueError:
        label = f"quality {quality}"
    return format_html('<span class="badge badge-{}">{}</span>', _QUALITY_CSS.get(quality, "info"), label)


@register.filter
def state_css(state: str) -> str:
    return STATE_CLASS.get(state, "idle")


@register.filter
def get_item(mapping, key):
    return mapping.get(key) if mapping else None


@register.filter
def duration(value) -> str:
    """A timedelta -> "15 min"."""
    if value is None:
        return ""
    return _age_words(value.total_seconds())


@register.simple_tag
def count_of(counts: dict, key: str):
    """``counts[key]`` (templates cannot index a dict by a variable)."""
    return counts.get(key, 0)
