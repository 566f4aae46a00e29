"""``prlib serve``: a personalised, OpenAI-compatible proxy in front of upstream endpoints.

A client sends a standard chat completion with the ``user`` field; the server routes (user, last
user message) with a saved router, sets ``model`` to the chosen LLM's upstream model id,
forwards the request to that LLM's endpoint and returns the upstream's answer unchanged, except
that the response's ``model`` names the chosen router LLM (streamed answers: in the headers only)
and ``x-prlib-*`` headers name the choice, its score and the routed request's id. Endpoints (FastAPI):

==========================  =================================================================
``POST /v1/chat/completions``  routed (``model`` ``"auto"`` or absent) or sent to the named LLM;
                            ``stream: true`` passes the upstream's event stream through
``POST /v1/feedback``       ``{"request_id", "user", "pick": LLM}`` or ``{..., "rating": r}``
                            (r in [0, 1], of the answer served) on a *routed* request of a
                            named user: the user's state is updated at once (no retraining);
                            the user's next request sees it. The text joins the visible
                            history, so other users' pooled neighbours may include it
``GET /v1/models``          the LLMs this server routes among
``GET /health``             ``{"status": "ok", ...}``
==========================  =================================================================

Users: an unknown user is routed by the population prior (the router's messages for a user
without history: :meth:`~prlib.routers.PersonalizedRouterV2.text_scores`), never an error; a
request without ``user`` is routed as the user ``"anonymous"``. Errors: a body that is not a
chat completion gives 400 (what is wrong, in OpenAI's error format), a ``model`` that is neither
``"auto"`` nor an LLM of the map 404, feedback on an unknown request id 404; an upstream that
fails (connection error or 5xx) after ``retries`` further tries gives 502 with the upstream's
status. Nothing is written to disk: texts are embedded with in-memory caches, and the router's
state changes in memory only (``POST /v1/admin/save`` writes it where the server was told).
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

import httpx
import numpy as np
import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from prlib.embed import MemoryEmbeddingCache
from prlib.features import NodeFeatures, query_rows
from prlib.routers import Router
from prlib.tokens import MemoryTokenCountCache

ANONYMOUS = "anonymous"
#: ``model`` values that ask the server to route
ROUTE_MODELS = ("auto", "prlib", "")
FEATURES_FILE = "features.npz"


# ---------------------------------------------------------------------- the router on disk
def save_for_serving(router: Router, folder: str | Path) -> Path:
    """``router.save(folder)`` plus its node features (``features.npz``), so that
    :func:`load_for_serving` needs no bank."""
    folder = router.save(folder)
    f = router.feats
    np.savez(folder / FEATURES_FILE, query_ids=np.array(f.query_ids), query_x=f.query_x.numpy(),
             tasks=np.array(f.tasks), task_x=f.task_x.numpy(), llms=np.array(f.llms),
             llm_x=f.llm_x.numpy())
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
    return Router.load(folder, feats)


# ---------------------------------------------------------------------- upstreams
@dataclass(frozen=True)
class Upstream:
    """Where one router LLM is served: an OpenAI-compatible ``base_url`` (ending in ``/v1``),
    the upstream's ``model`` id, and an optional API key."""

    base_url: str
    model: str
    api_key: str | None = None


def upstream_map(llms: list[str], upstream: str | None = None,
                 map_file: str | Path | None = None) -> dict[str, Upstream]:
    """Router LLM -> :class:`Upstream`: from ``map_file`` (JSON ``{"llm": {"base_url": ...,
    "model": ..., "api_key": ...}}``, a subset of the router's LLMs), else every router LLM at
    ``upstream`` under its own name. A name the router does not know is an error that lists
    the names it knows."""
    if map_file is not None:
        raw = json.loads(Path(map_file).read_text())
        out = {}
        for name, spec in raw.items():
            if not isinstance(spec, dict) or "base_url" not in spec:
                raise ValueError(f"{map_file}: entry {name!r} needs at least a base_url "
                                 '(e.g. {"base_url": "http://127.0.0.1:8000/v1", "model": '
                                 '"my-model"})')
            out[name] = Upstream(spec["base_url"].rstrip("/"), spec.get("model", name),
                                 spec.get("api_key"))
    elif upstream is not None:
        out = {m: Upstream(upstream.rstrip("/"), m) for m in llms}
    else:
        raise ValueError("give an upstream URL (every LLM there under its own name) or a map "
                         "file")
    unknown = sorted(set(out) - set(llms))
    if unknown:
        raise ValueError(f"the upstream map names LLMs the router does not know: {unknown}; "
                         f"the router's LLMs are {llms}")
    if not out:
        raise ValueError("the upstream map is empty: name at least one of the router's LLMs "
                         f"{llms}")
    return out


