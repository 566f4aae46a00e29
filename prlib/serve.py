"""``prlib serve``: a personalised, OpenAI-compatible proxy in front of upstream endpoints.

A client sends a standard chat completion with the ``user`` field; the server routes (user, last
user message) with a saved router, sets ``model`` to the chosen LLM's upstream model id,
forwards the request to that LLM's endpoint and returns the upstream's answer unchanged, except
that the response's ``model`` names the LLM that answered (streamed answers: in the headers
only) and ``x-prlib-*`` headers name the choice, its score and the routed request's id.
Endpoints (FastAPI):

==========================  =================================================================
``POST /v1/chat/completions``  routed (``model`` ``"auto"`` or absent) or sent to the named LLM;
                            ``stream: true`` passes the upstream's event stream through
``POST /v1/feedback``       ``{"request_id", "user", "pick": LLM}`` or ``{..., "rating": r}``
                            (r in [0, 1], of the answer served) on a *routed* request of a
                            named user: the user's state is updated at once (no retraining);
                            the user's next request sees it
``GET /v1/models``          the LLMs this server routes among
``GET /health``             ``{"status": "ok", ...}``, with what is remembered for feedback
``POST /v1/admin/save``     writes the router (feedback included) to ``save_to``; admin key
``GET /docs``               the API's documentation; admin key
==========================  =================================================================

Users: an unknown user is routed by the population prior, never an error; a request without
``user`` is routed as ``"anonymous"`` (or as the user its API key is bound to).

Limits and faults (each answered in OpenAI's error format, ``{"error": {"message", "type"}}``):
a body over ``max_body_bytes`` gives 413; a body that is not a chat completion (not JSON, a
``NaN`` or infinite number, nested over 64 levels, a field of the wrong type such as ``"stream":
"no"`` or ``"rating": true``) 400 naming the field; without a valid key (when keys are on) 401;
a key bound to one user speaking for another 403; an unknown model or request id 404. Only the
beginning of a text that the encoder reads is embedded and remembered. Upstreams: a request is
retried only when the connection failed (it never reached the upstream); an upstream that cannot
be reached is replaced by the next-best mapped LLM (``x-prlib-fallback-from`` names the LLMs
skipped); an upstream that takes longer than ``read_timeout`` gives 504 and one that fails once
the request was sent 502, never retried (the upstream may have started the completion, at a
cost); a stream cut mid-way ends with an error event. Feedback is appended to a journal (when
given), fsynced before it is acknowledged and replayed at start.
"""

from __future__ import annotations

import asyncio
import functools
import json
import queue
import threading
import time
import uuid
from collections import OrderedDict, deque
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import httpx
import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from prlib.embed import (MINILM, STATIC, MemoryEmbeddingCache, clip_for_encoder, encoder_for_dim,
                         static_folder, use_encoder, use_static_folder)
from prlib.features import NodeFeatures, query_rows
from prlib.routers import Router
from prlib.serve_http import (MAX_BODY_BYTES, BadRequest, ChatBody, Conflict, FeedbackBody,
                              FeedbackJournal, Forbidden, KeyStore, ModelNotFound, NotFound,
                              ServeError, Upstream, UpstreamError, UpstreamTimeout,
                              is_loopback, parse_body, parse_json, read_body, upstream_map)
from prlib.tokens import MemoryTokenCountCache, count_tokens

ANONYMOUS = "anonymous"
#: ``model`` values that ask the server to route
ROUTE_MODELS = ("auto", "prlib", "")
FEATURES_FILE = "features.npz"
#: names the router's text encoder; a static one is saved next to it, in ``encoder/``
ENCODER_FILE = "encoder.json"
#: written next to a router saved by a server with a journal: how many journal entries it holds
JOURNAL_MARK = "journal.json"
#: texts longer than this (characters) have their token count estimated from this many
EXACT_COUNT_CHARS = 65_536
CHAT_EXPECTED = ('a chat completion request {"messages": [{"role": "user", "content": "..."}], '
                 '"user": "..."}')
FEEDBACK_EXPECTED = '{"request_id": ..., "user": ..., "pick": LLM} or {..., "rating": 0.0-1.0}'


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
        if not hasattr(router, "text_scores_batch") or not hasattr(router, "add_text_feedback"):
            raise TypeError(f"{type(router).__name__} cannot route raw texts; serve a "
                            "PersonalizedRouterV2 (ours)")
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
        return user in self.router.store_.upos

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


