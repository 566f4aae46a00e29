"""Figures and tables, written only through these helpers.

Full runs write into ``figures/``; smoke runs into ``build/smoke-figures/`` (git-ignored), so CI
never overwrites the committed artefacts; ``folder=`` sends outputs anywhere else (your own
study). Names start with the notebook's number, e.g.
``00_quality_vs_cost``. Tables are written as CSV and Markdown side by side.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from prlib.config import RunConfig, resolve_config  # noqa: E402
from prlib.metrics import paired_difference  # noqa: E402


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
    :func:`output_folder`; returns the CSV path. Routers not run (``df.attrs["not_run"]``, as
    :func:`~prlib.experiment.run_setting` leaves them) are kept beside the CSV in
    ``name.not_run.json`` ({"not_run": {router: reason}, "not_run_family": {router: family}})
    and listed under the Markdown table."""
    import json

    csv = output_folder(cfg, folder) / f"{name}.csv"
    df.to_csv(csv, index=False)
    not_run = dict(df.attrs.get("not_run") or {})
    notes = "".join(f"\n\nNot run: {r}: {why}" for r, why in not_run.items())
    csv.with_suffix(".md").write_text(to_markdown(df, floatfmt) + notes + "\n")
    sidecar = csv.with_suffix(".not_run.json")
    if not_run:
        sidecar.write_text(json.dumps({"not_run": not_run, "not_run_family": dict(
            df.attrs.get("not_run_family") or {})}, indent=1) + "\n")
    elif sidecar.exists():  # an earlier save of this name had some
        sidecar.unlink()
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


# ------------------------------------------------------------------ results tables and prose
#: The family of oracles and ceilings (they read test labels).
UPPER_BOUND = "upper bound"
#: Families left out of "strongest" and "best": upper bounds and references told the
#: simulator's form (:data:`prlib.routers.base.NOT_COMPETING`).
NOT_COMPETING = (UPPER_BOUND, "reference")


def seeds_text(seeds) -> str:
    """``"110-114"`` for seeds that make a range, else the seeds listed (``"3, 5, 9"``)."""
    seeds = sorted(seeds)
    return (f"{seeds[0]}-{seeds[-1]}" if seeds == list(range(seeds[0], seeds[-1] + 1))
            else ", ".join(map(str, seeds)))


def ci_verdict(d: dict) -> str:
    """A paired difference's verdict from its 95 % CI (:func:`prlib.metrics.paired_difference`):
    ``"better"`` (CI above 0), ``"worse"`` (below 0), ``"tie"``, or ``"one seed: no interval"``."""
    if not np.isfinite(d["ci_low"]):
        return "one seed: no interval"
    return "better" if d["ci_low"] > 0 else "worse" if d["ci_high"] < 0 else "tie"


def results_table(results: pd.DataFrame, metrics: Sequence[str],
                  fmt: str | Mapping[str, str] = ".3f", sort_by: str | None = None,
                  mark: str | None = None) -> pd.DataFrame:
    """Mean ± std over seeds per router (:func:`prlib.report.mean_std`), one column per metric.

    ``fmt``: one format, or one per metric (default ``.3f``). Rows keep the order of first
    appearance, or descend by the mean of ``sort_by``. With ``mark`` (a metric), a ``best``
    column flags the best router on it, upper bounds excluded.
    """
    fmts = fmt if isinstance(fmt, Mapping) else {}
    default = ".3f" if isinstance(fmt, Mapping) else fmt
    order = list(dict.fromkeys(results["router"]))
    g = results.groupby("router", sort=False)
    if sort_by is not None:
        order = g[sort_by].mean().sort_values(ascending=False).index.tolist()
    out = pd.DataFrame({"router": order,
                        "family": [results.loc[results["router"] == r, "family"].iloc[0]
                                   for r in order]})
    for m in metrics:
        out[m] = [mean_std(g.get_group(r)[m].to_numpy(), fmts.get(m, default)) for r in order]
    out["seeds"] = [g.get_group(r)["seed"].nunique() for r in order]
    if "picks_hash" in results:
        out["same_picks_as"] = [", ".join(same_picks(results).get(r, [])) for r in order]
    if mark is not None:
        best = strongest(results, mark)
        out["best"] = np.where(out["router"] == best, "best (excl. oracle)", "")
    for name, reason in results.attrs.get("not_run", {}).items():
        row = {c: "" for c in out.columns}
        family = results.attrs.get("not_run_family", {}).get(name, "")
        row.update({"router": name, "family": family,
                    metrics[0]: f"not run: {reason}", "seeds": 0})
        out = pd.concat([out, pd.DataFrame([row])], ignore_index=True)
    return out


def same_picks(results: pd.DataFrame) -> dict[str, list[str]]:
    """For each router, the routers that made exactly the same test picks on every seed (the
    same router in effect, whatever its name)."""
    sig = results.sort_values("seed").groupby("router", sort=False)["picks_hash"].agg(tuple)
    out = {}
    for r, h in sig.items():
        out[r] = [o for o, ho in sig.items() if o != r and ho == h]
    return out


