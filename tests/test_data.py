"""prlib.data on the real shared data, plus every bad-input path with its message."""

import json
import shutil
import threading
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from prlib import data
from prlib.bank import BANK_COLUMNS, Bank, SchemaError


# ---------------------------------------------------------------- real banks: sizes and schema
def test_llmrouter_bank(llmrouter_bank):
    b = llmrouter_bank
    assert len(b.queries) == 6108
    assert len(b.llms) == 9
    assert b.queries["task"].nunique() == 14
    assert len(b.bank) == 6108 * 9
    assert b.bank["quality"].between(0, 1).all()
    assert (b.bank["output_tokens"] == data.ASSUMED_OUTPUT_TOKENS).all()
    assert "assumed" in b.meta["output_tokens"]
    # cost is tokens x price, and the 49B+ models cost more than the small ones on every query
    wide = b.matrix("cost_usd")
    assert (wide["llama3-chatqa-1.5-70b"] > wide["gemma-2-9b-it"]).all()


def test_arena_bench_bank(arena_bench_bank):
    b = arena_bench_bank
    assert len(b.queries) == 300
    assert len(b.llms) == 16
    assert b.bank.groupby("llm")["quality"].count().min() >= 290
    assert b.has_text and b.bank["response"].str.len().gt(0).mean() > 0.99
    # missing judge scores are kept as NaN and counted, never guessed
    assert b.meta["quality_missing"] == int(b.bank["quality"].isna().sum()) > 0
    assert not any("vicuna-7b" in name for name in b.llm_names)
    # GPT-4 (1106) is judged better than Llama-2-70b on average
    q = b.bank.groupby("llm")["quality"].mean()
    assert q["gpt-4-1106-preview"] > q["llama-2-70b-chat"]


def test_mt_bench_bank():
    b = data.load_bank("mt-bench")
    assert len(b.queries) == 80 and len(b.llms) == 32
    assert (b.queries["turns"] == 2).all()
    assert len(b.bank) == 80 * 32
    assert b.bank["response_turns"].map(len).eq(2).all()
    assert b.bank["quality"].isna().all()


def test_arena_hard_bank():
    b = data.load_bank("arena-hard-v0.1")
    assert len(b.queries) == 500
    assert len(b.llms) >= 70
    assert b.meta["missing_answers"] == 500 * len(b.llms) - len(b.bank)
    assert (b.bank["output_tokens"] > 0).mean() > 0.99


@pytest.mark.parametrize("name", data.BANK_NAMES)
def test_every_bank_follows_the_schema(name):
    b = data.load_bank(name)
    assert list(b.bank.columns[: len(BANK_COLUMNS)]) == BANK_COLUMNS
    assert b.bank["cost_usd"].gt(0).all()
    assert b.llms["input_usd_per_m"].gt(0).all()
    assert b.llms["description"].str.len().gt(20).all()
    assert set(b.llms["price_source"]) <= {"price-sheet", "llmrouter", "assumption"}
    # every assumption is stated
    assumed = b.llms[b.llms["price_source"] == "assumption"]
    assert assumed["price_note"].str.len().gt(10).all()


def test_schema_violations_are_caught(llmrouter_bank):
    b = llmrouter_bank
    broken = b.bank.copy()
    broken.loc[0, "quality"] = 1.5
    with pytest.raises(SchemaError, match="outside"):
        Bank("x", b.queries, b.llms, broken)
    with pytest.raises(SchemaError, match="lacks columns"):
        Bank("x", b.queries, b.llms, b.bank.drop(columns="cost_usd"))


def test_bank_roundtrip(tmp_path, arena_bench_bank):
    small = arena_bench_bank.subset(query_ids=arena_bench_bank.queries["query_id"][:5])
    loaded = Bank.load(small.save(tmp_path / "b"))
    assert loaded.bank.equals(small.bank) and loaded.meta == small.meta


def test_token_counter_is_offline_and_plausible():
    n = data.count_tokens(["hello world", "", "a much longer sentence with more words in it"])
    assert n[0] == 2 and n[1] == 0 and n[2] > 5


