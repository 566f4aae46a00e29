"""What a router can gain: every router against requests per user, beside the references.

The main result of notebook 50: a sweep over the number of training requests per user
(``Setting.train_per_user``; validation and test unchanged, so every level is scored on the
same test requests), every level tuned on development seeds like any table
(:func:`~prlib.experiment.tune_and_run`), with the decide-before-answers ceiling, the oracle and
(for multi-cost users) the structured reference as rows (:mod:`prlib.routers.reference`). Two
feedback kinds: revealed utilities, and **choice-only** feedback (the user only picks, by
utility with noise: what a product observes), for which multi-cost users pick by a softmax of
their reward at :data:`CHOICE_TEMPERATURE`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from prlib.experiment import Setting, concat_results, tune_and_run
from prlib.metrics import paired_difference
from prlib.report import NOT_COMPETING, strongest
from prlib.routers import Router

#: Training requests per user of the sweep; ``None`` is every training request (the dense
#: table, the rightmost point).
LEVELS: tuple[int | None, ...] = (1, 3, 5, 10, 20, None)
#: Temperature of the paper's multi-cost users' noisy picks under choice-only feedback
#: (softmax of reward / temperature; rewards span about [-1, 1]). Simulated.
CHOICE_TEMPERATURE = 0.05
#: The label of the dense level in frames and figures.
ALL = "all"
#: Routers left out of notebook 50's sweeps: GraphRouter and the released design, the slowest
#: to fit (30 s or more per fit on the nine-user setting on one thread), and FrugalGPT, which
#: needs answer texts that the LLMRouter bank lacks; the first two are in notebook 55's tables.
SLOW_ROUTERS = ("GraphRouterGNN", "ReferenceDesignRouter", "FrugalGPTRouter")
#: The share of the structured reference's lead over the strongest baseline that ours must reach
#: in a cell where that lead's CI is above 0 (the router issue's "takes the headroom").
HEADROOM_SHARE = 0.8


def sweep_routers() -> list[type[Router]]:
    """Every registered router but :data:`SLOW_ROUTERS`: the routers of notebook 50's sweeps."""
    from prlib import routers

    return [c for c in routers.registered() if c.__name__ not in SLOW_ROUTERS]


def nine_user_settings(bank) -> tuple[Setting, Setting, dict[str, Setting]]:
    """Notebook 50's nine-user settings on ``bank`` (its **simulated** multi-cost users):
    ``(utility, choice, one_sparse)``: revealed utilities; noisy picks (a softmax of reward at
    :data:`CHOICE_TEMPERATURE`, seed 0) with the same features; and, per feedback kind, one
    sparse user among eight dense ones (a different user per seed, scored on that user's test
    requests only; :attr:`~prlib.experiment.Setting.sparse_users`)."""
    from prlib import simulate

    utility = Setting("multi-cost · llmrouter", bank, simulate.simulate_multi_cost(bank),
                      feedback="utility", metric="reward")
    noisy_picks = simulate.simulate_multi_cost(bank, temperature=CHOICE_TEMPERATURE, seed=0)
    choice = Setting("multi-cost · llmrouter", bank, noisy_picks, feedback="choice",
                     metric="reward", features=utility.feats)
    one_sparse = {s.feedback: replace(s, name=f"{s.name} · one sparse user among dense",
                                      sparse_users=1) for s in (utility, choice)}
    return utility, choice, one_sparse


def nine_user_sweep(bank, seeds: Sequence[int], params: Mapping[str, dict] | None,
                    tune_seeds: Sequence[int], levels: Sequence[int | None],
                    one_sparse_levels: Sequence[int | None], jobs: int = 1,
                    max_points: int | None = None, progress: bool = False):
    """Notebook 50's nine-user sweep: :func:`sweep` of :func:`sweep_routers` over ``levels`` in
    both feedback kinds of :func:`nine_user_settings` and over ``one_sparse_levels`` in its one
    sparse user settings. Returns ``(results, tuning, settings)``, ``settings`` being
    :func:`nine_user_settings`'s triple. A fit already made with the same data, parameters,
    seed and code is read from the fit cache (:func:`~prlib.experiment.cached_fits`), so adding
    seeds to a finished sweep fits only the new ones."""
    settings = nine_user_settings(bank)
    utility, choice, one_sparse = settings
    parts, tunings = [], []
    for setting, cell_levels in [(utility, levels), (choice, levels),
                                 *((s, one_sparse_levels) for s in one_sparse.values())]:
        res, tun = sweep(setting, cell_levels, seeds, sweep_routers(), params, tune_seeds,
                         progress=progress, jobs=jobs, max_points=max_points)
        parts.append(res)
        tunings.append(tun)
    return concat_results(parts), pd.concat(tunings, ignore_index=True), settings


