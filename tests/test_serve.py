"""prlib.serve: the personalised OpenAI-compatible proxy, against a fake upstream on 127.0.0.1."""

import json

import numpy as np
import pytest
from fastapi.testclient import TestClient

from fake_openai_server import FakeOpenAIServer, request_key
from prlib.bank import Bank
from prlib.experiment import Setting, setting_views
from prlib.routers import PersonalizedRouterV2
from prlib.serve import (RoutingService, create_app, load_for_serving, save_for_serving,
                         upstream_map)
from prlib.simulate import simulate_multi_cost
from test_experiment import LLM_TABLE, logged_frame

TEXT = "math question number 3: please help"


TRAINED_SCORES = {}


@pytest.fixture(scope="module")
def saved_router(tmp_path_factory):
    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    setting = Setting("serve", bank, simulate_multi_cost(bank))
    train, val, _ = setting_views(setting, 0)
    router = PersonalizedRouterV2(setting.feats, seed=0, steps=40, eval_every=10).fit(train, val)
    TRAINED_SCORES["mc-00"] = router.text_scores("mc-00", TEXT)
    TRAINED_SCORES["cold"] = router.text_scores("nobody", TEXT)
    return save_for_serving(router, tmp_path_factory.mktemp("router"))


@pytest.fixture()
def upstream():
    with FakeOpenAIServer() as server:
        yield server


def client_for(folder, upstream, **kw):
    router = load_for_serving(folder)
    service = RoutingService(router, upstream_map(router.feats.llms, upstream.url))
    return TestClient(create_app(service, **kw)), service


def chat(client, user=None, text=TEXT, **extra):
    body = {"model": "auto", "messages": [{"role": "user", "content": text}], **extra}
    if user is not None:
        body["user"] = user
    return client.post("/v1/chat/completions", json=body)


def test_a_saved_router_loads_for_serving_with_the_same_scores(saved_router):
    loaded = load_for_serving(saved_router)
    np.testing.assert_allclose(loaded.text_scores("mc-00", TEXT), TRAINED_SCORES["mc-00"],
                               atol=1e-6)
    np.testing.assert_allclose(loaded.text_scores("nobody", TEXT), TRAINED_SCORES["cold"],
                               atol=1e-6)
    with pytest.raises(FileNotFoundError, match="save_for_serving"):
        load_for_serving(saved_router.parent)


def test_a_chat_is_routed_forwarded_and_named(saved_router, upstream):
    client, service = client_for(saved_router, upstream)
    r = chat(client, "mc-00")
    assert r.status_code == 200, r.text
    llm = r.headers["x-prlib-model"]
    expected = service.llms[int(np.argmax(service.router.text_scores("mc-00", TEXT)))]
    assert llm == expected and r.json()["model"] == llm
    assert r.json()["choices"][0]["message"]["content"] == f"{llm} says: {TEXT}"
    assert upstream.received[request_key(llm, [{"role": "user", "content": TEXT}])] == 1
    assert r.headers["x-prlib-route"] == "routed"
    # an unknown user and a request without user: the population prior, never an error
    cold = chat(client, "somebody-new")
    anon = chat(client)
    assert cold.status_code == anon.status_code == 200
    assert "population prior" in cold.headers["x-prlib-route"]
    assert "population prior" in anon.headers["x-prlib-route"]
    # asking for an LLM by name skips routing; /v1/models lists them
    asked = client.post("/v1/chat/completions", json={
        "model": "huge", "messages": [{"role": "user", "content": TEXT}]})
    assert asked.headers["x-prlib-model"] == "huge" and asked.headers["x-prlib-route"] == "asked"
    assert [m["id"] for m in client.get("/v1/models").json()["data"]] == service.llms
    assert client.get("/health").json()["status"] == "ok"


@pytest.mark.parametrize("body, status, says", [
    ("not json", 400, "not JSON"),
    ([1, 2], 400, "JSON object"),
    ({"messages": []}, 400, "messages: List should have at least 1 item"),
    ({"messages": [{"role": "system", "content": "hi"}]}, 400, "no message with role 'user'"),
    ({"messages": [{"role": "user", "content": "  "}]}, 400, "no text content"),
    ({"messages": [{"role": "user", "content": "hi"}], "user": 7}, 400,
     "user: Input should be a valid string"),
    ({"model": "gpt-9", "messages": [{"role": "user", "content": "hi"}]}, 404, "not served"),
], ids=["not-json", "not-object", "no-messages", "no-user-message", "empty", "user-type",
        "unknown-model"])
def test_bad_requests_get_a_4xx_that_says_what_is_wrong(saved_router, upstream, body, status,
                                                         says):
    client, _ = client_for(saved_router, upstream)
    r = (client.post("/v1/chat/completions", content=body) if isinstance(body, str)
         else client.post("/v1/chat/completions", json=body))
    assert r.status_code == status and says in r.json()["error"]["message"]
    assert not upstream.received  # nothing was forwarded