# ---------------------------------------------------------------- bad input, with messages
def test_missing_data_folder_names_all_candidates(monkeypatch, tmp_path):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path / "nowhere"))
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path / "repo")
    with pytest.raises(data.DataNotFoundError) as err:
        data.find_data_dir()
    msg = str(err.value)
    assert data.ENV_VAR in msg and "data/raw" in msg and "shared/data" in msg
    assert "python -m prlib.data download" in msg


def test_env_var_wins(monkeypatch, data_dir):
    monkeypatch.setenv(data.ENV_VAR, str(data_dir))
    assert data.find_data_dir() == data_dir


def test_sha256_mismatch_names_file_expected_actual(tmp_path):
    f = tmp_path / "x.jsonl"
    f.write_text("{}\n")
    with pytest.raises(data.ChecksumError) as err:
        data.verify_file(f, "0" * 64)
    msg = str(err.value)
    assert "x.jsonl" in msg and "0" * 64 in msg and data.sha256_of(f) in msg


def test_shared_data_matches_registry(data_dir):
    llmrouter = [e["file"] for e in data.load_registry() if e["file"].startswith("llmrouter/")]
    assert data.verify_data_dir(data_dir, llmrouter) == len(llmrouter) == 5


def test_malformed_json_line_names_file_and_line(tmp_path):
    f = tmp_path / "q.jsonl"
    f.write_text('{"a": 1}\n{"a": 2}\n{"a": \n')
    with pytest.raises(data.MalformedFileError, match=r"q\.jsonl: line 3"):
        list(data.read_jsonl(f))


def test_malformed_line_inside_a_bank_source(tmp_path, data_dir):
    root = tmp_path / "data"
    shutil.copytree(data_dir / "mt-bench", root / "mt-bench")
    (root / "prices").mkdir()
    q = root / "mt-bench" / "question.jsonl"
    lines = q.read_text().splitlines()
    lines[6] = lines[6][:-5]
    q.chmod(0o644)
    q.write_text("\n".join(lines) + "\n")
    with pytest.raises(data.MalformedFileError, match="line 7"):
        data.load_mt_bench(root)


def test_unknown_model_name_lists_closest(data_dir):
    with pytest.raises(data.UnknownModelError) as err:
        data.resolve_llms("arena-bench-v1", ["gpt-4-0315"], data_dir)
    assert "gpt-4-0314" in str(err.value)
    b = data.load_bank("arena-bench-v1")
    with pytest.raises(data.UnknownModelError, match="claude-2.1"):
        b.subset(llms=["claude-2.2"])


def test_unknown_bank_name():
    with pytest.raises(KeyError, match="arena-bench-v1"):
        data.load_bank("arena-bench")


# ---------------------------------------------------------------- download, against a local server
def test_download_fetches_and_verifies(tmp_path, monkeypatch, data_dir):
    """Serve the shared files over local HTTP in place of the upstream repositories."""
    handler = partial(SimpleHTTPRequestHandler, directory=str(data_dir))
    handler.log_message = lambda *a, **k: None
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    port = server.server_address[1]
    monkeypatch.setattr(data, "upstream_url",
                        lambda e: f"http://127.0.0.1:{port}/{e['file']}")
    try:
        written = data.download(tmp_path / "raw", only="llmrouter")
        assert len(written) == 5
        assert data.download(tmp_path / "raw", only="llmrouter") == []  # verified, kept
        # a tampered registry entry is refused and leaves no file behind
        registry = data.load_registry()
        prices = "prices/model_prices_and_context_window.json"
        entry = next(e for e in registry if e["file"] == prices)
        monkeypatch.setattr(data, "load_registry",
                            lambda: [dict(entry, sha256="f" * 64)])
        with pytest.raises(data.ChecksumError, match="expected f{64}"):
            data.download(tmp_path / "raw")
        assert not (tmp_path / "raw" / "prices" / "model_prices_and_context_window.json").exists()
    finally:
        server.shutdown()


def test_cli_reports_errors_without_traceback(monkeypatch, tmp_path, capsys):
    monkeypatch.setenv(data.ENV_VAR, str(tmp_path))
    monkeypatch.setattr(data, "REPO_ROOT", tmp_path / "repo")
    assert data.main(["verify"]) == 1
    assert "No data folder" in capsys.readouterr().err


