"""The accounts part of the REST API, and the base classes every API view is built on (``base``)."""

from accounts.api import schema  # noqa: F401  (registers the OpenAPI description of Bearer tokens)
