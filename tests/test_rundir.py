"""Run directories are untrusted input: validated before anything is built or allocated (leanvision.rundir)."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from testkit import one_error_line

from leanvision.cli import main
from leanvision.errors import RunDirError
from leanvision.rundir import is_onnx, load_run, rebuild_model, safetensors_shapes, validate_run

SRC = str(Path(__file__).resolve().parents[1] / "src")


@pytest.fixture(scope="module")
def compact_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("rundir") / "compact"
    assert main(["train", "--dataset", "digits", "--model", "compact", "--model-kwargs", '{"width": 4}', "--epochs",
                 "1", "--no-progress", "--device", "cpu", "--out", str(out)]) == 0
    return out


def _tampered(src: Path, dst: Path, **changes) -> Path:
    shutil.copytree(src, dst)
    meta = json.loads((dst / "model.json").read_text())
    meta.update(changes)
    (dst / "model.json").write_text(json.dumps(meta))
    return dst


def test_header_shapes_are_read_without_the_tensors(compact_run):
    shapes = safetensors_shapes(compact_run / "best.safetensors")
    run = load_run(compact_run)
    assert shapes == {k: tuple(v.shape) for k, v in run.model.state_dict().items()}
    assert not is_onnx(run.model) and not run.is_onnx
    torch.manual_seed(0)
    fresh = rebuild_model(run.meta)
    assert {k: tuple(v.shape) for k, v in fresh.state_dict().items()} == shapes


@pytest.mark.parametrize(("changes", "fragment"), [
    ({"model_kwargs": {"width": 5}}, "shape mismatch"),
    ({"num_classes": 7, "classes": [str(i) for i in range(7)]}, "shape mismatch"),
    ({"classes": ["0", "1", "2"]}, "classes has 3 entries; expected a list of 10"),
    ({"input_shape": [1, 28, 10**6]}, "input_shape"),
    ({"input_shape": [1, 28]}, "input_shape"),
    ({"num_classes": 10**9}, "num_classes"),
    ({"format": "other/9"}, "format"),
    ({"model": "no-such-model"}, "does not describe a model"),
    ({"onnx_file": "../../etc/passwd", "runtime": "onnxruntime"}, "file name inside the run"),
])
def test_a_tampered_model_json_is_refused_in_one_line(compact_run, tmp_path, changes, fragment):
    bad = _tampered(compact_run, tmp_path / "bad", **changes)
    with pytest.raises(RunDirError, match=fragment):
        validate_run(bad)


def test_a_damaged_weights_header_is_refused(compact_run, tmp_path):
    bad = tmp_path / "bad"
    shutil.copytree(compact_run, bad)
    data = bytearray((bad / "best.safetensors").read_bytes())
    data[:8] = (10**12).to_bytes(8, "little")  # a header length far beyond the file
    (bad / "best.safetensors").write_bytes(bytes(data))
    with pytest.raises(RunDirError, match="Corrupt weights file"):
        validate_run(bad)
    (bad / "best.safetensors").write_bytes(b"\x01")
    with pytest.raises(RunDirError, match="Corrupt weights file"):
        validate_run(bad)


CHILD = """
import resource, sys
from leanvision.cli import main
import leanvision.rundir, torch  # imported before the limit: the limit is for what the command allocates
with open("/proc/self/status") as f:
    vm = next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:"))
limit = vm + 400 * 1024**2
resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
sys.exit(main(sys.argv[1:]))
"""


@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs Linux /proc for the address-space size")
def test_absurd_widths_are_refused_before_allocation_under_a_memory_limit(compact_run, tmp_path):
    # width 40000: compact's convolutions alone would need tens of GB; the limit leaves 400 MB above the baseline
    bad = _tampered(compact_run, tmp_path / "huge", model_kwargs={"width": 40_000})
    env = {**os.environ, "PYTHONPATH": SRC, "LEANVISION_OFFLINE": "1"}
    env.pop("LEANVISION_DEBUG", None)
    proc = subprocess.run([sys.executable, "-c", CHILD, "evaluate", str(bad), "--device", "cpu", "--no-plot"],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2, proc.stderr
    line = one_error_line(proc.stderr, "do not fit the model in model.json", "shape mismatch", only=True)
    assert "MemoryError" not in line


def test_a_folded_conv_pool_bn_run_reloads(tmp_path):
    """The `fast` recipe's fastnet (pool_first: conv -> pool -> BN) folded by optimize: its run directory is
    validated on the meta device (no values to test BN scales on) and loads like any other."""
    run_dir, folded = tmp_path / "fast", tmp_path / "folded"
    assert main(["train", "--dataset", "digits", "--model", "fastnet", "--model-kwargs",
                 '{"width": 8, "pool_first": true}', "--epochs", "1", "--no-progress", "--device", "cpu",
                 "--out", str(run_dir)]) == 0
    assert main(["optimize", str(run_dir), "--out", str(folded), "--no-progress"]) == 0
    meta = validate_run(folded)
    assert meta["folded"]
    run = load_run(folded)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in run.model.modules())
    assert main(["evaluate", str(folded), "--no-plot", "--json"]) == 0


def test_api_refuses_a_run_dir_of_the_wrong_type(compact_run):
    with pytest.raises(RunDirError, match=r"Invalid run_dir=42 \(int\)"):
        load_run(42)
    with pytest.raises(RunDirError, match="Expected an nn.Module instance"):
        load_run(compact_run, model="compact")
