"""The collaborators' pages, as the personas (``accounts.tests.personas``), with Django's test client.

The permission matrix (``accounts/tests/test_permission_matrix.py``) checks every page's status for
every persona; here: what each page shows and hides, that a viewer has no edit controls and cannot post
to them, and that each action does what it says.
"""

from __future__ import annotations

import json
import re
from datetime import timedelta

import pytest
from django.contrib.staticfiles import finders
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from accounts.models import AuditEvent
from accounts.services import level_of, share
from collection.alarms.models import AlarmEvent
from collection.services import SampleBatch, ingest_samples
from instruments.models import Dashboard, DashboardPanel, LogbookEntry
from instruments.tests.factories import make_channel, make_user
from instruments.tests.page_world import alpha_alarm, alpha_dashboard, zulu_alarm, zulu_dashboard
from pages import status

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]  # one world for the module's tests

# What an unfinished page leaks: tracebacks, Python or JSON structures, "None" where a value belongs.
DEBUG_TEXT = re.compile(r"""Traceback|\{['"]|\[\{|>\s*None\s*<|Exception|object at 0x""")
SCRIPTS = re.compile(r"<script\b.*?</script>", re.S)


def ingest(channel, stamps, values) -> None:
    ingest_samples(SampleBatch(channel=[channel.pk] * len(stamps), ts=stamps, value=values))


def page(persona, url, expected=200, **params):
    response = persona.client.get(url, params)
    assert response.status_code == expected, f"{persona} {url}: {response.status_code}"
    body = response.content.decode()
    if expected == 200:
        shown = SCRIPTS.sub("", body)
        assert not DEBUG_TEXT.search(shown), f"{url} shows debug text: {DEBUG_TEXT.search(shown).group(0)}"
        assert persona.foreign_in(body) == []
    return body


def detail(world):
    return reverse("instruments:detail", args=[world.alpha.slug])


def sharing(world):
    return reverse("instruments:sharing", args=[world.alpha.slug])


# --- strangers and viewers --------------------------------------------------------------------------


def test_a_stranger_gets_404_on_every_page_of_alpha(stranger, world):
    dashboard, event = alpha_dashboard(world), alpha_alarm(world)
    for url in (
        detail(world),
        sharing(world),
        reverse("instruments:dashboard", args=[dashboard.pk]),
        reverse("instruments:dashboard-edit", args=[dashboard.pk]),
        reverse("collection:plot") + f"?c={world.alpha_channel.pk}",
        reverse("collection:plot") + "?c=alpha-station/alpha-station-temp",
    ):
        body = page(stranger, url, 404)
        assert "alpha" not in body.lower(), url
    for url, data in (
        (reverse("instruments:logbook-add", args=[world.alpha.slug]), {"text": "hello"}),
        (sharing(world), {"kind": "user", "name": "stan", "level": "share"}),
        (reverse("instruments:sharing-remove", args=[world.alpha.slug]), {"kind": "user", "name": "vera"}),
        (reverse("collection:alarm-acknowledge", args=[event.pk]), {}),
        (reverse("instruments:dashboard-delete", args=[dashboard.pk]), {}),
    ):
        assert stranger.client.post(url, data).status_code == 404, url
    assert level_of(world.alpha, world.users["stan"]) is None
    assert LogbookEntry.objects.filter(text="hello").count() == 0
    assert Dashboard.objects.filter(pk=dashboard.pk).exists()
    assert AlarmEvent.objects.get(pk=event.pk).acknowledged_at is None


def test_a_stranger_sees_an_empty_home_and_no_foreign_alarms(stranger, world):
    alpha_alarm(world)
    zulu_alarm(world)
    body = page(stranger, reverse("instruments:home"))
    assert "No instruments have been shared with you yet" in body
    body = page(stranger, reverse("collection:alarms"), state="all")
    assert "too-hot" not in body
    assert "All quiet" not in body  # state=all: "No alarms"
    assert "No alarms" in body


def test_a_viewer_sees_the_instrument_without_edit_controls(shared_viewer, world):
    body = page(shared_viewer, detail(world))
    assert world.alpha.name in body and world.alpha_channel.name in body
    assert world.alpha_entry.text in body  # the logbook is readable
    assert reverse("instruments:logbook-add", args=[world.alpha.slug]) not in body
    assert sharing(world) not in body
    assert "Add entry" not in body
    assert 'your access: <span class="badge badge-info">view</span>' in body


