"""Notebook 50's protocol for one comparison table, as one call (also for a bank of your own):
tune every router's grid on validation of development seeds, run every router on the report
seeds, write the table and its tuning grid, and compare ours with the strongest baseline."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Mapping, Sequence

import pandas as pd

from prlib import report
from prlib.config import DEVELOPMENT_SEEDS, REPORT_SEEDS, RunConfig
from prlib.experiment import Setting, Tuning, concat_results, tune_and_run  # noqa: F401 (re-exported)
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
            progress: bool = True, folder: str | Path | None = None,
            max_points: int | None = None) -> Comparison:
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
                                   max_points=max_points,
                                   progress=progress, fitted=fitted, jobs=jobs)
    report.save_table(tuning.frame, f"{number}_tuning_{rest}", cfg, floatfmt=".5f",
                      folder=folder)
    table = report.results_table(results, list(metrics or METRICS[setting.feedback]),
                                 fmt=FORMATS, mark=setting.metric)
    report.save_table(table, name, cfg, folder=folder)
    (default,) = registered("ours")  # exactly one router is ours
    imp = report.improvement(results, setting.metric, ours or default.name)
    return Comparison(setting, tuning, results, table, imp)


#: the users :func:`compare_bank` can simulate on a bank (notebook 55's two kinds)
USERS = ("multi-cost", "judge")
#: routers the sweep leaves out by default, as notebook 50 does: the two slowest to fit
SWEEP_SLOW = ("GraphRouterGNN", "ReferenceDesignRouter")
#: the persona judge's choice temperature of notebook 55 (its ``JUDGE_TEMPERATURE``)
JUDGE_TEMPERATURE = 0.5


@dataclass
class BankComparison:
    """What :func:`compare_bank` ran and wrote: one :class:`Comparison` per kind of users,
    notebook 50's sweep (``None`` without ``sweep``), and the folder."""

    bank: object
    comparisons: dict
    sweep: pd.DataFrame | None
    headroom: pd.DataFrame | None
    folder: Path
    ours: str

    def describe(self) -> str:
        """One line per table: ours against its strongest baseline; the files written."""
        lines = [f"{k}: {c.describe()}" for k, c in self.comparisons.items()]
        files = sorted(p.name for p in self.folder.iterdir() if p.suffix in (".csv", ".png"))
        return "\n".join(lines + [f"written to {self.folder}: {', '.join(files)}"])


