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
import json
import time
import uuid
from collections import deque
from contextlib import asynccontextmanager
from pathlib import Path

import aiohttp
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse

from prlib.serve_http import (MAX_BODY_BYTES, BadRequest, ChatBody, Conflict, FeedbackBody,
                              KeyStore, ModelNotFound, ServeError, Upstream, UpstreamError,
                              UpstreamTimeout, is_loopback, parse_body, parse_json, read_body,
                              upstream_map)
from prlib.serve_routing import (ANONYMOUS, EXACT_COUNT_CHARS, JOURNAL_MARK,  # noqa: F401
                                 BatchingEncoder, Decision, MicroBatcher, RoutingService,
                                 load_for_serving, router_encoder, save_for_serving,
                                 token_counts)

#: ``model`` values that ask the server to route
ROUTE_MODELS = ("auto", "prlib", "")
CHAT_EXPECTED = ('a chat completion request {"messages": [{"role": "user", "content": "..."}], '
                 '"user": "..."}')
FEEDBACK_EXPECTED = '{"request_id": ..., "user": ..., "pick": LLM} or {..., "rating": 0.0-1.0}'


# ---------------------------------------------------------------------- the HTTP app
class _Unreachable(Exception):
    """The upstream could not be connected to: the request never reached it."""


#: aiohttp's errors of a connection that was never made (the request did not reach the upstream)
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
#: an answer (headers or body) that took longer than the read timeout
_READ_TIMEOUT = (aiohttp.SocketTimeoutError, asyncio.TimeoutError)


def _event(message: str) -> bytes:
    """A server-sent error event, as OpenAI ends a failed stream."""
    return (f"data: {json.dumps({'error': {'message': message, 'type': 'upstream_error'}})}"
            "\n\n").encode()


def _tls_context():
    """TLS verified against certifi's CA bundle where it is installed (as httpx and the openai
    client verify), else the system's."""
    import ssl

    try:
        import certifi
    except ImportError:  # pragma: no cover - certifi comes with httpx
        return ssl.create_default_context()
    return ssl.create_default_context(cafile=certifi.where())


def env_proxy(url: str) -> tuple[str | None, aiohttp.BasicAuth | None]:
    """The proxy that the environment (``HTTP_PROXY``, ``HTTPS_PROXY``, ``NO_PROXY``) names for
    ``url``, and its credentials; ``(None, None)`` for none. Read once per upstream endpoint:
    aiohttp's ``trust_env`` reads the environment and parses ``~/.netrc`` again on every request,
    which was about half the server's CPU per request (1.4 -> 0.7 ms measured)."""
    from urllib.parse import urlsplit
    from urllib.request import getproxies, proxy_bypass

    from yarl import URL

    parts = urlsplit(url)
    proxy = getproxies().get(parts.scheme)
    if not proxy or proxy_bypass(parts.hostname or ""):
        return None, None
    proxy_url = URL(proxy if "://" in proxy else f"http://{proxy}")
    auth = (aiohttp.BasicAuth(proxy_url.user, proxy_url.password or "")
            if proxy_url.user else None)
    return str(proxy_url.with_user(None)), auth


