"""A tiny multi-turn world for the GMTRouter tests: random features, hand-made ratings."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from prlib.bank import turn_query_id
from prlib.features import NodeFeatures
from prlib.requests import Requests, with_previous_turn


def toy_world(n_users: int = 6, n_conv: int = 12, n_llms: int = 5, seed: int = 0,
              carry: float = 0.8):
    """(feats, requests), the same for one ``seed`` in every process: every user rates every LLM at
    both turns of every conversation;
    users have a taste vector over LLMs, turn 2 carries ``carry`` x the turn-1 rating."""
    rng = np.random.default_rng(seed)
    gen = torch.Generator().manual_seed(seed)
    randn = lambda *shape: torch.randn(*shape, generator=gen)  # noqa: E731
    qids = [turn_query_id(f"c{c}", t) for c in range(n_conv) for t in (1, 2)]
    feats = NodeFeatures(qids, randn(len(qids), 385), ["default"], randn(1, 384),
                         [f"m{j}" for j in range(n_llms)], randn(n_llms, 386),
                         randn(len(qids), n_llms, 384),
                         torch.ones(len(qids), n_llms, dtype=torch.bool))
    taste = rng.normal(size=(n_users, n_llms))
    rows, util = [], []
    for u in range(n_users):
        for c in range(n_conv):
            r1 = taste[u] + 0.3 * rng.normal(size=n_llms)
            r2 = 0.5 * taste[u] + carry * r1 + 0.3 * rng.normal(size=n_llms)
            for t, r in ((1, r1), (2, r2)):
                rows.append({"user_id": f"u{u}", "query_id": turn_query_id(f"c{c}", t),
                             "task": "default",
                             "split": "train" if c < n_conv - 4 else ("val" if c < n_conv - 2
                                                                      else "test")})
                util.append(r)
    util = np.array(util)
    req = Requests(pd.DataFrame(rows), feats.llms, util, util.argmax(1))
    prev = {turn_query_id(f"c{c}", 2): turn_query_id(f"c{c}", 1) for c in range(n_conv)}
    return feats, with_previous_turn(req, prev)
