"""Hyper-parameters validated by value: what values each accepts (:class:`Param`), the
constraints shared by name across routers (:data:`COMMON_PARAMS`); a router adds its own in
``Router.constraints``."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Param:
    """What values a hyper-parameter accepts: a ``kind`` (int, float, bool or str), and bounds
    (``low`` / ``high``, open where ``low_open`` / ``high_open``) or ``choices``."""

    kind: type
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()

    def problem(self, value) -> str | None:
        """Why ``value`` is not accepted, or ``None``."""
        if self.choices:
            cuda_n = ("cuda" in self.choices and isinstance(value, str)
                      and value.startswith("cuda:") and value[5:].isdigit())
            return None if value in self.choices or cuda_n else f"must be one of {self.choices}"
        if self.kind is bool:
            return None if isinstance(value, (bool, np.bool_)) else "must be True or False"
        ok_types = (int, np.integer) if self.kind is int else (int, float, np.integer, np.floating)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, ok_types):
            return f"must be {'an integer' if self.kind is int else 'a number'}"
        if not np.isfinite(value):
            return "must be finite"
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return f"must be {'>' if self.low_open else '>='} {self.low}"
        if self.high is not None and (value >= self.high if self.high_open else value > self.high):
            return f"must be {'<' if self.high_open else '<='} {self.high}"
        return None

    def invalid_example(self):
        """A value this constraint refuses (for the generic router checks)."""
        if self.choices:
            return "not-a-choice"
        if self.kind is bool:
            return "yes"
        return (self.low - 1) if self.low is not None else float("nan")


def positive(kind: type = int) -> Param:
    """> 0 (integers: >= 1)."""
    return Param(kind, 1) if kind is int else Param(kind, 0, low_open=True)


def non_negative(kind: type = float) -> Param:
    return Param(kind, 0)


def one_of(*choices) -> Param:
    return Param(str, choices=tuple(choices))


#: Constraints of hyper-parameters shared by name across routers (a router adds its own in
#: ``constraints``); every hyper-parameter of a registered router has one (tested).
COMMON_PARAMS: dict[str, Param] = {
    "steps": positive(), "hidden": positive(), "lr": positive(float),
    "weight_decay": non_negative(), "batch_size": positive(), "eval_every": positive(),
    "patience": positive(), "k": positive(), "k_small": positive(),
    "dropout": Param(float, 0, 1, high_open=True), "hide_share": Param(float, 0, 1, True, True),
    "C": positive(float), "layers": non_negative(int), "heads": positive(), "threads": positive(),
    "user_dim": positive(), "tau": positive(float), "top_k": positive(), "n_clusters": positive(),
    "cluster_weight": non_negative(), "cluster_batch": positive(), "llm_bias": Param(bool),
    "max_chain": positive(), "ridge_alpha": non_negative(), "context_per_user": positive(),
    "targets_per_user": positive(), "use_utility": Param(bool), "attention": Param(bool),
    "retrieval": Param(bool), "profile_stats": Param(bool), "multi_turn": Param(bool),
    "user_context": positive(), "pool_context": positive(),
    "device": Param(str, choices=("auto", "cpu", "cuda")),
}