def strongest(results: pd.DataFrame, metric: str, exclude: Sequence[str] = ()) -> str:
    """The router with the highest mean ``metric`` over seeds; upper bounds (oracles, ceilings),
    references and ``exclude`` left out."""
    keep = ~results["router"].isin(exclude) & ~results["family"].isin(NOT_COMPETING)
    means = results[keep].groupby("router")[metric].mean()
    if means.empty:
        raise ValueError("no router left to compare after excluding upper bounds and "
                         f"{list(exclude)}")
    return str(means.idxmax())


def improvement(results: pd.DataFrame, metric: str, ours: str) -> dict:
    """Ours against the strongest other router (upper bounds excluded; strongest = best mean
    ``metric`` over seeds): the paired difference per seed on the same split, its mean and 95 %
    Student-t confidence interval (absolute and relative to the baseline's mean), and the
    verdict: ``"ours wins"`` / ``"baseline wins"`` when the interval excludes 0, else ``"tie"``."""
    base = strongest(results, metric, exclude=(ours,))
    a = results[results["router"] == ours].set_index("seed")[metric]
    b = results[results["router"] == base].set_index("seed")[metric].reindex(a.index)
    d = paired_difference(a.to_numpy(), b.to_numpy())
    scale = 100.0 / abs(float(b.mean())) if float(b.mean()) else float("nan")
    verdict = {"better": "ours wins", "worse": "baseline wins"}.get(ci_verdict(d), ci_verdict(d))
    return {"metric": metric, "ours": ours, "strongest_baseline": base,
            "ours_mean": float(a.mean()), "baseline_mean": float(b.mean()),
            "diff_mean": d["mean"], "diff_ci_low": d["ci_low"], "diff_ci_high": d["ci_high"],
            "diff_pct_mean": d["mean"] * scale, "diff_pct_ci_low": d["ci_low"] * scale,
            "diff_pct_ci_high": d["ci_high"] * scale, "seeds": d["n"],
            "per_seed_diff": (a - b).to_dict(), "verdict": verdict,
            "ours_wins": verdict == "ours wins"}


def separation(results: pd.DataFrame, metric: str, ours: str) -> dict:
    """Whether a table has the power to tell routers apart: the half-width of the 95 % CI of
    ours minus the strongest baseline (paired per seed) against the span a router could move,
    the decide-before-answers ceiling minus the best single LLM. ``separates`` when the
    half-width is below a third of that span (NaN half-width, one seed: False)."""
    imp = improvement(results, metric, ours)
    half = (imp["diff_ci_high"] - imp["diff_ci_low"]) / 2
    means = results.groupby("router")[metric].mean()
    ceiling = results.loc[results["router"].str.startswith("Ceiling"), metric].mean()
    single = means.get("Best single LLM", np.nan)
    span = float(ceiling - single)
    return {"metric": metric, "ci_half_width": float(half), "ceiling": float(ceiling),
            "best_single": float(single), "span": span,
            "separates": bool(np.isfinite(half) and span > 0 and half < span / 3)}


def improvement_row(name: str, imp: dict, fmt: str = ".3f") -> dict:
    """One row of a summary table: means, the paired difference with its 95 % CI, the verdict."""
    ci = (f"[{imp['diff_ci_low']:+{fmt}}, {imp['diff_ci_high']:+{fmt}}]"
          if np.isfinite(imp["diff_ci_low"]) else "n/a (one seed)")
    pct = (f"{imp['diff_pct_mean']:+.1f} [{imp['diff_pct_ci_low']:+.1f}, "
           f"{imp['diff_pct_ci_high']:+.1f}]" if np.isfinite(imp["diff_pct_ci_low"])
           else f"{imp['diff_pct_mean']:+.1f}")
    return {"table": name, "metric": imp["metric"], "ours": format(imp["ours_mean"], fmt),
            "strongest_baseline": imp["strongest_baseline"],
            "baseline": format(imp["baseline_mean"], fmt),
            "ours_minus_baseline": format(imp["diff_mean"], "+" + fmt), "ci95": ci,
            "relative_pct_ci95": pct, "seeds": imp["seeds"], "verdict": imp["verdict"]}


def describe_improvement(imp: dict, fmt: str = ".3f") -> str:
    """One sentence stating the paired difference and its verdict (or that a baseline wins)."""
    ci = (f"95 % CI [{imp['diff_ci_low']:+{fmt}}, {imp['diff_ci_high']:+{fmt}}]"
          if np.isfinite(imp["diff_ci_low"]) else "one seed, no interval")
    head = {"ours wins": f"{imp['ours']} beats the strongest baseline, "
                         f"{imp['strongest_baseline']},",
            "baseline wins": f"The strongest baseline, {imp['strongest_baseline']}, BEATS "
                             f"{imp['ours']}:",
            "tie": f"{imp['ours']} and the strongest baseline, {imp['strongest_baseline']}, "
                   "are not told apart:",
            }.get(imp["verdict"], f"{imp['ours']} against the strongest baseline, "
                                  f"{imp['strongest_baseline']} (one seed, no verdict):")
    return (f"{head} ours - baseline on {imp['metric']} = {imp['diff_mean']:+{fmt}} "
            f"({ci}; paired over {imp['seeds']} seed{'s' if imp['seeds'] != 1 else ''}; "
            f"{imp['ours_mean']:{fmt}} vs "
            f"{imp['baseline_mean']:{fmt}}).")


