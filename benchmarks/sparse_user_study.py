"""Study (development seeds, not a timed test): who the one sparse user is, and what it does to
the CI of notebook 50's one-sparse-user cells.

Notebook 50's "one sparse user among dense" cells thin one user (a different one per seed, by
rotation: :func:`prlib.experiment.sparse_users_of`) to a few training requests and score that
user alone. Over ten report seeds each of the nine **simulated** multi-cost users is the sparse
one about once, so a paired CI there mixes two things: how much a router gains on a user, and
how much that gain differs from one user to another. This study fits ours, the structured
reference and the cell's strongest baseline on **development** seeds (1-27 by default: every
user three times; no report seed, nor notebook 50's tuning seed 0) at one cell and writes, per
seed and per sparse user, each router's reward (true utilities) on that user's validation
requests (the split a design decision may read) and test requests, with the grid point notebook
50 chose for the cell (``figures/50_tuning_sweep.csv``) and the strongest baseline its report
table names (``figures/50_headroom.csv``); beside them the ceiling (best LLM per user and task
on the scored requests' utilities) and the oracle, on the same requests.

Writes ``figures/50_sparse_user_study`` (per seed and router), ``50_sparse_user_study_by_user``
(per sparse user: each router's mean reward, and ours and the reference minus the baseline) and
the paragraph ``50_sparse_user_study_findings``.

Run: ``python benchmarks/sparse_user_study.py`` (about 80 s on 2 CPU cores; ``--level 20``,
``--feedback utility``: other cells); ``--smoke``: two seeds at notebook 50's smoke size, into
``build/smoke-figures/``.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import replace

import pandas as pd
from tqdm.auto import tqdm

from headroom_seeds import NOTEBOOK_50
from prlib import headroom, report, routers
from prlib.config import REPO_ROOT, REPORT_SEEDS, resolve_config
from prlib.data import load_bank
from prlib.experiment import fit_checked, setting_views, sparse_users_of, test_metric
from prlib.metrics import paired_difference
from prlib.routers.base import reward_of
from prlib.routers.reference import CeilingRouter
from prlib.routers.simple import OracleRouter

OURS = routers.PersonalizedRouterV3
REFERENCE = routers.StructuredReferenceRouter
#: the bounds beside the routers (they read the scored requests' labels)
BOUNDS = {"ceiling": CeilingRouter, "oracle": OracleRouter}
#: development seeds 1-27: each of the nine users sparse three times (seed 0 tunes notebook 50)
DEFAULT_SEEDS = list(range(1, 28))


def cell_choices(setting, level: int, figures=REPO_ROOT / "figures") -> tuple[str, dict]:
    """``(strongest baseline's name, {router name: chosen grid point})`` of notebook 50's cell
    ``setting`` (its name and feedback) at ``level``, from its full run's tables."""
    def cell(frame):
        return ((frame["setting"] == setting.name) & (frame["feedback"] == setting.feedback)
                & (frame["train_per_user"] == str(level)))

    table = pd.read_csv(figures / "50_headroom.csv", dtype={"train_per_user": str})
    row = table[cell(table)]
    if row.empty:
        levels = sorted(set(table.loc[table["setting"] == setting.name, "train_per_user"]))
        raise ValueError(f"notebook 50 has no cell {setting.name!r} at {level} requests per user "
                         f"with {setting.feedback} feedback (its levels: {levels})")
    tuning = pd.read_csv(figures / "50_tuning_sweep.csv", dtype={"train_per_user": str})
    chosen = tuning[cell(tuning) & tuning["chosen"]]
    return row["strongest_baseline"].iloc[0], {r.router: json.loads(r.point)
                                               for r in chosen.itertuples()}


def cell_setting(feedback: str, level: int, max_queries: int):
    """Notebook 50's one-sparse-user setting with ``feedback`` at ``level`` requests per user,
    on its LLMRouter sample of ``max_queries`` queries (simulated multi-cost users)."""
    bank = load_bank("llmrouter").sample_queries(max_queries, seed=0)
    _, _, one_sparse = headroom.nine_user_settings(bank)
    return replace(one_sparse[feedback], train_per_user=level)


def study(setting, seeds, names: dict[str, str | type], params: dict[str, dict]) -> pd.DataFrame:
    """Per seed and router (``names``: role -> router display name or class): the sparse user
    and the router's reward on that user's validation and test requests (true utilities)."""
    rows = []
    for seed in tqdm(seeds, desc="seeds"):
        user, = sparse_users_of(setting.preferences.users["user_id"], setting.sparse_users, seed)
        _, val_true, _ = setting_views(setting, seed, raw=True)
        val_user = val_true.select(val_true.frame["user_id"].to_numpy() == user)
        for role, name in names.items():
            cls = routers.get_router(name)
            steps = {"steps": NOTEBOOK_50["steps"]} if "torch" in cls.tags else {}
            router, (_, _, test) = fit_checked(cls, setting, seed,
                                               {**steps, **params.get(cls.name, {})})
            label = cls.row_name(setting.feedback, setting.preferences.strategy)
            rows.append({"seed": seed, "sparse_user": user, "role": role, "router": label,
                         "val_reward": reward_of(val_user, router.scores(val_user)),
                         "test_reward": test_metric(setting, router, test, "reward")})
    return pd.DataFrame(rows)


def summary(results: pd.DataFrame) -> tuple[pd.DataFrame, dict]:
    """Ours and the reference minus the baseline per seed: means per sparse user, and paired
    differences (95 % CI over the seeds) of each on validation and test."""
    wide = results.pivot_table(index=["seed", "sparse_user"], columns="role",
                               values=["val_reward", "test_reward"])
    diffs, stats = {}, {}
    for split in ("val_reward", "test_reward"):
        for role in ("ours", "reference"):
            diffs[f"{role} - baseline ({split[:-7]})"] = wide[split][role] - wide[split]["baseline"]
            stats[f"{role} - baseline ({split[:-7]})"] = paired_difference(
                wide[split][role], wide[split]["baseline"])
        stats[f"ours - reference ({split[:-7]})"] = paired_difference(
            wide[split]["ours"], wide[split]["reference"])
    means = wide["val_reward"].groupby(level="sparse_user").mean().add_suffix(" (val)")
    by_user = pd.concat([means, pd.DataFrame(diffs).groupby(level="sparse_user").mean()],
                        axis=1).reset_index()
    return by_user, stats


def findings(stats: dict, by_user: pd.DataFrame, level: int, feedback: str, baseline: str,
             seeds) -> str:
    """The paragraph: the paired differences over the seeds and their spread across users."""
    lines = [f"One sparse user among dense, {feedback}, {level} per user, development seeds "
             f"{report.seeds_text(seeds)} ({len(seeds)} seeds; benchmarks/sparse_user_study.py; "
             f"simulated users; against {baseline}, paired per seed, 95 % CI):"]
    for key, s in stats.items():
        lines.append(f"- {key}: {s['mean']:+.4f} [{s['ci_low']:+.4f}, {s['ci_high']:+.4f}]")
    col = "ours - baseline (val)"
    lo, hi = by_user.loc[by_user[col].idxmin()], by_user.loc[by_user[col].idxmax()]
    lines.append(f"- Ours minus the baseline on validation, mean per sparse user, ranges from "
                 f"{lo[col]:+.4f} ({lo['sparse_user']}) to {hi[col]:+.4f} ({hi['sparse_user']}); "
                 f"the reference's from {by_user['reference - baseline (val)'].min():+.4f} to "
                 f"{by_user['reference - baseline (val)'].max():+.4f}.")
    means = by_user.mean(numeric_only=True)
    lines.append(f"- Mean validation reward: ours {means['ours (val)']:.4f}, the reference "
                 f"{means['reference (val)']:.4f}, the baseline {means['baseline (val)']:.4f}; "
                 f"the ceiling {means['ceiling (val)']:.4f}, the oracle "
                 f"{means['oracle (val)']:.4f}.")
    return "\n".join(lines)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--level", type=int, default=5,
                        help="training requests of the sparse user (a level of notebook 50's "
                             "one-sparse-user cells: 1, 5 or 20)")
    parser.add_argument("--feedback", choices=("choice", "utility"), default="choice")
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS,
                        help="development seeds (default 1-27: each of the nine users 3 times)")
    parser.add_argument("--smoke", action="store_true", help="two seeds, smoke size")
    args = parser.parse_args(argv)
    reported = sorted(s for s in set(args.seeds) if s >= REPORT_SEEDS[0])
    if reported:
        parser.error(f"--seeds: {reported} are report seeds (from {REPORT_SEEDS[0]} on: notebook "
                     "50 and benchmarks/headroom_seeds.py report them); a design study reads "
                     "development seeds only")
    if set(args.seeds) & set(NOTEBOOK_50["tune_seeds"]):
        parser.error(f"--seeds: {NOTEBOOK_50['tune_seeds']} chose notebook 50's grid points; "
                     "give other development seeds")
    if len(set(args.seeds)) < 2:
        parser.error("--seeds: give two or more distinct development seeds")
    cfg = resolve_config(args.smoke, args.seeds, "auto", max_queries=NOTEBOOK_50["max_queries"])
    seeds = sorted(set(args.seeds))[:2] if cfg.smoke else sorted(set(args.seeds))
    if not cfg.smoke and len(seeds) % 9:
        print(f"note: {len(seeds)} seeds do not make every one of the nine users sparse equally "
              "often (a multiple of 9 does)")
    t0 = time.perf_counter()
    setting = cell_setting(args.feedback, args.level, cfg["max_queries"])
    baseline, chosen = cell_choices(setting, args.level)
    names = {"ours": OURS, "reference": REFERENCE, "baseline": baseline, **BOUNDS}
    results = study(setting, seeds, names, chosen)
    by_user, stats = summary(results)
    name = "50_sparse_user_study"
    report.save_table(results.assign(level=args.level, feedback=args.feedback), name, cfg,
                      floatfmt=".4f")
    report.save_table(by_user, f"{name}_by_user", cfg, floatfmt=".4f")
    text = findings(stats, by_user, args.level, args.feedback, baseline, seeds)
    report.save_text(text, f"{name}_findings", cfg)
    print(text)
    print(f"{time.perf_counter() - t0:.0f} s")
    return results, by_user, stats


if __name__ == "__main__":
    main()