def test_a_viewer_cannot_post_to_edit_controls(shared_viewer, group_member, world):
    event = alpha_alarm(world)
    for persona in (shared_viewer, group_member):
        client = persona.client
        assert (
            client.post(reverse("instruments:logbook-add", args=[world.alpha.slug]), {"text": "x"}).status_code == 403
        )
        assert client.get(sharing(world)).status_code == 403
        assert client.post(sharing(world), {"kind": "user", "name": "stan", "level": "view"}).status_code == 403
        remove = reverse("instruments:sharing-remove", args=[world.alpha.slug])
        assert client.post(remove, {"kind": "user", "name": "vera"}).status_code == 403
        assert client.post(reverse("collection:alarm-acknowledge", args=[event.pk])).status_code == 403
    assert not LogbookEntry.objects.filter(text="x").exists()
    assert level_of(world.alpha, world.users["stan"]) is None
    assert level_of(world.alpha, world.users["vera"]) == "view"
    assert AlarmEvent.objects.get(pk=event.pk).acknowledged_at is None
    body = page(shared_viewer, reverse("collection:alarms"))
    assert event.rule.name in body and "Acknowledge</button>" not in body


def test_the_403_page_says_why_without_details(shared_viewer, world):
    response = shared_viewer.client.get(sharing(world))
    body = response.content.decode()
    assert response.status_code == 403
    assert "needs a higher level of access" in body
    assert world.alpha.slug not in body


# --- instrument page and logbook --------------------------------------------------------------------


def test_the_instrument_page_shows_latest_values_sparklines_and_sources(owner, world):
    now = status.now_us()
    ingest(world.alpha_channel, [now - (30 - i) * 60_000_000 for i in range(30)], [20.0 + i * 0.1 for i in range(30)])
    body = page(owner, detail(world))
    assert '<svg class="sparkline"' in body
    assert "22.9" in body  # the latest value, six significant digits
    assert "degC" in body
    assert world.alpha_source.name in body
    assert "Add entry" in body and sharing(world) in body


def test_agents_pushing_to_an_instrument_are_listed_with_their_health(owner, shared_viewer, world):
    from accounts import services
    from accounts.models import AgentHealth

    logger = world.agents["alpha-logger"]  # scoped to alpha, with no data source of its own
    body = page(owner, detail(world))
    assert "alpha-logger" in body and "no heartbeat yet" in body
    AgentHealth.objects.create(agent=logger, last_heartbeat=timezone.now(), heartbeat_seconds=30)
    assert "alive" in page(owner, detail(world))
    AgentHealth.objects.filter(agent=logger).update(last_error="spool full")
    assert "reports an error" in page(owner, detail(world))
    services.revoke_agent(logger)
    assert "token revoked" in page(owner, detail(world))
    viewer = page(shared_viewer, detail(world))  # a viewer learns an agent exists, not its name
    assert "An agent of olivia" in viewer and "alpha-logger" not in viewer


def test_an_editor_adds_a_logbook_entry(shared_editor, world):
    url = reverse("instruments:logbook-add", args=[world.alpha.slug])
    response = shared_editor.client.post(url, {"text": "Swapped the sensor", "occurred_at": "2026-11-20T09:30"})
    assert response.status_code == 302 and response["Location"].endswith("#logbook")
    entry = LogbookEntry.objects.get(text="Swapped the sensor")
    assert entry.author == world.users["eddie"] and entry.instrument == world.alpha
    assert entry.occurred_at.year == 2026 and entry.occurred_at.hour == 9
    assert AuditEvent.objects.filter(action="config.created", object_id=str(entry.pk)).exists()
    assert "Swapped the sensor" in page(shared_editor, detail(world))


def test_an_empty_logbook_entry_is_refused_with_a_message(shared_editor, world):
    url = reverse("instruments:logbook-add", args=[world.alpha.slug])
    response = shared_editor.client.post(url, {"text": ""}, follow=True)
    assert "The entry was not added" in response.content.decode()
    assert LogbookEntry.objects.filter(instrument=world.alpha).count() == 1


# --- home -------------------------------------------------------------------------------------------


def test_home_lists_visible_instruments_with_their_status(group_member, world):
    world.alpha_channel.expected_interval_seconds = 60
    world.alpha_channel.save()
    ingest(world.alpha_channel, [status.now_us() - 10_000_000], [1.0])
    alpha_alarm(world)
    body = page(group_member, reverse("instruments:home"))
    assert world.alpha.name in body and world.zulu.name not in body
    card = body[body.index('data-instrument="alpha-station"') :]
    assert "dot-ok" in card[:2000]
    assert "1 active alarm" in card[:3000]
    assert "s ago" in card[:2000]


def test_home_search(owner, world):
    assert world.alpha.name in page(owner, reverse("instruments:home"), q="alpha")
    assert "No instrument matches" in page(owner, reverse("instruments:home"), q="nothing-like-this")


@pytest.mark.parametrize(
    ("age_s", "expected"),
    [(30, status.OK), (120, status.OK), (121, status.LATE), (300, status.LATE), (301, status.STALE)],
)
def test_freshness_against_the_expected_interval(age_s, expected):
    now = 10_000_000_000_000
    assert status.freshness(now - age_s * 1_000_000, 60, now) == expected


