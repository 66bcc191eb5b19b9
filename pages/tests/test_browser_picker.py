"""The plot page's channel picker in a real headless Chromium: it searches on the server as one types
(never a list of every channel in the page), puts the channels used lately first, and never offers a
channel the user may not see (docs/pages.md#plot)."""

from __future__ import annotations

import json

import pytest

from instruments.models import Channel
from instruments.tests.many_things import build_things, grant_view
from pages.tests.browser import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)


def result_names(page) -> list[str]:
    return page.eval_on_selector_all(
        "#channel-results label input", "boxes => boxes.map(b => b.dataset.instrument + ' / ' + b.dataset.name)"
    )


def test_the_channel_picker_finds_channels_as_one_types_among_thousands(site, visitors):
    world = site
    vera = world.users["vera"]
    # 300 instruments (3,000 channels) vera may see, beside alpha; zulu stays hidden from her.
    ids = build_things(300, world.users["olivia"], prefix="lab")
    grant_view(ids, user=vera)
    visitor = visitors("vera")
    visitor.log_in(PASSWORD)
    response = visitor.open("/plot/")
    page = visitor.desktop
    assert len(response.body()) < 60_000  # the page holds no list of channels
    assert page.locator("#channel-results label").count() == 0

    # Type-ahead: each keystroke asks the server; the last answer is what shows.
    with page.expect_response(lambda r: "/plot/channels/" in r.url and "q=lab+00042+hPa" in r.url) as answer:
        page.locator("#channel-filter").press_sequentially("lab 00042 hPa", delay=20)
    assert answer.value.ok
    page.wait_for_function("() => Array.from(document.querySelectorAll('#channel-results label input')).length === 1")
    assert result_names(page) == ["lab 00042 / channel 1"]

    # Ticking it plots it, and remembers it as recently used.
    page.locator("#channel-results label").first.click()
    page.wait_for_function("() => DAQPlot.main.state.channels.length === 1")
    wanted = Channel.objects.get(instrument__slug="lab-00042", slug="channel-1")
    assert f"c={wanted.pk}" in page.url
    recent = json.loads(page.evaluate("() => localStorage.getItem('daqbroker.recentChannels')"))
    assert recent == [wanted.pk]

    # An empty search lists the recent channel first; a search for zulu finds nothing of it.
    page.locator("#channel-filter").fill("")
    page.locator("#channel-filter").press("Enter")
    page.wait_for_function(
        "() => document.querySelector('#channel-results label input') && "
        f"document.querySelector('#channel-results label input').value === '{wanted.pk}'"
    )
    page.locator("#channel-filter").fill("zulu")
    page.locator("#channel-filter").press("Enter")
    page.wait_for_function(
        "() => (document.getElementById('channel-hint') || {}).textContent === 'No channel matches.'"
    )
    assert world.zulu_channel.name not in page.content()
    visitor.shoot("plot-picker")
