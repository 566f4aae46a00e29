"""The packaging stays consistent: requirements, environment.yml and the torch pin."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def _pins(lines):
    return {m.group(1).lower(): m.group(2) for line in lines
            if (m := re.match(r"^\s*-?\s*([A-Za-z0-9_.\-]+)==([^\s#]+)", line))}


def test_environment_yml_matches_requirements():
    req = _pins((ROOT / "requirements.txt").read_text().splitlines())
    env_lines = (ROOT / "environment.yml").read_text().splitlines()
    env = _pins(line for line in env_lines if line.startswith("      - "))
    assert req, "requirements.txt pins nothing"
    assert req == env, f"differ: {set(req.items()) ^ set(env.items())}"


def test_torch_is_pinned_everywhere():
    assert "torch==2.13.0" in (ROOT / "constraints.txt").read_text()
    for name in ["requirements.txt", "environment.yml"]:
        text = (ROOT / name).read_text()
        assert re.search(r"^\s*-?\s*torch==2\.13\.0\s*$", text, re.M), name
        assert not re.search(r"^\s*-?\s*torch\s*(>|<|~|$)", text, re.M), f"unpinned torch in {name}"
    assert "-c constraints.txt" in (ROOT / "Makefile").read_text()


def test_ci_calls_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    assert "make test" in readme
    assert "make test" in (ROOT / ".ci" / "run").read_text()


def test_readme_tables_match_the_figures():
    from prlib.report import readme_tables

    tables = readme_tables(ROOT / "README.md")
    shown = {"40_multicost_llmrouter", "40_judge_arena_bench", "55_table1_multicost_llmrouter",
             "55_table2_judge_arena_bench", "55_table3a_multicost_arena_bench",
             "55_table3b_judge_arena_hard", "55_improvement_summary", "40_findings",
             "55_findings", "40_router_benchmark", "40_ablations", "60_findings",
             "70_findings", "80_findings", "90_improvement_summary", "90_findings",
             "90_multi_turn", "90_single_turn", "90_turn_chain_ablation", "85_findings",
             "85_known_people", "85_permutation"}
    assert shown <= set(tables), f"README lacks the result blocks {sorted(shown - set(tables))}"
    for name, body in tables.items():
        assert body == (ROOT / "figures" / f"{name}.md").read_text(), (
            f"README copy of {name} is stale: run `python -m prlib.report`")