def test_freshness_without_readings_or_interval():
    assert status.freshness(None, 60) == status.STALE
    assert status.freshness(None, None) == status.UNKNOWN
    assert status.freshness(123, None) == status.UNKNOWN


def test_source_health_from_failures(world):
    source = world.alpha_source
    channels = status.ChannelsSummary.of(source.channels.all())
    assert channels.count
    source.consecutive_failures = 4
    assert status.source_health(source, channels).state == status.STALE
    source.consecutive_failures = 1
    assert status.source_health(source, channels).state == status.LATE
    source.consecutive_failures, source.last_success_at = 0, timezone.now()
    assert status.source_health(source, channels).state == status.OK
    source.enabled = False
    assert status.source_health(source, channels).words == "disabled"


def test_a_source_without_channels_is_waiting_for_channels(world):
    source = world.alpha_source
    health = status.source_health(source, status.ChannelsSummary())
    assert (health.state, health.words, health.css) == (status.WAITING, "waiting for channels", "warn")


# --- sharing ----------------------------------------------------------------------------------------


def test_the_owner_shares_and_unshares_through_the_page(owner, stranger, world):
    body = page(owner, sharing(world))
    assert "vera" in body and "alpha-team" in body and "eddie" in body
    response = owner.client.post(sharing(world), {"kind": "user", "name": "stan", "level": "change"})
    assert response.status_code == 302
    assert level_of(world.alpha, world.users["stan"]) == "change"
    assert AuditEvent.objects.filter(action="share.set").exists()
    assert stranger.client.get(detail(world)).status_code == 200
    remove = reverse("instruments:sharing-remove", args=[world.alpha.slug])
    assert owner.client.post(remove, {"kind": "user", "name": "stan"}).status_code == 302
    assert level_of(world.alpha, world.users["stan"]) is None
    assert stranger.client.get(detail(world)).status_code == 404


def test_sharing_with_a_group_and_form_errors(owner, world):
    owner.client.post(sharing(world), {"kind": "group", "name": "alpha-team", "level": "change"})
    assert level_of(world.alpha, world.group) == "change"
    body = owner.client.post(sharing(world), {"kind": "user", "name": "nobody-at-all", "level": "view"}).content
    assert "There is no user called" in body.decode()
    body = owner.client.post(sharing(world), {"kind": "user", "name": "olivia", "level": "view"}).content.decode()
    assert "owns alpha-station" in body


# --- alarms -----------------------------------------------------------------------------------------


def test_alarms_page_filters_and_an_editor_acknowledges(shared_editor, world):
    event = alpha_alarm(world)
    cleared = AlarmEvent.objects.create(
        rule=event.rule,
        channel=world.alpha_channel,
        kind="above",
        severity="critical",
        message="old",
        raised_at=timezone.now() - timedelta(days=2),
        cleared_at=timezone.now() - timedelta(days=1),
    )
    body = page(shared_editor, reverse("collection:alarms"))
    assert "1 active alarm" in body and "Acknowledge" in body
    assert body.count('class="dot dot-bad"') == 1
    past = page(shared_editor, reverse("collection:alarms"), state="past")
    assert "cleared" in past and reverse("collection:alarm-acknowledge", args=[event.pk]) not in past
    assert reverse("collection:alarm-acknowledge", args=[cleared.pk]) in past
    assert "All quiet" in page(shared_editor, reverse("collection:alarms"), instrument="zulu-hidden")
    back = reverse("collection:alarms") + "?state=all"
    response = shared_editor.client.post(reverse("collection:alarm-acknowledge", args=[event.pk]), {"next": back})
    assert response.status_code == 302 and response["Location"] == back
    event.refresh_from_db()
    assert event.acknowledged_by == world.users["eddie"] and event.acknowledged_at is not None
    assert "acknowledged by eddie" in page(shared_editor, back)


def test_acknowledging_never_redirects_elsewhere(owner, world):
    event = alpha_alarm(world)
    url = reverse("collection:alarm-acknowledge", args=[event.pk])
    response = owner.client.post(url, {"next": "https://evil.example/"})
    assert response["Location"] == reverse("collection:alarms")


def test_the_navigation_counts_visible_active_alarms(shared_viewer, administrator, world):
    alpha_alarm(world)
    zulu_alarm(world)
    assert 'title="Active alarms">1<' in page(shared_viewer, reverse("instruments:home"))
    assert 'title="Active alarms">2<' in page(administrator, reverse("instruments:home"))


# --- plot page --------------------------------------------------------------------------------------


