"""Which plotly.js bundle a page with plots loads first (both vendored under static/vendor/plotly/).

The *basic* bundle (1.2 MB: scatter, bar, pie) draws time series and histograms (the server counts them;
the page draws bars); the *cartesian* one (1.5 MB: heatmap besides) is needed only for a histogram over
time. A browser compiles and runs the whole bundle on the page's main thread before the first drawing, so a
first visit loads the smaller one unless a view it opens on needs the larger; plot.js fetches the larger
one when a heatmap is chosen later (docs/performance.md#plot-page).
"""

from __future__ import annotations

from collections.abc import Iterable

BASIC = "vendor/plotly/plotly-basic.min.js"
CARTESIAN = "vendor/plotly/plotly-cartesian.min.js"
NEEDS_CARTESIAN = frozenset({"heatmap"})


def plotly_bundle(kinds: Iterable[str]) -> str:
    """The static path of the bundle for plots that open on these view kinds ("series", "hist", "heatmap")."""
    return CARTESIAN if NEEDS_CARTESIAN.intersection(kinds) else BASIC


def plotly_context(kinds: Iterable[str]) -> dict[str, str]:
    """The template's ``plotly_js`` (loaded with the page) and ``plotly_cartesian_js`` (plot.js's upgrade)."""
    return {"plotly_js": plotly_bundle(kinds), "plotly_cartesian_js": CARTESIAN}
