"""The quarantine page and the admin's quarantine, as the personas: what each sees, who may replay, and
that a replay from the page stores what now parses (the permission matrix checks every status)."""

from __future__ import annotations

import csv
import io
from datetime import UTC, datetime

import numpy as np
import pytest
from django.urls import reverse

from accounts.choices import AuditAction
from accounts.models import AuditEvent
from collection.choices import Origin, RejectionKind
from collection.models import RejectedSample, Sample
from collection.services.ingest import SampleBatch, ingest_samples
from daqbroker_agent.parsing import datetime_to_us
from instruments.models import DataSource
from pages.tests.test_pages import page

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("module_world")]  # one world for the module's tests

LIST = "/quarantine/"


@pytest.fixture
def bad_lines(world):
    """Three lines of alpha's file source, set aside for their day-first times; a zulu line too."""
    source = world.alpha_source
    DataSource.objects.filter(pk=source.pk).update(
        config={"path": "/srv", "pattern": "*.csv", "columns": ["time", world.alpha_channel.slug]}
    )
    records = [
        RejectedSample.objects.create(
            origin=Origin.FILE,
            source=source,
            kind=RejectionKind.BAD_TIME,
            reason=f"line not parsed: timestamp '0{i}/05/2024 07:00:00' is not ISO 8601",
            raw_value=f"0{i}/05/2024 07:00:00,2{i}.5",
            context={"file": "/srv/logger/day.csv", "line": i},
        )
        for i in (1, 2, 3)
    ]
    RejectedSample.objects.create(
        origin=Origin.FILE,
        source=world.zulu_source,
        kind=RejectionKind.BAD_TIME,
        reason="line not parsed: zulu-secret-reason",
        raw_value="zulu-secret-line",
    )
    return records


def fix(world) -> None:
    source = world.alpha_source
    config = {**DataSource.objects.get(pk=source.pk).config, "timestamp": {"format": "%d/%m/%Y %H:%M:%S"}}
    DataSource.objects.filter(pk=source.pk).update(config=config)


def test_a_viewer_sees_kinds_sources_and_lines_but_no_replay(shared_viewer, world, bad_lines):
    body = page(shared_viewer, LIST)
    assert "Bad timestamp" in body and "/srv/logger/day.csv, line 2" in body
    assert "zulu-secret" not in body
    assert 'name="id"' not in body and "Replay" not in body
    detail = page(shared_viewer, reverse("collection:quarantine-detail", args=[bad_lines[0].pk]))
    assert "01/05/2024 07:00:00,21.5" in detail and "Only those who may change" in detail
    response = shared_viewer.client.post(reverse("collection:quarantine-replay"), {"id": bad_lines[0].pk})
    assert response.status_code == 403 and RejectedSample.objects.filter(pk=bad_lines[0].pk).exists()


def test_filters_by_kind_and_source_count_what_they_show(shared_editor, world, bad_lines):
    body = page(shared_editor, LIST, kind=RejectionKind.BAD_TIME, source=world.alpha_source.pk)
    assert "3 records match the filters" in body
    assert body.count('name="id"') == 3 and "Replay all 3" in body
    none = page(shared_editor, LIST, kind=RejectionKind.CONFLICT)
    assert "Nothing set aside" in none
    assert shared_editor.client.get(LIST, {"source": world.zulu_source.pk}).status_code == 404


