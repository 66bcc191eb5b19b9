"""API tokens: they work, they fail closed (401), they are never kept, logged or shown in clear."""

from __future__ import annotations

import hashlib
import logging
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group, User
from django.core.exceptions import ValidationError
from django.db import connection
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone
from django.views.debug import ExceptionReporter
from rest_framework.test import APIClient

from accounts import permissions, services, tokens
from accounts.choices import TokenScope
from accounts.models import ApiToken, AuditEvent
from accounts.roles import ADMINISTRATORS
from instruments.tests.factories import make_instrument, make_user

pytestmark = pytest.mark.django_db
WHOAMI = "/api/v1/whoami/"


def bearer(token: str, scheme: str = "Bearer") -> APIClient:
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"{scheme} {token}")
    return client


@pytest.fixture
def olivia():
    return make_user("olivia")


@pytest.fixture
def issued(olivia):
    return services.create_personal_token(user=olivia, name="script", scope=TokenScope.READ_WRITE)


def assert_refused(response, message: str) -> None:
    assert response.status_code == 401, response.content
    assert response.json()["detail"] == message
    assert response["WWW-Authenticate"] == 'Bearer realm="DAQBroker API", error="invalid_token"'


def test_a_created_token_works_and_has_the_documented_form(issued, olivia):
    token, clear = issued
    assert tokens.TOKEN_PATTERN.match(clear)
    assert clear.startswith(f"dbk_{token.key_id}_")
    assert len(clear.split("_", 2)[2]) == 43  # 256 bits of secret
    response = bearer(clear).get(WHOAMI)
    assert response.status_code == 200
    assert response.json() | {"expires": None} == {
        "username": "olivia",
        "kind": "user",
        "authentication": "token",
        "scope": "read_write",
        "token_prefix": token.prefix,
        "expires": None,
        "administrator": False,
    }


def test_only_the_digest_is_stored(issued):
    token, clear = issued
    row = ApiToken.objects.values().get(pk=token.pk)
    assert row["digest"] == hashlib.sha256(clear.encode()).hexdigest()
    secret = clear[-43:]
    assert not any(secret in str(value) for value in row.values())


def test_the_bearer_keyword_is_case_insensitive(issued):
    assert bearer(issued[1], scheme="bearer").get(WHOAMI).status_code == 200


def test_a_revoked_token_gets_401(issued, olivia):
    token, clear = issued
    assert services.revoke_token(token, actor=olivia)
    assert_refused(bearer(clear).get(WHOAMI), "Token revoked.")
    assert not services.revoke_token(token, actor=olivia)  # once only
    assert list(AuditEvent.objects.values_list("action", flat=True).order_by("id")) == [
        "token.created",
        "token.revoked",
    ]


def test_an_expired_token_gets_401(olivia):
    token, clear = services.create_personal_token(user=olivia, name="short", expires=timezone.now() + timedelta(days=1))
    assert bearer(clear).get(WHOAMI).status_code == 200
    # Changed through this process (the admin saves the row): the remembered token is forgotten at once.
    token.expires = timezone.now() - timedelta(seconds=1)
    token.save()
    assert_refused(bearer(clear).get(WHOAMI), "Token expired.")


def wait_until_refused(client: APIClient, message: str, within: float) -> None:
    deadline = time.monotonic() + within
    while (response := client.get(WHOAMI)).status_code == 200:
        assert time.monotonic() < deadline, f"still accepted after {within} s"
        time.sleep(0.05)
    assert_refused(response, message)


def test_a_remembered_token_that_expires_meanwhile_is_refused(olivia):
    """Expiry is checked against the clock on every request, remembered token or not."""
    _, clear = services.create_personal_token(user=olivia, name="short", expires=timezone.now() + timedelta(seconds=1))
    client = bearer(clear)
    if client.get(WHOAMI).status_code == 200:  # (on a very slow machine it may have expired already)
        assert tokens._remembered(tokens.digest(clear)) is not None
    wait_until_refused(client, "Token expired.", within=5)