# ---------------------------------------------------------------------- the HTTP app
class _Unreachable(Exception):
    """The upstream could not be connected to: the request never reached it."""


_NOT_SENT = (httpx.ConnectError, httpx.ConnectTimeout)


def _event(message: str) -> bytes:
    """A server-sent error event, as OpenAI ends a failed stream."""
    return (f"data: {json.dumps({'error': {'message': message, 'type': 'upstream_error'}})}"
            "\n\n").encode()


def create_app(service: RoutingService, retries: int = 2, save_to: str | Path | None = None,
               keys: KeyStore | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               connect_timeout: float = 5.0, read_timeout: float = 120.0, fallbacks: int = 2):
    """The FastAPI app of :mod:`prlib.serve` around ``service``. ``retries``: further tries of
    an upstream that could not be connected to (never of one that may have received the
    request); ``fallbacks``: how many next-best LLMs to try when the chosen one cannot be
    reached; ``keys``: API keys (none: every client is trusted); ``max_body_bytes``: larger
    bodies get 413; ``connect_timeout`` / ``read_timeout`` (seconds): a connection that takes
    longer counts as unreachable, an answer that takes longer gives 504."""
    keys = keys or KeyStore()
    # waiting for a free connection of this server's own pool is not the upstream's fault:
    # bounded by the read timeout (then 504), never taken for an unreachable upstream
    timeout = httpx.Timeout(read_timeout, connect=connect_timeout, pool=read_timeout)
    clients: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_app):
        await asyncio.to_thread(service.encoder.warm_up)  # before the first request is taken
        yield
        for c in clients.values():
            await c.aclose()
        if service.journal is not None:
            service.journal.close()

    app = FastAPI(title="prlib serve", description=__doc__.split("\n\n")[0], lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.overhead_ms = deque(maxlen=100_000)  # ms per request, lock waits included

    @app.exception_handler(ServeError)
    async def serve_error(_request, err: ServeError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    def client(base_url: str) -> httpx.AsyncClient:
        if base_url not in clients:
            clients[base_url] = httpx.AsyncClient(base_url=base_url, timeout=timeout)
        return clients[base_url]

    @app.get("/health")
    async def health():
        return {"status": "ok", "router": type(service.router).__name__,
                "encoder": service.encoder.encoder, "llms": list(service.upstreams), "keys": keys.enabled,
                "max_body_bytes": max_body_bytes, **service.health()}

    @app.get("/v1/models")
    async def models(request: Request):
        keys.client(request.headers)
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "prlib",
                                            "upstream_model": u.model}
                                           for m, u in service.upstreams.items()]}

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(request: Request):
        keys.admin(request.headers)
        return app.openapi()

    @app.get("/docs", include_in_schema=False)
    async def docs(request: Request):
        from fastapi.openapi.docs import get_swagger_ui_html

        keys.admin(request.headers)
        return get_swagger_ui_html(openapi_url="/openapi.json", title="prlib serve")

    async def _send(llm: str, body: dict) -> httpx.Response:
        """The upstream's response (headers read, body not yet), the connection retried only
        while it fails; :class:`_Unreachable` when it never connects."""
        up = service.upstreams[llm]
        headers = {"Authorization": f"Bearer {up.api_key}"} if up.api_key else {}
        last = None
        for attempt in range(retries + 1):
            try:
                req = client(up.base_url).build_request("POST", "/chat/completions",
                                                        json={**body, "model": up.model},
                                                        headers=headers)
                return await client(up.base_url).send(req, stream=True)
            except _NOT_SENT as e:  # nothing reached the upstream: safe to try again
                last = f"{type(e).__name__}: {e}"
                if attempt < retries:
                    await asyncio.sleep(0.05 * 2 ** attempt)
            except httpx.TimeoutException as e:
                raise UpstreamTimeout(f"the upstream of {llm} ({up.base_url}) did not answer "
                                      f"within {read_timeout:g} s ({type(e).__name__}); not "
                                      "retried: it may have started the completion") from None
            except httpx.HTTPError as e:
                raise UpstreamError(f"the upstream of {llm} ({up.base_url}) failed after the "
                                    f"request was sent ({type(e).__name__}: {e}); not retried: "
                                    "it may have started the completion") from None
        raise _Unreachable(f"{llm} ({up.base_url}): {retries + 1} connection attempts failed, "
                           f"last {last}")

    async def _forward(candidates: list[str], body: dict):
        """The first of ``candidates`` whose upstream can be reached, its response and the
        LLMs skipped (each with why)."""
        skipped, dead = [], set()
        for llm in candidates:
            if service.upstreams[llm].base_url in dead:
                skipped.append((llm, "same endpoint as an unreachable LLM"))
                continue
            try:
                return llm, await _send(llm, body), skipped
            except _Unreachable as e:
                dead.add(service.upstreams[llm].base_url)
                skipped.append((llm, str(e)))
        raise UpstreamError("no upstream could be reached: " + "; ".join(
            f"{why}" for _, why in skipped))

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        bound = keys.client(request.headers)
        body = parse_json(await read_body(request, max_body_bytes), CHAT_EXPECTED)
        parsed = parse_body(ChatBody, body, CHAT_EXPECTED)
        text = parsed.last_user_text()
        user = keys.check_user(bound, parsed.user) or ANONYMOUS
        asked = parsed.model or ""
        start = time.perf_counter()
        if asked in ROUTE_MODELS:
            decision = await service.decide(user, text)  # batched with concurrent requests
            rid, ranking = decision.request_id, decision.ranking
            how = "routed (population prior: unknown user)" if decision.cold else "routed"
            candidates = [m for m, _ in ranking[:fallbacks + 1]]
        elif asked in service.upstreams:
            rid, ranking, how = f"prlib-{uuid.uuid4().hex}", ((asked, float("nan")),), "asked"
            candidates = [asked]
        else:
            raise ModelNotFound(f"model {asked!r} is not served here; use 'auto' to route, or "
                                f"one of {list(service.upstreams)}")
        app.state.overhead_ms.append(1e3 * (time.perf_counter() - start))
        llm, resp, skipped = await _forward(candidates, body)
        if skipped and how != "asked":
            service.served(rid, llm)
        headers = {"x-prlib-model": llm, "x-prlib-score": f"{dict(ranking)[llm]:.6g}",
                   "x-prlib-request-id": rid, "x-prlib-route": how}
        if skipped:
            headers["x-prlib-fallback-from"] = ",".join(m for m, _ in skipped)
        if resp.status_code >= 500:
            await resp.aclose()
            raise UpstreamError(f"the upstream of {llm} answered HTTP {resp.status_code}; not "
                                "retried: it may have started the completion", headers)
        if parsed.stream and resp.status_code == 200:
            async def relay():
                tail = b""
                try:
                    async for chunk in resp.aiter_raw():
                        tail = (tail + chunk)[-64:]
                        yield chunk
                    if b"data: [DONE]" not in tail:
                        yield _event(f"the upstream of {llm} ended the stream before [DONE]")
                except httpx.HTTPError as e:
                    yield _event(f"the upstream of {llm} failed mid-stream "
                                 f"({type(e).__name__}): the answer is incomplete")
                finally:
                    await resp.aclose()
            return StreamingResponse(relay(), status_code=200, headers=headers,
                                     media_type=resp.headers.get("content-type",
                                                                 "text/event-stream"))
        try:
            raw = await resp.aread()
        except httpx.TimeoutException:
            raise UpstreamTimeout(f"the upstream of {llm} did not finish its answer within "
                                  f"{read_timeout:g} s; not retried", headers) from None
        except httpx.HTTPError as e:
            raise UpstreamError(f"the upstream of {llm} failed mid-answer "
                                f"({type(e).__name__}); not retried", headers) from None
        finally:
            await resp.aclose()
        try:
            answer = json.loads(raw)
        except json.JSONDecodeError:
            raise UpstreamError(f"the upstream of {llm} answered with a body that is not JSON",
                                headers) from None
        if resp.status_code == 200 and isinstance(answer, dict):
            answer["model"] = llm
        return JSONResponse(answer, status_code=resp.status_code, headers=headers)

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        bound = keys.client(request.headers)
        body = parse_json(await read_body(request, max_body_bytes), FEEDBACK_EXPECTED)
        if "request_id" not in body:
            raise BadRequest("feedback needs the routed request's 'request_id' (the "
                             "x-prlib-request-id header of its answer)")
        fb = parse_body(FeedbackBody, body, FEEDBACK_EXPECTED)
        user = keys.check_user(bound, fb.user) or ANONYMOUS
        return await asyncio.to_thread(service.feedback, fb.request_id, user, fb.pick,
                                       fb.rating)

    @app.post("/v1/admin/save")
    async def save(request: Request):
        keys.admin(request.headers)
        if save_to is None:
            raise Conflict("this server was started without --save-to: nothing is written")
        await asyncio.to_thread(service.save, save_to)
        return {"saved": str(save_to)}

    return app


