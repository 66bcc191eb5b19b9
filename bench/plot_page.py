#!/usr/bin/env python
"""The plot page with 10 million readings of one channel on PostgreSQL, in headless Chromium.

Loads N readings (default 10,000,000, one every 10 s: ~3 years) with ``ingest_samples`` and brings the
rollup tiers up to date, unless the bench database already holds them. Then serves the app with gunicorn
(DEBUG off, static files collected and served by WhiteNoise, as in production; gunicorn's default synchronous
workers, or ``--server production`` for daqbroker_site/gunicorn_conf.py's threaded ones) and measures in
Debian's Chromium (driven by Playwright):

* **full range**: from navigation start (``performance.timeOrigin``) to the plot drawn for "All" (the
  page, plotly.js, the /api/v1/samples/ request at screen resolution, the drawing), with a cold browser
  cache (first visits: the first one, then --repeat more, each in a fresh browser context; median) and a
  warm one (repeat visits, median), with where the time went (the page, the stylesheet, plot.js and
  plotly.js received, the scripts run, each API answer, the drawing) and, as the same run's baseline,
  plotly.js alone on a first visit (a fresh context on the small login page: fetched, parsed and run);
* **zoom redraw**: from a zoom (``Plotly.relayout`` to a narrower range, as a drag does) to the redrawn
  plot with the new downsampled answer, for a month, a day and an hour (median of --repeat each).

For context it prints the query service's own time for the same requests (``query_series`` in this
process, median), the goals (full range < 1 s, zoom < 500 ms) and nothing else: no assertion here.

    DATABASE_URL=postgres://postgres@127.0.0.1:5432/daqbroker_plot_bench .venv/bin/python bench/plot_page.py
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import gunicorn

REPO = Path(__file__).resolve().parent.parent
DEFAULT_URL = "postgres://postgres@127.0.0.1:5432/daqbroker_plot_bench"
CHROMIUM = os.environ.get("DAQBROKER_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--disable-sync",
]
STEP_US = 10_000_000  # one reading every 10 s
CHUNK = 1_000_000
SECRET = "plot-bench-" + "x" * 60
HOUR_US, DAY_US = 3_600_000_000, 86_400_000_000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--readings", type=int, default=10_000_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--database-url", default=os.environ.get("DATABASE_URL", DEFAULT_URL))
    parser.add_argument("--workers", type=int, default=2, help="gunicorn workers")
    parser.add_argument(
        "--server",
        choices=["production", "sync"],
        default="sync",
        help="gunicorn's settings: its own defaults (one request at a time per worker, no keep-alive: the "
        "default, as the figures in docs/performance.md) or daqbroker_site/gunicorn_conf.py's (threaded "
        "workers, keep-alive: the warm-up's requests may then all reach one worker, and the first visit the other)",
    )
    args = parser.parse_args()

    os.environ.update(
        DATABASE_URL=args.database_url,
        DJANGO_SETTINGS_MODULE="daqbroker_site.settings",
        DAQBROKER_DEBUG="false",
        DAQBROKER_SECRET_KEY=SECRET,
    )
    data_dir = Path(tempfile.mkdtemp(prefix="plot-bench-"))
    os.environ["DAQBROKER_DATA_DIR"] = str(data_dir)
    sys.path.insert(0, str(REPO))
    ensure_database(args.database_url)
    import django

    django.setup()
    try:
        run(args, data_dir)
    finally:
        shutil.rmtree(data_dir, ignore_errors=True)


def ensure_database(url: str) -> None:
    import dj_database_url
    import psycopg

    cfg = dj_database_url.parse(url)
    if not cfg["ENGINE"].endswith("postgresql"):
        sys.exit("bench/plot_page.py measures PostgreSQL: give a postgres:// DATABASE_URL")
    with psycopg.connect(
        host=cfg["HOST"], port=cfg["PORT"] or 5432, user=cfg["USER"], dbname="postgres", autocommit=True
    ) as conn:
        if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [cfg["NAME"]]).fetchone():
            conn.execute(f'CREATE DATABASE "{cfg["NAME"]}"')


def load_readings(n: int):
    """The bench channel with exactly ``n`` readings and fresh rollup tiers; returns (channel, first, last)."""
    import numpy as np
    from django.contrib.auth.models import User
    from django.core.management import call_command
    from django.db import connection

    from collection.models import Rollup, RollupBacklog, Sample
    from collection.services import SampleBatch, ingest_samples
    from collection.services.rollups import rebuild_rollups
    from instruments.models import Channel, Instrument

    call_command("migrate", verbosity=0)
    owner, _ = User.objects.get_or_create(username="bench")
    instrument, _ = Instrument.objects.get_or_create(slug="plot-bench", defaults={"name": "Plot bench", "owner": owner})
    channel, _ = Channel.objects.get_or_create(
        instrument=instrument, slug="signal", defaults={"name": "Signal", "units": "V"}
    )
    stored = Sample.objects.filter(channel=channel).count()
    waiting = RollupBacklog.objects.filter(channel_id=channel.pk).exists() or channel.pending_from is not None
    if stored == n and not waiting:
        print(f"reusing {n:,} stored readings")
    else:
        Sample.objects.filter(channel=channel).delete()
        RollupBacklog.objects.filter(channel_id=channel.pk).delete()
        end = (time.time_ns() // 1000) // STEP_US * STEP_US
        first = end - (n - 1) * STEP_US
        rng = np.random.default_rng(7)
        started = time.perf_counter()
        for lo in range(0, n, CHUNK):
            i = np.arange(lo, min(n, lo + CHUNK), dtype=np.int64)
            ts = first + i * STEP_US
            days = (ts - first) / DAY_US
            value = (
                12 + 0.5 * np.sin(days * 2 * np.pi) + 2 * np.sin(days * 2 * np.pi / 365) + rng.normal(0, 0.05, len(i))
            )
            value[i % 250_000 == 1234] += 8  # a one-reading spike now and then: the envelope must keep it
            ingest_samples(SampleBatch(np.full(len(i), channel.pk, dtype=np.int64), ts, value))
        loaded = time.perf_counter() - started
        started = time.perf_counter()
        RollupBacklog.objects.filter(channel_id=channel.pk).delete()
        Channel.objects.filter(pk=channel.pk).update(pending_from=None, pending_to=None)  # rebuilt below
        rebuild_rollups([channel.pk])
        built = time.perf_counter() - started
        print(f"loaded {n:,} readings in {loaded:.0f} s ({n / loaded:,.0f}/s); tiers built in {built:.0f} s")
    with connection.cursor() as cursor:  # as autovacuum would after a bulk load: the planner needs statistics
        cursor.execute(f"ANALYZE {Sample._meta.db_table}, {Rollup._meta.db_table}")
    channel.refresh_from_db()
    first = Sample.objects.filter(channel=channel).order_by("ts").values_list("ts", flat=True).first()
    return owner, channel, first, channel.last_ts


def server_times(channel_id: int, ranges: dict[str, tuple[int, int]], points: int, repeat: int) -> dict[str, tuple]:
    from collection.services.query import query_series

    out = {}
    for name, (start, end) in ranges.items():
        times, series = [], None
        for _ in range(repeat):
            started = time.perf_counter()
            series = query_series([channel_id], start, end, points)[0]
            times.append((time.perf_counter() - started) * 1000)
        out[name] = (statistics.median(times), series.source, len(series))
    return out


def server_env(data_dir: Path) -> dict[str, str]:
    """This process's environment (its DATABASE_URL, DEBUG as set) with static files collected for WhiteNoise."""
    env = dict(os.environ, DAQBROKER_ALLOWED_HOSTS="127.0.0.1", DAQBROKER_SECURE_SSL_REDIRECT="false")
    env["DAQBROKER_DATA_DIR"] = str(data_dir)
    subprocess.run([sys.executable, "manage.py", "collectstatic", "--no-input", "-v0"], cwd=REPO, env=env, check=True)
    return env


