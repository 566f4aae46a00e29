"""Sources: find, verify, download and load the real LLM data into banks.

The data folder is found from ``PRLIB_DATA_DIR``, then ``data/raw/`` in the repository, then
``../shared/data`` beside the repository. ``python -m prlib.data download`` fetches every file of
the registry (``prlib/resources/data_registry.json``, built from the shared ``MANIFEST.json``) from
its upstream repository at the pinned commit and checks its sha256.

Loaders turn each source into a :class:`prlib.bank.Bank`:

========================  =====================================================================
``llmrouter``             6,108 queries x 9 LLMs in 14 tasks; correctness as given
``arena-bench-v1``        300 prompts x 16 judged LLMs; GPT-4 1-10 score mapped to (s - 1) / 9
``arena-hard-v0.1``       500 prompts x 75 LLMs; response texts and token counts, no scores
``mt-bench``              80 two-turn conversations x 32 LLMs; texts of both turns, no scores
========================  =====================================================================
"""

from __future__ import annotations

import argparse
import difflib
import hashlib
import json
import os
import sys
import tempfile
import urllib.request
from functools import lru_cache
from pathlib import Path
from typing import Iterable

import numpy as np
import pandas as pd

from prlib.bank import BANK_COLUMNS, Bank, check_llm_names, cost_usd, describe_llm
from prlib.config import REPO_ROOT
from prlib.errors import (ChecksumError, DataError, DataNotFoundError,  # noqa: F401 (re-exported)
                          MalformedFileError, UnknownModelError)
from prlib.readers import (DOWNLOAD_HINT, _field, parse_judge_score, read_json,  # noqa: F401
                           read_jsonl)
from prlib.tokens import TOKENIZER_NOTE, count_tokens

ENV_VAR = "PRLIB_DATA_DIR"
RESOURCES = Path(__file__).resolve().parent / "resources"
REGISTRY_PATH = RESOURCES / "data_registry.json"
ALIASES_PATH = RESOURCES / "llm_aliases.csv"
BANK_NAMES = ("llmrouter", "arena-bench-v1", "arena-hard-v0.1", "mt-bench")
#: Output length assumed where a source has no responses (the PersonalizedRouter convention).
ASSUMED_OUTPUT_TOKENS = 512
#: arena-bench-v1 answers whose models the GPT-4 judge never scored (kept out of the bank).
UNJUDGED_ARENA_BENCH = ("vicuna-7b-v1.5", "vicuna-13b-v1.5")


# --------------------------------------------------------------------------- data folder
def candidate_data_dirs() -> list[tuple[str, Path | None]]:
    """The data folders looked at, in order, with a label saying where each comes from."""
    env = os.environ.get(ENV_VAR)
    return [
        (f"${ENV_VAR}", Path(env).expanduser() if env else None),
        ("data/raw/ in the repository", REPO_ROOT / "data" / "raw"),
        ("../shared/data beside the repository", REPO_ROOT.parent / "shared" / "data"),
    ]


def find_data_dir(required: str = "llmrouter/train.json") -> Path:
    """First candidate folder that holds ``required``; a clear error naming all three if none."""
    for _, path in candidate_data_dirs():
        if path is not None and (path / required).is_file():
            return path
    lines = [f"  - {label}: {path if path else '(not set)'}"
             for label, path in candidate_data_dirs()]
    raise DataNotFoundError(
        f"No data folder holds {required!r}. Looked in:\n" + "\n".join(lines)
        + f"\nSet {ENV_VAR} to a folder with the data, put the shared data beside the repository, "
        f"or fetch it with `{DOWNLOAD_HINT}` (writes into data/raw/)."
    )


# --------------------------------------------------------------------------- registry
def load_registry() -> list[dict]:
    """The registry of data files: file, repo, commit, path, license, bytes, sha256."""
    return json.loads(REGISTRY_PATH.read_text())


def build_registry(manifest: Path) -> list[dict]:
    """Rebuild the project's registry from a ``MANIFEST.json`` (metadata only)."""
    entries = json.loads(Path(manifest).read_text())
    keys = ["file", "repo", "commit", "path", "license", "bytes", "sha256"]
    registry = [{k: e[k] for k in keys} for e in entries]
    REGISTRY_PATH.write_text(json.dumps(registry, indent=1) + "\n")
    return registry


def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_file(path: Path, expected_sha256: str, name: str | None = None) -> None:
    """Raise :class:`ChecksumError` (name, expected, actual) unless ``path`` has that sha256."""
    actual = sha256_of(path)
    if actual != expected_sha256:
        raise ChecksumError(
            f"{name or path.name}: sha256 mismatch: expected {expected_sha256}, actual "
            f"{actual}. The file is corrupt or a different version; delete it and run "
            f"`{DOWNLOAD_HINT}` again."
        )


