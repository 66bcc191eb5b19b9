"""``daqbroker-agent run start|stop``: mark experiment runs from an acquisition script (docs/runs.md).

Through the server's API with the agent's token: ``POST /api/v1/runlists/<list>/start/`` and ``.../stop/``.
The server checks the values against the run list's typed columns and that the agent may mark runs of
that list (it concerns an instrument the agent is scoped to); this module only carries them.
"""

from __future__ import annotations

import urllib.parse
from dataclasses import dataclass
from typing import Any

from daqbroker_agent.client import ApiClient, ServerUnreachable

RUNLISTS_PATH = "/api/v1/runlists/"


class BadParameter(ValueError):
    pass


def parse_params(items: list[str] | None) -> dict[str, str]:
    """``["energy=3.5", "target=gold"]`` -> {"energy": "3.5", "target": "gold"} (the server types them)."""
    values: dict[str, str] = {}
    for item in items or []:
        name, sep, value = item.partition("=")
        name = name.strip()
        if not sep or not name:
            raise BadParameter(f"--param {item!r}: write it as name=value")
        if name in values:
            raise BadParameter(f"--param {name} is given twice")
        values[name] = value.strip()
    return values


@dataclass(frozen=True)
class Outcome:
    ok: bool
    status: int | None  # the HTTP status, None when the server was not reached
    message: str


def _path(run_list: str, action: str) -> str:
    return f"{RUNLISTS_PATH}{urllib.parse.quote(run_list, safe='')}/{action}/"


def start_run(
    client: ApiClient,
    run_list: str,
    parameters: dict[str, str],
    *,
    number: int | None = None,
    stage: int = 0,
    summary: str = "",
) -> Outcome:
    payload: dict[str, Any] = {"parameters": parameters, "stage": stage, "summary": summary}
    if number is not None:
        payload["number"] = number
    try:
        reply = client.post_json(_path(run_list, "start"), payload)
    except ServerUnreachable as exc:
        return Outcome(False, None, f"cannot reach the server: {exc}")
    if reply.status == 201:
        body = reply.json()
        ended = body.get("ended")
        text = f"run {body['run']['label']} of {run_list} started at {body['run']['start']}"
        return Outcome(True, 201, text + (f"; run {ended['label']} ended" if ended else ""))
    return Outcome(False, reply.status, f"the run was not started: {reply.explain()}")


def stop_run(client: ApiClient, run_list: str) -> Outcome:
    try:
        reply = client.post_json(_path(run_list, "stop"), {})
    except ServerUnreachable as exc:
        return Outcome(False, None, f"cannot reach the server: {exc}")
    if reply.status == 200:
        body = reply.json()
        return Outcome(True, 200, f"run {body['label']} of {run_list} stopped at {body['end']}")
    if reply.status == 409:
        return Outcome(True, 409, f"no run of {run_list} was active")
    return Outcome(False, reply.status, f"the run was not stopped: {reply.explain()}")
