"""The routing state of ``prlib serve`` (:mod:`prlib.serve`): the router on disk with its
encoder, the micro-batcher that embeds and scores waiting requests together, and the
:class:`RoutingService` that routes, remembers routed requests for feedback (bounded), and
journals and replays feedback."""

from __future__ import annotations

import asyncio
import functools
import json
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from prlib.embed import (MINILM, STATIC, MemoryEmbeddingCache, clip_for_encoder, encoder_for_dim,
                         static_folder, use_encoder, use_static_folder)
from prlib.features import NodeFeatures, query_rows
from prlib.routers import Router
from prlib.serve_http import BadRequest, FeedbackJournal, Forbidden, NotFound, Upstream
from prlib.tokens import MemoryTokenCountCache, count_tokens

ANONYMOUS = "anonymous"
FEATURES_FILE = "features.npz"
#: names the router's text encoder; a static one is saved next to it, in ``encoder/``
ENCODER_FILE = "encoder.json"
#: written next to a router saved by a server with a journal: how many journal entries it holds
JOURNAL_MARK = "journal.json"
#: texts longer than this (characters) have their token count estimated from this many
EXACT_COUNT_CHARS = 65_536


# ---------------------------------------------------------------------- the router on disk
def router_encoder(router: Router) -> str:
    """The text encoder a router's features were made with (from their dimension)."""
    return encoder_for_dim(router.feats.query_x.shape[1] - 1)


def save_for_serving(router: Router, folder: str | Path) -> Path:
    """``router.save(folder)`` plus its node features (``features.npz``) and its text encoder
    (``encoder.json``; a static encoder's model itself in ``encoder/``), so that
    :func:`load_for_serving` needs no bank and embeds new texts as the router was trained."""
    import shutil

    folder = router.save(folder)
    f = router.feats
    np.savez(folder / FEATURES_FILE, query_ids=np.array(f.query_ids), query_x=f.query_x.numpy(),
             tasks=np.array(f.tasks), task_x=f.task_x.numpy(), llms=np.array(f.llms),
             llm_x=f.llm_x.numpy())
    encoder = router_encoder(router)
    (folder / ENCODER_FILE).write_text(json.dumps({"encoder": encoder}))
    if encoder == STATIC and static_folder().resolve() != (folder / "encoder").resolve():
        shutil.copytree(static_folder(), folder / "encoder", dirs_exist_ok=True)
    return folder


def load_for_serving(folder: str | Path) -> Router:
    """A router saved by :func:`save_for_serving`."""
    import torch

    folder = Path(folder)
    path = folder / FEATURES_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{folder} has no {FEATURES_FILE}: save the router with "
                                "prlib.serve.save_for_serving (or `prlib train`)")
    with np.load(path, allow_pickle=False) as z:
        feats = NodeFeatures(z["query_ids"].tolist(), torch.from_numpy(z["query_x"]),
                             z["tasks"].tolist(), torch.from_numpy(z["task_x"]),
                             z["llms"].tolist(), torch.from_numpy(z["llm_x"]))
    router = Router.load(folder, feats)
    if router_encoder(router) == STATIC:
        use_static_folder(folder / "encoder")
    return router


