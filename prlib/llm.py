"""Live LLM calls against any OpenAI-compatible endpoint (OpenAI, Together, vLLM, Ollama).

- :class:`LLMClient`: async chat calls over ``openai.AsyncOpenAI`` with bounded concurrency,
  retries (exponential backoff with jitter) on 429, 5xx, timeouts, connection errors and malformed
  bodies, and an on-disk cache keyed by (model, messages, sampling parameters). Cache entries are
  written atomically and only for successful answers, so an interrupted run resumes without
  repeating or losing a finished call. Token counts are the endpoint's reported usage; USD cost is
  usage x the price table (USD per 1M tokens).
- :func:`generate_bank`: every LLM answers every query; answers are scored with the task's metric
  (:mod:`prlib.scoring`) into a :class:`prlib.bank.Bank`.
- :func:`judge`: the LLM-as-a-Judge simulation: a persona picks its preferred answer among all
  answers to a query, shown in a recorded random order and numbered 1..N.

The endpoint and key come from the arguments or from ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY``;
neither is ever written to the cache, a bank's metadata, or an error message.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import os
import random
import re
import tempfile
import zlib
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Iterable, Mapping, TypeVar

import numpy as np
import openai
import pandas as pd
from tqdm import tqdm

from prlib.bank import QUERY_COLUMNS, Bank
from prlib.config import cache_dir
from prlib.data import UnknownModelError, find_data_dir, read_json
from prlib.personas import Persona
from prlib.scoring import score

ENV_BASE_URL = "OPENAI_BASE_URL"
ENV_API_KEY = "OPENAI_API_KEY"
#: Sampling parameters of response generation (greedy, PersonalizedRouter's 512-token budget).
DEFAULT_PARAMS: dict[str, Any] = {"temperature": 0.0, "max_tokens": 512}
RETRY_STATUS = {408, 409, 429}
PRICE_SHEET = "prices/model_prices_and_context_window.json"
T = TypeVar("T")


class LLMCallError(RuntimeError):
    """A call that failed with a non-retryable error or after all retries (message redacted)."""

    def __init__(self, model: str, message: str, attempts: int) -> None:
        super().__init__(f"{model}: {message} (after {attempts} attempt(s))")
        self.model, self.attempts = model, attempts


class MalformedReplyError(ValueError):
    """An HTTP 200 reply without an answer text or token usage."""


@dataclass(frozen=True)
class ChatResult:
    """One answer: text, the endpoint's token usage, its USD cost, whether it came from cache."""

    text: str
    input_tokens: int
    output_tokens: int
    cost_usd: float
    cached: bool


@dataclass(frozen=True)
class ChatRequest:
    """One chat call. ``params`` are sent to the API; ``repeat`` > 0 asks for a fresh sample of an
    otherwise identical request (it is part of the cache key and never sent)."""

    model: str
    messages: list[dict[str, str]]
    params: Mapping[str, Any] = field(default_factory=lambda: dict(DEFAULT_PARAMS))
    repeat: int = 0

    @property
    def key(self) -> str:
        payload = {"model": self.model, "messages": self.messages, "params": dict(self.params),
                   "repeat": self.repeat}
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def price_table(llms: pd.DataFrame) -> dict[str, tuple[float, float]]:
    """llm -> (input, output) USD per 1M tokens, from an ``llms`` table of the bank schema."""
    table = llms.set_index("llm")[["input_usd_per_m", "output_usd_per_m"]].astype(float)
    missing = table.index[table.isna().any(axis=1)].tolist()
    if missing:
        raise ValueError(f"no price for LLMs {missing}: input_usd_per_m / output_usd_per_m is NaN")
    return {llm: (row.input_usd_per_m, row.output_usd_per_m) for llm, row in table.iterrows()}


