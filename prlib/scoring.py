"""Task metrics: score one response against its reference, as a float in [0, 1].

Pure functions, one per metric, and :func:`score`, which dispatches on the metric names of the
PersonalizedRouter query set (``f1_score``, ``GSM8K``) and the LLMRouter query sets (``em_mc``,
``f1_score``, ``MATH``, ``GSM8K``, ``commongen_coverage``, ``code_eval``).
"""

from __future__ import annotations

import ast
import math
import re
import string
from collections import Counter
from typing import Any, Callable

LETTERS = "ABCDE"
_NUMBER = re.compile(r"-?\d+(?:\.\d+)?")


# --------------------------------------------------------------------------- token F1
def normalize_text(text: str) -> str:
    """SQuAD normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in str(text).lower() if ch not in string.punctuation)
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def token_f1(pred: str, ref: str) -> float:
    """Token-level F1 of normalised ``pred`` against ``ref`` (SQuAD style; 1.0 when both empty)."""
    p, r = normalize_text(pred).split(), normalize_text(ref).split()
    if not p or not r:
        return float(p == r)
    overlap = sum((Counter(p) & Counter(r)).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / len(p), overlap / len(r)
    return 2 * precision * recall / (precision + recall)


# --------------------------------------------------------------------------- numbers
def last_boxed(text: str) -> str | None:
    r"""Content of the last ``\boxed{...}`` (nested braces allowed), or None."""
    start = text.rfind("\\boxed")
    if start < 0:
        return None
    i = text.find("{", start)
    if i < 0:
        return None
    depth = 0
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def extract_number(text: str) -> float | None:
    r"""The answer number of ``text``: after the last ``####`` (GSM8K references), else inside the
    last ``\boxed{}``, else the last number; thousands commas and ``$`` are ignored."""
    text = str(text)
    if "####" in text:
        text = text.rsplit("####", 1)[1]
    else:
        text = last_boxed(text) or text
    text = re.sub(r"(?<=\d),(?=\d{3}\b)", "", text.replace("$", ""))
    found = _NUMBER.findall(text)
    return float(found[-1]) if found else None


def _same_number(a: float | None, b: float | None) -> bool:
    return a is not None and b is not None and math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-9)


def exact_match_number(pred: str, ref: str) -> float:
    """1.0 when the answer numbers of ``pred`` and ``ref`` agree (see :func:`extract_number`)."""
    return float(_same_number(extract_number(pred), extract_number(ref)))


# --------------------------------------------------------------------------- MATH
def normalize_math(expr: str) -> str:
    """Canonical string of a LaTeX answer: no ``$``, spaces, ``\\left``/``\\right``, degrees,
    ``\\text{}`` wrappers or trailing period; ``\\dfrac``/``\\tfrac`` -> ``\\frac``."""
    s = str(expr).strip()
    s = re.sub(r"\\text\{([^{}]*)\}", r"\1", s)
    for old, new in [("\\dfrac", "\\frac"), ("\\tfrac", "\\frac"), ("\\left", ""),
                     ("\\right", ""), ("^\\circ", ""), ("^{\\circ}", ""), ("\\!", ""),
                     ("\\,", ""), ("$", "")]:
        s = s.replace(old, new)
    s = re.sub(r"\s+", "", s).rstrip(".")
    return re.sub(r"(?<=\d),(?=\d{3}\b)", "", s)


def _math_value(s: str) -> float | None:
    frac = re.fullmatch(r"(-?)\\frac\{?(\d+)\}?\{?(\d+)\}?", s)
    if frac and int(frac.group(3)) != 0:
        return (-1 if frac.group(1) else 1) * int(frac.group(2)) / int(frac.group(3))
    try:
        return float(s)
    except ValueError:
        return None


def math_equiv(pred: str, ref: str) -> float:
    r"""1.0 when the last ``\boxed{}`` answer of ``pred`` equals that of ``ref`` (``ref`` may be a
    bare answer) after :func:`normalize_math`, numerically where both are numbers or simple
    fractions. Without a boxed answer in ``pred``, its last number is compared to a numeric ref."""
    ref_ans = normalize_math(last_boxed(str(ref)) or ref)
    boxed = last_boxed(str(pred))
    if boxed is None:
        return float(_same_number(extract_number(pred), _math_value(ref_ans)))
    pred_ans = normalize_math(boxed)
    return float(pred_ans == ref_ans or _same_number(_math_value(pred_ans), _math_value(ref_ans)))


# --------------------------------------------------------------------------- multiple choice
def parse_choices(choices: Any) -> tuple[list[str], list[str]]:
    """(labels, texts) of a choices field: a dict with ``text`` and ``label``/``labels``, a list
    of texts (labelled A, B, ...), or the Python-literal string of either; ([], []) if absent."""
    if choices is None or (isinstance(choices, float) and math.isnan(choices)):
        return [], []
    if isinstance(choices, str):
        try:
            choices = ast.literal_eval(choices)
        except (ValueError, SyntaxError):
            return [], []
    if isinstance(choices, dict):
        texts = [str(t) for t in choices.get("text", [])]
        labels = [str(l) for l in choices.get("label", choices.get("labels", []))]
        return labels or list(LETTERS[:len(texts)]), texts
    if isinstance(choices, (list, tuple)):
        texts = [str(t) for t in choices]
        return list(LETTERS[:len(texts)]), texts
    return [], []


def extract_letter(pred: str, labels: str = LETTERS) -> str | None:
    """The chosen option letter of ``pred``: "answer is (B)", "Answer: B", "(B)", a leading
    "B." / "B)", or a bare "B"; None when absent or ambiguous."""
    cls = f"[{re.escape(labels)}]"
    text = str(pred).strip().replace("*", "")
    patterns = [rf"(?i:answer|option|choice)\s*(?i:is)?\s*[:=]?\s*\(?({cls})\)?(?![A-Za-z])",
                rf"\(({cls})\)", rf"^({cls})(?:[.):]|\s|$)"]
    for pattern in patterns:
        found = set(re.findall(pattern, text))
        if len(found) == 1:
            return found.pop()
    return None


def multiple_choice(pred: str, ref: str, choices: Any = None) -> float:
    """1.0 when ``pred`` picks the option ``ref`` names. ``ref`` is a letter, or an option's text
    when ``choices`` are given. Without a letter in ``pred``, an option text that ``pred``
    contains (exactly one, case-insensitive) counts as the pick."""
    labels, texts = parse_choices(choices)
    ref = str(ref).strip()
    if ref not in labels and ref in texts:
        ref = labels[texts.index(ref)]
    letter = extract_letter(pred, "".join(labels) or LETTERS)
    if letter is None and texts:
        hits = [l for l, t in zip(labels, texts) if t and t.lower() in str(pred).lower()]
        letter = hits[0] if len(hits) == 1 else None
    return float(letter is not None and letter == ref)


# --------------------------------------------------------------------------- CommonGen
def _forms(word: str) -> set[str]:
    forms = {word, word + "s", word + "es", word + "ed", word + "d", word + "ing", word + "er",
             word + "ers", word + word[-1:] + "ed", word + word[-1:] + "ing"}
    if word.endswith("e"):
        forms.add(word[:-1] + "ing")
    if word.endswith("y"):
        forms |= {word[:-1] + "ies", word[:-1] + "ied"}
    return forms


def concept_coverage(pred: str, ref: str) -> float:
    """CommonGen coverage: share of the comma-separated concepts of ``ref`` that ``pred`` uses
    (as the word or a regular inflection: -s, -es, -ed, -ing, -er)."""
    concepts = [c.strip().lower() for c in str(ref).split(",") if c.strip()]
    if not concepts:
        return 0.0
    words = set(re.findall(r"[a-z]+", str(pred).lower()))
    return sum(bool(_forms(c) & words) for c in concepts) / len(concepts)


# --------------------------------------------------------------------------- dispatch
def not_scored(pred: str, ref: str) -> float:
    """NaN, meaning "not scored": ``code_eval`` would need to execute model-written code against
    the reference tests, which prlib never does."""
    return math.nan


METRICS: dict[str, Callable[[str, str], float]] = {
    "f1_score": token_f1,
    "GSM8K": exact_match_number,
    "em_mc": multiple_choice,
    "MATH": math_equiv,
    "commongen_coverage": concept_coverage,
    "code_eval": not_scored,
}


def score(metric_name: str, pred: str, ref: str, choices: Any = None) -> float:
    """Score ``pred`` against ``ref`` with the metric ``metric_name``: a float in [0, 1], or NaN
    for ``code_eval`` (model code is never executed; such answers count as not scored)."""
    if metric_name not in METRICS:
        raise ValueError(f"unknown metric {metric_name!r}; known metrics: {sorted(METRICS)}")
    if metric_name == "em_mc":
        return multiple_choice(pred, ref, choices)
    return METRICS[metric_name](pred, ref)
