"""Few-shot studies of the paper: new users and new LLMs (notebook 60).

Held-out splits on top of the usual split by query:

* **users held out** (:func:`split_users`, seeded): a held-out user's requests never enter
  training; at test time the router gets ``k`` of that user's training-split requests
  (:func:`support_requests`) as visible feedback and routes the user's test requests;
* **LLMs held out** (:func:`drop_llms`): the router is trained over the other LLMs; the held-out
  LLM is then added from its description, prices and ``k`` interactions per user: ``k`` queries
  of the test split on which every user reveals their feedback (a new LLM is tried on new
  queries); those queries leave the test set.

Each few-shot result is reported as % of the *fully trained* router (trained with every user and
every LLM) on the same test requests, next to baselines given the same ``k`` interactions
(:data:`USER_BASELINES`): with ``k = 0`` every method falls back to its population prior.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import pandas as pd

from prlib import provenance
from prlib.experiment import Setting, _new_router, setting_views, test_metric
from prlib.requests import Requests, RequestsError, choice_only, concat_requests
from prlib.routers import (BestPerUserRouter, BestPerUserTaskRouter, BestSingleRouter,
                           PerUserKNNRouter, PersonalizedRouterV3, Router)

#: What a new user's k interactions feed, besides ours: the population's best LLM (ignores
#: them; the k = 0 prior), the best LLM among the k, the lookup table over the k (per task),
#: per-user kNN over the k. Each is fitted on the known users' training requests plus the k.
USER_BASELINES: tuple[type[Router], ...] = (BestSingleRouter, BestPerUserRouter,
                                            BestPerUserTaskRouter, PerUserKNNRouter)
OURS_NO_RETRAINING = "ours, k interactions added (no retraining)"
OURS_FINE_TUNED = "ours, k interactions + short fine-tune"
#: The router the studies call ours (any with ``add_user``, ``add_llm`` and ``fine_tune``).
OURS_ROUTER: type[Router] = PersonalizedRouterV3


def split_users(user_ids, n_heldout: int, seed: int) -> tuple[list[str], list[str]]:
    """``(known, held_out)``: a seeded partition of the distinct ``user_ids``."""
    users = np.array(sorted(set(map(str, user_ids))))
    if not 0 < n_heldout < len(users):
        raise RequestsError(f"n_heldout must be between 1 and {len(users) - 1} (there are "
                            f"{len(users)} users), got {n_heldout}")
    held = set(np.random.default_rng(seed).permutation(users)[:n_heldout].tolist())
    return [u for u in users if u not in held], [u for u in users if u in held]


def of_users(req: Requests, users) -> Requests:
    """The requests of ``users``."""
    return req.select(req.frame["user_id"].isin(set(users)).to_numpy())


def support_requests(req: Requests, users, k: int, seed: int) -> Requests:
    """``k`` requests per user of ``users``, drawn (seeded) from ``req``; ``k = 0``: none. A
    ``k`` larger than a user's requests is an error that names the largest possible ``k``."""
    if k < 0:
        raise RequestsError(f"k must be >= 0, got {k}")
    rng = np.random.default_rng(seed)
    groups = req.frame.groupby("user_id").indices
    rows = []
    for u in users:
        have = groups.get(u, np.array([], dtype=int))
        if k > len(have):
            raise RequestsError(f"user {u!r} has {len(have)} requests to draw from, fewer than "
                                f"k = {k}; use k <= {len(have)}")
        rows.extend(rng.choice(have, k, replace=False).tolist())
    return req.select(np.sort(np.asarray(rows, dtype=int)))


def drop_llms(req: Requests, llms: Sequence[str]) -> Requests:
    """``req`` over the other LLMs. A request whose chosen LLM is dropped gets the remaining
    candidate with the highest utility as its choice (the multi-cost simulator's own rule; for
    judge users, their most likely pick by hidden persona score). Needs true utilities, so apply
    it before :func:`~prlib.requests.choice_only`."""
    missing = sorted(set(llms) - set(req.llms))
    if missing:
        raise RequestsError(f"unknown LLMs {missing}; the requests are over {req.llms}")
    keep = [i for i, name in enumerate(req.llms) if name not in set(llms)]
    util = req.utility[:, keep]
    if np.isnan(util).all(1).any():
        raise RequestsError("some requests have no candidate left without the dropped LLMs")
    col = {old: new for new, old in enumerate(keep)}
    chosen = np.array([col.get(int(c), -1) for c in req.chosen])
    chosen = np.where(chosen >= 0, chosen, np.nanargmax(np.where(np.isnan(util), -np.inf, util), 1))
    return req.with_llm_columns([req.llms[i] for i in keep], lambda a: a[:, keep], chosen)


