"""GPU check: what works on a CUDA GPU and how fast, stage by stage, in at most 7 minutes (a rerun fits the budget).

Each stage runs in a fresh Python process with its own time budget (killed past it) and writes its JSON to
OUT/NN-stage.json as soon as it finishes (its output goes to OUT/NN-stage.log); OUT/summary.json lists them all.
A stage that cannot run says why (`skipped: ...`); one that breaks is `failed: ...` and the next one still runs.
`--smoke` runs every stage on the CPU in seconds on tiny data (the embedded digits set): it is a test in the suite
(tests/test_gpu_check.py), so the script cannot rot while no GPU is around.

Data (`--data DIR`; nothing is downloaded):
  DIR/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz   the four MNIST IDX files (12 MB)
  DIR/cifar10/<class>/*.jpg                                   a CIFAR-10 image folder, e.g. the 10,000 test images
                                                              (40 MB); time to 90/94 % only with >= 45,000 images
Stages without their data are skipped with that reason. Needs torch (CUDA build) and leanvision's dependencies;
pytest, triton and onnxruntime-gpu are optional (the stages that need them say so).

Launch on a GPU machine (from the repository root; copy the data into the git-ignored gpu-data/ first, 52 MB):
  mkdir -p gpu-data/mnist gpu-data/cifar10 && cp ../shared/data/mnist/*.gz gpu-data/mnist/ \
    && cp -r ../shared/data/cifar10/test_jpg/. gpu-data/cifar10/
  pip install -q -e '.[test]' ; python benchmarks/gpu_check.py --data gpu-data --out benchmarks/out/gpu_check
(with the device tool: carry ["gpu-data"] and `--out $OUT/gpu_check`, so the JSON files come back.)
Dry run anywhere: python benchmarks/gpu_check.py --smoke --out /tmp/gpu_check_smoke
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
TOTAL_BUDGET_S = 420  # 7 minutes on one GPU, all stages together

# (name, budget in seconds on a GPU, what it measures)
STAGES = [
    ("env", 15, "GPU, driver, torch/CUDA/cuDNN/NCCL versions, bf16, triton, ONNX Runtime providers"),
    ("memory", 20, "--memory-fraction cap (read back, OOM past it) and expandable segments verified in effect"),
    ("syncs", 35, "host syncs per training step (torch.cuda.set_sync_debug_mode), fast recipe and fp16"),
    ("pytest", 45, "pytest -m gpu (the suite's accelerator tests)"),
    ("mnist", 50, "MNIST fast recipe: time to 99 % test accuracy, 2 seeds, after a separate warm-up run"),
    ("precision", 35, "compact: training images/s and peak memory, fp32/bf16/fp16 x batch 128/512/2048"),
    ("compile", 60, "--compile: compile time, steady images/s vs eager, graphs compiled (recompiles)"),
    ("ddp", 20, "DistributedDataParallel with NCCL at world size 1 (init, steps, all-reduce, teardown)"),
    ("bench", 90, "leanvision bench: torch, torch-compile(-cudagraphs), onnxruntime CUDA x batch 1/256/4096"),
    ("cifar", 45, "CIFAR-10 fast recipe: training images/s, test accuracy per epoch within the budget"),
]


class Skip(Exception):
    """A stage that cannot run here, with the reason."""


class OverBudget(BaseException):
    """SIGTERM from the driver at the stage's budget (BaseException: no stage code catches it)."""


def _on_sigterm(signum, frame):
    raise OverBudget


