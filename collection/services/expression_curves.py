"""Ad-hoc expression curves on a plot: ``a/temp - b/temp`` over channels of any instruments the user may
see, evaluated on the server by the derived channels' evaluator (``instruments.expressions``: a
whitelisted syntax tree, never ``eval``; a curve's syntax is checked by ``parse_curve`` there, which the
dashboards also use when a panel is saved).

A channel is written ``instrument-slug/channel-slug``; between two channels, put spaces around ``/``
and ``-`` (``a/temp / b/temp``), as ``a/temp/b/temp`` cannot be read one way only. The inputs are
aligned on time at the plot's resolution: the range is cut into ``points`` equal slices, each input
gives the mean of its readings in each slice (from the query service at twice that resolution: raw
readings, or tier buckets weighted by their counts, each counted in the slice where its bucket begins),
and the expression is evaluated in the slices where every input has one.
Results that are not finite (``log(0)``) are left out.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from collection.services.query import MAX_POINTS_LIMIT, query_series
from instruments.expressions import ExpressionError, evaluate, parse_curve

MAX_POINTS = 5000


@dataclass
class Curve:
    expression: str
    t: np.ndarray  # slice starts, µs
    value: np.ndarray
    slice_us: int
    inputs: list[str]

    def as_dict(self) -> dict:
        return {
            "expression": self.expression,
            "t": self.t,
            "value": self.value,
            "slice_us": self.slice_us,
            "inputs": self.inputs,
        }


def expression_curve(
    expression: str,
    resolve: Callable[[Sequence[str]], dict[str, int]],
    start: int,
    end: int,
    points: int,
) -> Curve:
    """The curve of ``expression`` over [start, end) at ``points`` slices. ``resolve`` maps references to
    channel ids among those the user may see (raising for any other); ExpressionError for a bad one."""
    if not 2 <= points <= MAX_POINTS:
        raise ExpressionError(f"points must be between 2 and {MAX_POINTS}")
    tree, refs = parse_curve(expression)
    ids = resolve(refs)
    width = -(-(end - start) // points)
    slices = (end - start + width - 1) // width
    columns: dict[str, np.ndarray] = {}
    have = np.ones(slices, dtype=bool)
    # twice the resolution asked: a tier answer's groups (aligned on the epoch) then fill every slice
    for i, series in enumerate(query_series([ids[r] for r in refs], start, end, min(2 * points, MAX_POINTS_LIMIT))):
        if series.mean is not None and series.count is not None:  # tier buckets: means weighted by counts
            t, values, weights = series.t, series.mean, series.count.astype(np.float64)
        else:
            assert series.value is not None
            t, values, weights = series.t, series.value, np.ones(len(series.t))
        index = np.clip((t - start) // width, 0, slices - 1)
        total = np.bincount(index, weights=weights * values, minlength=slices)
        count = np.bincount(index, weights=weights, minlength=slices)
        with np.errstate(invalid="ignore", divide="ignore"):
            columns[f"_c{i}"] = total / count
        have &= count > 0
    result = np.asarray(evaluate(tree, {name: column[have] for name, column in columns.items()}), dtype=np.float64)
    if result.shape != (int(have.sum()),):  # an expression of constants only (e.g. 0 * a/b + 1) broadcasts
        result = np.broadcast_to(result, (int(have.sum()),)).copy()
    t = start + np.flatnonzero(have).astype(np.int64) * width
    finite = np.isfinite(result)
    return Curve(expression=expression, t=t[finite], value=result[finite], slice_us=width, inputs=refs)
