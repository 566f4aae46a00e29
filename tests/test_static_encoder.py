"""The fast encoder: a static model distilled from MiniLM, a router option saved with the router
and used for training and serving alike."""

import time

import numpy as np
import pytest

pytestmark = pytest.mark.static_encoder

TEXT = "math question number 3: please help"


@pytest.fixture(scope="module")
def static():
    from prlib.embed import distill_static

    return distill_static(progress=False)


def test_the_static_encoder_embeds_texts_by_meaning_and_fast(static):
    from prlib.embed import (STATIC, MemoryEmbeddingCache, clip_for_encoder, current_encoder,
                             embed_texts, use_encoder)

    texts = ["how do I sort a list in python?", "sorting a python list",
             "what is the capital of France?"]
    with use_encoder(STATIC):
        assert current_encoder() == STATIC
        vectors = embed_texts(texts, cache=MemoryEmbeddingCache())
        long_text = " ".join(f"Sentence {i}: sort the list, then reverse it." for i in range(300))
        full, cut = embed_texts([long_text, clip_for_encoder(long_text)],
                                cache=MemoryEmbeddingCache())
    assert current_encoder() == "minilm"  # only inside the block
    assert vectors.shape == (3, 256)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    sims = vectors @ vectors.T
    assert sims[0, 1] > sims[0, 2] + 0.1, sims  # same question closer than another topic
    np.testing.assert_allclose(full, cut, atol=1e-6)  # reads what MiniLM reads, no more

    def per_text_ms(encoder):
        with use_encoder(encoder):
            embed_texts(["warm up"], cache=MemoryEmbeddingCache())
            start = time.perf_counter()
            for i in range(20):
                embed_texts([f"question {i}: how do I sort {i} numbers?"],
                            cache=MemoryEmbeddingCache())
            return 1e3 * (time.perf_counter() - start) / 20

    assert per_text_ms(STATIC) * 5 < per_text_ms("minilm")


def test_a_router_trained_with_the_static_encoder_is_saved_and_served_with_it(static, tmp_path):
    from fastapi.testclient import TestClient

    from fake_openai_server import FakeOpenAIServer
    from prlib.bank import Bank
    from prlib.embed import STATIC, use_encoder
    from prlib.experiment import Setting, setting_views
    from prlib.routers import PersonalizedRouterV2
    from prlib.serve import (RoutingService, create_app, load_for_serving, router_encoder,
                             save_for_serving, upstream_map)
    from prlib.simulate import simulate_multi_cost
    from test_experiment import LLM_TABLE, logged_frame

    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    with use_encoder(STATIC):
        setting = Setting("static", bank, simulate_multi_cost(bank))
        train, val, _ = setting_views(setting, 0)
        router = PersonalizedRouterV2(setting.feats, seed=0, steps=20, eval_every=10).fit(
            train, val)
        want = router.text_scores("mc-00", TEXT)
    assert router.feats.query_x.shape[1] == 257 and router_encoder(router) == STATIC
    folder = save_for_serving(router, tmp_path / "router")
    assert (folder / "encoder" / "model.safetensors").is_file()
    loaded = load_for_serving(folder)
    assert router_encoder(loaded) == STATIC
    with FakeOpenAIServer() as upstream:
        service = RoutingService(loaded, upstream_map(loaded.feats.llms, upstream.url))
        assert service.encoder.encoder == STATIC
        row = service.encoder.row_now(TEXT)  # embedded by the server's thread, static
        assert row.shape == (1, 257)
        np.testing.assert_allclose(loaded.text_scores("mc-00", TEXT, query_x=row), want,
                                   atol=1e-5)
        client = TestClient(create_app(service))
        r = client.post("/v1/chat/completions", json={
            "model": "auto", "user": "mc-00", "messages": [{"role": "user", "content": TEXT}]})
        assert r.status_code == 200 and r.headers["x-prlib-model"] == loaded.feats.llms[
            int(np.argmax(want))]
        assert client.get("/health").json()["encoder"] == STATIC