def verify_data_dir(root: Path | None = None, files: Iterable[str] | None = None) -> int:
    """Check the sha256 of every registry file present under ``root``; returns how many."""
    root = Path(root) if root else find_data_dir()
    wanted = set(files) if files is not None else None
    n = 0
    for entry in load_registry():
        if wanted is not None and entry["file"] not in wanted:
            continue
        path = root / entry["file"]
        if path.is_file():
            verify_file(path, entry["sha256"])
            n += 1
    return n


def upstream_url(entry: dict) -> str:
    return f"https://raw.githubusercontent.com/{entry['repo']}/{entry['commit']}/{entry['path']}"


def download(dest: Path | None = None, only: str | None = None,
             timeout: float = 60.0) -> list[Path]:
    """Fetch registry files (optionally those under ``only``) into ``dest`` and verify them.

    Files already present with the right sha256 are kept. Each file is written to a temporary name
    and renamed only after its checksum matches.
    """
    from tqdm.auto import tqdm

    dest = Path(dest) if dest else REPO_ROOT / "data" / "raw"
    entries = [e for e in load_registry() if only is None or e["file"].startswith(only)]
    written = []
    for entry in tqdm(entries, desc="download", unit="file"):
        target = dest / entry["file"]
        if target.is_file() and sha256_of(target) == entry["sha256"]:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=target.parent, delete=False) as tmp:
            with urllib.request.urlopen(upstream_url(entry), timeout=timeout) as response:
                tmp.write(response.read())
        try:
            verify_file(Path(tmp.name), entry["sha256"], name=entry["file"])
        except ChecksumError:
            os.unlink(tmp.name)
            raise
        os.replace(tmp.name, target)
        written.append(target)
    return written


# --------------------------------------------------------------------------- LLM aliases
@lru_cache(maxsize=1)
def load_aliases() -> pd.DataFrame:
    """The explicit alias table: source, source_name -> llm, family, size_b, price provenance."""
    return pd.read_csv(ALIASES_PATH, dtype={"price_key": str, "note": str})


def resolve_llms(source: str, names: Iterable[str], root: Path) -> pd.DataFrame:
    """The ``llms`` table for ``names`` of ``source``: canonical names, families, sizes, prices.

    Prices come from the price sheet (``price_source == 'price-sheet'``), the source's own file
    (``llmrouter``), or a stated assumption carried in the alias table's ``note``.
    """
    names = list(names)
    table = load_aliases()
    known_sources = sorted(table["source"].unique())
    if source not in known_sources:
        raise UnknownModelError(
            f"unknown source {source!r}: the alias table knows the models of the sources "
            f"{known_sources} only. For models of your own, pass an LLM table (columns llm, "
            "input_usd_per_m, output_usd_per_m, description) to Bank.from_frame(...).")
    table = table[table["source"] == source].set_index("source_name")
    check_llm_names(names, table.index)
    sheet = None
    rows = []
    for name in names:
        alias = table.loc[name]
        kind = alias["price_source"]
        if kind == "price-sheet":
            if sheet is None:
                sheet = read_json(root / "prices" / "model_prices_and_context_window.json")
            if alias["price_key"] not in sheet:
                raise UnknownModelError(f"alias table names price-sheet key {alias['price_key']!r} "
                                        f"for {name!r}, but the price sheet has no such key")
            price = sheet[alias["price_key"]]
            usd_in = price["input_cost_per_token"] * 1e6
            usd_out = price["output_cost_per_token"] * 1e6
        elif kind in ("llmrouter", "personalizedrouter"):
            own = _own_llm_file(kind, root)[name]
            usd_in, usd_out = float(own["input_price"]), float(own["output_price"])
        elif kind == "assumption":
            usd_in, usd_out = float(alias["input_usd_per_m"]), float(alias["output_usd_per_m"])
        else:
            raise MalformedFileError(f"{ALIASES_PATH}: unknown price_source {kind!r} for {name!r}")
        rows.append({"llm": alias["llm"], "source_name": name, "family": alias["family"],
                     "size_b": float(alias["size_b"]) if pd.notna(alias["size_b"]) else np.nan,
                     "input_usd_per_m": float(usd_in), "output_usd_per_m": float(usd_out),
                     "price_source": kind,
                     "price_key": alias["price_key"] if pd.notna(alias["price_key"]) else "",
                     "price_note": alias["note"] if pd.notna(alias["note"]) else ""})
    llms = pd.DataFrame(rows)
    llms["description"] = [_describe(r, source, root) for r in llms.itertuples()]
    return llms


