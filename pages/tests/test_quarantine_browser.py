"""The quarantine page and the admin's quarantine in a real headless Chromium, at desktop (1280 px) and
phone (390 px) width: readable columns, no sideways scrolling of the page, the raw line shown with its
blanks and control characters, and a replay from the page. Screenshots in ``test-artifacts/screenshots/``.
"""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone

from collection.choices import Origin, RejectionKind
from collection.models import RejectedSample
from instruments.models import DataSource
from pages.tests.browser import PASSWORD

pytestmark = pytest.mark.django_db(transaction=True)


def set_aside(world) -> list[RejectedSample]:
    source = world.alpha_source
    DataSource.objects.filter(pk=source.pk).update(
        config={"path": "/srv", "pattern": "*.csv", "columns": ["time", world.alpha_channel.slug]}
    )
    records = []
    for i in range(1, 7):
        records.append(
            RejectedSample.objects.create(
                origin=Origin.FILE,
                source=source,
                kind=RejectionKind.BAD_TIME,
                reason=f"line not parsed: timestamp '0{i}/05/2024 07:00:00' is not a time in the format ISO 8601",
                raw_value=f"0{i}/05/2024 07:00:00,2{i}.5",
                context={"file": "/srv/logger/weather-station-2024-05.csv", "line": 1000 + i},
            )
        )
    records.append(
        RejectedSample.objects.create(
            origin=Origin.FILE,
            source=source,
            kind=RejectionKind.MISSING_FIELD,
            reason=f"field {world.alpha_channel.slug!r} is missing from the line",
            raw_value=" " * 1600 + "\x01\x02garbage",
            context={"file": "/srv/logger/weather-station-2024-05.csv", "line": 1007},
        )
    )
    for n, record in enumerate(records):  # spread over the last days, for the chart
        RejectedSample.objects.filter(pk=record.pk).update(received_at=timezone.now() - timedelta(days=n % 4))
    return records


def no_sideways_scroll(page) -> bool:
    return page.evaluate("() => document.documentElement.scrollWidth <= window.innerWidth + 1")


def column_width(page, selector: str) -> float:
    return page.evaluate(f"() => document.querySelector('{selector}').getBoundingClientRect().width")


def test_the_quarantine_page_reads_well_and_replays(site, visitors):
    world = site
    records = set_aside(world)
    olivia = visitors("olivia")
    olivia.log_in()
    olivia.open("/quarantine/")
    page = olivia.desktop
    assert page.locator("table.q-table tbody tr").count() >= 7
    assert no_sideways_scroll(page)
    assert column_width(page, "td.q-reason") >= 180  # the reason is readable, not squeezed
    assert page.locator("text=⟨1,600 blanks⟩␁␂garbage").count() == 1
    olivia.shoot("quarantine")
    assert no_sideways_scroll(olivia.phone)

    olivia.open(f"/quarantine/{records[-1].pk}/")
    raw = page.locator("pre.q-raw").first
    assert raw.evaluate("e => getComputedStyle(e).whiteSpace") == "pre-wrap"
    assert page.locator("pre.q-visible").inner_text().startswith("⟨1,600 blanks⟩␁␂")
    olivia.shoot("quarantine-detail")
    assert no_sideways_scroll(olivia.phone)

    # Fix the cause, then tick two lines and replay them from the page.
    source = DataSource.objects.get(pk=world.alpha_source.pk)
    source.config = {**source.config, "timestamp": {"format": "%d/%m/%Y %H:%M:%S"}}
    DataSource.objects.filter(pk=source.pk).update(config=source.config)
    olivia.open(f"/quarantine/?kind={RejectionKind.BAD_TIME}")
    page.check(f"input[name=id][value='{records[0].pk}']")
    page.check(f"input[name=id][value='{records[1].pk}']")
    page.click("button:has-text('Dry run')")
    page.wait_for_selector(".message-info")
    assert "would store 2 readings" in page.locator(".message-info").inner_text()
    page.check(f"input[name=id][value='{records[0].pk}']")
    page.check(f"input[name=id][value='{records[1].pk}']")
    page.click("button:has-text('Replay ticked')")
    page.wait_for_selector(".message-success")
    assert "stored 2 readings" in page.locator(".message-success").inner_text()
    assert not RejectedSample.objects.filter(pk__in=[records[0].pk, records[1].pk]).exists()


def test_the_admin_quarantine_list_is_readable_at_desktop_and_phone_width(site, visitors):
    world = site
    records = set_aside(world)
    ada = world.users["ada"]
    ada.set_password(PASSWORD)
    ada.save()
    admin = visitors("ada")
    admin.log_in()
    admin.open("/admin/collection/rejectedsample/")
    page = admin.desktop
    assert column_width(page, "td.field-reason_shown") >= 180
    # ... and within the list's visible box, not scrolled away to the right of it.
    assert page.evaluate(
        "() => document.querySelector('td.field-reason_shown').getBoundingClientRect().right"
        " <= document.querySelector('#changelist .results').getBoundingClientRect().right + 1"
    )
    assert page.locator("td.field-source_and_where", has_text="weather-station-2024-05.csv, line 1007").count() == 1
    assert page.locator("text=⟨1,600 blanks⟩␁␂garbage").count() == 1
    assert page.locator("#changelist-filter", has_text="Bad timestamp (6)").count() == 1
    admin.shoot("admin-quarantine")
    admin.open(f"/admin/collection/rejectedsample/{records[-1].pk}/change/")
    assert "None:" not in page.title()
    assert page.locator("pre.q-line").inner_text().startswith(" " * 100)
    admin.shoot("admin-quarantine-detail")