def test_the_plot_page_names_channels_by_id_or_by_reference(group_member, world):
    by_ref = page(group_member, reverse("collection:plot"), c="alpha-station/alpha-station-temp", range="7d")
    by_id = page(group_member, reverse("collection:plot"), c=str(world.alpha_channel.pk))
    for body in (by_ref, by_id):
        assert f'"id": {world.alpha_channel.pk}' in body  # in the plot's configuration
        assert 'src="/static/vendor/plotly/plotly-basic.min.js"' in body  # a time series: the smaller bundle
        assert 'data-cartesian="/static/vendor/plotly/plotly-cartesian.min.js"' in body  # plot.js's, for a heatmap
        assert "/api/v1/samples/" in body
    assert page(group_member, reverse("collection:plot"), c="999999", expected=404)
    assert page(group_member, reverse("collection:plot"), c="not-a-channel", expected=404)


def test_the_plot_page_tells_its_script_the_site_time_zone(group_member, settings):
    settings.TIME_ZONE = "Europe/Lisbon"
    body = page(group_member, reverse("collection:plot"))
    assert "From (Europe/Lisbon)" in body and "To (Europe/Lisbon)" in body
    assert '"timeZone": "Europe/Lisbon"' in body  # the axis and the custom range follow it (browser test)


def test_the_plot_page_lists_only_visible_channels(shared_viewer, administrator, world):
    plot = reverse("collection:plot")
    assert world.zulu_channel.name not in page(shared_viewer, plot, instrument=world.zulu.slug)
    assert world.zulu_channel.name in page(administrator, plot, instrument=world.zulu.slug)
    assert world.alpha_channel.name in page(shared_viewer, plot, instrument=world.alpha.slug)


def test_plotly_is_served_by_the_app():
    for bundle in ("plotly-basic.min.js", "plotly-cartesian.min.js"):
        found = finders.find(f"vendor/plotly/{bundle}")
        assert found and found.endswith(f"static/vendor/plotly/{bundle}")


@pytest.mark.parametrize(
    ("view", "bundle"), [("series", "basic"), ("hist", "basic"), ("heatmap", "cartesian"), ("nonsense", "basic")]
)
def test_the_plot_page_loads_the_cartesian_plotly_only_when_it_opens_on_a_heatmap(group_member, world, view, bundle):
    body = page(group_member, reverse("collection:plot"), c=str(world.alpha_channel.pk), view=view)
    assert f'src="/static/vendor/plotly/plotly-{bundle}.min.js" id="plotly-js"' in body


def test_a_dashboard_loads_the_cartesian_plotly_only_when_a_panel_shows_a_heatmap(shared_viewer, world):
    board = alpha_dashboard(world)
    url = reverse("instruments:dashboard", args=[board.pk])
    assert 'src="/static/vendor/plotly/plotly-basic.min.js" id="plotly-js"' in page(shared_viewer, url)
    heat = DashboardPanel.objects.create(dashboard=board, title="heat", options={"view": "heatmap"})
    heat.channels.set([world.alpha_channel])
    assert 'src="/static/vendor/plotly/plotly-cartesian.min.js" id="plotly-js"' in page(shared_viewer, url)


# --- dashboards -------------------------------------------------------------------------------------


def test_dashboard_visibility_follows_the_instruments(shared_viewer, stranger, owner, world):
    board = alpha_dashboard(world)
    url = reverse("instruments:dashboard", args=[board.pk])
    body = page(shared_viewer, url)
    assert "alpha-board" in body and "Edit dashboard" not in body
    assert shared_viewer.client.get(reverse("instruments:dashboard-edit", args=[board.pk])).status_code == 403
    assert "alpha-board" in page(shared_viewer, reverse("instruments:dashboards"))
    assert stranger.client.get(url).status_code == 404
    assert "alpha-board" not in page(stranger, reverse("instruments:dashboards"))
    # Sharing the instrument shares the dashboard; a private one stays the owner's.
    share(world.alpha, world.users["stan"], "view")
    assert stranger.client.get(url).status_code == 200
    Dashboard.objects.filter(pk=board.pk).update(shared=False)
    assert shared_viewer.client.get(url).status_code == 404
    assert "Edit dashboard" in page(owner, url)


def test_a_dashboard_plotting_a_hidden_instrument_is_hidden(shared_viewer, world):
    board = alpha_dashboard(world)
    panel = DashboardPanel.objects.create(dashboard=board, title="with zulu")
    panel.channels.set([world.zulu_channel])
    assert shared_viewer.client.get(reverse("instruments:dashboard", args=[board.pk])).status_code == 404
    assert "zulu-board" not in page(shared_viewer, reverse("instruments:dashboards"))
    zulu_dashboard(world)