def _own_llm_file(kind: str, root: Path) -> dict:
    path = {"llmrouter": root / "llmrouter" / "default_llm.json",
            "personalizedrouter": root / "personalizedrouter" / "LLM_Descriptions_v1.json"}[kind]
    return read_json(path)


def _describe(row, source: str, root: Path) -> str:
    """The LLM's description text: the source's own where it has one, else a factual template."""
    if source in ("llmrouter", "personalizedrouter"):
        return " ".join(str(_own_llm_file(source, root)[row.source_name]["feature"]).split())
    return describe_llm(row.llm, row.family, row.size_b, row.input_usd_per_m, row.output_usd_per_m)


# --------------------------------------------------------------------------- loaders
def load_llmrouter(root: Path) -> Bank:
    """LLMRouter multi-task: 6,108 queries x 9 LLMs, 14 tasks, correctness as given."""
    base = root / "llmrouter"
    task_of: dict[str, str] = {}
    ambiguous = 0
    for split in ("train", "test"):
        for rec in read_jsonl(base / f"default_query_{split}.jsonl"):
            text, task = _field(rec, "query", base), _field(rec, "task_name", base)
            if task_of.setdefault(text, task) != task:
                ambiguous += 1
    queries, rows = [], []
    for split in ("train", "test"):
        path = base / f"{split}.json"
        for i, rec in enumerate(read_json(path)):
            qid = f"{split}-{i:05d}"
            text = _field(rec, "question", path)
            if text not in task_of:
                raise MalformedFileError(f"{path}: question {i} has no task in "
                                         f"default_query_{{train,test}}.jsonl")
            queries.append({"query_id": qid, "task": task_of[text], "text": text, "turns": 1,
                            "split": split})
            for name, score in _field(rec, "scores", path).items():
                rows.append({"query_id": qid, "source_name": name, "quality": float(score)})
    queries = pd.DataFrame(queries)
    bank = pd.DataFrame(rows)
    llms = resolve_llms("llmrouter", sorted(bank["source_name"].unique()), root)
    bank = _finish_bank(bank, queries, llms)
    bank["input_tokens"] = bank["query_id"].map(dict(zip(queries["query_id"],
                                                         count_tokens(queries["text"]))))
    bank["output_tokens"] = ASSUMED_OUTPUT_TOKENS
    bank["cost_usd"] = cost_usd(bank, llms)
    bank = bank[BANK_COLUMNS]
    meta = {"source": "ulab-uiuc/LLMRouter", "quality": "correctness / metric score as given",
            "input_tokens": TOKENIZER_NOTE,
            "output_tokens": f"assumed {ASSUMED_OUTPUT_TOKENS} per answer (the source has no "
                             "responses; PersonalizedRouter's convention)",
            "task_join": f"task joined on question text; {ambiguous} texts listed under two tasks "
                         "(first kept)"}
    return Bank("llmrouter", queries, llms.drop(columns="source_name"), bank, meta)


def _finish_bank(bank: pd.DataFrame, queries: pd.DataFrame, llms: pd.DataFrame) -> pd.DataFrame:
    """Map source names to canonical names and add the task column."""
    canon = dict(zip(llms["source_name"], llms["llm"]))
    bank = bank.assign(llm=bank.pop("source_name").map(canon))
    bank.insert(1, "task", bank["query_id"].map(dict(zip(queries["query_id"], queries["task"]))))
    return bank


def _single_turn_prompts(path: Path) -> pd.DataFrame:
    rows = []
    for rec in read_jsonl(path):
        turns = _field(rec, "turns", path)
        text = turns[0]["content"] if isinstance(turns[0], dict) else turns[0]
        rows.append({"query_id": str(_field(rec, "question_id", path)),
                     "task": rec.get("cluster") or rec.get("category") or path.parent.name,
                     "text": text, "turns": len(turns)})
    return pd.DataFrame(rows)


def _answers(folder: Path, names: list[str]) -> pd.DataFrame:
    """One row per (question, model file): the answer text of every turn and its token_len."""
    rows = []
    for name in names:
        path = folder / f"{name}.jsonl"
        for rec in read_jsonl(path):
            turns = _field(rec, "choices", path)[0]["turns"]
            texts = [t["content"] if isinstance(t, dict) else t for t in turns]
            lens = [t.get("token_len") if isinstance(t, dict) else None for t in turns]
            rows.append({"query_id": str(_field(rec, "question_id", path)), "source_name": name,
                         "response_turns": texts,
                         "token_len": sum(lens) if all(x is not None for x in lens) else None})
    return pd.DataFrame(rows)


