"""Evaluation: routing metrics, Pareto fronts and aggregation over seeds."""

from __future__ import annotations

import numpy as np


def pareto_front(quality, cost) -> np.ndarray:
    """Boolean mask of points not dominated (higher-or-equal quality at lower-or-equal cost,
    strictly better in one); NaN quality is never on the front. Shapes (n,) -> (n,)."""
    q = np.asarray(quality, dtype=float)
    c = np.asarray(cost, dtype=float)
    ok = ~np.isnan(q) & ~np.isnan(c)
    front = np.zeros(len(q), dtype=bool)
    for i in np.flatnonzero(ok):
        dominated = ok & (q >= q[i]) & (c <= c[i]) & ((q > q[i]) | (c < c[i]))
        front[i] = not dominated.any()
    return front
