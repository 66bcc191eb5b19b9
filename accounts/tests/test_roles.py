"""The role groups made by the data migration, and kept complete by every migrate."""

from __future__ import annotations

import importlib
from types import SimpleNamespace

import pytest
from django.apps import apps
from django.contrib.auth.models import Group, Permission
from django.db import connection
from django.db.migrations.loader import MigrationLoader

from accounts import permissions, roles
from instruments.tests.factories import make_instrument, make_user

pytestmark = pytest.mark.django_db


def codenames(group_name: str) -> set[str]:
    group = Group.objects.get(name=group_name)
    return {f"{p.content_type.app_label}.{p.codename}" for p in group.permissions.select_related("content_type")}


ROLES = {"Administrators", "Operators", "Viewers"}


def run_roles_migration(direction: str) -> None:
    """Run accounts.0002_roles forwards or backwards against the historical models, as migrate does."""
    state = MigrationLoader(connection).project_state(("accounts", "0002_roles"))
    migration = importlib.import_module("accounts.migrations.0002_roles")
    # RunPython functions only read ``schema_editor.connection``; a real schema editor cannot be opened
    # inside the test's transaction on SQLite.
    editor = SimpleNamespace(connection=connection)
    {"forwards": migration.create_roles, "backwards": migration.remove_roles}[direction](state.apps, editor)


def test_the_data_migration_creates_and_removes_the_three_roles():
    assert set(Group.objects.values_list("name", flat=True)) >= ROLES
    run_roles_migration("backwards")
    assert not Group.objects.filter(name__in=ROLES).exists()
    run_roles_migration("forwards")
    assert set(Group.objects.filter(name__in=ROLES).values_list("name", flat=True)) == ROLES
    assert "instruments.add_instrument" in codenames("Operators")


def test_administrators_have_every_permission():
    assert Group.objects.get(name="Administrators").permissions.count() == Permission.objects.count()


def test_operators_may_create_instruments_and_agents_but_not_read_the_audit_trail():
    held = codenames("Operators")
    assert {
        "instruments.add_instrument",
        "instruments.change_instrument",
        "instruments.add_channel",
        "instruments.add_datasource",
        "instruments.add_logbookentry",
        "accounts.add_agent",
        "accounts.add_apitoken",
    } <= held
    assert {"collection.add_alarmrule", "collection.view_alarmevent", "collection.view_collectionrun"} <= held
    # not split per instrument in the admin: Administrators only
    assert not held & {"collection.view_alarmnotification", "collection.view_rejectedsample"}
    assert "accounts.view_auditevent" not in held
    assert not any(name.startswith("auth.") for name in held)


def test_viewers_have_no_model_permissions():
    assert codenames("Viewers") == set()


def test_sync_adds_what_is_missing_and_keeps_what_was_added_by_hand():
    operators = Group.objects.get(name="Operators")
    extra = Permission.objects.get(codename="view_group")
    operators.permissions.remove(Permission.objects.get(codename="add_instrument"))
    operators.permissions.add(extra)
    Group.objects.filter(name="Viewers").delete()

    roles.sync_roles(apps)

    assert "instruments.add_instrument" in codenames("Operators")
    assert "auth.view_group" in codenames("Operators")
    assert Group.objects.filter(name="Viewers").exists()


def test_a_global_change_permission_opens_no_instrument():
    operator = make_user()
    operator.groups.add(Group.objects.get(name="Operators"))
    someone_elses = make_instrument()
    assert operator.has_perm("instruments.change_instrument")  # the admin lets them in...
    assert not permissions.has_instrument_perm(operator, "view", someone_elses)  # ...to nothing of others
    assert list(permissions.instruments_visible_to(operator)) == []


def test_administrators_group_members_see_every_instrument():
    admin = make_user()
    admin.groups.add(Group.objects.get(name="Administrators"))
    instrument = make_instrument()
    assert permissions.is_administrator(admin)
    assert permissions.has_instrument_perm(admin, "share", instrument)
    assert list(permissions.instruments_visible_to(admin)) == [instrument]