def pad_llms(req: Requests, llms: Sequence[str]) -> Requests:
    """``req`` over ``llms`` (its own LLMs followed by new ones, which are not candidates)."""
    if list(llms[:len(req.llms)]) != list(req.llms):
        raise RequestsError(f"{llms} does not extend {req.llms}")
    extra = len(llms) - len(req.llms)
    return req.with_llm_columns(llms, lambda a: np.hstack([a, np.full((len(a), extra), np.nan)]))


def raw_views(setting: Setting, seed: int) -> tuple[Requests, Requests, Requests]:
    """``(train, val, test)`` of one seed's query split with true utilities (no choice-only
    view yet): what :func:`drop_llms` needs."""
    return setting_views(setting, seed, raw=True)


def seen_by_router(setting: Setting, req: Requests) -> Requests:
    """What a router learns from: the choice-only view with choice feedback, else ``req``."""
    return choice_only(req) if setting.feedback == "choice" else req


def check_held_out(router: Router, users=(), llms=()) -> None:
    """Raise AssertionError if a fitted router's training history holds a request of one of
    ``users`` or the router knows one of ``llms``: held-out means absent from training."""
    seen = set(router.history_.frame["user_id"]) & set(users)
    assert not seen, f"held-out users {sorted(seen)} are in the training history"
    known = set(router.feats.llms) & set(llms)
    assert not known, f"held-out LLMs {sorted(known)} are candidates of the trained router"


def _ours(setting, seed, params, train, val, feats=None,
          ours: type[Router] = OURS_ROUTER) -> Router:
    """Ours fitted on ``train`` (over ``feats``' LLMs when given)."""
    s = setting if feats is None else replace(setting, features=feats)
    return _new_router(ours, s, seed, params).fit(train, val)


def full_key(ours: type[Router], setting: Setting, seed: int) -> tuple:
    """The key under which a study's ``cache`` keeps ``ours`` trained on every user and LLM of
    ``seed``'s training split of ``setting`` (put an already fitted one there to reuse it)."""
    return ("full", ours.__name__, setting.name, seed)


def _full(setting, seed, params, cache, ours: type[Router] = OURS_ROUTER) -> Router:
    """Ours trained on every user and LLM of the seed's training split (kept in ``cache``)."""
    key = full_key(ours, setting, seed)
    if cache is None or key not in cache:
        train, val, _ = raw_views(setting, seed)
        router = _ours(setting, seed, params, seen_by_router(setting, train),
                       seen_by_router(setting, val), ours=ours)
        if cache is None:
            return router
        cache[key] = router
    return cache[key]


