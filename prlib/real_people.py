"""Notebook 85: real, identified people (:mod:`prlib.human_logs`). Does knowing who votes help?

Every model predicts P(side a wins) for a held-out vote of a *known* person; the split is by
question (every vote on a question in one split; seeded, 70/10/20 as elsewhere,
:func:`prlib.requests.split_queries`), so a test question was never seen with a label.

- **population Bradley-Terry**: one strength per LLM, the same for everybody;
- **text-aware population**: the same plus the answers' style features
  (:func:`prlib.simulate.judge.style_features`: length, structure, code, ...), still one model
  for everybody;
- **per-person Bradley-Terry**: the population strengths plus each person's own offsets, L2-shrunk
  to 0 (strength ``lam`` picked on the validation questions), so a person with few votes falls
  back to the population;
- **kNN of persons**: the offsets averaged with the K most alike persons' (cosine);
- the project's routers that learn from pairs, fitted on each person's ratings of the training
  questions (:func:`router_setting`), scored by their score differences.

Labels, ties as stated: ``y = score_a`` (MT-Bench: 1, 0 or 0.5 for a tie; Tulu: its five grades
1, 0.75, 0.5, 0.25, 0). Pair accuracy and AUC are over the *decisive* votes (y != 0.5; a zero
predicted difference counts one half); log-loss is the cross-entropy against ``y`` over every
vote (a tie is a half win), only for models that give probabilities.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy.optimize import minimize
from scipy.special import expit as _sigmoid
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score

from prlib import provenance
from prlib.bank import Bank
from prlib.experiment import Setting, setting_views
from prlib.metrics import paired_difference
from prlib.requests import split_queries

FRACTIONS = (0.7, 0.1, 0.2)
#: Grid of the per-person shrinkage (L2 on the offsets); picked on validation log-loss.
LAMBDAS = (1.0, 3.0, 10.0, 30.0, 100.0, 300.0, 1000.0)
#: L2 of the population strengths (a weak prior keeping them finite).
POP_L2 = 1.0
#: Persons averaged by the kNN model (besides the person).
KNN_K = 5
POPULATION = "Bradley-Terry (population)"
TEXT_POPULATION = "Bradley-Terry + answer style (population)"
PERSON = "Bradley-Terry per person (shrunk)"
KNN = "kNN of persons (offsets)"
PERSON_WEAK = "Bradley-Terry per person (weakest shrinkage)"
#: The personalised models of the permutation test and their population twin.
PERSONAL = (PERSON, KNN)
#: The project's routers that score every person alike (the rest read who asks).
POPULATION_ROUTERS = ("BradleyTerryRouter", "KNNRouter", "BestSingleRouter", "MFRouter",
                      "MLPRouter", "RandomRouter")


@dataclass
class Votes:
    """Encoded votes: ``user`` (codes into ``users``), ``question`` (str), ``a`` / ``b`` (codes
    into ``llms``), ``y`` (side a's win score)."""

    users: list[str]
    llms: list[str]
    user: np.ndarray
    question: np.ndarray
    a: np.ndarray
    b: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return len(self.y)

    def select(self, mask) -> "Votes":
        m = np.asarray(mask)
        return Votes(self.users, self.llms, self.user[m], self.question[m], self.a[m],
                     self.b[m], self.y[m])

    def with_users(self, user: np.ndarray) -> "Votes":
        return Votes(self.users, self.llms, user, self.question, self.a, self.b, self.y)


def encode(pairs: pd.DataFrame, llms: Sequence[str] | None = None) -> Votes:
    """:class:`Votes` of a loader's frame (``user_id, question_id, llm_a, llm_b, score_a``)."""
    need = ["user_id", "question_id", "llm_a", "llm_b", "score_a"]
    missing = [c for c in need if c not in pairs.columns]
    if missing:
        raise ValueError(f"pairs lack columns {missing}; pass a frame of prlib.human_logs")
    y = pairs["score_a"].to_numpy(dtype=float)
    if np.isnan(y).any() or (y < 0).any() or (y > 1).any():
        raise ValueError("score_a must lie in [0, 1] (side a's win score, ties 0.5)")
    llms = list(llms) if llms is not None else sorted(set(pairs["llm_a"]) | set(pairs["llm_b"]))
    users = sorted(pairs["user_id"].astype(str).unique())
    idx = pd.Index(llms)
    a, b = idx.get_indexer(pairs["llm_a"]), idx.get_indexer(pairs["llm_b"])
    if (a < 0).any() or (b < 0).any():
        raise ValueError("pairs name LLMs outside `llms`")
    return Votes(users, llms, pd.Index(users).get_indexer(pairs["user_id"].astype(str)),
                 pairs["question_id"].astype(str).to_numpy(), a, b, y)


def split_masks(votes: Votes, seed: int, fractions=FRACTIONS) -> dict[str, np.ndarray]:
    """Boolean masks of the train / val / test votes: split by question (the same partition
    as :func:`prlib.experiment.setting_views` of :func:`router_setting` for this seed)."""
    split = split_queries(np.unique(votes.question), fractions, seed=seed).of()
    side = np.array([split[q] for q in votes.question])
    return {s: side == s for s in ("train", "val", "test")}


# --------------------------------------------------------------------------- models
def fit_offsets(votes: Votes, l2: float, base: np.ndarray | None = None,
                groups: np.ndarray | None = None, n_groups: int | None = None,
                init: np.ndarray | None = None) -> np.ndarray:
    """Bradley-Terry strengths per group (n_groups, n_llms) with soft labels: the logit of
    vote i is ``base_i + D[g_i, a_i] - D[g_i, b_i]``; minimises the cross-entropy against y plus
    ``l2 / 2 * |D|^2`` (L-BFGS, started at ``init``). Default: one group (the population),
    base 0."""
    g = np.zeros(len(votes), int) if groups is None else np.asarray(groups)
    n_g = 1 if groups is None else (n_groups or int(g.max()) + 1)
    n_l = len(votes.llms)
    base = np.zeros(len(votes)) if base is None else base
    if len(votes) == 0:
        return np.zeros((n_g, n_l))
    ia, ib = g * n_l + votes.a, g * n_l + votes.b
    y = votes.y

    def loss(d):
        z = base + d[ia] - d[ib]
        p = _sigmoid(z)
        f = np.sum(np.logaddexp(0, z) - y * z) + 0.5 * l2 * d @ d
        r = p - y
        grad = l2 * d + np.bincount(ia, r, n_g * n_l) - np.bincount(ib, r, n_g * n_l)
        return f, grad

    x0 = np.zeros(n_g * n_l) if init is None else np.ravel(init)
    res = minimize(loss, x0, jac=True, method="L-BFGS-B")
    return res.x.reshape(n_g, n_l)


def bt_prob(theta: np.ndarray, votes: Votes) -> np.ndarray:
    """P(a wins) of population strengths (n_llms,)."""
    return _sigmoid(theta[votes.a] - theta[votes.b])


def person_prob(theta: np.ndarray, offsets: np.ndarray, votes: Votes) -> np.ndarray:
    """P(a wins) with per-person offsets (n_users, n_llms) on top of the population's."""
    d = offsets[votes.user]
    rows = np.arange(len(votes))
    return _sigmoid(theta[votes.a] - theta[votes.b] + d[rows, votes.a] - d[rows, votes.b])


def knn_offsets(offsets: np.ndarray, k: int = KNN_K) -> np.ndarray:
    """Each person's offsets averaged with those of the ``k`` persons with the most alike
    offsets (cosine; persons without offsets are never neighbours)."""
    norm = np.linalg.norm(offsets, axis=1, keepdims=True)
    unit = np.where(norm > 0, offsets / np.where(norm > 0, norm, 1), 0)
    sim = unit @ unit.T
    np.fill_diagonal(sim, -np.inf)
    sim[:, norm[:, 0] == 0] = -np.inf
    k = min(k, max(len(offsets) - 1, 0))
    out = offsets.copy()
    if k:
        nn = np.argsort(-sim, axis=1)[:, :k]
        ok = np.isfinite(np.take_along_axis(sim, nn, 1))
        out = (offsets + (offsets[nn] * ok[..., None]).sum(1)) / (1 + ok.sum(1))[:, None]
    return out


def fit_person(votes: Votes, theta: np.ndarray, train, val, lambdas=LAMBDAS):
    """Per-person offsets fitted on ``train`` for each shrinkage in ``lambdas``; the one with the
    lowest validation log-loss (the strongest shrinkage on a tie): ``(offsets, lam)``. Each fit
    starts from the previous, stronger one's solution."""
    tr, va = votes.select(train), votes.select(val)
    base = theta[tr.a] - theta[tr.b]
    best, d = None, None
    for lam in sorted(lambdas, reverse=True):
        d = fit_offsets(tr, lam, base, tr.user, len(votes.users), init=d)
        ll = log_loss(va.y, person_prob(theta, d, va)) if len(va) else 0.0
        if best is None or ll < best[0] - 1e-12:
            best = (ll, lam, d)
    return best[2], best[1]


def style_table(bank: Bank) -> dict[tuple[str, str], np.ndarray]:
    """Standardised style features of every answer, by (query_id, llm)."""
    from prlib.simulate.judge import style_features

    feats = style_features(bank.bank["response"].tolist()).to_numpy(dtype=float)
    feats = (feats - feats.mean(0)) / np.where(feats.std(0) > 0, feats.std(0), 1)
    return {(q, m): f for q, m, f in zip(bank.bank["query_id"], bank.bank["llm"], feats)}


def text_model(votes: Votes, train, styles: dict) -> callable:
    """The text-aware population model: logistic regression (no intercept, C = 1) on the LLM
    indicators' and the answers' style differences, soft labels as sample weights. Returns a
    function ``Votes -> P(a wins)``."""
    def x(v):
        onehot = np.zeros((len(v), len(v.llms)))
        onehot[np.arange(len(v)), v.a] += 1
        onehot[np.arange(len(v)), v.b] -= 1
        sa = np.stack([styles[(q, v.llms[i])] for q, i in zip(v.question, v.a)])
        sb = np.stack([styles[(q, v.llms[i])] for q, i in zip(v.question, v.b)])
        return np.hstack([onehot, sa - sb])

    tr = votes.select(train)
    xt = x(tr)
    lr = LogisticRegression(C=1.0, fit_intercept=False, max_iter=1000)
    lr.fit(np.vstack([xt, xt]), np.r_[np.ones(len(tr)), np.zeros(len(tr))],
           sample_weight=np.r_[tr.y, 1 - tr.y] + 1e-12)
    return lambda v: lr.predict_proba(x(v))[:, 1]


# --------------------------------------------------------------------------- metrics
def log_loss(y, p) -> float:
    """Mean cross-entropy of P(a wins) ``p`` against side a's win score ``y`` (ties 0.5)."""
    p = np.clip(np.asarray(p, float), 1e-6, 1 - 1e-6)
    return float(np.mean(-(y * np.log(p) + (1 - y) * np.log(1 - p))))


def vote_metrics(y, diff, prob=None) -> dict[str, float]:
    """Pair accuracy and AUC on the decisive votes (y != 0.5) of the predicted ``diff`` (a
    score difference a - b, or P(a) - 0.5); log-loss over every vote when ``prob`` is given."""
    y, diff = np.asarray(y, float), np.asarray(diff, float)
    dec = y != 0.5
    wins = y[dec] > 0.5
    d = diff[dec]
    acc = float(np.mean(np.where(d == 0, 0.5, (d > 0) == wins))) if dec.any() else np.nan
    auc = float(roc_auc_score(wins, d)) if 0 < wins.sum() < len(wins) else np.nan
    return {"pair_accuracy": acc, "auc": auc,
            "log_loss": log_loss(y, prob) if prob is not None else np.nan,
            "votes": int(len(y)), "decisive": int(dec.sum())}


# --------------------------------------------------------------------------- study
def predict_known(votes: Votes, seed: int, styles: dict | None = None) -> dict[str, np.ndarray]:
    """P(a wins) of every probabilistic model on the test votes of ``seed``'s split, plus
    ``"_lam"`` (the picked shrinkage) and ``"_test"`` (the test mask)."""
    m = split_masks(votes, seed)
    te = votes.select(m["test"])
    theta = fit_offsets(votes.select(m["train"]), POP_L2)[0]
    offsets, lam = fit_person(votes, theta, m["train"], m["val"])
    out = {POPULATION: bt_prob(theta, te), PERSON: person_prob(theta, offsets, te),
           KNN: person_prob(theta, knn_offsets(offsets), te), "_lam": lam, "_test": m["test"]}
    if styles is not None:
        out[TEXT_POPULATION] = text_model(votes, m["train"], styles)(te)
    return out


def router_setting(pairs: pd.DataFrame, bank: Bank, name: str) -> Setting:
    """A rating :class:`~prlib.experiment.Setting` of real people for the project's routers:
    per (person, question, LLM) the mean win score of that person's votes (ties 0.5,
    :func:`prlib.arena_logs.pairs_to_ratings`); queries are the bank's question ids. Its split
    per seed is that of :func:`split_masks`. ``pairs`` must use the bank's LLM names."""
    from prlib.simulate.preferences import Preferences

    long = pd.concat([pairs[["user_id", "question_id", "llm_a"]].set_axis(
        ["user_id", "query_id", "llm"], axis=1).assign(s=pairs["score_a"].to_numpy()),
        pairs[["user_id", "question_id", "llm_b"]].set_axis(
        ["user_id", "query_id", "llm"], axis=1).assign(s=1 - pairs["score_a"].to_numpy())])
    long = long.astype({"user_id": str, "query_id": str, "llm": str})
    inter = (long.groupby(["user_id", "query_id", "llm"], sort=True)["s"].mean()
             .rename("utility").reset_index())
    best = inter.groupby(["user_id", "query_id"])["utility"].transform("max")
    first = inter[np.isclose(inter["utility"], best)].groupby(["user_id", "query_id"]).head(1)
    inter["chosen"] = inter.index.isin(first.index)
    users = pd.DataFrame({"user_id": sorted(inter["user_id"].unique()), "strategy": "judge",
                          "archetype": "human", "params": "{}"})
    prefs = Preferences(name, "judge", bank.name, users, inter,
                        {"source": "real identified people", "simulated": False})
    return Setting(name, bank, prefs, feedback="utility", metric="pair_accuracy",
                   fractions=FRACTIONS)


def router_diffs(router, setting: Setting, votes: Votes, seed: int, test_mask) -> np.ndarray:
    """Score difference a - b of a fitted router on ``seed``'s test votes (its test requests
    are the (person, question) rows of those votes)."""
    test = setting_views(setting, seed)[2]
    scores = router.scores(test)
    row = {(u, q): i for i, (u, q) in enumerate(zip(test.frame["user_id"].astype(str),
                                                    test.frame["query_id"].astype(str)))}
    te = votes.select(test_mask)
    r = np.array([row[(votes.users[u], q)] for u, q in zip(te.user, te.question)])
    col = pd.Index(test.llms).get_indexer([votes.llms[i] for i in range(len(votes.llms))])
    s = np.where(np.isfinite(scores), scores, np.nan)
    d = s[r, col[te.a]] - s[r, col[te.b]]
    return np.nan_to_num(d, nan=0.0)


def known_people(votes: Votes, seeds: Sequence[int], styles: dict | None = None,
                 setting: Setting | None = None, routers: Sequence = (),
                 params: dict | None = None, jobs: int = 1,
                 progress: bool = False) -> pd.DataFrame:
    """Every model on each seed's held-out votes of known persons: one row per (seed, model)
    with ``kind`` ("population" or "personal"), :func:`vote_metrics` and ``fit_s``. The
    project's ``routers`` (classes) are fitted on ``setting`` (:func:`router_setting`) with
    ``params`` by class name, ``jobs`` fits at once (:func:`prlib.experiment.map_fits`)."""
    import time

    from prlib.experiment import map_fits

    rows = []
    for seed in seeds:
        t0 = time.perf_counter()
        p = predict_known(votes, seed, styles)
        fit_s = (time.perf_counter() - t0) / 4
        y = votes.y[p["_test"]]
        for name in (POPULATION, TEXT_POPULATION, PERSON, KNN):
            if name in p:
                rows.append({"seed": seed, "model": name, "kind": "personal" if name in PERSONAL
                             else "population", **vote_metrics(y, p[name] - 0.5, p[name]),
                             "lam": p["_lam"] if name in PERSONAL else np.nan,
                             "fit_s": fit_s})
    params = params or {}

    def fit_one(seed, cls):
        from prlib.config import seed_everything

        train, val, _ = setting_views(setting, seed)
        seed_everything(seed)
        router = cls(setting.feats, seed=seed, **{**cls.params_for(setting.feedback),
                                                  **params.get(cls.__name__, {})})
        t0 = time.perf_counter()
        router.fit(train, val)
        fit_s = time.perf_counter() - t0
        provenance.check_fit(router, train, val, f"real people: {cls.__name__}", setting.feedback)
        test = split_masks(votes, seed)["test"]
        return fit_s, router_diffs(router, setting, votes, seed, test), votes.y[test]

    tasks = [(seed, cls) for seed in seeds for cls in routers]
    for (seed, cls), (fit_s, diff, y) in zip(tasks, map_fits(
            fit_one, tasks, jobs, progress=progress, desc="routers",
            label=lambda seed, cls: f"seed {seed} {cls.name}",
            cost=lambda seed, cls: cls.relative_fit_time)):
        rows.append({"seed": seed, "model": cls.name, "kind": "population" if
                     cls.__name__ in POPULATION_ROUTERS else "personal",
                     **vote_metrics(y, diff), "lam": np.nan, "fit_s": fit_s})
    return pd.DataFrame(rows)


def format_difference(d: dict, digits: int = 3) -> str:
    """``"+0.012 [-0.003, +0.027]"`` of :func:`prlib.metrics.paired_difference` (the interval
    only with two or more seeds)."""
    mean = f"{d['mean']:+.{digits}f}"
    if d["n"] < 2:
        return mean
    return f"{mean} [{d['ci_low']:+.{digits}f}, {d['ci_high']:+.{digits}f}]"


def paired_rows(per_seed: pd.DataFrame, reference: str = POPULATION,
                metrics=("pair_accuracy", "auc", "log_loss")) -> pd.DataFrame:
    """Per model: mean ± std over seeds of each metric and the paired difference with
    ``reference`` (95 % t-interval over seeds, :func:`prlib.metrics.paired_difference`)."""
    rows = []
    ref = per_seed[per_seed["model"] == reference].set_index("seed")
    for model, part in per_seed.groupby("model", sort=False):
        part = part.set_index("seed").reindex(ref.index)
        row = {"model": model}
        for m in metrics:
            v = part[m].to_numpy(float)
            row[m] = f"{np.mean(v):.3f} ± {np.std(v):.3f}" if np.isfinite(v).all() else "n/a"
            if model != reference and np.isfinite(v).all():
                d = paired_difference(v, ref[m].to_numpy(float))
                row[f"{m} vs population"] = format_difference(d)
        rows.append(row)
    return pd.DataFrame(rows).fillna("")


# --------------------------------------------------------------------------- permutation test
def gains(votes: Votes, seeds: Sequence[int]) -> dict[str, float]:
    """Each personalised model's gain over the population twin, averaged over ``seeds``: test
    log-loss of the population minus its own (``"<model> log_loss"``, > 0: knowing who votes
    helps) and its pair accuracy minus the population's (``"<model> pair_accuracy"``)."""
    out = {}
    for seed in seeds:
        p = predict_known(votes, seed)
        y = votes.y[p["_test"]]
        ref = vote_metrics(y, p[POPULATION] - 0.5, p[POPULATION])
        for name in PERSONAL:
            own = vote_metrics(y, p[name] - 0.5, p[name])
            out.setdefault(f"{name} log_loss", []).append(ref["log_loss"] - own["log_loss"])
            out.setdefault(f"{name} pair_accuracy", []).append(
                own["pair_accuracy"] - ref["pair_accuracy"])
    return {k: float(np.mean(v)) for k, v in out.items()}


def shuffle_people(votes: Votes, rng: np.random.Generator) -> Votes:
    """Votes with the person ids permuted within each (question, unordered LLM pair) stratum:
    the null where who votes carries no information beyond what is voted on."""
    lo, hi = np.minimum(votes.a, votes.b), np.maximum(votes.a, votes.b)
    strata = pd.Series(np.arange(len(votes))).groupby(
        [votes.question, lo, hi]).indices.values()
    user = votes.user.copy()
    for idx in strata:
        if len(idx) > 1:
            user[idx] = votes.user[rng.permutation(idx)]
    return votes.with_users(user)


def permutation_test(votes: Votes, seeds: Sequence[int], n_permutations: int, seed: int = 0,
                     progress: bool = False, jobs: int = 1) -> tuple[pd.DataFrame, pd.DataFrame]:
    """``(summary, null)``: the observed :func:`gains` against their null distribution over
    ``n_permutations`` shuffles (:func:`shuffle_people`). ``summary`` per statistic: observed,
    null mean and sd, one-sided p-value ``(1 + #null >= observed) / (1 + n)``, the critical
    gain (the null's 95th percentile: the smallest gain significant at 5 %) and the minimal
    detectable effect at 80 % power, ``(z_0.95 + z_0.8) * null sd``: how far above the null's
    mean a true gain must lie to be detected four times in five. Shuffle i uses
    the generator seeded ``[seed, 85, i]``; ``jobs`` processes (joblib) change nothing but time.
    """
    from joblib import Parallel, delayed
    from tqdm.auto import tqdm

    observed = gains(votes, seeds)

    def one(i):
        return gains(shuffle_people(votes, np.random.default_rng([seed, 85, i])), seeds)

    null = pd.DataFrame(Parallel(n_jobs=jobs)(delayed(one)(i) for i in tqdm(
        range(n_permutations), desc="permutations", disable=not progress)))
    rows = []
    for stat, obs in observed.items():
        v = null[stat].to_numpy()
        rows.append({"statistic": stat, "observed gain": obs, "null mean": v.mean(),
                     "null sd": v.std(ddof=1) if len(v) > 1 else np.nan,
                     "p-value": (1 + np.sum(v >= obs)) / (1 + len(v)),
                     "critical gain (5 %)": np.quantile(v, 0.95),
                     "MDE (80 % power)": (1.645 + 0.842) * v.std(ddof=1)
                     if len(v) > 1 else np.nan, "permutations": len(v)})
    return pd.DataFrame(rows), null


# --------------------------------------------------------------------------- routing, new people
def route_for_people(votes: Votes, seeds: Sequence[int]) -> pd.DataFrame:
    """Each person's held-out questions routed to one LLM: the person's own best (per-person
    Bradley-Terry), the population's favourite, and a uniformly random LLM; scored by the
    person's own held-out votes that involve the routed LLM (its win score, ties 0.5), pooled
    over votes. Random is the expectation over the LLMs (exactly 0.5: each vote gives its two
    sides scores summing to 1). One row per (seed, policy)."""
    rows = []
    for seed in seeds:
        m = split_masks(votes, seed)
        theta = fit_offsets(votes.select(m["train"]), POP_L2)[0]
        offsets, _ = fit_person(votes, theta, m["train"], m["val"])
        te = votes.select(m["test"])
        picks = {"population's favourite": np.full(len(votes.users), np.argmax(theta)),
                 "the person's own best": np.argmax(theta[None, :] + offsets, axis=1)}
        for policy, pick in picks.items():
            chosen = pick[te.user]
            in_a, in_b = te.a == chosen, te.b == chosen
            score = np.r_[te.y[in_a], 1 - te.y[in_b]]
            rows.append({"seed": seed, "policy": policy, "win_rate": float(score.mean()),
                         "votes": int(len(score))})
        both = np.r_[te.y, 1 - te.y]
        rows.append({"seed": seed, "policy": "random LLM", "win_rate": float(both.mean()),
                     "votes": int(len(te))})
    return pd.DataFrame(rows)


def new_people(votes: Votes, seeds: Sequence[int], shots: Sequence[int], n_new: int,
               min_votes: int | None = None) -> pd.DataFrame:
    """Held-out persons with k votes: per seed, ``n_new`` persons (seeded, among those with at
    least ``min_votes`` (default: the largest k, at least 1) training-question votes and one
    decisive test vote; a seed without any is skipped) are left out of
    the population's fit; per-person Bradley-Terry then gets k of each one's training-question
    votes (a seeded random k; k = 0 is the population) at the shrinkage picked on the known
    persons, and is scored on their test votes; so is the same model with the weakest
    shrinkage of the grid (:data:`PERSON_WEAK`: what the person's own votes say, barely pulled
    to the population). One row per (seed, k, model)."""
    rows = []
    min_votes = max(max(shots), 1) if min_votes is None else min_votes
    for seed in seeds:
        m = split_masks(votes, seed)
        rng = np.random.default_rng([seed, 851])
        n_train = np.bincount(votes.user[m["train"]], minlength=len(votes.users))
        dec_test = np.bincount(votes.user[m["test"] & (votes.y != 0.5)],
                               minlength=len(votes.users))
        eligible = np.flatnonzero((n_train >= min_votes) & (dec_test > 0))
        if not len(eligible):
            continue
        new = rng.choice(eligible, min(n_new, len(eligible)), replace=False)
        known = ~np.isin(votes.user, new)
        theta = fit_offsets(votes.select(m["train"] & known), POP_L2)[0]
        _, lam = fit_person(votes, theta, m["train"] & known, m["val"] & known)
        te = votes.select(m["test"] & ~known)
        order = {u: rng.permutation(np.flatnonzero(m["train"] & (votes.user == u)))
                 for u in new}
        for k in shots:
            hist = np.concatenate([order[u][:k] for u in new]).astype(int)
            h = votes.select(hist)
            d = fit_offsets(h, lam, theta[h.a] - theta[h.b], h.user, len(votes.users))
            weak = fit_offsets(h, min(LAMBDAS), theta[h.a] - theta[h.b], h.user,
                               len(votes.users))
            for name, p in ((POPULATION, bt_prob(theta, te)),
                            (PERSON, person_prob(theta, d, te)),
                            (PERSON_WEAK, person_prob(theta, weak, te))):
                rows.append({"seed": seed, "k": k, "model": name, "persons": len(new),
                             **vote_metrics(te.y, p - 0.5, p)})
    return pd.DataFrame(rows)
