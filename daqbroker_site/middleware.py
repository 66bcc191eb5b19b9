"""Request checks that hold for every page and API endpoint alike."""

from __future__ import annotations

from collections.abc import Callable

from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest, JsonResponse


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