def session_cookie(user) -> str:
    from django.test import Client

    client = Client()
    client.force_login(user)
    return client.cookies["sessionid"].value


# (the page may not be parsed yet when this is first asked: "commit" is the answer's headers)
DRAWN = (
    "() => { const root = document.getElementById('main-plot'); return !!root && Number(root.dataset.drawCount) >= 1; }"
)
ZOOM = """async ([a, b]) => {
  const plot = DAQPlot.main, before = plot.drawCount, t0 = performance.now();
  Plotly.relayout(plot.gd, {"xaxis.range": [a, b]});
  while (plot.drawCount === before) await new Promise(r => requestAnimationFrame(r));
  const sample = performance.getEntriesByType("resource").filter(e => e.name.includes("/api/v1/samples/")).pop();
  return {ms: performance.now() - t0, request: sample ? sample.responseEnd - sample.startTime : null,
          source: plot.series[0].source, points: plot.series[0].t.length};
}"""


# Where a visit's time goes, in ms since navigation start: the page's HTML received, plotly.js received and run
# (deferred scripts run before DOMContentLoaded ends), each API request's start and end, the plot drawn.
BREAKDOWN = """() => {
  const nav = performance.getEntriesByType("navigation")[0], res = performance.getEntriesByType("resource");
  const span = (part) => {
    const e = res.filter(e => e.name.includes(part)).pop();
    return e ? [e.startTime, e.responseEnd] : null;
  };
  return {html: nav.responseEnd, css: span("/css/daqbroker"), plot_js: span("/js/plot."), plotly: span("plotly"),
          scripts_run: nav.domContentLoadedEventEnd,
          samples: span("/api/v1/samples/"), runs: span("/api/v1/runs/"), annotations: span("/api/v1/annotations/"),
          drawn: Number(document.getElementById("main-plot").dataset.drawnAt),
          plotly_bytes: (e => e ? [e.encodedBodySize, e.decodedBodySize] : null)(
            res.filter(e => e.name.includes("plotly")).pop())};
}"""