def test_an_upstream_500_is_answered_502_and_never_retried(saved_router, upstream):
    """The upstream received the completion: trying again could run (and bill) it twice."""
    client, _ = client_for(saved_router, upstream, retries=2)
    upstream.fail("500")
    r = chat(client, "mc-01")
    assert r.status_code == 502 and "answered HTTP 500; not retried" in r.json()["error"][
        "message"]
    assert r.headers["x-prlib-request-id"].startswith("prlib-")
    assert sum(upstream.received.values()) == 1  # counted on the upstream: once
    assert chat(client, "mc-01").status_code == 200


def test_the_upstream_map_refuses_llms_the_router_does_not_know(saved_router, tmp_path):
    router = load_for_serving(saved_router)
    path = tmp_path / "map.json"
    path.write_text(json.dumps({"huge": {"base_url": "http://127.0.0.1:1/v1"},
                                "gpt-9": {"base_url": "http://127.0.0.1:1/v1"}}))
    with pytest.raises(ValueError, match=r"does not know: \['gpt-9'\]"):
        upstream_map(router.feats.llms, map_file=path)
    path.write_text(json.dumps({"huge": {"base_url": "http://127.0.0.1:1/v1", "model": "h"}}))
    only = upstream_map(router.feats.llms, map_file=path)
    service = RoutingService(router, only)
    assert service.route("mc-00", TEXT)[0] == "huge"  # the only LLM with an upstream


def test_streaming_passes_through(saved_router, upstream):
    client, _ = client_for(saved_router, upstream)
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "auto", "stream": True, "user": "mc-02",
            "messages": [{"role": "user", "content": TEXT}]}) as r:
        body = "".join(r.iter_text())
        llm = r.headers["x-prlib-model"]
    assert r.status_code == 200 and body.rstrip().endswith("data: [DONE]")
    words = [json.loads(line[6:])["choices"][0]["delta"]["content"]
             for line in body.splitlines() if line.startswith("data: {")]
    assert "".join(words).strip() == f"{llm} says: {TEXT}"


def test_feedback_changes_that_users_next_route_without_retraining(saved_router, upstream):
    client, service = client_for(saved_router, upstream)
    weights = {k: v.clone() for k, v in service.router.model.state_dict().items()}
    first = chat(client, "new-user")
    served = first.headers["x-prlib-model"]
    wanted = next(m for m in service.llms if m != served)
    routes = [served]
    for _ in range(4):  # the user keeps saying they prefer `wanted`
        r = chat(client, "new-user") if len(routes) > 1 else first
        fb = client.post("/v1/feedback", json={"request_id": r.headers["x-prlib-request-id"],
                                               "user": "new-user", "pick": wanted})
        assert fb.status_code == 200, fb.text
        routes.append(chat(client, "new-user").headers["x-prlib-model"])
        if routes[-1] == wanted:
            break
    assert routes[-1] == wanted, routes
    assert service.known_user("new-user") and not service.known_user("other-new-user")
    for k, v in service.router.model.state_dict().items():  # no retraining: no weight moved
        assert (v == weights[k]).all(), k


def test_feedback_errors_say_what_is_wrong(saved_router, upstream):
    client, _ = client_for(saved_router, upstream)
    rid = chat(client, "mc-03").headers["x-prlib-request-id"]
    post = lambda body: client.post("/v1/feedback", json=body)  # noqa: E731
    assert post({"user": "mc-03"}).status_code == 400
    assert post({"request_id": "prlib-nope", "user": "mc-03", "pick": "huge"}).status_code == 404
    assert post({"request_id": rid, "user": "mc-04", "pick": "huge"}).status_code == 403
    assert "exactly one" in post({"request_id": rid, "user": "mc-03"}).json()["error"]["message"]
    assert post({"request_id": rid, "user": "mc-03", "pick": "gpt-9"}).status_code == 400
    assert post({"request_id": rid, "user": "mc-03", "rating": 3}).status_code == 400
    assert post({"request_id": rid, "user": "mc-03", "rating": 0.8}).status_code == 200
    assert post({"request_id": rid, "user": "mc-03", "rating": 0.8}).status_code == 404  # once
    anonymous = chat(client).headers["x-prlib-request-id"]
    r = post({"request_id": anonymous, "pick": "huge"})
    assert r.status_code == 403 and "send the `user` field" in r.json()["error"]["message"]


def test_admin_save_writes_the_router_with_its_feedback_only_when_asked(saved_router, upstream,
                                                                        tmp_path):
    client, service = client_for(saved_router, upstream)
    assert client.post("/v1/admin/save").status_code == 409  # started without --save-to
    client, service = client_for(saved_router, upstream, save_to=tmp_path / "saved")
    rid = chat(client, "mc-05").headers["x-prlib-request-id"]
    assert client.post("/v1/feedback", json={"request_id": rid, "user": "mc-05",
                                             "rating": 1.0}).status_code == 200
    assert client.post("/v1/admin/save").status_code == 200
    again = load_for_serving(tmp_path / "saved")
    np.testing.assert_allclose(again.text_scores("mc-05", "another question"),
                               service.router.text_scores("mc-05", "another question"),
                               atol=1e-6)
    assert len(again.history_) == len(service.router.history_)