def few_shot_users(setting: Setting, seeds: Sequence[int], ks: Sequence[int], n_heldout: int,
                   params: Mapping | None = None, progress: bool = False,
                   cache: dict | None = None, fine_tune_steps: int = 100,
                   ours: type[Router] = OURS_ROUTER,
                   baselines: Sequence[type[Router]] = USER_BASELINES,
                   baseline_params: Mapping[str, dict] | None = None,
                   jobs: int = 1) -> pd.DataFrame:
    """New users: per seed, ``n_heldout`` users are held out of training; ours gets ``k`` of each
    one's training-split requests as visible feedback (``add_user``, no retraining) and routes
    their test requests; each baseline of :data:`USER_BASELINES` is fitted on the known users'
    training requests plus the same ``k``. One row per (seed, k, method): ``metric`` (the
    setting's main metric on the held-out users' test requests), ``full`` (the fully trained
    ours on the same requests) and ``pct_of_full``. ``cache``: a dict that keeps the fully
    trained routers between studies of the same setting and seeds. With ``fine_tune_steps``
    > 0, ours is also fine-tuned for that many steps on the k interactions (k > 0;
    ``fine_tune`` of ours, kept or not by the known users' validation on the known users' validation
    requests). ``ours``: the router studied (any with ``add_user``, and ``fine_tune`` when
    ``fine_tune_steps`` > 0; e.g. GMTRouter in notebook 90); ``baselines`` and their
    ``baseline_params`` (per class name, e.g. their tuned points; default: their defaults).
    ``jobs``: seeds run at once in that many processes (:func:`~prlib.parallel.map_fits`)."""
    params = dict(params or {})

    def one(seed, full_router):
        train_raw, val_raw, test = raw_views(setting, seed)
        train, val = seen_by_router(setting, train_raw), seen_by_router(setting, val_raw)
        known, new = split_users(train.frame["user_id"], n_heldout, seed)
        test_new = of_users(test, new)
        if full_router is None:  # not in the cache: train it here
            full_router = _full(setting, seed, params, None, ours)
        full = test_metric(setting, full_router, test_new)
        tr_known, va_known = of_users(train, known), of_users(val, known)
        provenance.check_split(tr_known, va_known, test_new, f"new users, seed {seed}",
                               held_out_users=new)
        base = _ours(setting, seed, params, tr_known, va_known, ours=ours)
        provenance.check_fit(base, tr_known, va_known, f"new users: {ours.__name__}, seed {seed}",
                             setting.feedback)
        check_held_out(base, users=new)
        rows = []
        for k in ks:
            support = support_requests(of_users(train, new), new, k, seed)
            rows += _user_rows(setting, seed, k, base, support, tr_known, va_known, test_new, full,
                               fine_tune_steps, baselines, baseline_params or {})
        return rows, full_router

    return _per_seed(one, ours, setting, seeds, cache, jobs, progress, "new users: seeds")


def _per_seed(one, ours, setting, seeds, cache, jobs, progress, desc) -> pd.DataFrame:
    """``one(seed, fully trained ours or None) -> (rows, fully trained ours)`` over ``seeds``
    (in ``jobs`` processes), the fully trained routers kept in ``cache``."""
    from prlib.parallel import map_fits

    _ = setting.feats  # computed here once, sent to the workers with the setting
    keys = [full_key(ours, setting, seed) for seed in seeds]
    tasks = [(seed, None if cache is None else cache.get(key)) for seed, key in zip(seeds, keys)]
    rows = []
    for key, (part, full_router) in zip(keys, map_fits(one, tasks, jobs, progress=progress,
                                                        desc=desc)):
        rows += part
        if cache is not None:
            cache[key] = full_router
    return pd.DataFrame(rows)


def _user_rows(setting, seed, k, base, support, tr_known, va_known, test_new, full,
               fine_tune_steps, baselines, baseline_params) -> list[dict]:
    new = sorted(set(test_new.frame["user_id"]))
    where = f"new users, seed {seed}, k = {k}"
    provenance.check_shots(support, new, k, where)
    ours = copy.deepcopy(base)
    if len(support):
        ours.add_user(support)
        provenance.check_shots(ours.provenance["add_user"][-1][0], new, k, f"{where}, add_user")
    out = [(OURS_NO_RETRAINING, "ours", test_metric(setting, ours, test_new))]
    if fine_tune_steps and len(support):
        tuned = copy.deepcopy(base).fine_tune(support, va_known, fine_tune_steps)
        provenance.check_fine_tune(tuned, new, k, va_known, f"{where}, fine-tune")
        out.append((OURS_FINE_TUNED, "ours", test_metric(setting, tuned, test_new)))
    hist = concat_requests(tr_known, support) if len(support) else tr_known
    for cls in baselines:
        b = _new_router(cls, setting, seed, baseline_params.get(cls.__name__, {})).fit(
            hist, va_known)
        provenance.check_fit(b, hist, va_known, f"{where}, {cls.__name__}", setting.feedback)
        provenance.check_learned_shots(b, new, k, f"{where}, {cls.__name__}")
        out.append((cls.name, cls.family, test_metric(setting, b, test_new)))
    return [{"seed": seed, "k": k, "method": m, "family": fam, "metric": v, "full": full,
             "pct_of_full": 100 * v / full if full else np.nan} for m, fam, v in out]


