"""One experiment path: a :class:`Setting`, the registered routers, seeds -> a tidy frame.

A seed fixes the query split (:func:`prlib.requests.split_queries`) and every router's
initialisation. With ``feedback="choice"`` (the judge setting: a user reveals only which answer
they picked) routers are trained and validated on :func:`prlib.requests.choice_only` views, so
no router sees the judge's utilities; test metrics always use the true test requests. Oracles
and random routing are routers like any other.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import pickle
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from prlib.bank import Bank
from prlib.config import (DEVELOPMENT_SEEDS, REPORT_SEEDS, cache_dir, seed_everything)
from prlib.efficiency import PeakMemory
from prlib.features import NodeFeatures, node_features
from prlib import provenance
from prlib.metrics import (PAIRWISE_METRICS, pairwise_metrics, picks_vary_share, routing_metrics)
from prlib.parallel import THREADS, Shared, map_fits
from prlib.report import (UPPER_BOUND, ablation_table, describe_improvement,  # noqa: F401
                          improvement, improvement_row, results_table, same_picks, strongest)
from prlib.requests import (SPLITS, build_requests, choice_only, sample_per_user,
                            split_queries, with_previous_turn)
from prlib.routers import Router, get_router, registered
from prlib.routers.base import grid_points, reward_of
from prlib.routers.reference import CeilingRouter
from prlib.routers.simple import OracleRouter
from prlib.simulate.preferences import Preferences

FEEDBACK = ("utility", "choice")
#: Metrics a setting may name as its main one (columns of :func:`run_setting`'s frame).
MAIN_METRICS = ("reward", "accuracy", "score", "pct_oracle", "performance") + PAIRWISE_METRICS
#: What the oracle reads in each feedback kind (its row name in tables).
ORACLE_READS = OracleRouter.row_names


@dataclass
class Setting:
    """What an experiment compares routers on.

    ``bank`` and ``preferences`` (simulated users over that bank); ``feedback``: what a router
    learns from, ``"utility"`` (every candidate's utility, multi-cost users) or ``"choice"``
    (only the pick, judge users); ``metric``: the main metric of the tables; ``fractions``: the
    train / val / test shares of queries. Multi-turn data: ``query_groups`` maps each (turn)
    query to its conversation, so a conversation's turns share a split; ``previous_query`` maps
    a turn to the previous turn of its conversation, and requests then carry the user's
    utilities of that previous turn (:attr:`~prlib.requests.Requests.previous`). With a
    pairwise ``metric`` (:data:`~prlib.metrics.PAIRWISE_METRICS`) every router is also scored,
    and tuned, on preference pairs by its score differences. ``train_per_user``: each user
    keeps at most that many training requests (seeded per split seed,
    :func:`~prlib.requests.sample_per_user`); validation and test are unchanged.
    ``sparse_users``: only that many users are thinned to ``train_per_user`` (the others keep
    every training request), chosen by rotation with the split seed (:func:`sparse_users_of`:
    a different user per seed), and the test split keeps only their requests, so the tables
    score the sparse users among dense ones. ``sparse_offset``: shifts that rotation (the
    sparse users of seed ``s`` are those of rotation step ``s + sparse_offset``), so that the
    same split seed can thin each user in turn (offsets 0 to n_users - 1).
    """

    name: str
    bank: Bank
    preferences: Preferences
    feedback: str = "utility"
    metric: str = "reward"
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    features: NodeFeatures | None = field(default=None, repr=False)
    query_groups: dict[str, str] | None = field(default=None, repr=False)
    previous_query: dict[str, str] | None = field(default=None, repr=False)
    train_per_user: int | None = None
    sparse_users: int | None = None
    sparse_offset: int = 0

    def __post_init__(self) -> None:
        if self.train_per_user is not None and self.train_per_user < 1:
            raise ValueError(f"train_per_user must be >= 1 (or None: all), got "
                             f"{self.train_per_user}")
        n_users = len(self.preferences.users)
        if self.sparse_users is not None and not 1 <= self.sparse_users < n_users:
            raise ValueError(f"sparse_users must be between 1 and {n_users - 1} (the others stay "
                             f"dense) or None (every user thinned), got {self.sparse_users}")
        offset = self.sparse_offset
        if isinstance(offset, bool) or not isinstance(offset, (int, np.integer)) or not (
                offset == 0 or (self.sparse_users is not None and 0 <= offset < n_users)):
            raise ValueError(f"sparse_offset shifts which users are sparse: it needs sparse_users "
                             f"and is an integer from 0 to {n_users - 1} (the number of users "
                             f"minus 1), got {offset!r} with sparse_users={self.sparse_users}")
        if self.feedback not in FEEDBACK:
            raise ValueError(f"feedback must be one of {FEEDBACK}, got {self.feedback!r}")
        if self.metric not in MAIN_METRICS:
            raise ValueError(f"metric must be one of {MAIN_METRICS}, got {self.metric!r}")
        if self.preferences.bank_name != self.bank.name:
            raise ValueError(f"the preferences are over bank {self.preferences.bank_name!r}, not "
                             f"{self.bank.name!r}")
        if self.previous_query and self.feedback == "choice":
            raise ValueError("previous-turn utilities are utility feedback; use "
                             "feedback='utility' with previous_query")

    @property
    def pairwise(self) -> bool:
        """Whether the main metric is a pairwise one (routers scored by score differences)."""
        return self.metric in PAIRWISE_METRICS

    @property
    def oracle_name(self) -> str:
        """The oracle's row name here: what it reads (:data:`ORACLE_READS`)."""
        return OracleRouter.row_name(self.feedback, self.preferences.strategy)

    @property
    def ceiling_name(self) -> str:
        """The decide-before-answers ceiling's row name here
        (:class:`~prlib.routers.reference.CeilingRouter`)."""
        return CeilingRouter.row_name(self.feedback, self.preferences.strategy)

    @cached_property
    def fingerprint(self) -> str:
        """A hash of everything the views depend on: interactions, the bank's rows, queries and
        LLM order, feedback, fractions, groups, previous turns, ``train_per_user``,
        ``sparse_users`` and ``sparse_offset``
        (computed once: change a setting with :func:`dataclasses.replace`, not in place)."""
        h = hashlib.sha1()
        for frame in (self.preferences.interactions, self.bank.bank,
                      self.bank.queries[["query_id", "task"]], self.bank.llms[["llm"]]):
            h.update(pd.util.hash_pandas_object(frame, index=False).to_numpy().tobytes())
        h.update(json.dumps([self.feedback, list(self.fractions), self.train_per_user,
                             self.sparse_users, sorted((self.query_groups or {}).items()),
                             sorted((self.previous_query or {}).items())]).encode())
        if self.sparse_offset:  # (settings without one keep their fingerprints)
            h.update(f"sparse_offset={self.sparse_offset}".encode())
        return h.hexdigest()

    @cached_property
    def fit_fingerprint(self) -> str:
        """A hash of everything a fit's result row depends on besides the router, its
        parameters and the seed: :attr:`fingerprint`, the node features' values, the main metric
        and the users' strategy (row names), for the fit cache (:func:`cached_fits`)."""
        h = hashlib.sha1(self.fingerprint.encode())
        h.update(features_digest(self.feats).encode())
        h.update(json.dumps([self.metric, self.preferences.strategy]).encode())
        return h.hexdigest()

    @cached_property
    def feats(self) -> NodeFeatures:
        """The bank's node features with its answer texts' embeddings where it has answers
        (computed once, embeddings cached on disk)."""
        return (self.features if self.features is not None
                else node_features(self.bank, answers=True))


def features_digest(feats: NodeFeatures) -> str:
    """A hash of node features' ids and values (answer embeddings included)."""
    h = hashlib.sha1(json.dumps([feats.query_ids, feats.tasks, feats.llms]).encode())
    for x in (feats.query_x, feats.task_x, feats.llm_x, feats.answer_x, feats.answer_ok):
        if x is not None:
            h.update(str(tuple(x.shape)).encode())
            h.update(x.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


# ---------------------------------------------------------------------- the fit cache
#: ``PRLIB_FIT_CACHE=0`` fits everything again (the tests set it: a router they monkeypatch is
#: not part of a key).
FIT_CACHE_ENV = "PRLIB_FIT_CACHE"


def fit_cache_enabled() -> bool:
    """Whether result rows of fits are kept and reused (:func:`cached_fits`)."""
    return os.environ.get(FIT_CACHE_ENV, "1").lower() not in {"0", "false", "no", "off"}


def _source_digest() -> str:
    """A digest of the library's source as it is on disk now (every ``prlib/**/*.py``)."""
    from pathlib import Path

    root = Path(__file__).resolve().parent
    h = hashlib.sha1()
    for path in sorted(root.rglob("*.py")):
        h.update(str(path.relative_to(root)).encode())
        h.update(path.read_bytes())
    return h.hexdigest()


#: The library's source when this process imported it: the code its fits run.
_IMPORTED_SOURCE = _source_digest()


@functools.lru_cache(maxsize=1)
def code_version() -> str:
    """A digest of the library's source when this process imported it and of what else a fit's
    numbers depend on: the versions of torch, NumPy, pandas, PyG and scikit-learn, the
    machine's architecture and whether CUDA is visible."""
    import platform

    import sklearn
    import torch
    import torch_geometric

    return hashlib.sha1(json.dumps([
        _IMPORTED_SOURCE, torch.__version__, np.__version__, pd.__version__,
        torch_geometric.__version__, sklearn.__version__, platform.machine(),
        torch.cuda.is_available()]).encode()).hexdigest()


def _param_text(value) -> str:
    """A parameter value as exact text for a key (arrays in full, not numpy's abridged repr)."""
    if isinstance(value, np.ndarray):
        return json.dumps([str(value.dtype), value.shape, value.tolist()])
    return repr(value)


def fit_key(kind: str, setting: Setting, seed: int, cls: type[Router], params: Mapping,
            threads: int | None) -> str:
    """The fit cache's key of one fit: ``kind`` (``"tune"`` or ``"run"``), the library's code
    (:func:`code_version`), the setting's data, features, metric and users
    (:attr:`Setting.fit_fingerprint`), the router class, its parameters, the seed and the torch
    threads. Any change to one of them is another key."""
    import torch

    threads = torch.get_num_threads() if threads is None else threads
    return hashlib.sha1(json.dumps(
        [kind, code_version(), setting.fit_fingerprint, cls.__module__, cls.__name__,
         sorted((str(k), _param_text(v)) for k, v in dict(params).items()), int(seed),
         threads]).encode()).hexdigest()


def _fit_cache_path(key: str):
    return cache_dir() / "fits" / key[:2] / f"{key}.pkl"


def cached_fits(fn, tasks: Sequence[tuple], keys: Sequence[str | None], jobs: int,
                threads: int | None, progress: bool, desc: str, label=None, cost=None) -> list:
    """:func:`~prlib.parallel.map_fits` of ``fn`` over ``tasks``, except that a task whose key
    (:func:`fit_key`; ``None``: never cached) has a stored result is not run: its result (a
    fit's row, stored after the fit) is read back. Results in task order. Notebooks that fit
    the same router on the same data with the same parameters and seed (notebook 55's Table 1
    and notebook 50's dense cell, notebook 40's tuning of ours) fit it once per machine and
    code version."""
    enabled = fit_cache_enabled()
    if enabled and _source_digest() != _IMPORTED_SOURCE:
        print("prlib's source changed since this process imported it: the fits run the code in "
              "memory, so none is read from or written to the fit cache (restart the kernel)",
              flush=True)
        enabled = False
    results: list = [None] * len(tasks)
    todo = []
    for i, key in enumerate(keys):
        path = None if key is None or not enabled else _fit_cache_path(key)
        if path is None or not path.is_file():
            todo.append(i)
            continue
        try:
            with open(path, "rb") as f:
                results[i] = pickle.load(f)
        except Exception:  # noqa: BLE001 - unreadable (cut short, another pandas): fit again
            path.unlink(missing_ok=True)
            todo.append(i)
    if progress and len(todo) < len(tasks):
        print(f"{desc}: {len(tasks) - len(todo)} of {len(tasks)} fits read from the fit cache "
              f"({FIT_CACHE_ENV}=0 fits them again)", flush=True)
    run = map_fits(fn, [tasks[i] for i in todo], jobs, threads, progress, desc, label, cost)
    for i, result in zip(todo, run):
        results[i] = result
        if enabled and keys[i] is not None:
            path = _fit_cache_path(keys[i])
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(f".{os.getpid()}.tmp")
            with open(tmp, "wb") as f:
                pickle.dump(result, f, protocol=pickle.HIGHEST_PROTOCOL)
            os.replace(tmp, path)  # atomic: a reader sees a whole file or none
    return results


def sparse_users_of(users, n: int, seed: int) -> list[str]:
    """The ``n`` users a split seed thins among dense ones: by rotation over the sorted users,
    starting at ``seed`` modulo their number (seeds 100-104 of nine users: a different one
    each)."""
    users = sorted(map(str, users))
    return [users[(seed + i) % len(users)] for i in range(n)]


def setting_views(setting: Setting, seed: int, raw: bool = False):
    """``(train, val, test)`` requests of one seed's query split: train and val as the routers
    see them (choice-only views when ``setting.feedback == "choice"``; with ``raw``, true
    utilities for all three), test with true labels."""
    split = split_queries(setting.preferences.interactions["query_id"].unique(),
                          setting.fractions, seed=seed, groups=setting.query_groups)
    req = build_requests(setting.preferences.interactions, setting.bank, split)
    where = f"{setting.name}, seed {seed}"
    if setting.previous_query:
        req = with_previous_turn(req, setting.previous_query)
        provenance.check_previous_turn(req, setting.previous_query, where)
    train, val, test = (req.split(s) for s in SPLITS)
    sparse = (None if setting.sparse_users is None
              else sparse_users_of(setting.preferences.users["user_id"], setting.sparse_users,
                                      seed + setting.sparse_offset))
    if setting.train_per_user is not None:
        train = sample_per_user(train, setting.train_per_user, seed=seed, users=sparse)
    if sparse is not None:  # the tables score the sparse users only
        test = test.select(test.frame["user_id"].isin(sparse).to_numpy())
    provenance.check_split(train, val, test, where)
    if setting.feedback == "choice" and not raw:
        train, val = choice_only(train), choice_only(val)
        provenance.check_choice_view(train, f"{where}, train")
        provenance.check_choice_view(val, f"{where}, val")
    return train, val, test


#: Views computed in this process, by (setting fingerprint, seed), most recent last: a worker
#: process gets a fresh copy of the setting with every task, so a cache on the setting itself
#: would be rebuilt for every fit (seconds per fit on a 1,000-user bench).
_VIEWS: OrderedDict = OrderedDict()
_VIEWS_KEPT = 8


def _views_by_seed(shared: Shared):
    """``views(seed)``: :func:`setting_views` of the :class:`Shared` setting, computed once
    per seed and process (kept for the :data:`_VIEWS_KEPT` most recent (setting, seed)
    pairs)."""
    shared.obj.fingerprint  # computed here, in the parent: it travels with the setting
    return functools.partial(_cached_views, shared)


def _cached_views(shared: Shared, seed: int):
    """:func:`setting_views` from this process's :data:`_VIEWS`. (A module-level function, so
    that a worker's tasks read the worker's cache: a closure sent to a worker would carry a
    copy of the cache, empty, with every task.)"""
    key = (shared.obj.fingerprint, seed)
    if key in _VIEWS:
        _VIEWS.move_to_end(key)
    else:
        _VIEWS[key] = setting_views(shared.obj, seed)
        while len(_VIEWS) > _VIEWS_KEPT:
            _VIEWS.popitem(last=False)
    return _VIEWS[key]


def _new_router(cls: type[Router], setting: Setting, seed: int, params: Mapping) -> Router:
    """A seeded router with the setting's implied and the given hyper-parameters."""
    seed_everything(seed)
    return cls(setting.feats, seed=seed, **{**cls.params_for(setting.feedback), **params})


def fit_checked(router_cls: type[Router] | str, setting: Setting, seed: int,
                params: Mapping | None = None, progress: bool = False):
    """One router fitted on ``seed``'s views of ``setting`` with the provenance guards of
    :func:`run_setting` (split, fit on exactly those views, nothing of test learned from):
    ``(router, (train, val, test))``, for a notebook or command that needs the fitted router
    itself."""
    cls = get_router(router_cls)
    train, val, test = setting_views(setting, seed)
    router = _new_router(cls, setting, seed, dict(params or {}))
    router.fit(train, val, progress=progress)
    provenance.check_fitted_and_scored(router, train, val, test,
                                       f"{cls.__name__} on {setting.name}, seed {seed}",
                                       setting.feedback)
    return router, (train, val, test)


def _check_params(classes, params: Mapping) -> dict:
    params = dict(params or {})
    unknown = sorted(set(params) - {c.__name__ for c in classes})
    if unknown:
        raise ValueError(f"params name routers that are not run: {unknown}")
    return params


@dataclass
class Tuning:
    """What :func:`tune_setting` tried and chose.

    ``frame``: one row per (router, grid point, seed): ``router`` (display name), ``class``,
    ``point`` (the grid point as text), ``seed``, ``val_metric`` (validation reward of the
    routers' view; accuracy with choice-only feedback), ``fit_s`` and ``chosen`` (the point
    with the best mean over the tuning seeds). ``chosen``: the chosen point per class name.
    """

    frame: pd.DataFrame
    chosen: dict[str, dict]
    base: dict[str, dict]

    def params(self) -> dict[str, dict]:
        """Hyper-parameters per class name for :func:`run_setting`: the given ones with the
        chosen grid point on top."""
        return {c: {**self.base.get(c, {}), **self.chosen.get(c, {})}
                for c in {**self.base, **self.chosen}}

    def table(self) -> pd.DataFrame:
        """One row per router: its grid, the chosen point and its mean validation metric."""
        rows = []
        for (name, cls), g in self.frame.groupby(["router", "class"], sort=False):
            means = g.groupby("point", sort=False)["val_metric"].mean()
            best = g.loc[g["chosen"], "point"].iloc[0]
            rows.append({"router": name, "class": cls, "grid_points": len(means),
                         "chosen": best, "val_metric_chosen": means[best],
                         "val_metric_worst": means.min(),
                         "tuning_fit_s": g["fit_s"].sum()})
        return pd.DataFrame(rows)


def validation_metric(setting: Setting, router: Router, val) -> float:
    """What tuning compares: the setting's pairwise metric on ``val`` when it has one, else the
    validation reward of the router's view (accuracy with choice-only feedback). ``val`` must
    be the validation requests the router was fitted with
    (:func:`~prlib.provenance.check_selection`)."""
    provenance.check_selection(router, val, f"tuning {type(router).__name__} on {setting.name}")
    if setting.pairwise:
        return pairwise_metrics(val, router.scores(val))[setting.metric]
    return reward_of(val, router.scores(val))


def test_metric(setting: Setting, router: Router, test, metric: str | None = None) -> float:
    """A fitted router's ``metric`` (default: the setting's) on ``test``: pairwise metrics from
    its scores, every other metric from its routed picks."""
    metric = metric or setting.metric
    provenance.check_scored(router, test, f"scoring {type(router).__name__} on {setting.name}")
    if metric in PAIRWISE_METRICS:
        return float(pairwise_metrics(test, router.scores(test))[metric])
    return float(routing_metrics(test, router.route(test))[metric])


def tune_setting(setting: Setting, routers: Sequence[type[Router] | str] | None = None,
                 seeds: Sequence[int] = DEVELOPMENT_SEEDS[:1],
                 params: Mapping[str, dict] | None = None, progress: bool = False,
                 threads: int | None = THREADS, jobs: int = 1,
                 max_points: int | None = None) -> Tuning:
    """Choose each router's hyper-parameters from its declared ``grid`` on validation.

    Every router with a grid (the same :data:`~prlib.routers.base.GRID_POINTS` points each,
    ours included) is fitted once per point on the train split of each of ``seeds``
    (**development seeds**: the report seeds are never looked at) and scored on that split's
    validation requests as the router sees them; the point with the best mean wins (ties: the
    first point). ``params`` are fixed hyper-parameters under the grid (e.g. ``steps``).
    Routers without a grid, or that cannot run on the setting, are not fitted here.
    ``jobs``: fits run at once in separate processes (:func:`~prlib.parallel.map_fits`); the chosen
    points do not depend on it. ``max_points``: only the first that many points of every grid
    (the same cut for every router; smoke runs use 1: a pipeline check, not a selection).
    A fit done before with the same code, data, router, parameters and seed is read back from
    the fit cache (:func:`cached_fits`).
    """
    classes = [get_router(r) for r in (registered() if routers is None else routers)]
    params = _check_params(classes, params)
    if set(seeds) & set(REPORT_SEEDS):
        raise ValueError(f"tuning seeds {sorted(set(seeds) & set(REPORT_SEEDS))} are report "
                         f"seeds; tune on development seeds {DEVELOPMENT_SEEDS}")
    tuned = [c for c in classes
             if c.grid and not c.unavailable_on(setting.feats, setting.preferences.strategy)]
    if max_points is not None and max_points < 1:
        raise ValueError(f"max_points must be >= 1 (or None: every point), got {max_points}")
    tasks = [(seed, cls, point) for seed in seeds for cls in tuned
             for point in grid_points(cls)[:max_points]]
    shared = Shared(setting)
    _views = _views_by_seed(shared)
    del setting  # the tasks read the setting through `shared` (sent to a worker once)

    def tune_one(seed, cls, point):
        setting = shared.obj
        train, val, _ = _views(seed)
        router = _new_router(cls, setting, seed, {**params.get(cls.__name__, {}), **point})
        t0 = time.perf_counter()
        router.fit(train, val)
        fit_s = time.perf_counter() - t0
        provenance.check_fit(router, train, val, f"tuning {cls.__name__} on {setting.name}, "
                             f"seed {seed}", setting.feedback)
        return {"setting": setting.name, "router": cls.name, "class": cls.__name__,
                "point": json.dumps(point), "seed": seed,
                "val_metric": validation_metric(setting, router, val), "fit_s": fit_s}

    keys = [fit_key("tune", shared.obj, seed, cls, {**params.get(cls.__name__, {}), **point},
                    threads) for seed, cls, point in tasks]
    rows = [{**row, "setting": shared.obj.name} for row in cached_fits(
        tune_one, tasks, keys, jobs, threads, progress, f"tuning · {shared.obj.name}",
        lambda seed, cls, point: f"seed {seed} {cls.name} {point}",
        cost=lambda seed, cls, point: cls.relative_fit_time)]
    frame = pd.DataFrame(rows, columns=["setting", "router", "class", "point", "seed",
                                        "val_metric", "fit_s"])
    chosen = {}
    for cls in tuned:
        means = frame[frame["class"] == cls.__name__].groupby("point", sort=False)[
            "val_metric"].mean()
        chosen[cls.__name__] = json.loads(means.idxmax())
    frame["chosen"] = [json.loads(p) == chosen[c] for c, p in zip(frame["class"], frame["point"])]
    return Tuning(frame, chosen, {c.__name__: dict(params.get(c.__name__, {})) for c in classes})


def run_setting(setting: Setting, routers: Sequence[type[Router] | str] | None = None,
                seeds: Sequence[int] = (0,), params: Mapping[str, dict] | None = None,
                progress: bool = False, fitted: dict | None = None,
                threads: int | None = THREADS, jobs: int = 1) -> pd.DataFrame:
    """Fit every router on each seed's split and score it on that test split.

    ``routers``: registered router classes or names (default: every registered router, in
    table order); an unregistered one is an error. ``params``: hyper-parameters per router
    class name (e.g. :meth:`Tuning.params`), on top of what the setting's feedback implies
    (``Router.params_for``). ``fitted``: a dict to receive the fitted routers by ``(class
    name, seed)``. ``threads``: torch threads while fitting and routing (default 1:
    deterministic, the same number on every machine of one kind; ``None`` leaves them as they
    are). ``jobs``: fits run at once in separate processes, each with ``threads`` threads
    (:func:`~prlib.parallel.map_fits`); the frame does not depend on it but for ``fit_s``.
    Without ``fitted``, a fit done before with the same code, data, router, parameters and seed
    is read back from the fit cache (:func:`cached_fits`; its ``fit_s`` is the stored fit's).

    A router that cannot run on the setting (:meth:`~prlib.routers.Router.unavailable`, e.g.
    a cascade on a bank without answer texts) is not fitted; the frame's
    ``attrs["not_run"]`` maps its name to the reason, and :func:`results_table` lists it.

    Returns one row per (router, seed): ``setting``, ``router`` (display name; oracles are named
    for what they read, :attr:`Setting.oracle_name`), ``family``, ``seed``, the
    :func:`~prlib.metrics.routing_metrics` columns (with every LLM a router calls charged,
    :meth:`~prlib.routers.Router.calls`), ``cost_per_1k`` (USD per 1,000 requests),
    ``picks_vary`` (share of test queries whose pick differs across users), ``picks_hash`` (a
    fingerprint of the test picks, to find routers that route identically), ``fit_s``
    (seconds), ``fit_memory_mb`` (the fit's peak resident memory above the process's before it,
    :class:`~prlib.efficiency.PeakMemory`), ``n_train`` / ``n_test`` requests and ``split`` (a
    digest of the seed's split: different seeds must differ, :mod:`prlib.provenance`).
    """
    classes = [get_router(r) for r in (registered() if routers is None else routers)]
    params = _check_params(classes, params)
    all_classes = classes
    reasons = {c.name: c.unavailable_on(setting.feats, setting.preferences.strategy)
               for c in classes}
    not_run = {name: why for name, why in reasons.items() if why}
    classes = [c for c in classes if c.name not in not_run]
    tasks = [(seed, cls) for seed in seeds for cls in classes]
    shared = Shared(setting)
    _views = _views_by_seed(shared)
    keep = fitted is not None  # (run_one must not read ``fitted``: workers get a copy of it)
    del setting  # the tasks read the setting through `shared` (sent to a worker once)

    def run_one(seed, cls):
        setting = shared.obj
        train, val, test = _views(seed)
        router = _new_router(cls, setting, seed, params.get(cls.__name__, {}))
        with PeakMemory() as memory:
            t0 = time.perf_counter()
            router.fit(train, val)
            fit_s = time.perf_counter() - t0
        provenance.check_fitted_and_scored(router, train, val, test,
                                           f"{cls.__name__} on {setting.name}, seed {seed}",
                                           setting.feedback)
        picks = router.route(test)
        metrics = routing_metrics(test, picks, router.calls(test, picks))
        if setting.pairwise:
            metrics.update(pairwise_metrics(test, router.scores(test)))
        row = {"setting": setting.name,
               "router": cls.row_name(setting.feedback, setting.preferences.strategy),
               "family": cls.family, "seed": seed, **metrics,
               "cost_per_1k": 1000 * metrics.get("cost_usd", np.nan),
               "picks_vary": picks_vary_share(test, picks),
               "picks_hash": hashlib.sha1(np.asarray(picks, np.int64).tobytes())
               .hexdigest()[:12], "fit_s": fit_s, "fit_memory_mb": memory.increase_mb,
               "n_train": len(train), "n_test": len(test),
               "split": provenance.split_digest(test)}
        return row, (router if keep else None)

    # fitted routers asked for: every fit runs (the cache keeps rows, not routers)
    keys = [None if keep else fit_key("run", shared.obj, seed, cls,
                                      params.get(cls.__name__, {}), threads)
            for seed, cls in tasks]
    rows = []
    for (seed, cls), (row, router) in zip(tasks, cached_fits(
            run_one, tasks, keys, jobs, threads, progress, shared.obj.name,
            lambda seed, cls: f"seed {seed} {cls.name}",
            cost=lambda seed, cls: cls.relative_fit_time)):
        rows.append({**row, "setting": shared.obj.name})
        if fitted is not None:
            fitted[(cls.__name__, seed)] = router
    out = pd.DataFrame(rows)
    if len(out):
        provenance.check_seeds_differ(out.groupby("seed")["split"].first().to_dict(),
                                      shared.obj.name)
    out.attrs["not_run"] = not_run
    out.attrs["not_run_family"] = {c.name: c.family for c in all_classes if c.name in not_run}
    return out


def tune_and_run(setting: Setting, seeds: Sequence[int], params: Mapping[str, dict] | None = None,
                 tune_seeds: Sequence[int] = DEVELOPMENT_SEEDS[:1],
                 routers: Sequence[type[Router] | str] | None = None, progress: bool = False,
                 fitted: dict | None = None, jobs: int = 1,
                 max_points: int | None = None) -> tuple[Tuning, pd.DataFrame]:
    """:func:`tune_setting` on ``tune_seeds`` (``max_points`` of every grid), then
    :func:`run_setting` on ``seeds`` with the chosen points: the one protocol of every
    comparison table."""
    tuning = tune_setting(setting, routers, tune_seeds, params, progress=progress, jobs=jobs,
                          max_points=max_points)
    results = run_setting(setting, routers, seeds, tuning.params(), progress=progress,
                          fitted=fitted, jobs=jobs)
    return tuning, results


def split_metrics(router: Router, setting: Setting, seed: int,
                  metric: str | None = None) -> dict[str, float]:
    """A fitted router's ``metric`` (default: the setting's) on the train, val and test
    requests of ``seed``'s split (train and val as the router saw them): a gap between train
    and the others shows overfitting."""
    metric = metric or setting.metric
    views = dict(zip(SPLITS, setting_views(setting, seed)))
    return {name: routing_metrics(req, router.route(req))[metric] for name, req in views.items()}


def concat_results(frames: Sequence[pd.DataFrame]) -> pd.DataFrame:
    """:func:`~prlib.experiment.run_setting` frames (or :func:`~prlib.headroom.sweep`'s) in one,
    keeping every frame's routers not run: ``pd.concat`` keeps ``attrs`` only where all frames
    have the same. Each is named "router (setting)" (", feedback" where the frame has a
    ``feedback`` column), so that :func:`~prlib.report.save_table` writes them all."""
    out = pd.concat(list(frames), ignore_index=True)
    for key in ("not_run", "not_run_family"):
        merged = {}
        for f in frames:
            where = ", ".join(str(f[c].iloc[0]) for c in ("setting", "feedback")
                              if c in f and len(f))
            merged.update({f"{r} ({where})" if where else r: v
                           for r, v in f.attrs.get(key, {}).items()})
        out.attrs[key] = merged
    return out