# ---- driver ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    epilog = "stages (budget on a GPU):\n" + "\n".join(f"  {n:<10}{b:>4} s  {d}" for n, b, d in STAGES)
    epilog += f"\n  total budget {TOTAL_BUDGET_S} s; later stages are skipped when it runs out"
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "out" / "gpu_check"), help="folder for the JSON")
    parser.add_argument("--data", default=None, help="folder with mnist/ and cifar10/ (see above)")
    parser.add_argument("--device", default="cuda", help="cuda (default) or cuda:N")
    parser.add_argument("--smoke", action="store_true", help="every stage on the CPU on tiny data, in seconds")
    parser.add_argument("--stages", default=None, help="comma-separated subset, e.g. env,memory")
    parser.add_argument("--stage", default=None, help=argparse.SUPPRESS)  # internal: run one stage in this process
    args = parser.parse_args(argv)
    if args.stage:
        return run_stage(args)
    names = [n for n, _, _ in STAGES]
    chosen = args.stages.split(",") if args.stages else names
    unknown = [n for n in chosen if n not in names]
    if unknown:
        print(f"gpu_check: unknown stage(s) {', '.join(unknown)}. Expected some of: {', '.join(names)}.",
              file=sys.stderr)
        return 2
    if not args.smoke and not _cuda_visible():
        print("gpu_check: no CUDA device is visible to PyTorch; this check needs an NVIDIA GPU. Use --smoke for a "
              "dry run on the CPU. Nothing was measured.", file=sys.stderr)
        return 2
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    start, results = time.perf_counter(), []
    for i, (name, budget, what) in enumerate(STAGES):
        if name not in chosen:
            continue
        path = out / f"{i:02d}-{name}.json"
        path.unlink(missing_ok=True)
        total = TOTAL_BUDGET_S * (3 if args.smoke else 1)  # smoke: a busy CI CPU, not a GPU; same stages
        left = total - (time.perf_counter() - start)
        budget = max(budget, 120) if args.smoke else budget
        if left < 5:
            result = {"stage": name, "status": "skipped: the total budget ran out", "budget_s": budget}
            path.write_text(json.dumps(result, indent=2) + "\n")
        else:
            result = _run_child(args, name, min(budget, left), path, out / f"{i:02d}-{name}.log")
        results.append(result)
        print(f"{name:<10} {result['status'][:70]:<70} {result.get('wall_s', 0):6.1f} s  {result.get('summary', '')}",
              flush=True)
    summary = {"device": "cpu (smoke)" if args.smoke else args.device, "smoke": args.smoke,
               "total_wall_s": time.perf_counter() - start, "total_budget_s": TOTAL_BUDGET_S, "stages": results}
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str) + "\n")
    print(f"gpu_check: {sum(r['status'] == 'ok' for r in results)}/{len(results)} stages ok in "
          f"{summary['total_wall_s']:.0f} s; JSON in {out}")
    return 0


def _cuda_visible() -> bool:
    try:
        import torch
    except ImportError:
        return False
    return torch.cuda.is_available()


