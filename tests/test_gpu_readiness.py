"""CPU tests of the CUDA/MPS/TPU/multi-GPU code paths (issue 14), with torch.cuda calls faked where a GPU is needed.

The real run of these paths is `benchmarks/gpu_check.py` on a GPU machine; these tests pin the argument shapes,
the control flow and the error messages so they cannot silently regress on a CPU-only CI.
"""

import math
import os
import subprocess
import sys
from contextlib import nullcontext
from pathlib import Path

import pytest
import torch
from testkit import interrupt_at
from torch import nn

from leanvision import device as devices
from leanvision.config import TrainConfig
from leanvision.errors import LeanvisionError, TrainingDiverged
from leanvision.io import load_state, save_state
from leanvision.loss_tracker import LAZY_LOSS_CHECK_EVERY, LossTracker

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def fake_cuda(monkeypatch):
    """`setup_device("cuda")` on this CPU machine: the device resolves and CUDA calls are recorded, not run."""
    calls = {}
    monkeypatch.setattr(devices, "resolve_device", lambda name: torch.device(name if ":" in name else "cuda"))
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)

    def set_fraction(fraction, device=None):  # the real one's argument checks, without a GPU
        from torch.cuda._utils import _get_device_index

        calls["fraction"] = (fraction, _get_device_index(device))  # raises for torch.device("cuda") (no index)
        if not isinstance(fraction, float):
            raise TypeError("Invalid type for fraction argument, must be `float`")

    monkeypatch.setattr(torch.cuda, "set_per_process_memory_fraction", set_fraction)
    monkeypatch.setattr(torch._C, "_accelerator_setAllocatorSettings", lambda s: calls.setdefault("alloc", s),
                        raising=False)
    monkeypatch.delenv("PYTORCH_ALLOC_CONF", raising=False)
    monkeypatch.delenv("PYTORCH_CUDA_ALLOC_CONF", raising=False)
    monkeypatch.setattr(torch.backends.cudnn, "benchmark", False)
    return calls


# ---- 1, 9: memory fraction and expandable segments -------------------------------------------------------------------


def test_memory_fraction_gets_a_device_index_and_a_float(fake_cuda):
    assert devices.setup_device("cuda", memory_fraction=1).type == "cuda"  # a YAML `1` is an int
    assert fake_cuda["fraction"] == (1.0, 0) and isinstance(fake_cuda["fraction"][0], float)
    devices.setup_device("cuda:1", memory_fraction=0.25)
    assert fake_cuda["fraction"] == (0.25, 1)
    assert torch.backends.cudnn.benchmark is True
    with pytest.raises(LeanvisionError, match="memory_fraction=True"):
        devices.setup_device("cuda", memory_fraction=True)


def test_expandable_segments_set_through_the_allocator_api_and_both_variables(fake_cuda, monkeypatch):
    monkeypatch.setenv("PYTORCH_CUDA_ALLOC_CONF", "max_split_size_mb:64")
    devices.setup_device("cuda", expandable_segments=True)
    assert fake_cuda["alloc"] == "expandable_segments:True"
    assert os.environ["PYTORCH_ALLOC_CONF"] == "expandable_segments:True"
    assert os.environ["PYTORCH_CUDA_ALLOC_CONF"] == "max_split_size_mb:64,expandable_segments:True"
    assert devices.allocator_settings() is None or isinstance(devices.allocator_settings(), str)


# ---- 2: no per-step host sync on CUDA --------------------------------------------------------------------------------


def test_lazy_loss_reads_give_the_eager_sum_bit_for_bit():
    gen = torch.Generator().manual_seed(0)
    losses = [torch.rand((), generator=gen) * 3 for _ in range(23)]
    eager, lazy = LossTracker(torch.device("cpu")), LossTracker(torch.device("cpu"), check_every=5)
    total_eager = total_lazy = 0.1
    reads = 0
    for loss in losses:
        eager.add(loss, 7)
        total_eager = eager.drain_into(total_eager)
        lazy.add(loss, 7)
        reads += lazy.read_last
        total_lazy = lazy.drain_into(total_lazy)
    total_lazy = lazy.flush_into(total_lazy)
    assert total_lazy == total_eager and reads == 4  # same float64 sum, 4 device reads instead of 23
    assert LossTracker(torch.device("cuda")).check_every == LAZY_LOSS_CHECK_EVERY


