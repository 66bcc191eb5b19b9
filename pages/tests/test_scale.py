"""Pages and lists that stay small whatever the site holds (issue 22, docs/performance.md#many-things).

Each page is fetched at two sizes of the same site (a few instruments, then ten times more): the number of
queries must not change, for an administrator and for a collaborator who sees the instruments through
direct and group grants. The channel picker's search and the home page's counts go through the one gate:
for every persona, no name of an instrument or channel it may not see ever appears in them.
"""

from __future__ import annotations

import json
import re
import time
from datetime import timedelta

import pytest
from django.contrib.auth.models import Group
from django.db import connection
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from accounts import permissions
from accounts.services import create_agent
from collection.alarms.models import AlarmEvent
from instruments.choices import ChannelKind, SourceKind
from instruments.models import Channel, DataSource, Instrument
from instruments.tests.factories import make_channel, make_instrument, make_source, make_user
from instruments.tests.many_things import build_things, grant_view
from pages import status
from pages.reading_views import SEARCH_LIMIT
from pages.views import CHANNELS_PER_PAGE, SOURCES_PER_PAGE

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]  # one world for the module's tests

SMALL, LARGE = 4, 40


def _client(user) -> Client:
    client = Client()
    client.force_login(user)
    return client


def _queries(client: Client, url: str) -> int:
    client.get(url)  # warm: the session, the content types, the Administrators check
    with CaptureQueriesContext(connection) as queries:
        response = client.get(url)
    assert response.status_code == 200, f"{url}: {response.status_code}"
    return len(queries)


def _urls(slug: str, channel_id: int) -> dict[str, str]:
    plot, home = reverse("collection:plot"), reverse("instruments:home")
    return {
        "home": home,
        "home search": f"{home}?q=site",
        "home silent": f"{home}?status=silent",
        "home collecting": f"{home}?status=collecting&q=site",
        "home failing": f"{home}?status=failing",
        "home alarms": f"{home}?status=alarms",
        "plot": plot,
        "plot with a channel": f"{plot}?c={channel_id}&range=1d",
        "plot of an instrument": f"{plot}?instrument={slug}",
        "channel search": reverse("collection:plot-channels") + "?q=channel+degC",
        "channel search, recent": reverse("collection:plot-channels") + f"?q=&recent={channel_id}&instrument={slug}",
        "alarms": reverse("collection:alarms"),
        "alarms of an instrument": reverse("collection:alarms") + f"?instrument={slug}",
        "dashboards": reverse("instruments:dashboards"),
        "instrument": reverse("instruments:detail", args=[slug]),
        "API instruments": "/api/v1/instruments/",
        "API channels": "/api/v1/channels/",
        "API sources": "/api/v1/sources/",
        "API channels search": "/api/v1/channels/?search=channel",
    }


def _site_queries(user, prefix: str, n: int, owner) -> dict[str, int]:
    ids = build_things(n, owner, prefix=prefix)
    if not user.is_superuser:
        half = len(ids) // 2
        grant_view(ids[:half], user=user)
        grant_view(ids[half:], group=user.groups.get())
    channel = Channel.objects.filter(instrument_id=ids[1]).order_by("pk").first()
    slug = Instrument.objects.get(pk=ids[1]).slug
    client = _client(user)
    return {name: _queries(client, url) for name, url in _urls(slug, channel.pk).items()}


@pytest.mark.parametrize("who", ["administrator", "collaborator"])
def test_every_page_and_list_costs_the_same_queries_at_4_and_40_instruments(who):
    if who == "administrator":
        user = make_user(is_superuser=True, is_staff=True)
    else:
        user = make_user()
        user.groups.add(Group.objects.create(name="the lab"))
    owner = make_user()
    small = _site_queries(user, "small", SMALL, owner)
    # Ten times more, beside the first: the same pages must cost the same number of queries.
    large = _site_queries(user, "large", LARGE, owner)
    grown = {name: (small[name], large[name]) for name in small if large[name] != small[name]}
    assert not grown, f"queries grew with the number of instruments (at {SMALL}, at {SMALL + LARGE}): {grown}"


# --- instruments with many channels ----------------------------------------------------------------------


def _add_channels(instrument, n: int, *, start: int = 0) -> None:
    now = time.time_ns() // 1000
    Channel.objects.bulk_create(
        Channel(
            instrument=instrument,
            source=instrument.sources.first(),
            name=f"wide {i:04d}",
            slug=f"wide-{i:04d}",
            units="degC" if i % 2 else "hPa",
            kind=ChannelKind.TEXT if i % 5 == 0 else ChannelKind.NUMERIC,
            last_ts=now - i * 1_000_000,
            last_value=float(i),
        )
        for i in range(start, start + n)
    )


