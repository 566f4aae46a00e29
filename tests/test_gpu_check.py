"""benchmarks/gpu_check.py at smoke size on CPU: the GPU check's code runs in CI, so it is ready
(and has not rotted) when a GPU is there. (Its GPU path itself is untested until then.)"""

import json

import pytest

import gpu_check  # benchmarks/ is on sys.path (conftest)


def test_gpu_check_runs_on_cpu_at_smoke_size(tmp_path):
    out = tmp_path / "gpu_check.json"
    result = gpu_check.main(["--device", "cpu", "--smoke", "--strict", "--out", str(out)])
    assert json.loads(out.read_text())["wall_s"] == result["wall_s"] and not result["errors"]
    assert result["mode"] == "smoke" and result["device"] == "cpu"
    assert result["device_name"] == "cpu" and result["within_budget"]
    assert result["embed"]["texts"] == 4 and result["embed"]["texts_per_second"] > 0
    fits = {(f["setting"], f["class"]): f for f in result["fits"]}
    assert set(fits) == {(s, c) for s in ("llmrouter", "bench")
                         for c in ("PersonalizedRouterV2", "GraphRouterGNN")}
    for fit in fits.values():
        assert fit["device"] == "cpu" and fit["metric"] == "reward"
        assert fit["steps_run"] > 0 and fit["fit_s"] > 0 and fit["peak_gpu_memory_mb"] is None
        assert 0 < fit["test_metric"] < 1
    assert fits["llmrouter", "PersonalizedRouterV2"]["train_requests"] > 0
    assert "skipped" in result["ddp"]  # no GPU here: the DDP check needs two
    summary = out.with_suffix(".md").read_text()  # the README's paragraph, from this run
    assert "smoke size" in summary and "0 error(s)" in summary
    assert f"{fits['bench', 'GraphRouterGNN']['test_metric']:.4f}" in summary


def test_the_committed_gpu_run_agrees_with_its_cpu_reference_and_its_paragraph():
    """figures/gpu_check_cuda.json, when a GPU run is committed: no error, within the budget,
    every fit's test metric within the tolerance of the CPU run beside it, and the README's
    paragraph (figures/gpu_check_cuda.md) written from that JSON."""
    from prlib.config import REPO_ROOT

    path = REPO_ROOT / "figures" / "gpu_check_cuda.json"
    if not path.is_file():
        pytest.skip("no GPU run committed")
    result = json.loads(path.read_text())
    assert result["device"] == "cuda" and not result["errors"] and result["within_budget"]
    assert result["fits"]
    for fit in result["fits"]:  # from the metrics themselves, not the flag the run stored
        assert abs(fit["test_metric"] - fit["cpu_test_metric"]) <= gpu_check.METRIC_TOLERANCE
    assert path.with_suffix(".md").read_text().strip() == gpu_check.summary_text(result)


def test_device_metrics_sit_next_to_the_cpu_reference():
    fits = [{"setting": "bench", "class": "A", "test_metric": 0.35, "fit_s": 1.0},
            {"setting": "bench", "class": "B", "test_metric": 0.20, "fit_s": 1.0},
            {"setting": "llmrouter", "class": "A", "test_metric": 0.3, "fit_s": 1.0}]
    ref = [{"setting": "bench", "class": "A", "test_metric": 0.34, "fit_s": 9.0, "best_step": 5},
           {"setting": "bench", "class": "B", "test_metric": 0.30, "fit_s": 9.0, "best_step": 5}]
    a, b, c = gpu_check.attach_reference(fits, ref)
    assert a["cpu_test_metric"] == 0.34 and a["test_metric_minus_cpu"] == pytest.approx(0.01)
    assert a["agrees_with_cpu"] and not b["agrees_with_cpu"]  # 0.1 apart: a broken device path
    assert c["cpu_test_metric"] is None and c["agrees_with_cpu"] is None


def test_the_cpu_reference_runs_the_same_check():
    class Args:
        router, baseline, seed, smoke, steps = "PersonalizedRouterV3", "GraphRouterGNN", 0, True, 5

    cmd = gpu_check._reference_command(Args, tmp := "ref.json", 14)
    assert cmd[cmd.index("--device") + 1] == "cpu" and cmd[cmd.index("--out") + 1] == tmp
    assert cmd[cmd.index("--router") + 1] == "PersonalizedRouterV3"  # a v3 is one flag away
    assert cmd[cmd.index("--parts") + 1] == "fits" and "--smoke" in cmd
    assert cmd[cmd.index("--threads") + 1] == "14" and cmd[cmd.index("--steps") + 1] == "5"


def test_a_failing_part_is_recorded_and_the_others_still_run(tmp_path, monkeypatch):
    """On a GPU with minutes to spare, one broken part (here the embedding) must not cost the
    rest: it is written into the JSON's errors, and the run goes on."""
    def broken(*a, **kw):
        raise RuntimeError("CUDA error: no kernel image is available")

    monkeypatch.setattr(gpu_check, "embed_check", broken)
    result = gpu_check.main(["--device", "cpu", "--smoke", "--parts", "embed", "ddp",
                             "--out", str(tmp_path / "out.json")])
    assert [e["part"] for e in result["errors"]] == ["embed"]
    assert "no kernel image" in result["errors"][0]["error"] and result["embed"] is None
    assert "skipped" in result["ddp"]
    assert json.loads((tmp_path / "out.json").read_text())["errors"][0]["part"] == "embed"


def test_the_embed_part_reads_its_texts_from_a_file_when_given(tmp_path):
    texts = tmp_path / "texts.json"
    texts.write_text(json.dumps(["one text", "another text", "one text", "a third"]))
    result = gpu_check.main(["--device", "cpu", "--smoke", "--parts", "embed", "--texts",
                             str(texts), "--out", str(tmp_path / "check.json")])
    assert result["embed"]["texts"] == 3 and not result["errors"]  # each distinct text once
