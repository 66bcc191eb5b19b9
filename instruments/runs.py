"""Runs of a run list: start, stop, edit, comment. The one implementation the pages, admin, API and agent call.

At most one run of a list is active (no end). Starting a run ends the active one at the same instant, in
the same transaction. Concurrent starts (two acquisition scripts, a script and a person at the page) are
serialised by a row lock on the run list (``SELECT ... FOR UPDATE`` on PostgreSQL and MariaDB; SQLite's
``IMMEDIATE`` transactions take the database's write lock first), and the active run and the next number
are read with locking reads after it, so the second start sees the first's run and ends it. No lock is
held in process memory: any number of web processes and hosts may start runs at once.

Each function checks the actor's level on the run list (``accounts.permissions``), so no surface can
forget, and records what it did with ``accounts.audit.record``.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import IntegrityError, transaction
from django.db.models import Max
from django.utils import timezone

from accounts import permissions
from accounts.audit import jsonable, record
from accounts.choices import AuditAction
from accounts.principals import AgentPrincipal
from instruments.choices import ColumnKind
from instruments.csv_cells import safe_row
from instruments.models import (
    MAX_RUN_NUMBER,
    MAX_STAGE,
    Run,
    RunColumn,
    RunComment,
    RunList,
    parse_run_label,
    run_label,
)

MAX_PARAMETERS = 100  # a start with more values than this is refused before any column is read
MAX_COMMENT_CHARS = 10_000
MAX_SUMMARY_CHARS = 10_000


def _check(actor, level: str, run_list: RunList) -> None:
    if actor is not None and not permissions.has_perm(actor, level, run_list):
        raise PermissionDenied(f"You may not {level} on the run list {run_list.slug}.")


def _who(actor) -> str:
    if actor is None:
        return "system"
    if isinstance(actor, AgentPrincipal):
        return actor.username
    return actor.get_username()


def parse_parameters(
    run_list: RunList, values: Mapping[str, Any] | None, *, columns: Iterable[RunColumn] | None = None
) -> dict[str, Any]:
    """``values`` checked against the run list's columns: {name: typed value}; ValidationError naming each problem.

    Unknown names are refused (a typo must not be stored as a new parameter); a required column must
    have a value; an empty value is no value.
    """
    values = dict(values or {})
    if len(values) > MAX_PARAMETERS:
        raise ValidationError(f"At most {MAX_PARAMETERS} parameters.")
    by_name = {column.name: column for column in (columns if columns is not None else run_list.columns.all())}
    errors: dict[str, list[str]] = {}
    for name in values:
        if name not in by_name:
            known = ", ".join(by_name) or "none"
            errors[str(name)[:64]] = [f"Unknown parameter; this run list's columns are: {known}."]
    parsed: dict[str, Any] = {}
    for name, column in by_name.items():
        try:
            value = column.parse(values.get(name))
        except ValueError as exc:
            errors[name] = [str(exc)]
            continue
        if value is None:
            if column.required:
                errors[name] = ["This parameter is required."]
        else:
            parsed[name] = value
    if errors:
        raise ValidationError(errors)
    return parsed


def active_run(run_list: RunList) -> Run | None:
    return Run.objects.filter(run_list=run_list, end__isnull=True).first()


def _locked(run_list: RunList) -> None:
    """Take the run list's row lock for the rest of the transaction (serialises starts and stops)."""
    RunList.objects.select_for_update().filter(pk=run_list.pk).values_list("pk", flat=True).first()


def start_run(
    run_list: RunList,
    *,
    number: int | None = None,
    stage: int = 0,
    parameters: Mapping[str, Any] | None = None,
    summary: str = "",
    at: datetime | None = None,
    actor=None,
    address: str | None = None,
) -> tuple[Run, Run | None]:
    """Start a run (number: the next one when not given), ending the active run at the same instant.

    Returns (the new run, the run it ended or None). Needs ``collect`` on the run list.
    """
    _check(actor, permissions.COLLECT, run_list)
    values = parse_parameters(run_list, parameters)
    if len(summary) > MAX_SUMMARY_CHARS:
        raise ValidationError({"summary": f"At most {MAX_SUMMARY_CHARS} characters."})
    if number is not None and not 1 <= number <= MAX_RUN_NUMBER:
        raise ValidationError({"number": f"A run number is from 1 to {MAX_RUN_NUMBER}."})
    if not 0 <= stage <= MAX_STAGE:
        raise ValidationError({"stage": f"A stage is from 0 to {MAX_STAGE}."})
    try:
        with transaction.atomic():
            _locked(run_list)
            now = at or timezone.now()
            runs = Run.objects.select_for_update().filter(run_list=run_list)
            active = runs.filter(end__isnull=True).first()
            if number is None:
                latest = runs.aggregate(Max("number"))["number__max"] or 0
                number = latest + 1 if not stage else latest or 1
            if runs.filter(number=number, stage=stage).exists():
                raise ValidationError({"number": f"Run {run_label(number, stage)} already exists in {run_list.slug}."})
            if active is not None:
                if now < active.start:
                    raise ValidationError(f"The active run {active.label} started after {now.isoformat()}.")
                active.end = now
                active.save(update_fields=["end", "updated"])
                record(
                    AuditAction.RUN_STOPPED,
                    actor=actor,
                    obj=active,
                    changes={"end": now, "by_start_of": run_label(number, stage)},
                    address=address,
                )
            run = Run.objects.create(
                run_list=run_list,
                number=number,
                stage=stage,
                start=now,
                parameters=values,
                summary=summary,
                started_by=_who(actor),
            )
            record(
                AuditAction.RUN_STARTED,
                actor=actor,
                obj=run,
                changes={
                    "run": run.label,
                    "start": now,
                    "parameters": values,
                    "ended": active.label if active else None,
                },
                address=address,
            )
    except IntegrityError:  # the unique (list, number, stage), should a database let a race reach it
        raise ValidationError({"number": f"Run {run_label(number or 0, stage)} already exists."}) from None
    return run, active


