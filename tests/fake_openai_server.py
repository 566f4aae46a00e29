"""A local OpenAI-compatible chat server for tests: deterministic answers, usage, injected faults.

``POST /v1/chat/completions`` answers with ``responder(model, messages)`` and usage counted in
words (prompt: all message words; completion: answer words). Faults queued with :meth:`fail`
are served first, in order: ``"429"`` (with ``Retry-After: retry_after``), ``"500"``, ``"400"``,
``"timeout"`` (sleeps ``delay`` seconds, then hangs up), ``"malformed"`` (HTTP 200 with a body
that is not JSON) and ``"cut"`` (a stream that stops after half its words, without ``[DONE]``;
an answer whose body stops short of its ``Content-Length``). Every answer takes ``latency``
seconds; ``peak`` is the most requests served at
once.
Every request is counted per (model, messages) as ``received``; completed 200 answers as
``answered``. With ``"stream": true`` the answer comes as server-sent events, one chunk per
word and ``data: [DONE]``. Requests to ``hang_model`` wait until :meth:`abandon` drops them
unanswered (a run
interrupted mid-flight).
"""

from __future__ import annotations

import json
import threading
import time
from collections import Counter, deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Callable

Responder = Callable[[str, list[dict]], str]


class _BackloggedServer(ThreadingHTTPServer):
    """A threading HTTP server whose listen backlog holds a load test's burst (httpx opens up to
    100 connections at once). With the standard library's default of 5 pending connections a
    loaded machine can refuse or reset connects, so the fake upstream, not the proxy under
    test, would lose requests: the likely cause of one 502 seen in CI, not reproduced."""

    request_queue_size = 1024


def request_key(model: str, messages: list[dict]) -> str:
    return json.dumps([model, messages], sort_keys=True)


def echo_responder(model: str, messages: list[dict]) -> str:
    """Default answer: names the model and repeats the last user message."""
    return f"{model} says: {messages[-1]['content']}"


class FakeOpenAIServer:
    """Threaded HTTP server on 127.0.0.1 (free port); use as a context manager."""

    def __init__(self, responder: Responder = echo_responder, delay: float = 2.0,
                 latency: float = 0.0) -> None:
        self.responder = responder
        self.delay, self.latency = delay, latency
        self.retry_after = "0"
        self.active = self.peak = 0
        self.received: Counter[str] = Counter()
        self.answered: Counter[str] = Counter()
        self.auth_headers: list[str] = []
        self.hang_model: str | None = None
        self._epoch = 0
        self._faults: deque[tuple[str, str | None, str | None]] = deque()
        self._lock = threading.Lock()
        self._httpd = _BackloggedServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,),
                                        daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def fail(self, *kinds: str, model: str | None = None, text: str | None = None) -> None:
        """Queue faults served before any answer (only to ``model`` and to requests whose last
        message is ``text``, when given)."""
        with self._lock:
            self._faults.extend((k, model, text) for k in kinds)

    def abandon(self) -> None:
        """Drop every request waiting on ``hang_model`` without an answer; stop hanging."""
        with self._lock:
            self._epoch += 1
            self.hang_model = None

    def _next_fault(self, model: str, text: str) -> str | None:
        with self._lock:
            for i, (kind, only_model, only_text) in enumerate(self._faults):
                if only_model in (None, model) and only_text in (None, text):
                    del self._faults[i]
                    return kind
        return None

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep test output quiet
                pass

            def _send(self, status: int, body: bytes, headers: dict | None = None) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                for k, v in (headers or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                if not self.path.endswith("/chat/completions"):
                    return self._send(404, b'{"error": {"message": "not found"}}')
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                model, messages = body["model"], body["messages"]
                key = request_key(model, messages)
                with server._lock:
                    epoch = server._epoch
                    server.received[key] += 1
                    server.auth_headers.append(self.headers.get("Authorization", ""))
                fault = server._next_fault(model, messages[-1]["content"])
                if fault == "429":
                    return self._send(429, b'{"error": {"message": "rate limited"}}',
                                      {"Retry-After": server.retry_after})
                if fault == "500":
                    return self._send(500, b'{"error": {"message": "server error"}}')
                if fault == "400":
                    return self._send(400, b'{"error": {"message": "bad request"}}')
                if fault == "malformed":
                    return self._send(200, b'{"id": "x", "choices": [{"mess')
                if fault == "cut" and not body.get("stream"):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", "1000")
                    self.end_headers()
                    self.wfile.write(b'{"id": "x", "choices": [')
                    return None
                if fault == "timeout":  # outlive the client's timeout, then hang up
                    time.sleep(server.delay)
                    return None
                while server.hang_model == model and server._epoch == epoch:
                    time.sleep(0.01)
                if server._epoch != epoch:
                    return None
                with server._lock:
                    server.active += 1
                    server.peak = max(server.peak, server.active)
                time.sleep(server.latency)
                with server._lock:
                    server.active -= 1
                text = server.responder(model, messages)
                usage = {"prompt_tokens": sum(len(m["content"].split()) for m in messages),
                         "completion_tokens": len(text.split())}
                usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
                if body.get("stream"):  # server-sent events: one chunk per word, then [DONE]
                    self.send_response(200)
                    self.send_header("Content-Type", "text/event-stream")
                    self.end_headers()
                    words = text.split(" ")
                    for word in words[:len(words) // 2] if fault == "cut" else words:
                        chunk = {"id": "chatcmpl-fake", "object": "chat.completion.chunk",
                                 "model": model, "choices": [{"index": 0, "delta": {
                                     "content": word + " "}}]}
                        self.wfile.write(f"data: {json.dumps(chunk)}\n\n".encode())
                    if fault == "cut":  # hang up mid-stream
                        return None
                    self.wfile.write(b"data: [DONE]\n\n")
                    with server._lock:
                        server.answered[key] += 1
                    return None
                reply = {"id": "chatcmpl-fake", "object": "chat.completion", "created": 0,
                         "model": model, "usage": usage,
                         "choices": [{"index": 0, "finish_reason": "stop",
                                      "message": {"role": "assistant", "content": text}}]}
                self._send(200, json.dumps(reply).encode())
                with server._lock:
                    server.answered[key] += 1

        return Handler

    def __enter__(self) -> "FakeOpenAIServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.abandon()
        self._httpd.shutdown()
        self._httpd.server_close()
