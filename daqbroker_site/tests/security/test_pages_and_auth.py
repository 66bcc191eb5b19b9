"""Security findings 7, 8, 10, 11, 13 and 14 of issue 12, reproduced through HTTP (and a real browser for
8 and 13), each asserting the fix, as the personas of ``accounts/tests/personas.py``.

7  regexes: a pattern that backtracks is refused at save; one that times out at run time quarantines the
   line with that reason; a run's line parsing stops at its budget (the rest quarantined, never lost).
8  markup in names: a channel name with <a href> and <span style> shows as text in the plot, no link.
10 old-password guessing: wrong old passwords on /password/ and the admin's form lock further tries.
11 logbook: an edit by the shared editor keeps the author, records the editor, is audited, is shown.
13 CSP on every page, no inline script allowed; session ingest works with the CSRF token, not without.
14 slugs: a taken slug is refused with the same words whether the instrument is hidden or not.
"""

from __future__ import annotations

import csv
import io
import json
import re
from pathlib import Path

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.contrib.auth import get_user_model
from django.test import Client

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from collection.choices import RunStatus
from collection.models import RejectedSample, Sample
from collection.services.collect import collect_source
from instruments.models import SLUG_TAKEN, DataSource, Instrument
from instruments.tests.factories import make_channel, make_source

# One world for the module (accounts.tests.personas.module_world); the browser tests, whose live server
# reads committed rows, are in test_pages_and_auth_browser.py.
pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]

PASSWORD = "a sensible passphrase 42"
PASSWD_LINES = [
    "root:x:0:0:root:/root:/bin/bash",
    "daemon:x:1:1:daemon:/usr/sbin:/usr/sbin/nologin",
    "bin:x:2:2:bin:/bin:/usr/sbin/nologin",
    "www-data:x:33:33:www-data:/var/www:/usr/sbin/nologin",
]
FINDING_PATTERN = r"^(?P<x>([a-z:/0-9])+)+!$"  # the pattern: minutes of CPU under Python's re
EXPONENTIAL_PATTERN = r"^(?P<x>(a|aa)+)+$"  # still exponential under the regex package
# Just as exponential, but only on runs of "q", a letter the save-time probes do not try: it is accepted,
# and the run-time limit is what stops it.
UNPROBED_PATTERN = r"^(?P<x>(q|qq)+)+$"


# --- 7: regular expressions with a time budget ---------------------------------------------------------


def regex_source_body(pattern: str, folder: Path) -> dict:
    return {
        "instrument": "alpha-station",
        "name": "passwd-like",
        "kind": "file",
        "config": {
            "path": str(folder),
            "pattern": "*.log",
            "format": "regex",
            "regex": pattern,
            "timestamp": {"format": "receipt"},
        },
    }


@pytest.mark.parametrize("who", ["owner", "shared_editor"])
def test_7_a_backtracking_pattern_is_refused_at_save(world, request, tmp_path, who):
    persona = request.getfixturevalue(who)
    response = persona.client.post("/api/v1/sources/", regex_source_body(EXPONENTIAL_PATTERN, tmp_path), format="json")
    assert response.status_code == 400, response.content
    (error,) = response.json()["config"]
    assert error.startswith("regex: this pattern takes too long")
    assert not DataSource.objects.filter(name="passwd-like").exists()


@pytest.mark.parametrize("who", ["shared_viewer", "stranger", "anonymous", "agent_scoped"])
def test_7_others_cannot_save_a_pattern_at_all(world, request, tmp_path, who):
    persona = request.getfixturevalue(who)
    response = persona.client.post("/api/v1/sources/", regex_source_body(FINDING_PATTERN, tmp_path), format="json")
    assert response.status_code in (400, 401, 403), response.content
    assert not DataSource.objects.filter(name="passwd-like").exists()


def passwd_source(world, tmp_path: Path, pattern: str, lines: list[str]) -> DataSource:
    (tmp_path / "passwd.log").write_text("".join(line + "\n" for line in lines))
    config = {
        "path": str(tmp_path),
        "pattern": "*.log",
        "format": "regex",
        "regex": pattern,
        "timestamp": {"format": "receipt"},
    }
    source = make_source(world.alpha, name="passwd-like", config=config)
    make_channel(world.alpha, slug="x-text", kind="text", source=source, source_field="x")
    return source


def reasons(source: DataSource) -> list[str]:
    return list(RejectedSample.objects.filter(source=source).order_by("id").values_list("reason", flat=True))