# ---------------------------------------------------------------------- routing state
@dataclass
class Routed:
    """One routed request, kept for its feedback."""

    user: str
    text: str
    llm: str
    query_x: object  # (1, query_dim) tensor


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


class BatchingEncoder(MicroBatcher):
    """Feature rows of new query texts (:func:`~prlib.features.query_rows`), computed in one
    background thread that embeds every text waiting at that moment in one batch (at most
    ``max_batch``): the text encoder runs once per batch, and outside the router's lock. Its
    caches are in memory and touched by that thread only."""

    def __init__(self, max_batch: int = 64):
        super().__init__(self._rows, max_batch, "prlib-encoder")
        self.embeddings, self.tokens = MemoryEmbeddingCache(), MemoryTokenCountCache()

    def _rows(self, texts: list[str]) -> list:
        rows = query_rows(texts, embedding_cache=self.embeddings, token_cache=self.tokens)
        return [rows[i:i + 1] for i in range(len(texts))]

    def warm_up(self) -> None:
        """Load the text encoder and the token counter now, by embedding one text with
        throw-away caches: otherwise the first request after start waits for the model to
        load (seconds), and every request queued behind it with it."""
        query_rows(["warm-up"], embedding_cache=MemoryEmbeddingCache(),
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


class RoutingService:
    """A router, the LLMs it may pick (those with an upstream), and the routed requests that
    feedback may still name (the ``remember`` most recent). Thread-safe: one lock around the
    router."""

    def __init__(self, router: Router, upstreams: dict[str, Upstream], remember: int = 100_000):
        if not hasattr(router, "text_scores_batch") or not hasattr(router, "add_text_feedback"):
            raise TypeError(f"{type(router).__name__} cannot route raw texts; serve a "
                            "PersonalizedRouterV2 (ours)")
        self.router, self.upstreams, self.remember = router, upstreams, remember
        self.llms = list(router.feats.llms)
        self.allowed = np.array([m in upstreams for m in self.llms])
        self.routed: OrderedDict[str, Routed] = OrderedDict()
        self.encoder = BatchingEncoder()
        #: concurrent requests' routing decisions, one router call per waiting batch
        self.scorer = MicroBatcher(self._route_batch, name="prlib-router")
        self.lock = threading.Lock()
        self.route_ms: deque[float] = deque(maxlen=100_000)  # scoring time per request (ms)

    def save(self, folder: str | Path) -> Path:
        """:func:`save_for_serving` of the router as it is now (feedback included), under the
        lock: no feedback lands halfway through."""
        with self.lock:
            return save_for_serving(self.router, folder)

    def known_user(self, user: str) -> bool:
        return user in self.router.store_.upos

    def route(self, user: str, text: str, row=None) -> tuple[str, float, str, bool]:
        """``(llm, score, request_id, cold_start)`` for ``user`` asking ``text``, among the
        LLMs with an upstream; ``cold_start``: the user has no visible feedback (the
        population prior routed them). ``row``: the text's feature row when the caller has it
        (the server awaits :attr:`encoder` first)."""
        if row is None:
            row = self.encoder.row_now(text)
        return self._route_batch([(user, text, row)])[0]

    async def route_async(self, user: str, text: str, row) -> tuple[str, float, str, bool]:
        """:meth:`route` from the event loop: routed together with the requests waiting at that
        moment (one router call for all of them, :attr:`scorer`)."""
        return await self.scorer.submit((user, text, row))

    def _route_batch(self, requests: list[tuple]) -> list[tuple[str, float, str, bool]]:
        """:meth:`route` of ``(user, text, row)`` requests in one router call, under the lock;
        ``route_ms`` gets the call's time once per request (what each waited for scoring)."""
        users = [user for user, _, _ in requests]
        with self.lock:
            start = time.perf_counter()
            scores = self.router.text_scores_batch(users, torch.cat([r for _, _, r in requests]))
            scores = np.where(self.allowed[None], scores, -np.inf)
            best = scores.argmax(1)
            out = []
            for (user, text, row), b, s in zip(requests, best, scores):
                rid = f"prlib-{uuid.uuid4().hex}"
                self.routed[rid] = Routed(user, text, self.llms[b], row)
                out.append((self.llms[b], float(s[b]), rid, not self.known_user(user)))
            while len(self.routed) > self.remember:
                self.routed.popitem(last=False)
            self.route_ms.extend([1e3 * (time.perf_counter() - start)] * len(requests))
            return out

    def feedback(self, request_id: str, user: str, pick: str | None = None,
                 rating: float | None = None) -> dict:
        """Record a user's feedback on a routed request: ``pick`` (the LLM whose answer the
        user prefers: 1 for it, 0 for the one served if different) or ``rating`` (in [0, 1],
        of the answer served). Updates the user's state in the router at once."""
        with self.lock:
            req = self.routed.get(request_id)
            if req is None:
                raise KeyError(f"no routed request {request_id!r} (unknown, or older than the "
                               f"{self.remember:,} most recent)")
            if req.user != user:
                raise PermissionError(f"request {request_id!r} was routed for another user")
            if user == ANONYMOUS:
                raise PermissionError("requests without a user cannot give feedback (it would "
                                      "personalise the route of every anonymous request): send "
                                      "the `user` field")
            utility = np.full(len(self.llms), np.nan)
            if (pick is None) == (rating is None):
                raise ValueError("give exactly one of pick (an LLM name) or rating (0 to 1)")
            if pick is not None:
                if pick not in self.llms:
                    raise ValueError(f"pick {pick!r} is not an LLM of the router: {self.llms}")
                utility[self.llms.index(req.llm)] = 0.0
                utility[self.llms.index(pick)] = 1.0
            else:
                if not 0.0 <= float(rating) <= 1.0:
                    raise ValueError(f"rating must be in [0, 1], got {rating}")
                utility[self.llms.index(req.llm)] = float(rating)
            self.router.add_text_feedback(user, req.text, utility, query_x=req.query_x,
                                          query_id=request_id)
            del self.routed[request_id]
            return {"request_id": request_id, "user": user, "recorded": True}


# ---------------------------------------------------------------------- the HTTP app
def _error(status: int, message: str, kind: str = "invalid_request_error"):
    return JSONResponse({"error": {"message": message, "type": kind}}, status_code=status)


async def _json_object(request: Request, expected: str):
    """The request's JSON object body, or a 400 answer that says what to send (``expected``)."""
    try:
        body = await request.json()
    except (json.JSONDecodeError, UnicodeDecodeError):
        return _error(400, f"the body is not JSON: send {expected}")
    if not isinstance(body, dict):
        return _error(400, f"the body must be a JSON object: {expected}")
    return body


def _last_user_text(body: dict) -> str:
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise ValueError("'messages' must be a non-empty list of {role, content} objects")
    for m in reversed(messages):
        if not isinstance(m, dict) or "role" not in m:
            raise ValueError("every message needs a 'role' and a 'content'")
        if m["role"] == "user":
            content = m.get("content")
            if isinstance(content, list):  # content parts: the text ones
                content = " ".join(p.get("text") or "" for p in content if isinstance(p, dict))
            if not isinstance(content, str) or not content.strip():
                raise ValueError("the last user message has no text content")
            return content
    raise ValueError("no message with role 'user': nothing to route")


def create_app(service: RoutingService, retries: int = 2, timeout: float = 120.0,
               save_to: str | Path | None = None):
    """The FastAPI app of :mod:`prlib.serve` around ``service``. ``retries``: further tries of
    an upstream call that fails (connection error or 5xx) before answering 502."""
    clients: dict[str, httpx.AsyncClient] = {}

    @asynccontextmanager
    async def lifespan(_app):
        await asyncio.to_thread(service.encoder.warm_up)  # before the first request is taken
        yield
        for c in clients.values():
            await c.aclose()

    app = FastAPI(title="prlib serve", description=__doc__.split("\n\n")[0], lifespan=lifespan)
    app.state.service = service
    app.state.overhead_ms = deque(maxlen=100_000)  # ms per request, lock waits included
    app.state.embed_ms = deque(maxlen=100_000)  # ms from arrival to the text's feature row

    def client(base_url: str) -> httpx.AsyncClient:
        if base_url not in clients:
            clients[base_url] = httpx.AsyncClient(base_url=base_url, timeout=timeout)
        return clients[base_url]

    @app.get("/health")
    async def health():
        return {"status": "ok", "router": type(service.router).__name__,
                "llms": list(service.upstreams), "remembered_requests": len(service.routed)}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": m, "object": "model", "owned_by": "prlib",
                                            "upstream_model": u.model}
                                           for m, u in service.upstreams.items()]}

    async def _send(up: Upstream, body: dict):
        headers = {"Authorization": f"Bearer {up.api_key}"} if up.api_key else {}
        last = None
        for _ in range(retries + 1):
            try:
                req = client(up.base_url).build_request("POST", "/chat/completions", json=body,
                                                        headers=headers)
                resp = await client(up.base_url).send(req, stream=bool(body.get("stream")))
            except httpx.HTTPError as e:
                last = f"{type(e).__name__}: {e}"
                continue
            if resp.status_code < 500:
                return resp, None
            last = f"HTTP {resp.status_code}"
            await resp.aclose()
        return None, last

    @app.post("/v1/chat/completions")
    async def chat(request: Request):
        body = await _json_object(request, 'a chat completion request {"messages": [{"role": '
                                           '"user", "content": "..."}], "user": "..."}')
        if not isinstance(body, dict):
            return body  # the 400 answer
        try:
            text = _last_user_text(body)
        except ValueError as e:
            return _error(400, str(e))
        user = body.get("user") or ANONYMOUS
        if not isinstance(user, str):
            return _error(400, "'user' must be a string")
        asked = body.get("model") or ""
        start = time.perf_counter()
        if asked in ROUTE_MODELS:
            row = await service.encoder.row(text)  # batched with concurrent requests' texts
            app.state.embed_ms.append(1e3 * (time.perf_counter() - start))
            llm, score, rid, cold = await service.route_async(user, text, row)
            how = "routed (population prior: unknown user)" if cold else "routed"
        elif asked in service.upstreams:
            llm, score, rid, how = asked, float("nan"), f"prlib-{uuid.uuid4().hex}", "asked"
        else:
            return _error(404, f"model {asked!r} is not served here; use 'auto' to route, or one "
                               f"of {list(service.upstreams)}", "model_not_found")
        app.state.overhead_ms.append(1e3 * (time.perf_counter() - start))
        up = service.upstreams[llm]
        resp, failure = await _send(up, {**body, "model": up.model})
        if resp is None:
            return _error(502, f"the upstream of {llm} ({up.base_url}) failed after "
                               f"{retries + 1} tries: {failure}", "upstream_error")
        headers = {"x-prlib-model": llm, "x-prlib-score": f"{score:.6g}",
                   "x-prlib-request-id": rid, "x-prlib-route": how}
        if body.get("stream") and resp.status_code == 200:
            async def relay():
                try:
                    async for chunk in resp.aiter_raw():
                        yield chunk
                finally:
                    await resp.aclose()
            return StreamingResponse(relay(), status_code=200, headers=headers,
                                     media_type=resp.headers.get("content-type",
                                                                 "text/event-stream"))
        raw = await resp.aread()
        await resp.aclose()
        try:
            answer = json.loads(raw)
        except json.JSONDecodeError:
            return _error(502, f"the upstream of {llm} answered with a body that is not JSON",
                          "upstream_error")
        if resp.status_code == 200 and isinstance(answer, dict):
            answer["model"] = llm
        return JSONResponse(answer, status_code=resp.status_code, headers=headers)

    @app.post("/v1/feedback")
    async def feedback(request: Request):
        body = await _json_object(request, '{"request_id": ..., "user": ..., "pick": LLM} or '
                                           '{..., "rating": 0.0-1.0}')
        if not isinstance(body, dict):
            return body  # the 400 answer
        if "request_id" not in body:
            return _error(400, "feedback needs the routed request's 'request_id' (the "
                               "x-prlib-request-id header of its answer)")
        try:
            out = await asyncio.to_thread(service.feedback, str(body["request_id"]),
                                          body.get("user") or ANONYMOUS, body.get("pick"),
                                          body.get("rating"))
        except KeyError as e:
            return _error(404, e.args[0], "not_found")
        except PermissionError as e:
            return _error(403, str(e), "permission_error")
        except (TypeError, ValueError) as e:
            return _error(400, str(e))
        return out

    @app.post("/v1/admin/save")
    async def save():
        if save_to is None:
            return _error(409, "this server was started without --save-to: nothing is written")
        await asyncio.to_thread(service.save, save_to)
        return {"saved": str(save_to)}

    return app


