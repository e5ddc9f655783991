"""The model a server answers with: a run directory loaded into a runtime, wrapped as uint8 images in,
probabilities out (`load_model`), with its model card and the study report beside it."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.normalize import normalizer
from ..errors import LeanvisionError
from ..io import read_json
from ..measure import count_macs, file_bytes
from ..registry import did_you_mean
from ..rundir import is_onnx, load_run
from ..runtimes import RUNTIMES, get_runtime


@dataclass
class LoadedModel:
    infer: Any  # uint8 (N, C, H, W) numpy -> float32 probabilities (N, K) numpy
    card: dict[str, Any]
    classes: list[str]
    input_shape: tuple[int, int, int]
    report: Path | None


def study_report(run_dir: Path) -> Path | None:
    """The study report of a run that lives in a study folder (`<study>/variants/<name>/seed<k>[-optimized]`)."""
    run_dir = run_dir.resolve()
    if len(run_dir.parents) >= 3 and run_dir.parent.parent.name == "variants":
        report = run_dir.parents[2] / "report.html"
        if report.is_file():
            return report
    return None


def load_model(run_dir: str | Path, runtime: str = "onnxruntime") -> LoadedModel:
    """Load a run and wrap it for serving: `infer` applies the training normalization, the runtime and softmax."""
    path = Path(run_dir)
    if not (path / "model.json").is_file():
        raise LeanvisionError(f"Run directory {path} not found (no model.json). Expected a folder written by "
                              "`leanvision train` or `leanvision optimize`.")
    if runtime not in RUNTIMES.names():
        raise LeanvisionError(f"Unknown runtime={runtime!r}.{did_you_mean(runtime, RUNTIMES.names())} Expected one "
                              f"of: {', '.join(RUNTIMES.names())}.")
    engine = get_runtime(runtime)
    ok, reason = engine.is_available()
    if not ok:
        raise LeanvisionError(f"Runtime {runtime!r} is not available here: {reason}")
    run = load_run(path)
    shape = run.input_shape
    onnx_file = run.model.onnx_path if is_onnx(run.model) else None
    if onnx_file is not None and not engine.onnx_models:
        raise LeanvisionError(f"{path} holds an int8 ONNX model, which runtime {runtime!r} cannot run. "
                              "Use runtime='onnxruntime'.")
    predict = engine.prepare(run.model, torch.zeros((1, *shape)), precision="fp32", device="cpu")
    normalize = normalizer(run.meta["mean"], run.meta["std"], torch.device("cpu"))

    def infer(images: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            logits = predict(normalize(torch.from_numpy(images)))
            return torch.softmax(logits.float(), dim=1).numpy()

    result = read_json(path / "result.json") if (path / "result.json").is_file() else {}
    weights = Path(onnx_file) if onnx_file is not None else path / "best.safetensors"
    macs = run.meta.get("macs")
    if macs is None and onnx_file is None:
        macs = count_macs(run.model, shape)
    report = study_report(path)
    card = {
        "name": run.meta.get("model") or "spec", "run": "/".join(path.resolve().parts[-2 if report else -1:]),
        "dataset": (run.meta.get("dataset") or {}).get("name"), "classes": list(run.meta["classes"]),
        "input_shape": list(shape), "params": int(run.meta["num_params"]), "macs": macs,
        "file": weights.name, "file_bytes": file_bytes(weights), "runtime": runtime,
        "precision": "int8" if onnx_file is not None else "fp32",
        "providers": list(getattr(predict, "providers", ["torch-cpu"])), "threads": torch.get_num_threads(),
        "accuracy": result.get("test_accuracy"), "accuracy_images": result.get("test_total"),
        "techniques": list(run.meta.get("techniques") or []), "study_report": "/report" if report else None,
    }
    return LoadedModel(infer, card, list(run.meta["classes"]), shape, report)
