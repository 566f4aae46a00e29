"""Benchmark (not a timed test): ours on PersonaRoute-Bench with 100, 1,000 and 10,000 users.

Each point generates a bench of that many simulated multi-cost users (100 queries each, at most
``--train-per-user`` training requests), fits ours on the split of development seed 0 and times
it, in its own process with one torch thread (:func:`prlib.personaroute.scaling_study`): seconds
per step and to the stop, the fit's memory increase and the process's peak memory, batched
throughput and single-request latency. Writes ``figures/95_scaling_benchmark.json``; notebook 95
adds the points it does not measure itself (the 10,000-user one) to its scaling figure.

Run: ``python benchmarks/bench_scaling.py`` (about 10 minutes on 2 CPU cores, 8 GB of memory at
10,000 users).
"""

from __future__ import annotations

import argparse
import json
import os

from prlib.config import REPO_ROOT
from prlib.efficiency import machine
from prlib.personaroute import scaling_study
from prlib.routers import PersonalizedRouterV3, get_router


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--users", type=int, nargs="+", default=[100, 1000, 10000])
    parser.add_argument("--train-per-user", type=int, default=20)
    parser.add_argument("--router", default=PersonalizedRouterV3.__name__,
                        help="a registered router class (default: ours)")
    parser.add_argument("--steps", type=int, default=1000,
                        help="step budget of a torch router (others take none)")
    parser.add_argument("--calls", type=int, default=1000, help="single-request calls timed")
    parser.add_argument("--out", default=str(REPO_ROOT / "figures" / "95_scaling_benchmark.json"))
    args = parser.parse_args(argv)
    load_before = os.getloadavg()[0]
    cls = get_router(args.router)
    params = {"steps": args.steps} if "torch" in cls.tags else {}
    frame = scaling_study(args.users, router=cls.__name__, train_per_user=args.train_per_user,
                          params=params, calls=args.calls, progress=True)
    result = {"what": f"{cls.name} (default hyper-parameters; a torch router at most --steps "
                      "steps with early stopping) on PersonaRoute-Bench multi-cost users, split "
                      "of seed 0, one process per point, one torch thread",
              "train_per_user": args.train_per_user, **machine(),
              "load_average_1min_before": round(load_before, 2),
              "points": frame.to_dict(orient="records")}
    with open(args.out, "w") as f:
        f.write(json.dumps(result, indent=1) + "\n")
    print(frame.to_string())
    return result


if __name__ == "__main__":
    main()
