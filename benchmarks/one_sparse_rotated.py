"""Benchmark (not a timed test): notebook 50's one-sparse-user cells with every user sparse in
turn on each report seed, so that their CI measures the routers, not which user was drawn.

Notebook 50's "one sparse user among dense" cells thin one **simulated** multi-cost user per
split seed (by rotation: seed ``s`` thins user ``s mod 9``) and score that user alone. Over ten
report seeds each user is the sparse one about once, and on development seeds the gain of a
router differs from one user to another far more than from one seed to another
(``benchmarks/sparse_user_study.py``: ours minus kNN (pooled) from -0.003 to +0.103 by user),
so those cells' paired CIs are mostly the draw of users. Here each report seed's split thins
each of the nine users in turn (:attr:`prlib.experiment.Setting.sparse_offset` 0-8: nine fits
per router and seed on the same split of queries), and a seed's value of a router is its mean
reward over the nine sparse users; ours minus the strongest baseline is then paired per seed
(95 % t CI) as in every headroom table (:func:`prlib.headroom.headroom_table`,
:func:`prlib.headroom.verdicts`).

Fixed before it was first run (development-seed power analysis on
``figures/50_sparse_user_study.csv``, which treated the nine users of a seed as independent: a CI
of about +-0.005 over five seeds, against +-0.025 for one user per seed over ten; the run gave
+-0.012 to +-0.017, since the nine fits of a seed share its split of queries and move together
with it: narrower than ten unrotated seeds in the picks cells, not in the utility cells):

- the cells: all six of notebook 50's one-sparse-user cells (revealed utilities and picks, at
  1, 5 and 20 training requests of the sparse user);
- the seeds: **110-114**, report seeds no run had used (notebook 50 reports 100-104,
  ``benchmarks/headroom_seeds.py`` 100-109);
- the routers: notebook 50's sweep (every router but the slow graph ones), each at the grid
  point notebook 50 chose for the cell (``figures/50_tuning_sweep.csv``, tuned on development
  seed 0), torch routers at its step budget; the strongest baseline is chosen on these results
  by the headroom tables' rule; the structured reference, the ceiling and the oracle beside.

Writes ``figures/50_one_sparse_rotated`` (the headroom table), ``50_one_sparse_rotated_verdicts``,
``50_one_sparse_rotated_per_seed`` (each router's mean over the nine sparse users per seed),
``50_one_sparse_rotated_per_user`` (every fit's row, with its sparse user),
``50_one_sparse_rotated_by_user`` and its figure (per cell and sparse user: ours, the reference
and the ceiling minus the strongest baseline) and the paragraph
``50_one_sparse_rotated_findings``.

Run: ``python benchmarks/one_sparse_rotated.py`` (about 27 minutes on 2 CPU cores: 270 fits of
each router); ``--smoke``: notebook 50's smoke size, one cell, into ``build/smoke-figures/``.
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace

import pandas as pd
from tqdm.auto import tqdm

from headroom_seeds import NOTEBOOK_50
from prlib import headroom, report, routers
from prlib.config import REPORT_SEEDS, resolve_config, seed_everything
from prlib.experiment import run_setting, setting_views
from prlib.simulate.multicost import PAPER_PS
from sparse_user_study import cell_choices, cell_setting

#: the report seeds fixed for this benchmark before it was first run (none used before: notebook
#: 50 reports 100-104, benchmarks/headroom_seeds.py 100-109); a literal, not derived, so that
#: the pre-registered seeds do not move when another benchmark's do
DEFAULT_SEEDS = list(range(110, 115))
#: the cells: notebook 50's one-sparse-user levels, both feedback kinds
DEFAULT_LEVELS = [1, 5, 20]
FEEDBACKS = ("utility", "choice")
#: the rotated cells' setting name (notebook 50's, with how the sparse user is chosen)
SUFFIX = " · every user sparse in turn"
#: what is averaged over the nine sparse users of one seed
AVERAGED = ["reward", "oracle_reward", "ceiling_reward", "random_reward", "fit_s"]
#: the columns of every fit's row that the per-user file keeps (of run_setting's)
KEPT = ["setting", "router", "family", "seed", "sparse_offset", "sparse_user", "feedback",
        "train_per_user", *AVERAGED, "cost_per_1k", "n_train", "n_test"]


def rotated_cell(setting, level: int, seeds, jobs: int = 1, progress: bool = False,
                 router_list=None):
    """``router_list`` (default: notebook 50's sweep, :func:`prlib.headroom.sweep_routers`) on
    ``setting`` (a one-sparse-user setting) at ``level``, each user thinned in turn on every
    seed: one :func:`~prlib.experiment.run_setting` row per (router, seed, sparse user), with
    ``sparse_offset`` and ``sparse_user`` (read from the fit's test split, which holds the
    sparse user's requests only); the grid points are notebook 50's for this cell."""
    router_list = list(router_list or headroom.sweep_routers())
    _, chosen = cell_choices(setting, level)
    run = {cls.__name__ for cls in router_list}
    params = {routers.get_router(name).__name__: point for name, point in chosen.items()}
    params = {name: point for name, point in params.items() if name in run}
    for cls in router_list:
        if "torch" in cls.tags:
            params[cls.__name__] = {"steps": NOTEBOOK_50["steps"], **params.get(cls.__name__, {})}
    users = setting.preferences.users["user_id"]
    parts = []
    for offset in tqdm(range(len(users)), desc=f"{setting.feedback}, {level} per user",
                       disable=not progress):
        cell = replace(setting, sparse_offset=offset)
        res = run_setting(cell, router_list, seeds, params, jobs=jobs)
        who = {s: scored_user(cell, s) for s in seeds}
        parts.append(res.assign(sparse_offset=offset, sparse_user=res["seed"].map(who),
                                train_per_user=headroom.level_label(level),
                                feedback=setting.feedback))
    return pd.concat(parts, ignore_index=True)


def scored_user(setting, seed: int) -> str:
    """The one user whose requests ``setting``'s test split on ``seed`` scores."""
    users = set(setting_views(setting, seed)[2].frame["user_id"])
    if len(users) != 1:
        raise ValueError(f"{setting.name}, seed {seed}: the test split scores {sorted(users)}, "
                         "not one sparse user")
    return users.pop()


def per_seed(rows: pd.DataFrame, users) -> pd.DataFrame:
    """Each router's mean over the sparse users of a seed (one row per cell, router and
    seed), the cell renamed with :data:`SUFFIX`. Every (cell, router, seed) must have exactly
    one row per user of ``users`` (each sparse once): else an error."""
    keys = ["setting", "router", "family", "seed", "train_per_user", "feedback"]
    everyone = sorted(map(str, users))
    seen = rows.groupby(keys)["sparse_user"].agg(sorted)
    wrong = seen[seen.map(lambda u: u != everyone)]
    if len(wrong):
        raise ValueError(f"every router and seed needs each of the same sparse users once "
                         f"({everyone}); {len(wrong)} groups differ, e.g. {wrong.index[0]}: "
                         f"{wrong.iloc[0]}")
    out = rows.groupby(keys, sort=False)[AVERAGED].mean().reset_index()
    out["n_sparse_users"] = len(everyone)
    out["setting"] = out["setting"] + SUFFIX
    return out


def gains_by_user(rows: pd.DataFrame, table: pd.DataFrame) -> pd.DataFrame:
    """Per cell and sparse user (mean over seeds): ours, the structured reference and the
    ceiling minus the cell's strongest baseline (as ``table`` names it), paired per seed."""
    names = {routers.PersonalizedRouterV3.name: "ours",
             routers.StructuredReferenceRouter.name: "reference"}
    out = []
    for r in table.itertuples():
        cell = rows[(rows["feedback"] == r.feedback) & (rows["train_per_user"] == r.train_per_user)]
        wide = cell.pivot_table(index=["seed", "sparse_user"], columns="router", values="reward")
        ceiling = cell.groupby(["seed", "sparse_user"])["ceiling_reward"].first()
        diffs = pd.DataFrame({label: wide[name] - wide[r.strongest_baseline]
                              for name, label in names.items()})
        diffs["ceiling"] = ceiling - wide[r.strongest_baseline]
        means = diffs.groupby(level="sparse_user").mean().reset_index()
        out.append(means.assign(feedback=r.feedback, train_per_user=r.train_per_user,
                                strongest_baseline=r.strongest_baseline))
    return pd.concat(out, ignore_index=True)


def gains_figure(gains: pd.DataFrame):
    """One panel per cell: ours, the reference and the ceiling minus the strongest baseline per
    sparse user (mean over the seeds)."""
    import matplotlib.pyplot as plt

    report.set_style()
    cells = list(gains.groupby(["feedback", "train_per_user"], sort=False).groups)
    ncols = min(3, len(cells))
    nrows = -(-len(cells) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.6 * ncols, 3.4 * nrows), squeeze=False,
                             sharey=True)
    for ax, (feedback, level) in zip(axes.flat, cells):
        part = gains[(gains["feedback"] == feedback) & (gains["train_per_user"] == level)]
        part.set_index("sparse_user")[["ours", "reference", "ceiling"]].plot.bar(
            ax=ax, width=0.8, legend=False, color=["C0", "C1", "0.75"])
        ax.axhline(0, color="k", lw=0.8)
        ax.tick_params(axis="x", labelrotation=0, labelsize=8)
        ax.set_title(f"{feedback}, {level} per sparse user\n(minus "
                     f"{part['strongest_baseline'].iloc[0]})", fontsize=10)
        ax.set_xlabel(f"sparse user (quality weight p: {min(PAPER_PS)} to {max(PAPER_PS)})",
                      fontsize=9)
        ax.set_ylabel("reward minus the strongest baseline" if ax in axes[:, 0] else "")
    for ax in list(axes.flat)[len(cells):]:
        ax.axis("off")
    fig.suptitle("Each simulated user sparse in turn among eight dense ones (mean over report "
                 "seeds)", fontsize=11)
    first = axes.flat[0]
    first.legend(first.containers, ["ours", "structured reference", "ceiling (reads test labels)"],
                 fontsize=8)
    fig.tight_layout()
    return fig


def findings(checks: pd.DataFrame, table: pd.DataFrame, seeds, n_users: int) -> str:
    """The paragraph the README shows: each rotated cell's verdicts."""
    fixed = ", fixed before the run" if sorted(seeds) == DEFAULT_SEEDS else ""
    lines = [f"Notebook 50's one-sparse-user cells with each of the {n_users} simulated users "
             f"sparse in turn on every report seed ({report.seeds_text(seeds)}{fixed}; "
             "benchmarks/one_sparse_rotated.py; a seed's value is the mean over the sparse "
             "users; ours minus the strongest baseline, paired per seed, 95 % CI):"]
    for c, r in zip(checks.itertuples(), table.itertuples()):
        lines.append(
            f"- {r.feedback}, {r.train_per_user} per sparse user: ours "
            f"{r.ours_minus_baseline:+.4f} [{r.ours_ci_low:+.4f}, {r.ours_ci_high:+.4f}] against "
            f"{r.strongest_baseline}; the reference {r.reference_minus_baseline:+.4f} "
            f"[{r.reference_ci_low:+.4f}, {r.reference_ci_high:+.4f}]; ours {r.ours:.4f}, the "
            f"ceiling {r.ceiling:.4f}, the oracle {r.oracle:.4f}{headroom.verdict_suffix(c)}.")
    lines.append(headroom.verdict_tally(checks))
    return "\n".join(lines)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS,
                        help=f"report seeds (default {DEFAULT_SEEDS[0]}-{DEFAULT_SEEDS[-1]}, "
                             "fixed before the first run)")
    parser.add_argument("--levels", type=int, nargs="+", default=DEFAULT_LEVELS,
                        help="training requests of the sparse user (notebook 50's levels)")
    parser.add_argument("--feedback", choices=FEEDBACKS, nargs="+", default=list(FEEDBACKS))
    parser.add_argument("--jobs", type=int, default=2, help="fits at once")
    parser.add_argument("--routers", nargs="+", default=None,
                        help="router class names (default: notebook 50's sweep; a verdict needs "
                             "ours, the structured reference and the baselines)")
    parser.add_argument("--smoke", action="store_true",
                        help="notebook 50's smoke size, the first two seeds, picks at 5 "
                             "requests only")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds) or len(args.seeds) < 2:
        parser.error("--seeds: give two or more distinct report seeds")
    below = sorted(s for s in args.seeds if s < REPORT_SEEDS[0])
    if below:
        parser.error(f"--seeds: {below} are development seeds; this benchmark reports, on seeds "
                     f"from {REPORT_SEEDS[0]} on (benchmarks/sparse_user_study.py studies "
                     "development seeds)")
    cfg = resolve_config(args.smoke, args.seeds, "auto", max_queries=NOTEBOOK_50["max_queries"])
    seeds = list(args.seeds) if not cfg.smoke else list(args.seeds)[:2]
    router_list = [routers.get_router(r) for r in args.routers] if args.routers else None
    cells = ([("choice", 5)] if cfg.smoke else
             [(f, level) for f in args.feedback for level in args.levels])
    seed_everything(seeds[0])
    t0 = time.perf_counter()
    rows = []
    for feedback, level in cells:
        setting = cell_setting(feedback, level, cfg["max_queries"])
        rows.append(rotated_cell(setting, level, seeds, jobs=args.jobs, progress=True,
                                 router_list=router_list))
    rows = pd.concat(rows, ignore_index=True)
    seed_rows = per_seed(rows, setting.preferences.users["user_id"])
    table = headroom.headroom_table(seed_rows, "reward", routers.PersonalizedRouterV3.name,
                                    reference=routers.StructuredReferenceRouter.name)
    checks = headroom.verdicts(table)
    name = "50_one_sparse_rotated"
    report.save_table(rows[KEPT], f"{name}_per_user", cfg, floatfmt=".5f")
    report.save_table(seed_rows, f"{name}_per_seed", cfg, floatfmt=".5f")
    report.save_table(table, name, cfg, floatfmt=".4f")
    report.save_table(checks, f"{name}_verdicts", cfg, floatfmt=".3f")
    gains = gains_by_user(rows, table)
    report.save_table(gains, f"{name}_by_user", cfg, floatfmt=".4f")
    report.save_figure(gains_figure(gains), name, cfg)
    text = findings(checks, table, seeds, int(seed_rows["n_sparse_users"].iloc[0]))
    report.save_text(text, f"{name}_findings", cfg)
    print(text)
    print(f"{time.perf_counter() - t0:.0f} s")
    return rows, table, checks


if __name__ == "__main__":
    main()