def test_pareto_front():
    from prlib.metrics import pareto_front

    mask = pareto_front([0.5, 0.6, 0.4, np.nan], [1.0, 2.0, 1.5, 0.1])
    assert mask.tolist() == [True, True, False, False]


def test_personalizedrouter_queries():
    q = data.load_personalizedrouter_queries()
    assert len(q) == 240 and q["task"].nunique() == 4 and q["query_id"].is_unique
    llms = data.load_personalizedrouter_llms()
    assert len(llms) == 10
    assert json.loads(json.dumps(llms["llm"].tolist()))


def test_token_counts_are_cached_on_disk_and_equal_the_tokenizer(tmp_path, monkeypatch):
    from prlib import tokens

    texts = ["What is 2 + 2?", "", "Ünïcode and emoji 🚀 count too.", "What is 2 + 2?"]
    direct = [len(e.ids) for e in tokens._tokenizer().encode_batch(texts, add_special_tokens=False)]
    first = tokens.count_tokens(texts, cache=tokens.TokenCountCache(tmp_path))
    assert first.tolist() == direct and first.dtype == np.int64

    def no_tokenizer():
        raise AssertionError("the tokenizer ran although every text was cached")

    monkeypatch.setattr(tokens, "_tokenizer", no_tokenizer)
    again = tokens.count_tokens(texts[::-1], cache=tokens.TokenCountCache(tmp_path))  # from disk
    assert again.tolist() == direct[::-1]
    with pytest.raises(AssertionError, match="tokenizer ran"):
        tokens.count_tokens(["a text nobody counted"], cache=tokens.TokenCountCache(tmp_path))


def test_embeddings_another_process_cached_meanwhile_are_read_not_recomputed(tmp_path,
                                                                              monkeypatch):
    """Two caches on one folder (two processes): what one embeds, the other reads under the
    folder's lock instead of embedding it again."""
    from prlib import embed

    texts = ["a question about prime numbers", "a recipe for bread"]
    mine, theirs = embed.EmbeddingCache(tmp_path), embed.EmbeddingCache(tmp_path)
    first = embed.embed_texts(texts, cache=theirs)  # the other process embeds them
    assert first.shape == (2, embed.DIM)

    def no_model(device="cpu"):
        raise AssertionError("embedded again although another process had cached the texts")

    monkeypatch.setattr(embed, "_model", no_model)
    np.testing.assert_array_equal(embed.embed_texts(texts[::-1], cache=mine), first[::-1])
    with pytest.raises(AssertionError, match="embedded again"):
        embed.embed_texts(["a text nobody embedded"], cache=mine)


def test_embedding_many_new_texts_shows_a_progress_bar(monkeypatch, capsys):
    """Hundreds of answers take minutes with MiniLM on a busy CPU: from embed.PROGRESS_FROM new
    texts on, a line and a bar (unless progress=False); cached texts do not count."""
    from prlib import embed

    seen = []

    def fake_encode(texts, encoder, device, batch_size, progress):
        seen.append((len(texts), progress))
        return np.ones((len(texts), embed.DIM), np.float32)

    monkeypatch.setattr(embed, "_encode", fake_encode)
    cache = embed.MemoryEmbeddingCache()
    many = [f"answer number {i}" for i in range(embed.PROGRESS_FROM)]
    embed.embed_texts(many[:10], cache=cache)
    assert seen[-1] == (10, False) and capsys.readouterr().err == ""
    embed.embed_texts(many, cache=cache)  # 10 of them cached: fewer new texts than the bar needs
    assert seen[-1] == (embed.PROGRESS_FROM - 10, False)
    embed.embed_texts(many + ["one more"] * 2 + [f"new {i}" for i in range(10)], cache=cache,
                      progress=False)
    assert seen[-1] == (11, False)
    embed.embed_texts([f"other answer {i}" for i in range(embed.PROGRESS_FROM)], cache=cache)
    assert seen[-1] == (embed.PROGRESS_FROM, True)
    assert f"embedding {embed.PROGRESS_FROM:,} new texts" in capsys.readouterr().err
    embed.embed_texts(["asked for"], cache=cache, progress=True)
    assert seen[-1] == (1, True)
