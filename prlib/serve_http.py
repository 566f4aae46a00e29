"""The HTTP edge of :mod:`prlib.serve`: its error types, request bodies, keys and journal.

Kept free of torch and FastAPI imports at module level, so that the command line can check a
keys file or a journal before it loads anything heavy.

* :class:`ServeError` and its subclasses carry the HTTP status and the OpenAI error ``type``
  of each failure a client can meet; the app turns them into ``{"error": {...}}`` answers.
* :func:`read_json` reads a body under a size limit (413) and parses it strictly: no ``NaN``
  or infinities, at most :data:`MAX_DEPTH` levels of nesting (400 otherwise).
* :class:`ChatBody` / :class:`FeedbackBody`: typed (pydantic, strict) request bodies.
* :class:`KeyStore`: API keys, each optionally bound to one user, and an admin key.
* :class:`Upstream` and :func:`upstream_map`: where each router LLM is served.
* :class:`FeedbackJournal`: an append-only JSON-lines file of acknowledged feedback, replayed
  at start.
"""

from __future__ import annotations

import base64
import hmac
import ipaddress
import json
import math
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: deepest JSON nesting a request body may have (a chat completion needs about 6)
MAX_DEPTH = 64
#: default body-size limit (bytes)
MAX_BODY_BYTES = 1_000_000


# ---------------------------------------------------------------------- errors
class ServeError(Exception):
    """A failure answered to the client with ``status`` and an OpenAI-style error ``kind``."""

    status = 500
    kind = "server_error"

    def __init__(self, message: str, headers: dict | None = None):
        super().__init__(message)
        self.message, self.headers = message, headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind}}


class BadRequest(ServeError):
    status, kind = 400, "invalid_request_error"


class Unauthorized(ServeError):
    status, kind = 401, "authentication_error"


class Forbidden(ServeError):
    status, kind = 403, "permission_error"


class NotFound(ServeError):
    status, kind = 404, "not_found"


class ModelNotFound(NotFound):
    kind = "model_not_found"


class Conflict(ServeError):
    status, kind = 409, "conflict"


class PayloadTooLarge(ServeError):
    status, kind = 413, "request_too_large"


class UpstreamError(ServeError):
    status, kind = 502, "upstream_error"


class UpstreamTimeout(ServeError):
    status, kind = 504, "upstream_timeout"


# ---------------------------------------------------------------------- bodies
def _no_constant(name: str):
    raise BadRequest(f"the body contains {name}: JSON numbers must be finite (send null or a "
                     "number)")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise BadRequest(f"the number {text[:40]} is out of range: send a finite number")
    return value


def _depth_ok(value: Any, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        v, d = stack.pop()
        if d > limit:
            return False
        if isinstance(v, dict):
            stack.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            stack.extend((x, d + 1) for x in v)
    return True


def parse_json(raw: bytes, expected: str) -> dict:
    """``raw`` as a JSON object, strictly: :class:`BadRequest` saying what is wrong (not JSON,
    not an object, ``NaN`` or an infinite number, nested deeper than :data:`MAX_DEPTH`)."""
    try:
        body = json.loads(raw, parse_constant=_no_constant, parse_float=_finite_float)
    except (json.JSONDecodeError, UnicodeDecodeError):
        raise BadRequest(f"the body is not JSON: send {expected}") from None
    except RecursionError:
        raise BadRequest(f"the body is nested too deep (more than {MAX_DEPTH} levels): send "
                         f"{expected}") from None
    if not isinstance(body, dict):
        raise BadRequest(f"the body must be a JSON object: {expected}")
    if not _depth_ok(body):
        raise BadRequest(f"the body is nested too deep (more than {MAX_DEPTH} levels): send "
                         f"{expected}")
    return body


async def read_body(request, limit: int) -> bytes:
    """The request's body, refused with :class:`PayloadTooLarge` as soon as it is known to
    exceed ``limit`` bytes (from ``Content-Length``, else while it arrives)."""
    too_large = PayloadTooLarge(f"the body exceeds this server's limit of {limit:,} bytes "
                                "(--max-body-bytes): send a shorter conversation")
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise too_large
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        chunks.append(chunk)
    return b"".join(chunks)


def validation_message(err: ValidationError) -> str:
    """A pydantic error as one line per problem: where it is and what is expected."""
    lines = []
    for e in err.errors()[:5]:
        where = ".".join(str(p) for p in e["loc"]) or "body"
        lines.append(f"{where}: {e['msg']}")
    return "; ".join(lines)


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="allow")