def test_dashboards_are_built_from_the_plot_page_and_edited(shared_viewer, world):
    channel = world.alpha_channel
    response = shared_viewer.client.post(
        reverse("instruments:dashboard-create"),
        {"title": "Vera's view", "channels": [channel.pk], "time_range": "7d", "panel_title": "Temperature"},
    )
    board = Dashboard.objects.get(title="Vera's view")
    assert response["Location"] == reverse("instruments:dashboard", args=[board.pk])
    assert board.owner == world.users["vera"] and not board.shared
    first = board.panels.get()
    assert first.title == "Temperature" and first.time_range == "7d" and list(first.channels.all()) == [channel]
    body = page(shared_viewer, reverse("instruments:dashboard", args=[board.pk]))
    assert "Temperature" in body and f"panel-state-{first.pk}" in body

    add = reverse("instruments:dashboard-panel-add", args=[board.pk])
    shared_viewer.client.post(add, {"channels": [channel.pk], "time_range": "1h", "title": "Hour", "wide": "on"})
    second = board.panels.get(title="Hour")
    assert second.position == 1 and second.wide
    # A channel the owner may not see is refused.
    shared_viewer.client.post(add, {"channels": [world.zulu_channel.pk], "time_range": "1h", "title": "Zulu"})
    assert not board.panels.filter(title="Zulu").exists()
    # A fixed range needs its two ends.
    shared_viewer.client.post(add, {"channels": [channel.pk], "time_range": "custom", "title": "Fixed"})
    assert not board.panels.filter(title="Fixed").exists()

    panel_url = reverse("instruments:dashboard-panel", args=[board.pk, second.pk])
    shared_viewer.client.post(panel_url, {"action": "up"})
    assert [p.title for p in board.panels.all()] == ["Hour", "Temperature"]
    edit = reverse("instruments:dashboard-edit", args=[board.pk])
    assert "Hour" in page(shared_viewer, edit)
    shared_viewer.client.post(edit, {"title": "Renamed", "description": "", "shared": "on"})
    board.refresh_from_db()
    assert board.title == "Renamed" and board.shared
    shared_viewer.client.post(panel_url, {"action": "remove"})
    assert [p.title for p in board.panels.all()] == ["Temperature"]
    shared_viewer.client.post(reverse("instruments:dashboard-delete", args=[board.pk]))
    assert not Dashboard.objects.filter(pk=board.pk).exists()


PLOT_OPTIONS = {
    "view": "hist",
    "axes": [{"units": "degC", "log": True, "min": 1, "max": 50, "unit": "degF"}],
    "exprs": ["alpha-station/alpha-station-temp * 2"],
}


def panel_state_of(body: str, panel) -> dict:
    found = re.search(rf'<script id="panel-state-{panel.pk}" type="application/json">(.*?)</script>', body, re.S)
    assert found, "the panel's state is in the page"
    return json.loads(found.group(1))


def test_a_panel_keeps_the_plots_view_axes_and_expressions_and_the_dashboard_draws_them(shared_viewer, world):
    board = Dashboard.objects.create(owner=world.users["vera"], title="Options")
    add = reverse("instruments:dashboard-panel-add", args=[board.pk])
    query = {"channels": [world.alpha_channel.pk], "time_range": "1d", "title": "Kept"}
    shared_viewer.client.post(add, {**query, "options": json.dumps(PLOT_OPTIONS)})
    panel = board.panels.get(title="Kept")
    assert panel.options == {**PLOT_OPTIONS, "axes": [{**PLOT_OPTIONS["axes"][0], "min": 1.0, "max": 50.0}]}
    body = page(shared_viewer, reverse("instruments:dashboard", args=[board.pk]))
    state = panel_state_of(body, panel)
    assert state["kind"] == "hist" and state["exprs"] == PLOT_OPTIONS["exprs"]
    assert state["yaxes"] == {"1": {"log": True, "min": 1.0, "max": 50.0, "unit": "degF"}}
    # "open" shows it on the plot page as saved: the same link the plot page writes
    assert "view=hist" in body and "y1=log%3A1%3A50%3AdegF" in body and "e=alpha-station%2Falpha-station-temp" in body
    assert "degC axis: log, 1 to 50, in degF" in page(
        shared_viewer, reverse("instruments:dashboard-edit", args=[board.pk])
    )


