"""ONNX graph analysis for int8 quantization: which layers run integer kernels and which nodes stay fp32.

Graph rewrites and sessions live in `leanvision.runtimes` (`graph`, `session`).
"""

from __future__ import annotations

import collections
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..runtimes.session import make_session

STEM_MIN_REDUCTION = 32  # convs whose dot products are shorter than this stay fp32 (see quantize.py)
_INT_OPS = {"QLinearConv": "conv", "ConvInteger": "conv", "QGemm": "dense", "QLinearMatMul": "dense",
            "MatMulInteger": "dense", "DynamicQuantizeMatMul": "dense"}
_FLOAT_OPS = {"Conv": "conv", "FusedConv": "conv", "Gemm": "dense", "FusedGemm": "dense", "MatMul": "dense",
              "FusedMatMul": "dense"}


def graph_coverage(onnx_path: str | Path, session_kwargs: dict | None = None) -> dict[str, Any]:
    """Which weight layers run as integer kernels after ORT's (portable, EXTENDED-level) graph fusion.

    Returns `{"int8": {"conv": n, "dense": n}, "fp32": {"conv": n, "dense": n}, "ops": {op_type: count}}`.
    """
    import onnx

    with tempfile.TemporaryDirectory(prefix="leanvision-ort-") as tmp:
        optimized = str(Path(tmp) / "optimized.onnx")
        make_session(onnx_path, session_kwargs, optimized_path=optimized, level="extended")
        ops = collections.Counter(node.op_type for node in onnx.load(optimized).graph.node)
    coverage: dict[str, Any] = {"int8": {"conv": 0, "dense": 0}, "fp32": {"conv": 0, "dense": 0}, "ops": dict(ops)}
    for op, count in ops.items():
        if op in _INT_OPS:
            coverage["int8"][_INT_OPS[op]] += count
        elif op in _FLOAT_OPS:
            coverage["fp32"][_FLOAT_OPS[op]] += count
    return coverage


def stem_nodes(onnx_model) -> list[str]:
    """Names of the first Conv (when its reduction in_channels*kh*kw is below STEM_MIN_REDUCTION) and of the
    activation/pooling nodes that follow it in a single chain; empty when the first conv is large enough."""
    graph = onnx_model.graph
    weights = {init.name: list(init.dims) for init in graph.initializer}
    conv = next((n for n in graph.node if n.op_type == "Conv"), None)
    if conv is None or conv.input[1] not in weights:
        return []
    groups = next((a.i for a in conv.attribute if a.name == "group"), 1)
    _, per_group_in, *kernel = weights[conv.input[1]]
    if groups != 1 or per_group_in * int(torch.tensor(kernel).prod()) >= STEM_MIN_REDUCTION:
        return []
    names, tensor = [conv.name], conv.output[0]
    while True:
        consumers = [n for n in graph.node if tensor in n.input]
        if len(consumers) != 1 or consumers[0].op_type not in ("Relu", "Clip", "MaxPool", "AveragePool"):
            return names
        names.append(consumers[0].name)
        tensor = consumers[0].output[0]