class ContentPart(_Strict):
    type: str = "text"
    text: str | None = None


class Message(_Strict):
    role: str
    content: str | list[ContentPart] | None = None


class ChatBody(_Strict):
    """A chat completion request: what the server reads; every other field is passed on."""

    messages: list[Message] = Field(min_length=1)
    model: str | None = None
    user: str | None = None
    stream: bool = False

    def last_user_text(self) -> str:
        """The text of the last user message (its text parts joined)."""
        for m in reversed(self.messages):
            if m.role == "user":
                content = m.content
                if isinstance(content, list):
                    content = " ".join(p.text or "" for p in content)
                if not content or not content.strip():
                    raise BadRequest("the last user message has no text content")
                return content
        raise BadRequest("no message with role 'user': nothing to route")


class FeedbackBody(_Strict):
    """``{"request_id", "user", "pick": LLM}`` or ``{..., "rating": 0-1}``."""

    model_config = ConfigDict(strict=True, extra="forbid")
    request_id: str
    user: str | None = None
    pick: str | None = None
    rating: float | None = Field(default=None, ge=0.0, le=1.0)


def parse_body(model: type[BaseModel], body: dict, expected: str):
    """``body`` validated as ``model``, or :class:`BadRequest` naming each wrong field."""
    try:
        return model.model_validate(body)
    except ValidationError as e:
        raise BadRequest(f"{validation_message(e)} (send {expected})") from None


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
        path = Path(map_file)
        if not path.is_file():
            raise FileNotFoundError(f"map file {path} not found")
        try:
            raw = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{path} is not JSON ({e}): write {{\"llm\": {{\"base_url\": "
                             '"http://127.0.0.1:8000/v1", "model": "my-model"}}') from None
        if not isinstance(raw, dict):
            raise ValueError(f'{path}: expected a JSON object {{"llm": {{"base_url": ...}}}}')
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


# ---------------------------------------------------------------------- keys
def is_loopback(host: str) -> bool:
    """Whether ``host`` binds this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class KeyStore:
    """API keys the server accepts (``Authorization: Bearer KEY``), each optionally bound to
    one user id (a bound key may only speak for that user), and an admin key for the admin
    endpoints and the API docs. Without any key every client is trusted (a loopback server).

    The keys file is JSON: ``{"keys": [{"key": "...", "user": "alice"}, {"key": "..."}],
    "admin_key": "..."}`` (``user`` optional)."""

    def __init__(self, keys: dict[str, str | None] | None = None, admin_key: str | None = None):
        self.keys = dict(keys or {})
        self.admin_key = admin_key
        for key in [*self.keys, admin_key]:
            if key is not None and (not isinstance(key, str) or len(key) < 8):
                raise ValueError("every API key must be a string of at least 8 characters")

    @classmethod
    def from_options(cls, api_keys: list[str] | None = None, keys_file: str | Path | None = None,
                     admin_key: str | None = None) -> "KeyStore":
        """Keys from ``--api-key`` (unbound), a keys file and ``--admin-key``."""
        keys: dict[str, str | None] = {k: None for k in api_keys or []}
        if keys_file is not None:
            path = Path(keys_file)
            if not path.is_file():
                raise FileNotFoundError(f"keys file {path} not found")
            try:
                raw = json.loads(path.read_text())
                entries = raw.get("keys", [])
                for e in entries:
                    user = e.get("user")
                    if user is not None and not isinstance(user, str):
                        raise TypeError
                    keys[e["key"]] = user
            except (json.JSONDecodeError, AttributeError, KeyError, TypeError):
                raise ValueError(f'{path}: expected {{"keys": [{{"key": "...", "user": '
                                 '"alice"}, {"key": "..."}], "admin_key": "..."} (user and '
                                 "admin_key optional)") from None
            admin_key = admin_key or raw.get("admin_key")
        return cls(keys, admin_key)

    @property
    def enabled(self) -> bool:
        return bool(self.keys) or self.admin_key is not None

    @staticmethod
    def _bearer(headers) -> str | None:
        auth = headers.get("authorization", "")
        return auth[7:].strip() if auth[:7].lower() == "bearer " else None

    def _match(self, given: str | None, key: str | None) -> bool:
        return given is not None and key is not None and hmac.compare_digest(
            given.encode(), key.encode())

    def client(self, headers) -> str | None:
        """The user the request's key is bound to (``None``: any user); :class:`Unauthorized`
        without a valid key when keys are on."""
        if not self.enabled:
            return None
        given = self._bearer(headers)
        for key, user in self.keys.items():
            if self._match(given, key):
                return user
        if self._match(given, self.admin_key):
            return None
        raise Unauthorized("a valid API key is required: send 'Authorization: Bearer KEY'")

    def check_user(self, bound: str | None, user: str | None) -> str | None:
        """The user a request speaks for: ``user``, or the key's user when ``user`` is absent;
        :class:`Forbidden` when a key bound to one user names another."""
        if bound is None:
            return user
        if user is not None and user != bound:
            raise Forbidden(f"this API key speaks for user {bound!r} only, not {user!r}")
        return bound

    def admin(self, headers) -> None:
        """:class:`Forbidden` unless the request carries the admin key (or no key is set)."""
        if not self.enabled:
            return
        if self.admin_key is None:
            raise Forbidden("admin endpoints are off: start the server with --admin-key (or "
                            "an admin_key in the keys file)")
        if not self._match(self._bearer(headers), self.admin_key):
            raise Forbidden("this endpoint needs the admin key: 'Authorization: Bearer "
                            "ADMIN_KEY'")


# ---------------------------------------------------------------------- journal
def _encode_row(row) -> str:
    import numpy as np

    return base64.b64encode(np.asarray(row, dtype=np.float32).tobytes()).decode()


def _decode_row(text: str):
    import numpy as np

    return np.frombuffer(base64.b64decode(text), dtype=np.float32).reshape(1, -1).copy()


class FeedbackJournal:
    """Acknowledged feedback, one JSON line each, appended, flushed and fsynced before the
    client gets its answer: ``{"request_id", "user", "utility": [...], "query_x": base64
    float32}`` (NaN utilities as null). :meth:`entries` reads it back; a last line cut short by
    a crash (never acknowledged) is skipped."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._file = None
        self.written = 0

    def append(self, request_id: str, user: str, utility, query_x) -> None:
        entry = {"request_id": request_id, "user": user,
                 "utility": [None if u != u else float(u) for u in utility],
                 "query_x": _encode_row(query_x)}
        line = json.dumps(entry) + "\n"
        with self._lock:
            if self._file is None:
                self._file = self._open()
            self._file.write(line)
            self._file.flush()
            os.fsync(self._file.fileno())
            self.written += 1

    def _open(self):
        """The journal for appending, a last line cut short by a crash removed first (else the
        next entry would be glued to it)."""
        if self.path.is_file():
            with open(self.path, "rb+") as f:
                data = f.read()
                if data and not data.endswith(b"\n"):
                    f.truncate(data.rfind(b"\n") + 1)
        return open(self.path, "a", encoding="utf-8")

    def entries(self) -> list[dict]:
        """The journal's entries in order (``query_x`` decoded, ``utility`` with NaN)."""
        if not self.path.is_file():
            return []
        out = []
        with open(self.path, encoding="utf-8") as f:
            for i, line in enumerate(f, 1):
                try:
                    e = json.loads(line)
                    out.append({"request_id": e["request_id"], "user": e["user"],
                                "utility": [float("nan") if u is None else u
                                            for u in e["utility"]],
                                "query_x": _decode_row(e["query_x"])})
                except (json.JSONDecodeError, KeyError, ValueError, TypeError):
                    if line.endswith("\n"):  # a whole line that is wrong: not a crash's tail
                        raise ValueError(f"{self.path}:{i}: not a feedback journal entry; "
                                         "move the file away to start without it") from None
        return out

    def close(self) -> None:
        with self._lock:
            if self._file is not None:
                self._file.close()
                self._file = None