def _run_child(args, name: str, budget: float, path: Path, log: Path) -> dict:
    """Run one stage in a fresh process (own session: the whole group is killed at the budget)."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--stage", name, "--out", str(path.parent),
           "--device", args.device] + (["--data", args.data] if args.data else []) + (["--smoke"] if args.smoke else [])
    env = {**os.environ, "LEANVISION_OFFLINE": "1", "GPU_CHECK_BUDGET_S": f"{budget:.1f}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(REPO / "src"), os.environ.get("PYTHONPATH", "")) if p)}
    start = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env, cwd=REPO, start_new_session=True)
        try:
            rc = proc.wait(timeout=budget)
        except subprocess.TimeoutExpired:  # SIGTERM first: the stage writes what it measured so far
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            rc = None
    wall = time.perf_counter() - start
    if path.is_file():
        return json.loads(path.read_text())
    tail = log.read_text(errors="replace").strip().splitlines()[-1:] or ["no output"]
    status = f"failed: over its {budget:.0f} s budget" if rc is None else f"failed: exit {rc}: {tail[0][:200]}"
    result = {"stage": name, "status": status, "budget_s": budget, "wall_s": wall, "log": str(log)}
    path.write_text(json.dumps(result, indent=2) + "\n")
    return result


def run_stage(args) -> int:
    """Child side: run `args.stage`, write its JSON (also when it fails or is skipped)."""
    index = [n for n, _, _ in STAGES].index(args.stage)
    path = Path(args.out) / f"{index:02d}-{args.stage}.json"
    budget = float(os.environ.get("GPU_CHECK_BUDGET_S", STAGES[index][1]))
    ctx = Ctx(args, budget)
    start = time.perf_counter()
    signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        result = {"status": "ok", **STAGE_FUNCS[args.stage](ctx)}
    except OverBudget:
        result = {"status": f"failed: over its {budget:.0f} s budget (partial results kept)", **ctx.partial}
    except Skip as e:
        result = {"status": f"skipped: {e}"}
    except Exception as e:  # noqa: BLE001 - a failing stage is a result; the driver goes on with the next one
        traceback.print_exc()
        first = (str(e).strip().splitlines() or [""])[0]
        result = {"status": f"failed: {type(e).__name__}: {first[:300]}"}
    result = {"stage": args.stage, "device": str(ctx.device), "smoke": ctx.smoke, "budget_s": budget,
              **result, "wall_s": time.perf_counter() - start}
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    return 0


class Ctx:
    """What a stage gets: the device, smoke mode, the data folder, its deadline."""

    def __init__(self, args, budget: float):
        import torch

        if str(REPO / "src") not in sys.path:
            sys.path.insert(0, str(REPO / "src"))
        self.smoke = bool(args.smoke)
        self.device = torch.device("cpu" if self.smoke else args.device)
        self.data = Path(args.data) if args.data else None
        self.out = Path(args.out)
        self.deadline = time.perf_counter() + budget - 3  # a margin to write the JSON
        self.partial: dict = {}  # what a stage measured so far, written if it is stopped at its budget

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def dataset(self, kind: str):
        """MNIST or the CIFAR-10 folder from --data; in smoke mode the embedded digits set (3 channels for cifar)."""
        from leanvision.data import load_dataset

        if self.smoke:  # a few hundred images: every code path, in seconds
            import dataclasses

            import numpy as np

            ds = load_dataset("digits", channels=3 if kind == "cifar" else None)
            cut = {k: getattr(ds, k).subset(np.arange(min(n, len(getattr(ds, k)))))
                   for k, n in (("train", 256), ("val", 64), ("test", 64)) if getattr(ds, k) is not None}
            return dataclasses.replace(ds, **cut)
        folder = (self.data / ("mnist" if kind == "mnist" else "cifar10")) if self.data else None
        if kind == "mnist":
            if folder is None or not (folder / "train-images-idx3-ubyte.gz").is_file():
                raise Skip(f"needs the MNIST .gz files in --data DIR/mnist (got --data {self.data})")
            return load_dataset("mnist", str(folder), download=False)
        if folder is None or not folder.is_dir():
            raise Skip(f"needs a CIFAR-10 image folder in --data DIR/cifar10 (got --data {self.data})")
        return load_dataset(str(folder))

    def sync(self) -> None:
        from leanvision.device import synchronize

        synchronize(self.device)


def _version(dist: str) -> str | None:
    import importlib.metadata

    try:
        return importlib.metadata.version(dist)
    except importlib.metadata.PackageNotFoundError:
        return None


# ---- stages ----------------------------------------------------------------------------------------------------------


def stage_env(ctx: Ctx) -> dict:
    import torch

    from leanvision.compile import compile_support
    from leanvision.measure import environment

    info = {"environment": environment(ctx.device), "cuda_available": torch.cuda.is_available(),
            "device_count": torch.cuda.device_count(), "triton": _version("triton"),
            "onnxruntime": _version("onnxruntime"), "onnxruntime_gpu": _version("onnxruntime-gpu"),
            "torch_compile": compile_support(ctx.device)}
    try:
        import onnxruntime as ort

        info["ort_providers"] = ort.get_available_providers()
    except ImportError as e:
        info["ort_providers"] = f"unavailable: {e}"
    if ctx.cuda:
        props = torch.cuda.get_device_properties(ctx.device)
        info.update(gpu_name=props.name, capability=f"{props.major}.{props.minor}",
                    total_memory_gib=props.total_memory / 2**30, bf16_supported=torch.cuda.is_bf16_supported(),
                    cudnn_version=torch.backends.cudnn.version())
        try:
            info["nccl_version"] = ".".join(map(str, torch.cuda.nccl.version()))
        except Exception as e:  # noqa: BLE001
            info["nccl_version"] = f"unavailable: {e}"
        try:
            smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total,power.limit",
                                  "--format=csv,noheader"], capture_output=True, text=True, timeout=10)
            info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
        except (OSError, subprocess.TimeoutExpired) as e:
            info["nvidia_smi"] = f"unavailable: {e}"
    info["summary"] = (f"{info.get('gpu_name', 'cpu')}, torch {torch.__version__}, cuDNN "
                       f"{info.get('cudnn_version')}, NCCL {info.get('nccl_version')}, triton {info['triton']}, "
                       f"ORT providers {info['ort_providers']}")
    return info


def stage_memory(ctx: Ctx) -> dict:
    import torch

    from leanvision.device import allocator_settings, setup_device
    from leanvision.errors import LeanvisionError

    if not ctx.cuda:  # smoke: the CPU must refuse both options with one line each
        refusals = {}
        for key, value in (("memory_fraction", 0.5), ("expandable_segments", True)):
            try:
                setup_device("cpu", **{key: value})
                refusals[key] = "accepted on cpu (wrong)"
            except LeanvisionError as e:
                refusals[key] = str(e)
        if any(v.endswith("(wrong)") for v in refusals.values()):
            raise RuntimeError(f"CUDA-only options accepted on the CPU: {refusals}")
        return {"refusals_on_cpu": refusals, "summary": "cpu refuses both CUDA allocator options"}
    assert not torch.cuda.is_initialized(), "the stage must start before CUDA is initialized"
    device = setup_device(str(ctx.device), memory_fraction=0.5, expandable_segments=True)
    index = device.index if device.index is not None else torch.cuda.current_device()
    total = torch.cuda.get_device_properties(index).total_memory
    read_back = torch.cuda.get_per_process_memory_fraction(index) if hasattr(
        torch.cuda, "get_per_process_memory_fraction") else None
    try:
        big = torch.empty(int(0.6 * total), dtype=torch.uint8, device=device)  # past the 50 % cap
        oom = False
        del big
    except torch.OutOfMemoryError:
        oom = True
    torch.cuda.empty_cache()
    blocks = [torch.empty(256 << 20, dtype=torch.uint8, device=device) for _ in range(3)]  # 3 x 256 MiB
    segments = [s for s in torch.cuda.memory_snapshot() if s.get("device", index) == index]
    flags = [s.get("is_expandable") for s in segments]
    settings = allocator_settings()
    by_settings = settings is not None and "expandable_segments:true" in settings.replace(" ", "").lower()
    by_snapshot = bool(flags) and all(f is True for f in flags)
    del blocks
    verified = ("verified: allocator settings and snapshot" if by_settings and by_snapshot
                else "verified: snapshot segments are expandable" if by_snapshot
                else "verified: allocator settings only" if by_settings else "not verified")
    return {"memory_fraction_set": 0.5, "memory_fraction_read_back": read_back, "oom_past_cap": oom,
            "allocator_settings": settings, "segments_for_3_blocks": len(segments), "segments_is_expandable": flags,
            "expandable_segments": verified,
            "summary": f"fraction read back {read_back}, OOM past cap: {oom}; expandable segments {verified} "
                       f"({len(segments)} segment(s) for 3 x 256 MiB)"}


def _fast_config(ctx: Ctx, dataset, **overrides):
    from leanvision.config import TrainConfig
    from leanvision.recipes import resolve_recipe

    recipe = resolve_recipe("fast", dataset.input_shape, str(ctx.device))
    values = {**recipe.train, "device": str(ctx.device), **overrides}
    return recipe, TrainConfig(**values)


def _model(recipe, dataset):
    from leanvision.models import create_model

    c, h, w = dataset.input_shape
    return create_model(recipe.model, num_classes=dataset.num_classes, in_chans=c, img_size=(h, w),
                        **recipe.model_kwargs)


def stage_syncs(ctx: Ctx) -> dict:
    import warnings
    from collections import Counter

    import torch

    from leanvision.train import fit

    dataset = ctx.dataset("mnist")
    rows = ctx.partial.setdefault("rows", [])
    for precision in (None, "fp16") if ctx.cuda else (None,):
        recipe, cfg = _fast_config(ctx, dataset, epochs=1, **({"precision": precision} if precision else {}))
        torch.manual_seed(0)
        model = _model(recipe, dataset)
        with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            if ctx.cuda:
                torch.cuda.set_sync_debug_mode("warn")
            try:
                history = fit(model, dataset, cfg, tmp, progress=False)
            finally:
                if ctx.cuda:
                    torch.cuda.set_sync_debug_mode(0)
        syncs = [w for w in caught if "synchroniz" in str(w.message).lower()]
        steps = -(-len(dataset.train) // cfg.batch_size)
        sites = Counter(f"{Path(w.filename).name}:{w.lineno}" for w in syncs)
        rows.append({"precision": cfg.precision, "batch_size": cfg.batch_size, "steps": steps,
                     "syncs_total_incl_epoch_end": len(syncs) if ctx.cuda else None,
                     "syncs_per_step": len(syncs) / steps if ctx.cuda else None,
                     "top_sites": sites.most_common(6), "train_images_per_s": history[-1]["train_images_per_s"]})
        if ctx.left() < 10:
            break
    per_step = ", ".join(f"{r['precision']}: {r['syncs_per_step']}" for r in rows)
    return {"rows": rows, "note": "syncs counted over one epoch including the epoch-end evaluation and checkpoint",
            "summary": f"syncs/step {per_step}" if ctx.cuda else "sync debug mode is CUDA-only; fit ran on cpu"}


def stage_pytest(ctx: Ctx) -> dict:
    import importlib.util

    if importlib.util.find_spec("pytest") is None:
        pip = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--retries", "0", "--timeout", "5",
                              "pytest"], capture_output=True, text=True, timeout=max(5.0, ctx.left() / 3))
        if pip.returncode != 0:
            raise Skip("pytest is not installed and pip could not install it (no registry reachable?)")
    targets = ["tests/test_accel.py"] if ctx.smoke else ["tests"]
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "-p", "no:cacheprovider", "-rs", *targets]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, timeout=max(5.0, ctx.left()))
    lines = [line for line in proc.stdout.strip().splitlines() if line.strip()]
    tail = lines[-1] if lines else proc.stderr.strip()[-300:]
    if proc.returncode not in (0, 5):  # 5: nothing collected
        return {"returncode": proc.returncode, "output_tail": proc.stdout[-4000:], "summary": tail,
                "status": f"failed: pytest -m gpu: {tail}"}
    return {"returncode": proc.returncode, "output_tail": proc.stdout[-2000:], "summary": tail}


def stage_mnist(ctx: Ctx) -> dict:
    import torch

    from leanvision.runtimes.eager import predict_logits
    from leanvision.train import fit

    dataset = ctx.dataset("mnist")
    target = 0.99
    recipe, cfg = _fast_config(ctx, dataset, **({"epochs": 1} if ctx.smoke else {}))
    with tempfile.TemporaryDirectory() as tmp:  # warm-up run, not timed: CUDA context, cuDNN autotune, allocator
        torch.manual_seed(99)
        warm_cfg = _fast_config(ctx, dataset, epochs=1)[1]
        start = time.perf_counter()
        fit(_model(recipe, dataset), dataset, warm_cfg, tmp, progress=False)
        warmup_s = time.perf_counter() - start
    runs = ctx.partial.setdefault("runs", [])
    for seed in (0,) if ctx.smoke else (0, 1):
        if runs and ctx.left() < 2 * warmup_s + 5:
            runs.append({"seed": seed, "status": "skipped: stage budget"})
            continue
        run_cfg = _fast_config(ctx, dataset, seed=seed, epochs=cfg.epochs)[1]
        torch.manual_seed(seed)
        model = _model(recipe, dataset)
        epochs = []

        def on_epoch_end(record, net, epochs=epochs):
            logits, labels = predict_logits(net, dataset.test, dataset.mean, dataset.std,
                                            next(net.parameters()).device)
            epochs.append({"epoch": record["epoch"], "epoch_time_s": record["epoch_time_s"],
                           "train_images_per_s": record["train_images_per_s"],
                           "test_accuracy": (logits.argmax(1) == labels).float().mean().item()})

        with tempfile.TemporaryDirectory() as tmp:
            fit(model, dataset, run_cfg, tmp, progress=False, on_epoch_end=on_epoch_end)
        reached = next((i for i, e in enumerate(epochs) if e["test_accuracy"] >= target), None)
        runs.append({"seed": seed, "status": "ok", "epochs": epochs, "final_test_accuracy": epochs[-1]["test_accuracy"],
                     "time_to_99_s": sum(e["epoch_time_s"] for e in epochs[:reached + 1]) if reached is not None
                     else None})
    done = [r for r in runs if r["status"] == "ok"]
    text = "; ".join(f"seed {r['seed']}: to 99% {r['time_to_99_s'] and round(r['time_to_99_s'], 2)} s, acc "
                     f"{r['final_test_accuracy']:.4f}" for r in done)
    return {"recipe": {"model": recipe.model, **cfg.__dict__}, "warmup_run_s": warmup_s, "runs": runs,
            "timing": "epoch_time_s only (training steps; evaluation and checkpoints excluded); warm-up run apart",
            "summary": f"{cfg.precision} batch {cfg.batch_size}: {text}"}


def stage_precision(ctx: Ctx) -> dict:
    import torch
    import torch.nn.functional as F

    from leanvision.config import TrainConfig
    from leanvision.device import autocast
    from leanvision.models import create_model
    from leanvision.train import make_optimizer

    precisions = ("fp32", "bf16", "fp16") if ctx.cuda else ("fp32", "bf16")
    sizes, steps, warmup = ((128, 512, 2048), 20, 3) if ctx.cuda else ((4,), 1, 1)
    if ctx.cuda:
        torch.backends.cudnn.benchmark = True
    rows = ctx.partial.setdefault("rows", [])
    for precision in precisions:
        for batch in sizes:
            if ctx.left() < 3:
                rows.append({"precision": precision, "batch_size": batch, "status": "skipped: stage budget"})
                continue
            torch.manual_seed(0)
            model = create_model("compact", num_classes=10, in_chans=1, img_size=(28, 28)).to(ctx.device).train()
            optimizer = make_optimizer(model, TrainConfig(optimizer="sgd", learning_rate=0.01), ctx.device)
            scaler = torch.amp.GradScaler("cuda") if precision == "fp16" else None
            x = torch.randn(batch, 1, 28, 28, device=ctx.device)
            y = torch.randint(0, 10, (batch,), device=ctx.device)

            def step():
                with autocast(ctx.device, precision):
                    loss = F.cross_entropy(model(x).float(), y)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()

            for _ in range(warmup):
                step()
            ctx.sync()
            if ctx.cuda:
                torch.cuda.reset_peak_memory_stats(ctx.device)
            start = time.perf_counter()
            for _ in range(steps):
                step()
            ctx.sync()
            seconds = time.perf_counter() - start
            rows.append({"precision": precision, "batch_size": batch, "status": "ok", "steps": steps,
                         "train_images_per_s": batch * steps / seconds,
                         "peak_memory_mib": torch.cuda.max_memory_allocated(ctx.device) / 2**20 if ctx.cuda else None})
    if not ctx.cuda:
        rows.append({"precision": "fp16", "status": "unsupported: fp16 autocast is CUDA-only here"})
    ok = [r for r in rows if r["status"] == "ok"]
    return {"model": "compact (MNIST 1x28x28)", "rows": rows, "unit": "training images/s (fwd+bwd+step), MiB",
            "summary": ", ".join(f"{r['precision']}@{r['batch_size']}: {r['train_images_per_s']:,.0f} img/s"
                                 for r in ok)}


def stage_compile(ctx: Ctx) -> dict:
    import functools

    import torch

    from leanvision.compile import compile_support
    from leanvision.train import fit

    ok, why = compile_support(ctx.device)
    if not ok:
        raise Skip(why)
    if ctx.smoke:  # Dynamo's path without minutes of C++ compilation on the CPU
        torch.compile = functools.partial(torch.compile, backend="eager")
    from torch._dynamo.utils import counters

    dataset = ctx.dataset("mnist")
    rows = {}
    for mode in ("eager", "compiled"):  # compiled up front: its epoch is steady speed; the eager one has autotune
        recipe, cfg = _fast_config(ctx, dataset, epochs=1, compile=mode == "compiled")
        torch.manual_seed(0)
        with tempfile.TemporaryDirectory() as tmp:
            history = fit(_model(recipe, dataset), dataset, cfg, tmp, progress=False)
        rows[mode] = {"compile_time_s": history[0].get("compile_time_s"),
                      "steady_images_per_s": history[-1]["train_images_per_s"], "epochs": len(history),
                      "batch_size": cfg.batch_size, "precision": cfg.precision}
    stats = dict(counters.get("stats", {}))
    rows["compiled"].update(unique_graphs=stats.get("unique_graphs"), frames_compiled=stats.get("calls_captured"),
                            recompile_reasons=dict(counters.get("recompiles", {})) or None)
    c, e = rows["compiled"], rows["eager"]
    return {"rows": rows, "speedup": c["steady_images_per_s"] / e["steady_images_per_s"],
            "summary": f"compile {c['compile_time_s']:.1f} s, steady {c['steady_images_per_s']:,.0f} vs eager "
                       f"{e['steady_images_per_s']:,.0f} img/s, graphs {c['unique_graphs']}"}


def stage_ddp(ctx: Ctx) -> dict:
    import socket

    import torch
    import torch.distributed as dist
    import torch.nn.functional as F

    from leanvision.distributed import DataParallel
    from leanvision.models import create_model

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    backend = "nccl" if ctx.cuda else "gloo"
    if ctx.cuda:
        torch.cuda.set_device(ctx.device)
        dist.init_process_group(backend, rank=0, world_size=1, device_id=ctx.device)
    else:
        dist.init_process_group(backend, rank=0, world_size=1)
    try:
        torch.manual_seed(0)
        model = create_model("compact", num_classes=10, in_chans=1, img_size=(28, 28)).to(ctx.device)
        batch, steps = (512, 30) if ctx.cuda else (4, 1)
        dp = DataParallel(model, ctx.device, batch)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.01)
        x = torch.randn(batch, 1, 28, 28, device=ctx.device)
        y = torch.randint(0, 10, (batch,), device=ctx.device)
        for i in range(steps + 3):
            if i == 3:
                ctx.sync()
                start = time.perf_counter()
            loss = F.cross_entropy(dp.ddp(x), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        ctx.sync()
        seconds = time.perf_counter() - start
        t = torch.ones(4, device=ctx.device)
        dist.all_reduce(t)
        dist.barrier()
        reduced = t.tolist()
    finally:
        dist.destroy_process_group()
    nccl = ".".join(map(str, torch.cuda.nccl.version())) if ctx.cuda else None
    return {"backend": backend, "nccl_version": nccl, "world_size": 1, "batch_size": batch, "steps": steps,
            "train_images_per_s": batch * steps / seconds, "all_reduce": reduced,
            "summary": f"{backend} world 1: {batch * steps / seconds:,.0f} img/s at batch {batch}, all-reduce ok"}


def stage_bench(ctx: Ctx) -> dict:
    from leanvision.accel.bench import BenchConfig, bench_run
    from leanvision.config import DataConfig, RunConfig, TrainConfig
    from leanvision.errors import LeanvisionError
    from leanvision.runs import train_run
    from leanvision.runtimes import get_runtime

    dataset = ctx.dataset("mnist")
    work = Path(tempfile.mkdtemp(prefix="gpu-check-bench-"))
    data = DataConfig("digits") if ctx.smoke else DataConfig("mnist", str(ctx.data / "mnist"))
    train_run(RunConfig(model="compact", data=data, train=TrainConfig(epochs=1, device=str(ctx.device))),
              work / "run", progress=False, dataset=dataset)
    sizes = (1, 8) if ctx.smoke else (1, 256, 4096)
    plan = [("torch", ("fp32", "bf16", "fp16") if ctx.cuda else ("fp32",)), ("onnxruntime", ("fp32",)),
            ("torch-compile", ("fp32",)), ("torch-compile-cudagraphs", ("fp32",))]
    rows = ctx.partial.setdefault("rows", [])
    for name, precisions in plan:
        runtime = get_runtime(name)
        ok, reason = runtime.is_available()
        if ok and ctx.smoke and name.startswith("torch-compile"):
            ok, reason = False, "skipped in --smoke (TorchInductor takes minutes on a CPU)"
        if not ok:
            rows.append({"runtime": name, "status": f"unavailable: {reason}"})
            continue
        for precision in precisions:
            if ctx.left() < (30 if name.startswith("torch-compile") else 10):  # compiling 4 shapes takes a while
                rows.append({"runtime": name, "precision": precision, "status": "skipped: stage budget"})
                continue
            config = BenchConfig(runtimes=(name,), precisions=(precision,), batch_sizes=sizes, device=str(ctx.device),
                                 repeats=3 if ctx.smoke else 20, warmup=1 if ctx.smoke else 5,
                                 accuracy_batch_size=sizes[-1])
            try:
                rows += bench_run(work / "run", config, data_dir=None if ctx.smoke else str(ctx.data / "mnist"))
            except LeanvisionError as e:
                rows.append({"runtime": name, "precision": precision, "status": f"unsupported: {e}"})
    ok_rows = [r for r in rows if r.get("status") == "ok"]
    text = ", ".join(f"{r['runtime']} {r['precision']} b{r['batch_size']}: {r['images_per_s']:,.0f}" for r in ok_rows
                     if r["batch_size"] == sizes[-1])
    return {"rows": rows, "summary": f"img/s {text}; {len(rows) - len(ok_rows)} row(s) not ok"}


def stage_cifar(ctx: Ctx) -> dict:
    import torch

    from leanvision.runtimes.eager import predict_logits
    from leanvision.train import fit

    dataset = ctx.dataset("cifar")
    recipe, cfg = _fast_config(ctx, dataset, **({"epochs": 1} if ctx.smoke else {}))
    full = len(dataset.train) >= 45_000
    epochs: list[dict] = ctx.partial.setdefault("epochs", [])

    class _Stop(Exception):
        pass

    def on_epoch_end(record, net):
        logits, labels = predict_logits(net, dataset.test, dataset.mean, dataset.std, next(net.parameters()).device)
        epochs.append({"epoch": record["epoch"], "epoch_time_s": record["epoch_time_s"],
                       "train_images_per_s": record["train_images_per_s"],
                       "test_accuracy": (logits.argmax(1) == labels).float().mean().item()})
        if ctx.left() < 2.5 * record["epoch_time_s"] + 5:
            raise _Stop

    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        try:
            fit(_model(recipe, dataset), dataset, cfg, tmp, progress=False, on_epoch_end=on_epoch_end)
        except _Stop:
            pass
    def time_to(target):
        if not full:
            return f"not measured: {len(dataset.train)} training images (a subset; needs >= 45,000)"
        hit = next((i for i, e in enumerate(epochs) if e["test_accuracy"] >= target), None)
        return sum(e["epoch_time_s"] for e in epochs[:hit + 1]) if hit is not None else "not reached in budget"

    steady = epochs[1:] or epochs
    rate = sum(e["train_images_per_s"] for e in steady) / len(steady)
    return {"train_images": len(dataset.train), "test_images": len(dataset.test), "batch_size": cfg.batch_size,
            "precision": cfg.precision, "epochs_run": len(epochs), "epochs_planned": cfg.epochs, "epochs": epochs,
            "train_images_per_s_after_epoch_1": rate, "time_to_90_s": time_to(0.90), "time_to_94_s": time_to(0.94),
            "summary": f"{rate:,.0f} img/s ({cfg.precision}, batch {cfg.batch_size}), {len(epochs)} epoch(s), "
                       f"test acc {epochs[-1]['test_accuracy']:.4f}"}


STAGE_FUNCS = {"env": stage_env, "memory": stage_memory, "syncs": stage_syncs, "pytest": stage_pytest,
               "mnist": stage_mnist, "precision": stage_precision, "compile": stage_compile, "ddp": stage_ddp,
               "bench": stage_bench, "cifar": stage_cifar}
assert list(STAGE_FUNCS) == [n for n, _, _ in STAGES]

if __name__ == "__main__":
    sys.exit(main())
