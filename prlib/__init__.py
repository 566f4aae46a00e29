"""prlib: a research workbook for personalized LLM routing.

Pipeline stages, one module each: ``data`` (real sources -> banks), ``llm`` (live generation and
judging), ``simulate`` (users), ``hetero_graph`` (v1's HeteroData), ``routers`` (ours + baselines),
``metrics`` / ``report`` (evaluation and figures).
"""

__version__ = "0.1.0"