def serve(router_dir: str | Path, upstream: str | None = None, map_file: str | Path | None = None,
          host: str = "127.0.0.1", port: int = 8080, retries: int = 2,
          save_to: str | Path | None = None) -> None:
    """Load a saved router and serve it with uvicorn (blocks)."""
    import uvicorn

    router = load_for_serving(router_dir)
    service = RoutingService(router, upstream_map(list(router.feats.llms), upstream, map_file))
    uvicorn.run(create_app(service, retries=retries, save_to=save_to), host=host, port=port,
                log_level="info")


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
              sequential: int = 0) -> dict:
    """``n_requests`` chat completions sent at once from ``n_users`` users (distinct texts) to
    a server of ``service`` on 127.0.0.1; returns what came back (statuses, request ids, the
    chosen LLMs) and the routing overhead per request, p50 / p99: ``route_ms`` (the router's
    scoring, under its lock), ``embed_ms`` (from arrival to the text's feature row: the
    batched text encoder, waiting included), ``overhead_ms`` (from arrival to the routing
    decision, all queueing included) and the encoder's and the router's batch sizes (requests
    waiting together are scored in one router call, whose time ``route_ms`` gives each).
    ``sequential`` > 0: then that many more requests one at a time (each alone on the server,
    new texts), whose ``single_*`` overheads are what one request costs on an idle server."""
    app = create_app(service)

    def bodies(n, tag):
        return [{"model": "auto", "user": f"load-user-{i % n_users}",
                 "messages": [{"role": "user", "content": f"{tag} question {i}: how do I sort "
                                                          f"a list of {i} numbers?"}]}
                for i in range(n)]

    pct = lambda a, q: float(np.percentile(a, q)) if len(a) else float("nan")  # noqa: E731
    burst = bodies(n_requests, "load test")
    marks = lambda: (len(service.route_ms), len(app.state.embed_ms),  # noqa: E731
                     len(app.state.overhead_ms), len(service.encoder.batch_sizes),
                     len(service.scorer.batch_sizes))
    with BackgroundServer(app) as server:
        before = marks()
        start = time.perf_counter()
        replies = asyncio.run(_fire(server.url, burst))
        wall = time.perf_counter() - start
        after = marks()
        singles = asyncio.run(_one_by_one(server.url, bodies(sequential, "one at a time")))

    def part(log, i, lo, hi):
        return np.array(list(log)[lo[i]:hi[i]])

    logs = (service.route_ms, app.state.embed_ms, app.state.overhead_ms)
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
           "encoder_batch_max": int(max(list(service.encoder.batch_sizes)[before[3]:after[3]],
                                        default=0)),
           "router_batches": after[4] - before[4],
           "router_batch_max": int(max(list(service.scorer.batch_sizes)[before[4]:after[4]],
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
