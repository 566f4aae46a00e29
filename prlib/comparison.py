"""Notebook 50's protocol for one comparison table, as one call (also for a bank of your own):
tune every router's grid on validation of development seeds, run every router on the report
seeds, write the table and its tuning grid, and compare ours with the strongest baseline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from prlib import report
from prlib.config import DEVELOPMENT_SEEDS, RunConfig
from prlib.experiment import Setting, Tuning, tune_and_run
from prlib.routers import Router

#: The columns of notebook 50's tables, by the setting's feedback kind.
METRICS = {"utility": ["reward", "score", "performance", "cost_per_1k", "calls", "picks_vary",
                       "fit_s"],
           "choice": ["accuracy", "score", "cost_per_1k", "calls", "picks_vary", "fit_s"]}
#: Number formats of those columns (``.3f`` otherwise).
FORMATS = {"cost_per_1k": ".4f", "fit_s": ".1f", "score": ".1f", "picks_vary": ".2f"}


@dataclass
class Comparison:
    """One table of notebook 50: the setting, what tuning tried and chose, one row per (router,
    seed), the formatted table, and ours against the strongest baseline
    (:func:`~prlib.report.improvement`)."""

    setting: Setting
    tuning: Tuning
    results: pd.DataFrame
    table: pd.DataFrame
    improvement: dict

    def describe(self) -> str:
        """One sentence: ours against the strongest baseline, with its CI and verdict."""
        return report.describe_improvement(self.improvement)

    @property
    def separation(self) -> dict:
        """Whether this table can tell routers apart (:func:`~prlib.report.separation`)."""
        return report.separation(self.results, self.setting.metric, self.improvement["ours"])

    def title(self, title: str) -> str:
        """``title``, with "cannot separate routers" appended when the table lacks the power
        (:attr:`separation`)."""
        return title if self.separation["separates"] else f"{title} (cannot separate routers)"


def compare(setting: Setting, name: str, cfg: RunConfig | None = None,
            params: Mapping[str, dict] | None = None, ours: str | None = None,
            seeds: Sequence[int] | None = None,
            tune_seeds: Sequence[int] = DEVELOPMENT_SEEDS[:1],
            routers: Sequence[type[Router] | str] | None = None,
            metrics: Sequence[str] | None = None, fitted: dict | None = None, jobs: int = 1,
            progress: bool = True, folder: str | Path | None = None) -> Comparison:
    """Tune and run every router (``routers``, default: every registered one) on ``setting``
    (:func:`~prlib.experiment.tune_and_run`), write ``<name>`` (the table, mean ± std over
    ``seeds``, default ``cfg.seeds``) and ``<NN>_tuning_<rest of name>`` (every grid point
    tried) with :mod:`prlib.report` (into ``folder`` when given), and compare ``ours`` (a
    display name, default ours) with the strongest other router on the setting's metric.
    ``params``: hyper-parameters per class name under the grid (e.g. the step budget);
    ``metrics``: the table's columns (default :data:`METRICS` of the feedback kind)."""
    from prlib.routers import registered

    if seeds is None:
        if cfg is None:
            raise ValueError("give the report seeds: seeds=... or a cfg with seeds")
        seeds = cfg.seeds
    number, _, rest = name.partition("_")
    if not (number.isdigit() and rest):
        raise ValueError(f"name must look like '50_table1_...' (a notebook number first), got "
                         f"{name!r}")
    tuning, results = tune_and_run(setting, seeds, params, tune_seeds, routers=routers,
                                   progress=progress, fitted=fitted, jobs=jobs)
    report.save_table(tuning.frame, f"{number}_tuning_{rest}", cfg, floatfmt=".5f",
                      folder=folder)
    table = report.results_table(results, list(metrics or METRICS[setting.feedback]),
                                 fmt=FORMATS, mark=setting.metric)
    report.save_table(table, name, cfg, folder=folder)
    (default,) = registered("ours")  # exactly one router is ours
    imp = report.improvement(results, setting.metric, ours or default.name)
    return Comparison(setting, tuning, results, table, imp)
