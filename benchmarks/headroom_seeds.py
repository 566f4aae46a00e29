"""Benchmark (not a timed test): notebook 50's nine-user sweep over more report seeds.

Notebook 50 runs its nine-user sweep (revealed utilities, noisy picks, one sparse user among
eight dense; every router of the sweep, each level tuned on development seed 0) over the five
report seeds 100-104, within the main job's hour. Five seeds leave a paired 95 % CI of about
+-0.01 reward (t with 4 degrees of freedom: 2.78 standard errors), as wide as the headroom a
router can take in the sparsest cells. This script runs the same sweep (the same code:
:func:`prlib.headroom.nine_user_sweep`) over more report seeds, 100-109 by default, which also
makes each of the nine users the sparse one once or more in the one-sparse-user cells; fits
already in the fit cache (a ``make run`` of the same code on this machine) are read, not
repeated, so after one it fits only the new seeds. Writes ``figures/50_headroom_N_seeds``
(:func:`prlib.headroom.headroom_table`), ``50_verdicts_N_seeds``
(:func:`prlib.headroom.verdicts`), ``50_sweep_N_seeds_per_seed`` and the paragraph
``50_headroom_N_seeds_findings`` (N: the number of seeds). All users are **simulated**.

Run: ``python benchmarks/headroom_seeds.py`` (about 10 minutes on 2 CPU cores after a
``make run``, about 20 without); ``--smoke`` (or ``PRLIB_SMOKE=1``): notebook 50's smoke sizes,
into ``build/smoke-figures/``.
"""

from __future__ import annotations

import argparse
import time

from prlib import headroom, report, routers
from prlib.config import REPORT_SEEDS, resolve_config, seed_everything
from prlib.data import load_bank

#: notebook 50's parameters of its nine-user sweep (its first cell)
NOTEBOOK_50 = {"max_queries": 3000, "steps": 1000, "tune_seeds": [0], "grid_points": 4,
               "sweep_levels": [1, 3, 5, 10, 20, None], "one_sparse_levels": [1, 5, 20]}
DEFAULT_SEEDS = list(REPORT_SEEDS) + list(range(REPORT_SEEDS[-1] + 1, REPORT_SEEDS[-1] + 6))


def findings(checks, table, seeds) -> str:
    """The paragraph the README shows: each cell's verdicts."""
    lines = [f"Notebook 50's nine-user sweep over {len(seeds)} report seeds "
             f"({report.seeds_text(seeds)}; benchmarks/headroom_seeds.py; simulated users; ours "
             "minus the strongest baseline, paired per seed, 95 % CI):"]
    for c, r in zip(checks.itertuples(), table.itertuples()):
        who = "one sparse user among dense, " if "one sparse" in r.setting else ""
        ref = (f"; the reference {r.reference_minus_baseline:+.3f} "
               f"[{r.reference_ci_low:+.3f}, {r.reference_ci_high:+.3f}]")
        lines.append(f"- {who}{r.feedback}, {r.train_per_user} per user: ours "
                     f"{r.ours_minus_baseline:+.3f} [{r.ours_ci_low:+.3f}, {r.ours_ci_high:+.3f}]"
                     f" against {r.strongest_baseline}{ref}{headroom.verdict_suffix(c)}.")
    lines.append(headroom.verdict_tally(checks))
    return "\n".join(lines)


def main(argv: list[str] | None = None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=DEFAULT_SEEDS,
                        help=f"report seeds (default {DEFAULT_SEEDS[0]}-{DEFAULT_SEEDS[-1]})")
    parser.add_argument("--jobs", type=int, default=2,
                        help="fits at once, one process and one torch thread each (as notebook "
                             "50: the same fit cache keys)")
    parser.add_argument("--smoke", action="store_true", help="notebook 50's smoke sizes")
    args = parser.parse_args(argv)
    if len(set(args.seeds)) != len(args.seeds) or len(args.seeds) < 2:
        parser.error("--seeds: give two or more distinct report seeds")
    if set(args.seeds) & set(NOTEBOOK_50["tune_seeds"]):
        parser.error(f"--seeds: {NOTEBOOK_50['tune_seeds']} tune the routers; report seeds "
                     "must differ from them")
    cfg = resolve_config(args.smoke, args.seeds, "auto", **NOTEBOOK_50)
    seeds = list(args.seeds) if not cfg.smoke else cfg.seeds
    seed_everything(seeds[0])
    params = {c.__name__: {"steps": cfg["steps"]} for c in routers.registered()
              if "torch" in c.tags}
    t0 = time.perf_counter()
    bank = load_bank("llmrouter").sample_queries(cfg["max_queries"], seed=0)
    results, _, _ = headroom.nine_user_sweep(
        bank, seeds, params, cfg["tune_seeds"], cfg["sweep_levels"], cfg["one_sparse_levels"],
        jobs=args.jobs, max_points=cfg["grid_points"], progress=True)
    name = f"{len(seeds)}_seeds"
    table = headroom.headroom_table(results, "reward", routers.PersonalizedRouterV3.name,
                                    reference=routers.StructuredReferenceRouter.name)
    checks = headroom.verdicts(table)
    report.save_table(results, f"50_sweep_{name}_per_seed", cfg, floatfmt=".5f")
    report.save_table(table, f"50_headroom_{name}", cfg, floatfmt=".4f")
    report.save_table(checks, f"50_verdicts_{name}", cfg, floatfmt=".3f")
    text = findings(checks, table, seeds)
    report.save_text(text, f"50_headroom_{name}_findings", cfg)
    print(text)
    print(f"{time.perf_counter() - t0:.0f} s")
    return table, checks


if __name__ == "__main__":
    main()
