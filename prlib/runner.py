"""Execute the numbered notebooks with papermill, in pipeline order.

``python -m prlib.runner all`` runs every notebook at full size (writing ``figures/``);
``python -m prlib.runner 00 20 --smoke`` runs two in smoke mode; ``-p NAME VALUE`` sets a
parameter (a JSON literal, else a string), e.g. ``python -m prlib.runner 10 -p LOCAL_MODEL
true``. Executed copies go to the
git-ignored ``build/notebooks/`` (``build/notebooks-smoke/`` in smoke mode); the stored notebooks
stay without outputs. Each executed notebook is also written as a static HTML page, its figures
embedded (:func:`write_page`): into the committed ``docs/notebooks/`` in a full run, so that a
reader sees the results next to the method without running anything, and into the git-ignored
``build/smoke-pages/`` in smoke mode.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time
from pathlib import Path

from prlib.config import REPO_ROOT

NOTEBOOKS = REPO_ROOT / "notebooks"


def list_notebooks() -> list[Path]:
    """The numbered notebooks ``NN_slug.ipynb``, in order."""
    return sorted(p for p in NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def select(names: list[str]) -> list[Path]:
    """Notebooks matching ``names`` (``all``, a number like ``40``, or a full stem)."""
    available = list_notebooks()
    if not names or names == ["all"]:
        return available
    chosen = []
    for name in names:
        hits = [p for p in available if p.stem == name or p.stem.split("_")[0] == name]
        if not hits:
            raise SystemExit(f"no notebook matches {name!r}; available: "
                             f"{[p.stem for p in available]}")
        chosen.extend(hits)
    return chosen


def run_notebook(path: Path, smoke: bool = False, parameters: dict | None = None,
                 out_dir: Path | None = None) -> Path:
    """Execute one notebook in its own folder; returns the executed copy's path."""
    import papermill as pm

    out_dir = out_dir or REPO_ROOT / "build" / ("notebooks-smoke" if smoke else "notebooks")
    out_dir.mkdir(parents=True, exist_ok=True)
    params = {"SMOKE": smoke, **(parameters or {})}
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("MPLBACKEND", "Agg")
    # the kernel must be this interpreter, whatever kernelspecs the machine has
    os.environ["PATH"] = str(Path(sys.executable).parent) + os.pathsep + os.environ.get("PATH", "")
    if smoke:
        os.environ["PRLIB_SMOKE"] = "1"
    out = out_dir / path.name
    # figures drawn with Agg leave no output in the notebook: a startup file (IPython runs
    # $PYTHONSTARTUP in the kernel) registers keep_figures, so each figure is kept as a PNG
    # output of the cell that made it and reaches the static page
    startup = out_dir / ".prlib_kernel_startup.py"
    startup.write_text("import prlib.runner\nprlib.runner.keep_figures(get_ipython())\n")
    before = os.environ.get("PYTHONSTARTUP")
    os.environ["PYTHONSTARTUP"] = str(startup)
    try:
        pm.execute_notebook(str(path), str(out), parameters=params, cwd=str(path.parent),
                            kernel_name="python3", progress_bar=False)
    finally:
        if before is None:
            os.environ.pop("PYTHONSTARTUP")
        else:
            os.environ["PYTHONSTARTUP"] = before
    return out


def keep_figures(shell, dpi: int = 100) -> None:
    """In a kernel (``shell``: its IPython shell): after every cell, each matplotlib figure the
    cell opened is shown as a PNG output of that cell (``dpi``; the figure stays open, as with
    Agg, so later cells may still save it). The notebooks draw with Agg, which shows nothing,
    so without this an executed notebook, and its static page, has no figures."""
    import sys
    import weakref

    shown: weakref.WeakSet = weakref.WeakSet()  # (an id could return for a new figure)

    def show_new_figures(result=None) -> None:
        if "matplotlib.pyplot" not in sys.modules:
            return
        import io

        import matplotlib.pyplot as plt
        from IPython.display import Image, display

        for num in plt.get_fignums():
            fig = plt.figure(num)
            if fig in shown:
                continue
            shown.add(fig)
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
            titles = [t for t in [fig.get_suptitle()] + [a.get_title() for a in fig.axes] if t]
            display(Image(data=buf.getvalue(), alt="; ".join(titles) or f"figure {num}"))

    shell.events.register("post_run_cell", show_new_figures)


def pages_dir(smoke: bool) -> Path:
    """Where the static pages go: ``docs/notebooks/`` (full run, committed) or
    ``build/smoke-pages/`` (smoke run, git-ignored)."""
    return REPO_ROOT / "build" / "smoke-pages" if smoke else REPO_ROOT / "docs" / "notebooks"


