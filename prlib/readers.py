"""Readers of the source files (JSON, JSON lines, records, judge scores) with errors that name
the file, the line and what to do."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterator

import numpy as np

from prlib.errors import MalformedFileError

DOWNLOAD_HINT = "python -m prlib.data download"


def read_jsonl(path: Path) -> Iterator[dict]:
    """Yield the JSON objects of a JSON-lines file; a bad line raises with file and line number."""
    with open(path, encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError as err:
                raise MalformedFileError(
                    f"{path}: line {number} is not valid JSON ({err.msg} at column {err.colno}). "
                    f"Restore the file from its source (`{DOWNLOAD_HINT}` checks every file)."
                ) from None


def read_json(path: Path):
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise MalformedFileError(f"{path}: not valid JSON ({err.msg} at line {err.lineno}). "
                                 f"Restore it with `{DOWNLOAD_HINT}`.") from None


def _field(record: dict, key: str, path: Path):
    try:
        return record[key]
    except KeyError:
        raise MalformedFileError(f"{path}: a record lacks the field {key!r} (it has "
                                 f"{sorted(record)}).") from None


def parse_judge_score(score) -> float:
    """A GPT-4 1-10 score mapped to [0, 1] as (s - 1) / 9; NaN when missing or unparseable."""
    try:
        s = float(score)
    except (TypeError, ValueError):
        return np.nan
    return (s - 1.0) / 9.0 if 1.0 <= s <= 10.0 else np.nan
