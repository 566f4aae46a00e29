"""Shared fixtures. Tests run on the real shared data (found like the notebooks find it)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")
# MiniLM in fp32 on every CPU (the default picks bf16 where the CPU has it): tests that embed
# see the same vectors everywhere; tests/test_embedding_precision.py checks bf16 itself
os.environ.setdefault("PRLIB_MINILM_PRECISION", "fp32")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread_per_test_process():
    """Two test workers share two cores with the notebooks' own fit processes: a torch process
    with several intra-op threads then spins against them (a v1 fit measured 10x slower in a
    full run than alone). Each test process computes with one thread; the notebooks' kernels
    keep their own settings (their fits already run on one thread each)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def fits_are_not_read_from_the_fit_cache(monkeypatch):
    """Every test fits its routers (``PRLIB_FIT_CACHE=0``): a router a test monkeypatches is
    not part of a fit cache key, so a stored row could hide the bug the test plants. (The
    notebooks' smoke runs keep the cache; tests/test_experiment.py tests it.)"""
    monkeypatch.setenv("PRLIB_FIT_CACHE", "0")


# the serve harness (a background server, the load test) lives with the benchmarks that use it
sys.path.append(str(Path(__file__).resolve().parent.parent / "benchmarks"))


@pytest.fixture(scope="session")
def data_dir():
    from prlib.data import find_data_dir

    return find_data_dir()


@pytest.fixture(scope="session")
def llmrouter_bank(data_dir):
    from prlib.data import load_bank

    return load_bank("llmrouter")


@pytest.fixture(scope="session")
def arena_bench_bank(data_dir):
    from prlib.data import load_bank

    return load_bank("arena-bench-v1")
