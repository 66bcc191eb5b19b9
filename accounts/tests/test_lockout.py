"""Login lockout (django-axes) through real POSTs to the admin login form."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta

import pytest
from axes.models import AccessAttempt
from django.conf import settings
from django.test import Client
from django.utils import timezone

from instruments.tests.factories import make_user

pytestmark = pytest.mark.django_db
LOGIN = "/admin/login/"
PASSWORD = "a long and correct passphrase"


@pytest.fixture
def olivia():
    return make_user("olivia", is_staff=True, password=PASSWORD)


def attempt(password: str, username: str = "olivia", address: str = "192.0.2.10"):
    return Client(REMOTE_ADDR=address).post(
        LOGIN, {"username": username, "password": password, "next": "/admin/"}, REMOTE_ADDR=address
    )


def fail(times: int, **kwargs) -> None:
    """``times`` wrong passwords; the one that reaches the limit is answered with the lockout."""
    for n in range(1, times + 1):
        response = attempt("wrong", **kwargs)
        assert response.status_code == (429 if n >= settings.AXES_FAILURE_LIMIT else 200)


def test_the_limit_is_five_by_default():
    assert settings.AXES_FAILURE_LIMIT == 5
    assert timedelta(minutes=15) == settings.AXES_COOLOFF_TIME


def test_a_correct_password_logs_in(olivia):
    response = attempt(PASSWORD)
    assert response.status_code == 302 and response["Location"] == "/admin/"


def test_five_failures_lock_the_username_from_that_address(olivia):
    fail(settings.AXES_FAILURE_LIMIT - 1)
    assert attempt(PASSWORD).status_code == 302  # four failures: still allowed (and the count is reset)
    fail(settings.AXES_FAILURE_LIMIT)
    locked = attempt(PASSWORD)  # even the right password is refused now
    assert locked.status_code == 429
    assert "too many login attempts" in locked.content.decode()
    assert attempt(PASSWORD, address="192.0.2.99").status_code == 302  # same user, another address
    make_user("vera", is_staff=True, password=PASSWORD)
    assert attempt(PASSWORD, username="vera").status_code == 302  # same address, another user


def test_the_lock_lifts_after_the_cool_off(olivia):
    fail(settings.AXES_FAILURE_LIMIT)
    assert attempt(PASSWORD).status_code == 429
    # Fifteen minutes pass: moved in the database, not slept.
    AccessAttempt.objects.update(attempt_time=timezone.now() - settings.AXES_COOLOFF_TIME - timedelta(seconds=1))
    assert attempt(PASSWORD).status_code == 302


def test_unknown_usernames_are_locked_too():
    fail(settings.AXES_FAILURE_LIMIT + 1, username="nobody")


def test_the_limit_comes_from_the_environment():
    env = {**os.environ, "DAQBROKER_LOGIN_FAILURE_LIMIT": "3", "DAQBROKER_LOGIN_COOLOFF_MINUTES": "30"}
    code = "from django.conf import settings; print(settings.AXES_FAILURE_LIMIT, settings.AXES_COOLOFF_TIME)"
    out = subprocess.run(
        [sys.executable, "-c", f"import django; django.setup(); {code}"],
        env={**env, "DJANGO_SETTINGS_MODULE": "daqbroker_site.settings"},
        capture_output=True,
        text=True,
        check=True,
        cwd=settings.BASE_DIR,
    ).stdout
    assert out.strip().splitlines()[-1] == "3 0:30:00"


def test_a_bad_limit_in_the_environment_stops_start_up():
    env = {**os.environ, "DAQBROKER_LOGIN_FAILURE_LIMIT": "0", "DJANGO_SETTINGS_MODULE": "daqbroker_site.settings"}
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        env=env,
        capture_output=True,
        text=True,
        cwd=settings.BASE_DIR,
    )
    assert result.returncode != 0 and "DAQBROKER_LOGIN_FAILURE_LIMIT=0 is below the minimum of 1" in result.stderr