def test_fused_optimizer_on_cuda_only_and_not_carried_to_another_device():
    from leanvision.train import fused_optimizer, make_optimizer

    model = nn.Linear(3, 2)
    for opt in ("sgd", "adam", "adamw"):
        cfg = TrainConfig(optimizer=opt)
        assert make_optimizer(model, cfg, torch.device("cuda")).param_groups[0]["fused"] is True
        assert not make_optimizer(model, cfg, torch.device("cpu")).param_groups[0].get("fused")
    assert not fused_optimizer(torch.optim.SGD, None)


def test_device_split_batches_like_the_host_split(digits):
    from leanvision.data import normalizer
    from leanvision.train.placement import DeviceSplit

    normalize = normalizer(digits.mean, digits.std, torch.device("cpu"))
    raw = DeviceSplit(digits.train, normalize, torch.device("cpu"), normalized=False)
    host = list(digits.train.batches(64, shuffle=True, generator=torch.Generator().manual_seed(3)))
    kept = list(raw.batches(64, shuffle=True, generator=torch.Generator().manual_seed(3)))
    assert len(host) == len(kept) and all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
                                          for a, b in zip(host, kept))
    assert kept[0][0].dtype == torch.uint8  # normalized per batch on the device


# ---- 4: MPS autocast -------------------------------------------------------------------------------------------------


def test_autocast_probe_catches_silent_fp32_and_errors(monkeypatch):
    cpu = torch.device("cpu")
    assert devices.autocast_works(cpu, torch.bfloat16) == (True, "")
    monkeypatch.setattr(torch, "autocast", lambda *a, **k: nullcontext())  # torch 2.5 MPS bf16: silently fp32
    ok, why = devices.autocast_works(cpu, torch.bfloat16)
    assert not ok and "silently computed float32" in why

    def refuse(*a, **k):  # torch 2.4 MPS: raises
        raise RuntimeError("User specified an unsupported autocast device_type 'mps'")

    monkeypatch.setattr(torch, "autocast", refuse)
    assert "autocast raised RuntimeError" in devices.autocast_works(cpu, torch.bfloat16)[1]
    monkeypatch.setattr(devices, "_autocast_works_cached", lambda d, t: (False, "autocast raised X"))
    with pytest.raises(LeanvisionError, match="precision bf16 does not run on device 'mps'.*precision='fp32'"):
        devices.check_autocast(torch.device("mps"), "bf16")
    devices.check_autocast(torch.device("mps"), "fp32")  # nothing to check
    devices.check_autocast(torch.device("cpu"), "bf16")  # CPU and CUDA are not probed


# ---- 5: resume on another device type --------------------------------------------------------------------------------


def test_resume_with_an_augmentation_state_from_another_device(digits, tmp_path):
    from leanvision.train import CHECKPOINT, TrainingInterrupted, fit

    cfg = TrainConfig(epochs=2, device="cpu", augment="flip", batch_size=256)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(784, 10))
    with interrupt_at(3), pytest.raises(TrainingInterrupted):
        fit(model, digits, cfg, tmp_path, progress=False)
    state = load_state(tmp_path / CHECKPOINT)
    assert state["rng"]["aug_device"] == "cpu" and state["rng"]["aug"].numel() == 5056
    state["rng"]["aug"], state["rng"]["aug_device"] = torch.zeros(16, dtype=torch.uint8), "cuda"  # a CUDA state
    save_state(tmp_path / CHECKPOINT, state)
    history = fit(model, digits, cfg, tmp_path, progress=False, resume=True)
    assert len(history) == 2 and math.isfinite(history[-1]["train_loss"])


# ---- 6: multi-GPU ----------------------------------------------------------------------------------------------------