@pytest.mark.parametrize("change", ["revoked", "user deactivated"])
def test_a_token_revoked_by_another_process_stops_working_within_the_cache_lifetime(olivia, settings, change):
    """Another gunicorn worker or host revokes the token (a bare UPDATE: no signal reaches this process):
    this process refuses it once its remembered copy is DAQBROKER_TOKEN_CACHE_SECONDS old."""
    settings.DAQBROKER_TOKEN_CACHE_SECONDS = 1
    token, clear = services.create_personal_token(user=olivia, name="s", scope=TokenScope.READ_WRITE)
    client = bearer(clear)
    assert client.get(WHOAMI).status_code == 200
    if change == "revoked":
        ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    else:
        User.objects.filter(pk=olivia.pk).update(is_active=False)
    message = "Token revoked." if change == "revoked" else "The token's user is inactive."
    wait_until_refused(client, message, within=1 + 5)  # the lifetime, and slack for a loaded machine


def test_with_the_cache_off_a_revocation_elsewhere_applies_to_the_next_request(olivia, settings):
    settings.DAQBROKER_TOKEN_CACHE_SECONDS = 0
    token, clear = services.create_personal_token(user=olivia, name="s")
    client = bearer(clear)
    assert client.get(WHOAMI).status_code == 200
    ApiToken.objects.filter(pk=token.pk).update(revoked_at=timezone.now())
    assert_refused(client.get(WHOAMI), "Token revoked.")


def test_a_remembered_token_costs_no_query_and_the_cache_holds_no_clear_token(issued):
    _, clear = issued
    client = bearer(clear)
    assert client.get(WHOAMI).status_code == 200
    with CaptureQueriesContext(connection) as queries:
        assert client.get(WHOAMI).status_code == 200
    assert not [q for q in queries if "accounts_apitoken" in q["sql"]]
    assert clear not in repr(tokens._cache) and clear[-43:] not in repr(tokens._cache)
    assert tokens.digest(clear) in tokens._cache  # keyed by the digest the database keeps anyway


@pytest.mark.parametrize("administrator", [False, True])
def test_verifying_a_token_reads_its_users_administrator_flag_in_the_same_query(administrator):
    """Many agents, each with its own token, are verified again every DAQBROKER_TOKEN_CACHE_SECONDS: one
    query each, the flag with it, and right for an administrator as for anyone else."""
    user = make_user("ada")
    if administrator:
        user.groups.add(Group.objects.get_or_create(name=ADMINISTRATORS)[0])
    _, clear = services.create_personal_token(user=user, name="s")
    tokens.forget_all()
    with CaptureQueriesContext(connection) as queries:
        token = tokens.find_token(clear)
        assert permissions.is_administrator(token.user) is administrator
    assert len(queries) == 1, [q["sql"] for q in queries]
    with CaptureQueriesContext(connection) as queries:  # remembered, flag and all
        assert permissions.is_administrator(tokens.find_token(clear).user) is administrator
    assert len(queries) == 0


@pytest.mark.parametrize("who", ["personal", "agent", "superuser", "in the Administrators group", "used"])
def test_the_verification_reads_what_the_orm_reads(who):
    """The verification is one statement written out once per database (``tokens._read_token``): every
    column of the token, its user and its agent, after the engine's converters (dates, booleans, the
    address), and the administrator flag, as the ORM reads them; an unknown key id reads nothing."""
    user = make_user("ada", is_superuser=who == "superuser")
    if who == "in the Administrators group":
        user.groups.add(Group.objects.get_or_create(name=ADMINISTRATORS)[0])
    if who == "agent":
        agent, _ = services.create_agent(owner=user, name="logger", instruments=[make_instrument(user, slug="site")])
        token = agent.token
    else:
        token, _ = services.create_personal_token(
            user=user, name="s", scope=TokenScope.READ, expires=timezone.now() + timedelta(days=3)
        )
    if who == "used":
        ApiToken.objects.filter(pk=token.pk).update(last_used=timezone.now(), last_address="2001:db8::7")
    stored = ApiToken.objects.select_related("user", "agent").get(pk=token.pk)

    def columns(instance):
        return {f.attname: getattr(instance, f.attname) for f in type(instance)._meta.concrete_fields}

    with CaptureQueriesContext(connection) as queries:
        found = tokens._read_token(stored.key_id)
    assert len(queries) == 1
    assert found is not None
    assert found.token == columns(stored)
    assert found.user == columns(stored.user)
    assert found.agent == (columns(stored.agent) if who == "agent" else None)
    assert found.administrator is (who in ("superuser", "in the Administrators group"))
    assert tokens._read_token("nosuchkey123") is None