def create_app(service: RoutingService, retries: int = 2, save_to: str | Path | None = None,
               keys: KeyStore | None = None, max_body_bytes: int = MAX_BODY_BYTES,
               connect_timeout: float = 5.0, read_timeout: float = 120.0, fallbacks: int = 2,
               max_connections: int = 100):
    """The FastAPI app of :mod:`prlib.serve` around ``service``. ``retries``: further tries of
    an upstream that could not be connected to (never of one that may have received the
    request); ``fallbacks``: how many next-best LLMs to try when the chosen one cannot be
    reached; ``keys``: API keys (none: every client is trusted); ``max_body_bytes``: larger
    bodies get 413; ``connect_timeout`` / ``read_timeout`` (seconds): a connection that takes
    longer counts as unreachable, an answer that takes longer gives 504 (as does waiting longer
    than ``read_timeout`` for one of the ``max_connections`` connections to an upstream
    endpoint); sending a request and reading its answer's headers take at most
    ``connect_timeout`` + 2 x ``read_timeout`` in all (a hung upstream that stops reading a
    large body), then 504."""
    keys = keys or KeyStore()
    # waiting for a free connection of this server's own pool is not the upstream's fault:
    # aiohttp bounds the pool wait and the connect together by `connect`; a ConnectionTimeout
    # after `read_timeout` is that wait (then 504, not retried, no fallback), one before it is
    # the socket's connect (`sock_connect`: unreachable, retried, then the next-best LLM)
    timeout = aiohttp.ClientTimeout(total=None, connect=read_timeout,
                                    sock_connect=connect_timeout, sock_read=read_timeout)
    send_bound = connect_timeout + 2 * read_timeout
    tls = _tls_context()
    clients: dict[str, tuple[asyncio.AbstractEventLoop, aiohttp.ClientSession]] = {}

    @asynccontextmanager
    async def lifespan(_app):
        await asyncio.to_thread(service.encoder.warm_up)  # before the first request is taken
        yield
        for url, (loop, session) in list(clients.items()):
            if loop is asyncio.get_running_loop():
                await session.close()
                del clients[url]
        if service.journal is not None:
            service.journal.close()

    app = FastAPI(title="prlib serve", description=__doc__.split("\n\n")[0], lifespan=lifespan,
                  docs_url=None, redoc_url=None, openapi_url=None)
    app.state.service = service
    app.state.overhead_ms = deque(maxlen=100_000)  # ms per request, lock waits included

    @app.exception_handler(ServeError)
    async def serve_error(_request, err: ServeError):
        return JSONResponse(err.body(), status_code=err.status, headers=err.headers)

    def client(base_url: str) -> aiohttp.ClientSession:
        """One pooled session per upstream endpoint (aiohttp: a fraction of httpx's CPU per
        request, which bounds the proxy's throughput)."""
        loop = asyncio.get_running_loop()
        # a session belongs to the event loop it was made on (a test client may run each
        # request on a new loop): made again on another loop
        if base_url not in clients or clients[base_url][0] is not loop:
            # keep-alive shorter than the 5 s of uvicorn-based upstreams (vLLM, transformers
            # serve): a pooled connection is not reused just as the upstream closes it; proxy
            # settings from the environment, as httpx and the openai client read them, read
            # once per endpoint
            proxy, proxy_auth = env_proxy(base_url)
            clients[base_url] = (loop, aiohttp.ClientSession(
                timeout=timeout, proxy=proxy, proxy_auth=proxy_auth,
                connector=aiohttp.TCPConnector(limit=max_connections, keepalive_timeout=4,
                                               ssl=tls)))
        return clients[base_url][1]

    @app.get("/health")
    async def health():
        return {"status": "ok", "router": type(service.router).__name__,
                "encoder": service.encoder.encoder, "llms": list(service.upstreams),
                "keys": keys.enabled,
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

    async def _send(llm: str, body: dict) -> aiohttp.ClientResponse:
        """The upstream's response (headers read, body not yet), the connection retried only
        while it fails; :class:`_Unreachable` when it never connects."""
        up = service.upstreams[llm]
        headers = {"Authorization": f"Bearer {up.api_key}"} if up.api_key else {}
        last = None
        for attempt in range(retries + 1):
            start = time.perf_counter()
            try:
                async with asyncio.timeout(send_bound):
                    return await client(up.base_url).post(
                        up.base_url.rstrip("/") + "/chat/completions",
                        json={**body, "model": up.model}, headers=headers,
                        allow_redirects=False)  # a redirect is the upstream's answer
            except _NOT_SENT as e:  # nothing reached the upstream: safe to try again
                if (isinstance(e, aiohttp.ConnectionTimeoutError)
                        and time.perf_counter() - start >= read_timeout):
                    raise UpstreamTimeout(
                        f"no connection to the upstream of {llm} ({up.base_url}) was free "
                        f"within {read_timeout:g} s (this server's {max_connections} "
                        "connections to it were busy); not sent") from None
                last = f"{type(e).__name__}: {e}"
                if attempt < retries:
                    await asyncio.sleep(0.05 * 2 ** attempt)
            except _READ_TIMEOUT as e:
                raise UpstreamTimeout(f"the upstream of {llm} ({up.base_url}) did not answer "
                                      f"within {read_timeout:g} s ({type(e).__name__}); not "
                                      "retried: it may have started the completion") from None
            except aiohttp.ClientError as e:
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
        if resp.status >= 500:
            resp.release()
            raise UpstreamError(f"the upstream of {llm} answered HTTP {resp.status}; not "
                                "retried: it may have started the completion", headers)
        if parsed.stream and resp.status == 200:
            async def relay():
                tail = b""
                try:
                    async for chunk in resp.content.iter_any():
                        tail = (tail + chunk)[-64:]
                        yield chunk
                    if b"data: [DONE]" not in tail:
                        yield _event(f"the upstream of {llm} ended the stream before [DONE]")
                except (aiohttp.ClientError, *_READ_TIMEOUT) as e:
                    yield _event(f"the upstream of {llm} failed mid-stream "
                                 f"({type(e).__name__}): the answer is incomplete")
                finally:
                    resp.release()
            return StreamingResponse(relay(), status_code=200, headers=headers,
                                     media_type=resp.headers.get("content-type",
                                                                 "text/event-stream"))
        try:
            raw = await resp.read()
        except _READ_TIMEOUT:
            raise UpstreamTimeout(f"the upstream of {llm} did not finish its answer within "
                                  f"{read_timeout:g} s; not retried", headers) from None
        except aiohttp.ClientError as e:
            raise UpstreamError(f"the upstream of {llm} failed mid-answer "
                                f"({type(e).__name__}); not retried", headers) from None
        finally:
            resp.release()
        try:
            answer = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise UpstreamError(f"the upstream of {llm} answered with a body that is not JSON",
                                headers) from None
        if resp.status == 200 and isinstance(answer, dict):
            answer["model"] = llm
        return JSONResponse(answer, status_code=resp.status, headers=headers)

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

    import torch

    keys = keys or KeyStore()
    check_host(host, keys, insecure_no_keys)
    # one torch thread: the routing thread multiplies matrices of a few rows, where a second
    # intra-op thread spins against the event loop for the same cores (0.34 -> 0.09 ms per
    # batch of 8 measured on 2 cores, under load)
    torch.set_num_threads(1)
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
