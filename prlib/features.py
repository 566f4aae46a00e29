"""Static node features of a bank: MiniLM embeddings of queries, tasks and LLMs.

==========  =============================================================================
query       MiniLM embedding of the query text + log input tokens, shape (n_queries, 385)
task        MiniLM embedding of the task's description paragraph, shape (n_tasks, 384)
llm         MiniLM embedding of the LLM's description + log prices, shape (n_llms, 386)
answer      MiniLM embedding of each LLM's answer text, shape (n_queries, n_llms, 384), only for
            banks with responses and when asked for (``answers=True``); zeros where no answer
==========  =============================================================================

Every router gets these (most use the query rows only); embeddings are cached on disk. Only a
cascade reads the answers (it calls an LLM, then reads the answer to decide whether to stop).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace

import numpy as np
import pandas as pd
import torch

from prlib.bank import Bank
from prlib.embed import embed_texts
from prlib.tokens import count_tokens


@dataclass
class NodeFeatures:
    """Static node features of a bank (embeddings), computed once and cached on disk."""

    query_ids: list[str]
    query_x: torch.Tensor  # (n_queries, 385)
    tasks: list[str]
    task_x: torch.Tensor  # (n_tasks, 384)
    llms: list[str]
    llm_x: torch.Tensor  # (n_llms, 386)
    answer_x: torch.Tensor | None = None  # (n_queries, n_llms, 384); None: no answer texts
    answer_ok: torch.Tensor | None = None  # (n_queries, n_llms) bool: an answer text exists

    @functools.cached_property
    def query_index(self) -> pd.Index:
        """``query_ids`` as an index (built once): the rows of :attr:`query_x`."""
        return pd.Index(self.query_ids)

    def with_llms(self, llms) -> "NodeFeatures":
        """The features over ``llms`` (a subset of this one's, in any order)."""
        missing = sorted(set(llms) - set(self.llms))
        if missing:
            raise KeyError(f"LLMs {missing} are not in the features ({self.llms})")
        idx = [self.llms.index(m) for m in llms]
        return replace(self, llms=list(llms), llm_x=self.llm_x[idx],
                       answer_x=None if self.answer_x is None else self.answer_x[:, idx],
                       answer_ok=None if self.answer_ok is None else self.answer_ok[:, idx])


def node_features(bank: Bank, progress: bool | None = None, answers: bool = False) -> NodeFeatures:
    """MiniLM embeddings of queries, task descriptions and LLM descriptions (+ token/price logs);
    with ``answers`` also of the bank's answer texts (when it has any). ``progress``: a bar per
    embedding call (``None``: when thousands of texts are new, ``prlib.embed.PROGRESS_FROM``)."""
    q = bank.queries
    q_emb = embed_texts(q["text"].tolist(), progress=progress)
    tokens = bank.bank.groupby("query_id")["input_tokens"].median().reindex(q["query_id"])
    q_extra = np.log1p(tokens.fillna(0).to_numpy())[:, None] / 10.0
    desc = bank.task_descriptions()
    tasks = sorted(desc)
    t_emb = embed_texts([desc[t] for t in tasks])
    l_emb = embed_texts(bank.llms["description"].tolist())
    prices = np.log1p(bank.llms[["input_usd_per_m", "output_usd_per_m"]].to_numpy(dtype=float))
    as_t = lambda a: torch.tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    answer_x = answer_ok = None
    if answers and bank.has_text:
        b = bank.bank[bank.bank["response"].notna()]
        i = pd.Index(q["query_id"]).get_indexer(b["query_id"])
        j = pd.Index(bank.llm_names).get_indexer(b["llm"])
        emb = np.zeros((len(q), len(bank.llm_names), q_emb.shape[1]), np.float32)
        emb[i, j] = embed_texts(b["response"].astype(str).tolist(), progress=progress)
        ok = np.zeros((len(q), len(bank.llm_names)), bool)
        ok[i, j] = True
        answer_x, answer_ok = torch.from_numpy(emb), torch.from_numpy(ok)
    return NodeFeatures(q["query_id"].tolist(), as_t(np.hstack([q_emb, q_extra])), tasks,
                        as_t(t_emb), bank.llm_names, as_t(np.hstack([l_emb, prices])),
                        answer_x, answer_ok)


def query_row(text: str, input_tokens: int | None = None, embedding_cache=None,
              token_cache=None) -> torch.Tensor:
    """Features of a new query (as in :func:`node_features`), shape (1, 385). The caches
    default to the disk caches; a server passes in-memory ones
    (:class:`~prlib.embed.MemoryEmbeddingCache`, :class:`~prlib.tokens.MemoryTokenCountCache`)."""
    return query_rows([text], None if input_tokens is None else [input_tokens],
                      embedding_cache, token_cache)


def query_rows(texts: list[str], input_tokens: list[int] | None = None, embedding_cache=None,
               token_cache=None) -> torch.Tensor:
    """:func:`query_row` of several new queries at once (one batch through the text
    encoder), shape (n, 385)."""
    texts = list(texts)
    tokens = (count_tokens(texts, cache=token_cache) if input_tokens is None
              else input_tokens)
    extra = np.log1p(np.asarray(tokens, dtype=float).reshape(-1, 1)) / 10.0
    return torch.tensor(np.hstack([embed_texts(texts, cache=embedding_cache), extra]),
                        dtype=torch.float32)


def llm_row(description: str, input_usd_per_m: float, output_usd_per_m: float) -> torch.Tensor:
    """Features of a new LLM (as in :func:`node_features`), shape (1, 386)."""
    prices = np.log1p([[input_usd_per_m, output_usd_per_m]])
    return torch.tensor(np.hstack([embed_texts([description]), prices]), dtype=torch.float32)