def stop_run(run_list: RunList, *, at: datetime | None = None, actor=None, address: str | None = None) -> Run | None:
    """End the active run (now, or at ``at``). Returns it, or None when no run was active."""
    _check(actor, permissions.COLLECT, run_list)
    with transaction.atomic():
        _locked(run_list)
        active = Run.objects.select_for_update().filter(run_list=run_list, end__isnull=True).first()
        if active is None:
            return None
        end = at or timezone.now()
        if end < active.start:
            raise ValidationError({"end": f"Run {active.label} started after {end.isoformat()}."})
        active.end = end
        active.save(update_fields=["end", "updated"])
        record(AuditAction.RUN_STOPPED, actor=actor, obj=active, changes={"end": end}, address=address)
    return active


EDITABLE = ("start", "end", "parameters", "summary")


def update_run(run: Run, changes: Mapping[str, Any], *, actor=None, address: str | None = None) -> Run:
    """Edit a run's times, parameters or summary (``change`` on its list); audited with the old and new values."""
    _check(actor, permissions.CHANGE, run.run_list)
    unknown = set(changes) - set(EDITABLE)
    if unknown:
        raise ValidationError(f"Only {', '.join(EDITABLE)} may be edited, not {', '.join(sorted(unknown))}.")
    with transaction.atomic():
        _locked(run.run_list)
        current = Run.objects.select_for_update().get(pk=run.pk)
        before = {name: getattr(current, name) for name in EDITABLE}
        if "parameters" in changes:
            merged = {**current.parameters, **dict(changes["parameters"] or {})}
            current.parameters = parse_parameters(current.run_list, {k: v for k, v in merged.items() if v is not None})
        if "summary" in changes:
            current.summary = str(changes["summary"] or "")[:MAX_SUMMARY_CHARS]
        if "start" in changes:
            if changes["start"] is None:
                raise ValidationError({"start": "A run has a start."})
            current.start = changes["start"]
        if "end" in changes:
            current.end = changes["end"]
        if current.end is not None and current.end < current.start:
            raise ValidationError({"end": "The end must not be before the start."})
        if (
            current.end is None
            and Run.objects.filter(run_list=current.run_list, end__isnull=True).exclude(pk=current.pk).exists()
        ):
            raise ValidationError({"end": "Another run of this list is active; only one may be."})
        after = {name: getattr(current, name) for name in EDITABLE}
        diff = {
            k: [jsonable(before[k]), jsonable(after[k])] for k in EDITABLE if jsonable(before[k]) != jsonable(after[k])
        }
        if diff:
            current.save()
            record(AuditAction.RUN_CHANGED, actor=actor, obj=current, changes=diff, address=address)
    return current


def add_comment(run: Run, text: str, *, actor, address: str | None = None) -> RunComment:
    """A dated comment on ``run`` by ``actor`` (``collect`` on its list; people only, not agents)."""
    if actor is None or isinstance(actor, AgentPrincipal):
        raise PermissionDenied("Comments are written by people.")
    _check(actor, permissions.COLLECT, run.run_list)
    text = (text or "").strip()
    if not text:
        raise ValidationError({"text": "A comment needs a text."})
    if len(text) > MAX_COMMENT_CHARS:
        raise ValidationError({"text": f"At most {MAX_COMMENT_CHARS} characters."})
    with transaction.atomic():
        comment = RunComment.objects.create(run=run, author=actor, author_name=actor.get_username(), text=text)
        record(AuditAction.RUN_COMMENTED, actor=actor, obj=run, changes={"comment": text[:200]}, address=address)
    return comment


