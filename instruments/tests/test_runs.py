"""Run lists and runs: typed parameters, one active run, concurrent starts, edits and comments audited."""

from __future__ import annotations

import csv
import io
import itertools
import threading
from datetime import timedelta

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import connections
from django.utils import timezone

from accounts import services
from accounts.models import AuditEvent
from instruments import runs
from instruments.models import Run, parse_run_label
from instruments.tests.factories import make_run_list, make_user

COLUMNS = [
    {"name": "energy", "kind": "number", "units": "GeV", "required": True},
    {"name": "target", "kind": "choice", "choices": ["gold", "lead"]},
    {"name": "beam_on", "kind": "boolean"},
    {"name": "note", "kind": "text"},
]


@pytest.fixture
def run_list(db):
    return make_run_list(columns=COLUMNS)


def test_parameters_are_typed_by_their_columns(run_list):
    values = runs.parse_parameters(run_list, {"energy": "3.5", "target": "gold", "beam_on": "yes", "note": 7})
    assert values == {"energy": 3.5, "target": "gold", "beam_on": True, "note": "7"}


@pytest.mark.parametrize(
    ("values", "field", "words"),
    [
        ({}, "energy", "required"),
        ({"energy": "fast"}, "energy", "not a number"),
        ({"energy": "nan"}, "energy", "finite"),
        ({"energy": True}, "energy", "not yes/no"),
        ({"energy": 1, "target": "tin"}, "target", "not one of gold, lead"),
        ({"energy": 1, "beam_on": "maybe"}, "beam_on", "not yes or no"),
        ({"energy": 1, "enrgy": 2}, "enrgy", "Unknown parameter"),
    ],
)
def test_bad_parameters_are_refused_with_the_reason(run_list, values, field, words):
    with pytest.raises(ValidationError) as caught:
        runs.start_run(run_list, parameters=values)
    assert words in " ".join(caught.value.message_dict[field])
    assert not Run.objects.exists()


def test_starting_a_run_ends_the_active_one_at_the_same_instant(run_list):
    first, ended = runs.start_run(run_list, parameters={"energy": 1})
    assert ended is None and first.number == 1 and first.active
    second, ended = runs.start_run(run_list, parameters={"energy": 2})
    assert ended.pk == first.pk and second.number == 2
    first.refresh_from_db()
    assert first.end == second.start
    assert list(Run.objects.filter(end__isnull=True)) == [second]


def test_a_stage_continues_the_latest_number_and_labels_read_back(run_list):
    runs.start_run(run_list, number=1234, parameters={"energy": 1})
    staged, _ = runs.start_run(run_list, stage=1, parameters={"energy": 1})
    assert staged.label == "1234.01"
    assert parse_run_label("1234.01") == (1234, 1)
    assert runs.find_run(run_list, "1234.01") == staged
    with pytest.raises(ValidationError, match="already exists"):
        runs.start_run(run_list, number=1234, stage=1, parameters={"energy": 1})


def test_stop_ends_the_active_run_and_then_has_nothing_to_stop(run_list):
    run, _ = runs.start_run(run_list, parameters={"energy": 1})
    stopped = runs.stop_run(run_list)
    assert stopped.pk == run.pk and stopped.end is not None
    assert runs.stop_run(run_list) is None


def test_who_may_start_runs_follows_the_run_list_levels(run_list):
    vera, cole = make_user("vera-runs"), make_user("cole-runs")
    services.share(run_list, vera, "view")
    services.share(run_list, cole, "collect")
    with pytest.raises(PermissionDenied):
        runs.start_run(run_list, parameters={"energy": 1}, actor=vera)
    run, _ = runs.start_run(run_list, parameters={"energy": 1}, actor=cole)
    assert run.started_by == "cole-runs"
    with pytest.raises(PermissionDenied):
        runs.update_run(run, {"summary": "x"}, actor=cole)  # editing needs change


def test_editing_a_past_run_is_audited_with_old_and_new_values(run_list):
    run, _ = runs.start_run(run_list, parameters={"energy": 1})
    runs.stop_run(run_list)
    run.refresh_from_db()
    new_start = run.start - timedelta(minutes=5)
    runs.update_run(run, {"start": new_start, "parameters": {"energy": 2.5}}, actor=run_list.owner)
    event = AuditEvent.objects.filter(action="run.changed").get()
    assert event.changes["parameters"] == [{"energy": 1.0}, {"energy": 2.5}]
    assert set(event.changes) == {"start", "parameters"}
    with pytest.raises(ValidationError, match="before the start"):
        runs.update_run(run, {"end": new_start - timedelta(seconds=1)}, actor=run_list.owner)