def run_sync(awaitable: Awaitable[T]) -> T:
    """Run a coroutine to completion from sync code, also inside a running (Jupyter) event loop,
    where it runs on a fresh loop in a worker thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(awaitable)
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(asyncio.run, awaitable).result()


def _retryable(error: Exception) -> bool:
    if isinstance(error, openai.APIStatusError):
        return error.status_code in RETRY_STATUS or error.status_code >= 500
    return isinstance(error, (openai.APIConnectionError, openai.APIResponseValidationError,
                              MalformedReplyError, json.JSONDecodeError))


def _retry_after(error: Exception) -> float:
    try:
        return float(error.response.headers.get("retry-after", 0.0))  # type: ignore[attr-defined]
    except (AttributeError, TypeError, ValueError):
        return 0.0


def _answer(reply: Any) -> tuple[str, int, int]:
    try:
        text = reply.choices[0].message.content
        usage = (int(reply.usage.prompt_tokens), int(reply.usage.completion_tokens))
    except (AttributeError, IndexError, TypeError, ValueError) as e:
        raise MalformedReplyError(f"reply without answer text or usage ({type(e).__name__})"
                                  ) from None
    if not isinstance(text, str):
        raise MalformedReplyError("reply without answer text")
    return text, *usage


class LLMClient:
    """Cached, retrying, concurrency-bounded chat client for an OpenAI-compatible endpoint.

    ``base_url`` / ``api_key`` default to ``OPENAI_BASE_URL`` / ``OPENAI_API_KEY`` (servers without
    authentication accept any non-empty key). ``prices`` (an ``llms`` table or a mapping
    llm -> (input, output) USD per 1M tokens) prices the answers; unpriced models cost NaN.
    Retry ``k`` (0-based) waits ``backoff_base * 2**k`` seconds times a random factor in
    [0.5, 1.5], at least the server's ``Retry-After``, at most ``backoff_max``. The cache key has
    no endpoint in it: use one ``cache`` folder per endpoint if two serve different models under
    the same name.
    """

    def __init__(self, base_url: str | None = None, api_key: str | None = None, *,
                 prices: pd.DataFrame | Mapping[str, tuple[float, float]] | None = None,
                 max_concurrency: int = 8, max_retries: int = 6, timeout: float = 120.0,
                 backoff_base: float = 1.0, backoff_max: float = 60.0,
                 cache: str | Path | None = None, progress: bool = True) -> None:
        self._base_url = base_url or os.environ.get(ENV_BASE_URL) or None
        self._api_key = api_key or os.environ.get(ENV_API_KEY)
        if not self._api_key:
            raise ValueError(f"no API key: pass api_key or set {ENV_API_KEY} (any non-empty value "
                             f"for a server without authentication)")
        self.prices: dict[str, tuple[float, float]] = {}
        if prices is not None:
            self.add_prices(prices)
        self.max_concurrency, self.max_retries, self.timeout = max_concurrency, max_retries, timeout
        self.backoff_base, self.backoff_max = backoff_base, backoff_max
        self.cache_dir = Path(cache) if cache is not None else cache_dir() / "llm"
        self.progress = progress
        #: Counters over this client's life: requests (HTTP attempts), retries, cache_hits,
        #: failures.
        self.stats: Counter[str] = Counter()
        self._rng = random.Random()

    def __repr__(self) -> str:  # never shows the endpoint or the key
        return (f"LLMClient(max_concurrency={self.max_concurrency}, "
                f"max_retries={self.max_retries}, timeout={self.timeout}, "
                f"cache={str(self.cache_dir)!r})")

    def add_prices(self, prices: pd.DataFrame | Mapping[str, tuple[float, float]]) -> None:
        """Register prices (an ``llms`` table or llm -> (input, output) USD per 1M tokens)."""
        self.prices.update(price_table(prices) if isinstance(prices, pd.DataFrame) else prices)

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """USD cost of a call from the price table (NaN for an unpriced model)."""
        usd_in, usd_out = self.prices.get(model, (math.nan, math.nan))
        return (input_tokens * usd_in + output_tokens * usd_out) / 1e6

    def redact(self, text: str) -> str:
        """``text`` with the endpoint and the key replaced by placeholders."""
        for secret, mark in [(self._api_key, "<api-key>"), (self._base_url, "<endpoint>")]:
            if secret:
                text = text.replace(secret, mark)
        return text

    # ----------------------------------------------------------------------- cache
    def _cache_path(self, request: ChatRequest) -> Path:
        key = request.key
        return self.cache_dir / key[:2] / f"{key}.json"

    def _cached(self, request: ChatRequest) -> ChatResult | None:
        try:
            entry = json.loads(self._cache_path(request).read_text())
            text = entry["text"]
            n_in, n_out = int(entry["input_tokens"]), int(entry["output_tokens"])
        except (OSError, ValueError, KeyError, TypeError):
            return None
        return ChatResult(text, n_in, n_out, self.cost(request.model, n_in, n_out), cached=True)

    def _store(self, request: ChatRequest, text: str, n_in: int, n_out: int) -> None:
        path = self._cache_path(request)
        path.parent.mkdir(parents=True, exist_ok=True)
        entry = {"model": request.model, "messages": request.messages,
                 "params": dict(request.params), "repeat": request.repeat, "text": text,
                 "input_tokens": n_in, "output_tokens": n_out}
        with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as f:
            try:
                json.dump(entry, f)
                f.flush()
                os.fsync(f.fileno())
            except BaseException:
                os.unlink(f.name)
                raise
        os.replace(f.name, path)

    # ----------------------------------------------------------------------- calls
    def _backoff(self, attempt: int, error: Exception) -> float:
        jittered = self.backoff_base * 2 ** attempt * self._rng.uniform(0.5, 1.5)
        return min(self.backoff_max, max(jittered, _retry_after(error)))

    async def _call(self, api: openai.AsyncOpenAI, slots: asyncio.Semaphore,
                    request: ChatRequest) -> ChatResult:
        hit = self._cached(request)
        if hit is not None:
            self.stats["cache_hits"] += 1
            return hit
        for attempt in range(self.max_retries + 1):
            try:
                async with slots:
                    self.stats["requests"] += 1
                    reply = await api.chat.completions.create(
                        model=request.model, messages=request.messages, **request.params)
                text, n_in, n_out = _answer(reply)
                break
            except Exception as error:  # noqa: BLE001 - classified right below
                if not _retryable(error) or attempt == self.max_retries:
                    self.stats["failures"] += 1
                    message = self.redact(f"{type(error).__name__}: {error}")
                    raise LLMCallError(request.model, message, attempt + 1) from None
                self.stats["retries"] += 1
                await asyncio.sleep(self._backoff(attempt, error))
        self._store(request, text, n_in, n_out)
        return ChatResult(text, n_in, n_out, self.cost(request.model, n_in, n_out), cached=False)

    async def chat_many(self, requests: Iterable[ChatRequest], *, desc: str = "LLM calls"
                        ) -> list[ChatResult | LLMCallError]:
        """Answer every request (identical requests are sent once); a failed call's entry is its
        :class:`LLMCallError`. Cancelling this coroutine cancels the calls still in flight."""
        requests = list(requests)
        unique = {r.key: r for r in requests}
        results: dict[str, ChatResult | LLMCallError] = {}
        slots = asyncio.Semaphore(self.max_concurrency)
        async with openai.AsyncOpenAI(base_url=self._base_url, api_key=self._api_key,
                                      max_retries=0, timeout=self.timeout) as api:

            async def one(key: str) -> ChatResult | LLMCallError:
                try:
                    results[key] = await self._call(api, slots, unique[key])
                except LLMCallError as error:
                    results[key] = error
                return results[key]

            tasks = [asyncio.ensure_future(one(k)) for k in unique]
            spent = 0.0
            try:
                with tqdm(total=len(tasks), desc=desc, disable=not self.progress) as bar:
                    for done in asyncio.as_completed(tasks):
                        result = await done
                        if isinstance(result, ChatResult) and not result.cached:
                            spent += result.cost_usd
                        bar.update(1)
                        bar.set_postfix(new_usd=f"{spent:.4f}", refresh=False)
            finally:
                for task in tasks:
                    task.cancel()
                await asyncio.gather(*tasks, return_exceptions=True)
        return [results[r.key] for r in requests]

    async def chat(self, model: str, messages: list[dict[str, str]], **params: Any) -> ChatResult:
        """One call (``params`` default to :data:`DEFAULT_PARAMS`); raises :class:`LLMCallError`."""
        [result] = await self.chat_many([ChatRequest(model, messages, params or DEFAULT_PARAMS)],
                                        desc=model)
        if isinstance(result, LLMCallError):
            raise result
        return result


# --------------------------------------------------------------------------- bank generation
def llm_table(models: list[str], prices: Mapping[str, tuple[float, float]] | None = None
              ) -> pd.DataFrame:
    """An ``llms`` table for endpoint model names: prices from ``prices`` (USD per 1M input and
    output tokens), else from the LiteLLM price sheet of the data folder (exact model key)."""
    prices = dict(prices or {})
    sheet = read_json(find_data_dir(PRICE_SHEET) / PRICE_SHEET) if set(models) - set(prices) else {}
    rows = []
    for model in models:
        entry = sheet.get(model, {})
        if model not in prices:
            if not entry:
                raise UnknownModelError(f"no price for model {model!r} in the price sheet; pass "
                                        f"prices={{{model!r}: (usd_in_per_m, usd_out_per_m)}}")
            prices[model] = (entry["input_cost_per_token"] * 1e6,
                             entry["output_cost_per_token"] * 1e6)
        usd_in, usd_out = (float(p) for p in prices[model])
        rows.append({"llm": model, "family": entry.get("litellm_provider", "unknown"),
                     "size_b": np.nan, "input_usd_per_m": usd_in,
                     "output_usd_per_m": usd_out,
                     "description": f"{model}, served through an OpenAI-compatible endpoint; "
                                    f"${usd_in:.2f} per million input tokens and ${usd_out:.2f} "
                                    f"per million output tokens."})
    return pd.DataFrame(rows)


def _choices_text(choices: Any) -> str | None:
    """A choices field as text (a parquet column cannot mix lists, dicts and NaN)."""
    if isinstance(choices, np.ndarray):
        choices = choices.tolist()
    return str(choices) if isinstance(choices, (str, list, tuple, dict)) else None


def _messages(text: str, system_prompt: str | None) -> list[dict[str, str]]:
    system = [{"role": "system", "content": system_prompt}] if system_prompt else []
    return system + [{"role": "user", "content": str(text)}]


async def agenerate_bank(queries: pd.DataFrame, llms: pd.DataFrame, client: LLMClient, *,
                         name: str, params: Mapping[str, Any] | None = None,
                         system_prompt: str | None = None) -> Bank:
    """Async :func:`generate_bank`."""
    needed = QUERY_COLUMNS + ["ground_truth", "metric"]
    missing = [c for c in needed if c not in queries.columns]
    if missing:
        raise ValueError(f"queries lack columns {missing}; they need {needed} (+ optional choices)")
    if (queries["turns"] > 1).any():
        raise ValueError("generate_bank answers single-turn queries only (turns == 1)")
    params = dict(params or DEFAULT_PARAMS)
    client.add_prices(llms)
    pairs = [(q, llm) for q in queries.itertuples(index=False) for llm in llms["llm"]]
    results = await client.chat_many(
        [ChatRequest(llm, _messages(q.text, system_prompt), params) for q, llm in pairs],
        desc=f"generate {name}")
    rows, failed = [], []
    for (q, llm), res in zip(pairs, results):
        if isinstance(res, LLMCallError):
            failed.append({"query_id": q.query_id, "llm": llm, "error": str(res)})
            continue
        quality = score(q.metric, res.text, q.ground_truth, getattr(q, "choices", None))
        rows.append({"query_id": q.query_id, "task": q.task, "llm": llm, "quality": quality,
                     "input_tokens": res.input_tokens, "output_tokens": res.output_tokens,
                     "cost_usd": res.cost_usd, "response": res.text})
    if failed and not rows:
        raise RuntimeError(f"all {len(failed)} calls failed, e.g. {failed[0]['error']}")
    bank = pd.DataFrame(rows, columns=["query_id", "task", "llm", "quality", "input_tokens",
                                       "output_tokens", "cost_usd", "response"])
    metric_of = queries.set_index("query_id")["metric"]
    unscored = bank.loc[bank["quality"].isna(), "query_id"].map(metric_of).value_counts()
    kept = queries.copy()
    if "choices" in kept.columns:
        kept["choices"] = kept["choices"].map(_choices_text)
    meta = {"source": "live generation (prlib.llm.generate_bank) through an OpenAI-compatible "
                      "endpoint",
            "params": params, "system_prompt": system_prompt,
            "token_counting": "token usage reported by the endpoint",
            "cost": "input_tokens x input_usd_per_m + output_tokens x output_usd_per_m, / 1e6",
            "quality": "task metric of prlib.scoring per query (metric column of queries)",
            "not_scored": {str(k): int(v) for k, v in unscored.items()},
            "failed_calls": failed, "n_failed_calls": len(failed),
            "cache_hits": sum(isinstance(r, ChatResult) and r.cached for r in results)}
    return Bank(name, kept.reset_index(drop=True), llms.reset_index(drop=True), bank, meta)


def generate_bank(queries: pd.DataFrame, llms: pd.DataFrame, client: LLMClient, *, name: str,
                  params: Mapping[str, Any] | None = None,
                  system_prompt: str | None = None) -> Bank:
    """Responses of every LLM in ``llms`` to every query, scored, as a :class:`Bank`.

    ``queries``: query_id, task, text, turns (all 1), ground_truth, metric (a name of
    :data:`prlib.scoring.METRICS`) and optional choices. Quality is the metric's score (NaN where
    the metric is not computed offline; counted in ``meta["not_scored"]``); tokens are the
    endpoint's usage; cost is usage x the ``llms`` prices. Calls that still fail after retries
    are listed in ``meta["failed_calls"]`` and have no bank row.
    """
    return run_sync(agenerate_bank(queries, llms, client, name=name, params=params,
                                   system_prompt=system_prompt))


# --------------------------------------------------------------------------- LLM-as-a-Judge
_MARKED = re.compile(r"(?:answer|option|response|choice|candidate|pick|choose|select|prefer"
                     r"|number)\s*(?:is|would be)?\s*[=:]?\s*(?:number|no\.?)?\s*#?\s*(\d+)",
                     re.IGNORECASE)


def parse_choice(reply: str | None, n: int) -> int | None:
    """The 1-based answer number a judge ``reply`` picks, or None.

    Accepts a bare number ("3", "3.", "**3**", "[3]") and marked picks ("Answer 3", "The best
    answer is 3", "I pick 3"); otherwise the reply's numbers must all be the same. Rejects empty
    replies, numbers outside 1..n, and several different marked or unmarked numbers.
    """
    text = (reply or "").strip()
    bare = re.fullmatch(r"[\s*_`\[(#]*(\d+)[\s*_`\]).:!]*", text)
    if bare:
        found = {int(bare.group(1))}
    else:
        found = {int(x) for x in _MARKED.findall(text)} or {int(x) for x in
                                                           re.findall(r"\b\d+\b", text)}
    if len(found) != 1:
        return None
    pick = found.pop()
    return pick if 1 <= pick <= n else None


def judge_messages(persona: Persona, question: str, answers: list[str]) -> list[dict[str, str]]:
    """The judge's chat: the persona's system prompt; the question and answers numbered 1..N."""
    shown = "\n\n".join(f"[Answer {i}]\n{a}" for i, a in enumerate(answers, start=1))
    ask = (f"Question:\n{question}\n\n{shown}\n\nWhich answer do you prefer? Reply with its number "
           f"only: one integer from 1 to {len(answers)}.")
    return [{"role": "system", "content": persona.system_prompt}, {"role": "user", "content": ask}]


def _permutation(seed: int, query_id: str, n: int) -> np.ndarray:
    rng = np.random.default_rng([seed, zlib.crc32(str(query_id).encode())])
    return rng.permutation(n)


async def ajudge(bank: Bank, persona: Persona, client: LLMClient, judge_model: str, *, seed: int,
                 temperature: float = 0.7, max_tokens: int = 64,
                 invalid_retries: int = 2) -> pd.DataFrame:
    """Async :func:`judge`."""
    if not bank.has_text:
        raise ValueError(f"bank {bank.name!r} has no response texts to judge")
    answers = bank.bank.dropna(subset=["response"]).set_index(["query_id", "llm"])["response"]
    params = {"temperature": temperature, "max_tokens": max_tokens}
    todo = {}
    for q in bank.queries.itertuples(index=False):
        names = [llm for llm in bank.llm_names if (q.query_id, llm) in answers.index]
        if len(names) < 2:
            continue
        shown = [names[i] for i in _permutation(seed, q.query_id, len(names))]
        msgs = judge_messages(persona, q.text, [answers[(q.query_id, llm)] for llm in shown])
        todo[q.query_id] = {"query_id": q.query_id, "persona": persona.name,
                            "judge_model": judge_model, "permutation": shown, "raw_reply": None,
                            "choice": None, "choice_llm": None, "valid": False, "attempts": 0,
                            "error": None, "cost_usd": 0.0, "_messages": msgs}
    pending = list(todo)
    for repeat in range(invalid_retries + 1):
        requests = [ChatRequest(judge_model, todo[qid]["_messages"], params, repeat)
                    for qid in pending]
        results = await client.chat_many(requests, desc=f"judge {persona.name} #{repeat}")
        retry = []
        for qid, res in zip(pending, results):
            row = todo[qid]
            row["attempts"] += 1
            if isinstance(res, LLMCallError):
                row["error"] = str(res)
                continue
            pick = parse_choice(res.text, len(row["permutation"]))
            row.update(raw_reply=res.text, choice=pick, valid=pick is not None,
                       cost_usd=row["cost_usd"] + res.cost_usd)
            if pick is None:
                retry.append(qid)
            else:
                row["choice_llm"] = row["permutation"][pick - 1]
        pending = retry
        if not pending:
            break
    columns = ["query_id", "persona", "judge_model", "permutation", "raw_reply", "choice",
               "choice_llm", "valid", "attempts", "error", "cost_usd"]
    out = pd.DataFrame([{c: row[c] for c in columns} for row in todo.values()], columns=columns,
                       dtype=object)  # keeps None (not NaN) for missing replies and choices
    return out.astype({"choice": "Int64", "valid": bool, "attempts": int, "cost_usd": float})


def judge(bank: Bank, persona: Persona, client: LLMClient, judge_model: str, *, seed: int,
          temperature: float = 0.7, max_tokens: int = 64, invalid_retries: int = 2) -> pd.DataFrame:
    """LLM-as-a-Judge: ``persona`` (via ``judge_model``) picks its preferred answer per query.

    All answers of a query are shown, numbered 1..N in an order shuffled per query from
    (``seed``, query_id) and recorded in ``permutation``; queries with fewer than two answers
    are skipped. A reply that :func:`parse_choice`
    rejects is asked again as a fresh sample up to ``invalid_retries`` times, then recorded with
    ``valid=False`` and ``choice_llm=None``, never replaced by a default. One row per judged
    query: query_id, persona, judge_model, permutation, raw_reply (the last), choice (1-based),
    choice_llm, valid, attempts, error (a failed call), cost_usd (all attempts).
    """
    return run_sync(ajudge(bank, persona, client, judge_model, seed=seed, temperature=temperature,
                           max_tokens=max_tokens, invalid_retries=invalid_retries))