def check_host(host: str, keys: KeyStore, insecure: bool = False) -> None:
    """Refuse to bind a non-loopback ``host`` without API keys (any machine could route as any
    user and read the admin endpoints) unless the operator says so (``insecure``)."""
    if not is_loopback(host) and not keys.enabled and not insecure:
        raise ValueError(f"--host {host} accepts connections from other machines, but no API "
                         "key is set: give --api-key KEY or --keys FILE (or, on a trusted "
                         "network, --insecure-no-keys)")


def serve(router_dir: str | Path, upstream: str | None = None, map_file: str | Path | None = None,
          host: str = "127.0.0.1", port: int = 8080, retries: int = 2,
          save_to: str | Path | None = None, keys: KeyStore | None = None,
          insecure_no_keys: bool = False, journal: str | Path | None = None,
          remember: int = 100_000, remember_mb: float = 256.0, local_llm: str | None = None,
          access_log: bool = True, **app_options) -> None:
    """Load a saved router and serve it with uvicorn (blocks). Upstreams: ``upstream`` (every
    LLM there under its own name), ``map_file``, or ``local_llm="smollm2"`` (start SmolLM2 on
    127.0.0.1, :class:`~prlib.local_llm.LocalLLMServer`, and map every router LLM to it);
    ``access_log``: uvicorn's line per request; ``app_options`` go to :func:`create_app`."""
    import uvicorn

    keys = keys or KeyStore()
    check_host(host, keys, insecure_no_keys)
    router = load_for_serving(router_dir)
    llms = list(router.feats.llms)
    mark = Path(router_dir) / JOURNAL_MARK
    skip = json.loads(mark.read_text())["journal_entries"] if mark.is_file() else 0

    def run(upstreams: dict[str, Upstream]) -> None:
        service = RoutingService(router, upstreams, remember=remember, remember_mb=remember_mb,
                                 journal=journal, journal_skip=skip if journal else 0)
        if service.replayed:
            print(f"replayed {service.replayed} feedback entries from {journal}", flush=True)
        uvicorn.run(create_app(service, retries=retries, save_to=save_to, keys=keys,
                               **app_options), host=host, port=port, log_level="info",
                    access_log=access_log)

    if local_llm is None:
        return run(upstream_map(llms, upstream, map_file))
    if local_llm != "smollm2":
        raise ValueError(f"unknown local LLM {local_llm!r}: the one available is 'smollm2'")
    from prlib.local_llm import LocalLLMServer

    print("starting SmolLM2-135M-Instruct (transformers serve, 127.0.0.1) for every router "
          "LLM ...", flush=True)
    with LocalLLMServer() as llm:
        print(f"SmolLM2 answers at {llm.url}", flush=True)
        run({m: Upstream(llm.url, llm.model) for m in llms})


