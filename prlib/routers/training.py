"""The one training loop of every torch router: Adam, validation checks, early stopping, and
the validation-best weights reloaded before anything is scored on test."""

from __future__ import annotations

import copy
from contextlib import nullcontext
from typing import Callable

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from prlib.config import resolve_device, seed_everything
from prlib.requests import Requests
from prlib.routers.base import (NEG, History, Router, candidates, one_of,
                                query_embeddings, reward_of)


def train_module(module: torch.nn.Module, step_loss: Callable[[], torch.Tensor],
                 val_metric: Callable[[], float], *, steps: int, lr: float,
                 weight_decay: float = 0.0, eval_every: int = 10, patience: int = 8,
                 min_delta: float = 1e-9, progress: bool = False,
                 desc: str = "train", check_at_start: bool = False) -> History:
    """Train ``module`` in place and reload its validation-best weights.

    ``step_loss()`` computes one mini-batch loss (the module is in train mode); every
    ``eval_every`` steps and at the last step ``val_metric()`` is computed in eval mode without
    gradients. Training stops after ``patience`` checks without an improvement of more than
    ``min_delta``; the weights of the best check are then loaded back into ``module``. With
    ``check_at_start`` the untrained weights are checked too (step 0), so a module initialised
    at a sound solution is kept when training does not beat it on validation.
    """
    opt = torch.optim.Adam(module.parameters(), lr=lr, weight_decay=weight_decay)
    log = History()
    best, best_state, wait = -np.inf, None, 0
    bar = tqdm(range(1, steps + 1), desc=desc, disable=not progress, leave=False, mininterval=10)
    if check_at_start:
        module.eval()
        with torch.no_grad():
            metric = float(val_metric())
        log.step.append(0)
        log.train_loss.append(float("nan"))
        log.val_metric.append(metric)
        if np.isfinite(metric):
            best, best_state, log.best_step = metric, copy.deepcopy(module.state_dict()), 0
    for step in bar:
        module.train()
        loss = step_loss()
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % eval_every and step != steps:
            continue
        module.eval()
        with torch.no_grad():
            metric = float(val_metric())
        log.step.append(step)
        log.train_loss.append(float(loss.detach()))
        log.val_metric.append(metric)
        bar.set_postfix(loss=f"{log.train_loss[-1]:.3f}", val=f"{metric:.4f}")
        if metric > best + min_delta:
            best, best_state, wait, log.best_step = (
                metric, copy.deepcopy(module.state_dict()), 0, step)
        else:
            wait += 1
            if wait >= patience:
                break
    if best_state is None:
        raise RuntimeError(f"{desc}: no validation check gave a finite metric "
                           f"({log.val_metric}); check the validation requests")
    module.load_state_dict(best_state)  # the validation-selected checkpoint
    module.eval()
    return log