def test_an_editor_dry_runs_then_replays_after_fixing_the_source(shared_editor, world, bad_lines):
    url = reverse("collection:quarantine-replay")
    ids = [r.pk for r in bad_lines]
    response = shared_editor.client.post(url, {"id": ids, "dry_run": "1"}, follow=True)
    assert "3 records replayed (dry run)" in response.content.decode()
    assert "3 still rejected" in response.content.decode()
    assert RejectedSample.objects.filter(pk__in=ids).count() == 3

    fix(world)
    detail = page(shared_editor, reverse("collection:quarantine-detail", args=[ids[0]]))
    assert "2024-05-01T07:00:00+00:00" in detail  # parsed now, with the fixed configuration
    response = shared_editor.client.post(url, {"id": ids}, follow=True)
    assert "stored 3 readings" in response.content.decode()
    assert not RejectedSample.objects.filter(pk__in=ids).exists()
    values = dict(Sample.objects.filter(channel=world.alpha_channel).values_list("ts", "value"))
    for i in (1, 2, 3):
        assert values[datetime_to_us(datetime(2024, 5, i, 7, tzinfo=UTC))] == 20 + i + 0.5
    event = AuditEvent.objects.get(action=AuditAction.QUARANTINE_REPLAYED)
    assert event.actor == world.users["eddie"] and event.changes["stored"] == 3


def test_replay_all_of_a_kind_and_source(owner, world, bad_lines):
    fix(world)
    response = owner.client.post(
        reverse("collection:quarantine-replay"),
        {"all": "1", "kind": RejectionKind.BAD_TIME, "source": world.alpha_source.pk},
    )
    assert response.status_code == 302
    assert not RejectedSample.objects.filter(source=world.alpha_source, kind=RejectionKind.BAD_TIME).exists()
    assert RejectedSample.objects.filter(source=world.zulu_source).count() == 2  # zed's stay untouched


def test_the_export_is_what_the_persona_may_see(shared_viewer, world, bad_lines):
    response = shared_viewer.client.get(reverse("collection:quarantine-export"))
    text = b"".join(response.streaming_content).decode()
    rows = list(csv.DictReader(io.StringIO(text)))
    assert {r["file"] for r in rows} >= {"/srv/logger/day.csv"}
    assert "zulu" not in text


def test_the_admin_list_and_detail_are_readable(administrator, world, bad_lines):
    record = bad_lines[1]
    record.raw_value = " " * 1600 + "\x01end"
    record.save()
    changelist = administrator.client.get(reverse("admin:collection_rejectedsample_changelist"))
    body = changelist.content.decode()
    assert "Bad timestamp (4)" in body  # alpha's three and zulu's one, counted in the filter
    assert "/srv/logger/day.csv, line 2" in body and "⟨1,600 blanks⟩␁end" in body
    by_kind = administrator.client.get(
        reverse("admin:collection_rejectedsample_changelist"), {"kind": RejectionKind.BAD_TIME}
    )
    assert by_kind.status_code == 200
    detail = administrator.client.get(reverse("admin:collection_rejectedsample_change", args=[record.pk]))
    text = detail.content.decode()
    assert "None:" not in text and "Bad timestamp: /srv/logger/day.csv, line 2" in text
    assert '<pre class="q-raw q-line">' + " " * 1600 + "\x01end</pre>" in text and "Source configuration now" in text
    assert "⟨1,600 blanks⟩␁end" in text and "Shown visibly (1,604 characters)" in text


def test_the_admin_replay_action(administrator, world, bad_lines):
    fix(world)
    response = administrator.client.post(
        reverse("admin:collection_rejectedsample_changelist"),
        {"action": "replay_selected", "_selected_action": [r.pk for r in bad_lines]},
        follow=True,
    )
    assert "stored 3 readings" in response.content.decode()
    assert not RejectedSample.objects.filter(pk__in=[r.pk for r in bad_lines]).exists()


def test_the_instrument_page_links_to_its_quarantine(shared_viewer, world, bad_lines):
    body = page(shared_viewer, reverse("instruments:detail", args=[world.alpha.slug]))
    assert "4 in quarantine" in body  # the three lines and the world's own record
    assert f"/quarantine/?instrument={world.alpha.slug}" in body


# --- conflicts: "Accept the new value" (corrections.accept_conflicts) -----------------------------------

ACCEPT = "/quarantine/accept/"
WHEN = datetime(2024, 5, 6, 7, tzinfo=UTC)


