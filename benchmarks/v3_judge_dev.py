"""PersonalizedRouter v3 with persona-judge users (choice-only feedback), development seeds.

arena-bench-v1 (300 prompts x 16 LLMs with answer texts) and the nine offline persona judges of
``simulate.simulate_judge``: every router learns from picks only; the table gives the test
accuracy (predicting the persona's pick) and the mean hidden persona score of the picks
(``reward``), mean over seeds, with ours minus the strongest baseline (paired, 95 % CI).
Development seeds only.

    PYTHONPATH=$PWD nice -n 5 .venv/bin/python benchmarks/v3_judge_dev.py
"""

from __future__ import annotations

import argparse

from prlib import simulate
from prlib.data import load_bank
from prlib.experiment import Setting, tune_and_run
from prlib.report import improvement

ROUTERS = ["PersonalizedRouterV3", "BestSingleRouter", "BestPerUserRouter",
           "BestPerUserTaskRouter", "PerUserKNNRouter", "CeilingRouter"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--train-per-user", type=int, default=None)
    args = ap.parse_args()
    bank = load_bank("arena-bench-v1")
    setting = Setting("judge · arena-bench-v1", bank, simulate.simulate_judge(bank),
                      feedback="choice", metric="accuracy",
                      train_per_user=args.train_per_user)
    tuning, res = tune_and_run(setting, args.seeds, routers=ROUTERS)
    print(res.groupby("router", sort=False)[["accuracy", "reward", "fit_s"]].mean()
          .to_string(float_format=lambda v: f"{v:.4f}"))
    print("ours' point:", tuning.chosen.get("PersonalizedRouterV3"))
    for metric in ("accuracy", "reward"):
        imp = improvement(res, metric, "PersonalizedRouter v3 (ours)")
        print(f"{metric}: ours - {imp['strongest_baseline']}: {imp['diff_mean']:+.4f} "
              f"[{imp['diff_ci_low']:+.4f}, {imp['diff_ci_high']:+.4f}]")


if __name__ == "__main__":
    main()