def level_label(level: int | None) -> str:
    """``"1"``, ``"20"``, ... or :data:`ALL`."""
    return ALL if level is None else str(int(level))


def sweep(setting: Setting, levels: Sequence[int | None], seeds: Sequence[int],
          routers: Sequence[type[Router] | str], params: Mapping[str, dict] | None = None,
          tune_seeds: Sequence[int] = (0,), progress: bool = False,
          jobs: int = 1, max_points: int | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tune and run ``routers`` at each level of training requests per user.

    Returns ``(results, tuning)``: the :func:`~prlib.experiment.run_setting` rows of every
    level with ``train_per_user`` (a label, :func:`level_label`) and ``feedback`` columns, and
    every level's tuning rows likewise. ``params``: fixed hyper-parameters per router class
    (e.g. step budgets); each level chooses its own grid point on ``tune_seeds`` (among the first
    ``max_points`` of every grid; None: all)."""
    if not levels:
        raise ValueError("levels is empty: give the training requests per user to sweep, e.g. "
                         f"{list(LEVELS)} (None: all)")
    names = {r if isinstance(r, str) else r.__name__ for r in routers}
    params = {k: v for k, v in (params or {}).items() if k in names}
    results, tunings, not_run = [], [], {}
    for level in tqdm(list(levels), desc=f"sweep · {setting.name}", disable=not progress):
        cell = replace(setting, train_per_user=level)
        tuning, res = tune_and_run(cell, seeds, params, tune_seeds, routers, progress=False,
                                   jobs=jobs, max_points=max_points)
        label = level_label(level)
        results.append(res.assign(train_per_user=label, feedback=setting.feedback))
        tunings.append(tuning.frame.assign(train_per_user=label, feedback=setting.feedback))
        not_run.update(res.attrs.get("not_run", {}))
    out = pd.concat(results, ignore_index=True)
    out.attrs["not_run"] = not_run
    return out, pd.concat(tunings, ignore_index=True)


def _paired(results: pd.DataFrame, metric: str, a: str, b: str) -> dict:
    """``a - b`` on ``metric``, paired per seed, with its 95 % CI."""
    x = results[results["router"] == a].set_index("seed")[metric]
    y = results[results["router"] == b].set_index("seed")[metric].reindex(x.index)
    return paired_difference(x.to_numpy(), y.to_numpy())


def headroom_table(results: pd.DataFrame, metric: str, ours: str,
                   reference: str | None = None) -> pd.DataFrame:
    """One row per (setting, feedback, level): the strongest baseline (references, ceilings and
    oracles excluded), ours minus it and, where the table has it, the structured reference
    minus it, each paired per seed with a 95 % CI; the ceiling and the oracle beside them."""
    rows = []
    keys = ["setting", "feedback", "train_per_user"]
    for key, cell in results.groupby(keys, sort=False):
        base = strongest(cell, metric, exclude=(ours,))
        means = cell.groupby("router")[metric].mean()
        upper = cell[cell["family"] == "upper bound"].groupby("router")[metric].mean()
        row = dict(zip(keys, key), metric=metric, strongest_baseline=base,
                   baseline=means[base], ours=means.get(ours, np.nan))
        d = _paired(cell, metric, ours, base)
        row.update(ours_minus_baseline=d["mean"], ours_ci_low=d["ci_low"],
                   ours_ci_high=d["ci_high"])
        if reference is not None and reference in means:
            r = _paired(cell, metric, reference, base)
            row.update(reference=means[reference], reference_minus_baseline=r["mean"],
                       reference_ci_low=r["ci_low"], reference_ci_high=r["ci_high"])
        for name, value in upper.items():
            row["ceiling" if name.startswith("Ceiling") else "oracle"] = value
        rows.append(row)
    return pd.DataFrame(rows)


def sweep_figure(results: pd.DataFrame, metric: str, ours: str, panels: Sequence[tuple],
                 highlight: Sequence[str] = (), ncols: int = 2):
    """The main figure: one panel per ``(title, setting name, feedback)``, ``metric`` (mean
    over seeds, 95 % CI band for ours, the strongest baseline per level and the references)
    against training requests per user; the ceiling dashed, the oracle dotted; ``ncols``
    panels per row. Returns the figure."""
    import matplotlib.pyplot as plt

    from prlib.metrics import mean_ci

    ncols = min(ncols, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.2 * ncols, 4.6 * nrows), squeeze=False)
    for ax in axes.ravel()[len(panels):]:
        ax.set_visible(False)
    axes = axes.ravel()[None, :len(panels)]
    parts = [results[(results["setting"] == name) & (results["feedback"] == feedback)]
             for _, name, feedback in panels]
    bests = [[strongest(p[p["train_per_user"] == lab], metric, exclude=(ours,))
              for lab in dict.fromkeys(p["train_per_user"])] for p in parts]
    # one colour per router across panels, so that the legend names each line once
    palette = iter(["C0", "C1", "C2", "C5", "C9", "C8", "#7b3294", "#008837", "C4"])
    colours = {name: next(palette, "grey")
               for name in dict.fromkeys([*highlight, *(n for b in bests for n in b)])}
    for ax, (title, _, _), part, best in zip(axes[0], panels, parts, bests):
        labels = list(dict.fromkeys(part["train_per_user"]))
        x = np.arange(len(labels))
        curves = {ours: ("ours", "C3", "-", 2.4)}
        for name in dict.fromkeys([*highlight, *best]):
            curves.setdefault(name, (None, colours[name], "-", 1.0))
        for name, fam in part.groupby("router", sort=False)["family"].first().items():
            if fam in NOT_COMPETING:
                style = ("--", 1.6) if name.startswith("Ceiling") else (":", 1.4) if (
                    fam == "upper bound") else ("-.", 1.6)
                curves[name] = (fam, "black" if fam == "upper bound" else "C7", *style)
        for name, (_, colour, ls, lw) in curves.items():
            g = part[part["router"] == name]
            if g.empty:
                continue
            ci = pd.DataFrame([mean_ci(g[g["train_per_user"] == lab][metric]) for lab in labels])
            line, = ax.plot(x, ci["mean"], ls=ls, lw=lw, marker="o", ms=3, label=name,
                            color=colour)
            if name == ours or name in highlight:
                ax.fill_between(x, ci["ci_low"], ci["ci_high"], alpha=0.15,
                                color=line.get_color())
        ax.set_xticks(x, labels)
        ax.set(title=title, xlabel="training requests per user",
               ylabel=f"test {metric} (mean over seeds; band: 95 % CI)")
    handles, names = [], []
    for ax in axes[0]:
        for h, n in zip(*ax.get_legend_handles_labels()):
            if n not in names:
                handles.append(h)
                names.append(n)
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8,
               bbox_to_anchor=(0.5, -0.02 - 0.035 * (len(names) // 3) / nrows))
    fig.tight_layout()
    return fig


def verdict_suffix(check) -> str:
    """The words a findings line ends with for one :func:`verdicts` row (a namedtuple):
    ``", WORSE than that baseline"`` where ours' CI is below 0 and, in a headroom cell,
    ``": takes N% of the reference's lead, ..."``."""
    worse = "" if check.never_worse else ", WORSE than that baseline"
    if not check.headroom:
        return worse
    return (f"{worse}: takes {check.share_of_lead:.0%} of the reference's lead, "
            + ("the CI above 0" if check.takes_headroom else "NOT the headroom"))


def verdict_tally(checks: pd.DataFrame) -> str:
    """The closing sentence of a findings paragraph: :func:`verdicts` counted."""
    headroom_cells = checks[checks["headroom"]]
    return (f"Never worse in {int(checks['never_worse'].sum())} of {len(checks)} cells; "
            f"takes the headroom in {int(headroom_cells['takes_headroom'].sum())} of the "
            f"{len(headroom_cells)} cells where the reference leads with its CI above 0.")


def verdicts(table: pd.DataFrame, share: float = HEADROOM_SHARE) -> pd.DataFrame:
    """The router issue's two checks per cell of a :func:`headroom_table` (with its reference
    columns): ``never_worse`` (ours' CI against the strongest baseline is not entirely below 0),
    ``headroom`` (the reference leads that baseline with its CI above 0) and, in those cells,
    ``takes_headroom`` (ours leads with its CI above 0 and by at least ``share`` of the
    reference's lead; NA elsewhere) with ``share_of_lead``."""
    out = table[["setting", "feedback", "train_per_user"]].copy()
    out["never_worse"] = ~(table["ours_ci_high"] < 0)
    out["headroom"] = table["reference_ci_low"] > 0
    out["share_of_lead"] = np.where(out["headroom"], table["ours_minus_baseline"]
                                    / table["reference_minus_baseline"], np.nan)
    takes = (table["ours_ci_low"] > 0) & (out["share_of_lead"] >= share)
    out["takes_headroom"] = pd.Series(takes, dtype="boolean").where(out["headroom"])
    return out
