"""The `torch-compile` runtimes: TorchInductor graphs per batch shape, optionally replayed as CUDA graphs."""

from __future__ import annotations

import contextlib
import time

import torch
from torch import nn

from ..compile import compile_for_inference, compile_support, recompile_limit
from ..device import check_autocast, synchronize
from ..errors import LeanvisionError
from .base import PRECISIONS, RUNTIMES, Predict, Runtime
from .onnx_model import is_onnx


@RUNTIMES.register("torch-compile")
class TorchCompileRuntime(Runtime):
    """`torch.compile` (TorchInductor) on a private eval-mode copy of the model; one static graph per batch size.

    The first call with each new input shape compiles, and is timed apart: `predict.compile_times_s` maps each
    batch shape seen to the seconds its first call took (compilation included), so steady-state timings (after
    warm-up) exclude it. Precisions as the `torch` runtime: fp32, bf16 autocast, fp16 autocast on CUDA only.
    Past Dynamo's recompile limit (8 shapes by default) a new shape would silently run eager while labelled
    torch-compile, so `predict` refuses it with a one-line error instead; `predict.recompiles` counts the graphs
    compiled after the first.
    """

    name = "torch-compile"
    precisions = PRECISIONS
    mode: str | None = None  # torch.compile mode

    def is_available(self) -> tuple[bool, str]:
        return compile_support("cpu")  # the device-specific check runs again in prepare()

    def prepare(
        self, model: nn.Module, example: torch.Tensor, precision: str = "fp32", device: torch.device | str = "cpu"
    ) -> Predict:
        self._check_precision(precision)
        if is_onnx(model):
            raise LeanvisionError("This run is an int8 ONNX model; torch-compile cannot run it. "
                                  "Use runtime='onnxruntime'.")
        device = torch.device(device)
        if precision == "fp16" and device.type != "cuda":
            raise LeanvisionError(f"precision='fp16' needs a CUDA device for the torch-compile runtime. "
                                  f"Received: device='{device}'. Use bf16 or fp32 here, or device='cuda'.")
        self._check_device(device)
        check_autocast(device, precision)
        net = compile_for_inference(model, device, mode=self.mode)
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
        compile_times: dict[tuple[int, ...], float] = {}
        limit = recompile_limit()
        graphs = self.mode == "reduce-overhead"

        def run(x: torch.Tensor) -> torch.Tensor:
            autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with torch.no_grad(), autocast:  # no_grad, not inference_mode: the compiled graph's guards expect it
                if graphs:  # CUDA graphs replay into the same output buffer: a new step, and a copy of the logits
                    torch.compiler.cudagraph_mark_step_begin()
                    return net(x.to(device, non_blocking=True)).float().clone()
                return net(x.to(device, non_blocking=True)).float()

        def predict(x: torch.Tensor) -> torch.Tensor:
            shape = tuple(x.shape)
            if shape in compile_times:
                return run(x)
            if len(compile_times) >= limit:
                raise LeanvisionError(
                    f"{self.name} has compiled {len(compile_times)} batch shapes, Dynamo's recompile limit; shape "
                    f"{shape} would silently run eager. Use at most {limit} batch sizes (the accuracy pass adds its "
                    "own and a smaller last batch), or raise torch._dynamo.config.recompile_limit."
                )
            predict.recompiles = len(compile_times)  # type: ignore[attr-defined]
            start = time.perf_counter()
            out = run(x)
            synchronize(device)
            compile_times[shape] = time.perf_counter() - start
            return out

        predict.compile_times_s = compile_times  # type: ignore[attr-defined]
        predict.recompiles = 0  # type: ignore[attr-defined]
        return predict

    def _check_device(self, device: torch.device) -> None:
        pass


@RUNTIMES.register("torch-compile-cudagraphs")
class TorchCompileCudaGraphsRuntime(TorchCompileRuntime):
    """`torch-compile` in `mode="reduce-overhead"`: each batch shape's graph is captured as a CUDA graph and replayed
    with one launch, which removes most per-kernel launch overhead at batch 1. CUDA only."""

    name = "torch-compile-cudagraphs"
    mode = "reduce-overhead"

    def is_available(self) -> tuple[bool, str]:
        if not torch.cuda.is_available():
            return False, "CUDA graphs need a CUDA GPU; none is visible to PyTorch here"
        return compile_support("cuda")

    def _check_device(self, device: torch.device) -> None:
        if device.type != "cuda":
            raise LeanvisionError(f"Runtime {self.name!r} runs on CUDA only. Received: device='{device}'. "
                                  "Use runtime 'torch-compile' elsewhere.")