def ablation_table(results: pd.DataFrame, metric: str, full: str,
                   fmt: str = ".3f") -> pd.DataFrame:
    """What each part of ours buys: one row per router of the ``ablation`` family (and ``full``
    itself) in ``results``, with its mean ± std of ``metric`` and the paired difference per seed
    ``variant - full`` with its 95 % CI (negative: removing the part costs that much)."""
    a = results[results["router"] == full].set_index("seed")[metric]
    rows = []
    for name in dict.fromkeys(results.loc[(results["family"] == "ablation")
                                          | (results["router"] == full), "router"]):
        v = results[results["router"] == name].set_index("seed")[metric].reindex(a.index)
        d = paired_difference(v.to_numpy(), a.to_numpy())
        ci = (f"[{d['ci_low']:+{fmt}}, {d['ci_high']:+{fmt}}]" if np.isfinite(d["ci_low"])
              else "n/a")
        rows.append({"variant": name, metric: f"{v.mean():{fmt}} ± {v.std(ddof=0):{fmt}}",
                     "minus_full": "—" if name == full else f"{d['mean']:+{fmt}}",
                     "ci95": "—" if name == full else ci,
                     "verdict": "—" if name == full else {
                         "better": "better than full", "worse": "worse than full"}.get(
                         ci_verdict(d), ci_verdict(d))})
    return pd.DataFrame(rows)


def main_results_figure(comparisons: Mapping, ours: str):
    """Notebook 50's main figure from its :class:`~prlib.comparison.Comparison` objects (by
    title): left, mean reward against USD per 1,000 requests (log) of every router in the
    multi-cost tables (one marker per table, ± std over seeds; ours, the strongest baseline
    and the upper bounds labelled); right, accuracy with 95 % CIs over seeds in the judge
    tables (upper bounds left out). Returns the figure."""
    from prlib.metrics import mean_ci
    from prlib.routers.base import ABLATION, FAMILIES

    fig, axes = plt.subplots(1, 2, figsize=(15, 6.5))
    colour = {f: f"C{i}" for i, f in enumerate(FAMILIES) if f != ABLATION}
    multi = {k: c for k, c in comparisons.items() if c.setting.feedback == "utility"}
    judge = {k: c for k, c in comparisons.items() if c.setting.feedback == "choice"}
    for (title, comp), marker in zip(multi.items(), "osD^v"):
        label_these = {ours, comp.improvement["strongest_baseline"]}
        g = comp.results.groupby(["router", "family"], sort=False)
        m, s = g[["reward", "cost_per_1k"]].mean(), g[["reward", "cost_per_1k"]].std(ddof=0)
        for (name, fam), row in m.iterrows():
            axes[0].errorbar(row["cost_per_1k"], row["reward"], yerr=s.loc[(name, fam), "reward"],
                             fmt=marker, color=colour.get(fam, "grey"), ms=6, capsize=2)
            if name in label_these or fam in NOT_COMPETING:
                axes[0].annotate(name.split(" (")[0], (row["cost_per_1k"], row["reward"]),
                                 fontsize=7, xytext=(4, 4), textcoords="offset points")
    shapes = ", ".join(f"{n} = {t}" for t, n in zip(multi, ("circles", "squares", "diamonds")))
    axes[0].set(xscale="log", xlabel="USD per 1,000 requests (log)", ylabel="mean reward",
                title=f"multi-cost: {shapes}")
    rows = []
    for title, comp in judge.items():
        for (name, fam), acc in comp.results.groupby(["router", "family"], sort=False)["accuracy"]:
            if fam in NOT_COMPETING:
                continue
            ci = mean_ci(acc)
            rows.append({"table": title, "router": name, "mean": ci["mean"],
                         "err": ci["ci_high"] - ci["mean"] if np.isfinite(ci["ci_high"]) else 0.0})
    if rows:
        acc = pd.DataFrame(rows)
        names = list(dict.fromkeys(acc["router"]))
        for j, (title, g) in enumerate(acc.groupby("table", sort=False)):
            g = g.set_index("router").reindex(names)
            y = np.arange(len(names)) + (0.2 if j else -0.2)
            axes[1].errorbar(g["mean"], y, xerr=g["err"], fmt="o" if j == 0 else "s", ms=5,
                             capsize=2, label=title, color=f"C{j}")
        axes[1].set_yticks(np.arange(len(names)), names, fontsize=8)
        axes[1].invert_yaxis()
        axes[1].legend(loc="upper right")  # the top rows are near 0: the corner is free
    axes[1].set(xlabel="accuracy (predicting the persona's pick), 95 % CI over seeds",
                title="judge settings (choice-only feedback)")
    handles = [plt.Line2D([], [], ls="", marker="o", color=c, label=f) for f, c in colour.items()]
    axes[0].legend(handles=handles, fontsize=8, loc="lower right", title="family")
    fig.tight_layout()
    return fig
