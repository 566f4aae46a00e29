"""PersonalizedRouter v2: retrieval and lookup messages in the graph, cached routing per request.

Each request hears its user's visible history along typed edges (:mod:`prlib.routers.retrieval`):
its (user, task) profile's mean feedback per LLM (the lookup table), its user's, its task's over
all users, and the feedback of retrieved requests: the user's k most similar visible requests
and the k most similar visible queries of anybody. A learned attention over the retrieved
neighbours (query-embedding keys and values, plus similarity) weighs their feedback per LLM.
For every (request, candidate LLM) an MLP embeds these messages; the score is an MLP over
``[e, h_query * h_llm, mean over candidates of e]`` plus a linear read-out of the messages, so
the model can reproduce a lookup table or a per-user kNN and combine them with the query and
LLM embeddings.

Training is leave-one-query-out on the training history: a training request hears every other
visible request except those of its own query, exactly as a new query would; its messages are
computed once per fit, so a step is a mini-batch through small MLPs. Scoring new requests
computes only their own messages from cached sums and neighbour searches.
"""

from __future__ import annotations

from dataclasses import fields, replace

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from prlib import distributed
from prlib.config import resolve_device, seed_everything, torch_threads
from prlib.features import NodeFeatures, llm_row, query_row
from prlib.requests import Requests, concat_requests
from prlib.routers.base import ABLATION, Router, one_of, register, reward_of
from prlib.routers.retrieval import CHANNELS, FeedbackStore, Messages, check_no_label_leak_v2
from prlib.routers.scorer import RetrievalScorer, V2Config
from prlib.routers.training import train_module