def test_reopening_a_past_run_while_another_is_active_is_refused(run_list):
    first, _ = runs.start_run(run_list, parameters={"energy": 1})
    runs.start_run(run_list, parameters={"energy": 1})
    first.refresh_from_db()
    with pytest.raises(ValidationError, match="Another run"):
        runs.update_run(first, {"end": None})


def test_comments_are_dated_and_signed(run_list):
    run, _ = runs.start_run(run_list, parameters={"energy": 1})
    comment = runs.add_comment(run, "  beam unstable  ", actor=run_list.owner)
    assert comment.text == "beam unstable" and comment.author_name == run_list.owner.username
    assert abs(comment.at - timezone.now()) < timedelta(minutes=1)
    with pytest.raises(ValidationError):
        runs.add_comment(run, "   ", actor=run_list.owner)


def test_the_csv_has_one_typed_column_per_parameter(run_list):
    runs.start_run(run_list, number=7, parameters={"energy": 3.5, "target": "lead", "beam_on": False})
    runs.stop_run(run_list)
    text = "".join(runs.run_list_csv_rows(run_list, Run.objects.filter(run_list=run_list)))
    header, row = text.splitlines()
    assert header == "run,number,stage,start,end,duration_s,energy [GeV],target,beam_on,note,summary,started_by"
    cells = row.split(",")
    assert cells[0] == "7" and cells[6:10] == ["3.5", "lead", "no", ""]


@pytest.mark.django_db(transaction=True)
def test_concurrent_starts_never_leave_two_active_runs():
    """Threads with their own database connections start runs of one list at the same moment, many times."""
    run_list = make_run_list(columns=[])
    threads_n, rounds = 6, 4
    barrier = threading.Barrier(threads_n)
    errors: list[BaseException] = []

    def starter():
        try:
            for _ in range(rounds):
                barrier.wait(timeout=60)
                runs.start_run(run_list)
        except BaseException as exc:
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=starter) for _ in range(threads_n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    assert not errors, errors
    all_runs = list(Run.objects.filter(run_list=run_list).order_by("start", "number"))
    assert len(all_runs) == threads_n * rounds
    assert sorted(r.number for r in all_runs) == list(range(1, threads_n * rounds + 1))
    assert [r.number for r in all_runs if r.end is None] == [all_runs[-1].number]
    # Each run ended exactly when the next one started: no overlap, no gap.
    by_number = sorted(all_runs, key=lambda r: r.number)
    for earlier, later in itertools.pairwise(by_number):
        assert earlier.end == later.start


def test_the_csv_keeps_typed_text_from_becoming_a_formula_and_numbers_as_numbers(run_list):
    """Formula injection: a summary, a text or choice parameter starting with = + - @ is written as text."""
    runs.start_run(
        run_list,
        number=8,
        parameters={"energy": -7.5, "note": "-1+cmd|' /C calc'!A0"},
        summary='=HYPERLINK("http://evil.example","click")',
    )
    runs.stop_run(run_list)
    text = "".join(runs.run_list_csv_rows(run_list, Run.objects.filter(run_list=run_list)))
    row = next(csv.DictReader(io.StringIO(text)))
    assert row["energy [GeV]"] == "-7.5"  # a negative number is not mangled
    assert row["note"] == "'-1+cmd|' /C calc'!A0"
    assert row["summary"] == '\'=HYPERLINK("http://evil.example","click")'
    assert row["run"] == "8" and row["number"] == "8"


def test_the_csv_header_keeps_a_column_name_from_becoming_a_formula(db):
    # A column name is a slug: it may start with "-".
    run_list = make_run_list(columns=[{"name": "-dt", "kind": "number"}, {"name": "gap", "kind": "text"}])
    text = "".join(runs.run_list_csv_rows(run_list, Run.objects.none()))
    assert next(csv.reader(io.StringIO(text)))[6:8] == ["'-dt", "gap"]
