"""The locked protocol, read from the notebooks themselves: in full mode, every notebook that
evaluates routers reports on report seeds and tunes on development seeds only."""

import ast
import json
from pathlib import Path

import pytest

from prlib.config import DEVELOPMENT_SEEDS, REPORT_SEEDS

NOTEBOOKS = sorted((Path(__file__).resolve().parent.parent / "notebooks").glob("[0-9]*.ipynb"))
#: Library calls that fit or score routers: a notebook that makes any of them reports results.
EVALUATES = ("run_setting", "tune_and_run", "tune_setting", "few_shot_users", "few_shot_llms",
             "layer_sweep", "sparsity_sweep", "headroom.sweep", "compare(", "scaling_study",
             "fit_checked",
             ".fit(")


def parameters(path: Path) -> dict:
    """The literal values of the notebook's cell tagged ``parameters``."""
    nb = json.loads(path.read_text())
    cells = [c for c in nb["cells"] if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(cells) == 1, f"{path.name}: exactly one cell must be tagged 'parameters'"
    out = {}
    for node in ast.parse("".join(cells[0]["source"])).body:
        target = node.targets[0] if isinstance(node, ast.Assign) else node.target
        out[target.id] = ast.literal_eval(node.value)
    return out


def code(path: Path) -> str:
    nb = json.loads(path.read_text())
    return "\n".join("".join(c["source"]) for c in nb["cells"] if c["cell_type"] == "code")


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_full_runs_report_on_report_seeds_and_tune_on_development_seeds(path):
    params = parameters(path)
    assert params.get("SMOKE") is False, f"{path.name}: SMOKE must default to False"
    if any(call in code(path) for call in EVALUATES):
        seeds = set(params["SEEDS"])
        assert seeds <= set(REPORT_SEEDS), (
            f"{path.name} evaluates routers on seeds {sorted(seeds - set(REPORT_SEEDS))}, "
            f"which are not report seeds {REPORT_SEEDS}")
    else:  # data and simulation notebooks: their seeds only draw data, no router is scored
        assert set(params["SEEDS"]) <= set(DEVELOPMENT_SEEDS) | set(REPORT_SEEDS)
    from prlib.routers.base import GRID_POINTS

    assert params.get("GRID_POINTS", GRID_POINTS) == GRID_POINTS, (
        f"{path.name} tunes {params['GRID_POINTS']} points of every grid in full runs; the "
        f"selection budget is {GRID_POINTS}")
    tune = set(params.get("TUNE_SEEDS", []))
    assert tune <= set(DEVELOPMENT_SEEDS), (
        f"{path.name} tunes on {sorted(tune)}; tune on development seeds {DEVELOPMENT_SEEDS}")


def test_the_reader_finds_evaluating_notebooks():
    """The check above is not vacuous: the comparison notebooks are recognised as evaluating."""
    evaluating = {p.stem[:2] for p in NOTEBOOKS if any(c in code(p) for c in EVALUATES)}
    assert {"40", "50", "55", "60", "70", "90", "95"} <= evaluating
    assert not {"00", "10", "20", "30"} & evaluating


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_every_notebook_pins_its_smoke_numbers(path):
    """nbval as a regression check: each notebook passes its key numbers to prlib.pins, and the
    pins it names are committed (notebooks/smoke_pins/)."""
    import re

    from prlib.pins import PINS_DIR

    names = re.findall(r'pins\.pin_\w+\(\s*"([^"]+)"', code(path))
    assert names, f"{path.name} pins no smoke numbers (end it with a prlib.pins cell)"
    missing = [n for n in names if not (PINS_DIR / f"{n}.json").is_file()]
    assert not missing, f"{path.name}: no committed pins {missing} in {PINS_DIR.name}/"


def test_the_runner_records_each_notebooks_wall_time(tmp_path):
    """figures/run_times.csv: one row per notebook (its last run replaces the previous one)."""
    import pandas as pd

    from prlib.runner import _total_row, record_run_time

    nb = NOTEBOOKS[0]
    record_run_time(nb, 12.3, smoke=False, folder=tmp_path)
    record_run_time(NOTEBOOKS[1], 5.0, smoke=False, folder=tmp_path)
    out = record_run_time(nb, 45.6, smoke=False, folder=tmp_path, other_load=1.254)
    table = pd.read_csv(out)
    assert list(table["notebook"]) == [NOTEBOOKS[0].stem, NOTEBOOKS[1].stem]
    assert table.loc[0, "wall_s"] == 46 and table.loc[0, "mode"] == "full"
    assert table.loc[0, "other_load"] == 1.25 and pd.isna(table.loc[1, "other_load"])
    markdown = (tmp_path / "run_times.md").read_text().splitlines()
    assert len(markdown) == 5 and markdown[2].startswith(f"| {NOTEBOOKS[0].stem} | full | 46 |")
    assert markdown[4].startswith("| **all 2 notebooks** | full | **51** |")  # 46 + 5
    assert "max 1.25" in markdown[4]
    rows = table.astype(str).to_dict("records")  # a row of another day: the total names
    rows[1]["date_utc"] = "2026-01-02"  # the range of dates it sums
    assert _total_row(rows)["date_utc"].startswith("2026-01-02 to ")
    assert table["cores"].iloc[0] >= 1 and isinstance(table["cpu"].iloc[0], str)


def test_the_runner_measures_what_other_work_took_of_the_machine():
    """``other_load``: the machine's busy CPU seconds not spent by this process or its children;
    a child that burns CPU is the run's own work, not other work."""
    import subprocess
    import sys
    import time

    from prlib.runner import busy_cpu_seconds, own_cpu_seconds

    if busy_cpu_seconds() is None:
        pytest.skip("no /proc/stat on this system: other_load is left empty there")
    busy, own, start = busy_cpu_seconds(), own_cpu_seconds(), time.time()
    # the child burns one CPU second (its own clock, so a loaded machine only makes it slower)
    subprocess.run([sys.executable, "-c", "import time\n"
                    "while time.process_time() < 1.0: pass"], check=True)
    spent = own_cpu_seconds() - own
    assert spent >= 0.95  # the child's CPU counts as this run's own
    assert busy_cpu_seconds() - busy >= 0.9 * spent  # and the machine saw it busy
    assert time.time() - start >= 0.95


def test_the_more_seeds_benchmark_runs_notebook_50s_sweep_parameters():
    """benchmarks/headroom_seeds.py copies notebook 50's sweep parameters (so that its fits are
    the notebook's, read from the fit cache): a change to either side must reach the other."""
    import headroom_seeds

    params = parameters(next(p for p in NOTEBOOKS if p.name == "50_baselines.ipynb"))
    for name, value in headroom_seeds.NOTEBOOK_50.items():
        assert params[name.upper()] == value, name
