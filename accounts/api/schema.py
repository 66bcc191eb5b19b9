from drf_spectacular.authentication import SessionScheme
from drf_spectacular.extensions import OpenApiAuthenticationExtension


class BearerTokenScheme(OpenApiAuthenticationExtension):
    target_class = "accounts.authentication.BearerTokenAuthentication"
    name = "bearerToken"

    def get_security_definition(self, auto_schema):
        return {
            "type": "http",
            "scheme": "bearer",
            "bearerFormat": "dbk_<key id>_<secret>",
            "description": "A personal or agent API token, created in the admin or with POST /api/v1/agents/.",
        }


class RawBodySessionScheme(SessionScheme):
    """The ingest endpoint's session authentication is the ordinary session cookie (with X-CSRFToken)."""

    target_class = "accounts.authentication.RawBodySessionAuthentication"
    name = "cookieAuthWithCsrfHeader"
