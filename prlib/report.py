"""Figures and tables, written only through these helpers.

Full runs write into ``figures/``; smoke runs into ``build/smoke-figures/`` (git-ignored), so CI
never overwrites the committed artefacts; ``folder=`` sends outputs anywhere else (your own
study). Names start with the notebook's number, e.g.
``00_quality_vs_cost``. Tables are written as CSV and Markdown side by side.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from prlib.config import RunConfig, resolve_config  # noqa: E402


def set_style() -> None:
    """The one plotting style of the workbook."""
    import seaborn as sns

    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind")
    plt.rcParams.update({"figure.dpi": 100, "savefig.dpi": 150, "savefig.bbox": "tight"})


def output_folder(cfg: RunConfig | None = None, folder: str | Path | None = None) -> Path:
    """Where outputs go: ``folder`` if given, else the run's figures folder (``figures/`` for a
    full run, ``build/smoke-figures/`` for a smoke run; without ``cfg``, as ``PRLIB_SMOKE``
    says). The folder is created."""
    if folder is not None:
        path = Path(folder)
    else:
        path = (cfg or resolve_config()).figures_dir
    path.mkdir(parents=True, exist_ok=True)
    return path


def save_figure(fig, name: str, cfg: RunConfig | None = None, *,
                folder: str | Path | None = None) -> Path:
    """Save ``fig`` as ``name.png`` and ``name.pdf`` into :func:`output_folder`; returns the
    PNG path."""
    png = output_folder(cfg, folder) / f"{name}.png"
    fig.savefig(png)
    fig.savefig(png.with_suffix(".pdf"))
    return png


def save_table(df: pd.DataFrame, name: str, cfg: RunConfig | None = None,
               floatfmt: str = ".3f", *, folder: str | Path | None = None) -> Path:
    """Save ``df`` as ``name.csv`` and ``name.md`` (GitHub Markdown) into
    :func:`output_folder`; returns the CSV path."""
    csv = output_folder(cfg, folder) / f"{name}.csv"
    df.to_csv(csv, index=False)
    csv.with_suffix(".md").write_text(to_markdown(df, floatfmt) + "\n")
    return csv


def save_text(text: str, name: str, cfg: RunConfig | None = None, *,
              folder: str | Path | None = None) -> Path:
    """Save a computed paragraph (e.g. a notebook's findings) as ``name.md`` into
    :func:`output_folder`, so the README can quote it (``<!-- text:NAME -->``); returns the
    path. Every number in such a text is formatted from results, never typed."""
    path = output_folder(cfg, folder) / f"{name}.md"
    path.write_text(text.strip() + "\n")
    return path


def to_markdown(df: pd.DataFrame, floatfmt: str = ".3f") -> str:
    """A Markdown table without the optional ``tabulate`` dependency."""
    def cell(v) -> str:
        if isinstance(v, (float, np.floating)):
            return "" if np.isnan(v) else format(v, floatfmt)
        return str(v).replace("|", "\\|")

    header = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    rows = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([header, rule, *rows])


def mean_std(values, fmt: str = ".3f") -> str:
    """``"m +- s"`` over seeds (std with ddof=0; just ``m`` for one value)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 1:
        return format(arr[0], fmt)
    return f"{format(arr.mean(), fmt)} ± {format(arr.std(), fmt)}"


_TABLE_BLOCK = (r"(<!-- (?P<kind>table|text):(?P<name>[\w\-]+) -->\n)(?P<body>.*?)"
                r"(<!-- /(?P=kind) -->)")


def sync_readme(readme: Path | None = None, figures: Path | None = None) -> list[str]:
    """Copy each ``figures/NAME.md`` table (or computed text) into the README block marked
    ``<!-- table:NAME -->`` ... ``<!-- /table -->`` (``text`` for prose); returns the names
    updated."""
    import re

    from prlib.config import REPO_ROOT

    readme = readme or REPO_ROOT / "README.md"
    figures = figures or REPO_ROOT / "figures"
    text = readme.read_text()
    updated = []

    def fill(m):
        table = (figures / f"{m['name']}.md").read_text()
        if table != m["body"]:
            updated.append(m["name"])
        return m.group(1) + table + m.group(5)

    readme.write_text(re.sub(_TABLE_BLOCK, fill, text, flags=re.S))
    return updated


def readme_tables(readme: Path) -> dict[str, str]:
    """The tables and computed texts the README shows, by name (for the test that they match
    ``figures/``)."""
    import re

    return {m["name"]: m["body"] for m in re.finditer(_TABLE_BLOCK, readme.read_text(), re.S)}


if __name__ == "__main__":
    print("README tables updated:", sync_readme() or "none (already in sync)")