def test_7_a_stored_pattern_that_fails_the_check_now_fails_its_run_with_the_reason(world, tmp_path):
    source = passwd_source(world, tmp_path, FINDING_PATTERN, PASSWD_LINES)
    DataSource.objects.filter(pk=source.pk).update(config={**source.config, "regex": EXPONENTIAL_PATTERN})
    run = collect_source(source.pk)
    assert run.status == RunStatus.FAILED
    assert "regex: this pattern takes too long" in run.error
    assert not RejectedSample.objects.filter(source=source).exists()  # nothing read, the cursor unmoved


def test_7_the_finding_pattern_on_passwd_lines_finishes_and_quarantines_every_line(world, owner, tmp_path):
    response = owner.client.post("/api/v1/sources/", regex_source_body(FINDING_PATTERN, tmp_path), format="json")
    assert response.status_code == 201, response.content  # the regex package finds it fast: accepted
    DataSource.objects.filter(pk=response.json()["id"]).delete()
    source = passwd_source(world, tmp_path, FINDING_PATTERN, PASSWD_LINES * 50)
    run = collect_source(source.pk)
    assert run.status == RunStatus.WARNING  # committed; every line quarantined, nothing stored: said on the run
    assert run.error.startswith("warning: 200 lines read and nothing stored"), run.error
    assert reasons(source) == ["line not parsed: line does not match the configured regular expression"] * 200


def test_7_a_line_whose_match_times_out_is_quarantined_with_that_reason(world, tmp_path):
    source = passwd_source(world, tmp_path, UNPROBED_PATTERN, ["q" * 60 + "!", "qqqq"])
    run = collect_source(source.pk)
    assert run.status == RunStatus.SUCCESS, run.error
    (timed_out,) = reasons(source)
    assert timed_out.startswith("line not parsed: the regular expression took longer than 100 ms on this line")
    assert RejectedSample.objects.get(source=source).raw_value == "q" * 60 + "!"
    assert run.rejected == 1  # "qqqq" matched and was stored


def test_7_a_run_stops_parsing_at_its_budget_and_quarantines_the_rest(world, tmp_path, settings):
    settings.DAQBROKER_PARSE_BUDGET_SECONDS = 1
    source = passwd_source(world, tmp_path, UNPROBED_PATTERN, ["q" * 60 + "!"] * 40)
    run = collect_source(source.pk)
    assert run.status == RunStatus.WARNING  # committed; every line quarantined, nothing stored: said on the run
    assert run.error.startswith("warning: 40 lines read and nothing stored"), run.error
    got = reasons(source)
    assert len(got) == 40  # every line kept, none lost
    spent = [r for r in got if "parse budget (DAQBROKER_PARSE_BUDGET_SECONDS=1) was spent" in r]
    timed_out = [r for r in got if "took longer than 100 ms" in r]
    assert spent and timed_out and len(spent) + len(timed_out) == 40


# --- 10: wrong old passwords ---------------------------------------------------------------------------


def with_password(user):
    user.set_password(PASSWORD)
    user.save()
    return user


def change(client: Client, url: str, old: str):
    return client.post(
        url, {"old_password": old, "new_password1": "a new passphrase 77", "new_password2": "a new passphrase 77"}
    )


@pytest.mark.parametrize(
    ("who", "url"),
    [
        ("shared_viewer", "/password/"),
        ("stranger", "/password/"),
        ("owner", "/password/"),
        ("owner", "/admin/password_change/"),
    ],
)
def test_10_wrong_old_passwords_lock_further_attempts(world, request, who, url):
    persona = request.getfixturevalue(who)
    user = with_password(persona.user)
    client = Client()
    client.force_login(user)
    limit = settings.AXES_FAILURE_LIMIT
    for n in range(1, limit):
        response = change(client, url, f"guess {n}")
        assert response.status_code == 200
        assert "old password was entered incorrectly" in response.content.decode()
    locked = change(client, url, f"guess {limit}")
    assert locked.status_code == 429
    assert "too many login attempts" in locked.content.decode()
    # Now even the right old password is refused, and the password is unchanged.
    assert change(client, url, PASSWORD).status_code == 429
    user.refresh_from_db()
    assert user.check_password(PASSWORD)
    assert AccessAttempt.objects.filter(username=user.get_username()).exists()
    assert AuditEvent.objects.filter(action=AuditAction.PASSWORD_LOCKED_OUT, object_id=str(user.pk)).exists()


