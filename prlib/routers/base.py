"""The router interface every router implements, its registry, and shared helpers.

A router is a class with ``name`` (its row in tables), ``family`` (one of :data:`FAMILIES`),
``selection`` (what validation chooses, for tables) and ``defaults`` (its hyper-parameters),
registered with :func:`register`. Its life: ``Router(feats, seed=0, **params)``,
``fit(train, val, *, progress=False)`` (anything data-dependent is chosen on ``val`` only),
``scores(requests) -> (n, n_llms)`` (``-inf`` for non-candidates), ``route(requests) -> (n,)``,
``save(folder)`` / ``Router.load(folder, feats)``.

Fitted state is every attribute whose name ends with ``_`` (arrays, numbers, strings, lists,
dicts, :class:`~prlib.requests.Requests`, :class:`History`) plus the
torch modules named by ``_modules()``. ``save`` writes it as JSON + ``.npz`` arrays + torch state
dicts: no pickles, so a saved router loads in any later version that has the same class.
"""

from __future__ import annotations

import inspect
import itertools
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
import pandas as pd
import torch

from prlib.features import NodeFeatures
from prlib.provenance import RECORDED, record
from prlib.routers.params import COMMON_PARAMS, Param, non_negative, one_of, positive  # noqa: F401
from prlib.requests import Requests

#: Router families, in table order.
FAMILIES = ("simple", "non-personalised", "personalised", "released design", "upper bound",
            "reference", "ours", "ablation", "pairwise (notebook 90)")
#: The family of ours with a part removed (notebook 40): registered, but not among the routers
#: of the comparison tables.
ABLATION = "ablation"
#: GMTRouter and the pairwise baselines of notebook 90 (Bradley-Terry, previous-turn rating):
#: registered, listed only when asked for by family, so the single-turn tables are unchanged.
PAIRWISE = "pairwise (notebook 90)"
#: Families that :func:`registered` lists only when asked for by name.
NOT_IN_TABLES = (ABLATION, PAIRWISE)
#: Finite stand-in for -inf inside losses.
NEG = -1e9
#: The selection budget of every router with hyper-parameters (ours included): its declared
#: ``grid`` has exactly this many points, each fitted once and compared on validation
#: (:func:`prlib.experiment.tune_setting`).
GRID_POINTS = 4


class RouterError(ValueError):
    """A router used wrongly: unregistered, unknown hyper-parameter, not fitted, bad folder."""


class NotFittedError(RouterError):
    """A router used before ``fit`` (scores, route, save, online updates)."""


class UnknownUserError(RouterError, KeyError):
    """A request names a user the router has no history of, where it needs one (add_user
    first). (Also a ``KeyError``, as a lookup that failed.)"""

    def __str__(self) -> str:  # a KeyError would print its message in quotes
        return str(self.args[0]) if self.args else ""




# ------------------------------------------------------------------ shared helpers
def query_embeddings(feats: NodeFeatures, requests: Requests) -> np.ndarray:
    """Query feature rows of ``requests``, shape (n, query_dim)."""
    idx = requests.lookup("query_id", feats.query_index)
    if (idx < 0).any():
        raise KeyError("requests name queries missing from the node features")
    return feats.query_x.numpy()[idx]


def candidates(requests: Requests) -> np.ndarray:
    """Boolean (n, n_llms): which LLMs are candidates of each request."""
    return requests.candidates


def mask_scores(scores: np.ndarray, requests: Requests) -> np.ndarray:
    """``scores`` with ``-inf`` wherever the LLM is not a candidate (NaN scores -> -inf too)."""
    s = np.nan_to_num(np.asarray(scores, dtype=float), nan=-np.inf)
    return np.where(candidates(requests), s, -np.inf)


def reward_of(requests: Requests, scores: np.ndarray) -> float:
    """Mean utility of the argmax pick of (masked) ``scores``: the validation criterion."""
    pick = mask_scores(scores, requests).argmax(1)
    return float(requests.utility[np.arange(len(requests)), pick].mean())


def col_nanmean(a: np.ndarray, fill: float = -np.inf) -> np.ndarray:
    """Column means ignoring NaN; all-NaN columns get ``fill``."""
    a = np.asarray(a, dtype=float)
    n = (~np.isnan(a)).sum(0)
    return np.where(n > 0, np.nansum(a, 0) / np.maximum(n, 1), fill)