@pytest.mark.parametrize(
    ("options", "says"),
    [
        ("{not json", "not JSON"),
        ("[1, 2]", "a JSON object"),
        (json.dumps({"colour": "red"}), "view, heat, axes and exprs"),
        (json.dumps({"view": "heatmap", "heat": 999_999}), "one of the plot's channels"),
        (json.dumps({"view": "heatmap", "heat": True}), "one of the plot's channels"),
        (json.dumps({"view": "pie"}), "series, hist, heatmap"),
        (json.dumps({"axes": [{"units": "hPa", "log": True}]}), "no channel of the plot"),
        (json.dumps({"axes": [{"units": "degC", "min": 5, "max": 1}]}), "top must be above"),
        (json.dumps({"axes": [{"units": "degC", "log": True, "min": -1}]}), "above 0"),
        (json.dumps({"axes": [{"units": "degC", "unit": "hPa"}]}), "measure different things"),
        (json.dumps({"axes": [{"units": "degC", "min": "1e999"}]}), "finite number"),
        (json.dumps({"exprs": ["alpha-station/alpha-station-temp +"]}), "Expression 1"),
        (json.dumps({"exprs": ["a/b"] * 7}), "at most 6"),
        ("x" * 8001, "at most 8000"),
    ],
)
def test_a_broken_plot_configuration_is_refused_when_saved_saying_why(shared_viewer, world, options, says):
    board = Dashboard.objects.create(owner=world.users["vera"], title="Refusals")
    add = reverse("instruments:dashboard-panel-add", args=[board.pk])
    response = shared_viewer.client.post(
        add, {"channels": [world.alpha_channel.pk], "time_range": "1d", "options": options}, follow=True
    )
    assert response.status_code == 200 and not board.panels.exists()
    assert says in " ".join(str(m) for m in response.context["messages"])


def test_every_dashboard_change_is_in_the_audit_trail(shared_viewer, world):
    vera, channel = world.users["vera"], world.alpha_channel
    client = shared_viewer.client
    client.post(reverse("instruments:dashboard-create"), {"title": "Audited"}, REMOTE_ADDR="192.0.2.9")
    board = Dashboard.objects.get(title="Audited")
    add = reverse("instruments:dashboard-panel-add", args=[board.pk])
    client.post(add, {"channels": [channel.pk], "time_range": "1h", "title": "One"})
    client.post(add, {"channels": [channel.pk], "time_range": "1d", "title": "Two"})
    two = board.panels.get(title="Two")
    panel_url = reverse("instruments:dashboard-panel", args=[board.pk, two.pk])
    client.post(panel_url, {"action": "up"})
    edit = reverse("instruments:dashboard-edit", args=[board.pk])
    client.post(edit, {"title": "Audited", "description": "", "shared": "on"})
    client.post(edit, {"title": "Audited", "description": "", "shared": "on"})  # no change: no event
    client.post(panel_url, {"action": "remove"})
    client.post(reverse("instruments:dashboard-delete", args=[board.pk]))

    events = list(
        AuditEvent.objects.filter(object_type="instruments.dashboard", object_id=str(board.pk)).order_by("pk")
    )
    assert all(e.actor == vera for e in events)
    assert events[0].address == "192.0.2.9"
    summary = [(e.action, sorted(e.changes)) for e in events]
    assert summary == [
        ("config.created", ["description", "shared", "title"]),
        ("config.changed", ["panel added"]),
        ("config.changed", ["panel added"]),
        ("config.changed", ["panel moved"]),
        ("config.changed", ["shared"]),
        ("config.changed", ["panel removed"]),
        ("config.deleted", ["description", "panels", "shared", "title"]),
    ]
    assert events[1].changes["panel added"]["channels"] == [f"{world.alpha.slug}/{channel.slug}"]
    assert events[3].changes["panel moved"] == {"panel": two.pk, "position": [1, 0]}
    assert events[4].changes["shared"] == [False, True]
    assert events[5].changes["panel removed"]["title"] == "Two"
    assert events[6].changes["panels"] == 1


def test_a_panel_keeps_the_histogram_over_times_channel(shared_viewer, world):
    """``heat``: kept with the heatmap view (the plot page's hc=), drawn by the dashboard, in its "open" link."""
    board = Dashboard.objects.create(owner=world.users["vera"], title="Heat")
    pressure = make_channel(world.alpha, slug="pressure", name="Pressure", units="hPa")
    add = reverse("instruments:dashboard-panel-add", args=[board.pk])
    channels = {"channels": [world.alpha_channel.pk, pressure.pk], "time_range": "1d"}
    shared_viewer.client.post(
        add, {**channels, "title": "Map", "options": json.dumps({"view": "heatmap", "heat": pressure.pk})}
    )
    shared_viewer.client.post(
        add, {**channels, "title": "Bars", "options": json.dumps({"view": "hist", "heat": pressure.pk})}
    )
    heatmap, bars = board.panels.get(title="Map"), board.panels.get(title="Bars")
    assert heatmap.options == {"view": "heatmap", "heat": pressure.pk}
    assert bars.options == {"view": "hist"}  # another view keeps no heatmap channel, as the plot page's link
    body = page(shared_viewer, reverse("instruments:dashboard", args=[board.pk]))
    assert panel_state_of(body, heatmap)["heat"] == pressure.pk and "heat" not in panel_state_of(body, bars)
    assert f"view=heatmap&amp;hc={pressure.pk}" in body
    edit = page(shared_viewer, reverse("instruments:dashboard-edit", args=[board.pk]))
    assert "histogram over time of Pressure" in edit