def load_arena_bench(root: Path) -> Bank:
    """arena-bench-v1: 300 prompts, answers of the 16 GPT-4-judged LLMs, quality (s - 1) / 9."""
    base = root / "arena-bench-v1"
    queries = _single_turn_prompts(base / "question.jsonl")
    scores, unparseable = {}, 0
    for path in sorted((base / "model_judgment").glob("*.jsonl")):
        for rec in read_jsonl(path):
            model = str(_field(rec, "model", path)).split("/")[-1]  # the field, not the file name
            q = parse_judge_score(rec.get("score"))
            unparseable += int(np.isnan(q))
            scores[(str(_field(rec, "question_id", path)), model)] = q
    judged = sorted({m for _, m in scores})
    answered = sorted(p.stem for p in (base / "model_answer").glob("*.jsonl"))
    names = [m for m in answered if m in judged]
    answers = _answers(base / "model_answer", names)
    answers["quality"] = [scores.get((q, m), np.nan) for q, m in
                          zip(answers["query_id"], answers["source_name"])]
    llms = resolve_llms("arena-bench-v1", names, root)
    bank = _text_bank(answers, queries, llms)
    meta = {"source": "lmarena/arena-hard-auto (arena-bench-v1)",
            "quality": "GPT-4 judge score s in 1..10 mapped to (s - 1) / 9",
            "quality_missing": int(bank["quality"].isna().sum()),
            "quality_missing_note": f"{unparseable} judge scores missing or unparseable: kept as "
                                    "NaN, never guessed",
            "excluded_llms": [m for m in answered if m not in judged],
            "input_tokens": TOKENIZER_NOTE, "output_tokens": TOKENIZER_NOTE}
    return Bank("arena-bench-v1", queries, llms.drop(columns="source_name"), bank, meta)


def _text_bank(answers: pd.DataFrame, queries: pd.DataFrame, llms: pd.DataFrame,
               turn_texts: dict[str, list[str]] | None = None) -> pd.DataFrame:
    """Bank rows from answers: response text, token counts (source's or counted), cost."""
    bank = _finish_bank(answers, queries, llms)
    prompts = dict(zip(queries["query_id"], queries["text"]))
    if turn_texts is None:
        per_query = dict(zip(prompts, count_tokens(prompts.values())))
        bank["input_tokens"] = bank["query_id"].map(per_query)
    else:  # each turn re-sends the conversation so far
        contexts = []
        for qid, replies in zip(bank["query_id"], bank["response_turns"]):
            users = turn_texts[qid]
            contexts.append(" ".join(" ".join(users[: t + 1] + list(replies[:t]))
                                     for t in range(len(users))))
        bank["input_tokens"] = count_tokens(contexts)
    given = bank.pop("token_len").to_numpy(dtype=float, copy=True)
    missing = np.flatnonzero(np.isnan(given))  # count only where the source gives no token_len
    given[missing] = count_tokens("\n\n".join(bank["response_turns"].iloc[i]) for i in missing)
    bank["output_tokens"] = given.astype(np.int64)
    bank["response"] = ["\n\n".join(t) for t in bank["response_turns"]]
    if turn_texts is None:
        bank = bank.drop(columns="response_turns")
    bank["cost_usd"] = cost_usd(bank, llms)
    if "quality" not in bank:
        bank["quality"] = np.nan
    cols = ["query_id", "task", "llm", "quality", "input_tokens", "output_tokens", "cost_usd",
            "response"] + (["response_turns"] if turn_texts is not None else [])
    return bank[cols].reset_index(drop=True)


def load_arena_hard(root: Path) -> Bank:
    """arena-hard-v0.1: 500 hard prompts (task = topic cluster), 75 LLMs, texts, no scores."""
    base = root / "arena-hard-v0.1"
    queries = _single_turn_prompts(base / "question.jsonl")
    names = sorted(p.stem for p in (base / "model_answer").glob("*.jsonl"))
    answers = _answers(base / "model_answer", names)
    llms = resolve_llms("arena-hard-v0.1", names, root)
    bank = _text_bank(answers, queries, llms)
    meta = {"source": "meltemi-ai/arena-hard-auto-english (arena-hard-v0.1)",
            "quality": "none: the source has no absolute scores (quality is NaN)",
            "input_tokens": TOKENIZER_NOTE, "output_tokens": "the source's token_len",
            "missing_answers": int(len(queries) * len(names) - len(bank))}
    return Bank("arena-hard-v0.1", queries, llms.drop(columns="source_name"), bank, meta)


