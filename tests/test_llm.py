"""prlib.llm, prlib.scoring, prlib.personas, notebook 10: a real local OpenAI-compatible server."""

from __future__ import annotations

import asyncio
import json
import math
import re
import shutil
import time
import uuid
from pathlib import Path
from unittest.mock import ANY

import nbformat
import numpy as np
import pandas as pd
import pytest

from fake_openai_server import FakeOpenAIServer, request_key
from prlib import llm, scoring
from prlib.bank import Bank
from prlib.config import REPO_ROOT, interim_dir
from prlib.personas import NEUTRAL, PERSONAS, Persona

KEY = "sk-test-SECRET-4242"
PRICES = {"good": (2.0, 10.0), "bad": (0.5, 1.0), "slow": (1.0, 1.0), "judge": (3.0, 15.0)}
QUERIES = pd.DataFrame({
    "query_id": ["a-0", "a-1", "g-0", "g-1", "m-0", "c-0"],
    "task": ["alpaca", "alpaca", "gsm8k", "gsm8k", "mmlu", "mbpp"],
    "text": ["Name three primary colors.", "What is the capital of France?",
             "Tom has 40 apples and buys 2. How many?", "What is 1,000 + 234?",
             "Which planet is red?", "Write a function that adds two numbers."],
    "turns": 1,
    "ground_truth": ["red, blue and yellow", "Paris is the capital of France.",
                     "40 + 2 = 42\n#### 42", "#### 1,234", "C", "['assert add(1, 2) == 3']"],
    "metric": ["f1_score", "f1_score", "GSM8K", "GSM8K", "em_mc", "code_eval"],
    "choices": [None, None, None, None, "['Venus', 'Earth', 'Mars', 'Jupiter']", None],
})
GOOD_ANSWERS = {"Name three primary colors.": "Red, blue and green.",
                "What is the capital of France?": "Paris is the capital of France.",
                "Tom has 40 apples and buys 2. How many?": "He has $42 apples.",
                "What is 1,000 + 234?": "The sum is 1,234.",
                "Which planet is red?": "The answer is (C) Mars.",
                "Write a function that adds two numbers.": "def add(a, b): return a + b"}


def answer(model: str, messages: list[dict]) -> str:
    """Deterministic answers: ``good`` knows the ground truth, everyone else does not."""
    question = messages[-1]["content"]
    return GOOD_ANSWERS.get(question, "?") if model == "good" else f"{model} does not know"


def llms_of(*names: str) -> pd.DataFrame:
    return llm.llm_table(list(names), PRICES)


@pytest.fixture
def server():
    with FakeOpenAIServer(answer, delay=0.6) as s:
        yield s


@pytest.fixture
def client(server, tmp_path):
    return llm.LLMClient(server.url, KEY, prices=PRICES, max_retries=5, timeout=0.3,
                         backoff_base=0.001, backoff_max=0.01, cache=tmp_path / "cache",
                         progress=False)


def ask(client: llm.LLMClient, model: str = "good", text: str = "Which planet is red?",
        **params) -> llm.ChatResult:
    return llm.run_sync(client.chat(model, [{"role": "user", "content": text}], **params))


def key_of(model: str, text: str) -> str:
    return request_key(model, [{"role": "user", "content": text}])