def options_form(world, **fields) -> dict:
    """What a panel's Options menu posts for one axis of degC: the view, the axis and the expressions."""
    posted = {
        "view": "series",
        "heat": "",
        "y1_units": "degC",
        "y1_min": "",
        "y1_max": "",
        "y1_unit": "degC",
        "exprs": "",
    }
    return {**posted, **fields}


def test_the_owner_changes_a_panels_options_on_the_dashboard(shared_viewer, world):
    board = Dashboard.objects.create(owner=world.users["vera"], title="In place")
    shared_viewer.client.post(
        reverse("instruments:dashboard-panel-add", args=[board.pk]),
        {"channels": [world.alpha_channel.pk], "time_range": "1d"},
    )
    panel = board.panels.get()
    dashboard = page(shared_viewer, reverse("instruments:dashboard", args=[board.pk]))
    url = reverse("instruments:dashboard-panel-options", args=[board.pk, panel.pk])
    assert f'action="{url}"' in dashboard and "Options" in dashboard  # the owner's menu, drawn from the saved options
    shared_viewer.client.post(
        reverse("instruments:dashboard-panel-add", args=[board.pk]),
        {"channels": [world.alpha_channel.pk], "time_range": "1h"},
    )
    ids = re.findall(r'\bid="([^"]+)"', page(shared_viewer, reverse("instruments:dashboard", args=[board.pk])))
    assert f"panel{panel.pk}_view" in ids and len(ids) == len(set(ids))  # two panels' menus: each field its own id

    exprs = "alpha-station/alpha-station-temp * 2\n\n  alpha-station/alpha-station-temp - 1 \n"
    posted = options_form(world, view="hist", y1_log="on", y1_min="1", y1_max="50", y1_unit="degF", exprs=exprs)
    response = shared_viewer.client.post(url, posted, HTTP_ACCEPT="application/json", REMOTE_ADDR="192.0.2.7")
    assert response.status_code == 200, response.content
    exprs = ["alpha-station/alpha-station-temp * 2", "alpha-station/alpha-station-temp - 1"]
    panel.refresh_from_db()
    axis = {"log": True, "min": 1.0, "max": 50.0, "unit": "degF"}
    assert panel.options == {"view": "hist", "axes": [{"units": "degC", **axis}], "exprs": exprs}
    answer = response.json()
    assert answer["options"] == {"kind": "hist", "heat": None, "yaxes": {"1": axis}, "exprs": exprs}
    assert answer["view_words"] == "histogram" and "y1=log%3A1%3A50%3AdegF" in answer["plot_url"]
    event = AuditEvent.objects.filter(object_type="instruments.dashboard", object_id=str(board.pk)).latest("pk")
    assert event.actor == world.users["vera"] and event.address == "192.0.2.7"
    assert event.changes["panel options"]["options"] == [{}, panel.options]

    # Without the script: back to the panel on the dashboard, with a message; all automatic again.
    response = shared_viewer.client.post(url, options_form(world), follow=True)
    assert response.redirect_chain[-1][0] == reverse("instruments:dashboard", args=[board.pk]) + f"#panel-{panel.pk}"
    assert "Plot options saved." in [str(m) for m in response.context["messages"]]
    panel.refresh_from_db()
    assert panel.options == {}
    events = AuditEvent.objects.filter(object_type="instruments.dashboard", object_id=str(board.pk)).count()
    shared_viewer.client.post(url, options_form(world))  # the same again: nothing changed, nothing recorded
    assert AuditEvent.objects.filter(object_type="instruments.dashboard", object_id=str(board.pk)).count() == events


@pytest.mark.parametrize(
    ("fields", "says"),
    [
        ({"view": "pie"}, "Show: Select a valid choice."),
        ({"y1_min": "low"}, "Axis 1 (degC) from: Enter a number."),
        ({"y1_max": "inf"}, "Axis 1 (degC) to: Enter a number."),
        ({"y1_min": "5", "y1_max": "1"}, "the top must be above the bottom"),
        ({"y1_log": "on", "y1_min": "0"}, "a log scale's limits are above 0"),
        ({"y1_min": "1e301"}, "too large"),
        ({"y1_unit": "hPa"}, "Axis 1 (degC) shown in: Select a valid choice."),
        ({"y1_units": "hPa"}, "The plot's channels changed since this page was opened"),
        ({"exprs": "alpha-station/alpha-station-temp +"}, "Expression 1"),
        ({"exprs": "\n".join(["a/b"] * 7)}, "at most 6"),
        ({"exprs": "x" * 501}, "Expression 1 is text of at most 500 characters"),
        ({"exprs": "x" * 4000}, "at most 3006 characters"),
        ({"view": "heatmap", "heat": "999999"}, "Histogram over time of: Select a valid choice."),
        ({"view": ""}, "Show: This field is required."),
    ],
)
def test_a_panels_options_are_refused_on_the_dashboard_saying_why(shared_viewer, world, fields, says):
    board = Dashboard.objects.create(owner=world.users["vera"], title="Refused in place")
    panel = DashboardPanel.objects.create(dashboard=board, options={"view": "hist"})
    panel.channels.set([world.alpha_channel])
    url = reverse("instruments:dashboard-panel-options", args=[board.pk, panel.pk])
    response = shared_viewer.client.post(url, options_form(world, **fields), HTTP_ACCEPT="application/json")
    assert response.status_code == 400 and says in response.json()["detail"], response.content
    response = shared_viewer.client.post(url, options_form(world, **fields), follow=True)
    assert response.status_code == 200
    assert any(says in str(m) for m in response.context["messages"]), list(response.context["messages"])
    panel.refresh_from_db()
    assert panel.options == {"view": "hist"}