def write_page(executed: Path, folder: Path, name: str | None = None) -> Path:
    """The executed notebook ``executed`` as one HTML page ``folder/NN_slug.html``
    (nbconvert's HTMLExporter, JupyterLab's look): code, text, tables and every figure embedded
    as a data URI (outputs are, and so are images that Markdown cells link; a figure's titles
    are its alternative text), so the page opens from disk in any browser, no server, no folder
    of assets but the theme's style sheet that every page of the folder links
    (:func:`shared_styles`). (Only LaTeX, if a cell has any, is typeset by MathJax from its
    CDN; offline it shows as TeX.) Paths under the repository that outputs print are written
    relative to it. Returns the page's path."""
    import html

    import nbformat
    from nbconvert import HTMLExporter

    name = name or executed.stem
    nb = nbformat.read(executed, as_version=4)
    root = f"{REPO_ROOT}{os.sep}"
    for cell in nb.cells:  # paths printed in outputs: relative to the repository, not this disk
        for output in cell.get("outputs", []):
            if "text" in output:
                output["text"] = output["text"].replace(root, "")
            data = output.get("data", {})
            for kind, value in data.items():
                if kind.startswith("text/") and isinstance(value, str):
                    data[kind] = value.replace(root, "")
            alt = output.get("metadata", {}).get("image/png", {}).get("alt")
            if alt and "image/png" in data:  # the template drops a PNG's alt: an <img> keeps it
                png = data["image/png"].replace("\n", "")
                data["text/html"] = (f'<img src="data:image/png;base64,{png}" '
                                     f'alt="{html.escape(alt)}"/>')
    exporter = HTMLExporter(template_name="lab", embed_images=True)
    resources = {"metadata": {"name": name, "path": str(executed.parent)}}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{name}.html"
    out.write_text(shared_styles(without_unused_mermaid(body), folder), encoding="utf-8")
    return out


def without_unused_mermaid(page: str) -> str:
    """``page`` without nbconvert's Mermaid loader (a ``<script type="module">`` of about 420
    lines that the lab template puts in every page's head, to render Markdown's mermaid
    diagrams; found by its selector ``.jp-Mermaid > pre.mermaid``) when
    the page has no diagram (no ``class="jp-Mermaid"`` element): the script would return at once.
    A page with a diagram keeps it."""
    head_end = page.find("</head>")
    if head_end < 0 or 'class="jp-Mermaid"' in page:
        return page
    head = re.sub(r'<script type="module">(?:(?!</script>).)*?\.jp-Mermaid > pre\.mermaid.*?'
                  r"</script>", "", page[:head_end], flags=re.S)
    return head + page[head_end:]


#: The style sheet every page of a folder links (nbconvert's JupyterLab theme, the same for all).
PAGE_CSS = "notebook.css"


def shared_styles(page: str, folder: Path) -> str:
    """``page`` with the ``<style>`` blocks of its head moved into ``folder/notebook.css``
    (written when it differs), linked instead: the theme is about half of each page (~260 KB),
    the same for every notebook, so committed pages carry it once. The page still opens from
    disk with no server."""
    head_end = page.find("</head>")
    if head_end < 0:
        return page
    head, rest = page[:head_end], page[head_end:]
    styles = re.findall(r"<style[^>]*>(.*?)</style>", head, flags=re.S)
    if not styles:
        return page
    css = "\n".join(block.strip() for block in styles) + "\n"
    sheet = folder / PAGE_CSS
    if not sheet.is_file() or sheet.read_text(encoding="utf-8") != css:
        sheet.write_text(css, encoding="utf-8")
    first = iter([f'\n<link rel="stylesheet" href="{PAGE_CSS}"/>'])  # where the first was
    head = re.sub(r"\s*<style[^>]*>.*?</style>", lambda _: next(first, ""), head, flags=re.S)
    return head + rest


RUN_TIMES = "run_times.csv"