PLOTLY_ALONE = """async (src) => {
  const script = document.createElement("script"), t0 = performance.now();
  script.src = src;
  await new Promise((resolve, reject) => {
    script.onload = resolve; script.onerror = reject; document.head.append(script);
  });
  return performance.now() - t0;
}"""


def plotly_alone(browser, base: str, src: str) -> float:
    """The baseline of the first visit, in the same run: plotly.js alone, fetched and run by a browser that has
    never seen it (a fresh context on the small login page), ms from asking for it to its onload."""
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(f"{base}/login/")
    ms = page.evaluate(PLOTLY_ALONE, src)
    context.close()
    return ms


def measure_page(base: str, cookie: str, channel_id: int, zooms: dict[str, tuple[int, int]], repeat: int) -> dict:
    from playwright.sync_api import sync_playwright

    url = f"{base}/plot/?c={channel_id}&range=all"
    results: dict = {"warm": [], "request": [], "zoom": {name: [] for name in zooms}}
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1280, "height": 900})
        context.add_cookies([{"name": "sessionid", "value": cookie, "url": base}])
        page = context.new_page()
        # A server that has been up a while: its workers have imported everything and answered before.
        warm = context.new_page()
        for _ in range(4 * 2):  # enough for every worker to have rendered the page once
            warm.request.get(url, timeout=180_000)  # a fresh worker's first page imports everything: slow when loaded
            warm.request.get(f"{base}/api/v1/samples/?channels={channel_id}&max_points=10", timeout=180_000)
        warm.close()
        for visit in range(repeat + 1):
            page.goto(url, wait_until="commit")
            page.wait_for_function(DRAWN, timeout=60_000)
            drawn = float(page.evaluate("document.getElementById('main-plot').dataset.drawnAt"))
            request = page.evaluate(
                """() => { const e = performance.getEntriesByType("resource")
                           .filter(e => e.name.includes("/api/v1/samples/")).pop();
                           return e ? e.responseEnd - e.startTime : null; }"""
            )
            results.setdefault("breakdown", []).append(page.evaluate(BREAKDOWN))
            if visit == 0:
                results["cold"] = drawn
                results["points"] = page.evaluate("DAQPlot.main.series[0].t.length")
                results["source"] = page.evaluate("DAQPlot.main.series[0].source")
                results["max_points"] = page.evaluate("DAQPlot.main.points()")
            else:
                results["warm"].append(drawn)
            results["request"].append(request)
        # More first visits, each in a browser context of its own (nothing cached), beside plotly.js alone in
        # another: one first visit is one sample of a noisy machine.
        bundles = page.evaluate(
            "(t => [t.src, new URL(t.dataset.cartesian || t.src, location.href).href])"
            "(document.getElementById('plotly-js'))"
        )
        results["bundles"] = [src.rsplit("/", 1)[-1] for src in bundles]
        results["colds"], results["alone"], results["alone_cartesian"] = [results["cold"]], [], []
        for _ in range(repeat):
            results["alone"].append(plotly_alone(browser, base, bundles[0]))
            results["alone_cartesian"].append(plotly_alone(browser, base, bundles[1]))
            first = browser.new_context(viewport={"width": 1280, "height": 900})
            first.add_cookies([{"name": "sessionid", "value": cookie, "url": base}])
            tab = first.new_page()
            tab.goto(url, wait_until="commit")
            tab.wait_for_function(DRAWN, timeout=60_000)
            results["colds"].append(float(tab.evaluate("document.getElementById('main-plot').dataset.drawnAt")))
            results["breakdown"].insert(1, tab.evaluate(BREAKDOWN))
            first.close()
        results["cold_breakdowns"] = 1 + repeat
        full = page.evaluate("DAQPlot.main.view")
        for _ in range(repeat):
            for name, (start, end) in zooms.items():
                page.evaluate(ZOOM, full)  # back out to the full range first (not timed)
                results["zoom"][name].append(page.evaluate(ZOOM, [start / 1000, end / 1000]))
        browser.close()
    return results