# ---------------------------------------------------------------------- routing state
class MicroBatcher:
    """Runs ``work(items) -> results`` (a list each, in order) in one background thread over
    every item waiting at that moment (at most ``max_batch``): under concurrent requests the
    work runs once per batch, not once per request. If a batch fails, its items run alone and
    only those that fail alone get their error. ``batch_sizes``: the sizes it ran."""

    def __init__(self, work, max_batch: int = 64, name: str = "prlib-batcher"):
        self.work, self.max_batch, self.name = work, int(max_batch), name
        self.batch_sizes: deque[int] = deque(maxlen=100_000)
        self._queue: queue.Queue = queue.Queue()
        self._thread: threading.Thread | None = None
        self._start_lock = threading.Lock()

    async def submit(self, item):
        """``item``'s result, awaited without blocking the event loop."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._put((item, lambda value, ok: loop.call_soon_threadsafe(
            _settle, future, value, ok)))
        return await future

    def submit_now(self, item):
        """:meth:`submit` from a thread that may block (tests, the command line)."""
        import concurrent.futures

        future = concurrent.futures.Future()
        self._put((item, functools.partial(_settle, future)))
        return future.result()

    def _put(self, entry) -> None:
        with self._start_lock:
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
                self._thread.start()
        self._queue.put(entry)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while len(batch) < self.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                results = self.work([item for item, _ in batch])
            except Exception as e:
                if len(batch) == 1:
                    batch[0][1](e, False)
                    continue
                # one bad item must not fail the others waiting with it: each alone, and only
                # those that fail alone get their error
                for item, done in batch:
                    try:
                        result = self.work([item])[0]
                    except Exception as e_item:
                        done(e_item, False)
                    else:
                        self.batch_sizes.append(1)
                        done(result, True)
                continue
            self.batch_sizes.append(len(batch))
            for result, (_, done) in zip(results, batch):
                done(result, True)


class Decision(NamedTuple):
    """A routing decision: the chosen LLM, its score, the request's id, whether the user was
    cold (routed by the population prior), and every routable LLM by score, best first."""

    llm: str
    score: float
    request_id: str
    cold: bool
    ranking: tuple


def token_counts(texts: list[str], cache=None) -> np.ndarray:
    """Token counts of ``texts``; a text longer than :data:`EXACT_COUNT_CHARS` characters is
    counted on its first :data:`EXACT_COUNT_CHARS` and the count scaled by its length (the
    feature is the log of the count: a 10% error moves it by 0.01), so that a long request
    cannot hold the encoder for seconds."""
    heads = [t[:EXACT_COUNT_CHARS] for t in texts]
    counts = count_tokens(heads, cache=cache).astype(float)
    scale = np.array([max(len(t), 1) / max(len(h), 1) for t, h in zip(texts, heads)])
    return np.rint(counts * scale).astype(np.int64)


class BatchingEncoder(MicroBatcher):
    """Feature rows of new query texts (:func:`~prlib.features.query_rows`), computed in one
    background thread that embeds every text waiting at that moment in one batch (at most
    ``max_batch``): the text encoder runs once per batch, and outside the router's lock. Only
    the beginning of each text the encoder reads is embedded
    (:func:`~prlib.embed.clip_for_encoder`). Its caches are in memory, touched by that thread
    only."""

    def __init__(self, max_batch: int = 64, encoder: str = MINILM):
        super().__init__(self._rows, max_batch, "prlib-encoder")
        self.encoder = encoder
        self.embeddings, self.tokens = MemoryEmbeddingCache(), MemoryTokenCountCache()
        self._lock = threading.Lock()  # its caches, shared with the service's pipeline

    def _rows(self, texts: list[str]) -> list:
        with self._lock:
            return self._rows_unlocked(texts)

    def _rows_unlocked(self, texts: list[str]) -> list:
        counts = token_counts(texts, cache=self.tokens)
        with use_encoder(self.encoder):
            rows = query_rows([clip_for_encoder(t) for t in texts],
                              input_tokens=counts.tolist(), embedding_cache=self.embeddings)
        return [rows[i:i + 1] for i in range(len(texts))]

    def warm_up(self) -> None:
        """Load the text encoder and the token counter now, by embedding one text with
        throw-away caches: otherwise the first request after start waits for the model to
        load (seconds), and every request queued behind it with it."""
        with use_encoder(self.encoder):
            query_rows([clip_for_encoder("warm-up " * 300)],
                       embedding_cache=MemoryEmbeddingCache(),
                       token_cache=MemoryTokenCountCache())

    async def row(self, text: str):
        """The (1, query_dim) feature row of ``text``, awaited without blocking the event
        loop."""
        return await self.submit(text)

    def row_now(self, text: str):
        """:meth:`row` from a thread that may block (tests, the command line)."""
        return self.submit_now(text)


def _settle(future, value, ok: bool) -> None:
    """Give a waiting request (an asyncio or a concurrent future) its row, or the error."""
    if future.done():  # (a client that went away cancelled it)
        return
    if ok:
        future.set_result(value)
    else:
        future.set_exception(value)


@dataclass
class Routed:
    """One routed request, kept for its feedback (its text is not kept: its row is)."""

    user: str
    llm: str
    query_x: object  # (1, query_dim) tensor

    def nbytes(self) -> int:
        return self.query_x.numel() * self.query_x.element_size() + len(self.user) + 200


class RoutingService:
    """A router, the LLMs it may pick (those with an upstream), and the routed requests that
    feedback may still name: the most recent, at most ``remember`` of them and
    ``remember_mb`` MB (the oldest are forgotten first; ``evicted`` counts them). Feedback is
    appended to ``journal`` (a path; optional) before it is acknowledged, and the journal's
    entries after the first ``journal_skip`` are replayed into the router now. Thread-safe:
    one lock around the router."""

    def __init__(self, router: Router, upstreams: dict[str, Upstream], remember: int = 100_000,
                 remember_mb: float = 256.0, journal: str | Path | None = None,
                 journal_skip: int = 0):
        if not all(hasattr(router, m) for m in ("text_scores_batch", "add_text_feedback",
                                                "knows_user")):
            raise TypeError(f"{type(router).__name__} cannot route raw texts; serve a "
                            "PersonalizedRouterV3 (ours) or PersonalizedRouterV2")
        if remember < 1 or remember_mb <= 0:
            raise ValueError("remember and remember_mb must be positive (they bound the "
                             "requests kept for feedback)")
        self.router, self.upstreams = router, upstreams
        self.remember, self.remember_bytes = int(remember), int(remember_mb * 2**20)
        self.llms = list(router.feats.llms)
        self.allowed = np.array([m in upstreams for m in self.llms])
        self.routed: OrderedDict[str, Routed] = OrderedDict()
        self.routed_bytes = self.evicted = 0
        self.encoder = BatchingEncoder(encoder=router_encoder(router))
        #: concurrent requests' routing decisions, one router call per waiting batch
        self.scorer = MicroBatcher(self._route_batch, name="prlib-router")
        #: the server's path: the texts waiting together embedded in one batch (outside the
        #: router's lock), then scored in one router call, in one thread (one hand-off per
        #: request, not two)
        self.pipeline = MicroBatcher(self._embed_and_route, name="prlib-pipeline")
        self.embed_ms: deque[float] = deque(maxlen=100_000)  # arrival to feature row (ms)
        self.lock = threading.Lock()
        self.route_ms: deque[float] = deque(maxlen=100_000)  # scoring time per request (ms)
        self.journal = FeedbackJournal(journal) if journal is not None else None
        self.journal_entries = self.replayed = 0
        if self.journal is not None:
            self._replay(journal_skip)

    def _replay(self, skip: int) -> None:
        entries = self.journal.entries()
        if skip > len(entries):
            raise ValueError(f"the router holds {skip} entries of the journal "
                             f"{self.journal.path} but it has {len(entries)}: not the journal "
                             "this router was saved with")
        for e in entries[skip:]:
            self.router.add_text_feedback(e["user"], "", np.array(e["utility"]),
                                          query_x=torch.from_numpy(e["query_x"]),
                                          query_id=e["request_id"])
        self.replayed, self.journal_entries = len(entries) - skip, len(entries)

    def save(self, folder: str | Path) -> Path:
        """:func:`save_for_serving` of the router as it is now (feedback included), under the
        lock: no feedback lands halfway through. With a journal, the folder also records how
        many of its entries the router holds (so serving it again replays only newer ones)."""
        with self.lock:
            folder = save_for_serving(self.router, folder)
            if self.journal is not None:
                (folder / JOURNAL_MARK).write_text(json.dumps(
                    {"journal_entries": self.journal_entries}))
            return folder

    def known_user(self, user: str) -> bool:
        """Whether the router has feedback of ``user`` (its ``knows_user``)."""
        return self.router.knows_user(user)

    def health(self) -> dict:
        """What is remembered for feedback, against its bounds, and the journal."""
        return {"remembered_requests": len(self.routed),
                "remembered_mb": round(self.routed_bytes / 2**20, 3),
                "remember_limit_requests": self.remember,
                "remember_limit_mb": round(self.remember_bytes / 2**20, 3),
                "evicted_requests": self.evicted,
                "journal": None if self.journal is None else str(self.journal.path),
                "journal_entries": self.journal_entries, "replayed_feedback": self.replayed}

    def route(self, user: str, text: str, row=None) -> Decision:
        """The :class:`Decision` for ``user`` asking ``text``, among the LLMs with an upstream.
        ``row``: the text's feature row when the caller has it (the server awaits
        :attr:`encoder` first)."""
        if row is None:
            row = self.encoder.row_now(text)
        return self._route_batch([(user, text, row)])[0]

    async def decide(self, user: str, text: str) -> Decision:
        """:meth:`route` from the event loop, embedding included: embedded and routed together
        with the requests waiting at that moment (:attr:`pipeline`)."""
        return await self.pipeline.submit((user, text, time.perf_counter()))

    def _embed_and_route(self, items: list[tuple]) -> list[Decision]:
        rows = self.encoder._rows([text for _, text, _ in items])
        now = time.perf_counter()
        self.embed_ms.extend(1e3 * (now - t0) for _, _, t0 in items)
        return self._route_batch([(u, t, r) for (u, t, _), r in zip(items, rows)])

    async def route_async(self, user: str, text: str, row) -> Decision:
        """:meth:`route` from the event loop: routed together with the requests waiting at that
        moment (one router call for all of them, :attr:`scorer`)."""
        return await self.scorer.submit((user, text, row))

    def _route_batch(self, requests: list[tuple]) -> list[Decision]:
        """:meth:`route` of ``(user, text, row)`` requests in one router call, under the lock;
        ``route_ms`` gets the call's time once per request (what each waited for scoring)."""
        users = [user for user, _, _ in requests]
        with self.lock:
            start = time.perf_counter()
            scores = self.router.text_scores_batch(users, torch.cat([r for _, _, r in requests]))
            scores = np.where(self.allowed[None], scores, -np.inf)
            n_allowed = int(self.allowed.sum())
            out = []
            for (user, _, row), s in zip(requests, scores):
                order = np.argsort(-s, kind="stable")[:n_allowed]
                ranking = tuple((self.llms[i], float(s[i])) for i in order)
                rid = f"prlib-{uuid.uuid4().hex}"
                self._remember(rid, Routed(user, ranking[0][0], row))
                out.append(Decision(ranking[0][0], ranking[0][1], rid,
                                    not self.known_user(user), ranking))
            self.route_ms.extend([1e3 * (time.perf_counter() - start)] * len(requests))
            return out

    def _remember(self, rid: str, routed: Routed) -> None:
        self.routed[rid] = routed
        self.routed_bytes += routed.nbytes()
        while self.routed and (len(self.routed) > self.remember
                               or self.routed_bytes > self.remember_bytes):
            _, old = self.routed.popitem(last=False)
            self.routed_bytes -= old.nbytes()
            self.evicted += 1

    def served(self, request_id: str, llm: str) -> None:
        """The request was answered by ``llm`` (a fallback), not the LLM routed to: its
        feedback is about ``llm``'s answer."""
        with self.lock:
            if request_id in self.routed:
                self.routed[request_id].llm = llm

    def feedback(self, request_id: str, user: str, pick: str | None = None,
                 rating: float | None = None) -> dict:
        """Record a user's feedback on a routed request: ``pick`` (the LLM whose answer the
        user prefers: 1 for it, 0 for the one served if different) or ``rating`` (in [0, 1],
        of the answer served). Appended to the journal (flushed to disk), then the user's
        state in the router is updated at once."""
        with self.lock:
            req = self.routed.get(request_id)
            if req is None:
                raise NotFound(f"no routed request {request_id!r} (unknown, or older than the "
                               f"{len(self.routed):,} remembered; see /health)")
            if req.user != user:
                raise Forbidden(f"request {request_id!r} was routed for another user")
            if user == ANONYMOUS:
                raise Forbidden("requests without a user cannot give feedback (it would "
                                "personalise the route of every anonymous request): send "
                                "the `user` field")
            utility = np.full(len(self.llms), np.nan)
            if (pick is None) == (rating is None):
                raise BadRequest("give exactly one of pick (an LLM name) or rating (0 to 1)")
            if pick is not None:
                if pick not in self.llms:
                    raise BadRequest(f"pick {pick!r} is not an LLM of the router: {self.llms}")
                utility[self.llms.index(req.llm)] = 0.0
                utility[self.llms.index(pick)] = 1.0
            else:
                rating = float(rating)
                if not 0.0 <= rating <= 1.0:  # (NaN fails too)
                    raise BadRequest(f"rating must be in [0, 1], got {rating}")
                utility[self.llms.index(req.llm)] = rating
            if self.journal is not None:  # on disk before it is applied and acknowledged
                self.journal.append(request_id, user, utility, req.query_x.numpy())
                self.journal_entries += 1
            self.router.add_text_feedback(user, "", utility, query_x=req.query_x,
                                          query_id=request_id)
            self.routed_bytes -= self.routed.pop(request_id).nbytes()
            return {"request_id": request_id, "user": user, "recorded": True}
