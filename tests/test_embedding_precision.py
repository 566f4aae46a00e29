"""MiniLM's arithmetic (``PRLIB_MINILM_PRECISION``): bf16 stays close to fp32, each precision
keeps its own cache, ``auto`` picks bf16 only on a CPU with bfloat16 instructions, and a smoke
run embeds in fp32 on every CPU."""
import numpy as np
import pytest

from prlib import config, embed
from prlib.config import MINILM_PRECISION_ENV, resolve_config

TEXTS = ["Explain the difference between a list and a tuple in Python.",
         "Write a haiku about routing requests to language models.",
         "The mitochondria is the powerhouse of the cell, " * 30,  # longer than MiniLM reads
         "def f(x):\n    return x ** 2\n\nprint(f(3))"]


def test_bf16_vectors_are_close_to_fp32_but_not_the_same(monkeypatch):
    monkeypatch.setenv(MINILM_PRECISION_ENV, "fp32")
    fp32 = embed.embed_texts(TEXTS, device="cpu", cache=embed.MemoryEmbeddingCache())
    monkeypatch.setenv(MINILM_PRECISION_ENV, "bf16")
    bf16 = embed.embed_texts(TEXTS, device="cpu", cache=embed.MemoryEmbeddingCache())
    assert bf16.dtype == np.float32 and bf16.shape == fp32.shape == (len(TEXTS), embed.DIM)
    np.testing.assert_allclose(np.linalg.norm(bf16, axis=1), 1.0, atol=1e-5)
    cosine = np.sum(fp32 * bf16, axis=1)
    assert cosine.min() > 0.999, cosine  # measured >= 0.9999 on 256 arena-bench answers
    assert np.abs(fp32 - bf16).max() > 1e-6  # bf16 did run: autocast was on


def test_each_precision_has_its_own_cache_folder(monkeypatch, tmp_path):
    monkeypatch.setattr(embed, "cache_dir", lambda: tmp_path)
    monkeypatch.setenv(MINILM_PRECISION_ENV, "bf16")
    bf16 = embed.embed_texts(TEXTS[:2], device="cpu")
    monkeypatch.setenv(MINILM_PRECISION_ENV, "fp32")
    fp32 = embed.embed_texts(TEXTS[:2], device="cpu")  # not read from the bf16 cache
    assert np.abs(fp32 - bf16).max() > 1e-6
    assert list((tmp_path / "embeddings-bf16").glob("*.npz"))
    assert list((tmp_path / "embeddings").glob("*.npz"))


@pytest.fixture
def full_run(monkeypatch):
    """Neither the environment nor a smoke run chooses the precision (``make test`` sets
    ``PRLIB_SMOKE=1``, the conftest ``PRLIB_MINILM_PRECISION=fp32``)."""
    monkeypatch.delenv(MINILM_PRECISION_ENV, raising=False)
    monkeypatch.delenv("PRLIB_SMOKE", raising=False)
    monkeypatch.setattr(config, "_SMOKE_RUN", False)


def test_auto_picks_bf16_only_on_a_cpu_with_bfloat16_instructions(monkeypatch, full_run):
    monkeypatch.setattr(embed, "cpu_has_bf16", lambda: True)
    assert embed.minilm_precision("cpu") == "bf16"
    assert embed.minilm_precision("cuda") == "fp32"
    monkeypatch.setattr(embed, "cpu_has_bf16", lambda: False)  # AVX2 or AVX-512 without bf16
    assert embed.minilm_precision("cpu") == "fp32"
    monkeypatch.setenv(MINILM_PRECISION_ENV, "fp32")
    monkeypatch.setattr(embed, "cpu_has_bf16", lambda: True)
    assert embed.minilm_precision("cpu") == "fp32"  # the environment's choice wins


def test_an_unknown_precision_is_refused_with_the_choices(monkeypatch):
    monkeypatch.setenv(MINILM_PRECISION_ENV, "fp16")
    with pytest.raises(ValueError, match="use one of .*fp32.*bf16"):
        embed.embed_texts(TEXTS[:1], cache=embed.MemoryEmbeddingCache())


def test_a_smoke_run_embeds_in_fp32_and_the_next_full_configuration_does_not(monkeypatch,
                                                                               full_run):
    monkeypatch.setattr(embed, "cpu_has_bf16", lambda: True)
    resolve_config(smoke=True)
    assert embed.minilm_precision("cpu") == "fp32"
    resolve_config(smoke=False)  # the same kernel, its configuration cell run again at full size
    assert embed.minilm_precision("cpu") == "bf16"
    monkeypatch.setenv("PRLIB_SMOKE", "1")  # CI's smoke runs, fit workers included
    assert embed.minilm_precision("cpu") == "fp32"
    monkeypatch.setenv(MINILM_PRECISION_ENV, "bf16")  # the environment's choice wins
    assert embed.minilm_precision("cpu") == "bf16"


def test_use_precision_overrides_the_environment_inside_its_block_only(monkeypatch):
    monkeypatch.setenv(MINILM_PRECISION_ENV, "bf16")
    with embed.use_precision("fp32"):
        assert embed.minilm_precision("cpu") == "fp32"
        fp32 = embed.embed_texts(TEXTS[:2], device="cpu", cache=embed.MemoryEmbeddingCache())
    assert embed.minilm_precision("cpu") == "bf16"
    monkeypatch.setenv(MINILM_PRECISION_ENV, "fp32")
    np.testing.assert_array_equal(
        fp32, embed.embed_texts(TEXTS[:2], device="cpu", cache=embed.MemoryEmbeddingCache()))
    with pytest.raises(ValueError, match="unknown precision"):
        with embed.use_precision("fp16"):
            pass