def pick_one(requests: Requests, preferred: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """Scores that pick ``preferred[i]`` (else ``fallback[i]``, else any candidate): 1 / 0 / -1."""
    n = len(requests)
    rows = np.arange(n)
    s = np.full((n, len(requests.llms)), -1.0)
    s[rows, fallback] = 0.0
    s[rows, preferred] = 1.0
    return mask_scores(s, requests)


@dataclass
class History:
    """What training recorded at each validation check."""

    step: list[int] = field(default_factory=list)  # optimizer step of each check
    train_loss: list[float] = field(default_factory=list)  # loss of that step's batch
    val_metric: list[float] = field(default_factory=list)  # validation metric (higher = better)
    best_step: int | None = None  # the step whose weights were reloaded


# ------------------------------------------------------------------ registry
_REGISTRY: dict[str, type["Router"]] = {}


def register(cls: type["Router"]) -> type["Router"]:
    """Class decorator: make ``cls`` a registered router (listed, comparable, loadable)."""
    if not (isinstance(cls, type) and issubclass(cls, Router)):
        raise RouterError(f"@register takes a Router subclass, got {cls!r}")
    if not cls.name or cls.family not in FAMILIES:
        raise RouterError(f"{cls.__name__}: set the class attributes name (a display name) and "
                          f"family (one of {FAMILIES}); got {cls.name!r}, {cls.family!r}")
    n_points = grid_size(cls.grid)
    if cls.grid and n_points != GRID_POINTS:
        raise RouterError(f"{cls.__name__}: its grid {cls.grid} has {n_points} points; every "
                          f"router gets the same selection budget of {GRID_POINTS} points")
    unknown = sorted(set(cls.grid) - set(cls.defaults))
    if unknown:
        raise RouterError(f"{cls.__name__}: grid names {unknown}, which are not hyper-parameters "
                          f"(defaults: {sorted(cls.defaults)})")
    if not (cls.__doc__ or "").strip():
        raise RouterError(f"{cls.__name__}: write a docstring; its first paragraph describes "
                          "the router in tables")
    for other in _REGISTRY.values():
        if other.name == cls.name and other.__name__ != cls.__name__:
            raise RouterError(f"{cls.__name__}: the name {cls.name!r} is taken by "
                              f"{other.__name__}")
    _REGISTRY[cls.__name__] = cls
    return cls


def grid_size(grid: dict) -> int:
    """Number of points of a grid ``{param: [values]}`` (its Cartesian product; 0 if empty)."""
    return int(np.prod([len(v) for v in grid.values()])) if grid else 0


def grid_points(cls: type["Router"]) -> list[dict]:
    """The points of a router's declared ``grid`` (``[{}]`` when it declares none)."""
    keys = list(cls.grid)
    return [dict(zip(keys, values)) for values in itertools.product(*cls.grid.values())] or [{}]


def unregister(cls: type["Router"] | str) -> None:
    """Remove a router from the registry (e.g. a toy router at the end of a test)."""
    _REGISTRY.pop(cls if isinstance(cls, str) else cls.__name__, None)


def registered(family: str | None = None) -> list[type["Router"]]:
    """Registered routers in table order (by family, then registration), optionally of one
    ``family``. Without a family: every router of the comparison tables (the families of
    :data:`NOT_IN_TABLES`, ablations of ours and notebook 90's pairwise routers, are listed
    only when asked for by family)."""
    if family is not None and family not in FAMILIES:
        raise RouterError(f"unknown family {family!r}; families: {FAMILIES}")
    order = sorted(enumerate(_REGISTRY.values()),
                   key=lambda ic: (FAMILIES.index(ic[1].family), ic[0]))
    return [c for _, c in order
            if c.family == family or (family is None and c.family not in NOT_IN_TABLES)]


def get_router(key: str | type["Router"]) -> type["Router"]:
    """A registered router by class, class name, display name or the row name tables give it
    (``row_names``: the oracle is named for what it reads); an error names the others."""
    if isinstance(key, str):
        key = next((c for c in _REGISTRY.values() if key in c.row_names.values()), key)
    if isinstance(key, type):
        if _REGISTRY.get(key.__name__) is not key:
            raise RouterError(f"{key.__name__} is not a registered router: decorate it with "
                              "@prlib.routers.register")
        return key
    for cls in _REGISTRY.values():
        if key in (cls.__name__, cls.name):
            return cls
    raise RouterError(f"no registered router {key!r}; registered: "
                      f"{[c.__name__ for c in registered()]}")


def description(cls: type["Router"]) -> str:
    """The first paragraph of a router's docstring, on one line."""
    doc = inspect.cleandoc(cls.__doc__ or "")
    return " ".join(doc.split("\n\n")[0].split())


def catalogue(family: str | None = None) -> pd.DataFrame:
    """Every registered router: family, name, class, what validation selects (inside ``fit``,
    and the declared grid), description."""
    return pd.DataFrame([{"family": c.family, "router": c.name, "class": c.__name__,
                          "selected on validation": c.selection,
                          "grid": ", ".join(f"{k} in {v}" for k, v in c.grid.items()) or "—",
                          "description": description(c)}
                         for c in registered(family)])


# ------------------------------------------------------------------ state (de)serialisation
def _encode(value, arrays: dict, frames: dict, where: str):
    """JSON-able tree for ``value``; arrays and frames go into side tables by key."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, torch.Tensor):
        value = value.detach().cpu().numpy()
    if isinstance(value, np.ndarray):
        if value.dtype == object:
            return {"__strings__": [None if v is None else str(v) for v in value.tolist()]}
        key = f"a{len(arrays)}"
        arrays[key] = value
        return {"__array__": key}
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, arrays, frames, where) for v in value]}
    if isinstance(value, list):
        return [_encode(v, arrays, frames, where) for v in value]
    if isinstance(value, dict):
        return {"__dict__": [[_encode(k, arrays, frames, where), _encode(v, arrays, frames, where)]
                             for k, v in value.items()]}
    if isinstance(value, pd.DataFrame):
        key = f"f{len(frames)}"
        frames[key] = value
        return {"__frame__": key}
    if isinstance(value, Requests):
        return {"__requests__": {k: _encode(getattr(value, k), arrays, frames, where)
                                 for k in ("frame", "llms", "utility", "chosen", "quality",
                                           "cost", "call_cost", "previous")}}
    if isinstance(value, History):
        return {"__history__": _encode(asdict(value), arrays, frames, where)}
    raise RouterError(f"cannot save {where} of type {type(value).__name__}: fitted state must "
                      "be arrays, numbers, strings, lists, tuples, dicts, DataFrames or Requests")


def _decode(tree, arrays, frames):
    if isinstance(tree, list):
        return [_decode(v, arrays, frames) for v in tree]
    if not isinstance(tree, dict):
        return tree
    (tag, body), = tree.items()
    if tag == "__array__":
        return arrays[body]
    if tag == "__strings__":
        return np.array(body, dtype=object)
    if tag == "__tuple__":
        return tuple(_decode(v, arrays, frames) for v in body)
    if tag == "__dict__":
        return {_hashable(_decode(k, arrays, frames)): _decode(v, arrays, frames) for k, v in body}
    if tag == "__frame__":
        return frames[body]
    if tag == "__requests__":
        return Requests(**{k: _decode(v, arrays, frames) for k, v in body.items()})
    if tag == "__history__":
        return History(**_decode(body, arrays, frames))
    raise RouterError(f"unknown tag {tag!r} in a saved router")


def _hashable(key):
    return tuple(_hashable(k) for k in key) if isinstance(key, (list, tuple)) else key


# ------------------------------------------------------------------ the base class
class Router:
    """Base class of every router: subclasses implement ``fit`` and ``_raw_scores``."""

    name: ClassVar[str] = ""
    family: ClassVar[str] = ""
    selection: ClassVar[str] = "—"  # what validation chooses (for tables)
    reads_labels: ClassVar[bool] = False  # True only for upper bounds (oracles)
    defaults: ClassVar[dict] = {}  # hyper-parameters and their default values
    #: Hyper-parameter values tried on validation, ``{param: [values]}``: empty, or exactly
    #: :data:`GRID_POINTS` points (the same selection budget for every router).
    grid: ClassVar[dict] = {}
    #: Rough relative fit time (1: a lookup; trained networks more), used only to start the
    #: slowest fits first when fits run in parallel (:func:`prlib.experiment.map_fits`), so
    #: that no worker waits for one long fit at the end. Results do not depend on it.
    relative_fit_time: ClassVar[float] = 1.0
    #: Constraints of this router's own hyper-parameters, on top of :data:`COMMON_PARAMS`.
    constraints: ClassVar[dict[str, Param]] = {}
    #: What a router needs or offers beyond the base contract, for generic checks and
    #: experiments: ``"pairwise"`` (learns from / is scored on preference pairs),
    #: ``"needs_answers"`` (needs answer texts), ``"online"`` (``add_user`` without retraining),
    #: ``"reads_labels"`` (an upper bound), ``"reads_batch"`` (an upper bound whose scores of a
    #: request read the labels of the whole batch: the ceiling), ``"torch"`` (trained with the
    #: one trainer).
    tags: ClassVar[frozenset] = frozenset()
    #: Row names of this router in tables where it is not named ``name``, by user strategy
    #: (``Preferences.strategy``) or, failing that, by feedback kind.
    row_names: ClassVar[dict] = {}
    #: The user strategies (``Preferences.strategy``: ``"multi_cost"``, ``"judge"``) this router
    #: applies to; ``None``: every one. Experiments list it as not run on other users.
    strategies: ClassVar[tuple[str, ...] | None] = None
    #: Fitted attributes that :meth:`_rebuild` derives from the saved ones (not saved).
    derived_state: ClassVar[tuple] = ()

    def __init_subclass__(cls, **kwargs):
        """Every ``fit``, ``fine_tune`` and ``add_user`` a subclass
        defines records the request sets it receives (:func:`prlib.provenance.record`), so
        the experiment paths can check what reached training."""
        super().__init_subclass__(**kwargs)
        for name in RECORDED:
            method = cls.__dict__.get(name)
            if callable(method) and not hasattr(method, "_records"):
                setattr(cls, name, record(method))

    def __init__(self, feats: NodeFeatures, seed: int = 0, **params):
        unknown = sorted(set(params) - set(self.defaults))
        if unknown:
            raise RouterError(f"{type(self).__name__} has no hyper-parameter {unknown}; its "
                              f"hyper-parameters are {self.defaults}")
        self.feats, self.seed = feats, int(seed)
        self.params = {**self.defaults, **params}
        for name, value in self.params.items():
            constraint = self.constraint(name)
            why = constraint.problem(value) if constraint is not None else None
            if why:
                raise RouterError(f"{type(self).__name__}: hyper-parameter {name} {why}, got "
                                  f"{value!r}")
        self.n_llms = len(feats.llms)

    @classmethod
    def constraint(cls, name: str) -> Param | None:
        """The declared constraint of hyper-parameter ``name`` (``None``: none declared)."""
        return cls.constraints.get(name, COMMON_PARAMS.get(name))

    @classmethod
    def unavailable(cls, feats: NodeFeatures) -> str | None:
        """Why this router cannot run on ``feats`` (e.g. it needs answer texts the bank does not
        have), or ``None`` when it can. Experiments list such a router as "not run" with this
        reason instead of fitting it."""
        return None

    @classmethod
    def row_name(cls, feedback: str, strategy: str | None = None) -> str:
        """This router's row name in a table of ``strategy`` users with ``feedback``."""
        return cls.row_names.get(strategy, cls.row_names.get(feedback, cls.name))

    @classmethod
    def unavailable_on(cls, feats: NodeFeatures, strategy: str | None) -> str | None:
        """:meth:`unavailable`, plus a reason when users of ``strategy`` are not among
        :attr:`strategies`."""
        why = cls.unavailable(feats)
        if why is None and cls.strategies is not None and strategy not in cls.strategies:
            why = (f"it applies to {' / '.join(cls.strategies)} users only; these are "
                   f"{strategy} users")
        return why

    @classmethod
    def params_for(cls, feedback: str) -> dict:
        """Hyper-parameters that a setting's feedback kind ("utility" or "choice") implies."""
        return {}

    @record
    def fit(self, train: Requests, val: Requests, *, progress: bool = False) -> "Router":
        """Learn from ``train``; choose anything data-dependent on ``val`` only."""
        return self

    def _raw_scores(self, requests: Requests) -> np.ndarray:
        raise NotImplementedError

    def scores(self, requests: Requests) -> np.ndarray:
        """(n, n_llms) scores, ``-inf`` for non-candidates."""
        self._check_fitted()
        return mask_scores(self._raw_scores(requests), requests)

    def route(self, requests: Requests) -> np.ndarray:
        """Index of the picked LLM per request, shape (n,)."""
        return self.scores(requests).argmax(1)

    def calls(self, requests: Requests, picks: np.ndarray) -> np.ndarray:
        """Boolean (n, n_llms): the LLMs called to answer each request (the pick included), so
        that metrics charge each of them. Default: only the picked LLM is called; a cascade
        calls every LLM it tries."""
        out = np.zeros((len(requests), self.n_llms), bool)
        out[np.arange(len(requests)), np.asarray(picks, dtype=int)] = True
        return out

    def __repr__(self) -> str:
        return f"{type(self).__name__}(seed={self.seed}, {self.params})"

    # -------------------------------------------------------------- persistence
    def is_fitted(self) -> bool:
        """Whether :meth:`fit` has run on this router (or it was loaded from a saved one)."""
        return bool(self.__dict__.get("provenance", {}).get("fit")) or self.__dict__.get(
            "_loaded", False)

    def _check_fitted(self) -> None:
        """Raise :class:`NotFittedError` unless the router was fitted (or loaded)."""
        if not self.is_fitted():
            raise NotFittedError(f"{type(self).__name__} is not fitted: call fit(train, val) "
                                 "first, or Router.load a saved one")

    def _modules(self) -> dict[str, torch.nn.Module]:
        """Torch modules whose state dicts are saved (none for non-torch routers)."""
        return {}

    def _rebuild(self) -> None:
        """After loading the fitted state: re-create the modules named by ``_modules``."""

    def fitted_state(self) -> dict:
        """The fitted state: every public attribute whose name ends with ``_``, but those a
        router declares as rebuilt on load (:attr:`derived_state`)."""
        return {k: v for k, v in vars(self).items() if k.endswith("_") and not k.startswith("_")
                and k not in self.derived_state}

    def save(self, folder: str | Path) -> Path:
        """Write ``router.json`` (class, params, JSON state), ``arrays.npz``, one parquet per
        frame and one torch state dict per module into ``folder``; no pickles."""
        self._check_fitted()
        state = self.fitted_state()
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        arrays, frames = {}, {}
        tree = {k: _encode(v, arrays, frames, f"attribute {k!r}") for k, v in state.items()}
        meta = {"router": type(self).__name__, "name": self.name, "seed": self.seed,
                "params": self.params, "llms": list(self.feats.llms), "state": tree,
                "modules": sorted(self._modules())}
        (folder / "router.json").write_text(json.dumps(meta, indent=1))
        np.savez(folder / "arrays.npz", **arrays)
        for key, frame in frames.items():
            frame.to_parquet(folder / f"{key}.parquet", index=False)
        for key, module in self._modules().items():
            torch.save(module.state_dict(), folder / f"{key}.pt")
        return folder

    @classmethod
    def load(cls, folder: str | Path, feats: NodeFeatures) -> "Router":
        """A router saved by :meth:`save`, over node features with the same LLMs."""
        folder = Path(folder)
        path = folder / "router.json"
        if not path.is_file():
            raise RouterError(f"{folder} holds no saved router (no router.json)")
        meta = json.loads(path.read_text())
        klass = get_router(meta["router"])
        if cls is not Router and not issubclass(klass, cls):
            raise RouterError(f"{folder} holds a {klass.__name__}, not a {cls.__name__}")
        if meta["llms"] != list(feats.llms):
            raise RouterError(f"the saved router was trained on the LLMs {meta['llms']}; the "
                              f"features have {list(feats.llms)}")
        router = klass(feats, seed=meta["seed"], **meta["params"])
        with np.load(folder / "arrays.npz", allow_pickle=False) as npz:
            arrays = {k: npz[k] for k in npz.files}
        frames = {p.stem: pd.read_parquet(p) for p in folder.glob("f*.parquet")}
        for k, v in meta["state"].items():
            setattr(router, k, _decode(v, arrays, frames))
        router._loaded = True
        router._rebuild()
        for key, module in router._modules().items():
            state = torch.load(folder / f"{key}.pt", map_location="cpu", weights_only=True)
            module.load_state_dict(state)
        return router