@pytest.fixture
def conflict(world):
    """alpha's temperature stored 1.5 at WHEN, then 2.5 sent for the same time: quarantined as a conflict."""
    channel = world.alpha_channel
    for value in (1.5, 2.5):
        ingest_samples(SampleBatch(np.array([channel.pk]), np.array([datetime_to_us(WHEN)]), np.array([value])))
    return RejectedSample.objects.get(channel=channel, kind=RejectionKind.CONFLICT)


def stored_value(world) -> float:
    return Sample.objects.get(channel=world.alpha_channel, ts=datetime_to_us(WHEN)).value


def test_an_editor_accepts_a_conflicts_new_value_from_the_page(shared_editor, world, conflict, bad_lines):
    body = page(shared_editor, LIST, kind=RejectionKind.CONFLICT)
    assert "Accept the new value" in body and f'formaction="{ACCEPT}"' in body
    detail = page(shared_editor, reverse("collection:quarantine-detail", args=[conflict.pk]))
    assert f'action="{ACCEPT}"' in detail and "Replaces the stored 1.5 with 2.5" in detail
    assert "Accept the new value" not in page(shared_editor, LIST, kind=RejectionKind.BAD_TIME)  # no conflict shown

    # A record that is not a conflict, ticked with it, is left alone and said so.
    response = shared_editor.client.post(ACCEPT, {"id": [conflict.pk, bad_lines[0].pk]}, follow=True)
    text = response.content.decode()
    assert "1 conflict(s) accepted" in text and "1 record(s) left alone" in text
    assert stored_value(world) == 2.5
    assert not RejectedSample.objects.filter(pk=conflict.pk).exists()
    assert RejectedSample.objects.filter(pk=bad_lines[0].pk).exists()
    accepted = AuditEvent.objects.get(action=AuditAction.CONFLICT_ACCEPTED)
    assert accepted.actor == world.users["eddie"] and accepted.changes["replaced"] == 1.5
    replaced = AuditEvent.objects.get(action=AuditAction.SAMPLES_REPLACED)
    assert replaced.changes["readings"] == [[WHEN.isoformat(), 1.5, 2.5]]


def test_accepting_from_the_detail_page_goes_back_to_the_list(owner, world, conflict):
    detail = reverse("collection:quarantine-detail", args=[conflict.pk])
    response = owner.client.post(ACCEPT, {"id": conflict.pk, "next": detail})
    assert response.status_code == 302 and response["Location"] == LIST
    assert stored_value(world) == 2.5


def test_a_viewer_cannot_accept_and_a_stranger_or_anonymous_cannot_reach_it(
    shared_viewer, stranger, anonymous, world, conflict
):
    assert "Accept the new value" not in page(shared_viewer, LIST, kind=RejectionKind.CONFLICT)
    assert "Accept the new value" not in page(
        shared_viewer, reverse("collection:quarantine-detail", args=[conflict.pk])
    )
    assert shared_viewer.client.post(ACCEPT, {"id": conflict.pk}).status_code == 403
    assert stranger.client.post(ACCEPT, {"id": conflict.pk}).status_code == 404
    response = anonymous.client.post(ACCEPT, {"id": conflict.pk})
    assert response.status_code == 302 and response["Location"].startswith(reverse("login"))
    assert stored_value(world) == 1.5 and RejectedSample.objects.filter(pk=conflict.pk).exists()
    assert not AuditEvent.objects.filter(action=AuditAction.CONFLICT_ACCEPTED).exists()


def test_accept_refuses_bad_or_too_many_ids_with_a_message(shared_editor, world, conflict, settings):
    settings.DAQBROKER_QUARANTINE_REPLAY_BATCH = 2
    for ids in (["x"], [conflict.pk, 10**9, 10**9 + 1]):
        response = shared_editor.client.post(ACCEPT, {"id": ids}, follow=True)
        assert response.status_code == 200 and "Select at most 2 records" in response.content.decode()
    assert "No conflict was selected" in shared_editor.client.post(ACCEPT, {}, follow=True).content.decode()
    assert shared_editor.client.post(ACCEPT, {"id": [10**9]}).status_code == 404  # no such record
    assert stored_value(world) == 1.5
