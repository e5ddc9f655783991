"""Inference runtimes, ONNX export, ONNX Runtime sessions and ONNX graph rewrites: everything that turns a model
into `predict(x) -> logits`, in one package.

- `base`: the `Runtime` interface, the `RUNTIMES` registry, `get_runtime`, `predict_batches`.
- `eager` (`torch`), `compiled` (`torch-compile`, `torch-compile-cudagraphs`), `ort` (`onnxruntime`,
  `onnxruntime-streams`), `openvino` (`openvino`): the runtimes; importing this package registers all of them.
- `export`: `export_onnx` and the ONNX file's metadata; `session`: every ONNX Runtime session (`ort_session`,
  `make_session`, GPU providers); `graph`: ONNX graph rewrites.
- `onnx_model`: `OnnxModule` (an int8 run's model.onnx as an `nn.Module`) and `is_onnx(model)`, the one way to ask;
  `eager.predict_logits`: a whole split's logits in eager PyTorch.

Timing lives in `leanvision.measure` (`measure_runtime`, `speed_b1_b256`), on top of this package.
Example: `predict = get_runtime("onnxruntime").prepare(model, torch.zeros(2, 3, 32, 32))`.
"""

from . import compiled, eager, openvino, ort  # noqa: F401  (each registers its runtimes in RUNTIMES)
from .base import PRECISIONS, RUNTIMES, Predict, Runtime, get_runtime, predict_batches
from .compiled import TorchCompileCudaGraphsRuntime, TorchCompileRuntime
from .eager import TorchRuntime, predict_logits
from .export import (
    DEFAULT_OPSET,
    MIN_OPSET,
    ONNX_INPUT_NAME,
    ONNX_OUTPUT_NAME,
    check_opset,
    export_onnx,
    write_metadata,
)
from .onnx_model import OnnxModule, is_onnx
from .openvino import OpenVinoRuntime
from .ort import OnnxRuntime, OnnxRuntimeStreams, bound_predict
from .session import check_gpu_session, make_session, ort_gpu_providers, ort_session, trt_cache_dir

__all__ = [
    "DEFAULT_OPSET",
    "MIN_OPSET",
    "ONNX_INPUT_NAME",
    "ONNX_OUTPUT_NAME",
    "PRECISIONS",
    "RUNTIMES",
    "OnnxModule",
    "OnnxRuntime",
    "OnnxRuntimeStreams",
    "OpenVinoRuntime",
    "Predict",
    "Runtime",
    "TorchCompileCudaGraphsRuntime",
    "TorchCompileRuntime",
    "TorchRuntime",
    "bound_predict",
    "check_gpu_session",
    "check_opset",
    "export_onnx",
    "get_runtime",
    "is_onnx",
    "make_session",
    "ort_gpu_providers",
    "ort_session",
    "predict_batches",
    "predict_logits",
    "trt_cache_dir",
    "write_metadata",
]