@register
class PersonalizedRouterV2(Router):
    """Ours, v2: a graph of the visible feedback history in which each request hears its
    (user, task) profile, its user, its task, and the feedback of retrieved similar requests
    (the user's and anybody's), with learned attention over the retrieved; an MLP scores every
    candidate LLM from these messages and the query and LLM embeddings. Routing a new request
    reads cached sums (constant time) and runs one exact neighbour search over the visible
    queries and the user's own requests: no graph of the whole history is rebuilt."""

    name = "PersonalizedRouter v2 (graph network)"
    family = ABLATION  # superseded by v3 (personalized_v3): an ablation row of ours
    selection = "early stopping (validation-best checkpoint)"
    relative_fit_time = 20.0
    defaults = {f.name: f.default for f in fields(V2Config)}
    constraints = {"loss": one_of("utility", "choice")}
    tags = frozenset({"torch", "online"})
    grid = {"lr": [1e-3, 3e-3], "dropout": [0.0, 0.2]}
    derived_state = ("store_",)  # rebuilt from history_ by _rebuild

    def __init__(self, feats: NodeFeatures, seed: int = 0, **params):
        super().__init__(feats, seed, **params)
        self.config = V2Config(**self.params)
        self.device = resolve_device(self.config.device)
        self._llm_x = feats.llm_x.to(self.device)
        self.model: RetrievalScorer | None = None

    @classmethod
    def params_for(cls, feedback: str) -> dict:
        """Choice-only feedback: a cross-entropy on the pick."""
        return {"loss": "choice"} if feedback == "choice" else {}

    # -------------------------------------------------------------- state
    def _new_store(self) -> FeedbackStore:
        f = self.feats
        return FeedbackStore(f.query_ids, f.query_x.numpy(), f.tasks, f.llms, self.config.k,
                             self.config.k_small)

    def _new_model(self) -> RetrievalScorer:
        c = self.config
        return RetrievalScorer(self.feats.query_x.shape[1], self.feats.llm_x.shape[1], c.hidden,
                               c.attention, c.dropout, c.retrieval, c.profile_stats,
                               c.layers).to(self.device)

    def _neighbours(self, msg: Messages) -> dict:
        """Features and feedback of the retrieved neighbours, gathered for the scorer."""
        st = self.store_
        n, k = msg.user_nb.shape
        user_ok = msg.user_nb >= 0
        rows = msg.user_nb.clamp(min=0)
        if len(st.values):
            u_q = torch.as_tensor(st.row_query)[rows]
            u_v = torch.as_tensor(st.values)[rows]
            u_o = torch.as_tensor(st.observed)[rows] & user_ok[..., None]
        else:
            u_q = torch.zeros(n, k, dtype=torch.long)
            u_v = torch.zeros(n, k, len(st.llms), CHANNELS)
            u_o = torch.zeros(n, k, len(st.llms), dtype=torch.bool)
        ids, _, mean, observed = st.pooled()
        pool_ok = msg.pool_nb >= 0
        pq = msg.pool_nb.clamp(min=0)
        if len(ids):
            p_q, p_v = torch.as_tensor(ids)[pq], torch.as_tensor(mean)[pq]
            p_o = torch.as_tensor(observed)[pq] & pool_ok[..., None]  # LLMs with feedback there
        else:
            p_q = torch.zeros(n, k, dtype=torch.long)
            p_v = torch.zeros(n, k, len(st.llms), CHANNELS)
            p_o = torch.zeros(n, k, len(st.llms), dtype=torch.bool)
        dev = self.device
        return {"user_q": u_q.to(dev), "user_ok": user_ok.to(dev), "user_values": u_v.to(dev),
                "user_observed": u_o.float().to(dev), "pool_q": p_q.to(dev),
                "pool_ok": pool_ok.to(dev), "pool_values": p_v.to(dev),
                "pool_observed": p_o.float().to(dev)}

    def _logits(self, candidates: torch.Tensor, msg: Messages,
                query_x: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (n, n_llms), -inf where ``candidates`` (n, n_llms) bool is False. ``query_x``
        (n, d): embeddings of new query texts (else the requests' feature queries, ``msg.query``).
        """
        dev = self.device
        nb = self._neighbours(msg)
        if (getattr(self, "_frozen", False) and query_x is None and self.model.attention
                and len(msg.query) > 1):  # (one request: nothing to share, the plain path)
            hq, query_of, logits = self._cached_attention(msg.query, nb)
            s = self.model(hq, None, None, self._llm_x, self._on_device(msg), nb, logits,
                           query_of)
        else:
            hq, h_user, h_pool = self._states(msg.query, nb, query_x)
            net = getattr(self, "_net", None) or self.model  # DDP-wrapped while training on many
            s = net(hq, h_user, h_pool, self._llm_x, self._on_device(msg), nb)
        return s.masked_fill(~candidates.to(dev), float("-inf"))

    def _cached_attention(self, query: torch.Tensor, nb: dict):
        """Routing feature queries with final weights: ``(hq, query_of, logits)``, the distinct
        queries' states (n_distinct, H) from the cached table and each request's row among
        them (n,), and the attention logits (n, K) on the user's and the pooled neighbours,
        computed once per distinct (query, neighbours) row (a batch asks each query for many
        users, who often retrieve the same neighbour queries) instead of once per request."""
        table = self._query_states()
        query = query.to(self.device)
        distinct, query_of = torch.unique(query, return_inverse=True)
        logits = []
        for nb_q in (nb["user_q"], nb["pool_q"]):
            # distinct rows by their bytes (np.unique on a void view: a few ms for 10k rows,
            # where torch.unique(dim=0) sorts lexicographically, several times slower)
            rows = torch.cat([query[:, None], nb_q], 1).cpu().numpy()
            rows = np.ascontiguousarray(rows).view(np.dtype((np.void, rows.dtype.itemsize *
                                                             rows.shape[1])))[:, 0]
            _, first, inv = np.unique(rows, return_index=True, return_inverse=True)
            first = torch.from_numpy(first).to(self.device)
            logit = self.model.neighbour_logits(table[query[first]], table[nb_q[first]])
            logits.append(logit[torch.from_numpy(inv.reshape(-1)).to(self.device)])
        return table[distinct], query_of, tuple(logits)

    def _states(self, query: torch.Tensor, nb: dict, query_x: torch.Tensor | None = None):
        """Query states of the requests (n, H) and of their user's and pooled neighbours
        (n, K, H each). While training, only the distinct queries involved go through the query
        MLP (the same rows as the whole table, fewer of them); once the weights are final they
        are read from the cached table."""
        dev = self.device
        wanted = [nb["user_q"], nb["pool_q"]] + ([] if query_x is not None else [query.to(dev)])
        if getattr(self, "_frozen", False):
            table = self._query_states()
            got = [table[i] for i in wanted]
        else:
            flat = torch.cat([i.reshape(-1) for i in wanted])
            uniq, inv = torch.unique(flat, return_inverse=True)
            states = self.model.query(self.feats.query_x[uniq.cpu()].to(dev))[inv]
            got = list(states.split([i.numel() for i in wanted]))
            got = [g.reshape(*i.shape, -1) for g, i in zip(got, wanted)]
        hq = self.model.query(query_x.to(dev)) if query_x is not None else got[2]
        return hq, got[0], got[1]

    def _eval(self) -> None:
        """The scorer in evaluation mode (switched only when it is not: switching walks every
        submodule, a noticeable part of routing one request)."""
        if self.model.training:
            self.model.eval()

    def _on_device(self, msg: Messages) -> Messages:
        """``msg`` on the router's device."""
        if self.device == "cpu":
            return msg
        return Messages(*(t.to(self.device) for t in (
            msg.static, msg.user_nb, msg.user_sim, msg.pool_nb, msg.pool_sim, msg.query, msg.own)))

    def _query_states(self) -> torch.Tensor:
        """Every feature query's state (n_queries, H); cached once the weights are final (after
        ``fit`` or ``load``), recomputed while training."""
        if getattr(self, "_frozen", False):
            if getattr(self, "_hq_cache", None) is None:
                # a plain tensor even when asked for under inference mode (it outlives it)
                with torch.inference_mode(False), torch.no_grad():
                    self._hq_cache = self.model.query(self.feats.query_x.to(self.device))
            return self._hq_cache
        return self.model.query(self.feats.query_x.to(self.device))

    # -------------------------------------------------------------- training
    def fit(self, train: Requests, val: Requests, *, progress: bool = False):
        """Leave-one-query-out training on ``train``; checkpoint selected on ``val``."""
        self._frozen, self._hq_cache = False, None
        with torch_threads(self.config.threads):
            self._fit(train, val, progress)
        self._frozen = True
        return self

    def _fit(self, train: Requests, val: Requests, progress: bool):
        seed_everything(self.seed)
        self.store_ = self._new_store()
        self.store_.add(train)
        self.model = self._new_model()
        self._train(train, val, self.config.steps, progress)
        return self

    def fine_tune(self, history: Requests, val: Requests, steps: int = 100, *,
                  progress: bool = False):
        """Make ``history`` visible (as :meth:`add_user`), then continue training from the
        current weights for at most ``steps`` steps on the whole visible history
        (leave-one-query-out), the checkpoint selected on ``val`` (the current weights are
        kept unless a step beats them)."""
        self._check_fitted()
        self.add_user(history)
        self._frozen, self._hq_cache = False, None
        with torch_threads(self.config.threads):
            seed_everything(self.seed)
            self._train(self.history_, val, steps, progress)
        self._frozen = True
        return self

    def _train(self, train: Requests, val: Requests, steps: int, progress: bool):
        """Mini-batch training of ``self.model`` on the store's messages of ``train`` (each
        request without its own query's rows), early stopping on ``val``."""
        c = self.config
        rng = np.random.default_rng(self.seed)
        train_msg = self.store_.messages(train)  # each request without its own query's rows
        check_no_label_leak_v2(self.store_, train, train_msg)
        val_msg = self.store_.messages(val)
        util = torch.as_tensor(np.nan_to_num(train.utility), dtype=torch.float32)
        cand = torch.as_tensor(~np.isnan(train.utility))
        val_cand = torch.as_tensor(~np.isnan(val.utility))
        chosen = torch.as_tensor(train.chosen)

        def step_loss():
            idx = rng.choice(len(train), min(c.batch_size, len(train)), replace=False)
            if not distributed.is_distributed():
                idx_t = torch.from_numpy(idx)
                logits = self._logits(cand[idx_t], train_msg.select(idx_t))
                if c.loss == "choice":
                    return F.cross_entropy(logits, chosen[idx_t].to(self.device))
                m = cand[idx_t].to(self.device)
                return F.mse_loss(logits[m], util[idx_t].to(self.device)[m])
            # every process drew the same global batch and scores its shard; the loss is scaled
            # so that DDP's mean of the shards' gradients is the global batch's gradient
            world = distributed.rank_and_world()[1]
            idx_t = torch.from_numpy(distributed.shard(idx))
            logits = self._logits(cand[idx_t], train_msg.select(idx_t))
            if c.loss == "choice":
                loss = F.cross_entropy(logits, chosen[idx_t].to(self.device), reduction="sum")
                return loss * world / len(idx)
            m = cand[idx_t].to(self.device)
            loss = F.mse_loss(logits[m], util[idx_t].to(self.device)[m], reduction="sum")
            return loss * world / int(cand[torch.from_numpy(idx)].sum())

        def val_metric():
            metric = reward_of(val, self._logits(val_cand, val_msg).double().cpu().numpy())
            return distributed.agree(metric)  # rank 0's on every process: the same stop

        self._net = distributed.wrap(self.model)
        try:
            self.log_ = train_module(self.model, step_loss, val_metric, steps=steps, lr=c.lr,
                                     weight_decay=c.weight_decay, eval_every=c.eval_every,
                                     patience=c.patience, progress=progress, desc=self.name,
                                     check_at_start=True)
        finally:
            self._net = None
        self.history_ = train

    # -------------------------------------------------------------- inference
    @torch.inference_mode()  # (no_grad without autograd's bookkeeping: a fast single request)
    def _raw_scores(self, requests: Requests) -> np.ndarray:
        """Logits (n, n_llms) from the cached history; -inf = not a candidate. A request whose
        (user, query) already has visible feedback is refused (its label is in sight); a user
        without history gets the population's messages (task and pooled neighbours)."""
        st = self.store_
        self._eval()
        with torch_threads(self.config.threads):
            msg = st.messages(requests)
            seen = int((msg.own >= 0).sum())
            if seen:
                raise ValueError(f"{seen} requests already have visible feedback for their "
                                 "(user, query): scoring them would read their own label")
            check_no_label_leak_v2(st, requests, msg)
            return self._logits(torch.from_numpy(~np.isnan(requests.utility)), msg).cpu().numpy()

    def knows_user(self, user_id: str) -> bool:
        """Whether feedback of ``user_id`` is visible to the router (served users included)."""
        return user_id in self.store_.upos

    def user_request_counts(self) -> pd.Series:
        """Visible requests per known user (served users included), index: user ids."""
        st = self.store_
        counts = np.bincount(np.asarray(st.row_user, dtype=np.int64), minlength=len(st.users))
        return pd.Series(counts, index=list(st.users), name="requests")

    def add_user(self, history: Requests) -> None:
        """Make feedback visible (new users or new requests of known ones), no retraining:
        only the sums of the touched users, profiles, tasks and queries change."""
        self._check_fitted()
        self.store_.add(history)
        self.history_ = concat_requests(self.history_, history)


    def add_llm(self, name: str, description: str, input_usd_per_m: float,
                output_usd_per_m: float, history: Requests | None = None) -> None:
        """Add a candidate LLM from its description and prices (its embedding row, as for the
        trained LLMs) and, optionally, observed interactions over the extended LLM list
        (``history.llms`` = the old LLMs + ``name``), without retraining. The scorer reads an
        LLM only through its embedding and the feedback messages, so a new LLM needs no new
        weights; the store's sums are rebuilt once over the padded history (O(history))."""
        self._check_fitted()
        if name in self.feats.llms:
            raise ValueError(f"LLM {name!r} is already a candidate")
        llms = self.feats.llms + [name]
        if history is not None and history.llms != llms:
            raise ValueError(f"history must be over the LLMs {llms}, got {history.llms}")
        feats = replace(self.feats, llms=llms, llm_x=torch.cat(
            [self.feats.llm_x, llm_row(description, input_usd_per_m, output_usd_per_m)]),
            answer_x=None, answer_ok=None)
        history_ = self.history_.with_llm_columns(
            llms, lambda a: np.hstack([a, np.full((len(a), 1), np.nan)]))
        if history is not None:
            history_ = concat_requests(history_, history)
        store = FeedbackStore(feats.query_ids, feats.query_x.numpy(), feats.tasks, llms,
                              self.config.k, self.config.k_small)
        store.add(history_)  # refuses a (user, query) seen twice before anything changes
        self.feats, self.n_llms, self.history_, self.store_ = feats, len(llms), history_, store
        self._llm_x = feats.llm_x.to(self.device)

    def _text_task(self, row: torch.Tensor, task: str | None) -> str:
        if task is None:
            sims = F.cosine_similarity(self.feats.task_x, row[:, :self.feats.task_x.shape[1]])
            return self.feats.tasks[int(sims.argmax())]
        if task not in self.feats.tasks:
            raise KeyError(f"unknown task {task!r}; known tasks: {self.feats.tasks}")
        return task

    def text_scores(self, user_id: str, query_text: str, task: str | None = None,
                    query_x: torch.Tensor | None = None) -> np.ndarray:
        """Scores (n_llms,) of every LLM for ``user_id`` and a new query text; the router's
        features do not grow. ``task`` defaults to the task whose description is closest to
        the query; ``query_x`` (1, query_dim): the text's feature row when the caller has it
        (:func:`~prlib.features.query_row`). A user without visible feedback gets the
        population's messages (the cold-start prior)."""
        row = query_row(query_text) if query_x is None else query_x
        return self.text_scores_batch([user_id], row, [task])[0]

    @torch.inference_mode()
    def text_scores_batch(self, user_ids: list[str], query_x: torch.Tensor,
                          tasks: list[str | None] | None = None) -> np.ndarray:
        """:meth:`text_scores` of n new query texts at once (a server's waiting requests),
        given their feature rows ``query_x`` (n, query_dim): scores (n, n_llms)."""
        self._check_fitted()
        rows = query_x.cpu()
        if rows.ndim != 2 or len(rows) != len(user_ids):
            raise ValueError(f"query_x must be ({len(user_ids)}, query_dim), one row per user, "
                             f"got {tuple(rows.shape)}")
        tasks = list(tasks) if tasks is not None else [None] * len(user_ids)
        st = self.store_
        task_of = np.array([st.tpos[self._text_task(rows[i:i + 1], t)]
                            for i, t in enumerate(tasks)], np.int64)
        self._eval()
        with torch_threads(self.config.threads):
            msg = st.messages_of(np.array([st.upos.get(u, -1) for u in user_ids], np.int64),
                                 np.full(len(user_ids), -1, np.int64), task_of,
                                 query_x=rows.numpy())
            cand = torch.ones(len(user_ids), len(self.feats.llms), dtype=torch.bool)
            return self._logits(cand, msg, rows).cpu().numpy()

    def route_text(self, user_id: str, query_text: str, task: str | None = None) -> str:
        """The LLM picked for ``user_id`` and a new query text (:meth:`text_scores`)."""
        return self.feats.llms[int(np.argmax(self.text_scores(user_id, query_text, task)))]

    def add_text_feedback(self, user_id: str, query_text: str, utility: np.ndarray,
                          task: str | None = None, query_x: torch.Tensor | None = None,
                          query_id: str | None = None) -> str:
        """Make a user's feedback on a new query text visible, without retraining (a served
        request): ``utility`` (n_llms,) is the feedback per LLM, NaN where the user gave none
        (e.g. 1 for a picked answer and 0 for the one served instead, or a rating of the
        served answer). The text becomes a query of the router's features and history (its
        row: ``query_x``, or computed); only the touched sums change. Returns its query id."""
        self._check_fitted()
        utility = np.asarray(utility, dtype=float).reshape(1, -1)
        if utility.shape[1] != len(self.feats.llms) or np.isnan(utility).all():
            raise ValueError(f"utility must give feedback on at least one of the "
                             f"{len(self.feats.llms)} LLMs {self.feats.llms} (NaN = none)")
        row = (query_row(query_text) if query_x is None else query_x).cpu()
        task = self._text_task(row, task)
        qid = query_id or f"text-{len(self.feats.query_ids)}"
        self.store_.add_queries([qid], row.numpy())
        self.feats = replace(self.feats, query_ids=self.feats.query_ids + [qid],
                             query_x=torch.cat([self.feats.query_x, row]),
                             answer_x=None, answer_ok=None)
        if getattr(self, "_hq_cache", None) is not None:  # one new row, not the whole table
            with torch.no_grad():
                self._hq_cache = torch.cat([self._hq_cache,
                                            self.model.query(row.to(self.device))])
        chosen = np.nan_to_num(utility, nan=-np.inf).argmax(1)
        req = Requests(pd.DataFrame({"user_id": [user_id], "query_id": [qid], "task": [task],
                                     "split": ["train"]}), self.feats.llms, utility, chosen)
        self.add_user(req)
        return qid

    # -------------------------------------------------------------- persistence
    def _modules(self):
        self._check_fitted()
        return {"model": self.model}

    def _rebuild(self) -> None:
        self.store_ = self._new_store()
        self.store_.add(self.history_)
        self.model = self._new_model()
        self._frozen, self._hq_cache = True, None  # filled lazily, after the weights load



@register
class V2WithoutRetrieval(PersonalizedRouterV2):
    """Ours without the retrieved neighbours (neither the user's nor the pooled kNN messages, no
    attention): profile, user and task statistics only."""

    name = "v2 without retrieval edges"
    family = ABLATION
    defaults = {**PersonalizedRouterV2.defaults, "retrieval": False}


@register
class V2WithoutProfileStats(PersonalizedRouterV2):
    """Ours without the profile, user and task feedback means: retrieved neighbours only."""

    name = "v2 without profile statistics"
    family = ABLATION
    defaults = {**PersonalizedRouterV2.defaults, "profile_stats": False}


@register
class V2WithoutMessages(PersonalizedRouterV2):
    """Ours with no message passing: the scorer reads the query and LLM embeddings only, so it
    cannot tell users apart."""

    name = "v2 with 0 layers (no messages)"
    family = ABLATION
    defaults = {**PersonalizedRouterV2.defaults, "layers": 0}


ABLATIONS = (V2WithoutRetrieval, V2WithoutProfileStats, V2WithoutMessages)