def few_shot_llms(setting: Setting, seeds: Sequence[int], ks: Sequence[int],
                  heldout_llms: Sequence[str], params: Mapping | None = None,
                  n_heldout_users: int = 0, progress: bool = False,
                  cache: dict | None = None, jobs: int = 1,
                  ours: type[Router] = OURS_ROUTER) -> pd.DataFrame:
    """New LLMs (and, with ``n_heldout_users > 0``, new users at the same time): per seed, ours
    is trained without ``heldout_llms`` (and without the held-out users); the LLMs are then added
    from their description and prices (``add_llm``), with ``k`` interactions per user: ``k``
    queries drawn from the test split, on which every user reveals every candidate's feedback
    (the new LLMs' included): the known users' through ``add_llm``, the held-out users' through
    ``add_user``; those queries leave the test set. Evaluated on the remaining test requests
    (only the held-out users' when there are any)
    against the fully trained ours on the same requests. Rows as in :func:`few_shot_users`;
    baselines are fitted on the training requests (the new LLMs not candidates there) plus the
    same interactions. ``jobs``: seeds run at once in that many processes."""
    params = dict(params or {})
    heldout_llms = list(heldout_llms)
    prices = setting.bank.llms.set_index("llm")

    def one(seed, full_router):
        rows = []
        train_raw, val_raw, test_raw = raw_views(setting, seed)
        users = sorted(train_raw.frame["user_id"].unique())
        known, new = (split_users(users, n_heldout_users, seed) if n_heldout_users
                      else (users, []))
        if full_router is None:
            full_router = _full(setting, seed, params, None, ours)
        old = [m for m in train_raw.llms if m not in set(heldout_llms)]
        order = old + heldout_llms  # the LLMs of ours once the held-out ones are added
        tr_old = of_users(seen_by_router(setting, drop_llms(train_raw, heldout_llms)), known)
        va_old = of_users(seen_by_router(setting, drop_llms(val_raw, heldout_llms)), known)
        base = _ours(setting, seed, params, tr_old, va_old, setting.feats.with_llms(old), ours)
        check_held_out(base, users=new, llms=heldout_llms)
        pool = reorder_llms(seen_by_router(setting, test_raw), order)  # what users reveal
        truth = reorder_llms(test_raw, order)
        test_queries = np.array(sorted(truth.frame["query_id"].unique()))
        for k in ks:
            if k > len(test_queries) - 1:
                raise RequestsError(f"k = {k} support queries leave no test query of the "
                                    f"{len(test_queries)}; use k <= {len(test_queries) - 1}")
            # k new queries, on which every user reveals their feedback (the new LLMs' included)
            asked = set(np.random.default_rng([seed, k]).choice(test_queries, k, replace=False))
            on_asked = truth.frame["query_id"].isin(asked).to_numpy()
            support, rest = pool.select(on_asked), truth.select(~on_asked)
            if new:
                rest = of_users(rest, new)
            added = copy.deepcopy(base)
            for i, name in enumerate(heldout_llms):  # the known users' interactions come last
                last = i == len(heldout_llms) - 1
                added.add_llm(name, str(prices.loc[name, "description"]),
                             float(prices.loc[name, "input_usd_per_m"]),
                             float(prices.loc[name, "output_usd_per_m"]),
                             history=of_users(support, known) if last and len(support) else None)
            if new and len(support):
                added.add_user(of_users(support, new))
            full = test_metric(setting, full_router, reorder_llms(rest, train_raw.llms))
            out = [(OURS_NO_RETRAINING, "ours", test_metric(setting, added, rest))]
            hist = pad_llms(tr_old, order)
            if len(support):
                hist = concat_requests(hist, support)
            feats = replace(setting, features=setting.feats.with_llms(order))
            for cls in USER_BASELINES:
                b = _new_router(cls, feats, seed, {}).fit(hist, pad_llms(va_old, order))
                provenance.check_learned_shots(
                    b, new, provenance.ids_of(of_users(support, new)).per_user,
                    f"new LLMs, seed {seed}, k = {k}, {cls.name}")
                out.append((cls.name, cls.family, test_metric(setting, b, rest)))
            rows += [{"seed": seed, "k": k, "method": m, "family": fam, "metric": v,
                      "full": full, "pct_of_full": 100 * v / full if full else np.nan}
                     for m, fam, v in out]
        return rows, full_router

    return _per_seed(one, ours, setting, seeds, cache, jobs, progress, "new LLMs: seeds")


