"""benchmarks/gpu_check.py: `--smoke` runs every stage on the CPU (so the prepared GPU check cannot rot), `--help`
lists the stages with their budgets, and without a GPU the real check stops with one line."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
ENV = {**os.environ, "LEANVISION_OFFLINE": "1", "PYTHONPATH": str(SCRIPT.parents[1] / "src")}


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, env=ENV,
                          timeout=timeout)


def test_help_lists_every_stage_with_its_budget_within_seven_minutes():
    sys.path.insert(0, str(SCRIPT.parent))
    try:
        import gpu_check
    finally:
        sys.path.remove(str(SCRIPT.parent))
    proc = _run("--help", timeout=60)
    assert proc.returncode == 0
    for name, budget, _ in gpu_check.STAGES:
        assert f"{name:<10}{budget:>4} s" in proc.stdout
    assert sum(b for _, b, _ in gpu_check.STAGES) <= gpu_check.TOTAL_BUDGET_S <= 420
    assert "--data" in proc.stdout and "--smoke" in proc.stdout


def test_smoke_runs_every_stage_on_the_cpu(tmp_path):
    out = tmp_path / "check"
    proc = _run("--smoke", "--out", str(out))
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    stages = {s["stage"]: s for s in summary["stages"]}
    assert list(stages) == ["env", "memory", "syncs", "pytest", "mnist", "precision", "compile", "ddp", "bench",
                            "cifar"]
    for i, (name, stage) in enumerate(stages.items()):
        assert json.loads((out / f"{i:02d}-{name}.json").read_text()) == stage  # written per stage
        assert stage["status"] == "ok" or stage["status"].startswith("skipped: "), (name, stage["status"],
                                                                                    (out / f"{i:02d}-{name}.log")
                                                                                    .read_text()[-2000:])
    assert stages["memory"]["refusals_on_cpu"]["memory_fraction"].endswith("or drop these options.")
    assert stages["mnist"]["runs"][0]["epochs"][0]["test_accuracy"] >= 0
    bench = {(r["runtime"], r.get("precision"), r.get("batch_size")): r for r in stages["bench"]["rows"]}
    assert bench[("torch", "fp32", 8)]["status"] == "ok" and bench[("torch", "fp32", 8)]["images_per_s"] > 0
    assert all(r["status"].startswith("unavailable: ") for k, r in bench.items() if k[0].startswith("torch-compile"))
    assert stages["ddp"]["all_reduce"] == [1.0, 1.0, 1.0, 1.0]


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: the guard does not apply")
def test_real_check_without_a_gpu_is_one_line(tmp_path):
    proc = _run("--out", str(tmp_path / "x"), timeout=60)
    assert proc.returncode == 2 and "no CUDA device" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and not (tmp_path / "x").exists()