def test_200_concurrent_requests_from_20_users_are_each_forwarded_once(saved_router, upstream):
    from serve_harness import load_test

    router = load_for_serving(saved_router)
    service = RoutingService(router, upstream_map(router.feats.llms, upstream.url))
    out = load_test(service, n_requests=200, n_users=20)
    assert out["statuses"] == [200] * 200
    assert len(set(out["request_ids"])) == 200
    # counted on the upstream: every (model, text) exactly once, nothing else
    expected = {request_key(m, [{"role": "user", "content": t}])
                for m, t in zip(out["models"], out["texts"])}
    assert len(expected) == 200 and set(upstream.received) == expected
    assert set(upstream.received.values()) == {1} and sum(upstream.answered.values()) == 200
    assert 0 < out["route_ms_p50"] <= out["route_ms_p99"]
    assert out["encoder_batches"] < 200  # concurrent texts shared the encoder's batches
    assert out["router_batches"] < 200  # and the router's calls


def test_concurrent_requests_are_routed_in_batches_each_as_if_alone(saved_router, upstream):
    """The router scores the requests waiting together in one call; each request gets the
    route and score it gets alone, is remembered for its feedback, and a user without history
    is flagged as cold."""
    import asyncio

    from prlib.serve import ANONYMOUS

    router = load_for_serving(saved_router)
    service = RoutingService(router, upstream_map(router.feats.llms, upstream.url))
    users = [router.store_.users[i % 5] for i in range(30)] + ["nobody", ANONYMOUS]
    texts = [f"question {i}: how do I {'sort' if i % 3 else 'add'} {i} numbers?"
             for i in range(len(users))]
    rows = [service.encoder.row_now(t) for t in texts]

    async def ask():
        return await asyncio.gather(*(service.route_async(u, t, r)
                                      for u, t, r in zip(users, texts, rows)))

    out = asyncio.run(ask())
    assert len(service.scorer.batch_sizes) < len(users)  # some were scored together
    assert len({llm for llm, *_ in out}) > 1
    for (llm, score, rid, cold, ranking), user, text, row in zip(out, users, texts, rows):
        alone = np.where(service.allowed, router.text_scores(user, text, query_x=row), -np.inf)
        assert llm == service.llms[int(np.argmax(alone))], (user, text)
        assert score == pytest.approx(float(alone.max()), abs=1e-5)
        assert service.routed[rid].user == user and cold == (user not in router.store_.upos)
        assert [m for m, _ in ranking] == [service.llms[i] for i in np.argsort(-alone)]


def test_a_failing_item_fails_alone_not_the_batch_it_waited_in():
    import asyncio

    from prlib.serve import MicroBatcher

    batcher = MicroBatcher(lambda items: [1.0 / x for x in items])

    async def ask():
        return await asyncio.gather(*(batcher.submit(x) for x in (1, 2, 0, 4)),
                                    return_exceptions=True)

    out = asyncio.run(ask())
    assert out[:2] == [1.0, 0.5] and out[3] == 0.25 and isinstance(out[2], ZeroDivisionError)
    assert batcher.submit_now(8) == 0.125


def test_concurrent_texts_are_embedded_in_batches_each_as_if_alone(monkeypatch):
    """The server's encoder embeds the texts waiting together in one batch; each request still
    gets its own text's row (as :func:`query_row` alone gives it), and an encoder failure
    reaches every waiting request."""
    import asyncio

    from prlib.embed import MemoryEmbeddingCache
    from prlib.features import query_row
    from prlib.serve import BatchingEncoder
    from prlib.tokens import MemoryTokenCountCache

    encoder = BatchingEncoder(max_batch=16)
    texts = [f"question {i}: how do I {'sort' if i % 2 else 'reverse'} a list of {i} items?"
             for i in range(40)]

    async def ask(batch):
        return await asyncio.gather(*(encoder.row(t) for t in batch))

    rows = asyncio.run(ask(texts))
    assert len(encoder.batch_sizes) < len(texts) and max(encoder.batch_sizes) <= 16
    for text, row in zip(texts, rows):
        alone = query_row(text, embedding_cache=MemoryEmbeddingCache(),
                          token_cache=MemoryTokenCountCache())
        np.testing.assert_allclose(row.numpy(), alone.numpy(), atol=1e-5, err_msg=text)
    np.testing.assert_allclose(encoder.row_now(texts[3]).numpy(), rows[3].numpy(), atol=1e-6)

    def broken(*args, **kwargs):
        raise RuntimeError("encoder down")

    monkeypatch.setattr("prlib.serve_routing.query_rows", broken)
    with pytest.raises(RuntimeError, match="encoder down"):
        asyncio.run(ask(texts[:5]))