def compare_bank(bank, users: Sequence[str] = ("multi-cost",),
                 seeds: Sequence[int] = REPORT_SEEDS,
                 tune_seeds: Sequence[int] = DEVELOPMENT_SEEDS[:1], steps: int = 1000,
                 folder: str | Path = "compare", sweep: bool = False,
                 levels: Sequence[int | None] | None = None,
                 routers: Sequence[type[Router] | str] | None = None, ours: str | None = None,
                 llms=None, max_queries: int | None = None,
                 judge_temperature: float = JUDGE_TEMPERATURE, device: str = "auto",
                 jobs: int = 1, progress: bool = True) -> BankComparison:
    """Notebook 55's comparison (and with ``sweep``, notebook 50's) on a bank of your own, in
    one call; tables and figures are written into ``folder``.

    ``bank``: a :class:`~prlib.bank.Bank`, or a file or folder :func:`~prlib.bank.read_bank`
    reads (``llms``: its LLM table, when the file lacks the LLM columns). ``users``:
    ``"multi-cost"`` (the paper's nine users, revealed utilities, reward) and/or ``"judge"``
    (the offline persona judges, which score answer texts: choice-only feedback, accuracy),
    simulated as notebook 55 does (:func:`~prlib.simulate.simulate_multi_cost`;
    :func:`~prlib.simulate.simulate_judge` at ``judge_temperature``, seed 0). For each, the
    protocol of :func:`compare`: every router's grid tuned on validation of ``tune_seeds``,
    every torch router (ours included) trained for at most ``steps`` steps with early
    stopping, the report ``seeds`` run, ours against the strongest baseline (paired 95 % CI).
    Writes ``55_<users>`` (table), ``55_tuning_<users>``, ``55_results_per_seed`` (+ the
    routers not run, ``.not_run.json``), ``55_improvement_summary`` and the main figure
    ``55_main_results``. With ``sweep``: notebook 50's sweep over training requests per user
    (``levels``, default :data:`prlib.headroom.LEVELS`) with multi-cost users, revealed
    utilities and choice-only noisy picks (:data:`prlib.headroom.CHOICE_TEMPERATURE`), every
    router but :data:`SWEEP_SLOW`: ``50_sweep_per_seed``, ``50_tuning_sweep``,
    ``50_headroom`` and the figure ``50_sweep``.

    ``routers``: run only these (class or display names; the upper bounds and the references
    always run too: they are never competitors); ``ours``: the router compared with the
    strongest other (default: ours, PersonalizedRouter v3, when it runs, else the first of
    ``routers``). ``max_queries``: a seeded sample of the bank's queries. ``jobs``: fits at
    once, in separate processes (the numbers do not depend on it)."""
    from prlib import headroom, simulate
    from prlib import routers as R
    from prlib.bank import Bank, read_bank
    from prlib.config import resolve_device
    from prlib.features import node_features

    unknown = sorted(set(users) - set(USERS))
    if unknown or not users:
        raise ValueError(f"users must be some of {USERS}, got {list(users)}")
    chosen = [R.get_router(r) for r in (routers if routers is not None else R.registered())]
    competing = [c.name for c in chosen if c.family not in report.NOT_COMPETING]
    if len(competing) < 2:
        raise ValueError(f"routers: give at least two that compete (not upper bounds or "
                         f"references), got {competing}: ours is compared with the strongest "
                         "other")
    if routers is not None:  # the upper bounds and the references: every table reads against them
        chosen += [c for c in R.registered() if c.family in report.NOT_COMPETING
                   and c not in chosen]
    if ours is None:
        (default,) = R.registered("ours")  # exactly one router is ours
        ours = default.name if default in chosen else R.get_router(routers[0]).name
    elif R.get_router(ours) not in chosen:
        raise ValueError(f"ours={ours!r} is not among the routers run: "
                         f"{[c.name for c in chosen]}")
    else:
        ours = R.get_router(ours).name
    if not isinstance(bank, Bank):
        bank = read_bank(bank, llms=llms)
    if max_queries:
        bank = bank.sample_queries(max_queries, seed=0)
    if "judge" in users and not bank.has_text:
        raise ValueError(f"bank {bank.name!r} has no answer texts: the judge users score them "
                         "(give a 'response' column), or compare with --users multi-cost")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    params = {c.__name__: {"steps": steps} for c in chosen if "torch" in c.tags}
    if R.PersonalizedRouterV2 in chosen:
        params["PersonalizedRouterV2"] = {"steps": steps, "device": resolve_device(device)}
    run = dict(params=params, ours=ours, seeds=list(seeds), tune_seeds=list(tune_seeds),
               routers=chosen, jobs=jobs, progress=progress, folder=folder)

    # the features every setting shares (what Setting.feats computes), with progress bars
    feats = node_features(bank, progress=progress, answers=True)
    settings = {}
    if "multi-cost" in users:
        settings["multi-cost"] = Setting(f"multi-cost · {bank.name}", bank,
                                         simulate.simulate_multi_cost(bank), feedback="utility",
                                         metric="reward", features=feats)
    if "judge" in users:  # simulate_judge's scores, with a progress bar over the answers
        judged = simulate.simulate_judge(bank, temperature=judge_temperature, seed=0,
                                         scores=simulate.judge_scores(bank, progress=progress))
        settings["judge"] = Setting(f"judge · {bank.name}", bank, judged, feedback="choice",
                                    metric="accuracy", features=feats)
    comparisons = {}
    for kind, setting in settings.items():
        comparisons[kind] = compare(setting, f"55_{kind.replace('-', '')}", **run)
        if progress:
            print(f"{setting.name}: {comparisons[kind].describe()}", flush=True)
    titles = {comp.title(f"{kind} users · {bank.name}"): comp
              for kind, comp in comparisons.items()}
    summary = pd.DataFrame([report.improvement_row(t, c.improvement) for t, c in titles.items()])
    report.save_table(summary, "55_improvement_summary", folder=folder)
    per_seed = concat_results([c.results for c in comparisons.values()])
    report.save_table(per_seed, "55_results_per_seed", folder=folder, floatfmt=".5f")
    report.set_style()
    _save_figure(report.main_results_figure(titles, ours), "55_main_results", folder)

    swept = rows = None
    if sweep:
        names = [c for c in chosen if routers is not None or c.__name__ not in SWEEP_SLOW]
        utility = settings.get("multi-cost") or Setting(
            f"multi-cost · {bank.name}", bank, simulate.simulate_multi_cost(bank),
            feedback="utility", metric="reward", features=feats)
        noisy = simulate.simulate_multi_cost(bank, temperature=headroom.CHOICE_TEMPERATURE,
                                             seed=0)  # simulated users, noisy picks
        choice = Setting(utility.name, bank, noisy, feedback="choice", metric="reward",
                         features=utility.feats)
        parts, tunings = [], []
        for setting in (utility, choice):
            res, tun = headroom.sweep(setting, list(levels or headroom.LEVELS), list(seeds),
                                      names, params, list(tune_seeds), progress=progress,
                                      jobs=jobs)
            parts.append(res)
            tunings.append(tun)
        swept = concat_results(parts)
        report.save_table(swept, "50_sweep_per_seed", folder=folder, floatfmt=".5f")
        report.save_table(pd.concat(tunings, ignore_index=True), "50_tuning_sweep",
                          folder=folder, floatfmt=".5f")
        reference = R.StructuredReferenceRouter.name
        rows = headroom.headroom_table(swept, "reward", ours,
                                       reference=reference if reference in set(
                                           swept["router"]) else None)
        report.save_table(rows, "50_headroom", folder=folder, floatfmt=".4f")
        fig = headroom.sweep_figure(
            swept, "reward", ours,
            [(f"revealed utilities (nine users, {bank.name})", utility.name, "utility"),
             (f"choice-only, noisy picks (nine users, {bank.name})", choice.name, "choice")],
            highlight=[R.BestPerUserTaskRouter.name])
        _save_figure(fig, "50_sweep", folder)
    return BankComparison(bank, comparisons, swept, rows, folder, ours)


def _save_figure(fig, name: str, folder: Path) -> None:
    import matplotlib.pyplot as plt

    report.save_figure(fig, name, folder=folder)
    plt.close(fig)