def test_a_token_cannot_be_created_already_expired(olivia):
    with pytest.raises(ValidationError):
        services.create_personal_token(user=olivia, name="late", expires=timezone.now() - timedelta(seconds=1))


def test_a_wrong_secret_of_the_right_form_gets_401(issued):
    token, clear = issued
    secret = clear[-43:]
    wrong = f"dbk_{token.key_id}_" + ("A" if secret[0] != "A" else "B") + secret[1:]  # one character off
    assert tokens.TOKEN_PATTERN.match(wrong) and wrong != clear
    assert_refused(bearer(wrong).get(WHOAMI), "Invalid token.")


def test_an_unknown_key_id_gets_401(issued):
    unknown = tokens.new_token("zzzzzzzzzzzz")
    assert_refused(bearer(unknown).get(WHOAMI), "Invalid token.")


@pytest.mark.parametrize(
    "header",
    [
        "Bearer dbk_short",
        "Bearer not-a-daqbroker-token",
        "Bearer dbk_ABCDEFGHIJKL_" + "a" * 43,  # key ids are lower case
        "Bearer dbk_abcdefghijkl_" + "a" * 42,  # one character short
    ],
)
def test_a_malformed_token_gets_401(header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    assert_refused(client.get(WHOAMI), "Malformed token: expected dbk_ followed by the key id and the secret.")


@pytest.mark.parametrize("header", ["Bearer", "Bearer two parts"])
def test_a_malformed_header_gets_401(header):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=header)
    response = client.get(WHOAMI)
    assert response.status_code == 401
    assert response.json()["detail"] == "Malformed Authorization header: use 'Bearer <token>'."


def test_no_credentials_get_401_with_a_bearer_challenge():
    response = APIClient().get(WHOAMI)
    assert response.status_code == 401
    assert response["WWW-Authenticate"] == 'Bearer realm="DAQBroker API"'


def test_the_token_of_an_inactive_user_gets_401(issued, olivia):
    olivia.is_active = False
    olivia.save()
    assert_refused(bearer(issued[1]).get(WHOAMI), "The token's user is inactive.")


def test_last_used_is_written_at_most_once_a_minute(issued):
    token, clear = issued
    client = bearer(clear)
    client.get(WHOAMI, REMOTE_ADDR="203.0.113.9")
    token.refresh_from_db()
    first = token.last_used
    assert first is not None and token.last_address == "203.0.113.9"

    with CaptureQueriesContext(connection) as queries:
        client.get(WHOAMI, REMOTE_ADDR="203.0.113.10")
    assert not [q for q in queries if q["sql"].lstrip().upper().startswith("UPDATE")]
    token.refresh_from_db()
    assert (token.last_used, token.last_address) == (first, "203.0.113.9")

    # A minute later (moved in the database, not by sleeping) the next use is written again. This process
    # remembers the token with the last use it wrote: forget it, as a minute would.
    ApiToken.objects.filter(pk=token.pk).update(last_used=first - timedelta(seconds=61))
    tokens.forget_all()
    client.get(WHOAMI, REMOTE_ADDR="203.0.113.10")
    token.refresh_from_db()
    assert token.last_used > first and token.last_address == "203.0.113.10"


def test_last_used_is_a_compare_and_set_so_concurrent_requests_write_once(issued):
    token, _ = issued
    seen_by_one, seen_by_other = ApiToken.objects.get(pk=token.pk), ApiToken.objects.get(pk=token.pk)
    assert tokens.touch(seen_by_one, "192.0.2.1")
    assert not tokens.touch(seen_by_other, "192.0.2.2")  # its copy is stale; the row is already fresh
    assert ApiToken.objects.get(pk=token.pk).last_address == "192.0.2.1"