def load_mt_bench(root: Path) -> Bank:
    """MT-Bench: 80 two-turn conversations (task = category) x 32 LLMs, texts, no scores."""
    base = root / "mt-bench"
    path = base / "question.jsonl"
    recs = list(read_jsonl(path))
    turn_texts = {str(_field(r, "question_id", path)): list(_field(r, "turns", path)) for r in recs}
    queries = pd.DataFrame({"query_id": list(turn_texts), "task": [r["category"] for r in recs],
                            "text": [t[0] for t in turn_texts.values()],
                            "turns": [len(t) for t in turn_texts.values()],
                            "turn_texts": list(turn_texts.values())})
    names = sorted(p.stem for p in (base / "model_answer").glob("*.jsonl"))
    answers = _answers(base / "model_answer", names)
    llms = resolve_llms("mt-bench", names, root)
    bank = _text_bank(answers, queries, llms, turn_texts=turn_texts)
    meta = {"source": "ku-nlp/ja-vicuna-qa-benchmark (original MT-Bench answers)",
            "quality": "none: the source has no scores (quality is NaN)",
            "input_tokens": TOKENIZER_NOTE + "; each turn re-sends the conversation so far",
            "output_tokens": TOKENIZER_NOTE + "; both turns"}
    return Bank("mt-bench", queries, llms.drop(columns="source_name"), bank, meta)


_LOADERS = {"llmrouter": load_llmrouter, "arena-bench-v1": load_arena_bench,
            "arena-hard-v0.1": load_arena_hard, "mt-bench": load_mt_bench}


@lru_cache(maxsize=8)
def _load_cached(name: str, root: str) -> Bank:
    return _LOADERS[name](Path(root))


def load_bank(name: str, root: Path | None = None) -> Bank:
    """Load a real bank by name (one of :data:`BANK_NAMES`); cached per process."""
    if name not in _LOADERS:
        close = difflib.get_close_matches(name, BANK_NAMES, n=2, cutoff=0.3)
        raise KeyError(f"unknown bank {name!r}; known banks: {list(BANK_NAMES)}"
                       + (f" (did you mean {close[0]!r}?)" if close else ""))
    root = Path(root) if root else find_data_dir(f"{name}/" + _MARKER[name])
    bank = _load_cached(name, str(root))
    return Bank(bank.name, bank.queries.copy(), bank.llms.copy(), bank.bank.copy(),
                dict(bank.meta))


_MARKER = {"llmrouter": "train.json", "arena-bench-v1": "question.jsonl",
           "arena-hard-v0.1": "question.jsonl", "mt-bench": "question.jsonl"}


def load_personalizedrouter_queries(root: Path | None = None) -> pd.DataFrame:
    """The PersonalizedRouter paper's 240 queries with ground truth, metric, task description."""
    root = Path(root) if root else find_data_dir("personalizedrouter/unified_qa_data.csv")
    df = pd.read_csv(root / "personalizedrouter" / "unified_qa_data.csv")
    df["query_id"] = df["task_id"] + "-" + df.groupby("task_id").cumcount().map("{:03d}".format)
    df = df.rename(columns={"task_id": "task", "query": "text"}).assign(turns=1)
    return df[["query_id", "task", "text", "turns", "ground_truth", "metric", "task_description"]]


def load_personalizedrouter_llms(root: Path | None = None) -> pd.DataFrame:
    """The PersonalizedRouter paper's 10 candidate LLMs in the ``llms`` schema."""
    root = Path(root) if root else find_data_dir("personalizedrouter/LLM_Descriptions_v1.json")
    names = list(_own_llm_file("personalizedrouter", root))
    return resolve_llms("personalizedrouter", names, root)


# --------------------------------------------------------------------------- CLI
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prlib.data",
                                     description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="cmd", required=True)
    d = sub.add_parser("download", help="fetch the data files from upstream and verify sha256")
    d.add_argument("--dest", type=Path, default=None, help="target folder (default data/raw/)")
    d.add_argument("--only", default=None, help="only files under this folder, e.g. llmrouter")
    v = sub.add_parser("verify", help="check the sha256 of every data file present")
    v.add_argument("--root", type=Path, default=None)
    r = sub.add_parser("build-registry", help="rebuild the registry from a MANIFEST.json")
    r.add_argument("manifest", type=Path)
    args = parser.parse_args(argv)
    try:
        if args.cmd == "download":
            written = download(args.dest, args.only)
            print(f"downloaded and verified {len(written)} files")
        elif args.cmd == "verify":
            print(f"verified {verify_data_dir(args.root)} files")
        else:
            print(f"registry: {len(build_registry(args.manifest))} files -> {REGISTRY_PATH}")
    except DataError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