def test_only_whoever_may_change_the_dashboard_sees_and_uses_the_options_menu(shared_editor, administrator, world):
    board = alpha_dashboard(world)
    panel = board.panels.get()
    url = reverse("instruments:dashboard-panel-options", args=[board.pk, panel.pk])
    assert url not in page(shared_editor, reverse("instruments:dashboard", args=[board.pk]))
    response = shared_editor.client.post(url, options_form(world, view="hist"), HTTP_ACCEPT="application/json")
    assert response.status_code == 403
    assert url in page(administrator, reverse("instruments:dashboard", args=[board.pk]))
    response = administrator.client.post(url, options_form(world, view="hist"), HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    panel.refresh_from_db()
    assert panel.options == {"view": "hist"}


def test_a_posted_next_address_never_leaves_the_site(shared_viewer, shared_editor, world):
    board = Dashboard.objects.create(owner=world.users["vera"], title="Mine")
    add = reverse("instruments:dashboard-panel-add", args=[board.pk])
    for evil in ("https://evil.example/", "//evil.example/x", "javascript:alert(1)"):
        response = shared_viewer.client.post(add, {"channels": [world.alpha_channel.pk], "next": evil})
        assert response["Location"] == reverse("instruments:dashboard", args=[board.pk]), evil
    response = shared_viewer.client.post(add, {"channels": [world.alpha_channel.pk], "next": "/plot/?range=1d"})
    assert response["Location"] == "/plot/?range=1d"
    event = alpha_alarm(world)
    ack = reverse("collection:alarm-acknowledge", args=[event.pk])
    assert shared_editor.client.post(ack, {"next": "https://evil.example/"})["Location"] == reverse("collection:alarms")


def test_only_the_owner_changes_a_shared_dashboard(shared_editor, world):
    board = alpha_dashboard(world)
    panel = board.panels.get()
    assert shared_editor.client.post(reverse("instruments:dashboard-delete", args=[board.pk])).status_code == 403
    url = reverse("instruments:dashboard-panel", args=[board.pk, panel.pk])
    assert shared_editor.client.post(url, {"action": "remove"}).status_code == 403
    add = reverse("instruments:dashboard-panel-add", args=[board.pk])
    assert shared_editor.client.post(add, {"channels": [world.alpha_channel.pk]}).status_code == 403
    assert board.panels.count() == 1


# --- login, lockout, password ------------------------------------------------------------------------


def test_login_logout_and_the_friendly_lockout(settings):
    settings.AXES_FAILURE_LIMIT = 2
    make_user("paula", password="a long enough password")
    client = Client(REMOTE_ADDR="198.51.100.7")
    assert client.get(reverse("instruments:home"))["Location"].startswith("/login/?next=/")
    response = client.post("/login/", {"username": "paula", "password": "a long enough password"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200
    assert client.post(reverse("logout")).status_code == 302
    assert client.get("/").status_code == 302
    wrong = client.post("/login/", {"username": "paula", "password": "wrong"})
    assert wrong.status_code == 200 and "Please enter a correct username and password" in wrong.content.decode()
    locked = client.post("/login/", {"username": "paula", "password": "wrong"})
    body = locked.content.decode()
    assert locked.status_code == 429
    assert "too many login attempts" in body and "paula" in body and "Back to the login page" in body
    assert "DAQBroker" in body and "Traceback" not in body
    # Even the right password is refused while locked out.
    assert client.post("/login/", {"username": "paula", "password": "a long enough password"}).status_code == 429


def test_password_change(owner, world):
    user = world.users["olivia"]
    user.set_password("old password 123")
    user.save()
    owner.client.force_login(user)
    response = owner.client.post(
        reverse("password_change"),
        {
            "old_password": "old password 123",
            "new_password1": "Brand new p4ssword!",
            "new_password2": "Brand new p4ssword!",
        },
    )
    assert response.status_code == 302 and response["Location"] == reverse("password_change_done")
    user.refresh_from_db()
    assert user.check_password("Brand new p4ssword!")
    assert "Password changed" in page(owner, reverse("password_change_done"))