def find_run(run_list: RunList, label: str) -> Run | None:
    """The run ``"1234"`` or ``"1234.01"`` of ``run_list``; ValueError for a malformed label."""
    number, stage = parse_run_label(label)
    return Run.objects.filter(run_list=run_list, number=number, stage=stage).first()


# --- download -------------------------------------------------------------------------------------


def _cell(column: RunColumn, value: Any) -> str:
    if value is None:
        return ""
    if column.kind == ColumnKind.BOOLEAN:
        return "yes" if value else "no"
    return str(value)


def run_list_csv_header(columns: list[RunColumn]) -> list[str]:
    head = ["run", "number", "stage", "start", "end", "duration_s"]
    head += [f"{c.name} [{c.units}]" if c.units else c.name for c in columns]
    return [*head, "summary", "started_by"]


def run_list_csv_rows(run_list: RunList, runs: Iterable[Run]) -> Iterable[str]:
    """The run list as CSV lines (header first), one run per line, typed columns in the list's order."""
    columns = list(run_list.columns.all())
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")

    def flush() -> str:
        text = buffer.getvalue()
        buffer.seek(0)
        buffer.truncate()
        return text

    writer.writerow(safe_row(run_list_csv_header(columns)))
    yield flush()
    for run in runs:
        duration = (run.end - run.start).total_seconds() if run.end else ""
        writer.writerow(
            safe_row(
                [
                    run.label,
                    run.number,
                    run.stage,
                    run.start.isoformat(),
                    run.end.isoformat() if run.end else "",
                    duration,
                    *(_cell(c, run.parameters.get(c.name)) for c in columns),
                    run.summary,
                    run.started_by,
                ]
            )
        )
        yield flush()


MAX_PARQUET_RUNS = 100_000  # a run list is kept in memory to write it as Parquet; beyond this, CSV


def _arrow_type(column: RunColumn) -> pa.DataType:
    if column.kind == ColumnKind.NUMBER:
        return pa.float64()
    if column.kind == ColumnKind.BOOLEAN:
        return pa.bool_()
    return pa.string()


def run_list_parquet(run_list: RunList, runs: Iterable[Run]) -> bytes:
    """The run list as Parquet: typed columns (numbers float64 with their units in the field metadata,
    yes/no boolean, text and choices string), times as UTC timestamps in µs."""
    columns = list(run_list.columns.all())
    fields: list[pa.Field] = [
        pa.field("run", pa.string()),
        pa.field("number", pa.int64()),
        pa.field("stage", pa.int64()),
        pa.field("start", pa.timestamp("us", tz="UTC")),
        pa.field("end", pa.timestamp("us", tz="UTC")),
        *(pa.field(c.name, _arrow_type(c), metadata={"units": c.units} if c.units else None) for c in columns),
        pa.field("summary", pa.string()),
        pa.field("started_by", pa.string()),
    ]
    data: dict[str, list] = {f.name: [] for f in fields}
    for count, run in enumerate(runs):
        if count >= MAX_PARQUET_RUNS:
            raise ValidationError(f"More than {MAX_PARQUET_RUNS:,} runs: download the CSV instead.")
        data["run"].append(run.label)
        data["number"].append(run.number)
        data["stage"].append(run.stage)
        data["start"].append(run.start)
        data["end"].append(run.end)
        for column in columns:
            data[column.name].append(run.parameters.get(column.name))
        data["summary"].append(run.summary)
        data["started_by"].append(run.started_by)
    sink = io.BytesIO()
    pq.write_table(pa.table(data, schema=pa.schema(fields)), sink)
    return sink.getvalue()


# --- "the time of run N" ----------------------------------------------------------------------------


def run_range(who, ref: str) -> tuple[datetime, datetime, list[Run]]:
    """``"list-slug/1234"`` or ``"list-slug/1230-1235"`` -> (start, end, the runs), for a plot's range.

    The end of an active run is now. ValueError (one message for hidden and missing) otherwise.
    """
    slug, _, labels = str(ref).strip().partition("/")
    run_list = permissions.run_lists_for(who).filter(slug=slug).first() if slug else None
    if run_list is None:
        raise ValueError(f"There is no run list {slug[:100]!r} you may see.")
    first_text, dash, last_text = labels.partition("-")
    first = parse_run_label(first_text)
    last = parse_run_label(last_text) if dash else first
    if last < first:
        first, last = last, first
    found = [
        run
        for run in Run.objects.filter(run_list=run_list, number__gte=first[0], number__lte=last[0])
        if first <= (run.number, run.stage) <= last
    ]
    if not found:
        raise ValueError(f"{run_list.slug} has no run {labels[:40]}.")
    now = timezone.now()
    return min(r.start for r in found), max(r.end or now for r in found), found