def run(args, data_dir: Path) -> None:
    owner, channel, first, last = load_readings(args.readings)
    end = last + 1
    zooms = {
        "a month": (end - 30 * DAY_US, end),
        "a day": (end - 200 * DAY_US, end - 199 * DAY_US),
        "an hour": (end - 400 * DAY_US, end - 400 * DAY_US + HOUR_US),
    }
    options = ["-c", "python:daqbroker_site.gunicorn_conf"] if args.server == "production" else []
    with gunicorn(server_env(data_dir), workers=args.workers, options=options) as server:
        page = measure_page(server.url, session_cookie(owner), channel.pk, zooms, args.repeat)
    points = page["max_points"]
    span = (end - first) / DAY_US / 365.25
    pad = max((end - first) // 100, 1_000_000)  # the page pads "All" by 1% each side
    server = server_times(channel.pk, {"full range": (first - pad, end + pad), **zooms}, points, args.repeat)

    print(
        f"\nPlot page: {args.readings:,} readings of one channel ({span:.1f} years, one per 10 s) on PostgreSQL, "
        f"headless Chromium at 1280 px ({points} points asked), gunicorn {args.workers} workers "
        f"({args.server} settings), DEBUG off"
    )
    print(f"{'what':<32} {'browser':>10} {'samples request':>16} {'query service':>14}  answer")
    ms, source, _ = server["full range"]
    print(
        f"{'full range, first visit (median)':<32} {statistics.median(page['colds']):>8.0f} ms "
        f"{page['request'][0]:>13.0f} ms {ms:>11.0f} ms  {source}, {page['points']} points (goal: under 1000 ms)"
    )
    print(
        f"{'full range, warm (median)':<32} {statistics.median(page['warm']):>8.0f} ms "
        f"{statistics.median(page['request'][1:]):>13.0f} ms {ms:>11.0f} ms"
    )
    for name, runs in page["zoom"].items():
        ms, source, _ = server[name]
        browser_ms = statistics.median(r["ms"] for r in runs)
        request_ms = statistics.median(r["request"] for r in runs)
        print(
            f"{'zoom redraw to ' + name + ' (median)':<32} {browser_ms:>8.0f} ms {request_ms:>13.0f} ms "
            f"{ms:>11.0f} ms  {runs[-1]['source']}, {runs[-1]['points']} points (goal: under 500 ms)"
        )
    print(
        "browser: navigation start (or the zoom) to the plot drawn; samples request: its time in the browser "
        "(server + network); query service: query_series in-process."
    )
    cold, alone = statistics.median(page["colds"]), statistics.median(page["alone"])
    print(
        f"first visits, each in a fresh browser context: median {cold:.0f} ms of {len(page['colds'])} "
        f"({', '.join(f'{ms:.0f}' for ms in page['colds'])}); baseline, same run: plotly.js alone on a first visit "
        f"(fetched, parsed and run), median {alone:.0f} ms of {len(page['alone'])}; the page's first visit is "
        f"{cold / alone:.2f}x that"
    )
    cartesian = statistics.median(page["alone_cartesian"])
    print(
        f"the page loads {page['bundles'][0]} (a heatmap view: {page['bundles'][1]}); alone on a first visit, same "
        f"run: {alone:.0f} ms against {cartesian:.0f} ms for {page['bundles'][1]} ({alone / cartesian:.2f}x)"
    )
    n = page["cold_breakdowns"]
    wire, decoded = page["breakdown"][0]["plotly_bytes"]
    print(f"plotly.js on a first visit: {wire / 1000:,.0f} kB on the wire, {decoded / 1000:,.0f} kB decoded")
    print_breakdown(page["breakdown"][:n], page["breakdown"][n:])


def print_breakdown(firsts: list[dict], warms: list[dict]) -> None:
    """Where the full range's time went (ms since navigation start): first visits and warm ones (medians)."""

    def at(visit: dict, key: str, end: int | None = None) -> float | None:
        return visit[key] if end is None else (visit[key][end] if visit[key] else None)

    rows = [
        ("page HTML received", "html", None),
        ("stylesheet received", "css", 1),
        ("plot.js received", "plot_js", 1),
        ("plotly.js received", "plotly", 1),
        ("scripts run (plotly.js parsed)", "scripts_run", None),
        ("samples request sent", "samples", 0),
        ("samples answer received", "samples", 1),
        ("runs answer received", "runs", 1),
        ("annotations answer received", "annotations", 1),
        ("plot drawn", "drawn", None),
    ]
    print("\nwhere the full range's time goes (ms since navigation start)")
    print(f"{'':<32} {'first visits':>12} {'warm':>8}  (medians)")
    for label, key, end in rows:
        columns = []
        for visits in (firsts, warms):
            values = [v for v in (at(visit, key, end) for visit in visits) if v is not None]
            columns.append(f"{statistics.median(values):.0f}" if values else "-")
        print(f"{label:<32} {columns[0]:>12} {columns[1]:>8}")


if __name__ == "__main__":
    main()
