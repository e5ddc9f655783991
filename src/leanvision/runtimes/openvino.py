"""The `openvino` runtime: Intel OpenVINO on the ONNX export, on the CPU.

`openvino` is an optional extra (`pip install 'leanvision[openvino]'`), imported inside the functions that use it.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from torch import nn

from ..errors import LeanvisionError
from .base import RUNTIMES, Predict, Runtime
from .export import export_onnx


@RUNTIMES.register("openvino")
class OpenVinoRuntime(Runtime):
    """Intel OpenVINO on the ONNX export of the model (dynamic batch), on the CPU.

    Precisions: fp32 (exact, `INFERENCE_PRECISION_HINT=f32`), bf16 (on CPUs with AVX-512 BF16 or AMX; OpenVINO
    falls back to fp32 elsewhere). Inputs are read from host memory; logits come back as float32 CPU tensors.
    Install with `pip install 'leanvision[openvino]'`.
    """

    name = "openvino"
    precisions = ("fp32", "bf16")
    host_input = True

    def is_available(self) -> tuple[bool, str]:
        try:
            import openvino  # noqa: F401
        except ImportError:
            return False, "openvino is not installed. Install it with: pip install 'leanvision[openvino]'"
        return True, ""

    def prepare(
        self, model: nn.Module, example: torch.Tensor, precision: str = "fp32", device: torch.device | str = "cpu"
    ) -> Predict:
        self._check_precision(precision)
        ok, reason = self.is_available()
        if not ok:
            raise LeanvisionError(reason)
        device = torch.device(device)
        if device.type != "cpu":
            raise LeanvisionError(f"Runtime 'openvino' runs on the CPU here. Received: device='{device}'. "
                                  "Use device='cpu' for openvino.")
        import openvino as ov

        core = ov.Core()
        config = {"INFERENCE_NUM_THREADS": torch.get_num_threads(),  # same thread budget as the torch runtime
                  "INFERENCE_PRECISION_HINT": "f32" if precision == "fp32" else "bf16",
                  "PERFORMANCE_HINT": "LATENCY"}
        with tempfile.TemporaryDirectory(prefix="leanvision-openvino-") as tmp:
            path = export_onnx(model, tuple(example.shape[1:]), Path(tmp) / "model.onnx")
            compiled = core.compile_model(core.read_model(str(path)), "CPU", config)
        request = compiled.create_infer_request()

        def predict(x: torch.Tensor) -> torch.Tensor:
            array = x.detach().to("cpu", torch.float32).contiguous().numpy()
            return torch.from_numpy(request.infer({0: array})[0].copy())

        predict.providers = [f"openvino {ov.__version__} CPU"]  # type: ignore[attr-defined]
        return predict
