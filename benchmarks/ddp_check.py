"""The 1-vs-many-process check of data-parallel training (:mod:`prlib.distributed`): ours fitted
on a small LLMRouter setting on one process and under ``torchrun`` give the same numbers.

    python benchmarks/ddp_check.py                              # one process
    torchrun --nproc-per-node 2 benchmarks/ddp_check.py         # two: the same numbers

(A benchmark, not part of the library's import graph: it builds a whole experiment.)
"""

from __future__ import annotations

import argparse
import json

import torch.distributed

from prlib import distributed


def main(argv: list[str] | None = None) -> dict:
    """The 1-vs-many check: fit PersonalizedRouterV2 on a small LLMRouter setting (the nine
    paper users, simulated) with dropout off and print its validation curve and test reward as
    JSON (rank 0). Run it with ``python benchmarks/ddp_check.py`` and with ``torchrun
    --nproc-per-node 2 benchmarks/ddp_check.py``: the same best step and test reward; validation
    checks long after the best step can differ in the third decimal (see the module's note on
    rounding in :mod:`tests.test_distributed`)."""
    parser = argparse.ArgumentParser(description=main.__doc__.split("\n\n")[0])
    parser.add_argument("--queries", type=int, default=300, help="LLMRouter queries (seeded)")
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    distributed.init()
    from prlib import data
    from prlib.experiment import Setting, setting_views
    from prlib.metrics import routing_metrics
    from prlib.routers import PersonalizedRouterV2
    from prlib.simulate import simulate_multi_cost

    bank = data.load_bank("llmrouter").sample_queries(args.queries, seed=0)
    setting = Setting("distributed check", bank, simulate_multi_cost(bank))
    train, val, test = setting_views(setting, args.seed)
    router = PersonalizedRouterV2(setting.feats, seed=args.seed, steps=args.steps,
                                  dropout=0.0).fit(train, val)
    rank, world = distributed.rank_and_world()
    out = {"processes": world, "val_metric": router.log_.val_metric,
           "best_step": router.log_.best_step,
           "test_reward": routing_metrics(test, router.route(test))["reward"]}
    if rank == 0:
        print(json.dumps(out))
    if distributed.is_distributed():
        torch.distributed.destroy_process_group()
    return out


if __name__ == "__main__":
    main()