def test_the_server_loads_the_text_encoder_before_it_takes_the_first_request(saved_router,
                                                                             upstream):
    """The first request after start does not wait for the encoder to load (seconds, and
    every request queued behind it with it): the app's startup warms the encoder up."""
    client, service = client_for(saved_router, upstream)
    events = []
    warm_up = service.encoder.warm_up
    service.encoder.warm_up = lambda: (events.append("warm-up"), warm_up())[1]
    with client:  # runs the app's startup and shutdown
        assert events == ["warm-up"]
        assert chat(client, user="mc-00").status_code == 200
    assert events == ["warm-up"]
    from prlib.embed import _key

    assert _key("warm-up") not in service.encoder.embeddings  # its caches hold requests only


# ---------------------------------------------------------------------- hardening: limits
def service_for(folder, upstream, upstreams=None, **kw):
    router = load_for_serving(folder)
    return RoutingService(router, upstreams or upstream_map(router.feats.llms, upstream.url),
                          **kw)


def dead_url() -> str:
    """A 127.0.0.1 URL where nothing listens (connections are refused)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}/v1"


def test_an_oversized_body_gets_413_before_it_is_read_or_forwarded(saved_router, upstream):
    client, _ = client_for(saved_router, upstream, max_body_bytes=20_000)
    big = "word " * 5_000  # 25 kB
    r = chat(client, "mc-00", text=big)
    assert r.status_code == 413 and "20,000 bytes" in r.json()["error"]["message"]
    body = json.dumps({"messages": [{"role": "user", "content": big}]}).encode()
    chunked = client.post("/v1/chat/completions",  # no Content-Length: counted as it arrives
                          content=iter([body[i:i + 4096] for i in range(0, len(body), 4096)]))
    assert chunked.status_code == 413
    assert not upstream.received
    assert chat(client, "mc-00", text="word " * 1_000).status_code == 200  # 5 kB passes


MALFORMED = {
    "text-part-not-string": ({"messages": [{"role": "user", "content": [
        {"type": "text", "text": 5}]}]}, "messages.0.content"),
    "model-list": ({"model": ["auto"], "messages": [{"role": "user", "content": "hi"}]},
                   "model: Input should be a valid string"),
    "model-dict": ({"model": {"id": "auto"}, "messages": [{"role": "user", "content": "hi"}]},
                   "model: Input should be a valid string"),
    "nan": ('{"messages": [{"role": "user", "content": "hi"}], "temperature": NaN}', "NaN"),
    "infinity": ('{"messages": [{"role": "user", "content": "hi"}], "top_p": 1e999}',
                 "finite number"),
    "nested-100000": ('{"messages": [{"role": "user", "content": "hi"}], "x": '
                      + "[" * 100_000 + "]" * 100_000 + "}", "nested too deep"),
    "nested-100": ({"messages": [{"role": "user", "content": "hi"}], "x": json.loads(
        "[" * 100 + "]" * 100)}, "nested too deep"),
    "stream-no": ({"stream": "no", "messages": [{"role": "user", "content": "hi"}]},
                  "stream: Input should be a valid boolean"),
}


@pytest.mark.parametrize("case", list(MALFORMED))
def test_each_malformed_chat_body_gets_a_400_that_names_what_is_wrong(saved_router, upstream,
                                                                       case):
    body, says = MALFORMED[case]
    client, service = client_for(saved_router, upstream)
    r = (client.post("/v1/chat/completions", content=body) if isinstance(body, str)
         else client.post("/v1/chat/completions", json=body))
    assert r.status_code == 400, r.text
    assert r.json()["error"]["type"] == "invalid_request_error"
    assert says in r.json()["error"]["message"], r.json()
    assert not upstream.received and not service.routed  # neither forwarded nor remembered
    assert chat(client, "mc-00").status_code == 200  # and the server is fine


@pytest.mark.parametrize("rating, says", [
    ("true", "rating: Input should be a valid number"),
    ("NaN", "NaN"),
    ('"0.5"', "rating: Input should be a valid number"),
    ("1.5", "rating: Input should be less than or equal to 1"),
])
def test_each_malformed_feedback_body_gets_a_400(saved_router, upstream, rating, says):
    client, service = client_for(saved_router, upstream)
    rid = chat(client, "mc-03").headers["x-prlib-request-id"]
    r = client.post("/v1/feedback", content=f'{{"request_id": "{rid}", "user": "mc-03", '
                                            f'"rating": {rating}}}')
    assert r.status_code == 400 and says in r.json()["error"]["message"], r.text
    assert rid in service.routed  # nothing recorded: the request may still get feedback


def test_a_long_text_is_embedded_as_far_as_the_encoder_reads_it(saved_router, upstream):
    """MiniLM reads 256 word pieces: the server embeds (and caches) that beginning only, which
    gives the same embedding as the whole text; the request remembers no text at all."""
    from prlib.embed import _key, clip_for_encoder, embed_texts
    from prlib.serve import EXACT_COUNT_CHARS, token_counts
    from prlib.tokens import count_tokens

    long_text = " ".join(f"Sentence {i}: sort the list, then reverse it." for i in range(400))
    clipped = clip_for_encoder(long_text)
    assert len(clipped) < len(long_text) // 10
    full, cut = embed_texts([long_text, clipped], cache=__import__(
        "prlib.embed", fromlist=["x"]).MemoryEmbeddingCache())
    np.testing.assert_allclose(full, cut, atol=1e-6)
    assert clip_for_encoder("short text") == "short text"
    client, service = client_for(saved_router, upstream)
    r = chat(client, "mc-00", text=long_text)
    assert r.status_code == 200
    assert _key(clipped) in service.encoder.embeddings
    assert _key(long_text) not in service.encoder.embeddings
    assert not hasattr(service.routed[r.headers["x-prlib-request-id"]], "text")
    # token counts: exact up to EXACT_COUNT_CHARS characters, scaled beyond
    short, huge = long_text[:5000], (long_text + " ") * 10
    assert token_counts([short])[0] == count_tokens([short])[0]
    exact = count_tokens([huge])[0]
    assert len(huge) > EXACT_COUNT_CHARS and abs(token_counts([huge])[0] / exact - 1) < 0.02


def test_feedback_memory_is_bounded_and_health_says_so(saved_router, upstream):
    client, service = client_for_service(service_for(saved_router, upstream, remember=3))
    rids = [chat(client, "mc-00", text=f"question {i}").headers["x-prlib-request-id"]
            for i in range(5)]
    health = client.get("/health").json()
    assert health["remembered_requests"] == 3 and health["evicted_requests"] == 2
    assert health["remember_limit_requests"] == 3 and health["remembered_mb"] > 0
    assert list(service.routed) == rids[2:]  # the oldest were forgotten
    fb = lambda rid: client.post("/v1/feedback", json={  # noqa: E731
        "request_id": rid, "user": "mc-00", "rating": 1.0})
    assert fb(rids[0]).status_code == 404 and fb(rids[4]).status_code == 200
    # a bound in megabytes: room for two and a half requests
    per = next(iter(service.routed.values())).nbytes()
    small = service_for(saved_router, upstream, remember_mb=2.5 * per / 2**20)
    for i in range(6):
        small.route("mc-00", f"question {i}")
    assert len(small.routed) == 2 and small.evicted == 4
    assert small.routed_bytes <= small.remember_bytes


def client_for_service(service, **kw):
    return TestClient(create_app(service, **kw)), service


# ---------------------------------------------------------------------- hardening: keys
def test_api_keys_a_key_bound_to_a_user_cannot_speak_for_another(saved_router, upstream):
    from prlib.serve_http import KeyStore

    keys = KeyStore({"alice-key-1": "alice", "bob-key-12": "bob", "any-user-1": None},
                    admin_key="admin-key-1")
    client, service = client_for_service(service_for(saved_router, upstream), keys=keys)
    as_ = lambda key: {"Authorization": f"Bearer {key}"}  # noqa: E731
    body = lambda user=None: {"model": "auto", "user": user,  # noqa: E731
                              "messages": [{"role": "user", "content": TEXT}]}
    post = lambda key, b, path="chat/completions": client.post(  # noqa: E731
        f"/v1/{path}", json=b, headers=as_(key) if key else {})
    assert post(None, body("alice")).status_code == 401
    assert post("wrong-key-1", body("alice")).status_code == 401
    forged = post("alice-key-1", body("bob"))
    assert forged.status_code == 403 and "'alice' only" in forged.json()["error"]["message"]
    assert not upstream.received
    own = post("alice-key-1", body())  # no user field: the key's user
    assert own.status_code == 200
    assert service.routed[own.headers["x-prlib-request-id"]].user == "alice"
    bobs = post("bob-key-12", body("bob")).headers["x-prlib-request-id"]
    # feedback: alice's key cannot give it as bob, nor on bob's request as herself
    pick = {"request_id": bobs, "pick": "huge"}
    assert post("alice-key-1", {**pick, "user": "bob"}, "feedback").status_code == 403
    assert post("alice-key-1", pick, "feedback").status_code == 403
    assert post(None, {**pick, "user": "bob"}, "feedback").status_code == 401
    assert not service.known_user("bob")  # none of that reached the router
    assert post("bob-key-12", pick, "feedback").status_code == 200
    assert service.known_user("bob")
    # an unbound key may name any user; /v1/models needs a key, /health does not
    assert post("any-user-1", body("carol")).status_code == 200
    assert client.get("/v1/models").status_code == 401
    assert client.get("/v1/models", headers=as_("bob-key-12")).status_code == 200
    assert client.get("/health").json()["keys"] is True
    # admin endpoints and the docs: the admin key only
    for key in (None, "alice-key-1", "any-user-1"):
        assert client.post("/v1/admin/save", headers=as_(key) if key else {}).status_code in (
            401, 403)
        assert client.get("/docs", headers=as_(key) if key else {}).status_code in (401, 403)
    assert client.post("/v1/admin/save", headers=as_("admin-key-1")).status_code == 409
    assert client.get("/docs", headers=as_("admin-key-1")).status_code == 200
    assert client.get("/openapi.json", headers=as_("admin-key-1")).status_code == 200


def test_keys_come_from_options_or_a_file_and_non_loopback_hosts_need_them(tmp_path):
    from prlib.serve import check_host
    from prlib.serve_http import KeyStore

    path = tmp_path / "keys.json"
    path.write_text(json.dumps({"keys": [{"key": "alice-key-1", "user": "alice"},
                                         {"key": "shared-key-1"}], "admin_key": "admin-key-1"}))
    keys = KeyStore.from_options(["cli-key-123"], path)
    assert keys.keys == {"cli-key-123": None, "alice-key-1": "alice", "shared-key-1": None}
    assert keys.admin_key == "admin-key-1"
    path.write_text(json.dumps({"keys": ["alice-key-1"]}))
    with pytest.raises(ValueError, match='expected {"keys"'):
        KeyStore.from_options(keys_file=path)
    with pytest.raises(ValueError, match="at least 8 characters"):
        KeyStore({"short": None})
    check_host("127.0.0.1", KeyStore())
    check_host("::1", KeyStore())
    with pytest.raises(ValueError, match="--insecure-no-keys"):
        check_host("0.0.0.0", KeyStore())
    check_host("0.0.0.0", KeyStore(), insecure=True)
    check_host("0.0.0.0", keys)


def test_without_keys_every_loopback_client_is_trusted(saved_router, upstream):
    client, _ = client_for(saved_router, upstream)
    assert client.get("/docs").status_code == 200 and client.get("/v1/models").status_code == 200


# ---------------------------------------------------------------------- hardening: upstreams
def test_a_hung_upstream_gives_504_after_the_read_timeout_and_is_not_retried(saved_router,
                                                                              upstream):
    import time

    client, _ = client_for(saved_router, upstream, read_timeout=0.5, retries=2)
    upstream.fail("timeout")  # the fake upstream sleeps 2 s, then hangs up
    start = time.perf_counter()
    r = chat(client, "mc-01")
    assert r.status_code == 504 and r.json()["error"]["type"] == "upstream_timeout"
    assert "within 0.5 s" in r.json()["error"]["message"]
    assert time.perf_counter() - start < 1.9  # not the upstream's 2 s, nor 3 tries
    assert sum(upstream.received.values()) == 1


def test_an_unreachable_llm_falls_back_to_the_next_best_and_says_so(saved_router, upstream):
    from prlib.serve import Upstream

    router = load_for_serving(saved_router)
    ranking = [router.feats.llms[i] for i in np.argsort(-router.text_scores("mc-00", TEXT))]
    ups = {m: Upstream(upstream.url, m) for m in router.feats.llms}
    ups[ranking[0]] = Upstream(dead_url(), ranking[0])
    service = RoutingService(router, ups)
    client, _ = client_for_service(service, retries=1)
    r = chat(client, "mc-00")
    assert r.status_code == 200, r.text
    assert r.headers["x-prlib-model"] == ranking[1] == r.json()["model"]
    assert r.headers["x-prlib-fallback-from"] == ranking[0]
    assert dict(upstream.received) == {
        request_key(ranking[1], [{"role": "user", "content": TEXT}]): 1}
    # the feedback is about the answer served, by the fallback
    assert service.routed[r.headers["x-prlib-request-id"]].llm == ranking[1]
    # asked by name, an unreachable LLM is not replaced: 502 after the connection retries
    asked = client.post("/v1/chat/completions", json={
        "model": ranking[0], "messages": [{"role": "user", "content": TEXT}]})
    assert asked.status_code == 502
    assert "2 connection attempts failed" in asked.json()["error"]["message"]
    # no fallback allowed: 502 naming the unreachable endpoint
    client, _ = client_for_service(service, fallbacks=0, retries=0)
    r = chat(client, "mc-00")
    assert r.status_code == 502 and "no upstream could be reached" in r.json()["error"][
        "message"]
    assert sum(upstream.received.values()) == 1


def test_a_stream_cut_mid_way_ends_with_an_error_event(saved_router, upstream):
    client, _ = client_for(saved_router, upstream)
    upstream.fail("cut")
    with client.stream("POST", "/v1/chat/completions", json={
            "model": "auto", "stream": True, "user": "mc-02",
            "messages": [{"role": "user", "content": TEXT}]}) as r:
        body = "".join(r.iter_text())
    assert r.status_code == 200 and "data: [DONE]" not in body
    events = [json.loads(line[6:]) for line in body.splitlines() if line.startswith("data: {")]
    assert "delta" in str(events[0]) and "ended the stream before [DONE]" in events[-1][
        "error"]["message"]
    assert sum(upstream.received.values()) == 1
    upstream.fail("cut")  # not streamed: a body cut short of its length gives 502, once
    r = chat(client, "mc-02")
    assert r.status_code == 502 and "mid-answer" in r.json()["error"]["message"]
    assert sum(upstream.received.values()) == 2


# ---------------------------------------------------------------------- hardening: journal
def test_acknowledged_feedback_survives_a_restart_through_the_journal(saved_router, upstream,
                                                                      tmp_path):
    journal = tmp_path / "feedback.jsonl"
    first = service_for(saved_router, upstream, journal=journal)
    client, _ = client_for_service(first)
    for i in range(3):
        rid = chat(client, "j-user", text=f"question {i}").headers["x-prlib-request-id"]
        assert client.post("/v1/feedback", json={"request_id": rid, "user": "j-user",
                                                 "pick": "huge"}).status_code == 200
    probe = "how do I reverse a list?"
    want = first.router.text_scores("j-user", probe)
    # a crash: the server is never shut down; a new one starts from the saved router
    again = service_for(saved_router, upstream, journal=journal)
    assert again.replayed == 3 and again.known_user("j-user")
    np.testing.assert_allclose(again.router.text_scores("j-user", probe), want, atol=1e-6)
    fresh = service_for(saved_router, upstream)  # without the journal the feedback is lost
    assert not fresh.known_user("j-user")
    # a line cut short by a crash was never acknowledged: skipped, and not glued to the next
    with open(journal, "a") as f:
        f.write('{"request_id": "prlib-torn", "us')
    torn = service_for(saved_router, upstream, journal=journal)
    assert torn.replayed == 3
    client, _ = client_for_service(torn)
    rid = chat(client, "j-user", text="question 9").headers["x-prlib-request-id"]
    assert client.post("/v1/feedback", json={"request_id": rid, "user": "j-user",
                                             "rating": 0.0}).status_code == 200
    assert service_for(saved_router, upstream, journal=journal).replayed == 4
    # a router saved by the server holds the journal's entries: serving it replays none twice
    client, _ = client_for_service(torn, save_to=tmp_path / "saved")
    assert client.post("/v1/admin/save").status_code == 200
    saved = service_for(tmp_path / "saved", upstream, journal=journal,
                        journal_skip=json.loads((tmp_path / "saved" / "journal.json")
                                                .read_text())["journal_entries"])
    assert saved.replayed == 0
    np.testing.assert_allclose(saved.router.text_scores("j-user", probe),
                               torn.router.text_scores("j-user", probe), atol=1e-6)


@pytest.mark.outside_ci
def test_requests_waiting_for_a_free_upstream_connection_are_not_taken_for_a_dead_upstream(
        saved_router):
    """More concurrent requests than the server's connection pool to one upstream (100): those
    that wait for a free connection longer than the connect timeout are still answered (the
    wait is bounded by the read timeout), each forwarded once."""
    from serve_harness import load_test

    with FakeOpenAIServer(latency=2.0) as slow:
        service = service_for(saved_router, slow)
        out = load_test(service, n_requests=130, n_users=13, connect_timeout=0.2,
                        read_timeout=30)
        assert out["statuses"] == [200] * 130
        assert set(slow.received.values()) == {1} and len(slow.received) == 130


def test_serve_wires_keys_limits_and_the_journal_across_restarts(saved_router, upstream,
                                                                  tmp_path, monkeypatch):
    """:func:`prlib.serve.serve` as `prlib serve` calls it (uvicorn replaced by a test client):
    the keys, the body limit and the journal reach the app; a restart replays the journal; a
    router saved by the server is not replayed twice."""
    import uvicorn

    from prlib.serve import serve
    from prlib.serve_http import KeyStore

    apps = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: apps.append((app, kw)))
    keys = KeyStore({"alice-key-1": "alice"}, admin_key="admin-key-1")
    journal = tmp_path / "feedback.jsonl"
    options = dict(upstream=upstream.url, keys=keys, journal=journal, max_body_bytes=5_000,
                   save_to=tmp_path / "saved", port=9999)
    serve(saved_router, **options)
    app, kw = apps[-1]
    assert kw["port"] == 9999 and kw["host"] == "127.0.0.1"
    alice = {"Authorization": "Bearer alice-key-1"}
    with TestClient(app) as client:
        assert chat(client, "alice").status_code == 401  # no key
        big = {"model": "auto", "messages": [{"role": "user", "content": "x " * 5_000}]}
        assert client.post("/v1/chat/completions", headers=alice, json=big).status_code == 413
        r = client.post("/v1/chat/completions", headers=alice, json={
            "model": "auto", "messages": [{"role": "user", "content": TEXT}]})
        assert r.status_code == 200
        assert client.post("/v1/feedback", headers=alice, json={
            "request_id": r.headers["x-prlib-request-id"], "pick": "huge"}).status_code == 200
        assert client.post("/v1/admin/save", headers={
            "Authorization": "Bearer admin-key-1"}).status_code == 200
    serve(saved_router, **options)  # a restart: the journal is replayed
    assert apps[-1][0].state.service.replayed == 1
    assert apps[-1][0].state.service.known_user("alice")
    serve(tmp_path / "saved", **options)  # the saved router holds that feedback already
    assert apps[-1][0].state.service.replayed == 0
    assert apps[-1][0].state.service.known_user("alice")
    with pytest.raises(ValueError, match="--insecure-no-keys"):
        serve(saved_router, upstream=upstream.url, host="0.0.0.0")


def test_ours_v3_is_served_loaded_with_the_same_scores_and_learns_a_users_pick_online(
        tmp_path, upstream):
    """`prlib train` saves v3 (ours) by default: it must load for serving, route a chat, and
    move a new user towards the LLM they keep picking, without retraining."""
    from prlib.routers import PersonalizedRouterV3

    bank = Bank.from_frame("my-logs", logged_frame(False), LLM_TABLE)
    setting = Setting("serve", bank, simulate_multi_cost(bank))
    train, val, _ = setting_views(setting, 0)
    router = PersonalizedRouterV3(setting.feats, seed=0).fit(train, val)
    before = router.text_scores("mc-00", TEXT)
    folder = save_for_serving(router, tmp_path / "v3")
    client, service = client_for(folder, upstream)
    np.testing.assert_allclose(service.router.text_scores("mc-00", TEXT), before, atol=1e-6)
    prior = service.router.W_.copy()
    first = chat(client, "new-user")
    assert first.status_code == 200, first.text
    served = first.headers["x-prlib-model"]
    wanted = next(m for m in service.llms if m != served)
    a, b = service.llms.index(wanted), service.llms.index(served)

    def margin():  # how much more the router would give `wanted` than `served` to the user
        scores = service.router.text_scores("new-user", TEXT)
        return float(scores[a] - scores[b])

    start = margin()
    for _ in range(10):  # the user keeps picking `wanted`
        r = chat(client, "new-user")
        fb = client.post("/v1/feedback", json={"request_id": r.headers["x-prlib-request-id"],
                                               "user": "new-user", "pick": wanted})
        assert fb.status_code == 200, fb.text
    assert service.known_user("new-user") and not service.known_user("other-new-user")
    assert margin() > start  # the user's posterior moved towards their picks, online
    np.testing.assert_array_equal(service.router.W_[:len(prior)], prior)  # others untouched


def test_a_request_that_waits_too_long_for_a_free_upstream_connection_gets_504_unsent(
        saved_router):
    """With one connection per upstream and answers taking 0.7 s, the third of three concurrent
    requests waits longer than the read timeout (1 s) for the connection: 504 that says so,
    never sent, no fallback to another LLM of the same endpoint; the other two are answered,
    each completion received once."""
    from concurrent.futures import ThreadPoolExecutor

    with FakeOpenAIServer(latency=0.7) as slow:
        service = service_for(saved_router, slow)
        app = create_app(service, read_timeout=1.0, connect_timeout=0.5, max_connections=1)
        with TestClient(app) as client, ThreadPoolExecutor(3) as pool:
            replies = list(pool.map(lambda i: chat(client, f"mc-0{i}", text=f"{TEXT} {i}"),
                                    range(3)))
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200, 200, 504], statuses
    late = next(r for r in replies if r.status_code == 504)
    assert "was free within 1 s" in late.json()["error"]["message"]
    assert "x-prlib-fallback-from" not in late.headers
    assert sum(slow.received.values()) == 2 and set(slow.received.values()) == {1}


def test_the_environments_proxy_carries_requests_unless_no_proxy_names_the_host(
        saved_router, upstream, monkeypatch):
    """The upstream's host does not resolve: a request reaches it only through the proxy that
    HTTP_PROXY names (here the fake server, which answers absolute-form requests); a host that
    NO_PROXY names is reached directly."""
    monkeypatch.setenv("HTTP_PROXY", upstream.url.rsplit("/v1", 1)[0])
    monkeypatch.setenv("NO_PROXY", "localhost")
    router = load_for_serving(saved_router)
    via_proxy = upstream_map(router.feats.llms, "http://upstream.invalid/v1")
    client = TestClient(create_app(RoutingService(router, via_proxy), retries=0))
    r = chat(client, user="mc-00")
    assert r.status_code == 200, r.text
    assert sum(upstream.received.values()) == 1
    monkeypatch.setenv("NO_PROXY", "upstream.invalid")
    client = TestClient(create_app(RoutingService(router, via_proxy), retries=0))
    assert chat(client, user="mc-00").status_code == 502  # direct: the host does not resolve
    assert sum(upstream.received.values()) == 1
