"""Every API endpoint and every page, as every persona: the exact status code, and no foreign object.

``ROUTES`` has one line per case: the URL name, the method, how to fill the URL from the world, the
expected status for each persona (a profile, with exceptions), and a body or query string if needed.
``test_every_route_is_in_the_matrix`` fails, naming the route, when a URL (API, page, or the admin of
one of our apps) has no line here, so a new endpoint is covered by adding that one line.

For every answer, whatever its status, no marker the persona may not see (see ``personas``) may appear
in the body: not in a list, a detail, an error message or an admin page.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from urllib.parse import urlencode

import pytest
from django.urls import URLPattern, URLResolver, get_resolver, reverse

from accounts.models import AuditEvent
from accounts.tests.personas import PERSONAS
from instruments.tests.page_world import (
    alpha_alarm,
    alpha_dashboard,
    alpha_panel,
    any_instrument_rule,
    zulu_alarm,
    zulu_dashboard,
)

# One world for the module's few thousand cases (accounts.tests.personas.module_world).
pytestmark = pytest.mark.usefixtures("module_world")

AGENTS = ("agent_scoped", "agent_unscoped")
TOKENS = ("personal_read_token", "personal_write_token")


def expect(default: int, **statuses: int) -> dict[str, int]:
    unknown = set(statuses) - set(PERSONAS)
    assert not unknown, f"unknown personas {unknown}"
    return {p: statuses.get(p, default) for p in PERSONAS}


def _agents(status: int) -> dict[str, int]:
    return dict.fromkeys(AGENTS, status)


# --- profiles -------------------------------------------------------------------------------------
# API: anonymous gets 401; agents may call nothing but whoami and ingest (403).
API_ANY_USER = expect(200, anonymous=401, **_agents(403))
API_OLIVIAS = expect(  # a detail of something olivia owns
    404, anonymous=401, owner=200, administrator=200, personal_read_token=200, personal_write_token=200, **_agents(403)
)
API_OLIVIAS_WRITE = {**API_OLIVIAS, "personal_read_token": 403}
API_ZEDS = expect(404, anonymous=401, administrator=200, **_agents(403))  # something zed owns
API_ALPHA_SHARING = expect(  # needs the share level on alpha: visible to viewers (403), hidden from stan (404)
    403, anonymous=401, stranger=404, owner=200, administrator=200, personal_write_token=200
)
API_ZULU_SHARING = expect(404, anonymous=401, administrator=200, **_agents(403))
# Registry: alpha is seen by its viewers (vera, gina), editor (eddie), owner and administrator.
API_ALPHA_READ = expect(200, anonymous=401, stranger=404, **_agents(403))
API_ALPHA_CHANGE = {**API_ALPHA_READ, "shared_viewer": 403, "group_member": 403, "personal_read_token": 403}
API_ALPHA_DELETE = {**API_ALPHA_CHANGE, "shared_editor": 403, "owner": 204, "administrator": 204}
API_ALPHA_DELETE["personal_write_token"] = 204
API_ZULU_WRITE = {**API_ZEDS, "personal_read_token": 403}
# Creating a part of alpha needs change on alpha; without it the instrument "does not exist" (400).
API_ALPHA_CREATE = expect(
    400, anonymous=401, shared_editor=201, owner=201, administrator=201, personal_write_token=201,
    personal_read_token=403, **_agents(403),
)  # fmt: skip
# Creating instruments: Operators (olivia) and administrators.
API_CREATE_INSTRUMENT = expect(403, anonymous=401, owner=201, administrator=201, personal_write_token=201)
NEW_SOURCE = {"instrument": "alpha-station", "name": "new-source", "kind": "file", "config": {"path": "/srv/data"}}
# Source targets (accounts.targets; the matrix's rules: files under /srv, nothing on the network allow-list).
# Outside the rules: administrators only. Protected (the server's own files): nobody.
API_ALPHA_CREATE_OUT_OF_RULES = {
    **API_ALPHA_CREATE, "shared_editor": 400, "owner": 400, "personal_write_token": 400,
}  # fmt: skip
API_ALPHA_CREATE_PROTECTED = {**API_ALPHA_CREATE_OUT_OF_RULES, "administrator": 400}
API_ALPHA_RETARGET = {**API_ALPHA_CHANGE, "shared_editor": 400, "owner": 400, "personal_write_token": 400}
# What olivia's agent collects: she (and her write token) and administrators only; eddie, a co-editor, not.
API_ALPHA_AGENT_COLLECTS = {**API_ALPHA_CHANGE, "shared_editor": 400}
ETC_SOURCE = {**NEW_SOURCE, "config": {"path": "/etc", "pattern": "passwd"}}
REDIS_SOURCE = {**NEW_SOURCE, "kind": "tcp", "config": {"host": "127.0.0.1", "port": 6379}}
PROC_SOURCE = {**NEW_SOURCE, "config": {"path": "/proc/self", "pattern": "environ"}}
COMMAND = {"collect": {"kind": "command", "command": ["id"], "columns": ["x"]}}

# Previews: like creating a source of alpha, but nothing is created (200). A protected target is refused to
# everyone; a target outside the rules to non-administrators before any connection, while ada's preview
# does connect: to a loopback port where nothing listens, so she gets "Cannot connect" (400) — the reasons
# are told apart in collection/tests/test_preview.py.
ALPHA_PREVIEW = {"instrument": "alpha-station", "kind": "file", "sample_text": "2026-01-01T00:00:00,1.5\n"}
PROC_PREVIEW = {"instrument": "alpha-station", "kind": "file", "config": PROC_SOURCE["config"]}
CLOSED_PORT_PREVIEW = {"instrument": "alpha-station", "kind": "tcp", "config": {"host": "127.0.0.1", "port": 9}}
CLOSED_PORT_PREVIEW["connect"] = True
# A Modbus source's entries checked (no connection), and "Test connection" to a closed port: the rules first.
MODBUS_PREVIEW = {
    "instrument": "alpha-station",
    "kind": "modbus",
    "config": {"host": "127.0.0.1", "port": 9, "timeout": 0.2, "registers": [{"field": "t", "address": 0}]},
}
MODBUS_CLOSED_PORT_PREVIEW = {**MODBUS_PREVIEW, "connect": True}
API_ALPHA_PREVIEW = {**API_ALPHA_CREATE, "shared_editor": 200, "owner": 200, "administrator": 200}
API_ALPHA_PREVIEW["personal_write_token"] = 200
API_ZULU_PREVIEW = expect(400, anonymous=401, administrator=200, personal_read_token=403, **_agents(403))
API_ALPHA_PREVIEW_REFUSED = {**API_ALPHA_CREATE_PROTECTED}
API_ALPHA_PREVIEW_OUT_OF_RULES = {**API_ALPHA_CREATE_OUT_OF_RULES, "administrator": 400}
# Asking olivia's agent for a sample of its files (202: asked; the agent answers later): the change level on
# alpha, and the agent's owner or an administrator; eddie, a co-editor, is told there is no such agent (400).
AGENT_SAMPLE_PREVIEW = {"instrument": "alpha-station", "kind": "file", "config": {"path": "/data"}}
API_ALPHA_AGENT_SAMPLE = {**API_ALPHA_PREVIEW, "owner": 202, "administrator": 202, "personal_write_token": 202}
API_ALPHA_AGENT_SAMPLE["shared_editor"] = 400
# An agent delivers the lines of a request addressed to it (204); any other agent is told none waits (404).
AGENT_LINES = {"lines": ["time,temp", "2026-01-01T00:00:00,1.5"], "file": "day.csv"}
API_AGENT_SAMPLE_ALPHA = expect(403, anonymous=401, agent_scoped=204, agent_unscoped=404)
API_AGENT_SAMPLE_ZULU = expect(403, anonymous=401, **_agents(404))


def sample_request(world, agent_name: str):
    from accounts.models import AgentSampleRequest

    agent = world.agents[agent_name]
    return AgentSampleRequest.objects.create(agent=agent, requested_by=agent.owner, folder="/data")


def alpha_agent_source(world):
    from instruments.models import DataSource

    source, _ = DataSource.objects.get_or_create(
        instrument=world.alpha,
        name="alpha-remote",
        defaults={
            "kind": "agent",
            "agent": world.agents["alpha-logger"],
            "config": {"collect": {"kind": "file", "path": "/data", "columns": ["t"]}},
        },
    )
    return source


RAW_BYTES = b"2026-01-01T00:00:00,1.5\n"


def raw_file(world, which: str):
    """A raw file an agent shipped to alpha or zulu, with its bytes in the (per-test) archive."""
    import hashlib

    from collection.models import RawFile
    from collection.services import raw_files

    sha = hashlib.sha256(RAW_BYTES + which.encode()).hexdigest()
    blob = raw_files.blob_path(sha)
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(RAW_BYTES + which.encode())
    instrument = getattr(world, which)
    return RawFile.objects.create(
        instrument=instrument,
        name=f"{instrument.slug}-day.csv",
        path=f"/data/{instrument.slug}-day.csv",
        sha256=sha,
        size=len(RAW_BYTES) + len(which),
        modified="2026-01-01T00:00:00Z",
    )


def raw_file_kwargs(which: str) -> Callable:
    return lambda w: {"slug": getattr(w, which).slug, "pk": raw_file(w, which).pk}


def server_copy_kwargs(which: str) -> Callable:
    """A raw copy the server kept of a file alpha's or zulu's source read (its own archive folder)."""

    def kwargs(world) -> dict:
        from django.conf import settings

        instrument, source = getattr(world, which), getattr(world, f"{which}_source")
        folder = settings.DAQBROKER_ARCHIVE_DIR / instrument.slug / f"source-{source.pk}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "0123456789-day.csv").write_bytes(RAW_BYTES)
        return {"slug": instrument.slug, "source_id": source.pk, "name": "0123456789-day.csv"}

    return kwargs


def raw_zip_query(which: str) -> Callable:
    return lambda w: {"id": [raw_file(w, which).pk]}


def raw_announce(world) -> dict:
    return {
        "source": alpha_agent_source(world).pk,
        "sha256": "ab" * 32,
        "size": 10,
        "name": "day.csv",
        "path": "/data/day.csv",
        "modified": "2026-01-01T00:00:00Z",
    }


# Only the agent whose source it is announces (200); the other agent is told there is no such source.
API_AGENT_RAW_ALPHA = expect(403, anonymous=401, agent_scoped=200, agent_unscoped=404)


NEW_CHANNEL = {"instrument": "alpha-station", "name": "New channel", "slug": "new-channel"}
API_ALPHA_ACCEPTED = {  # a change answered 202 (queued for the next run)
    **API_ALPHA_CHANGE, **dict.fromkeys(("shared_editor", "owner", "administrator", "personal_write_token"), 202),
}  # fmt: skip
API_ZULU_ACCEPTED = {**API_ZULU_WRITE, "administrator": 202}
RANGE = {"start": "2020-01-01T00:00:00Z", "end": "2030-01-01T00:00:00Z", "reason": "matrix"}
# Admin: non-staff (and every token or agent: no session) are sent to the login page.
STAFF = expect(302, owner=200, administrator=200)
ADMINISTRATORS_ONLY = expect(302, owner=403, administrator=200)
NOBODY = expect(302, owner=403, administrator=403)  # e.g. deleting an audit event
HIDDEN_IN_ADMIN = expect(302, administrator=200)  # olivia is sent back to the index: "does not exist"
STAFF_ACTION = expect(302)  # an admin action: done, back to the list (non-staff: to the login page)
STAFF_ACTION_PAGE = expect(302, owner=200, administrator=200)  # an action showing its page (the count)


# Pages: for people with a session; tokens and agents are nobody there (302 to the login page).
_NO_SESSION = {"anonymous": 302, **_agents(302), **dict.fromkeys(TOKENS, 302)}
_NO_SESSION_200 = {**_agents(200), **dict.fromkeys(TOKENS, 200)}
PAGE_ANY_USER = expect(200, **_NO_SESSION)
PAGE_ALPHA = expect(200, stranger=404, **_NO_SESSION)  # alpha's viewers, editor, owner, administrator
PAGE_ALPHA_CHANGE_POST = expect(302, stranger=404, shared_viewer=403, group_member=403)  # done: back to the page
PAGE_ALPHA_SHARE = expect(403, stranger=404, owner=200, administrator=200, **_NO_SESSION)
PAGE_ALPHA_SHARE_POST = expect(403, stranger=404, owner=302, administrator=302, **_NO_SESSION)
PAGE_ALPHA_OWNER = PAGE_ALPHA_SHARE  # olivia's dashboard: seen through alpha, changed by olivia (or ada)
PAGE_ALPHA_OWNER_POST = PAGE_ALPHA_SHARE_POST
PAGE_ALPHA_CHANGE = expect(200, stranger=404, shared_viewer=403, group_member=403, **_NO_SESSION)
PAGE_ZULU = expect(404, administrator=200, **_NO_SESSION)
# zulu's source asked for under alpha's address: not found for whoever may open alpha's setup page.
PAGE_ALPHA_NOT_FOUND = {**PAGE_ALPHA_CHANGE, "shared_editor": 404, "owner": 404, "administrator": 404}
PAGE_ZULU_POST = expect(404, administrator=302, **_NO_SESSION)


@dataclass(frozen=True)
class Case:
    route: str
    method: str
    kwargs: Callable[[object], dict] | None
    expected: dict[str, int]
    data: dict | Callable[[object], dict] | None = None
    query: dict | Callable[[object], dict] = field(default_factory=dict)
    encoding: str = "json"  # "multipart" for an admin form's POST

    def url(self, world) -> str:
        url = reverse(self.route, kwargs=self.kwargs(world) if self.kwargs else None)
        query = self.query(world) if callable(self.query) else self.query
        return f"{url}?{urlencode(query, doseq=True)}" if query else url

    @property
    def id(self) -> str:
        shown = "(query)" if callable(self.query) else sorted(self.query)
        return f"{self.method} {self.route}" + (f" {shown}" if self.query else "")


def _a(name: str, model: str, action: str) -> str:
    return f"admin:{name}_{model}_{action}"


def _pk(attr: str) -> Callable:
    return lambda w: {"object_id": getattr(w, attr).pk}


def _admin_model(
    app: str, model: str, obj: Callable, *, changelist=STAFF, add=STAFF, change=STAFF, delete=STAFF, history=STAFF
) -> list[Case]:
    """The five admin pages of a model (one line per model in ROUTES)."""
    return [
        Case(_a(app, model, "changelist"), "GET", None, changelist),
        Case(_a(app, model, "add"), "GET", None, add),
        Case(_a(app, model, "change"), "GET", obj, change),
        Case(_a(app, model, "delete"), "GET", obj, delete),
        Case(_a(app, model, "history"), "GET", obj, history),
    ]


NEW_AGENT = {"name": "new-logger", "instruments": ["alpha-station"]}
# The admin's add form of an alarm rule, with no instrument ("any instrument").
NEW_RULE = {
    "name": "new-rule",
    "enabled": "on",
    "kind": "above",
    "severity": "warning",
    "threshold": "35",
    "hysteresis": "0",
    "min_duration_seconds": "0",
    "stale_factor": "3",
    "instrument": "",
    "channel_pattern": "*temp*",
    "units": "",
    "extra_emails": "",
    "webhook_url": "",
    "webhook_secret": "",
}


def _rule_without_instrument(world) -> dict:
    return {"object_id": any_instrument_rule(world).pk}


SHARE_WITH_STAN = {"kind": "user", "name": "stan", "level": "view"}
ALPHA_RUNS = {"slug": "alpha-station-runs"}
ZULU_RUNS = {"slug": "zulu-hidden-runs"}
# Run lists: any signed-in person may create one of their own (not agents, not read-only tokens).
API_CREATE_RUN_LIST = expect(201, anonymous=401, personal_read_token=403, **_agents(403))
# Starting a run needs collect on the run list: eddie (change) and olivia; olivia's agent scoped to alpha
# too (the run list concerns alpha); the unscoped agent does not reach it (404).
API_ALPHA_START = expect(
    403, anonymous=401, stranger=404, shared_editor=201, owner=201, administrator=201, personal_write_token=201,
    agent_scoped=201, agent_unscoped=404,
)  # fmt: skip
API_ALPHA_STOP = {k: (409 if v == 201 else v) for k, v in API_ALPHA_START.items()}  # no run is active: 409
API_ALPHA_COMMENT = API_ALPHA_START
API_ZULU_START = expect(404, anonymous=401, administrator=201, personal_read_token=403)
ALPHA = {"slug": "alpha-station"}
ZULU = {"slug": "zulu-hidden"}

ROUTES: list[Case] = [
    # --- API ----------------------------------------------------------------------------------------
    Case("api:api-root", "GET", None, API_ANY_USER),
    Case("api:whoami", "GET", None, expect(200, anonymous=401)),
    # The agent's own configuration and heartbeat: agent tokens only.
    Case("api:agent-config", "GET", None, expect(403, anonymous=401, **_agents(200))),
    Case(
        "api:agent-heartbeat",
        "POST",
        None,
        expect(403, anonymous=401, **_agents(200)),
        data={"version": "0.1.0", "hostname": "logger-host", "spool_depth": 3},
    ),
    Case(
        "api:agent-unparsed",
        "POST",
        None,
        expect(403, anonymous=401, **_agents(200)),
        data={"batch_id": "lines-1", "lines": [{"text": "ERR bus timeout", "reason": "line not parsed"}]},
    ),
    Case("api:agent-list", "GET", None, API_ANY_USER),
    Case(
        "api:agent-list",
        "POST",
        None,
        expect(
            400,
            anonymous=401,
            shared_editor=201,
            owner=201,
            administrator=201,
            personal_read_token=403,
            personal_write_token=201,
            **_agents(403),
        ),
        data=NEW_AGENT,
    ),
    Case("api:agent-detail", "GET", lambda w: {"pk": w.agents["alpha-logger"].pk}, API_OLIVIAS),
    Case("api:agent-detail", "GET", lambda w: {"pk": w.agents["zulu-logger"].pk}, API_ZEDS),
    Case("api:agent-revoke", "POST", lambda w: {"pk": w.agents["alpha-logger"].pk}, API_OLIVIAS_WRITE),
    Case(
        "api:agent-revoke",
        "POST",
        lambda w: {"pk": w.agents["zulu-logger"].pk},
        {**API_ZEDS, "personal_read_token": 403},
    ),
    Case("api:agent-new-token", "POST", lambda w: {"pk": w.agents["alpha-logger"].pk}, API_OLIVIAS_WRITE),
    Case(
        "api:agent-new-token",
        "POST",
        lambda w: {"pk": w.agents["zulu-logger"].pk},
        {**API_ZEDS, "personal_read_token": 403},
    ),
    Case("api:token-list", "GET", None, API_ANY_USER),
    Case(
        "api:token-list",
        "POST",
        None,
        expect(201, anonymous=401, **dict.fromkeys(TOKENS, 403), **_agents(403)),
        data={"name": "new-token"},
    ),
    Case("api:token-detail", "GET", lambda w: {"pk": w.read_token.pk}, API_OLIVIAS),
    Case("api:token-detail", "GET", lambda w: {"pk": w.zed_token.pk}, API_ZEDS),
    Case("api:token-revoke", "POST", lambda w: {"pk": w.read_token.pk}, API_OLIVIAS_WRITE),
    Case("api:instrument-shares", "GET", lambda w: ALPHA, API_ALPHA_SHARING),
    Case("api:instrument-shares", "GET", lambda w: ZULU, API_ZULU_SHARING),
    Case(
        "api:instrument-shares",
        "POST",
        lambda w: ALPHA,
        {**API_ALPHA_SHARING, "owner": 201, "administrator": 201, "personal_write_token": 201},
        data=SHARE_WITH_STAN,
    ),
    Case(
        "api:instrument-shares",
        "POST",
        lambda w: ZULU,
        {**API_ZULU_SHARING, "administrator": 201, "personal_read_token": 403},
        data=SHARE_WITH_STAN,
    ),
    Case(
        "api:instrument-share-detail",
        "DELETE",
        lambda w: {**ALPHA, "kind": "user", "name": "vera"},
        {**API_ALPHA_SHARING, "owner": 204, "administrator": 204, "personal_write_token": 204},
    ),
    Case(
        "api:instrument-share-detail",
        "DELETE",
        lambda w: {**ZULU, "kind": "user", "name": "vera"},
        {**API_ZULU_SHARING, "personal_read_token": 403, "administrator": 404},
    ),
    # --- registry and ingest (REST API issue) ------------------------------------------------------
    Case("api:schema", "GET", None, expect(200)),
    Case("api:docs", "GET", None, expect(200)),
    Case(
        "api:ingest",
        "POST",
        None,
        expect(200, anonymous=401, personal_read_token=403),
        data={"readings": [{"channel": "nowhere/nothing", "t": 1767323045, "v": 1.0}]},
    ),
    # Replacing stored readings: people who may change (readings of others' instruments are refused in the
    # answer, 200); agents may only add readings.
    Case(
        "api:ingest",
        "POST",
        None,
        expect(200, anonymous=401, personal_read_token=403, **_agents(403)),
        data={"readings": [{"channel": "nowhere/nothing", "t": 1767323045, "v": 1.0}]},
        query={"on_conflict": "replace"},
    ),
    Case("api:instrument-list", "GET", None, API_ANY_USER),
    Case("api:instrument-list", "POST", None, API_CREATE_INSTRUMENT, data={"name": "New one", "slug": "new-one"}),
    Case("api:instrument-detail", "GET", lambda w: ALPHA, API_ALPHA_READ),
    Case("api:instrument-detail", "GET", lambda w: ZULU, API_ZEDS),
    Case("api:instrument-detail", "PATCH", lambda w: ALPHA, API_ALPHA_CHANGE, data={"description": "edited"}),
    Case("api:instrument-detail", "PATCH", lambda w: ZULU, API_ZULU_WRITE, data={"description": "edited"}),
    Case("api:instrument-detail", "DELETE", lambda w: ALPHA, API_ALPHA_DELETE),
    Case("api:instrument-detail", "DELETE", lambda w: ZULU, {**API_ZULU_WRITE, "administrator": 204}),
    Case("api:source-list", "GET", None, API_ANY_USER),
    Case("api:source-list", "POST", None, API_ALPHA_CREATE, data=NEW_SOURCE),
    Case("api:source-detail", "GET", lambda w: {"pk": w.alpha_source.pk}, API_ALPHA_READ),
    Case("api:source-detail", "GET", lambda w: {"pk": w.zulu_source.pk}, API_ZEDS),
    Case("api:source-detail", "PATCH", lambda w: {"pk": w.alpha_source.pk}, API_ALPHA_CHANGE, data={"enabled": False}),
    Case("api:source-detail", "DELETE", lambda w: {"pk": w.zulu_source.pk}, {**API_ZULU_WRITE, "administrator": 204}),
    # --- source targets: who may point a source where (issue 12) ---------------------------------------
    Case("api:source-list", "POST", None, API_ALPHA_CREATE_OUT_OF_RULES, data=ETC_SOURCE),
    Case("api:source-list", "POST", None, API_ALPHA_CREATE_OUT_OF_RULES, data=REDIS_SOURCE),
    Case("api:source-list", "POST", None, API_ALPHA_CREATE_PROTECTED, data=PROC_SOURCE),
    Case(
        "api:source-detail",
        "PATCH",
        lambda w: {"pk": w.alpha_source.pk},
        API_ALPHA_RETARGET,
        data={"config": ETC_SOURCE["config"]},
    ),
    Case(
        "api:source-detail",
        "PATCH",
        lambda w: {"pk": alpha_agent_source(w).pk},
        API_ALPHA_AGENT_COLLECTS,
        data={"config": COMMAND},
    ),
    # --- undoing mistakes (issue 15 point 4): re-read a source, delete a channel's readings ---------------
    Case("api:source-reread", "POST", lambda w: {"pk": w.alpha_source.pk}, API_ALPHA_ACCEPTED, data={}),
    Case("api:source-reread", "POST", lambda w: {"pk": w.zulu_source.pk}, API_ZULU_ACCEPTED, data={}),
    # An agent's source is read on the agent's machine: 400 with the reason, for those who may change it.
    Case(
        "api:source-reread",
        "POST",
        lambda w: {"pk": alpha_agent_source(w).pk},
        {**API_ALPHA_CHANGE, **dict.fromkeys(("shared_editor", "owner", "administrator", "personal_write_token"), 400)},
        data={},
    ),
    Case("api:channel-delete-readings", "POST", lambda w: {"pk": w.alpha_channel.pk}, API_ALPHA_CHANGE, data=RANGE),
    Case("api:channel-delete-readings", "POST", lambda w: {"pk": w.zulu_channel.pk}, API_ZULU_WRITE, data=RANGE),
    # --- the source preview (issue 16): the change level on the instrument, the target rules -----------
    Case("api:source-preview", "POST", None, API_ALPHA_PREVIEW, data=ALPHA_PREVIEW),
    Case("api:source-preview", "POST", None, API_ZULU_PREVIEW, data={**ALPHA_PREVIEW, "instrument": "zulu-hidden"}),
    Case("api:source-preview", "POST", None, API_ALPHA_PREVIEW_REFUSED, data=PROC_PREVIEW),
    Case("api:source-preview", "POST", None, API_ALPHA_PREVIEW_OUT_OF_RULES, data=CLOSED_PORT_PREVIEW),
    Case("api:source-preview", "POST", None, API_ALPHA_PREVIEW, data=MODBUS_PREVIEW),
    Case("api:source-preview", "POST", None, API_ZULU_PREVIEW, data={**MODBUS_PREVIEW, "instrument": "zulu-hidden"}),
    Case("api:source-preview", "POST", None, API_ALPHA_PREVIEW_OUT_OF_RULES, data=MODBUS_CLOSED_PORT_PREVIEW),
    Case(
        "api:source-preview",
        "POST",
        None,
        API_ALPHA_AGENT_SAMPLE,
        data=lambda w: {**AGENT_SAMPLE_PREVIEW, "agent": w.agents["alpha-logger"].pk},
    ),
    Case(
        "api:agent-sample",
        "POST",
        lambda w: {"pk": sample_request(w, "alpha-logger").pk},
        API_AGENT_SAMPLE_ALPHA,
        data=AGENT_LINES,
    ),
    Case(
        "api:agent-sample",
        "POST",
        lambda w: {"pk": sample_request(w, "zulu-logger").pk},
        API_AGENT_SAMPLE_ZULU,
        data=AGENT_LINES,
    ),
    Case("api:serial-ports", "GET", None, API_ANY_USER),
    # --- raw files (docs/raw-files.md): agents ship them; whoever may view the instrument reads them ---------
    Case("api:agent-raw-files", "POST", None, API_AGENT_RAW_ALPHA, data=raw_announce),
    Case(
        "api:agent-raw-file-chunk",
        "PUT",
        lambda w: {"sha256": "ab" * 32},
        expect(403, anonymous=401, **_agents(404)),  # nothing announced: no upload in progress
        query={"offset": "0"},
    ),
    Case("api:instrument-raw-files", "GET", lambda w: ALPHA, API_ALPHA_READ),
    Case("api:instrument-raw-files", "GET", lambda w: ZULU, API_ZEDS),
    Case("api:raw-file-download", "GET", lambda w: {"pk": raw_file(w, "alpha").pk}, API_ALPHA_READ),
    Case("api:raw-file-download", "GET", lambda w: {"pk": raw_file(w, "zulu").pk}, API_ZEDS),
    Case("api:instrument-raw-files-zip", "GET", lambda w: ALPHA, API_ALPHA_READ, query=raw_zip_query("alpha")),
    Case("api:instrument-raw-files-zip", "GET", lambda w: ZULU, API_ZEDS, query=raw_zip_query("zulu")),
    Case("instruments:raw-files", "GET", lambda w: ALPHA, PAGE_ALPHA),
    Case("instruments:raw-files", "GET", lambda w: ZULU, PAGE_ZULU),
    Case("instruments:raw-file", "GET", raw_file_kwargs("alpha"), PAGE_ALPHA),
    Case("instruments:raw-file", "GET", raw_file_kwargs("zulu"), PAGE_ZULU),
    Case("instruments:raw-files-zip", "GET", lambda w: ALPHA, PAGE_ALPHA, query=raw_zip_query("alpha")),
    Case("instruments:raw-files-zip", "GET", lambda w: ZULU, PAGE_ZULU, query=raw_zip_query("zulu")),
    Case("api:instrument-server-raw-copies", "GET", lambda w: ALPHA, API_ALPHA_READ),
    Case("api:instrument-server-raw-copies", "GET", lambda w: ZULU, API_ZEDS),
    Case("api:server-raw-copy-download", "GET", server_copy_kwargs("alpha"), API_ALPHA_READ),
    Case("api:server-raw-copy-download", "GET", server_copy_kwargs("zulu"), API_ZEDS),
    Case("instruments:server-raw-copy", "GET", server_copy_kwargs("alpha"), PAGE_ALPHA),
    Case("instruments:server-raw-copy", "GET", server_copy_kwargs("zulu"), PAGE_ZULU),
    Case("api:channel-list", "GET", None, API_ANY_USER),
    Case("api:channel-list", "POST", None, API_ALPHA_CREATE, data=NEW_CHANNEL),
    Case("api:channel-detail", "GET", lambda w: {"pk": w.alpha_channel.pk}, API_ALPHA_READ),
    Case("api:channel-detail", "GET", lambda w: {"pk": w.zulu_channel.pk}, API_ZEDS),
    Case("api:channel-detail", "PATCH", lambda w: {"pk": w.alpha_channel.pk}, API_ALPHA_CHANGE, data={"units": "K"}),
    Case("api:channel-detail", "PATCH", lambda w: {"pk": w.zulu_channel.pk}, API_ZULU_WRITE, data={"units": "K"}),
    Case("api:logbook-list", "GET", None, API_ANY_USER),
    Case("api:logbook-list", "POST", None, API_ALPHA_CREATE, data={"instrument": "alpha-station", "text": "new"}),
    Case("api:logbook-detail", "GET", lambda w: {"pk": w.alpha_entry.pk}, API_ALPHA_READ),
    Case("api:logbook-detail", "GET", lambda w: {"pk": w.zulu_entry.pk}, API_ZEDS),
    # --- run lists and runs (issue 19) ---------------------------------------------------------------
    Case("api:runlist-list", "GET", None, API_ANY_USER),
    Case("api:runlist-list", "POST", None, API_CREATE_RUN_LIST, data={"name": "New runs", "slug": "new-runs"}),
    Case("api:runlist-detail", "GET", lambda w: ALPHA_RUNS, API_ALPHA_READ),
    Case("api:runlist-detail", "GET", lambda w: ZULU_RUNS, API_ZEDS),
    Case("api:runlist-detail", "PATCH", lambda w: ALPHA_RUNS, API_ALPHA_CHANGE, data={"description": "edited"}),
    Case("api:runlist-detail", "PATCH", lambda w: ZULU_RUNS, API_ZULU_WRITE, data={"description": "edited"}),
    Case("api:runlist-detail", "DELETE", lambda w: ALPHA_RUNS, API_ALPHA_DELETE),
    Case("api:runlist-start", "POST", lambda w: ALPHA_RUNS, API_ALPHA_START, data={"parameters": {"energy": 3.5}}),
    Case("api:runlist-start", "POST", lambda w: ZULU_RUNS, API_ZULU_START, data={"parameters": {"energy": 3.5}}),
    Case("api:runlist-stop", "POST", lambda w: ALPHA_RUNS, API_ALPHA_STOP),
    Case("api:runlist-stop", "POST", lambda w: ZULU_RUNS, {**API_ZULU_START, "administrator": 409}),
    Case("api:runlist-runs", "GET", lambda w: ALPHA_RUNS, API_ALPHA_READ),
    Case("api:runlist-runs", "GET", lambda w: ZULU_RUNS, API_ZEDS),
    Case("api:runlist-run", "GET", lambda w: {**ALPHA_RUNS, "label": "1"}, API_ALPHA_READ),
    Case("api:runlist-run", "GET", lambda w: {**ZULU_RUNS, "label": "1"}, API_ZEDS),
    Case("api:runlist-run", "PATCH", lambda w: {**ALPHA_RUNS, "label": "1"}, API_ALPHA_CHANGE, data={"summary": "x"}),
    Case("api:runlist-run", "PATCH", lambda w: {**ZULU_RUNS, "label": "1"}, API_ZULU_WRITE, data={"summary": "x"}),
    Case(
        "api:runlist-comment",
        "POST",
        lambda w: {**ALPHA_RUNS, "label": "1"},
        {**API_ALPHA_COMMENT, **_agents(403)},
        data={"text": "new comment"},
    ),
    Case(
        "api:runlist-comment",
        "POST",
        lambda w: {**ZULU_RUNS, "label": "1"},
        {**API_ZULU_WRITE, "administrator": 201},
        data={"text": "x"},
    ),
    Case("api:runlist-download", "GET", lambda w: ALPHA_RUNS, API_ALPHA_READ),
    Case("api:runlist-download", "GET", lambda w: ZULU_RUNS, API_ZEDS),
    Case(
        "api:runlist-statistics",
        "GET",
        lambda w: ALPHA_RUNS,
        API_ALPHA_READ,
        query={"channels": "alpha-station/alpha-station-temp"},
    ),
    Case(
        "api:runlist-statistics",
        "GET",
        lambda w: ZULU_RUNS,
        API_ZEDS,
        query={"channels": "zulu-hidden/zulu-hidden-temp"},
    ),
    Case("api:run-list", "GET", None, API_ANY_USER),
    Case("api:run-list", "GET", None, API_ANY_USER, query={"instrument": "zulu-hidden", "start": "2026-01-01T00:00Z"}),
    Case("api:run-detail", "GET", lambda w: {"pk": w.alpha_experiment_run.pk}, API_ALPHA_READ),
    Case("api:run-detail", "GET", lambda w: {"pk": w.zulu_experiment_run.pk}, API_ZEDS),
    # --- reading data back: plots, statistics, exports, latest values (query issue) -----------------
    Case("api:samples", "GET", None, API_ALPHA_READ, query={"channels": "alpha-station/alpha-station-temp"}),
    Case("api:samples", "GET", None, API_ZEDS, query={"channels": "zulu-hidden/zulu-hidden-temp"}),
    Case(
        "api:samples",
        "GET",
        None,
        API_ZEDS,
        query={"channels": "alpha-station/alpha-station-temp,zulu-hidden/zulu-hidden-temp"},
    ),
    Case(
        "api:statistics",
        "GET",
        None,
        API_ALPHA_READ,
        query={"channels": "alpha-station/alpha-station-temp", "percentiles": "50"},
    ),
    Case(
        "api:statistics", "GET", None, API_ZEDS, query={"channels": "zulu-hidden/zulu-hidden-temp", "percentiles": "50"}
    ),
    Case("api:annotations", "GET", None, API_ALPHA_READ, query={"channels": "alpha-station/alpha-station-temp"}),
    Case("api:annotations", "GET", None, API_ZEDS, query={"channels": "zulu-hidden/zulu-hidden-temp"}),
    Case(  # a channel one may not see is a bad expression (400), as a missing one is
        "api:expression",
        "GET",
        None,
        {**API_ALPHA_READ, "stranger": 400},
        query={"expression": "alpha-station/alpha-station-temp * 2"},
    ),
    Case(  # a channel one may not see is a bad expression (400) for everyone but zed's administrator
        "api:expression",
        "GET",
        None,
        expect(400, anonymous=401, administrator=200, **_agents(403)),
        query={"expression": "zulu-hidden/zulu-hidden-temp - 1"},
    ),
    Case("api:histogram", "GET", None, API_ALPHA_READ, query={"channels": "alpha-station/alpha-station-temp"}),
    Case("api:histogram", "GET", None, API_ZEDS, query={"channels": "zulu-hidden/zulu-hidden-temp", "time_bins": "20"}),
    Case("api:export", "GET", None, API_ALPHA_READ, query={"instrument": "alpha-station", "layout": "wide"}),
    Case("api:export", "GET", None, API_ZEDS, query={"instrument": "zulu-hidden", "layout": "wide"}),
    Case("api:export", "GET", None, API_ZEDS, query={"channels": "zulu-hidden/zulu-hidden-temp", "format": "parquet"}),
    Case("api:export", "GET", None, API_ALPHA_READ, query={"instrument": "alpha-station", "format": "netcdf"}),
    Case("api:export", "GET", None, API_ZEDS, query={"channels": "zulu-hidden/zulu-hidden-temp", "format": "hdf5"}),
    Case(
        "api:export",
        "GET",
        None,
        API_ALPHA_READ,
        query={"instrument": "alpha-station", "format": "hdf5", "layout": "wide", "include_flagged": "true"},
    ),
    Case("api:instrument-latest", "GET", lambda w: ALPHA, API_ALPHA_READ),
    Case("api:instrument-latest", "GET", lambda w: ZULU, API_ZEDS),
    # --- admin --------------------------------------------------------------------------------------
    Case("admin:index", "GET", None, STAFF),
    Case("admin-password-change", "GET", None, STAFF),  # the admin's own, with the old-password lockout
    Case(
        "admin:autocomplete",
        "GET",
        None,
        STAFF,
        query={"app_label": "instruments", "model_name": "channel", "field_name": "instrument", "term": ""},
    ),
    *_admin_model("instruments", "instrument", _pk("alpha")),
    Case(_a("instruments", "instrument", "change"), "GET", _pk("zulu"), HIDDEN_IN_ADMIN),
    Case(_a("instruments", "instrument", "delete"), "GET", _pk("zulu"), HIDDEN_IN_ADMIN),
    Case(_a("instruments", "instrument", "permissions"), "GET", lambda w: {"object_pk": w.alpha.pk}, STAFF),
    Case(
        _a("instruments", "instrument", "permissions"),
        "GET",
        lambda w: {"object_pk": w.zulu.pk},
        expect(302, owner=404, administrator=200),
    ),
    Case(
        _a("instruments", "instrument", "permissions_manage_user"),
        "GET",
        lambda w: {"object_pk": w.alpha.pk, "user_id": w.users["vera"].pk},
        STAFF,
    ),
    Case(
        _a("instruments", "instrument", "permissions_manage_group"),
        "GET",
        lambda w: {"object_pk": w.alpha.pk, "group_id": w.group.pk},
        STAFF,
    ),
    *_admin_model("instruments", "datasource", _pk("alpha_source")),
    # The re-read and delete-readings admin actions (effects per persona: collection/tests/test_corrections.py).
    Case(
        _a("instruments", "datasource", "changelist"),
        "POST",
        None,
        STAFF_ACTION,
        data=lambda w: {"action": "reread_from_start", "index": "0", "_selected_action": w.alpha_source.pk},
        encoding="multipart",
    ),
    Case(
        _a("instruments", "channel", "changelist"),
        "POST",
        None,
        STAFF_ACTION_PAGE,
        data=lambda w: {
            "action": "delete_readings_in_range",
            "index": "0",
            "_selected_action": w.alpha_channel.pk,
            "range": "1",
            "start": "2020-01-01 00:00:00",
            "end": "2030-01-01 00:00:00",
        },
        encoding="multipart",
    ),
    *_admin_model("instruments", "channel", _pk("alpha_channel")),
    Case(_a("instruments", "channel", "change"), "GET", _pk("zulu_channel"), HIDDEN_IN_ADMIN),
    *_admin_model("instruments", "logbookentry", _pk("alpha_entry")),
    *_admin_model("instruments", "runlist", _pk("alpha_runlist")),
    Case(_a("instruments", "runlist", "change"), "GET", _pk("zulu_runlist"), HIDDEN_IN_ADMIN),
    *_admin_model(
        "instruments",
        "run",
        _pk("alpha_experiment_run"),
        add=expect(302, owner=403, administrator=403),  # runs are started, never typed in
        delete=ADMINISTRATORS_ONLY,
    ),
    Case(_a("instruments", "run", "change"), "GET", _pk("zulu_experiment_run"), HIDDEN_IN_ADMIN),
    *_admin_model("accounts", "agent", lambda w: {"object_id": w.agents["alpha-logger"].pk}, delete=NOBODY),
    *_admin_model("accounts", "apitoken", _pk("read_token"), delete=NOBODY),
    *_admin_model(
        "accounts",
        "auditevent",
        lambda w: {"object_id": AuditEvent.objects.earliest("at").pk},
        changelist=ADMINISTRATORS_ONLY,
        add=NOBODY,
        change=ADMINISTRATORS_ONLY,
        delete=NOBODY,
        history=HIDDEN_IN_ADMIN,  # history looks the event up first: "does not exist" for olivia
    ),
    # Quarantine: Operators have no permission on it yet (it is not restricted per instrument).
    *_admin_model(
        "collection",
        "rejectedsample",
        _pk("zulu_rejected"),
        changelist=ADMINISTRATORS_ONLY,
        add=NOBODY,
        change=ADMINISTRATORS_ONLY,
        delete=ADMINISTRATORS_ONLY,
        history=ADMINISTRATORS_ONLY,
    ),
    # Alarms and checks: Operators manage those of the instruments they may change.
    *_admin_model("collection", "alarmrule", _pk("alpha_rule")),
    Case(_a("collection", "alarmrule", "change"), "GET", _pk("zulu_rule"), HIDDEN_IN_ADMIN),
    # A rule for "any instrument" reaches every instrument's channels: Administrators only (olivia is
    # sent back to the index, "does not exist"; she may not save one either: the instrument is required).
    Case(_a("collection", "alarmrule", "change"), "GET", _rule_without_instrument, HIDDEN_IN_ADMIN),
    Case(_a("collection", "alarmrule", "delete"), "GET", _rule_without_instrument, HIDDEN_IN_ADMIN),
    Case(_a("collection", "alarmrule", "history"), "GET", _rule_without_instrument, HIDDEN_IN_ADMIN),
    Case(
        _a("collection", "alarmrule", "add"),
        "POST",
        None,
        expect(302, owner=200),  # olivia: the form again, "This field is required"; ada: saved
        data=NEW_RULE,
        encoding="multipart",
    ),
    Case(
        _a("collection", "alarmrule", "add"),
        "POST",
        None,
        expect(302),  # olivia and ada: saved, back to the list
        data=lambda w: {**NEW_RULE, "instrument": w.alpha.pk},
        encoding="multipart",
    ),
    *_admin_model("collection", "spikecheck", _pk("alpha_spike")),
    Case(_a("collection", "spikecheck", "change"), "GET", _pk("zulu_spike"), HIDDEN_IN_ADMIN),
    *_admin_model("collection", "alarmevent", _pk("alpha_event"), add=NOBODY, delete=ADMINISTRATORS_ONLY),
    Case(_a("collection", "alarmevent", "change"), "GET", _pk("zulu_event"), HIDDEN_IN_ADMIN),
    *_admin_model("collection", "alarmsubscription", _pk("alpha_subscription")),
    Case(_a("collection", "alarmsubscription", "change"), "GET", _pk("zulu_subscription"), HIDDEN_IN_ADMIN),
    *_admin_model("collection", "collectionrun", _pk("alpha_run"), add=NOBODY, delete=ADMINISTRATORS_ONLY),
    Case(_a("collection", "collectionrun", "change"), "GET", _pk("zulu_run"), HIDDEN_IN_ADMIN),
    # The notification outbox (recipients of every instrument's alarms): Administrators only.
    *_admin_model(
        "collection",
        "alarmnotification",
        _pk("zulu_notification"),
        changelist=ADMINISTRATORS_ONLY,
        add=NOBODY,
        change=ADMINISTRATORS_ONLY,
        delete=ADMINISTRATORS_ONLY,
        history=ADMINISTRATORS_ONLY,
    ),
    # --- pages (web pages issue) --------------------------------------------------------------------
    # POSTs here send JSON, which a page's form does not read: the statuses are the access decisions
    # (an invalid form answers 200 with its errors, or 302 back to its page with a message).
    Case("favicon", "GET", None, expect(200)),
    Case("login", "GET", None, expect(302, anonymous=200, **_NO_SESSION_200)),
    Case("logout", "POST", None, expect(302)),
    Case("password_change", "GET", None, PAGE_ANY_USER),
    Case("password_change_done", "GET", None, PAGE_ANY_USER),
    Case("instruments:home", "GET", None, PAGE_ANY_USER),
    Case("instruments:detail", "GET", lambda w: ALPHA, PAGE_ALPHA),
    Case("instruments:detail", "GET", lambda w: ZULU, PAGE_ZULU),
    Case("instruments:logbook-add", "POST", lambda w: ALPHA, PAGE_ALPHA_CHANGE_POST, data={"text": "new"}),
    Case("instruments:logbook-add", "POST", lambda w: ZULU, PAGE_ZULU_POST, data={"text": "new"}),
    Case("instruments:source-reread", "POST", lambda w: {**ALPHA, "pk": w.alpha_source.pk}, PAGE_ALPHA_CHANGE_POST),
    Case("instruments:source-reread", "POST", lambda w: {**ZULU, "pk": w.zulu_source.pk}, PAGE_ZULU_POST),
    Case("instruments:sharing", "GET", lambda w: ALPHA, PAGE_ALPHA_SHARE),
    Case("instruments:sharing", "GET", lambda w: ZULU, PAGE_ZULU),
    Case("instruments:sharing", "POST", lambda w: ALPHA, PAGE_ALPHA_SHARE, data=SHARE_WITH_STAN),
    Case("instruments:sharing", "POST", lambda w: ZULU, PAGE_ZULU, data=SHARE_WITH_STAN),
    Case("instruments:sharing-remove", "POST", lambda w: ALPHA, PAGE_ALPHA_SHARE_POST, data={"kind": "user"}),
    Case("instruments:sharing-remove", "POST", lambda w: ZULU, PAGE_ZULU_POST, data={"kind": "user"}),
    Case("instruments:dashboards", "GET", None, PAGE_ANY_USER),
    Case("instruments:dashboard-create", "POST", None, expect(302), data={"title": "new board"}),
    Case("instruments:dashboard", "GET", lambda w: {"pk": alpha_dashboard(w).pk}, PAGE_ALPHA),
    Case("instruments:dashboard", "GET", lambda w: {"pk": zulu_dashboard(w).pk}, PAGE_ZULU),
    Case("instruments:dashboard-edit", "GET", lambda w: {"pk": alpha_dashboard(w).pk}, PAGE_ALPHA_OWNER),
    Case("instruments:dashboard-edit", "POST", lambda w: {"pk": alpha_dashboard(w).pk}, PAGE_ALPHA_OWNER, data={}),
    Case("instruments:dashboard-delete", "POST", lambda w: {"pk": alpha_dashboard(w).pk}, PAGE_ALPHA_OWNER_POST),
    Case("instruments:dashboard-delete", "POST", lambda w: {"pk": zulu_dashboard(w).pk}, PAGE_ZULU_POST),
    Case("instruments:dashboard-panel-add", "POST", lambda w: {"pk": alpha_dashboard(w).pk}, PAGE_ALPHA_OWNER_POST),
    Case(
        "instruments:dashboard-panel",
        "POST",
        lambda w: {"pk": alpha_dashboard(w).pk, "panel": alpha_panel(w).pk},
        PAGE_ALPHA_OWNER_POST,
        data={"action": "up"},
    ),
    # A panel's options changed on the dashboard: its owner (or an administrator); the form's refusal (no fields
    # posted) is a message on the dashboard, so 302 for them too.
    Case(
        "instruments:dashboard-panel-options",
        "POST",
        lambda w: {"pk": alpha_dashboard(w).pk, "panel": alpha_panel(w).pk},
        PAGE_ALPHA_OWNER_POST,
        data={"view": "hist"},
        encoding="multipart",
    ),
    Case(
        "instruments:dashboard-panel-options",
        "POST",
        lambda w: {"pk": zulu_dashboard(w).pk, "panel": zulu_dashboard(w).panels.get().pk},
        PAGE_ZULU_POST,
        data={"view": "hist"},
        encoding="multipart",
    ),
    Case("instruments:source-new", "GET", lambda w: ALPHA, PAGE_ALPHA_CHANGE),
    Case("instruments:source-new", "GET", lambda w: ZULU, PAGE_ZULU),
    Case("instruments:source-new", "POST", lambda w: ALPHA, PAGE_ALPHA_CHANGE, data={}),  # the form, with errors
    Case("instruments:source-new", "POST", lambda w: ZULU, PAGE_ZULU, data={}),
    Case("instruments:source-edit", "GET", lambda w: {**ALPHA, "pk": w.alpha_source.pk}, PAGE_ALPHA_CHANGE),
    Case("instruments:source-edit", "GET", lambda w: {**ZULU, "pk": w.zulu_source.pk}, PAGE_ZULU),
    Case("instruments:source-edit", "GET", lambda w: {**ALPHA, "pk": w.zulu_source.pk}, PAGE_ALPHA_NOT_FOUND),
    Case("instruments:source-edit", "POST", lambda w: {**ALPHA, "pk": w.alpha_source.pk}, PAGE_ALPHA_CHANGE, data={}),
    Case("collection:plot", "GET", None, PAGE_ANY_USER),
    # "the time of run N": a redirect to the plot over the run (and back to the plot with a message if hidden)
    Case("collection:plot", "GET", None, expect(302), query={"run": "alpha-station-runs/1"}),
    Case("collection:plot", "GET", None, expect(302), query={"run": "zulu-hidden-runs/1"}),
    Case("instruments:runlists", "GET", None, PAGE_ANY_USER),
    Case("instruments:runlist", "GET", lambda w: ALPHA_RUNS, PAGE_ALPHA),
    Case("instruments:runlist", "GET", lambda w: ZULU_RUNS, PAGE_ZULU),
    Case("instruments:runlist-start", "POST", lambda w: ALPHA_RUNS, PAGE_ALPHA_CHANGE_POST),
    Case("instruments:runlist-start", "POST", lambda w: ZULU_RUNS, PAGE_ZULU_POST),
    Case("instruments:runlist-stop", "POST", lambda w: ALPHA_RUNS, PAGE_ALPHA_CHANGE_POST),
    Case("instruments:runlist-stop", "POST", lambda w: ZULU_RUNS, PAGE_ZULU_POST),
    Case("instruments:runlist-comment", "POST", lambda w: {**ALPHA_RUNS, "label": "1"}, PAGE_ALPHA_CHANGE_POST),
    Case("instruments:runlist-comment", "POST", lambda w: {**ZULU_RUNS, "label": "1"}, PAGE_ZULU_POST),
    Case("instruments:runlist-download", "GET", lambda w: ALPHA_RUNS, PAGE_ALPHA),
    Case("instruments:runlist-download", "GET", lambda w: ZULU_RUNS, PAGE_ZULU),
    Case("instruments:runlist-sharing", "GET", lambda w: ALPHA_RUNS, PAGE_ALPHA_SHARE),
    Case("instruments:runlist-sharing", "GET", lambda w: ZULU_RUNS, PAGE_ZULU),
    Case("instruments:runlist-sharing", "POST", lambda w: ALPHA_RUNS, PAGE_ALPHA_SHARE, data=SHARE_WITH_STAN),
    Case(
        "instruments:runlist-sharing-remove", "POST", lambda w: ALPHA_RUNS, PAGE_ALPHA_SHARE_POST, data={"kind": "user"}
    ),
    Case("instruments:runlist-sharing-remove", "POST", lambda w: ZULU_RUNS, PAGE_ZULU_POST, data={"kind": "user"}),
    Case("collection:plot", "GET", None, PAGE_ALPHA, query={"c": "alpha-station/alpha-station-temp"}),
    Case("collection:plot", "GET", None, PAGE_ZULU, query={"c": "zulu-hidden/zulu-hidden-temp", "range": "7d"}),
    # The plot page's channel search (JSON): anyone signed in; it names only channels they may see.
    Case("collection:plot-channels", "GET", None, PAGE_ANY_USER),
    Case("collection:plot-channels", "GET", None, PAGE_ANY_USER, query={"q": "zulu", "instrument": "zulu-hidden"}),
    Case("collection:plot-channels", "GET", None, PAGE_ANY_USER, query={"q": "temp degC"}),
    Case("collection:alarms", "GET", None, PAGE_ANY_USER),
    Case("instruments:home", "GET", None, PAGE_ANY_USER, query={"q": "zulu", "status": "alarms"}),
    Case("collection:alarm-acknowledge", "POST", lambda w: {"pk": alpha_alarm(w).pk}, PAGE_ALPHA_CHANGE_POST),
    Case("collection:alarm-acknowledge", "POST", lambda w: {"pk": zulu_alarm(w).pk}, PAGE_ZULU_POST),
    # Quarantine (issue 23): seen with the instrument, replayed with the change level.
    Case("collection:quarantine", "GET", None, PAGE_ANY_USER),
    Case("collection:quarantine", "GET", None, PAGE_ALPHA, query={"instrument": "alpha-station"}),
    Case("collection:quarantine", "GET", None, PAGE_ZULU, query={"instrument": "zulu-hidden"}),
    Case("collection:quarantine-detail", "GET", lambda w: {"pk": w.alpha_rejected.pk}, PAGE_ALPHA),
    Case("collection:quarantine-detail", "GET", lambda w: {"pk": w.zulu_rejected.pk}, PAGE_ZULU),
    Case(
        "collection:quarantine-replay",
        "POST",
        None,
        PAGE_ALPHA_CHANGE_POST,
        data=lambda w: {"id": w.alpha_rejected.pk},
        encoding="multipart",
    ),
    Case(
        "collection:quarantine-replay",
        "POST",
        None,
        PAGE_ZULU_POST,
        data=lambda w: {"id": w.zulu_rejected.pk, "dry_run": "1"},
        encoding="multipart",
    ),
    Case(
        "collection:quarantine-replay",
        "POST",
        None,
        PAGE_ZULU_POST,
        data=lambda w: {"all": "1", "kind": "other", "source": w.zulu_rejected.source_id},
        encoding="multipart",
    ),
    # Accepting a conflict's new value (corrections.accept_conflicts): the change level, like replay.
    Case(
        "collection:quarantine-accept",
        "POST",
        None,
        PAGE_ALPHA_CHANGE_POST,
        data=lambda w: {"id": w.alpha_rejected.pk},
        encoding="multipart",
    ),
    Case(
        "collection:quarantine-accept",
        "POST",
        None,
        PAGE_ZULU_POST,
        data=lambda w: {"id": w.zulu_rejected.pk},
        encoding="multipart",
    ),
    Case("collection:quarantine-export", "GET", None, PAGE_ANY_USER),
    Case("collection:quarantine-export", "GET", None, PAGE_ZULU, query={"instrument": "zulu-hidden"}),
]


@pytest.fixture(autouse=True)
def matrix_target_rules(settings):
    """The rules the source-target rows assume: server file sources under /srv, no network allowed."""
    settings.DAQBROKER_FILE_ROOTS = ["/srv"]
    settings.DAQBROKER_NETWORK_ALLOW = []
    settings.DAQBROKER_SERIAL_DEVICES = []


@pytest.fixture(scope="module")
def module_archive(tmp_path_factory):
    return tmp_path_factory.mktemp("archive")


@pytest.fixture(autouse=True)
def archive_dir(settings, module_archive):
    """Raw files' bytes (raw_file) in this module's own archive: each case writes the same few files (a
    folder per case cost a tenth of a case)."""
    settings.DAQBROKER_ARCHIVE_DIR = module_archive


# Every persona on the first engine; on PostgreSQL and MariaDB (the engine-dependent passes) the personas whose
# answers the gate reaches through a different join: a grant to the user (shared_editor), a grant to a group
# (group_member), an agent's token and scope (agent_scoped), and none at all (stranger). The other seven are
# decided by the same SQL as one of these (or by none: anonymous, the administrator), so on those engines they
# would repeat it 3,410 x 7/11 times at about 50 ms each (docs/testing.md, "Which tests run on which engine").
ENGINE_PERSONAS = frozenset({"shared_editor", "group_member", "agent_scoped", "stranger"})
REPEATS = pytest.mark.repeats


@pytest.fixture(
    params=[
        name if name in ENGINE_PERSONAS else pytest.param(name, marks=[pytest.mark.engine_independent, REPEATS])
        for name in PERSONAS
    ]
)
def persona(request):
    """The matrix's own ``persona``: every persona, the seven outside ENGINE_PERSONAS on the first engine only
    (and left out of ``scripts/test --fast``)."""
    return request.getfixturevalue(request.param)


@pytest.mark.parametrize("case", ROUTES, ids=lambda case: case.id)
def test_matrix(case: Case, persona, world):
    url = case.url(world)
    send = getattr(persona.client, case.method.lower())
    data = case.data(world) if callable(case.data) else case.data
    response = send(url, data, format=case.encoding) if data is not None else send(url)
    content = b"".join(response.streaming_content) if response.streaming else response.content  # exports stream
    body = content.decode(errors="replace")
    assert response.status_code == case.expected[persona.name], (
        f"{persona} {case.method} {url}: {response.status_code}, expected {case.expected[persona.name]}\n{body[:500]}"
    )
    assert persona.foreign_in(body) == [], f"{persona} {case.method} {url} shows foreign objects"
    if response.status_code == 401:
        assert response["WWW-Authenticate"].startswith("Bearer")
    if response.status_code == 302 and case.route.startswith(("api:", "admin:", "admin-")):
        assert "/admin/" in response["Location"]
    elif response.status_code == 302 and persona.user is None:  # a page, without a session
        assert response["Location"].startswith(reverse("login"))


# --- completeness -----------------------------------------------------------------------------------

OUR_ADMIN_PAGE = re.compile(r"^admin:(instruments|accounts|collection)_[a-z]+_")
OTHER_ADMIN_PAGES = {"admin:index", "admin:autocomplete"}


def _route_names(patterns, namespace: str = "") -> set[str]:
    names = set()
    for pattern in patterns:
        if isinstance(pattern, URLResolver):
            inner = ":".join(filter(None, [namespace, pattern.namespace]))
            names |= _route_names(pattern.url_patterns, inner)
        elif isinstance(pattern, URLPattern) and pattern.name:
            names.add(f"{namespace}:{pattern.name}" if namespace else pattern.name)
    return names


def routes_that_need_a_case() -> set[str]:
    names = _route_names(get_resolver().url_patterns)
    return {
        name
        for name in names
        if name.startswith("api:")
        or OUR_ADMIN_PAGE.match(name)
        or name in OTHER_ADMIN_PAGES
        or not name.startswith("admin:")  # every page
    }


def test_every_route_is_in_the_matrix():
    covered = {case.route for case in ROUTES}
    missing = sorted(routes_that_need_a_case() - covered)
    assert not missing, f"add a line to ROUTES in {__file__} for: {', '.join(missing)}"


def test_matrix_rows_name_real_routes():
    unknown = sorted({case.route for case in ROUTES} - _route_names(get_resolver().url_patterns))
    assert not unknown, f"ROUTES names routes that do not exist: {unknown}"