class TorchRouter(Router):
    """Base of the torch baselines: a module trained by :func:`train_module` on mini-batches of
    training requests, selected on validation reward.

    Subclasses implement ``_make_net()`` (the module, from ``feats`` and fitted state only, so
    :meth:`load` can rebuild it) and ``_forward(requests)`` ((n, n_llms) tensor); they may set
    fitted state from the training data in ``_prepare(train)``. The hyper-parameter ``loss`` is
    ``"ce"`` (softmax over candidates on the chosen LLM) or ``"mse"`` (utilities of candidates);
    ``_loss`` may be overridden.

    ``device`` (``"auto"``: CUDA when present, else CPU): the module and every tensor made while
    fitting and scoring live there (the fit and the scoring run under ``torch.device(device)``,
    so tensors that subclasses make with ``torch.tensor`` / ``as_tensor`` / ``arange`` land on
    it; feature tensors are moved with :meth:`_on_device`); scores come back as NumPy arrays.
    On CPU nothing changes.
    """

    selection = "early stopping (validation-best checkpoint)"
    relative_fit_time = 5.0
    constraints = {"loss": one_of("ce", "mse")}
    tags = frozenset({"torch"})
    #: the same step budget and early-stopping rule as ours
    defaults = {"steps": 1000, "hidden": 64, "lr": 3e-3, "weight_decay": 1e-4,
                "batch_size": 512, "eval_every": 25, "patience": 10, "loss": "ce",
                "device": "auto"}
    grid = {"hidden": [64, 128], "lr": [1e-3, 3e-3]}

    def _prepare(self, train: Requests) -> None:
        """Fitted state that the module's shape depends on (default: none)."""

    def _resolve_ids(self, train: Requests) -> None:
        """Resolve the ids the forward pass looks up (:meth:`Requests.lookup`) on the whole
        training set once; every mini-batch drawn from it then slices them."""
        train.lookup("query_id", self.feats.query_index)

    def _make_net(self) -> nn.Module:
        raise NotImplementedError

    def _forward(self, requests: Requests) -> torch.Tensor:
        raise NotImplementedError

    def _qx(self, requests: Requests) -> torch.Tensor:
        return torch.as_tensor(query_embeddings(self.feats, requests), device=self.device)

    @property
    def device(self) -> str:
        """Where the module and its tensors live (``params["device"]`` resolved)."""
        return resolve_device(self.params.get("device", "auto"))

    def _on_device(self, t: torch.Tensor) -> torch.Tensor:
        """``t`` on the router's device (a feature tensor kept on CPU by the features)."""
        return t.to(self.device)

    def _device_scope(self):
        """Factory functions make tensors on the router's device inside this block (nothing to
        do on CPU)."""
        return nullcontext() if self.device == "cpu" else torch.device(self.device)

    @staticmethod
    def _targets(requests: Requests):
        cand = torch.as_tensor(candidates(requests))
        util = torch.as_tensor(np.nan_to_num(requests.utility), dtype=torch.float32)
        return cand, util, torch.as_tensor(requests.chosen)

    def _loss(self, out: torch.Tensor, batch: Requests) -> torch.Tensor:
        return self._loss_of(out, *self._targets(batch))

    def _loss_of(self, out: torch.Tensor, cand: torch.Tensor, util: torch.Tensor,
                 chosen: torch.Tensor) -> torch.Tensor:
        """The loss of ``out`` (n, n_llms) against :meth:`_targets`."""
        if self.params["loss"] == "ce":
            return F.cross_entropy(out.masked_fill(~cand, NEG), chosen)
        return ((out - util) ** 2 * cand).sum() / cand.sum().clamp(min=1)

    def _train_loss(self, train: Requests, rng: np.random.Generator) -> torch.Tensor:
        idx = rng.choice(len(train), min(self.params["batch_size"], len(train)), replace=False)
        batch = train.select(idx)
        return self._loss(self._forward(batch), batch)

    def fit(self, train, val, *, progress=False):
        seed_everything(self.seed)
        rng = np.random.default_rng(self.seed)
        self._prepare(train)
        self._resolve_ids(train)
        p = self.params
        with self._device_scope():
            self.net = self._make_net().to(self.device)
            self.log_ = train_module(
                self.net, lambda: self._train_loss(train, rng),
                lambda: reward_of(val, self._forward(val).double().cpu().numpy()),
                steps=p["steps"], lr=p["lr"], weight_decay=p["weight_decay"],
                eval_every=p["eval_every"], patience=p["patience"], progress=progress,
                desc=self.name)
        return self

    def _modules(self):
        self._check_fitted()
        return {"net": self.net}

    def _rebuild(self) -> None:
        with self._device_scope():
            self.net = self._make_net().to(self.device)

    @torch.no_grad()
    def _raw_scores(self, requests):
        self.net.eval()
        with self._device_scope():
            return self._forward(requests).double().cpu().numpy()


def mlp(d_in: int, hidden: int, d_out: int, dropout: float = 0.1) -> nn.Sequential:
    """Linear -> ReLU -> Dropout -> Linear."""
    return nn.Sequential(nn.Linear(d_in, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, d_out))
