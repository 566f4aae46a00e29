"""Pinned smoke numbers: nbval's regression check of every notebook.

A notebook ends with a cell that passes its key numbers to :func:`pin_smoke` (or a results
frame to :func:`pin_results`). In a smoke run (CI's nbval, ``PRLIB_SMOKE=1``) they are compared
with ``notebooks/smoke_pins/<name>.json``; a number that moved beyond its tolerance fails the
cell, and so the notebook's nbval test, with the numbers that moved. Intended changes are
re-pinned with ``PRLIB_UPDATE_PINS=1`` (e.g. ``PRLIB_UPDATE_PINS=1 make notebook NB=50
SMOKE=1``) and the commit says why. A full run checks nothing (its numbers are the figures).

Tolerances: numbers that do not depend on torch training (data counts, lookup tables,
oracles, kNN, simulated users) are pinned to :data:`EXACT`; routers trained with torch to
:data:`TORCH` (a fraction of the metric's range: on another CPU, BLAS may take other kernels
and the last bits of training differ).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from prlib.config import REPO_ROOT, RunConfig, resolve_config

PINS_DIR = REPO_ROOT / "notebooks" / "smoke_pins"
#: Absolute tolerance of numbers computed without torch training (embeddings come from MiniLM
#: on the CPU at hand, so kNN-style numbers may move in their last bits across machines).
EXACT = 1e-4
#: Absolute tolerance of torch-trained numbers, as a share of the metric's range (1 for rewards
#: and accuracies, 100 for scores and percentages).
TORCH = 0.03
#: Test requests whose pick a torch-trained router may flip between two runs of the same code:
#: training is chaotic in the last bits of its inputs, and a text's cached embedding carries the
#: batch it was first embedded in (which the order of the notebooks decides). Measured: v2 on
#: notebook 90's 45 smoke test requests, 0.244, 0.289 or 0.311 accuracy (up to three requests)
#: by cache history (the last in a cache filled by many earlier runs of other notebooks).
FLIPS = 3.5
#: Metrics on a 0-100 scale.
PERCENT_METRICS = ("score", "pct_oracle", "pct_of_full")


class PinError(AssertionError):
    """A pinned smoke number moved (or the pins of a notebook are missing)."""


def _key(label) -> str:
    return " | ".join(map(str, label)) if isinstance(label, tuple) else str(label)


def pin_smoke(name: str, values: pd.Series | Mapping[str, float], cfg: RunConfig | None = None,
              tol: float | Mapping[str, float] = EXACT, folder: Path | None = None
              ) -> pd.DataFrame:
    """Check ``values`` (label -> number) against the pins ``name`` in a smoke run; returns them
    as a frame (``key``, ``value``, ``tol``) to display. ``tol``: one absolute tolerance, or one
    per key. Full runs return the frame and check nothing."""
    series = pd.Series(values, dtype=float)
    keys = [_key(k) for k in series.index]
    tols = [float(tol.get(k, EXACT) if isinstance(tol, Mapping) else tol) for k in keys]
    frame = pd.DataFrame({"key": keys, "value": series.to_numpy(), "tol": tols})
    if not (cfg or resolve_config()).smoke:
        return frame
    path = Path(folder or PINS_DIR) / f"{name}.json"
    got = {k: {"value": None if math.isnan(v) else round(float(v), 9), "tol": t}
           for k, v, t in zip(keys, frame["value"], tols)}
    if os.environ.get("PRLIB_UPDATE_PINS", "").strip() in {"1", "true", "yes"}:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(got, indent=1, sort_keys=True) + "\n")
        return frame
    if not path.is_file():
        raise PinError(f"no smoke pins {path.name} in {path.parent.name}/: run the notebook in "
                       "smoke mode with PRLIB_UPDATE_PINS=1 once and commit the file")
    want = json.loads(path.read_text())
    problems = [f"{k}: pinned but not computed" for k in sorted(set(want) - set(got))]
    problems += [f"{k}: computed but not pinned" for k in sorted(set(got) - set(want))]
    for k in sorted(set(want) & set(got)):
        a, b, t = got[k]["value"], want[k]["value"], max(want[k]["tol"], got[k]["tol"])
        if (a is None) != (b is None) or (a is not None and abs(a - b) > t):
            problems.append(f"{k}: {a} (pinned {b}, tolerance {t:g})")
    if problems:
        raise PinError(f"smoke numbers of {name} moved:\n  " + "\n  ".join(problems)
                       + "\nIf the change is intended, rerun the notebook in smoke mode with "
                         "PRLIB_UPDATE_PINS=1 and say why in the commit.")
    return frame


def torch_trained(router_name: str) -> bool:
    """Whether a registered router (by display name) trains with torch (has ``steps``)."""
    from prlib.routers import get_router
    from prlib.routers.base import RouterError

    try:
        return "steps" in get_router(router_name).defaults
    except RouterError:  # an oracle's row name, or a name not registered: no training
        return False


def pin_results(name: str, results: pd.DataFrame, metrics: Sequence[str],
                by: Sequence[str] = ("setting", "router"), cfg: RunConfig | None = None,
                all_torch: bool = False, router_column: str = "router",
                folder: Path | None = None) -> pd.DataFrame:
    """:func:`pin_smoke` of the mean of each of ``metrics`` per ``by`` group of a results frame
    (one row per router and seed, e.g. :func:`~prlib.experiment.run_setting`'s); torch-trained
    routers' numbers (every number with ``all_torch``, e.g. shares of a trained model) within
    :data:`TORCH` of the metric's range, or :data:`FLIPS` test requests where the frame says
    how many there were (``n_test``) and that is more, the rest within :data:`EXACT`;
    ``router_column`` names the column of ``by`` that holds router display names."""
    by = list(by)
    values, tol = {}, {}
    for label, g in results.groupby(by, sort=False):
        label = label if isinstance(label, tuple) else (label,)
        loose = all_torch or torch_trained(str(dict(zip(by, label)).get(router_column, "")))
        share = TORCH
        if "n_test" in g and g["n_test"].min() > 0:
            share = max(TORCH, FLIPS / float(g["n_test"].min()))
        for m in metrics:
            key = _key(label + (m,))
            values[key] = float(g[m].mean())
            scale = 100.0 if m in PERCENT_METRICS else 1.0
            tol[key] = share * scale if loose else EXACT
    return pin_smoke(name, values, cfg, tol, folder)


def pin_table(name: str, table: pd.DataFrame, index: str | Sequence[str],
              cfg: RunConfig | None = None, tol: float = EXACT,
              folder: Path | None = None) -> pd.DataFrame:
    """:func:`pin_smoke` of every numeric cell of ``table``, keyed by its ``index`` column(s)
    and the column name (one tolerance for all)."""
    numeric = table.set_index(list([index] if isinstance(index, str) else index)).select_dtypes(
        "number")
    return pin_smoke(name, numeric.stack(), cfg, tol, folder)
