"""ONNX export (`export_onnx`) and the metadata a consumer needs to feed the exported model (`write_metadata`).

`onnx` is imported inside functions: a heavy library, kept off `import leanvision`'s path.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import logging
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..config import DEFAULT_OPSET
from ..errors import LeanvisionError, first_line
from ..io import atomic_write_bytes
from .onnx_model import is_onnx

ONNX_INPUT_NAME, ONNX_OUTPUT_NAME = "input", "logits"
MIN_OPSET = 13  # the lowest opset the legacy exporter handles well for these models


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path,
                opset: int = DEFAULT_OPSET) -> Path:
    """Export `model` (fp32, eval mode, on CPU) to an ONNX file with a dynamic batch dimension; returns the path.

    The legacy TorchScript exporter (`dynamo=False`) is tried first, as it is the most robust for small CNNs; if it
    fails, the `torch.export`-based exporter is used with opset `max(opset, 18)` (the lowest it implements). The
    graph's input is named `input` `(batch, C, H, W)` and its output `logits` `(batch, num_classes)`. The caller's
    model is not touched: a CPU copy is exported.

    Example: `export_onnx(model, (3, 32, 32), "runs/latest/model.onnx")`.
    """
    if len(input_shape) != 3:
        raise ValueError(f"Invalid `input_shape`. Expected (C, H, W). Received: input_shape={input_shape}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if is_onnx(model):  # already an ONNX model (an int8 run from `leanvision optimize`): copied as is
        if Path(model.onnx_path).resolve() != path.resolve():
            shutil.copyfile(model.onnx_path, path)
        return path
    net = copy.deepcopy(model).cpu().float().eval()
    example = torch.zeros((2, *input_shape))  # batch 2: a trace at batch 1 can bake the batch size into reshapes
    names = {"input_names": [ONNX_INPUT_NAME], "output_names": [ONNX_OUTPUT_NAME]}
    try:
        with _quiet_exporter():
            legacy = {"dynamo": False} if "dynamo" in inspect.signature(torch.onnx.export).parameters else {}
            torch.onnx.export(
                net,
                (example,),
                str(path),
                opset_version=opset,
                do_constant_folding=True,
                dynamic_axes={ONNX_INPUT_NAME: {0: "batch"}, ONNX_OUTPUT_NAME: {0: "batch"}},
                **names,
                **legacy,
            )
        return path
    except Exception as legacy_error:  # noqa: BLE001 - any exporter failure falls through to the other exporter
        first_error = legacy_error
    try:
        with _quiet_exporter():
            torch.onnx.export(
                net,
                (example,),
                str(path),
                opset_version=max(opset, 18),
                dynamo=True,
                verbose=False,
                dynamic_shapes=({0: torch.export.Dim("batch")},),
                **names,
            )
    except Exception as e:  # noqa: BLE001
        legacy, dynamo = (first_line(err, with_type=True, limit=200) for err in (first_error, e))
        raise LeanvisionError(
            f"ONNX export of {type(model).__name__} failed with both exporters "
            f"(legacy: {legacy}; dynamo: {dynamo}). "
            "Check that the model's forward uses only exportable ops, or skip the onnxruntime runtime."
        ) from e
    return path


def write_metadata(path: Path, meta: dict[str, Any], version: str) -> dict[str, str]:
    """Store what a consumer needs to feed the model in the ONNX file's `metadata_props` (string key/values; lists as
    JSON): class names, input layout and shape, the preprocessing `(pixel / 255 - mean) / std` per channel, and the
    leanvision `version` that wrote it."""
    import onnx  # a heavy library: imported when a file is written, not with the CLI

    c, h, w = meta["input_shape"]
    props = {
        "leanvision.classes": json.dumps(list(meta["classes"])),
        "leanvision.input_layout": "NCHW",
        "leanvision.input_shape": json.dumps([c, h, w]),
        "leanvision.input_channels": "grayscale" if c == 1 else "RGB",
        "leanvision.mean": json.dumps(list(meta["mean"])),
        "leanvision.std": json.dumps(list(meta["std"])),
        "leanvision.preprocessing": "float32 (pixel / 255 - mean) / std per channel; input name 'input', output "
                                    "'logits'",
        "leanvision.version": version,
    }
    model = onnx.load(str(path))
    kept = [p for p in model.metadata_props if p.key not in props]
    del model.metadata_props[:]
    model.metadata_props.extend(kept)
    for key, value in props.items():
        model.metadata_props.add(key=key, value=value)
    atomic_write_bytes(path, model.SerializeToString())
    return props


def check_opset(opset: int) -> None:
    """Raise a one-line error unless `MIN_OPSET <= opset <=` the installed onnx's highest opset."""
    try:
        import onnx

        highest = onnx.defs.onnx_opset_version()
    except ImportError:
        raise LeanvisionError("ONNX export needs the onnx package, a dependency of leanvision that is missing "
                              "here. Reinstall it: pip install 'onnx>=1.16'") from None
    if not MIN_OPSET <= opset <= highest:
        raise LeanvisionError(f"Invalid opset {opset}. Expected {MIN_OPSET}..{highest} (the installed onnx's "
                              f"highest); {DEFAULT_OPSET} suits ONNX Runtime, TensorRT and OpenVINO.")


@contextlib.contextmanager
def _quiet_exporter() -> Iterator[None]:
    """Silence the exporters' deprecation warnings and log chatter (measurement never prints); restored after."""
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        logger.setLevel(level)
