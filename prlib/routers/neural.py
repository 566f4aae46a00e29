"""Neural baselines on the query embedding: MLP classifiers (pooled or with a user embedding)
and RouteLLM-style matrix factorisation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from prlib.routers.base import register
from prlib.routers.training import TorchRouter, mlp


@register
class MLPRouter(TorchRouter):
    """Non-personalised MLP on the query embedding (pooled users): regresses every candidate's
    utility when users reveal utilities, else a cross-entropy on the chosen LLM."""

    name = "MLP classifier"
    family = "non-personalised"

    @classmethod
    def params_for(cls, feedback: str) -> dict:
        """Loss parity with ours: regress the candidates' utilities when users reveal them."""
        return {"loss": "mse"} if feedback == "utility" else {}

    def _make_net(self):
        return mlp(self.feats.query_x.shape[1], self.params["hidden"], self.n_llms)

    def _forward(self, requests):
        return self.net(self._qx(requests))


@register
class UserMLPRouter(TorchRouter):
    """Personalised MLP: [query embedding, learned user embedding] -> a score per LLM, regressing
    utilities when users reveal them, else a cross-entropy on the chosen LLM. Users not seen in
    training get a zero embedding."""

    name = "MLP + user embedding"
    family = "personalised"
    defaults = {**TorchRouter.defaults, "user_dim": 16}
    params_for = MLPRouter.params_for

    def _prepare(self, train):
        self.users_ = sorted(train.frame["user_id"].unique())

    def _user_index(self) -> pd.Index:
        """``users_`` as an index, rebuilt only when ``users_`` changes (fit, load)."""
        if getattr(self, "_user_index_of", None) is not self.users_:
            self._user_index_of, self._user_ids = self.users_, pd.Index(self.users_)
        return self._user_ids

    def _resolve_ids(self, train):
        super()._resolve_ids(train)
        train.lookup("user_id", self._user_index())

    def _make_net(self):
        d = self.params["user_dim"]
        net = nn.ModuleDict({"user": nn.Embedding(len(self.users_) + 1, d),
                             "mlp": mlp(self.feats.query_x.shape[1] + d, self.params["hidden"],
                                        self.n_llms)})
        with torch.no_grad():
            net["user"].weight[-1].zero_()
        return net

    def _forward(self, requests):
        u = requests.lookup("user_id", self._user_index())
        u = torch.as_tensor(np.where(u < 0, len(self.users_), u))
        return self.net["mlp"](torch.cat([self._qx(requests), self.net["user"](u)], 1))


@register
class MFRouter(TorchRouter):
    """RouteLLM-style matrix factorisation: score(q, m) = w . (v_m * P q) + b_m, with the query
    embedding projected by P and a learned embedding v_m per LLM; MSE on the utilities."""

    name = "Matrix factorisation (RouteLLM)"
    family = "non-personalised"
    defaults = {**TorchRouter.defaults, "loss": "mse"}

    def _make_net(self):
        d = self.params["hidden"]
        return nn.ModuleDict({"proj": nn.Linear(self.feats.query_x.shape[1], d, bias=False),
                              "llm": nn.Embedding(self.n_llms, d),
                              "out": nn.Linear(d, 1)})

    def _forward(self, requests):
        q = self.net["proj"](self._qx(requests))  # (n, d)
        v = self.net["llm"].weight  # (m, d)
        return self.net["out"](q[:, None, :] * v[None, :, :]).squeeze(-1)