def reorder_llms(req: Requests, order: Sequence[str], keep: Sequence[str] | None = None
                 ) -> Requests:
    """``req`` with its LLM columns in ``order`` (only ``keep``, in that order, if given)."""
    cols = list(keep if keep is not None else order)
    idx = [req.llms.index(m) for m in cols]
    pos = {old: new for new, old in enumerate(idx)}
    chosen = np.array([pos.get(int(c), -1) for c in req.chosen])
    if (chosen < 0).any():
        raise RequestsError("a request's chosen LLM is not among the kept LLMs")
    return req.with_llm_columns(cols, lambda a: a[:, idx], chosen)


def few_shot_summary(results: pd.DataFrame, k: int) -> pd.DataFrame:
    """One row per method at ``k`` interactions: mean % of the fully trained ours with its 95 %
    CI over seeds, and the paired difference ours − method (percentage points) with its CI."""
    from prlib.metrics import mean_ci, paired_difference

    at = results[results["k"] == k]
    ours = at[at["method"] == OURS_NO_RETRAINING].set_index("seed")["pct_of_full"]
    rows = []
    for method, g in at.groupby("method", sort=False):
        v = g.set_index("seed")["pct_of_full"].reindex(ours.index)
        ci, d = mean_ci(v), paired_difference(ours.to_numpy(), v.to_numpy())
        rows.append({"k": k, "method": method, "pct_of_full": ci["mean"],
                     "ci_low": ci["ci_low"], "ci_high": ci["ci_high"],
                     "ours_minus_method_pp": d["mean"] if method != OURS_NO_RETRAINING else 0.0,
                     "diff_ci_low": d["ci_low"], "diff_ci_high": d["ci_high"], "seeds": ci["n"]})
    return pd.DataFrame(rows)


def layer_sweep(setting: Setting, router: type[Router], layers: Sequence[int],
                seeds: Sequence[int], params: Mapping | None = None,
                progress: bool = False, jobs: int = 1) -> pd.DataFrame:
    """The layer-count ablation: ``router`` fitted with each number of message-passing
    ``layers`` (its ``layers`` hyper-parameter) on every seed's split, everything else equal.
    One row per (layers, seed): the router's test metrics of
    :func:`~prlib.experiment.run_setting` (``fit_s`` included) and ``layers``. ``jobs``: fits
    run at once in that many processes (:func:`~prlib.parallel.map_fits`)."""
    from prlib.experiment import run_setting
    from prlib.parallel import map_fits

    if "layers" not in router.defaults:
        raise ValueError(f"{router.__name__} has no 'layers' hyper-parameter")
    base = dict(params or {})

    def one(n, seed):
        p = {router.__name__: {**base, "layers": int(n)}}
        return run_setting(setting, [router], [seed], params=p).assign(layers=int(n))

    _ = setting.feats  # computed here once, sent to the workers with the setting
    # the deepest (slowest) fits are handed out first, so no long fit starts last
    tasks = [(int(n), seed) for n in layers for seed in seeds][::-1]
    parts = map_fits(one, tasks, jobs, progress=progress, desc=f"{router.name}: layers",
                     label=lambda n, seed: f"{n} layers, seed {seed}")
    return pd.concat(list(parts)[::-1], ignore_index=True)


def archetype_silhouette(states: np.ndarray, labels: Sequence) -> float:
    """How well ``labels`` (n,) separate ``states`` (n, d) in the full-dimensional space:
    scikit-learn's silhouette score (-1 ... 1, 0: no separation) after standardising each
    dimension (notebook 80's score of what a router learned about its users)."""
    from sklearn.metrics import silhouette_score
    from sklearn.preprocessing import StandardScaler

    labels = np.asarray(labels)
    if len(states) != len(labels):
        raise ValueError(f"{len(states)} states but {len(labels)} labels")
    n_classes = len(np.unique(labels))
    if not 2 <= n_classes <= len(labels) - 1:
        raise ValueError(f"a silhouette needs 2 to n - 1 classes, got {n_classes} for "
                         f"{len(labels)} states")
    return float(silhouette_score(StandardScaler().fit_transform(states), labels))
