"""``/favicon.ico``: browsers ask for it on pages that name no icon (the admin, the API's own pages, files
opened directly), and a 404 on every page hides real ones in the logs. The pages name the same icon with
``<link rel="icon">`` (templates/base.html, templates/admin/base_site.html)."""

from __future__ import annotations

from functools import cache

from django.contrib.staticfiles import finders
from django.http import HttpRequest, HttpResponse
from django.views.decorators.cache import cache_control
from django.views.decorators.http import require_safe

ICON = "img/daqbroker.svg"


@cache
def _icon() -> bytes:
    found = finders.find(ICON)
    if not found:
        raise FileNotFoundError(f"static/{ICON} is missing")
    with open(found, "rb") as handle:
        return handle.read()


@require_safe
@cache_control(public=True, max_age=86400)
def favicon(request: HttpRequest) -> HttpResponse:
    return HttpResponse(_icon(), content_type="image/svg+xml")
