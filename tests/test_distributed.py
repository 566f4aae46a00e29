"""Data-parallel training (prlib.distributed): PersonalizedRouterV2 trained on 2 processes
(gloo, CPU) takes the same steps as on 1 process, up to float rounding."""

import socket

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from prlib import distributed
from test_routers import make_feats
from test_studies import _two_archetype_requests

#: 1 vs 2 processes: validation curves within this, the same best step, and test scores within
#: SCORE_TOLERANCE[loss]. The all-reduce sums the shards' gradients in another order than one
#: process does; Adam divides each gradient by its running magnitude, so for parameters whose
#: gradient is near 0 that rounding can flip an update's sign: measured here 2e-7 (utility) and
#: 0.012 (choice: logits are unbounded), against 0.048 and 0.46 when the gradients are not
#: synchronised at all.
VAL_TOLERANCE = 1e-5
SCORE_TOLERANCE = {"utility": 1e-4, "choice": 0.05}


LOSSES = ("utility", "choice")


def _fit_once(loss: str):
    """Validation curve, best step and test scores of a small v2 fit without dropout."""
    from prlib.requests import choice_only
    from prlib.routers import PersonalizedRouterV2

    req = _two_archetype_requests(same_taste=False)  # a bank on which training moves weights
    train, val = req.split("train"), req.split("val")
    if loss == "choice":
        train, val = choice_only(train), choice_only(val)
    router = PersonalizedRouterV2(make_feats(), seed=0, steps=60, batch_size=32, eval_every=10,
                                  dropout=0.0, loss=loss).fit(train, val)
    return router.log_.val_metric, router.log_.best_step, router.scores(req.split("test"))


def _rank(rank: int, world: int, port: int, out):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world)
    assert distributed.rank_and_world() == (rank, world)
    results = [_fit_once(loss) for loss in LOSSES]
    if rank == 0:
        out.put(results)
    dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_processes_train_as_one():
    """Both losses (utility regression, choice cross-entropy): the parent fits on one process,
    two spawned processes fit together; curves, best step and test scores agree."""
    ctx = mp.get_context("spawn")
    out, port = ctx.Queue(), _free_port()
    procs = [ctx.Process(target=_rank, args=(r, 2, port, out)) for r in range(2)]
    for p in procs:
        p.start()
    single = [_fit_once(loss) for loss in LOSSES]  # meanwhile, here on one process
    two = out.get(timeout=300)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert not distributed.is_distributed()  # the parent stays a single process
    for loss, (val_1, best_1, scores_1), (val_2, best_2, scores_2) in zip(LOSSES, single, two):
        assert len(val_1) > 2 and best_1 > 0, loss  # the selected weights are trained ones
        np.testing.assert_allclose(val_2, val_1, atol=VAL_TOLERANCE, err_msg=loss)
        assert best_2 == best_1, loss
        finite = np.isfinite(scores_1)
        assert (finite == np.isfinite(scores_2)).all(), loss
        np.testing.assert_allclose(scores_2[finite], scores_1[finite], atol=SCORE_TOLERANCE[loss],
                                   err_msg=loss)
