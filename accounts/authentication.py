"""DRF authentication by API token: ``Authorization: Bearer dbk_...``.

A request without a Bearer header is left to the next class (the session). A Bearer header that does not
carry a usable token is refused outright with 401 and ``WWW-Authenticate: Bearer``: malformed, unknown,
wrong secret, revoked, expired, or belonging to an inactive user. The token is never logged or echoed.

``request.user`` is the token's user for a personal token, and an ``AgentPrincipal`` for an agent's;
``request.auth`` is the ``ApiToken`` either way.
"""

from __future__ import annotations

from rest_framework import exceptions
from rest_framework.authentication import BaseAuthentication, SessionAuthentication, get_authorization_header
from rest_framework.request import Request

from accounts.audit import client_address
from accounts.choices import TokenScope
from accounts.principals import AgentPrincipal
from accounts.tokens import TokenRejected, find_token, touch

REALM = "DAQBroker API"


class BearerTokenAuthentication(BaseAuthentication):
    keyword = b"bearer"

    def authenticate(self, request):
        header = get_authorization_header(request).split()
        if not header or header[0].lower() != self.keyword:
            return None
        if len(header) != 2:
            raise exceptions.AuthenticationFailed("Malformed Authorization header: use 'Bearer <token>'.")
        try:
            raw = header[1].decode("ascii")
        except UnicodeDecodeError:
            raise exceptions.AuthenticationFailed("Malformed token.") from None
        try:
            token = find_token(raw)
        except TokenRejected as rejected:
            raise exceptions.AuthenticationFailed(str(rejected)) from None
        touch(token, client_address(request))
        if token.scope == TokenScope.AGENT:
            assert token.agent is not None  # an agent token always names its agent (services.create_agent)
            return AgentPrincipal(agent=token.agent, token=token), token
        return token.user, token

    def authenticate_header(self, request) -> str:
        # RFC 6750: say why when a token was presented, so clients can tell "log in" from "bad token".
        header = get_authorization_header(request).split()
        presented = bool(header) and header[0].lower() == self.keyword
        return f'Bearer realm="{REALM}"' + (', error="invalid_token"' if presented else "")


class RawBodySessionAuthentication(SessionAuthentication):
    """Session authentication for views that read their body raw (ingest): CSRF checked on the request.

    DRF's check hands its own request to Django's CSRF check, which reads ``request.POST`` looking for a
    form token; on a view without parsers that ends in 415 before the view runs, so a logged-in browser
    could never ingest. Checked on the underlying request instead, the token comes from the
    ``X-CSRFToken`` header (JSON and CSV bodies are not forms) and the body is left for the view. Form
    bodies are not ingest formats: refused as such, without reading them.
    """

    FORM_TYPES = ("multipart/form-data", "application/x-www-form-urlencoded")

    def enforce_csrf(self, request: Request) -> None:
        raw = request._request
        if raw.content_type in self.FORM_TYPES:
            raise exceptions.UnsupportedMediaType(raw.content_type)
        super().enforce_csrf(raw)  # type: ignore[arg-type]  # DRF's CSRF check reads the Django request; its stub says Request
