"""The OpenAPI schema validates, and a schemathesis run against it finds no 500 and no response that
breaks the schema — authenticated as an instrument owner with a read-write token, so writes run too."""

from __future__ import annotations

import pytest
import schemathesis
from django.core import signals
from django.core.wsgi import get_wsgi_application
from django.db import close_old_connections, transaction
from hypothesis import HealthCheck, given, settings

from accounts.tests.personas import build_world

EXAMPLES_PER_OPERATION = 12


@pytest.fixture
def api_schema(db):
    # Like Django's test client: keep the test's database connection (and transaction) open across requests.
    signals.request_started.disconnect(close_old_connections)
    signals.request_finished.disconnect(close_old_connections)
    try:
        yield schemathesis.openapi.from_wsgi("/api/v1/schema/?format=json", get_wsgi_application())
    finally:
        signals.request_started.connect(close_old_connections)
        signals.request_finished.connect(close_old_connections)


@pytest.fixture
def owner_token(db):
    return build_world().tokens["personal_write_token"]


def test_api_conforms_to_its_schema(api_schema, owner_token):
    """Every operation, with bodies and parameters generated from the schema (schemathesis + hypothesis).

    schemathesis' own pytest plugin does not run on pytest 9 yet, so the operations are walked here."""
    headers = {"Authorization": f"Bearer {owner_token}"}
    checks = [schemathesis.checks.not_a_server_error, schemathesis.checks.response_schema_conformance]
    failures: list[str] = []
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert len(operations) > 10, "the schema lists the API's operations"
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def exercise(case):
            # A savepoint per call: one failing statement must not poison the calls after it (PostgreSQL).
            with transaction.atomic():
                case.call_and_validate(headers=headers, checks=checks)

        try:
            exercise()
        except (Exception, BaseExceptionGroup) as exc:  # collect them all, then fail with the list
            # A group (hypothesis' FlakyFailure is one) says little by itself: name what it holds.
            inner = "".join(f"\n  {type(e).__name__}: {e}" for e in getattr(exc, "exceptions", ()))
            what = f"{operation.method.upper()} {operation.path}: {type(exc).__name__}: {exc}{inner}"
            failures.append(what[:6000])
    assert not failures, "\n\n".join(failures)


def test_schema_is_valid_openapi(client):
    from drf_spectacular.validation import validate_schema

    response = client.get("/api/v1/schema/?format=json")
    assert response.status_code == 200
    validate_schema(response.json())  # raises on anything that is not OpenAPI 3