def files_text(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


# --------------------------------------------------------------------------- client
def test_usage_and_cost_come_from_the_api_and_the_price_table(client, server):
    res = ask(client)
    assert res.text == "The answer is (C) Mars." and not res.cached
    assert (res.input_tokens, res.output_tokens) == (4, 5)  # the server's word counts
    assert res.cost_usd == pytest.approx((4 * 2.0 + 5 * 10.0) / 1e6)
    assert server.auth_headers == [f"Bearer {KEY}"]


def test_every_transient_fault_is_retried_until_success(client, server):
    server.fail("429", "500", "timeout", "malformed")
    res = ask(client)
    assert res.text == "The answer is (C) Mars."
    assert not server._faults  # each of the four faults was served, and retried past
    # at least one retry per fault; a loaded machine may add one more (a sound answer slower
    # than the test client's 0.3 s timeout is retried too)
    assert client.stats["retries"] >= 4
    key = key_of("good", "Which planet is red?")
    assert server.received[key] == 5 and server.answered[key] == 1


def test_backoff_is_exponential_with_jitter_and_honours_retry_after(server, tmp_path):
    client = llm.LLMClient(server.url, KEY, backoff_base=0.01, backoff_max=1.0, cache=tmp_path,
                           progress=False)
    waits = [client._backoff(3, RuntimeError()) for _ in range(50)]
    assert all(0.04 <= w <= 0.12 for w in waits) and len(set(waits)) > 1
    assert client._backoff(20, RuntimeError()) == 1.0
    server.retry_after = "0.3"
    server.fail("429")
    start = time.perf_counter()
    ask(client)
    assert time.perf_counter() - start >= 0.3 and client.stats["retries"] == 1


def test_errors_are_raised_after_max_retries_and_never_cached(client, server):
    server.fail(*["500"] * 6)
    with pytest.raises(llm.LLMCallError, match="after 6 attempt"):
        ask(client)
    assert files_text(client.cache_dir) == ""
    assert ask(client).text == "The answer is (C) Mars."  # not served from a cached error
    assert server.received[key_of("good", "Which planet is red?")] == 7


def test_client_errors_are_not_retried(client, server):
    server.fail("400")
    with pytest.raises(llm.LLMCallError, match="BadRequestError.*after 1 attempt"):
        ask(client)
    assert client.stats["retries"] == 0


def test_cache_hits_send_no_request_and_sampling_params_are_part_of_the_key(client, server):
    first, again = ask(client), ask(client)
    assert again.cached and again.text == first.text and again.cost_usd == first.cost_usd
    assert server.received[key_of("good", "Which planet is red?")] == 1
    ask(client, temperature=0.7, max_tokens=512)
    assert server.received[key_of("good", "Which planet is red?")] == 2


def test_concurrency_is_bounded(server, tmp_path):
    server.latency = 0.05
    client = llm.LLMClient(server.url, KEY, max_concurrency=2, cache=tmp_path, progress=False)
    requests = [llm.ChatRequest("bad", [{"role": "user", "content": f"q{i}"}]) for i in range(8)]
    results = llm.run_sync(client.chat_many(requests))
    assert all(isinstance(r, llm.ChatResult) for r in results) and server.peak == 2
    assert math.isnan(results[0].cost_usd)  # unpriced model: cost unknown, not zero


def test_no_key_and_no_endpoint_in_cache_repr_or_errors(client, server):
    server.fail(*["500"] * 6)
    with pytest.raises(llm.LLMCallError) as failure:
        ask(client)
    ask(client)
    llm.run_sync(llm.agenerate_bank(QUERIES, llms_of("good"), client, name="t"))
    for text in [files_text(client.cache_dir), repr(client), str(failure.value)]:
        assert KEY not in text and "127.0.0.1" not in text


def test_missing_key_is_a_clear_error(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ValueError, match="OPENAI_API_KEY"):
        llm.LLMClient("http://127.0.0.1:1/v1")


def test_run_sync_works_inside_a_running_event_loop():
    async def inner() -> int:
        return llm.run_sync(asyncio.sleep(0, result=7))

    assert asyncio.run(inner()) == 7


# --------------------------------------------------------------------------- bank generation
def test_generate_bank_scores_prices_and_validates(client):
    llms = llms_of("good", "bad")
    bank = llm.generate_bank(QUERIES, llms, client, name="live-test")
    q = bank.matrix("quality")
    assert q.loc[["a-1", "g-0", "g-1", "m-0"], "good"].tolist() == [1.0, 1.0, 1.0, 1.0]
    assert q.loc["a-0", "good"] == 0.75
    assert (q.drop(index="c-0")["bad"] == 0).all()
    assert q.loc["c-0"].isna().all() and bank.meta["not_scored"] == {"code_eval": 2}
    b = bank.bank.merge(llms, on="llm")
    expected = (b.input_tokens * b.input_usd_per_m + b.output_tokens * b.output_usd_per_m) / 1e6
    assert np.allclose(b.cost_usd, expected) and bank.bank.cost_usd.sum() > 0
    n_words = bank.bank.response.str.split().str.len()
    assert (bank.bank.output_tokens == n_words).all()
    assert bank.meta["n_failed_calls"] == 0 and bank.has_text


def test_failed_calls_are_recorded_and_left_out(client, server):
    server.fail(*["500"] * 6, model="bad", text="What is 1,000 + 234?")
    bank = llm.generate_bank(QUERIES, llms_of("good", "bad"), client, name="t")
    assert len(bank.bank) == 2 * len(QUERIES) - 1
    assert bank.meta["failed_calls"] == [{"query_id": "g-1", "llm": "bad", "error": ANY}]
    assert "InternalServerError" in bank.meta["failed_calls"][0]["error"]
    assert "g-1" not in set(bank.bank.query_id[bank.bank.llm == "bad"])


def test_interrupted_generation_resumes_without_repeats_or_losses(client, server):
    llms = llms_of("good", "bad", "slow")
    server.hang_model = "slow"

    async def interrupted() -> None:
        await asyncio.wait_for(llm.agenerate_bank(QUERIES, llms, client, name="t"), timeout=1.0)

    with pytest.raises(asyncio.TimeoutError):
        asyncio.run(interrupted())
    assert sum(server.answered.values()) == 2 * len(QUERIES)  # good and bad finished
    server.abandon()
    bank = llm.generate_bank(QUERIES, llms, client, name="t")
    assert len(bank.bank) == 3 * len(QUERIES) and bank.meta["cache_hits"] == 2 * len(QUERIES)
    assert len(server.answered) == 3 * len(QUERIES)
    assert set(server.answered.values()) == {1}  # no finished call was sent twice


def test_generate_bank_rejects_queries_without_metric(client):
    with pytest.raises(ValueError, match="metric"):
        llm.generate_bank(QUERIES.drop(columns="metric"), llms_of("good"), client, name="t")


# --------------------------------------------------------------------------- judge
@pytest.mark.parametrize("reply, n, expected", [
    ("Answer 3", 10, 3), ("3.", 10, 3), ("**3**", 10, 3), ("The best answer is 3", 10, 3),
    ("I pick 11", 10, None), ("", 10, None), ("10", 10, 10), ("0", 10, None),
    ("Answer 2 is better than Answer 5", 10, None), ("My choice: Answer 4 (of 10)", 10, 4),
    ("I choose #2.", 3, 2), ("None of them.", 3, None), (None, 3, None),
])
def test_parse_choice(reply, n, expected):
    assert llm.parse_choice(reply, n) == expected


def judge_replies(server: FakeOpenAIServer, script: dict[str, list[str]]):
    """Judge responder: scripted replies per question (in turn), else the number of the answer
    written by ``good``; generation answers as :func:`answer`."""
    def respond(model: str, messages: list[dict]) -> str:
        if messages[0]["role"] != "system":
            return answer(model, messages)
        prompt = messages[-1]["content"]
        for question, replies in script.items():
            if question in prompt:
                return replies[min(server.received[request_key(model, messages)],
                                   len(replies)) - 1]
        shown = re.findall(r"\[Answer (\d+)\]\n(.*?)(?=\n\n\[Answer|\n\nWhich)", prompt, re.S)
        return next(f"Answer {i}" for i, text in shown if "does not know" not in text)

    return respond


def test_judge_numbering_permutation_and_invalid_replies(client, server):
    bank = llm.generate_bank(QUERIES, llms_of("good", "bad", "slow"), client, name="t")
    server.responder = judge_replies(server, {"Tom has 40": ["I pick 11", "2."],
                                              "capital of France": [""]})
    out = llm.judge(bank, PERSONAS[0], client, "judge", seed=3)
    assert len(out) == len(QUERIES) and (out.persona == "warm_relatable").all()
    assert {tuple(p) for p in out.permutation} != {("good", "bad", "slow")}  # shuffled
    ok = out[out.valid]
    assert (ok.choice_llm == "good").all() and len(ok) == len(QUERIES) - 1
    assert all(p[c - 1] == "good" for p, c in zip(ok.permutation, ok.choice))
    retried = out.set_index("query_id").loc["g-0"]
    assert retried.attempts == 2 and retried.raw_reply == "2."
    bad = out.set_index("query_id").loc["a-1"]
    assert not bad.valid and bad.choice_llm is None and bad.attempts == 3 and bad.raw_reply == ""
    again = llm.judge(bank, PERSONAS[0], client, "judge", seed=3)  # all from cache
    pd.testing.assert_frame_equal(out, again)
    other = llm.judge(bank, PERSONAS[0], client, "judge", seed=4)
    assert [list(p) for p in other.permutation] != [list(p) for p in out.permutation]


def test_judge_prompt_numbers_all_answers_from_one():
    msgs = llm.judge_messages(NEUTRAL, "Q?", [f"text {i}" for i in range(10)])
    user = msgs[1]["content"]
    assert msgs[0]["content"] == NEUTRAL.system_prompt
    assert re.findall(r"\[Answer (\d+)\]", user) == [str(i) for i in range(1, 11)]
    assert "from 1 to 10" in user and "text 9" in user


def test_personas():
    assert len(PERSONAS) == 9 and len({p.name for p in PERSONAS + (NEUTRAL,)}) == 10
    assert all(isinstance(p, Persona) and p.description in p.system_prompt for p in PERSONAS)
    with pytest.raises(AttributeError):
        PERSONAS[0].name = "x"


# --------------------------------------------------------------------------- scoring
def test_metrics():
    assert scoring.token_f1("Red, blue and yellow.", "red, blue and yellow") == 1.0
    assert scoring.exact_match_number("so $1,234 in total", "x\n#### 1234") == 1.0
    assert scoring.exact_match_number("12 then 36", "#### 360") == 0.0
    assert scoring.math_equiv(r"so \boxed{\dfrac{3}{32}}.", r"is \boxed{\frac{3}{32}}") == 1.0
    assert scoring.math_equiv(r"\boxed{0.5}", r"\frac{1}{2}") == 1.0
    mc = "{'text': ['bus depot', 'train station'], 'label': ['A', 'B']}"
    assert scoring.multiple_choice("I'd take the train station", "B", mc) == 1.0
    assert scoring.multiple_choice("Answer: A", "B", mc) == 0.0
    assert scoring.concept_coverage("A cowboy throws a coin.", "coin, throw, cowboy, duck") == 0.75
    assert math.isnan(scoring.score("code_eval", "def f(): pass", "assert f()"))
    with pytest.raises(ValueError, match="known metrics"):
        scoring.score("bleu", "a", "b")


# --------------------------------------------------------------------------- notebook
def test_notebook_live_mode_against_the_fake_server(server, tmp_path, monkeypatch):
    papermill = pytest.importorskip("papermill")
    server.responder = judge_replies(server, {})
    name = f"test-live-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.setenv("PRLIB_CACHE_DIR", str(tmp_path / "cache"))
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    out = tmp_path / "out.ipynb"
    try:
        papermill.execute_notebook(
            str(REPO_ROOT / "notebooks" / "10_response_generation.ipynb"), str(out),
            parameters={"ENDPOINT": server.url, "MODELS": ["good", "bad"], "JUDGE_MODEL": "judge",
                        "MAX_QUERIES": 6, "BANK_NAME": name, "DEVICE": "cpu",
                        "PRICES": {m: list(p) for m, p in PRICES.items()}},
            kernel_name="python3", cwd=str(REPO_ROOT / "notebooks"), progress_bar=False)
        folder = interim_dir() / "banks" / name
        bank = Bank.load(folder)
        judgments = pd.read_parquet(folder / "judgments.parquet")
        saved = files_text(folder)
    finally:
        shutil.rmtree(interim_dir() / "banks" / name, ignore_errors=True)
    assert len(bank.queries) == 6 and bank.llm_names == ["good", "bad"] and len(bank.bank) == 12
    assert len(judgments) == 6 * len(PERSONAS) and (judgments.choice_llm == "good").all()
    outputs = json.dumps([c.get("outputs", []) for c in nbformat.read(out, 4).cells])
    for text in [outputs, saved, files_text(tmp_path / "cache")]:
        assert KEY not in text and "127.0.0.1" not in text
