"""Shared fixtures. Tests run on the real shared data (found like the notebooks find it)."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("TQDM_DISABLE", "1")

import sys  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

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
