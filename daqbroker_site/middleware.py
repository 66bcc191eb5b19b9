"""Request handling that holds for every page and API endpoint alike, and belongs to no app.

- ``RefuseNulCharactersMiddleware``: a NUL character in the path or a query parameter answers 400.
- ``DatabaseUnavailableMiddleware``: when the database cannot be reached (server down, restarting, out of
  connections), a request answers **503 with a Retry-After** instead of Django's bare "Server Error (500)".
  An agent or a script can then tell "try again soon" from "your request is wrong", and its log names the
  cause (the agent quotes the JSON ``detail``). The API gets JSON; pages get a short plain page that needs
  no database (the normal templates read the session and the user, which would fail again).
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from django.db import InterfaceError, OperationalError
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse

log = logging.getLogger(__name__)

RETRY_AFTER_SECONDS = 10
DETAIL = "The database did not answer (unavailable or busy); the request was not completed. It is safe to retry."
PAGE = (
    "<!doctype html><html lang='en'><head><meta charset='utf-8'><title>Unavailable</title></head>"
    "<body><h1>Temporarily unavailable</h1><p>The database cannot be reached right now. "
    "Try again in a few seconds.</p></body></html>"
)


class DatabaseUnavailableMiddleware:
    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]) -> None:
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        return self.get_response(request)

    def process_exception(self, request: HttpRequest, exception: Exception) -> HttpResponse | None:
        if not isinstance(exception, OperationalError | InterfaceError):
            return None
        # One line, not a traceback: the cause is outside this process, and it repeats for every request.
        log.error("database unavailable for %s %s: %s", request.method, request.path, str(exception).strip()[:200])
        response: HttpResponse
        if request.path.startswith("/api/"):
            response = JsonResponse({"detail": DETAIL}, status=503)
        else:
            response = HttpResponse(PAGE, status=503)
        response["Retry-After"] = str(RETRY_AFTER_SECONDS)
        return response


class RefuseNulCharactersMiddleware:
    """A NUL character in the path or in any query parameter (name or value) is answered 400.

    No page or filter has a use for it, PostgreSQL cannot hold it in a text value (its driver raises,
    which was a 500 for ``/?q=a%00b``), and checking here covers every view, present and future.
    """

    def __init__(self, get_response: Callable[[HttpRequest], HttpResponse]):
        self.get_response = get_response

    def __call__(self, request: HttpRequest) -> HttpResponse:
        if "\x00" in request.path or any(
            "\x00" in key or any("\x00" in value for value in values) for key, values in request.GET.lists()
        ):
            message = "A NUL character (%00) is not allowed in the address or its query parameters."
            if request.path.startswith("/api/"):
                return JsonResponse({"detail": message}, status=400)
            return HttpResponseBadRequest(message, content_type="text/plain; charset=utf-8")
        return self.get_response(request)