def test_10_the_right_old_password_changes_it_and_is_audited(world, owner):
    user = with_password(owner.user)
    client = Client()
    client.force_login(user)
    assert change(client, "/password/", "one wrong guess").status_code == 200
    response = change(client, "/password/", PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/password/done/"
    user.refresh_from_db()
    assert user.check_password("a new passphrase 77")
    assert AuditEvent.objects.filter(action=AuditAction.PASSWORD_CHANGED, object_id=str(user.pk)).count() == 1


def test_10_anonymous_gets_the_login_page_not_the_form(world, anonymous):
    response = Client().post("/password/", {"old_password": "x"})
    assert response.status_code == 302 and response["Location"].startswith("/login/")


# --- 11: logbook authorship ----------------------------------------------------------------------------


def test_11_an_edit_by_the_shared_editor_keeps_the_author_and_records_the_editor(world, shared_editor, owner):
    entry = world.alpha_entry
    response = shared_editor.client.patch(
        f"/api/v1/logbook/{entry.pk}/", {"text": "recalibrated by eddie"}, format="json"
    )
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["author"] == "olivia" and body["edited_by"] == "eddie" and body["edited_at"]
    entry.refresh_from_db()
    assert entry.author == world.users["olivia"] and entry.edited_by == world.users["eddie"]
    event = AuditEvent.objects.get(action=AuditAction.CONFIG_CHANGED, object_id=str(entry.pk))
    assert event.actor == world.users["eddie"]
    assert event.changes["text"] == ["alpha-station-logbook-entry", "recalibrated by eddie"]
    page = owner.client.get("/instruments/alpha-station/").content.decode()
    assert re.search(r"olivia\s*·\s*<span class=\"muted\">edited by eddie", page)


@pytest.mark.parametrize(("who", "status"), [("shared_viewer", 403), ("stranger", 404), ("anonymous", 401)])
def test_11_others_cannot_edit_the_entry(world, request, who, status):
    persona = request.getfixturevalue(who)
    entry = world.alpha_entry
    response = persona.client.patch(f"/api/v1/logbook/{entry.pk}/", {"text": "not mine"}, format="json")
    assert response.status_code == status
    entry.refresh_from_db()
    assert entry.text == "alpha-station-logbook-entry" and entry.edited_by is None


def test_11_the_author_cannot_be_rewritten_through_the_api(world, shared_editor):
    entry = world.alpha_entry
    response = shared_editor.client.patch(f"/api/v1/logbook/{entry.pk}/", {"author": "eddie"}, format="json")
    assert response.status_code == 200
    entry.refresh_from_db()
    assert entry.author == world.users["olivia"]


def test_11_an_edit_in_the_admin_keeps_the_author_and_is_audited(world, administrator):
    entry = world.alpha_entry
    url = f"/admin/instruments/logbookentry/{entry.pk}/change/"
    form = administrator.client.get(url)
    assert form.status_code == 200
    assert 'name="author"' not in form.content.decode()  # read-only when editing
    when = entry.occurred_at.astimezone()
    response = administrator.client.post(
        url,
        {
            "instrument": world.alpha.pk,
            "occurred_at_0": when.strftime("%Y-%m-%d"),
            "occurred_at_1": when.strftime("%H:%M:%S"),
            "text": "fixed by ada",
        },
    )
    assert response.status_code == 302, response.content.decode()[:2000]
    entry.refresh_from_db()
    assert entry.text == "fixed by ada" and entry.author == world.users["olivia"]
    assert entry.edited_by == world.users["ada"]
    event = AuditEvent.objects.get(action=AuditAction.CONFIG_CHANGED, object_id=str(entry.pk))
    assert event.changes["text"] == ["alpha-station-logbook-entry", "fixed by ada"]


# --- 13: CSP header; ingest over a session with the CSRF token -----------------------------------------


@pytest.mark.parametrize("path", ["/login/", "/", "/plot/", "/alarms/", "/dashboards/", "/instruments/alpha-station/"])
def test_13_every_page_has_a_policy_without_inline_scripts(world, owner, path):
    response = owner.client.get(path) if path != "/login/" else Client().get(path)
    assert response.status_code == 200
    policy = dict(part.strip().split(" ", 1) for part in response["Content-Security-Policy"].split(";") if part.strip())
    assert policy["script-src"] == "'self'"
    assert policy["object-src"] == "'none'" and policy["frame-ancestors"] == "'none'"
    assert "<script>" not in response.content.decode()  # no inline script element left to allow


def session_client(persona) -> tuple[Client, str]:
    client = Client(enforce_csrf_checks=True)
    client.force_login(persona.user)
    client.get("/")  # sets the CSRF cookie
    return client, client.cookies[settings.CSRF_COOKIE_NAME].value


CHANNEL = "alpha-station/alpha-station-temp"


@pytest.mark.parametrize("who", ["owner", "shared_editor"])
def test_13_session_ingest_with_the_csrf_token_stores_json_and_csv(world, request, who):
    client, token = session_client(request.getfixturevalue(who))
    rows = [{"channel": CHANNEL, "t": "2026-01-01T00:00:00Z", "v": 1.5}]
    response = client.post("/api/v1/ingest/", json.dumps(rows), content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200, response.content
    assert response.json()["accepted"] == 1
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerows([["channel", "t", "v"], [CHANNEL, "2026-01-01T00:00:01Z", "2.5"]])
    response = client.post("/api/v1/ingest/", buffer.getvalue(), content_type="text/csv", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200, response.content
    assert Sample.objects.filter(channel=world.alpha_channel).count() == 2


@pytest.mark.parametrize("who", ["owner", "shared_editor", "shared_viewer", "stranger"])
def test_13_session_ingest_without_the_token_is_refused(world, request, who):
    client, _ = session_client(request.getfixturevalue(who))
    rows = [{"channel": CHANNEL, "t": "2026-01-01T00:00:00Z", "v": 1.5}]
    response = client.post("/api/v1/ingest/", json.dumps(rows), content_type="application/json")
    assert response.status_code == 403
    assert "CSRF" in response.json()["detail"]
    assert not Sample.objects.filter(channel=world.alpha_channel).exists()


@pytest.mark.parametrize("who", ["shared_viewer", "stranger"])
def test_13_session_ingest_with_the_token_but_no_change_right_stores_nothing(world, request, who):
    client, token = session_client(request.getfixturevalue(who))
    rows = [{"channel": CHANNEL, "t": "2026-01-01T00:00:00Z", "v": 1.5}]
    response = client.post("/api/v1/ingest/", json.dumps(rows), content_type="application/json", HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 200 and response.json()["accepted"] == 0
    assert not Sample.objects.filter(channel=world.alpha_channel).exists()


def test_13_a_form_body_over_a_session_is_refused_as_a_format(world, owner):
    client, token = session_client(owner)
    response = client.post("/api/v1/ingest/", {"channel": CHANNEL}, HTTP_X_CSRFTOKEN=token)
    assert response.status_code == 415


def test_13_token_ingest_needs_no_csrf_token(world, agent_scoped):
    client = Client(enforce_csrf_checks=True, HTTP_AUTHORIZATION=f"Bearer {agent_scoped.token}")
    rows = [{"channel": CHANNEL, "t": "2026-01-01T00:00:00Z", "v": 1.5}]
    response = client.post("/api/v1/ingest/", json.dumps(rows), content_type="application/json")
    assert response.status_code == 200 and response.json()["accepted"] == 1


# --- 14: what a slug reveals ---------------------------------------------------------------------------


@pytest.mark.parametrize("slug", ["zulu-hidden", "alpha-station"])
def test_14_a_taken_slug_gets_the_same_answer_hidden_or_not(world, owner, slug):
    response = owner.client.post("/api/v1/instruments/", {"name": "Again", "slug": slug}, format="json")
    assert response.status_code == 400
    assert response.json() == {"slug": [SLUG_TAKEN]}
    assert "zed" not in response.content.decode() and "Zulu-Hidden" not in response.content.decode()


def test_14_the_admin_answers_with_the_same_words(world, owner):
    response = owner.client.post("/admin/instruments/instrument/add/", {"name": "Again", "slug": "zulu-hidden"})
    assert response.status_code == 200
    page = response.content.decode()
    assert "already in use on this site" in page and "Zulu-Hidden instrument" not in page
    assert Instrument.objects.filter(slug="zulu-hidden").count() == 1


@pytest.mark.parametrize("who", ["shared_viewer", "stranger", "anonymous"])
def test_14_who_may_not_create_instruments_learns_nothing_about_slugs(world, request, who):
    persona = request.getfixturevalue(who)
    response = persona.client.post("/api/v1/instruments/", {"name": "Again", "slug": "zulu-hidden"}, format="json")
    assert response.status_code in (401, 403)
    assert "slug" not in response.content.decode()


def test_14_user_names_are_revealed_only_to_those_who_share(world, owner, shared_viewer):
    # Sharing is by user name: an owner learns whether a name exists (documented); a viewer cannot ask.
    url = "/instruments/alpha-station/sharing/"
    response = owner.client.post(url, {"kind": "user", "name": "nobody-here", "level": "view"})
    assert "There is no user called" in response.content.decode()
    assert shared_viewer.client.post(url, {"kind": "user", "name": "zed", "level": "view"}).status_code in (403, 404)
    assert get_user_model().objects.filter(username="nobody-here").count() == 0