class BackgroundServer:
    """A uvicorn server of ``app`` on 127.0.0.1 in a background thread (tests, benchmarks);
    use as a context manager; ``url`` ends in ``/v1``."""

    def __init__(self, app, port: int = 0):
        import socket

        import uvicorn

        if port == 0:
            with socket.socket() as s:
                s.bind(("127.0.0.1", 0))
                port = s.getsockname()[1]
        self.port = port
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                                    log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        deadline = time.time() + 30
        while not self.server.started:
            if time.time() > deadline or not self.thread.is_alive():
                raise RuntimeError("the prlib server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)


async def _fire(url: str, bodies: list[dict]) -> list:
    async with httpx.AsyncClient(timeout=120.0, limits=httpx.Limits(max_connections=None)) as c:
        return await asyncio.gather(*(c.post(f"{url}/chat/completions", json=b)
                                      for b in bodies))


async def _one_by_one(url: str, bodies: list[dict]) -> list:
    async with httpx.AsyncClient(timeout=120.0) as c:
        return [await c.post(f"{url}/chat/completions", json=b) for b in bodies]


def load_test(service: RoutingService, n_requests: int = 200, n_users: int = 20,
              sequential: int = 0, **app_options) -> dict:
    """``n_requests`` chat completions sent at once from ``n_users`` users (distinct texts) to
    a server of ``service`` on 127.0.0.1; returns what came back (statuses, request ids, the
    chosen LLMs) and the routing overhead per request, p50 / p99: ``route_ms`` (the router's
    scoring, under its lock), ``embed_ms`` (from arrival to the text's feature row: the
    batched encoder of :attr:`RoutingService.pipeline`, waiting included), ``overhead_ms``
    (from arrival to the routing decision, all queueing included) and the pipeline's batch
    sizes (requests waiting together are embedded in one batch and scored in one router call,
    whose time ``route_ms`` gives each).
    ``sequential`` > 0: then that many more requests one at a time (each alone on the server,
    new texts), whose ``single_*`` overheads are what one request costs on an idle server.
    ``app_options`` go to :func:`create_app`."""
    app = create_app(service, **app_options)

    def bodies(n, tag):
        return [{"model": "auto", "user": f"load-user-{i % n_users}",
                 "messages": [{"role": "user", "content": f"{tag} question {i}: how do I sort "
                                                          f"a list of {i} numbers?"}]}
                for i in range(n)]

    pct = lambda a, q: float(np.percentile(a, q)) if len(a) else float("nan")  # noqa: E731
    burst = bodies(n_requests, "load test")
    marks = lambda: (len(service.route_ms), len(service.embed_ms),  # noqa: E731
                     len(app.state.overhead_ms), len(service.pipeline.batch_sizes),
                     len(service.pipeline.batch_sizes))
    with BackgroundServer(app) as server:
        before = marks()
        start = time.perf_counter()
        replies = asyncio.run(_fire(server.url, burst))
        wall = time.perf_counter() - start
        after = marks()
        singles = asyncio.run(_one_by_one(server.url, bodies(sequential, "one at a time")))

    def part(log, i, lo, hi):
        return np.array(list(log)[lo[i]:hi[i]])

    logs = (service.route_ms, service.embed_ms, app.state.overhead_ms)
    route, embed, overhead = (part(log, i, before, after) for i, log in enumerate(logs))
    out = {"requests": n_requests, "users": n_users, "wall_s": wall,
           "statuses": [r.status_code for r in replies],
           "texts": [b["messages"][-1]["content"] for b in burst],
           "models": [r.headers.get("x-prlib-model") for r in replies],
           "request_ids": [r.headers.get("x-prlib-request-id") for r in replies],
           "route_ms_p50": pct(route, 50), "route_ms_p99": pct(route, 99),
           "embed_ms_p50": pct(embed, 50), "embed_ms_p99": pct(embed, 99),
           "overhead_ms_p50": pct(overhead, 50), "overhead_ms_p99": pct(overhead, 99),
           "encoder_batches": after[3] - before[3],
           "encoder_batch_max": int(max(list(service.pipeline.batch_sizes)[before[3]:after[3]],
                                        default=0)),
           "router_batches": after[4] - before[4],
           "router_batch_max": int(max(list(service.pipeline.batch_sizes)[before[4]:after[4]],
                                       default=0))}
    if sequential:
        done = marks()
        route, embed, overhead = (part(log, i, after, done) for i, log in enumerate(logs))
        out.update(single_statuses=[r.status_code for r in singles],
                   single_route_ms_p50=pct(route, 50), single_route_ms_p99=pct(route, 99),
                   single_embed_ms_p50=pct(embed, 50), single_embed_ms_p99=pct(embed, 99),
                   single_overhead_ms_p50=pct(overhead, 50),
                   single_overhead_ms_p99=pct(overhead, 99))
    return out
