"""``manage.py seed_demo --url``, as ``scripts/run`` calls it at every start: the banner tells how to log
in, and says the password "was printed above" only when it was."""

from __future__ import annotations

import re
from io import StringIO

import pytest
from django.contrib.auth import get_user_model
from django.core.management import call_command

from instruments.models import RunList

pytestmark = pytest.mark.django_db
URL = "http://127.0.0.1:8123/"


def _seed() -> str:
    out = StringIO()
    call_command("seed_demo", url=URL, days=1, stdout=out)
    return out.getvalue()


@pytest.fixture
def data_dir(settings, tmp_path, monkeypatch):
    settings.DATA_DIR = tmp_path
    monkeypatch.delenv("DAQBROKER_ADMIN_PASSWORD", raising=False)
    monkeypatch.delenv("DAQBROKER_ADMIN_USER", raising=False)
    return tmp_path


def test_the_first_start_prints_the_password_and_says_so(data_dir):
    first = _seed()
    password = re.search(r"Created admin user 'admin' with password: (\S+)", first).group(1)
    assert get_user_model().objects.get(username="admin").check_password(password)
    assert f"DAQBroker is starting at {URL} (the administrators' admin at {URL}admin/)." in first
    assert "Log in as admin with the password printed above (shown only this once)." in first
    assert first.index(password) < first.index("Log in as admin")


def test_a_second_start_does_not_claim_a_password_was_printed(data_dir):
    _seed()
    second = _seed()
    assert "password:" not in second
    assert "printed above" not in second
    assert (
        "Log in as admin with the password you were given when it was created "
        "(forgotten? .venv/bin/python manage.py changepassword admin)." in second
    )
    assert f"DAQBroker is starting at {URL}" in second


def test_a_password_from_the_environment_is_named_not_printed(data_dir, monkeypatch):
    monkeypatch.setenv("DAQBROKER_ADMIN_PASSWORD", "from-the-environment-1")
    first = _seed()
    assert "from-the-environment-1" not in first
    assert "Log in as admin with the password in DAQBROKER_ADMIN_PASSWORD." in first


def test_without_url_there_is_no_banner(data_dir):
    out = StringIO()
    call_command("seed_demo", days=1, stdout=out)
    assert "DAQBroker is starting" not in out.getvalue()


def test_the_demo_has_a_run_list_with_past_runs_on_its_station(data_dir):
    assert "Demo run list 'demo-campaign': 3 runs." in _seed()
    run_list = RunList.objects.get(slug="demo-campaign")
    assert list(run_list.instruments.values_list("slug", flat=True)) == ["demo-weather"]
    assert run_list.runs.count() == 3 and not run_list.runs.filter(end__isnull=True).exists()
    call_command("seed_demo", days=1, stdout=StringIO())  # idempotent
    assert RunList.objects.get(slug="demo-campaign").runs.count() == 3
