"""`leanvision export`: write a run's model as ONNX (dynamic batch) and prove it classifies like PyTorch.

After writing the file, the run's test split (its validation split when it has no test split) is classified twice:
by the PyTorch model (eager, fp32) and by ONNX Runtime on the exported file itself. Both accuracies are returned;
`parity_ok` is False when they differ by more than `tolerance_pp` percentage points.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .. import __version__
from ..config import ExportConfig
from ..data.normalize import normalizer
from ..errors import LeanvisionError
from ..measure.counts import file_bytes
from ..results import Result
from ..rundir import Run, load_run
from ..runtimes import (
    DEFAULT_OPSET,
    ONNX_INPUT_NAME,
    check_opset,
    export_onnx,
    get_runtime,
    make_session,
    predict_batches,
    write_metadata,
)

FORMATS = ("onnx",)
TOLERANCE_PP = 0.1  # allowed |accuracy difference| between PyTorch and ONNX Runtime, in percentage points


@dataclass(kw_only=True)
class ExportResult(Result):
    """`export`'s result: the file written and the accuracy parity check (`parity_ok`: ONNX Runtime's accuracy on
    `images` images of `split` is within `tolerance_pp` percentage points of the reference's)."""

    path: str
    format: str
    opset: int
    dynamic_batch: bool
    file_bytes: int
    split: str
    images: int
    reference: str
    reference_accuracy: float
    torch_accuracy: float | None
    onnxruntime_accuracy: float
    difference_pp: float
    tolerance_pp: float
    parity_ok: bool
    prediction_agreement: float | None = None
    max_abs_logit_diff: float | None = None


def export_run(run_dir: str | Path | Run, out: str | Path | None = ExportConfig.out, *, fmt: str = ExportConfig.format,
               opset: int = ExportConfig.opset, data_dir: str | None = None, weights: str = "best",
               model: nn.Module | None = None) -> dict[str, Any]:
    """Export a run's model and compare ONNX Runtime's test accuracy with PyTorch's.

    `run_dir`: a run directory or a loaded `runs.Run`; `model`: the module instance for a run directory trained from
    your own nn.Module. `out` defaults to RUN/model.onnx; for an int8 run (whose own model.onnx is its model) to
    RUN/export/model.onnx. A file of the run itself is never overwritten, and an int8 run's graph keeps its opset.

    Returns a dict: `path`, `format`, `opset`, `dynamic_batch`, `file_bytes`, `split`, `images`,
    `reference` (what the file is compared with: "PyTorch fp32", or an int8 run's own ONNX model),
    `reference_accuracy`, `torch_accuracy` (None for an int8 run: it has no PyTorch model), `onnxruntime_accuracy`,
    `difference_pp`, `tolerance_pp`, `parity_ok`, `prediction_agreement` (fraction of identical predicted classes),
    `max_abs_logit_diff`, `metadata` (the `metadata_props` written into the file: classes, normalization, layout).

    Example: `export_run("runs/compact")["parity_ok"]`.
    """
    if fmt not in FORMATS:
        raise LeanvisionError(f"Invalid format {fmt!r}. Expected one of: {', '.join(FORMATS)}.")
    check_opset(opset)
    run = run_dir if isinstance(run_dir, Run) else load_run(run_dir, weights=weights, model=model)
    path = _out_path(run, out, opset)
    export_onnx(run.model, run.input_shape, path, opset=opset)
    metadata = write_metadata(path, run.meta, __version__)
    ok, reason = get_runtime("onnxruntime").is_available()
    if not ok:
        raise LeanvisionError(f"Exported {path}, but its accuracy cannot be checked: {reason}")
    import onnx  # a heavy library: imported when an export runs, not with the CLI

    graph = onnx.load(str(path))
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    used_opset = max((o.version for o in graph.opset_import if o.domain in ("", "ai.onnx")), default=opset)
    session = make_session(path)  # the session the onnxruntime runtime opens on the CPU

    dataset = run.load_dataset(data_dir)
    split_name, split = dataset.evaluation_split
    images = normalizer(dataset.mean, dataset.std, torch.device("cpu"))(split.images)
    int8 = run.is_onnx
    if int8:  # an int8 run: its reference is its own ONNX session (no PyTorch fp32 model exists)
        with torch.no_grad():
            torch_logits = predict_batches(run.model, images)
    else:
        torch_logits = predict_batches(get_runtime("torch").prepare(run.model, images[:2]), images)
    ort_logits = predict_batches(
        lambda x: torch.from_numpy(session.run(None, {ONNX_INPUT_NAME: x.contiguous().numpy()})[0]), images
    )  # batches of 256 and the remainder: the dynamic batch dimension is exercised too
    labels = split.labels
    torch_acc = (torch_logits.argmax(1) == labels).float().mean().item()
    ort_acc = (ort_logits.argmax(1) == labels).float().mean().item()
    difference_pp = abs(torch_acc - ort_acc) * 100
    return {
        "path": str(path),
        "format": fmt,
        "opset": used_opset,
        "dynamic_batch": bool(dims) and bool(dims[0].dim_param),
        "file_bytes": file_bytes(path),
        "split": split_name,
        "images": len(labels),
        "reference": "the run's int8 model (ONNX Runtime)" if int8 else "PyTorch fp32",
        "reference_accuracy": torch_acc,
        "torch_accuracy": None if int8 else torch_acc,
        "onnxruntime_accuracy": ort_acc,
        "difference_pp": difference_pp,
        "tolerance_pp": TOLERANCE_PP,
        "parity_ok": difference_pp <= TOLERANCE_PP + 1e-9,
        "prediction_agreement": (torch_logits.argmax(1) == ort_logits.argmax(1)).float().mean().item(),
        "max_abs_logit_diff": (torch_logits - ort_logits).abs().max().item(),
        "metadata": metadata,
    }


def _out_path(run, out: str | Path | None, opset: int) -> Path:
    """Where to write: `out`, or the default; refuses a path that is a file of the run (an int8 run's own model)."""
    own = run.meta.get("onnx_file") if run.meta.get("runtime") == "onnxruntime" else None
    if own is not None and opset != DEFAULT_OPSET:
        raise LeanvisionError(f"Run {run.path} is int8: its ONNX graph ({own}) is already fixed, so opset={opset} "
                              "cannot change it. Export without `opset`, or export the fp32 source run.")
    path = Path(out) if out else run.path / ("export" if own else "") / "model.onnx"
    if own is not None and path.resolve() == (run.path / own).resolve():
        raise LeanvisionError(f"{path} is the int8 run's own model; exporting there would overwrite it. Choose "
                              f"another `out` (default: {run.path / 'export' / 'model.onnx'}).")
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