def test_the_home_and_instrument_pages_cost_the_same_whatever_an_instruments_channels():
    """An instrument of thousands of channels (a detector, a lab's rig) costs its pages what one of a page of
    channels does: the home page counts them in the database, the instrument page lists a page of them."""
    admin = make_user(is_superuser=True, is_staff=True)
    [pk] = build_things(1, make_user(), prefix="wide", channels=3)
    instrument = Instrument.objects.get(pk=pk)
    client = _client(admin)
    page_url = reverse("instruments:detail", args=[instrument.slug])
    urls = {"home": reverse("instruments:home"), "instrument": page_url, "page 2": f"{page_url}?channel_page=2"}
    _add_channels(instrument, CHANNELS_PER_PAGE * 2)
    before = {name: _queries(client, url) for name, url in urls.items()}
    _add_channels(instrument, 400, start=CHANNELS_PER_PAGE * 2)
    after = {name: _queries(client, url) for name, url in urls.items()}
    assert after == before, "queries grew with the instrument's channels"

    body = client.get(page_url).content.decode()
    shown = re.findall(r'data-channel="([^"]+)"', body)
    assert len(shown) == CHANNELS_PER_PAGE
    names = list(instrument.channels.order_by("name").values_list("slug", flat=True))
    assert shown == names[:CHANNELS_PER_PAGE]
    assert f"Channels 1\N{EN DASH}{CHANNELS_PER_PAGE} of {len(names)}" in body
    assert "channel_page=2" in body
    last = client.get(page_url, {"channel_page": 99}).content.decode()  # past the end: the last page
    assert (
        re.findall(r'data-channel="([^"]+)"', last)
        == names[(len(names) - 1) // CHANNELS_PER_PAGE * CHANNELS_PER_PAGE :]
    )
    home = client.get(reverse("instruments:home"), {"q": "wide"}).content.decode()
    assert f"{len(names)} channels" in home


def test_the_instrument_page_finds_a_channel_by_name_units_or_description():
    owner = make_user()
    [pk] = build_things(1, owner, prefix="finder", channels=0)
    instrument = Instrument.objects.get(pk=pk)
    _add_channels(instrument, 120)
    Channel.objects.filter(instrument=instrument, slug="wide-0077").update(description="the dew point sensor")
    client = _client(owner)
    url = reverse("instruments:detail", args=[instrument.slug])
    found = lambda query: re.findall(r'data-channel="([^"]+)"', client.get(url, {"channels": query}).content.decode())  # noqa: E731
    assert found("dew point") == ["wide-0077"]
    assert found("011") == ["wide-0011", *[f"wide-011{i}" for i in range(10)]]
    assert found("0003 degC") == ["wide-0003"]  # every word, each in the name, the units or the description
    assert found("hPa 0003") == []
    body = client.get(url, {"channels": "no such thing"}).content.decode()
    assert "No channel of this instrument matches" in body


def _add_sources(instrument, n: int, *, start: int = 0) -> None:
    """``n`` file sources that started reading an hour ago, each with a channel added since (a re-read offer)."""
    started = timezone.now() - timedelta(hours=1)
    sources = DataSource.objects.bulk_create(
        DataSource(
            instrument=instrument,
            name=f"node {i:04d}",
            kind=SourceKind.FILE,
            config={"path": "/tmp", "pattern": "*.csv", "columns": ["time", "v"]},
            interval_seconds=60,
            cursor_started_at=started,
            consecutive_failures=3 if i % 4 == 0 else 0,
        )
        for i in range(start, start + n)
    )
    Channel.objects.bulk_create(
        Channel(instrument=instrument, source=source, name=f"{source.name} v", slug=f"node-{i}-v", source_field="v")
        for i, source in enumerate(sources, start)
    )


def test_an_instruments_page_lists_its_data_sources_a_page_at_a_time():
    """An instrument of hundreds of data sources (a node per sensor): its page holds 50 of them, their re-read
    offers found in one query, and costs the same at 60 and 600 sources."""
    owner = make_user()
    [pk] = build_things(1, owner, prefix="nodes", channels=0)
    instrument = Instrument.objects.get(pk=pk)
    create_agent(owner=owner, name="pusher", instruments=[instrument])  # pushes without a source
    client = _client(owner)
    url = reverse("instruments:detail", args=[instrument.slug])
    _add_sources(instrument, 60)
    before = {page: _queries(client, f"{url}?source_page={page}") for page in (1, 2)}
    _add_sources(instrument, 540, start=60)
    after = {page: _queries(client, f"{url}?source_page={page}") for page in (1, 2)}
    assert after == before, "the page's queries grew with the instrument's data sources"

    names = list(instrument.sources.order_by("name").values_list("name", flat=True))
    first = client.get(url).content.decode()
    assert re.findall(r'data-source="([^"]+)"', first) == names[:SOURCES_PER_PAGE]
    assert first.count('class="reread-offer"') == SOURCES_PER_PAGE - 1  # the build's own source never read
    assert "node 0000 v" in first and "pusher" in first  # an offer names its channel; agents on the first page
    # Unhealthy: the 150 failing nodes, and the build's own source, waiting for a channel.
    assert f"Sources 1\N{EN DASH}{SOURCES_PER_PAGE} of {len(names)} \N{MIDDLE DOT} 151 unhealthy" in first
    last = client.get(url, {"source_page": 13}).content.decode()
    assert re.findall(r'data-source="([^"]+)"', last) == names[12 * SOURCES_PER_PAGE :]
    assert "node 0599 v" in last and "pusher" not in last
    # Each pager keeps the other's page and the channel search in its links.
    both = client.get(url, {"source_page": 2, "channels": "node"}).content.decode()
    assert "?source_page=2&amp;channels=node&amp;channel_page=2#channels-title" in both
    assert "?channels=node&amp;source_page=3#sources-title" in both
    assert '<input type="hidden" name="source_page" value="2">' in both


def test_statuses_summed_by_the_database_are_those_of_the_channels_themselves(monkeypatch):
    """``instrument_statuses`` groups the channels in SQL (counts, latest reading, shortest interval, per
    instrument and per source): the same as ``ChannelsSummary.of`` over the channels, and the same states."""
    owner = make_user()
    now = time.time_ns() // 1000
    instruments = [make_instrument(owner) for _ in range(4)]
    agent, _ = create_agent(owner=owner, name="roof pc", instruments=[instruments[0]])
    collect = {"collect": {"kind": "serial", "url": "loop://", "columns": ["time", "v"]}}
    agent_source = make_source(instruments[0], kind=SourceKind.AGENT, agent=agent, config=collect, interval_seconds=30)
    file_source = make_source(instruments[0], interval_seconds=120)
    idle_source = make_source(instruments[1], interval_seconds=60)
    make_source(instruments[2], interval_seconds=60)  # no channels: waiting for them
    shapes = [
        (instruments[0], agent_source, ChannelKind.NUMERIC, 20, now - 5_000_000),
        (instruments[0], agent_source, ChannelKind.DERIVED, None, now - 1_000_000),
        (instruments[0], file_source, ChannelKind.NUMERIC, 0, now - 400_000_000),
        (instruments[0], file_source, ChannelKind.TEXT, None, None),
        (instruments[0], None, ChannelKind.NUMERIC, 600, -86_400_000_000),  # before 1970
        (instruments[1], idle_source, ChannelKind.DERIVED, None, now),
        (instruments[1], None, ChannelKind.NUMERIC, None, None),
        (instruments[3], None, ChannelKind.TEXT, 5, now - 60_000_000),
    ]
    for instrument, source, kind, interval, last in shapes:
        make_channel(instrument, kind=kind, source=source, expected_interval_seconds=interval, last_ts=last)
    ids = [i.pk for i in instruments]
    summed = status.channel_summaries(ids)
    for instrument in instruments:
        channels = list(Channel.objects.filter(instrument=instrument).select_related("source"))
        for source_id in {c.source_id for c in channels}:
            of_source = [c for c in channels if c.source_id == source_id]
            assert summed[(instrument.pk, source_id)] == status.ChannelsSummary.of(of_source)
    monkeypatch.setattr(status, "PARTS_PER_STATEMENT", 1)  # the first channels found a statement each
    statuses = {s.instrument.pk: s for s in status.instrument_statuses(instruments, now, plottable=2)}
    for instrument in instruments:
        channels = list(Channel.objects.filter(instrument=instrument).select_related("source").order_by("name"))
        whole = status.ChannelsSummary.of(channels)
        got = statuses[instrument.pk]
        assert (got.channel_count, got.last_reading, got.interval) == (whole.count, whole.latest, whole.interval)
        assert got.state == status.freshness(whole.latest, whole.interval, now)
        assert got.plottable == [c.pk for c in channels if c.kind != ChannelKind.TEXT][:2]
        for health in got.sources:
            of_source = [c for c in channels if c.source_id == health.source.pk]
            expected = status.source_health(health.source, status.ChannelsSummary.of(of_source), now)
            assert (health.state, health.words, health.last_reading) == (
                expected.state,
                expected.words,
                expected.last_reading,
            )
    assert [h.state for h in statuses[instruments[2].pk].sources] == [status.WAITING]
    assert statuses[instruments[0].pk].last_reading == now - 1_000_000


# --- the home page's filters and counts ------------------------------------------------------------------


def _home(client: Client, **params) -> str:
    response = client.get(reverse("instruments:home"), params)
    assert response.status_code == 200
    return response.content.decode()


def _count(body: str, state: str) -> int:
    return int(re.search(rf'data-count="{state}">(\d+)<', body).group(1))


def test_the_home_page_counts_and_filters_agree_with_each_instruments_status(monkeypatch):
    admin = make_user(is_superuser=True, is_staff=True)
    build_things(30, make_user(), channels=3)
    instruments = list(Instrument.objects.order_by("name"))  # the module's world's two as well
    statuses = status.instrument_statuses(instruments)
    expected = {
        status.COLLECTING: {s.instrument.slug for s in statuses if s.state in (status.OK, status.LATE)},
        status.SILENT: {s.instrument.slug for s in statuses if s.state == status.STALE},
        status.FAILING: {s.instrument.slug for s in statuses if any("failing" in h.words for h in s.sources)},
        status.ALARMS: {s.instrument.slug for s in statuses if s.active_alarms},
    }
    assert all(expected.values()), "the site should hold instruments in every state"
    client = _client(admin)
    body = _home(client)
    assert _count(body, "all") == len(instruments) == 32
    for state, slugs in expected.items():
        assert _count(body, state) == len(slugs), state
        shown = set(re.findall(r'data-instrument="([^"]+)"', _home(client, status=state)))
        assert shown == slugs, state
    # Within a search, read once as ids when it finds few (up to LISTED_UP_TO) and as a filter beyond.
    monkeypatch.setattr(permissions, "LISTED_UP_TO", 20)
    for query, found in (("site 0001", 10), ("site 0002", 10), ("site", 30)):
        matching = {i.slug for i in instruments if query in i.name}
        assert len(matching) == found
        searched = _home(client, q=query)
        assert _count(searched, "all") == found, query
        for state, slugs in expected.items():
            assert _count(searched, state) == len(slugs & matching), (query, state)
            shown = set(re.findall(r'data-instrument="([^"]+)"', _home(client, q=query, status=state)))
            assert shown == slugs & matching, (query, state)


def test_an_expected_interval_of_zero_means_none_to_the_status_and_to_the_filters_alike():
    """0 is no interval of the channel's own (the source's is used), for the status shown and for the
    instrument's freshness kept for the filters and counts: the two agree."""
    admin = make_user(is_superuser=True, is_staff=True)
    instrument = make_instrument(admin, name="zero interval", slug="zero-interval")
    source = make_source(instrument, interval_seconds=60)
    make_channel(instrument, source=source, expected_interval_seconds=0, last_ts=time.time_ns() // 1000 - 30_000_000)
    [shown] = status.instrument_statuses([instrument])
    assert (shown.interval, shown.state) == (60, status.OK)
    collecting = _home(_client(admin), q="zero interval", status=status.COLLECTING)
    assert re.findall(r'data-instrument="([^"]+)"', collecting) == ["zero-interval"]


@pytest.mark.parametrize("listed_up_to", [100, 5], ids=["gate as ids", "gate through the grant tables"])
def test_a_collaborators_counts_are_those_of_what_she_sees_with_and_without_a_search(listed_up_to, monkeypatch):
    """Her counts are those of her own instruments' statuses, in either shape of the gate, and within a search."""
    monkeypatch.setattr(permissions, "LISTED_UP_TO", listed_up_to)
    ids = build_things(40, make_user(), channels=3)
    carol, lab = make_user(), Group.objects.create(name="carol's lab")
    carol.groups.add(lab)
    grant_view(ids[0:30:2], user=carol)
    grant_view(ids[1:30:2], group=lab)  # she sees the first 30 of 40, half through her group
    client = _client(carol)
    for query in ("", "building 1"):
        seen = Instrument.objects.filter(pk__in=ids[:30]).order_by("name")
        if query:
            seen = seen.filter(location__icontains=query)
        statuses = status.instrument_statuses(seen)
        expected = {
            "all": len(statuses),
            status.COLLECTING: sum(s.state in (status.OK, status.LATE) for s in statuses),
            status.SILENT: sum(s.state == status.STALE for s in statuses),
            status.FAILING: sum(any("failing" in h.words for h in s.sources) for s in statuses),
            status.ALARMS: sum(bool(s.active_alarms) for s in statuses),
        }
        assert expected[status.FAILING] and expected[status.ALARMS], "her instruments should be in every state"
        body = _home(client, q=query) if query else _home(client)
        assert {state: _count(body, state) for state in expected} == expected, query
    # A grant made since shows on the next request.
    grant_view(ids[30:31], user=carol)
    assert _count(_home(client), "all") == 31


def test_the_home_page_shows_a_page_at_a_time_and_keeps_the_filter_in_its_links():
    admin = make_user(is_superuser=True, is_staff=True)
    build_things(60, make_user(), channels=1)
    assert Instrument.objects.count() == 62  # and the module's world's two
    client = _client(admin)
    first = _home(client)
    assert len(re.findall(r'data-instrument="', first)) == 24
    assert "Page 1 of 3" in first
    last = _home(client, page=3)
    assert len(re.findall(r'data-instrument="', last)) == 14
    filtered = _home(client, status="silent", q="site")
    assert "status=silent" in filtered and "q=site" in filtered


def test_the_home_page_counts_only_what_each_persona_may_see(persona, world):
    may_see = sum(1 for i in (world.alpha, world.zulu) if i.name in persona.sees)
    for params in ({}, {"q": "zulu"}, {"status": "alarms"}, {"status": "silent"}, {"q": "hidden"}):
        response = persona.client.get(reverse("instruments:home"), params)
        body = response.content.decode()
        assert persona.foreign_in(body) == [], params
        if response.status_code == 302:  # no session (anonymous, tokens, agents): the login page
            continue
        assert response.status_code == 200
        if not params:
            assert _count(body, "all") == may_see
        if params.get("q") == "zulu" and world.zulu.name not in persona.sees:
            assert _count(body, "all") == 0


# --- the plot page's channel search ------------------------------------------------------------------------


def _search(client, **params):
    response = client.get(reverse("collection:plot-channels"), params)
    return response.status_code, (json.loads(response.content) if response.status_code in (200, 400) else None)


@pytest.mark.parametrize(
    "params",
    [{}, {"q": "temp"}, {"q": "zulu"}, {"q": "hidden"}, {"q": "degC"}, {"instrument": "zulu-hidden"}, {"q": "z"}],
    ids=lambda p: ",".join(f"{k}={v}" for k, v in p.items()) or "empty",
)
def test_the_channel_search_never_names_what_a_persona_may_not_see(persona, world, params):
    params = {**params, "recent": f"{world.zulu_channel.pk},{world.alpha_channel.pk}"}
    response = persona.client.get(reverse("collection:plot-channels"), params)
    body = response.content.decode()
    assert persona.foreign_in(body) == []
    if response.status_code != 200:
        assert response.status_code == 302  # no session: to the login page
        return
    slugs = {c["instrumentSlug"] for c in json.loads(body)["results"]}
    assert slugs <= {i.slug for i in (world.alpha, world.zulu) if i.name in persona.sees}


def test_the_channel_search_puts_recent_then_the_current_instruments_channels_first():
    admin = make_user(is_superuser=True, is_staff=True)
    ids = build_things(30, make_user(), channels=5)
    client = _client(admin)
    recent = Channel.objects.filter(instrument_id=ids[20], slug="channel-3").get()
    current = Instrument.objects.get(pk=ids[10])
    code, body = _search(client, recent=str(recent.pk), instrument=current.slug)
    assert code == 200 and body["more"] is True and len(body["results"]) == SEARCH_LIMIT
    assert body["results"][0]["id"] == recent.pk
    assert {c["instrumentSlug"] for c in body["results"][1:6]} == {current.slug}
    # Every word must match: a channel's name, its instrument's, or its units.
    code, body = _search(client, q=f"{current.name} hPa")
    assert code == 200 and [(c["instrumentSlug"], c["units"]) for c in body["results"]] == [(current.slug, "hPa")]


def test_the_channel_search_refuses_bad_input_with_a_message():
    client = _client(make_user())
    code, body = _search(client, q="x" * 201)
    assert code == 400 and "at most 200" in body["detail"]
    code, body = _search(client, recent="1,two")
    assert code == 400 and "recent" in body["detail"]
    assert _search(client, q="nothing") == (200, {"results": [], "more": False})


# --- counts that stop at a bound (accounts.paging) --------------------------------------------------------


def _chip(body: str, state: str) -> str:
    return re.search(rf'data-count="{state}">([^<]*)<', body).group(1)


@override_settings(DAQBROKER_COUNT_LIMIT=24)
def test_the_home_page_counts_up_to_the_bound_and_says_more_beyond_it():
    admin = make_user(is_superuser=True, is_staff=True)
    build_things(30, make_user(), channels=1)  # 32 with the module's world's two
    client = _client(admin)
    with CaptureQueriesContext(connection) as queries:
        first = _home(client)
    counts = [q["sql"] for q in queries.captured_queries if "bounded_0" in q["sql"]]
    # The five counts in one statement, the pager's taken from them (a page of 24 counted to the same
    # bound), the badge's its own.
    assert len(counts) == 2, "\n".join(c[:200] for c in counts)
    assert _chip(first, "all") == "24+" and "of 24+" in first and "Page 1 ·" in first
    expected = {
        s: Instrument.objects.filter(pk__in=status.filter_by_status(Instrument.objects.all(), s)).count()
        for s, _ in status.STATUS_FILTERS
    }
    for state, n in expected.items():
        assert _chip(first, state) == (f"{n}" if n <= 24 else "24+"), state
    assert 'rel="next"' in first
    # Page 2 counts to its own end (48 rows): exact again, so the pager says how many pages there are.
    second = _home(client, page=2)
    assert "Page 2 of 2" in second and "of 32" in second and 'rel="next"' not in second
    assert client.get(reverse("instruments:home"), {"page": 10**30}).status_code == 404
    # A bound below the badge's (99) leaves the badge to count for itself.
    assert client.get(reverse("collection:alarms")).status_code == 200


def test_the_alarm_badge_stops_at_99():
    admin = make_user(is_superuser=True, is_staff=True)
    ids = build_things(1, make_user(), channels=1, prefix="loud")
    channel = Channel.objects.get(instrument_id=ids[0])
    event = AlarmEvent.objects.filter(channel__instrument_id=ids[0]).get()
    AlarmEvent.objects.bulk_create(
        [
            AlarmEvent(
                rule=event.rule,
                channel=channel,
                kind=event.kind,
                severity=event.severity,
                message=f"again {i}",
                raised_at=event.raised_at,
                raised_value=1.0,
            )
            for i in range(120)
        ]
    )
    client = _client(admin)
    active = AlarmEvent.objects.filter(cleared_at__isnull=True).count()
    assert active > 99
    body = client.get(reverse("instruments:dashboards")).content.decode()
    assert re.search(r'title="Active alarms">99\+<', body)
    alarms = client.get(reverse("collection:alarms")).content.decode()
    assert re.search(r'title="Active alarms">99\+<', alarms) and f"{active} active alarms" in alarms


@override_settings(DAQBROKER_COUNT_LIMIT=10)
def test_an_api_list_counts_up_to_the_bound_then_answers_null_and_keeps_its_next_link():
    admin = make_user(is_superuser=True, is_staff=True)
    build_things(30, make_user(), channels=1)
    client = _client(admin)
    first = client.get("/api/v1/instruments/", {"limit": 5}).json()
    assert first["count"] is None and first["next"] and len(first["results"]) == 5
    # A page reaching past the bound is counted to its own end: exact when the rows end before it.
    far = client.get("/api/v1/instruments/", {"limit": 20, "offset": 20}).json()
    assert far["count"] == Instrument.objects.count() == 32 and far["next"] is None and len(far["results"]) == 12
    walked, url = [], "/api/v1/instruments/?limit=7"
    while url:
        page = client.get(url).json()
        walked += [i["slug"] for i in page["results"]]
        url = page["next"]
    assert sorted(walked) == sorted(Instrument.objects.values_list("slug", flat=True))
    huge = client.get("/api/v1/instruments/", {"offset": 10**30})
    assert huge.status_code == 200 and huge.json()["results"] == []
