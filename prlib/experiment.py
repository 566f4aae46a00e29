"""One experiment path: a :class:`Setting`, the registered routers, seeds -> a tidy frame.

A seed fixes the query split (:func:`prlib.requests.split_queries`) and every router's
initialisation. With ``feedback="choice"`` (the judge setting: a user reveals only which answer
they picked) routers are trained and validated on :func:`prlib.requests.choice_only` views, so
no router sees the judge's utilities; test metrics always use the true test requests. Oracles
and random routing are routers like any other.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from functools import cached_property
from typing import Mapping, Sequence

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from prlib.bank import Bank
from prlib.config import seed_everything
from prlib.features import NodeFeatures, node_features
from prlib.metrics import picks_vary_share, routing_metrics
from prlib.report import mean_std
from prlib.requests import build_requests, choice_only, split_queries
from prlib.routers import Router, get_router, registered
from prlib.simulate.preferences import Preferences

FEEDBACK = ("utility", "choice")
#: Metrics a setting may name as its main one (columns of :func:`run_setting`'s frame).
MAIN_METRICS = ("reward", "accuracy", "pct_oracle", "performance")
UPPER_BOUND = "upper bound"


@dataclass
class Setting:
    """What an experiment compares routers on.

    ``bank`` and ``preferences`` (simulated users over that bank); ``feedback``: what a router
    learns from, ``"utility"`` (every candidate's utility, multi-cost users) or ``"choice"``
    (only the pick, judge users); ``metric``: the main metric of the tables; ``fractions``: the
    train / val / test shares of queries.
    """

    name: str
    bank: Bank
    preferences: Preferences
    feedback: str = "utility"
    metric: str = "reward"
    fractions: tuple[float, float, float] = (0.7, 0.1, 0.2)
    features: NodeFeatures | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.feedback not in FEEDBACK:
            raise ValueError(f"feedback must be one of {FEEDBACK}, got {self.feedback!r}")
        if self.metric not in MAIN_METRICS:
            raise ValueError(f"metric must be one of {MAIN_METRICS}, got {self.metric!r}")
        if self.preferences.bank_name != self.bank.name:
            raise ValueError(f"the preferences are over bank {self.preferences.bank_name!r}, not "
                             f"{self.bank.name!r}")

    @cached_property
    def feats(self) -> NodeFeatures:
        """The bank's node features (computed once, embeddings cached on disk)."""
        return self.features if self.features is not None else node_features(self.bank)


def run_setting(setting: Setting, routers: Sequence[type[Router] | str] | None = None,
                seeds: Sequence[int] = (0,), params: Mapping[str, dict] | None = None,
                progress: bool = False, fitted: dict | None = None) -> pd.DataFrame:
    """Fit every router on each seed's split and score it on that test split.

    ``routers``: registered router classes or names (default: every registered router, in
    table order); an unregistered one is an error. ``params``: hyper-parameters per router
    class name, on top of what the setting's feedback implies (``Router.params_for``).
    ``fitted``: a dict to receive the fitted routers by ``(class name, seed)``.

    Returns one row per (router, seed): ``setting``, ``router`` (display name), ``family``,
    ``seed``, the :func:`~prlib.metrics.routing_metrics` columns, ``cost_per_1k`` (USD per
    1,000 requests), ``picks_vary`` (share of test queries whose pick differs across users),
    ``fit_s`` (seconds) and ``n_train`` / ``n_test`` requests.
    """
    classes = [get_router(r) for r in (registered() if routers is None else routers)]
    params = dict(params or {})
    unknown = sorted(set(params) - {c.__name__ for c in classes})
    if unknown:
        raise ValueError(f"params name routers that are not run: {unknown}")
    prefs = setting.preferences
    rows = []
    bar = tqdm(total=len(seeds) * len(classes), desc=setting.name, disable=not progress)
    for seed in seeds:
        split = split_queries(prefs.interactions["query_id"].unique(), setting.fractions,
                              seed=seed)
        req = build_requests(prefs.interactions, setting.bank, split)
        train, val, test = (req.split(s) for s in ("train", "val", "test"))
        if setting.feedback == "choice":
            train, val = choice_only(train), choice_only(val)
        for cls in classes:
            bar.set_postfix_str(f"seed {seed} {cls.name}")
            seed_everything(seed)
            router = cls(setting.feats, seed=seed, **{**cls.params_for(setting.feedback),
                                                      **params.get(cls.__name__, {})})
            t0 = time.perf_counter()
            router.fit(train, val)
            fit_s = time.perf_counter() - t0
            picks = router.route(test)
            metrics = routing_metrics(test, picks)
            rows.append({"setting": setting.name, "router": cls.name, "family": cls.family,
                         "seed": seed, **metrics,
                         "cost_per_1k": 1000 * metrics.get("cost_usd", np.nan),
                         "picks_vary": picks_vary_share(test, picks), "fit_s": fit_s,
                         "n_train": len(train), "n_test": len(test)})
            if fitted is not None:
                fitted[(cls.__name__, seed)] = router
            bar.update()
    bar.close()
    return pd.DataFrame(rows)


def results_table(results: pd.DataFrame, metrics: Sequence[str],
                  fmt: str | Mapping[str, str] = ".3f", sort_by: str | None = None,
                  mark: str | None = None) -> pd.DataFrame:
    """Mean ± std over seeds per router (:func:`prlib.report.mean_std`), one column per metric.

    ``fmt``: one format, or one per metric (default ``.3f``). Rows keep the order of first
    appearance, or descend by the mean of ``sort_by``. With ``mark`` (a metric), a ``best``
    column flags the best router on it, upper bounds excluded.
    """
    fmts = fmt if isinstance(fmt, Mapping) else {}
    default = ".3f" if isinstance(fmt, Mapping) else fmt
    order = list(dict.fromkeys(results["router"]))
    g = results.groupby("router", sort=False)
    if sort_by is not None:
        order = g[sort_by].mean().sort_values(ascending=False).index.tolist()
    out = pd.DataFrame({"router": order,
                        "family": [results.loc[results["router"] == r, "family"].iloc[0]
                                   for r in order]})
    for m in metrics:
        out[m] = [mean_std(g.get_group(r)[m].to_numpy(), fmts.get(m, default)) for r in order]
    out["seeds"] = [g.get_group(r)["seed"].nunique() for r in order]
    if mark is not None:
        best = strongest(results, mark)
        out["best"] = np.where(out["router"] == best, "best (excl. oracle)", "")
    return out


def strongest(results: pd.DataFrame, metric: str, exclude: Sequence[str] = ()) -> str:
    """The router with the highest mean ``metric`` over seeds; upper bounds (oracles) and
    ``exclude`` left out."""
    keep = ~results["router"].isin(exclude) & (results["family"] != UPPER_BOUND)
    means = results[keep].groupby("router")[metric].mean()
    if means.empty:
        raise ValueError("no router left to compare after excluding upper bounds and "
                         f"{list(exclude)}")
    return str(means.idxmax())


def improvement(results: pd.DataFrame, metric: str, ours: str) -> dict:
    """Relative improvement (%) of ``ours`` over the strongest other router (upper bounds
    excluded, strongest = best mean ``metric`` over seeds), computed per seed on the same split,
    then mean and std over seeds. A negative value means that baseline beats ours."""
    base = strongest(results, metric, exclude=(ours,))
    a = results[results["router"] == ours].set_index("seed")[metric]
    b = results[results["router"] == base].set_index("seed")[metric].reindex(a.index)
    pct = 100.0 * (a - b) / b.abs()
    return {"metric": metric, "ours": ours, "strongest_baseline": base,
            "ours_mean": float(a.mean()), "baseline_mean": float(b.mean()),
            "improvement_pct_mean": float(pct.mean()),
            "improvement_pct_std": float(pct.std(ddof=0)), "per_seed_pct": pct.to_dict(),
            "ours_wins": bool(a.mean() > b.mean())}


def describe_improvement(imp: dict, fmt: str = ".1f") -> str:
    """One sentence stating the computed improvement (or that a baseline wins)."""
    spread = mean_std(list(imp["per_seed_pct"].values()), fmt)
    if imp["ours_wins"]:
        return (f"{imp['ours']} beats the strongest baseline, {imp['strongest_baseline']}, on "
                f"{imp['metric']} by {spread} % (mean ± std over seeds; "
                f"{imp['ours_mean']:.4f} vs {imp['baseline_mean']:.4f}).")
    return (f"The strongest baseline, {imp['strongest_baseline']}, BEATS {imp['ours']} on "
            f"{imp['metric']}: ours differs by {spread} % (mean ± std over seeds; "
            f"{imp['ours_mean']:.4f} vs {imp['baseline_mean']:.4f}).")
