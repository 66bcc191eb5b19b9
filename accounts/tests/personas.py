"""The personas every permission test runs as, in one place (registered in the root ``conftest.py``).

One small world, built per test by the ``world`` fixture::

    olivia (staff, Operators) owns instrument "alpha-station" (a source, a channel, a logbook entry,
        a quarantined reading, an alarm rule with an event and its notification, a spike check, her
        alarm subscription, a collection run), two agents (alpha-logger scoped to alpha, spare-logger scoped to
        nothing) and two personal tokens (olivia-read, olivia-write)
    alpha is shared: view with vera, change with eddie, view with the group alpha-team (gina)
    zed owns instrument "zulu-hidden" (the same parts), agent zulu-logger and token zed-script, and
        shares nothing: every zulu marker is foreign to everyone but the administrator
    stan has nothing; ada is an administrator (staff, Administrators group)

Each persona fixture returns a ``Persona``: a client already authenticated the way that persona is
(session, Bearer token or nothing), the user behind it, and the *markers* (distinctive names, slugs and
key ids) it may see. ``persona.foreign_in(text)`` lists the markers in a response it must not see.
Use the parametrised ``persona`` fixture to run a test as every persona.

Log personas in with ``force_login``: ``Client.login()`` cannot pass the request that the login lockout
(django-axes) needs.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from datetime import timedelta

import pytest
from django.conf import settings
from django.contrib.auth.models import Group
from django.db import transaction
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from accounts import roles, services
from accounts.choices import ShareLevel, TokenScope
from collection.alarms.choices import Medium, RuleKind, Severity, Transition
from collection.alarms.models import AlarmEvent, AlarmNotification, AlarmRule, AlarmSubscription, SpikeCheck
from collection.choices import Origin
from collection.models import CollectionRun, RejectedSample
from instruments.models import LogbookEntry, Run
from instruments.tests.factories import make_channel, make_instrument, make_run_list, make_source, make_user

PERSONAS = (
    "anonymous",
    "stranger",
    "shared_viewer",
    "shared_editor",
    "group_member",
    "owner",
    "administrator",
    "agent_scoped",
    "agent_unscoped",
    "personal_read_token",
    "personal_write_token",
)


@dataclass
class Persona:
    name: str
    client: APIClient
    user: object = None
    sees: frozenset[str] = frozenset()
    all_markers: frozenset[str] = frozenset()
    token: str | None = None

    def foreign_in(self, text: str) -> list[str]:
        return sorted(marker for marker in self.all_markers - self.sees if marker in text)

    def __str__(self) -> str:
        return self.name


@dataclass
class World:
    users: dict
    alpha: object
    zulu: object
    parts: dict  # "alpha_channel", "zulu_source", ...
    agents: dict  # name -> Agent
    tokens: dict  # persona or token name -> clear token
    group: Group
    sees: dict = field(default_factory=dict)  # persona name -> markers
    markers: frozenset[str] = frozenset()
    # username -> session key of a login made once with the world (``module_world`` only; see there).
    sessions: dict = field(default_factory=dict)

    def __getattr__(self, name):
        try:
            return self.__dict__["parts"][name]
        except KeyError:
            raise AttributeError(name) from None


def _instrument_with_parts(owner, prefix: str) -> tuple[object, dict, set[str]]:
    instrument = make_instrument(owner, name=f"{prefix.title()} instrument", slug=f"{prefix}")
    source = make_source(instrument, name=f"{prefix}-file")
    channel = make_channel(instrument, name=f"{prefix}-temp", slug=f"{prefix}-temp", source=source, units="degC")
    entry = LogbookEntry.objects.create(instrument=instrument, author=owner, text=f"{prefix}-logbook-entry")
    rejected = RejectedSample.objects.create(
        origin=Origin.AGENT, channel=channel, source=source, channel_ref=f"{prefix}-quarantine", reason="test"
    )
    rule = AlarmRule.objects.create(instrument=instrument, name=f"{prefix}-rule", threshold=30.0)
    spike = SpikeCheck.objects.create(instrument=instrument, name=f"{prefix}-spike", threshold=5.0)
    event = AlarmEvent.objects.create(
        rule=rule,
        channel=channel,
        kind=RuleKind.ABOVE,
        severity=Severity.WARNING,
        message=f"{prefix}-alarm-event",
        # long cleared, so the pages' counts of active alarms are the tests' own
        raised_at=timezone.now() - timedelta(days=3),
        cleared_at=timezone.now() - timedelta(days=2),
    )
    notification = AlarmNotification.objects.create(
        event=event, transition=Transition.RAISED, medium=Medium.EMAIL, recipients=[f"{prefix}@example.org"]
    )
    subscription = AlarmSubscription.objects.create(user=owner, instrument=instrument)
    run = CollectionRun.objects.create(source=source, started_at=timezone.now(), worker=f"{prefix}-worker")
    run_list = make_run_list(owner, name=f"{prefix}-campaign", slug=f"{prefix}-runs", instruments=[instrument])
    experiment_run = Run.objects.create(
        run_list=run_list,
        number=1,
        start=timezone.now() - timedelta(hours=2),
        end=timezone.now() - timedelta(hours=1),
        parameters={"energy": 1.5},
        summary=f"{prefix}-run-summary",
    )
    parts = {
        "instrument": instrument,
        "source": source,
        "channel": channel,
        "entry": entry,
        "rejected": rejected,
        "rule": rule,
        "spike": spike,
        "event": event,
        "notification": notification,
        "subscription": subscription,
        "run": run,
        "runlist": run_list,
        "experiment_run": experiment_run,
    }
    markers = {
        instrument.slug,
        instrument.name,
        source.name,
        channel.slug,
        entry.text,
        rejected.channel_ref,
        rule.name,
        spike.name,
        event.message,
        notification.recipients[0],
        run.worker,
        run_list.name,
        experiment_run.summary,
    }
    return instrument, parts, markers


def build_world() -> World:
    operators = Group.objects.get(name=roles.OPERATORS)
    administrators = Group.objects.get(name=roles.ADMINISTRATORS)
    # No passwords: personas log in with force_login, and hashing seven passwords per test is slow.
    users = {
        "olivia": make_user("olivia", is_staff=True, password=None),
        "vera": make_user("vera", password=None),
        "eddie": make_user("eddie", password=None),
        "gina": make_user("gina", password=None),
        "stan": make_user("stan", password=None),
        "ada": make_user("ada", is_staff=True, password=None),
        "zed": make_user("zed", password=None),
    }
    users["olivia"].groups.add(operators)
    users["ada"].groups.add(administrators)
    team = Group.objects.create(name="alpha-team")
    users["gina"].groups.add(team)

    alpha, alpha_parts, alpha_markers = _instrument_with_parts(users["olivia"], "alpha-station")
    zulu, zulu_parts, zulu_markers = _instrument_with_parts(users["zed"], "zulu-hidden")
    services.share(alpha, users["vera"], ShareLevel.VIEW)
    services.share(alpha, users["eddie"], ShareLevel.CHANGE)
    services.share(alpha, team, ShareLevel.VIEW)
    # alpha's run list is shared the same way (its own grants, through the same service).
    services.share(alpha_parts["runlist"], users["vera"], ShareLevel.VIEW)
    services.share(alpha_parts["runlist"], users["eddie"], ShareLevel.CHANGE)
    services.share(alpha_parts["runlist"], team, ShareLevel.VIEW)

    agents, tokens = {}, {}
    agents["alpha-logger"], tokens["agent_scoped"] = services.create_agent(
        owner=users["olivia"], name="alpha-logger", instruments=[alpha]
    )
    agents["spare-logger"], tokens["agent_unscoped"] = services.create_agent(owner=users["olivia"], name="spare-logger")
    agents["zulu-logger"], tokens["zulu-logger"] = services.create_agent(
        owner=users["zed"], name="zulu-logger", instruments=[zulu]
    )
    read, tokens["personal_read_token"] = services.create_personal_token(
        user=users["olivia"], name="olivia-read", scope=TokenScope.READ
    )
    write, tokens["personal_write_token"] = services.create_personal_token(
        user=users["olivia"], name="olivia-write", scope=TokenScope.READ_WRITE
    )
    zed_token, tokens["zed-script"] = services.create_personal_token(
        user=users["zed"], name="zed-script", scope=TokenScope.READ_WRITE
    )

    def agent_markers(agent) -> set[str]:
        return {agent.name, agent.token.key_id}

    olivia_own = (
        agent_markers(agents["alpha-logger"])
        | agent_markers(agents["spare-logger"])
        | {read.name, read.key_id, write.name, write.key_id}
    )
    zed_own = agent_markers(agents["zulu-logger"]) | {zed_token.name, zed_token.key_id}
    everything = frozenset(alpha_markers | zulu_markers | olivia_own | zed_own)
    owner_sees = frozenset(alpha_markers | olivia_own)
    sees = {
        "anonymous": frozenset(),
        "stranger": frozenset(),
        "shared_viewer": frozenset(alpha_markers),
        "shared_editor": frozenset(alpha_markers),
        "group_member": frozenset(alpha_markers),
        "owner": owner_sees,
        "administrator": everything,
        # whoami tells an agent its own name, key id and the instruments it may push to.
        "agent_scoped": frozenset(agent_markers(agents["alpha-logger"]) | {alpha.slug}),
        "agent_unscoped": frozenset(agent_markers(agents["spare-logger"])),
        "personal_read_token": owner_sees,
        "personal_write_token": owner_sees,
    }
    parts = {f"alpha_{k}": v for k, v in alpha_parts.items()} | {f"zulu_{k}": v for k, v in zulu_parts.items()}
    parts |= {"read_token": read, "write_token": write, "zed_token": zed_token}
    return World(
        users=users,
        alpha=alpha,
        zulu=zulu,
        parts=parts,
        agents=agents,
        tokens=tokens,
        group=team,
        sees=sees,
        markers=everything,
    )


@pytest.fixture
def world(request, db) -> World:
    """This test's world: built for it, or, in a module that shares one (``pytestmark =
    pytest.mark.usefixtures("module_world")``), a copy of the module's. The copy's Python objects are the
    test's own, so a test may change them (``world.alpha_channel.units = ...``) as with a world of its own; what
    it writes to the database is rolled back before the next test."""
    if "module_world" in request.fixturenames:
        return copy.deepcopy(request.getfixturevalue("module_world"))
    return build_world()


@pytest.fixture(scope="module")
def module_world(django_db_setup, django_db_blocker):
    """One world for a whole module, built once instead of once per test (a world costs about three times
    a typical test's own work).

    Built inside a transaction that stays open for the module and is rolled back at its end; each test
    (through ``db``) runs in a savepoint inside it, as Django's ``TestCase.setUpTestData`` does, so
    what a test writes is undone before the next. A module opts in with::

        pytestmark = pytest.mark.usefixtures("module_world")

    and ``world`` then gives each test a copy of it. Not for a module with tests that commit (a live server,
    child processes, ``transactional_db``): conftest.py refuses the mix.

    Each user is also logged in once here, and every persona with a session reuses that login: the session
    row lives in the outer transaction, so a test that logs out or cycles the key gets it back at its
    rollback. A login per test cost about a fifth of a permission-matrix case.
    """
    with django_db_blocker.unblock():
        outer = transaction.atomic()
        outer.__enter__()
        try:
            world = build_world()
            for user in world.users.values():
                client = Client()
                client.force_login(user)
                world.sessions[user.username] = client.cookies[settings.SESSION_COOKIE_NAME].value
            yield world
        finally:
            transaction.set_rollback(True)
            outer.__exit__(None, None, None)


def _persona(world: World, name: str, *, user=None, token: str | None = None) -> Persona:
    client = APIClient()
    if user is not None and user.username in world.sessions:
        client.cookies[settings.SESSION_COOKIE_NAME] = world.sessions[user.username]
    elif user is not None:
        client.force_login(user)
    if token is not None:
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {token}")
    return Persona(name, client, user, world.sees[name], world.markers, token)


@pytest.fixture
def anonymous(world) -> Persona:
    return _persona(world, "anonymous")


@pytest.fixture
def stranger(world) -> Persona:
    return _persona(world, "stranger", user=world.users["stan"])


@pytest.fixture
def shared_viewer(world) -> Persona:
    return _persona(world, "shared_viewer", user=world.users["vera"])


@pytest.fixture
def shared_editor(world) -> Persona:
    return _persona(world, "shared_editor", user=world.users["eddie"])


@pytest.fixture
def group_member(world) -> Persona:
    return _persona(world, "group_member", user=world.users["gina"])


@pytest.fixture
def owner(world) -> Persona:
    return _persona(world, "owner", user=world.users["olivia"])


@pytest.fixture
def administrator(world) -> Persona:
    return _persona(world, "administrator", user=world.users["ada"])


@pytest.fixture
def agent_scoped(world) -> Persona:
    return _persona(world, "agent_scoped", token=world.tokens["agent_scoped"])


@pytest.fixture
def agent_unscoped(world) -> Persona:
    return _persona(world, "agent_unscoped", token=world.tokens["agent_unscoped"])


@pytest.fixture
def personal_read_token(world) -> Persona:
    return _persona(world, "personal_read_token", token=world.tokens["personal_read_token"])


@pytest.fixture
def personal_write_token(world) -> Persona:
    return _persona(world, "personal_write_token", token=world.tokens["personal_write_token"])


@pytest.fixture(params=PERSONAS)
def persona(request) -> Persona:
    """Runs the test once as each persona."""
    return request.getfixturevalue(request.param)