def test_explicit_cuda_index_under_torchrun(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")
    assert devices.local_device_name("cuda:1") == "cuda:1"  # this rank's own GPU
    with pytest.raises(LeanvisionError, match="device='cuda:0' under torchrun would put every process on GPU 0"):
        devices.local_device_name("cuda:0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "1")  # one process per machine: any GPU of it is this rank's
    assert devices.local_device_name("cuda:0") == "cuda:0"


NAN_ON_RANK_1 = r'''
import sys, torch, torch.distributed as dist
import torch.nn.functional as F
from leanvision.config import DataConfig, RunConfig, TrainConfig
from leanvision.errors import TrainingDiverged
from leanvision.runs import train_run

calls = {"n": 0}

def loss_fn(logits, y, x):
    calls["n"] += 1
    loss = F.cross_entropy(logits, y)
    bad = calls["n"] == 3 and int(__import__("os").environ["RANK"]) == 1
    return loss + float("nan") if bad else loss  # the loss value only: gradients, so rank 0's loss, stay finite

cfg = RunConfig(model="seed-shallow", data=DataConfig("digits"), train=TrainConfig(epochs=2, device="cpu"))
rank = __import__("os").environ["RANK"]
try:
    train_run(cfg, sys.argv[1], progress=False, loss_fn=loss_fn)
    line = "FINISHED"
except TrainingDiverged as e:
    line = f"DIVERGED {dist.is_initialized()} {str(e).splitlines()[0].split(';')[0]}"
with open(f"{sys.argv[1]}.rank{rank}", "w") as f:  # one file per rank: two processes' stdout can interleave
    f.write(line)
# What is tested is done. torch 2.13's gloo teardown at interpreter exit, after the group was destroyed, aborts in
# about 1 run in 15 ("terminate called without an active exception"; the same before and after leanvision's train/
# split): leave without it, so the test checks leanvision's behaviour, not that race.
__import__("os")._exit(0)
'''


def test_nan_on_one_rank_stops_every_rank_and_destroys_the_group(tmp_path):
    script = tmp_path / "nan_rank.py"
    script.write_text(NAN_ON_RANK_1)
    env = {**os.environ, "LEANVISION_OFFLINE": "1", "OMP_NUM_THREADS": "1",
           "PYTHONPATH": os.pathsep.join([str(REPO / "src"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           str(script), str(tmp_path / "run")], capture_output=True, text=True, env=env,
                          timeout=240, cwd=tmp_path)
    lines = [p.read_text() for p in sorted(tmp_path.glob("run.rank*"))]
    assert proc.returncode == 0 and len(lines) == 2, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert all(line.startswith("DIVERGED False Loss became nan") for line in lines), lines  # group destroyed
    assert any("on another rank" in line for line in lines), lines  # rank 0 stopped on rank 1's NaN


# ---- 7: ONNX Runtime on CUDA -----------------------------------------------------------------------------------------


def test_ort_gpu_providers_trt_cache_fp16_and_missing_gpu_build(tmp_path, monkeypatch):
    from leanvision.runtimes import ort_gpu_providers

    monkeypatch.setenv("LEANVISION_TRT_CACHE", str(tmp_path / "trt"))
    cuda1 = torch.device("cuda", 1)
    both = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    providers = ort_gpu_providers(both, cuda1, "fp32")
    (trt, trt_opts), (cuda, cuda_opts), cpu = providers
    assert (trt, cuda, cpu) == tuple(both) and cuda_opts == {"device_id": 1}
    assert trt_opts["trt_engine_cache_enable"] and trt_opts["trt_engine_cache_path"] == str(tmp_path / "trt")
    assert trt_opts["trt_fp16_enable"] is False and (tmp_path / "trt").is_dir()
    fp16 = ort_gpu_providers(both, cuda1, "fp16")
    assert fp16[0][1]["trt_fp16_enable"] is True and [p if isinstance(p, str) else p[0] for p in fp16] == [
        "TensorrtExecutionProvider", "CPUExecutionProvider"]  # no fp32 CUDA fallback under an fp16 label
    with pytest.raises(LeanvisionError, match="fp16 only through its TensorRT provider"):
        ort_gpu_providers(both[1:], cuda1, "fp16")
    with pytest.raises(LeanvisionError, match="no CUDA or TensorRT provider.*pip install onnxruntime-gpu"):
        ort_gpu_providers(["CPUExecutionProvider"], cuda1)


def test_ort_silent_cpu_fallback_is_refused(monkeypatch):
    import onnxruntime as ort

    from leanvision.runtimes import get_runtime

    # a CPU-only build told it has CUDA: ORT then creates a CPU session silently, as when libcudnn fails to load
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3)).eval()
    with pytest.raises(LeanvisionError, match="onnxruntime fell back to CPU.*session providers: CPUExecutionProvider"):
        get_runtime("onnxruntime").prepare(model, torch.randn(2, 3, 2, 2), device="cuda")
    with pytest.raises(LeanvisionError, match="fp16 only through TensorRT on CUDA"):
        get_runtime("onnxruntime").prepare(model, torch.randn(2, 3, 2, 2), precision="fp16")


def test_ort_io_binding_matches_session_run(tmp_path):
    from leanvision.runtimes import bound_predict, export_onnx, ort_session

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.Flatten(), nn.Linear(16, 5)).eval()
    session = ort_session(export_onnx(model, (3, 4, 4), tmp_path / "m.onnx"), 1)
    predict = bound_predict(session, torch.device("cpu"))
    for n in (1, 7):
        x = torch.randn(n, 3, 4, 4)
        expected = session.run(None, {"input": x.numpy()})[0]
        assert torch.equal(predict(x), torch.from_numpy(expected))


# ---- 8: TPU ----------------------------------------------------------------------------------------------------------


def test_no_inference_mode_on_xla_and_loss_read_after_the_step(digits, tmp_path, monkeypatch):
    from leanvision import train
    from leanvision.train import amp, loop

    assert isinstance(devices.inference_context(torch.device("xla")), torch.no_grad)
    assert isinstance(devices.inference_context(torch.device("cpu")), torch.inference_mode)
    log = []
    monkeypatch.setattr(amp, "step_done", lambda device: log.append("step"))
    add = LossTracker.add
    monkeypatch.setattr(LossTracker, "add", lambda self, loss, n: log.append("read") or add(self, loss, n))
    monkeypatch.setattr(loop, "LossTracker", LossTracker)
    train.fit(nn.Sequential(nn.Flatten(), nn.Linear(784, 10)), digits, TrainConfig(epochs=1, device="cpu"), tmp_path,
              progress=False)
    assert log and log == ["step", "read"] * (len(log) // 2)  # the read follows the step (no extra XLA graph)


# ---- 10, 11: bench state and torch-compile ---------------------------------------------------------------------------


def test_bench_sets_the_device_up_and_records_cuda_flags(monkeypatch, fake_cuda):
    from leanvision.accel import bench
    from leanvision.measure import environment

    seen = []

    def fake_setup(name):
        seen.append(name)
        raise RuntimeError("stop here")

    monkeypatch.setattr(bench, "setup_device", fake_setup)
    with pytest.raises(RuntimeError, match="stop here"):
        bench.bench_run("no-such-run", bench.BenchConfig(device="cuda"))
    assert seen == ["cuda"]  # setup_device (cuDNN autotune set explicitly), not resolve_device
    assert devices.setup_device("cuda").type == "cuda" and torch.backends.cudnn.benchmark is True
    env = environment("cuda")
    assert {"cudnn_version", "cudnn_benchmark", "tf32_matmul", "tf32_cudnn"} <= set(env)


def test_torch_compile_refuses_shapes_past_the_recompile_limit(monkeypatch):
    from leanvision.runtimes import compiled as runtimes
    from leanvision.runtimes import get_runtime

    monkeypatch.setattr(runtimes, "compile_for_inference", lambda model, device, mode=None: model.eval())
    monkeypatch.setattr(runtimes, "recompile_limit", lambda: 2)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 3))
    predict = get_runtime("torch-compile").prepare(model, torch.randn(2, 3, 2, 2))
    predict(torch.randn(1, 3, 2, 2))
    predict(torch.randn(4, 3, 2, 2))
    predict(torch.randn(1, 3, 2, 2))  # a shape already compiled
    assert predict.recompiles == 1 and len(predict.compile_times_s) == 2
    with pytest.raises(LeanvisionError, match="recompile limit; shape \\(5, 3, 2, 2\\) would silently run eager"):
        predict(torch.randn(5, 3, 2, 2))
    graphs = get_runtime("torch-compile-cudagraphs")
    if not torch.cuda.is_available():
        assert graphs.is_available() == (False, "CUDA graphs need a CUDA GPU; none is visible to PyTorch here")
    with pytest.raises(LeanvisionError, match="runs on CUDA only"):
        graphs.prepare(model, torch.randn(2, 3, 2, 2), device="cpu")


def test_training_divergence_message_is_unchanged_on_cpu(digits, tmp_path):
    from leanvision.train import fit

    class Nan(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(784, 10)

        def forward(self, x):
            return self.fc(x.flatten(1)) * float("nan")

    with pytest.raises(TrainingDiverged, match=r"Loss became nan at epoch 1, step 1 .*no weights were saved"):
        fit(Nan(), digits, TrainConfig(epochs=1, device="cpu"), tmp_path, progress=False)