def test_a_read_token_may_read_but_not_write(olivia):
    _, clear = services.create_personal_token(user=olivia, name="reader", scope=TokenScope.READ)
    instrument = make_instrument(olivia, slug="alpha")
    client = bearer(clear)
    assert client.get("/api/v1/agents/").status_code == 200
    response = client.post("/api/v1/agents/", {"name": "x", "instruments": [instrument.slug]}, format="json")
    assert response.status_code == 403 and response.json()["detail"] == "This token is read-only."


# --- never in clear: the database, the logs, the admin ---------------------------------------------


def dump_database() -> str:
    """Every row of every table, as text: what a database dump would hold."""
    parts = []
    with connection.cursor() as cursor:
        for table in connection.introspection.table_names():
            cursor.execute(f"SELECT * FROM {connection.ops.quote_name(table)}")
            parts.append(f"{table}: {cursor.fetchall()!r}")
    return "\n".join(parts)


def test_tokens_never_appear_in_clear_in_the_database_logs_or_admin(caplog, olivia):
    admin_user = make_user("ada", is_staff=True, is_superuser=True, password=None)
    instrument = make_instrument(olivia, slug="alpha")
    session = APIClient()
    session.force_login(olivia)
    admin = APIClient()
    admin.force_login(admin_user)
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="django.db.backends")  # SQL with its parameters, too
    clear = []
    with CaptureQueriesContext(connection) as queries:
        # created through the service, the API (agent and personal) and the admin (agent and personal)
        clear.append(services.create_personal_token(user=olivia, name="svc")[1])
        clear.append(session.post("/api/v1/tokens/", {"name": "api"}, format="json").json()["token"])
        agent = session.post("/api/v1/agents/", {"name": "logger", "instruments": ["alpha"]}, format="json")
        clear.append(agent.json()["token"])
        page = admin.post(
            reverse("admin:accounts_agent_add"), {"name": "a2", "owner": olivia.pk, "instruments": [instrument.pk]}
        )
        clear.append(page.context["token"])
        page = admin.post(reverse("admin:accounts_apitoken_add"), {"name": "t2", "user": olivia.pk, "scope": "read"})
        clear.append(page.context["token"])
        # used, successfully and not
        for token in clear:
            assert bearer(token).get(WHOAMI).status_code == 200
            assert bearer(token[:-1] + ("B" if token[-1] != "B" else "C")).get(WHOAMI).status_code == 401
        # listed and opened in the admin
        admin_pages = [
            admin.get(reverse("admin:accounts_apitoken_changelist")),
            admin.get(reverse("admin:accounts_agent_changelist")),
            *(admin.get(reverse("admin:accounts_apitoken_change", args=[t.pk])) for t in ApiToken.objects.all()),
        ]
    assert len(clear) == 5 and all(tokens.TOKEN_PATTERN.match(t) for t in clear)
    assert "INSERT INTO" in caplog.text and "accounts_apitoken" in caplog.text  # the SQL log was captured
    dump = dump_database()
    sql = "\n".join(f"{q['sql']}" for q in queries)
    for token in clear:
        secret = token[-43:]
        assert token not in dump and secret not in dump
        assert secret not in caplog.text
        assert secret not in sql
        for response in admin_pages:
            assert response.status_code == 200
            assert secret not in response.content.decode()
    # the admin does show what identifies a token
    assert ApiToken.objects.first().key_id in admin_pages[0].content.decode()


def test_error_reports_hide_the_authorization_header(rf, issued):
    """Django's 500 pages and error e-mails list request headers; the token must not be among them."""
    request = rf.get("/api/v1/whoami/", HTTP_AUTHORIZATION=f"Bearer {issued[1]}")
    reporter = ExceptionReporter(request, RuntimeError, RuntimeError("boom"), None)
    report = reporter.get_traceback_text()
    assert "HTTP_AUTHORIZATION" in report
    assert issued[1] not in report and issued[1][-43:] not in report