def busy_cpu_seconds() -> float | None:
    """CPU seconds every core of this machine has been busy since boot (``/proc/stat``; None
    where there is none)."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except OSError:
        return None
    user, nice, system, _idle, _iowait, irq, softirq, steal = map(int, fields[:8])
    return (user + nice + system + irq + softirq + steal) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """CPU seconds of this process and of its children that have ended (the kernel of a
    notebook and its worker processes)."""
    import resource

    mine = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return mine.ru_utime + mine.ru_stime + kids.ru_utime + kids.ru_stime


def record_run_time(path: Path, seconds: float, smoke: bool, folder: Path | None = None,
                    other_load: float | None = None) -> Path:
    """Write the notebook's wall time, mode, date (UTC), machine and ``other_load``, the cores
    other work kept busy on average meanwhile (CPU seconds of the machine not spent by this run,
    per second; about 0: the run had the machine to itself; 1: another job took a whole core,
    so the time is an upper bound) into ``run_times.csv`` of the run's figures folder
    (``figures/`` for a full run), replacing its previous row, so that a slower main job shows
    in the diff; the same rows as a Markdown table in ``run_times.md`` (the README's notebook
    times). Returns the CSV's path."""
    import csv
    import datetime
    import platform

    from prlib.config import resolve_config
    from prlib.efficiency import cpu_model

    folder = folder or resolve_config(smoke).figures_dir
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / RUN_TIMES
    fields = ["notebook", "mode", "wall_s", "date_utc", "cpu", "cores", "other_load", "python"]
    rows = []
    if out.is_file():
        with open(out, newline="") as f:
            rows = [{k: r.get(k) or "" for k in fields} for r in csv.DictReader(f)
                    if r["notebook"] != path.stem]
    rows.append({"notebook": path.stem, "mode": "smoke" if smoke else "full",
                 "wall_s": f"{seconds:.0f}",
                 "date_utc": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d"),
                 "cpu": cpu_model(), "cores": os.cpu_count(),
                 "other_load": "" if other_load is None else f"{other_load:.2f}",
                 "python": platform.python_version()})
    rows = sorted(rows, key=lambda r: r["notebook"])
    with open(out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(rows)
    table = ["| " + " | ".join(fields) + " |", "|" + "|".join("---" for _ in fields) + "|"]
    table += ["| " + " | ".join(str(r[k]) for k in fields) + " |" for r in rows]
    table.append("| " + " | ".join(str(v) for v in _total_row(rows).values()) + " |")
    (folder / "run_times.md").write_text("\n".join(table) + "\n")
    return out


def _total_row(rows: list[dict]) -> dict:
    """The rows' times summed (what ``make run`` spent in the notebooks, without creating the
    environment, when one run wrote every row; the range of dates says whether it could have):
    the modes, machines and Python versions seen and the highest ``other_load`` (the total is an
    upper bound when any run shared the machine)."""
    def seen(key):
        return "/".join(sorted({str(r[key]) for r in rows if r[key] != ""}))

    loads = [float(r["other_load"]) for r in rows if r["other_load"] != ""]
    dates = [str(r["date_utc"]) for r in rows]
    return {"notebook": f"**all {len(rows)} notebooks**", "mode": seen("mode"),
            "wall_s": f"**{sum(float(r['wall_s']) for r in rows):.0f}**",
            "date_utc": " to ".join(sorted({min(dates), max(dates)})), "cpu": seen("cpu"),
            "cores": seen("cores"), "other_load": f"max {max(loads):.2f}" if loads else "",
            "python": seen("python")}


def _literal(value: str):
    """A parameter value from the command line: JSON (``true``, ``3``, ``[1, 2]``) or text."""
    import json

    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prlib.runner", description=__doc__)
    parser.add_argument("names", nargs="*", default=["all"], help="'all', numbers or stems")
    parser.add_argument("--smoke", action="store_true", help="small sizes (also PRLIB_SMOKE=1)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[],
                        metavar=("NAME", "VALUE"),
                        help="a notebook parameter (VALUE: a JSON literal, else a string)")
    args = parser.parse_args(argv)
    parameters = {name: _literal(value) for name, value in args.parameter}
    smoke = args.smoke or os.environ.get("PRLIB_SMOKE", "") in {"1", "true", "yes"}
    for path in select(args.names):
        busy, own = busy_cpu_seconds(), own_cpu_seconds()
        start = time.time()
        print(f"[prlib.runner] {path.name} ({'smoke' if smoke else 'full'}) ...", flush=True)
        out = run_notebook(path, smoke=smoke, parameters=parameters)
        seconds = time.time() - start
        other = (None if busy is None else max(
            0.0, (busy_cpu_seconds() - busy) - (own_cpu_seconds() - own)) / max(seconds, 1e-9))
        record_run_time(path, seconds, smoke, other_load=other)
        page = write_page(out, pages_dir(smoke), path.stem)
        print(f"[prlib.runner] {path.name} done in {seconds:.0f} s -> "
              f"{out.relative_to(REPO_ROOT)}, {page.relative_to(REPO_ROOT)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
