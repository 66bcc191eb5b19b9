"""``daqbroker-agent``: run (and ``run start|stop`` to mark experiment runs), status, check, flush.

Exit codes: 0 fine; 1 the command failed (server unreachable, spool not empty after ``flush``, ``run`` cannot
recover from dying threads); 2 bad settings; 3 the server refuses the token.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

from daqbroker_agent import __version__, runs
from daqbroker_agent.client import ServerUnreachable
from daqbroker_agent.parsing import us_to_datetime
from daqbroker_agent.runtime import (
    CENTRAL_CONFIG_KEY,
    CONFIG_PATH,
    WHOAMI_PATH,
    AgentRuntime,
    AlreadyRunning,
    CannotRecover,
    make_client,
    open_spool,
)
from daqbroker_agent.settings import ENV_PREFIX, Settings, SettingsError, load_settings
from daqbroker_agent.sources import spec_from_local, spec_from_server
from daqbroker_agent.spool import SPOOL_FILE
from daqbroker_agent.state import AgentState, read_state
from daqbroker_agent.uploader import Backoff, Uploader, report_unparsed

EXIT_OK, EXIT_FAILED, EXIT_SETTINGS, EXIT_AUTH = 0, 1, 2, 3
ALIVE_SECONDS = 10.0
LOW_DISK_BYTES = 64 << 20  # less free beside the spool: ``status`` says so
FULL_DISK_BYTES = 1 << 20

DESCRIPTION = """\
The DAQBroker client agent: reads instruments on this machine, keeps every reading in a local spool
until the server has it, and uploads it through the server's API.

