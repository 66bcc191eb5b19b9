"""The three roles, as Django groups with model permissions.

Model permissions only open doors in the admin (which menus a staff user sees). What a person may see
or change of each instrument is decided per object by ``accounts.permissions``; a global
``change_instrument`` never opens an instrument one does not own or was not given.

* **Administrators**: every permission, and every instrument (``permissions.is_administrator``).
* **Operators**: may create instruments and agents; in the admin they manage the instruments they own
  or were given ``change`` on, with their sources, channels, logbook, alarm rules and spike checks,
  see their alarms and collection runs, and manage their own agents.
* **Viewers**: no model permissions; they see what is shared with them, on the pages and the API.

The groups are created by the data migration ``accounts.0002_roles`` and kept at least this complete
after every ``migrate`` (so permissions of models added later reach Administrators); permissions an
administrator adds to a group by hand are left alone.
"""

from __future__ import annotations

from django.db.models import Q

ADMINISTRATORS = "Administrators"
OPERATORS = "Operators"
VIEWERS = "Viewers"

ALL = "__all__"


def _crud(app_label: str, model: str, actions=("add", "change", "delete", "view")) -> list[str]:
    return [f"{app_label}.{action}_{model}" for action in actions]


ROLE_PERMISSIONS: dict[str, str | list[str]] = {
    ADMINISTRATORS: ALL,
    OPERATORS: [
        *_crud("instruments", "instrument"),
        *_crud("instruments", "datasource"),
        *_crud("instruments", "channel"),
        *_crud("instruments", "logbookentry"),
        *_crud("instruments", "runlist"),
        *_crud("instruments", "runcolumn"),
        *_crud("instruments", "run", ("change", "view")),
        *_crud("accounts", "agent", ("add", "change", "view")),
        *_crud("accounts", "apitoken", ("add", "view")),
        # Alarms and checks of their instruments; the notification outbox and quarantine are not
        # split per instrument in the admin, so they stay with Administrators.
        *_crud("collection", "alarmrule"),
        *_crud("collection", "spikecheck"),
        *_crud("collection", "alarmsubscription"),
        *_crud("collection", "alarmevent", ("view",)),
        *_crud("collection", "collectionrun", ("view",)),
    ],
    VIEWERS: [],
}


def sync_roles(apps, using: str = "default") -> None:
    """Create the role groups if missing and add any permission they lack (never removes one)."""
    Group = apps.get_model("auth", "Group")
    Permission = apps.get_model("auth", "Permission")
    for name, spec in ROLE_PERMISSIONS.items():
        group, _ = Group.objects.using(using).get_or_create(name=name)
        wanted = Permission.objects.using(using).all()
        if spec != ALL:
            if not spec:
                continue
            condition = Q()
            for dotted in spec:
                app_label, codename = dotted.split(".", 1)
                condition |= Q(content_type__app_label=app_label, codename=codename)
            wanted = wanted.filter(condition)
        have = set(group.permissions.values_list("pk", flat=True))
        missing = [pk for pk in wanted.values_list("pk", flat=True) if pk not in have]
        if missing:
            group.permissions.add(*missing)


def sync_roles_after_migrate(sender, app_config=None, using="default", apps=None, **kwargs) -> None:
    """post_migrate receiver: runs after each app's permissions are created, so the last run sees all."""
    if apps is None:
        from django.apps import apps as global_apps

        apps = global_apps
    try:
        apps.get_model("auth", "Group")
        apps.get_model("auth", "Permission")
    except LookupError:  # auth not migrated in this run
        return
    sync_roles(apps, using=using)
