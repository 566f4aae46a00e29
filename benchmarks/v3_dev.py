"""PersonalizedRouter v3 on development seeds: the sparse-user sweep of the headroom issue.

Nine multi-cost users (p = 0.2 ... 1.0) on 3,000 LLMRouter queries, with revealed utilities
(``simulate_multi_cost(bank)``) and with noisy choice-only feedback
(``simulate_multi_cost(bank, temperature=0.05, seed=0)``, ``feedback="choice"``), for training
requests per user in {1, 3, 5, 20, all}. Fast routers (ours and the lookup-style baselines) go
through ``tune_and_run`` (grid chosen on development seed 0); slow torch routers (v2, the
released design) run at their default parameters (``--slow``). Prints the mean test reward per
cell and router, and ours minus the strongest baseline (paired over seeds, 95 % CI); where a
structured reference is registered, also its lead and the share of it that ours takes.
Development seeds only: this script refuses report seeds.

    PYTHONPATH=$PWD nice -n 5 .venv/bin/python benchmarks/v3_dev.py --out /tmp/v3_dev.csv
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

from prlib import simulate
from prlib.config import REPORT_SEEDS
from prlib.data import load_bank
from prlib.experiment import Setting, run_setting, tune_and_run
from prlib.metrics import paired_difference
from prlib.routers import PersonalizedRouterV3, RouterError, get_router

OURS = PersonalizedRouterV3.__name__
FAST = ["BestSingleRouter", "CheapestRouter", "BestPerUserTaskRouter", "PerUserKNNRouter"]
SLOW = ["PersonalizedRouterV2", "ReferenceDesignRouter"]
#: names the structured reference may be registered under (main's prlib/routers/reference.py)
REFERENCES = ["StructuredReferenceRouter", "StructuredReference", "Structured reference"]
NOT_BASELINES = {"PersonalizedRouter v2 (graph network)"}


def reference_classes() -> list[str]:
    out = []
    for key in REFERENCES:
        try:
            out.append(get_router(key).__name__)
        except RouterError:
            pass
    return sorted(set(out))


def settings(n_queries: int, temperature: float = 0.05) -> dict[str, Setting]:
    bank = load_bank("llmrouter").sample_queries(n_queries, seed=0)
    util = Setting("multi-cost utilities", bank, simulate.simulate_multi_cost(bank))
    feats = util.feats
    choice = Setting("multi-cost choices", bank,
                     simulate.simulate_multi_cost(bank, temperature=temperature, seed=0),
                     feedback="choice", metric="reward", features=feats)
    return {"utility": replace(util, features=feats), "choice": choice}


def summarise(res: pd.DataFrame, refs: list[str]) -> dict:
    """Ours minus the strongest baseline (paired over seeds) and the reference's lead."""
    ref_names = {get_router(r).name for r in refs}
    ours = PersonalizedRouterV3.name
    means = res.groupby("router")["reward"].mean()
    base_names = [r for r in means.index if r not in ref_names | NOT_BASELINES | {ours}
                  and not r.startswith(("Oracle", "Ceiling"))]
    best = means[base_names].idxmax()
    per_seed = res.pivot_table(index="seed", columns="router", values="reward")
    d = paired_difference(per_seed[ours].to_numpy(), per_seed[best].to_numpy())
    row = {"ours": means[ours], "best_baseline": best, "baseline": means[best],
           "ours_minus_best": d["mean"], "ci_low": d["ci_low"], "ci_high": d["ci_high"]}
    ceiling = [r for r in means.index if r.startswith("Ceiling")]
    if ceiling:
        row["ceiling"] = means[ceiling[0]]
    for r in ref_names:
        dr = paired_difference(per_seed[r].to_numpy(), per_seed[best].to_numpy())
        row.update({"reference": means[r], "ref_minus_best": dr["mean"],
                    "ref_ci_low": dr["ci_low"], "ref_ci_high": dr["ci_high"],
                    "share_of_ref_lead": (d["mean"] / dr["mean"] if dr["mean"] > 0
                                          else float("nan"))})
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--n", nargs="+", default=["1", "3", "5", "20", "all"])
    ap.add_argument("--feedback", nargs="+", default=["utility", "choice"])
    ap.add_argument("--slow", action="store_true", help="also v2 and the released design "
                    "(default parameters)")
    ap.add_argument("--queries", type=int, default=3000)
    ap.add_argument("--temperature", type=float, default=0.05,
                    help="softmax temperature of the choice-only users' picks (0: argmax)")
    ap.add_argument("--out", type=Path, default=Path("v3_dev.csv"))
    args = ap.parse_args()
    if set(args.seeds) & set(REPORT_SEEDS):
        raise SystemExit(f"report seeds {sorted(set(args.seeds) & set(REPORT_SEEDS))} are not "
                         "for design: use development seeds")
    refs = reference_classes()
    fast = [OURS, *FAST, *refs, "CeilingRouter"]
    sets = settings(args.queries, args.temperature)
    frames, summary = [], []
    for fb in args.feedback:
        for n in args.n:
            s = replace(sets[fb], train_per_user=None if n == "all" else int(n),
                        name=f"{sets[fb].name}, {n} per user")
            t0 = time.perf_counter()
            tuning, res = tune_and_run(s, args.seeds, routers=fast)
            parts = [res]
            if args.slow:
                parts.append(run_setting(s, SLOW, args.seeds))
            res = pd.concat(parts, ignore_index=True).assign(feedback=fb, n=n)
            frames.append(res)
            pd.concat(frames).to_csv(args.out, index=False)
            row = {"feedback": fb, "n": n, **summarise(res, refs),
                   "ours_point": str(tuning.chosen.get(OURS)),
                   "ours_fit_s": res.loc[res["router"] == PersonalizedRouterV3.name,
                                         "fit_s"].mean(),
                   "cell_s": time.perf_counter() - t0}
            summary.append(row)
            means = res.groupby("router", sort=False)["reward"].mean()
            print(f"\n== {fb}, {n} per user ({row['cell_s']:.0f} s); ours' point "
                  f"{row['ours_point']}, fit {row['ours_fit_s']:.2f} s")
            print(means.to_string(float_format=lambda v: f"{v:.4f}"))
            print(f"ours - {row['best_baseline']}: {row['ours_minus_best']:+.4f} "
                  f"[{row['ci_low']:+.4f}, {row['ci_high']:+.4f}]", flush=True)
            pd.DataFrame(summary).to_csv(args.out.with_name(args.out.stem + "_summary.csv"),
                                         index=False)
    print("\n" + pd.DataFrame(summary).to_string(index=False, float_format=lambda v: f"{v:.4f}"))


if __name__ == "__main__":
    main()