Settings come from a TOML file (--config or DAQBROKER_AGENT_CONFIG) and DAQBROKER_AGENT_* environment
variables (URL, TOKEN, TOKEN_FILE, SPOOL, BATCH_SIZE, UPLOADERS, MAX_SPOOL_READINGS, LOG_LEVEL, ...).
"""


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "command", None):
        parser.print_help()
        return EXIT_SETTINGS
    try:
        settings = load_settings(
            args.config,
            overrides={
                "url": args.url,
                "token_file": args.token_file,
                "spool": args.spool,
                "log_level": args.log_level,
            },
        )
    except SettingsError as exc:
        print(f"daqbroker-agent: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    logging.basicConfig(
        level=settings.log_level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    try:
        return COMMANDS[args.command](settings, args)
    except SettingsError as exc:
        print(f"daqbroker-agent: {exc}", file=sys.stderr)
        return EXIT_SETTINGS


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("-c", "--config", help=f"TOML settings file (default: ${ENV_PREFIX}CONFIG)")
    common.add_argument("--url", help="the server, e.g. https://daqbroker.example.org")
    common.add_argument("--token-file", help="file holding the agent's token")
    common.add_argument("--spool", help="folder of the spool")
    common.add_argument("--log-level", type=str.upper, choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser = argparse.ArgumentParser(
        prog="daqbroker-agent", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--version", action="version", version=f"daqbroker-agent {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="command")
    run_cmd = commands.add_parser(
        "run",
        parents=[common],
        help="collect and upload until stopped (SIGTERM, Ctrl-C); 'run start|stop --list X' marks experiment runs",
    )
    run_cmd.add_argument(
        "action", nargs="?", choices=["start", "stop"], help="mark a run of a run list instead of collecting"
    )
    run_cmd.add_argument("--list", dest="run_list", help="the run list's slug (with start/stop)")
    run_cmd.add_argument(
        "--param", action="append", metavar="NAME=VALUE", help="a parameter of the new run (repeat for each)"
    )
    run_cmd.add_argument("--number", type=int, help="the run number (default: the next one)")
    run_cmd.add_argument("--stage", type=int, default=0, help="the stage, e.g. 1 for 1234.01 (default 0)")
    run_cmd.add_argument("--summary", default="", help="a summary of the new run")
    status = commands.add_parser("status", parents=[common], help="spool depth, last upload, last error")
    status.add_argument("--json", action="store_true", help="as JSON")
    commands.add_parser("check", parents=[common], help="connect, authenticate and print what the agent will collect")
    flush = commands.add_parser("flush", parents=[common], help="upload everything in the spool now, then exit")
    flush.add_argument("--timeout", type=float, default=600.0, help="give up after this many seconds (600)")
    return parser


# --- run ----------------------------------------------------------------------------------------------


def run(settings: Settings, args) -> int:
    if getattr(args, "action", None):
        return mark_run(settings, args)
    runtime = AgentRuntime(settings)
    try:
        runtime.run()
    except (AlreadyRunning, CannotRecover) as exc:
        print(f"daqbroker-agent: {exc}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def mark_run(settings: Settings, args) -> int:
    """``run start --list X --param energy=3.5`` / ``run stop --list X``: one API call, then exit."""
    if not args.run_list:
        print(f"daqbroker-agent: run {args.action} needs --list (the run list's slug)", file=sys.stderr)
        return EXIT_SETTINGS
    try:
        parameters = runs.parse_params(args.param)
    except runs.BadParameter as exc:
        print(f"daqbroker-agent: {exc}", file=sys.stderr)
        return EXIT_SETTINGS
    if args.action == "stop" and (parameters or args.number is not None or args.summary):
        print("daqbroker-agent: run stop takes only --list", file=sys.stderr)
        return EXIT_SETTINGS
    client = make_client(settings)
    try:
        if args.action == "start":
            outcome = runs.start_run(
                client, args.run_list, parameters, number=args.number, stage=args.stage, summary=args.summary
            )
        else:
            outcome = runs.stop_run(client, args.run_list)
    finally:
        client.close()
    if outcome.ok:
        print(outcome.message)
        return EXIT_OK
    print(f"daqbroker-agent: {outcome.message}", file=sys.stderr)
    return EXIT_AUTH if outcome.status in (401, 403) else EXIT_FAILED


# --- status -------------------------------------------------------------------------------------------


def _when(timestamp: float | None) -> str:
    if not timestamp:
        return "never"
    ago = time.time() - timestamp
    moment = datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    return f"{moment} ({_duration(ago)} ago)"


def _duration(seconds: float) -> str:
    seconds = max(0, int(seconds))
    if seconds < 120:
        return f"{seconds} s"
    if seconds < 7200:
        return f"{seconds // 60} min"
    if seconds < 172800:
        return f"{seconds // 3600} h"
    return f"{seconds // 86400} days"


def collect_status(settings: Settings) -> dict:
    spool = open_spool(settings)
    counters = spool.counters()
    state = read_state(spool)  # the status file when the spool's database could not be written
    central = spool.get(CENTRAL_CONFIG_KEY) or {}
    first = spool.first_waiting()
    unparsed_waiting, unparsed_refused = spool.unparsed_waiting()
    alive_at = state.get("alive_at") or 0
    running = bool(state.get("pid")) and time.time() - alive_at < ALIVE_SECONDS
    status = {
        "version": __version__,
        "spool": str(spool.path),
        "running": running,
        "pid": state.get("pid") if running else None,
        "depth": counters["depth"],
        "capacity": settings.max_spool_readings,
        "batches_claimed": spool.pending_batches(),
        "first_waiting": us_to_datetime(first).isoformat() if first is not None else None,
        "spooled_total": counters["spooled"],
        "uploaded_total": counters["uploaded"],
        "refused_by_server_total": counters["rejected"],
        "conflicts_total": counters.get("conflicts", 0),
        "dropped_spool_full_total": counters["dropped"],
        "dead_letters": counters["dead"],
        "unparsed_total": counters["unparsed"],
        "unparsed_reported_total": counters["unparsed_sent"],
        "unparsed_waiting": unparsed_waiting,
        "unparsed_refused": unparsed_refused,
        "unparsed_dropped_total": counters["unparsed_dropped"],
        "last_upload": state.get("last_upload"),
        "last_heartbeat": state.get("last_heartbeat"),
        "clock_offset": state.get("clock_offset"),
        "last_error": state.get("last_error", ""),
        "last_error_at": state.get("last_error_at"),
        "problems": state.get("problems", {}) if running else {},
        "spool_free_bytes": spool.free_bytes(),
        "server_config_version": central.get("version"),
        "sources": [spec_from_server(s).describe() for s in central.get("sources", [])]
        + [spec_from_local(s).describe() + " [local]" for s in settings.sources],
    }
    spool.close()
    return status


def status(settings: Settings, args) -> int:
    if not (Path(settings.spool) / SPOOL_FILE).exists():
        print(f"no spool at {settings.spool}: the agent has not run with this spool folder yet", file=sys.stderr)
        return EXIT_FAILED
    info = collect_status(settings)
    if args.json:
        print(json.dumps(info, indent=2))
        return EXIT_OK
    share = info["depth"] / info["capacity"] if info["capacity"] else 0
    running = f"running (pid {info['pid']})" if info["running"] else "not running"
    lines = [
        f"daqbroker-agent {info['version']}: {running}",
        f"spool:          {info['spool']}",
        f"waiting:        {info['depth']:,} readings ({share:.0%} of {info['capacity']:,})"
        + (f", the first from {info['first_waiting']}" if info["first_waiting"] else ""),
        f"uploaded:       {info['uploaded_total']:,} readings; {info['refused_by_server_total']:,} refused by the "
        f"server; {info['conflicts_total']:,} in conflict with other values stored at their times; "
        f"{info['dropped_spool_full_total']:,} lost to a full spool; {info['dead_letters']:,} dead letters",
        f"unparsed lines: {info['unparsed_total']:,}; {info['unparsed_reported_total']:,} reported to the server's "
        f"quarantine, {info['unparsed_waiting']:,} waiting, {info['unparsed_refused']:,} refused by the server "
        f"(kept here), {info['unparsed_dropped_total']:,} not kept (too many waiting)",
        f"last upload:    {_when(info['last_upload'])}",
        f"last heartbeat: {_when(info['last_heartbeat'])}"
        + (f"; clock offset {info['clock_offset']:+.3f} s" if info["clock_offset"] is not None else ""),
        f"last error:     {info['last_error'] or 'none'}"
        + (f" ({_when(info['last_error_at'])})" if info["last_error"] else ""),
    ]
    for area, message in info["problems"].items():
        lines.append(f"problem now:    {area}: {message}")
    free = info["spool_free_bytes"]
    if free is not None and free < LOW_DISK_BYTES:
        lines.append(f"spool disk:     {'full' if free < FULL_DISK_BYTES else 'nearly full'}: {free:,} bytes free on "
                     f"{Path(info['spool']).parent}")  # fmt: skip
    lines.append(f"sources:        {len(info['sources'])}")
    lines.extend(f"  {source}" for source in info["sources"])
    print("\n".join(lines))
    return EXIT_OK


# --- check --------------------------------------------------------------------------------------------


def check(settings: Settings, args) -> int:
    client = make_client(settings)
    print(f"server:  {settings.url}")
    try:
        who = client.get_json(WHOAMI_PATH)
    except ServerUnreachable as exc:
        print(f"FAILED: cannot reach the server: {exc}", file=sys.stderr)
        return EXIT_FAILED
    if who.status in (401, 403):
        print(f"FAILED: the server refuses the token ({who.status}: {who.detail()})", file=sys.stderr)
        return EXIT_AUTH
    if who.status != 200:
        print(f"FAILED: {WHOAMI_PATH} answered {who.explain()}", file=sys.stderr)
        return EXIT_FAILED
    me = who.json()
    if me.get("kind") != "agent":
        print(f"FAILED: this is {me.get('username')}'s personal token, not an agent's", file=sys.stderr)
        return EXIT_AUTH
    print(f"agent:   {me.get('agent')} (token {me.get('token_prefix')}…, expires {me.get('expires') or 'never'})")
    print(f"may push to: {', '.join(me.get('instruments') or []) or 'no instrument yet'}")
    reply = client.get_json(CONFIG_PATH)
    if reply.status != 200:
        print(f"FAILED: {CONFIG_PATH} answered {reply.explain()}", file=sys.stderr)
        return EXIT_FAILED
    config = reply.json()
    print(f"sources from the server (version {config['version']}): {len(config['sources'])}")
    for source in config["sources"]:
        print(f"  {spec_from_server(source).describe()}")
    for skipped in config.get("skipped", []):
        print(f"  NOT SENT: {skipped['name']}: {skipped['error']}")
    print(f"sources from {settings.config_file or 'the local file'}: {len(settings.sources)}")
    for source in settings.sources:
        print(f"  {spec_from_local(source).describe()}")
    spool = open_spool(settings)
    print(f"spool:   {spool.path} ({spool.depth():,} readings waiting, room for {spool.room():,})")
    spool.close()
    return EXIT_OK


# --- flush --------------------------------------------------------------------------------------------


def flush(settings: Settings, args) -> int:
    spool = open_spool(settings)
    client = make_client(settings)
    state = AgentState(spool)
    uploader = Uploader(
        spool,
        client,
        state,
        batch_size=settings.batch_size,
        backoff=lambda: Backoff(settings.retry_initial_seconds, settings.retry_max_seconds),
    )
    stop = threading.Event()
    start_depth = spool.depth()
    log = logging.getLogger("daqbroker_agent")
    log.info("flushing %s readings to %s", f"{start_depth:,}", settings.url)
    threads = uploader.start(stop, senders=settings.uploaders, idle_wait=0.05)
    deadline = time.monotonic() + args.timeout
    try:
        while time.monotonic() < deadline and (spool.depth() or spool.pending_batches()):
            time.sleep(0.1)
    except KeyboardInterrupt:
        pass
    stop.set()
    for thread in threads:
        thread.join(timeout=settings.request_timeout + 5)
    uploader.progress.report(spool, force=True)
    why_unparsed = report_unparsed(spool, client, uploader.auth) if not spool.depth() else ""
    state.flush()
    left = spool.depth()
    lines_left, _ = spool.unparsed_waiting()
    spool.close()
    if lines_left and not left:
        print(
            f"daqbroker-agent: {lines_left:,} unparsed lines still wait to be reported: {why_unparsed}", file=sys.stderr
        )
        return EXIT_FAILED
    if left:
        problems = state.current_problems()
        print(
            f"daqbroker-agent: {left:,} readings still wait in the spool"
            + (f": {'; '.join(problems.values())}" if problems else ""),
            file=sys.stderr,
        )
        return EXIT_AUTH if "auth" in problems else EXIT_FAILED
    print(f"flushed: {start_depth:,} readings uploaded, the spool is empty")
    return EXIT_OK


COMMANDS = {"run": run, "status": status, "check": check, "flush": flush}


if __name__ == "__main__":
    sys.exit(main())
