"""The ONNX Runtime runtimes: `onnxruntime` (one session, IO binding on CUDA) and `onnxruntime-streams` (one
single-threaded session per thread on the CPU). Sessions come from `session.ort_session`, on `export.export_onnx`.

`onnxruntime` is imported inside functions: it is a heavy library, and `import leanvision` (the CLI) stays fast.
"""

from __future__ import annotations

import tempfile
import weakref
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import LeanvisionError
from .base import RUNTIMES, Predict, Runtime
from .export import export_onnx
from .session import check_gpu_session, ort_gpu_providers, ort_session


@RUNTIMES.register("onnxruntime")
class OnnxRuntime(Runtime):
    """ONNX Runtime on the model exported by `export_onnx` (fp32, dynamic batch).

    On the CPU: the CPU execution provider, inputs copied to host memory as numpy arrays, logits as float32 CPU
    tensors. On CUDA (needs the `onnxruntime-gpu` build, see `ort_gpu_providers`): TensorRT (engine and timing cache
    in `trt_cache_dir()`, fp16 kernels for precision fp16) then CUDA providers, with IO binding: the input is read
    from, and the logits written to, CUDA memory that torch owns, with no host copy. If ORT could not load any GPU
    provider (it then silently runs on the CPU), `prepare` raises instead of timing the CPU under a CUDA label.
    `predict.providers` lists the providers the session actually uses.
    """

    name = "onnxruntime"
    precisions = ("fp32", "fp16")  # fp16: TensorRT on CUDA only
    host_input = True  # the CPU path; `prepare` on CUDA sets it False on this instance (IO binding reads CUDA memory)
    onnx_models = True

    def is_available(self) -> tuple[bool, str]:
        try:
            import onnxruntime  # noqa: F401
        except ImportError:
            return False, ("onnxruntime (a dependency of leanvision) is missing. Reinstall it: "
                           "pip install 'onnxruntime>=1.18'")
        return True, ""

    def prepare(
        self, model: nn.Module, example: torch.Tensor, precision: str = "fp32", device: torch.device | str = "cpu"
    ) -> Predict:
        (session,) = self._sessions(model, example, precision, device, count=1, threads=torch.get_num_threads())
        device = torch.device(device)
        if device.type == "cuda":
            self.host_input = False
            predict = bound_predict(session, device)
        else:
            input_name = session.get_inputs()[0].name

            def predict(x: torch.Tensor) -> torch.Tensor:
                array = x.detach().to("cpu", torch.float32).contiguous().numpy()
                return torch.from_numpy(session.run(None, {input_name: array})[0])

        predict.providers = session.get_providers()  # type: ignore[attr-defined]
        return predict

    def _sessions(self, model: nn.Module, example: torch.Tensor, precision: str, device: torch.device | str,
                  count: int, threads: int) -> list[Any]:
        """`count` sessions on one export of `model`, each with `threads` intra-op threads."""
        self._check_precision(precision)
        ok, reason = self.is_available()
        if not ok:
            raise LeanvisionError(reason)
        import onnxruntime as ort

        device = torch.device(device)
        providers: list[Any] = ["CPUExecutionProvider"]
        if device.type == "cuda":
            providers = ort_gpu_providers(ort.get_available_providers(), device, precision)
        elif device.type != "cpu":
            raise LeanvisionError(f"Runtime {self.name!r} supports devices cpu and cuda. Received: device='{device}'.")
        elif precision != "fp32":
            raise LeanvisionError(f"Runtime {self.name!r} runs {precision} only through TensorRT on CUDA. Received: "
                                  f"device='{device}'. Use precision fp32 here.")
        with tempfile.TemporaryDirectory(prefix="leanvision-onnx-") as tmp:
            path = export_onnx(model, tuple(example.shape[1:]), Path(tmp) / "model.onnx")
            sessions = [ort_session(path, threads, providers, getattr(model, "session_kwargs", {}))  # an int8 model's
                        for _ in range(count)]
        if device.type == "cuda":
            check_gpu_session(sessions[0].get_providers(), precision)
        return sessions


def bound_predict(session: Any, device: torch.device) -> Predict:
    """`predict(x)` through ORT's IO binding: the input is bound from torch's memory on `device` and the logits are
    written into a torch tensor there, so CUDA runs copy nothing through the host (works on the CPU too)."""
    input_name, output = session.get_inputs()[0].name, session.get_outputs()[0]
    num_classes = output.shape[-1]
    kind, index = device.type, device.index or 0

    def predict(x: torch.Tensor) -> torch.Tensor:
        x = x.detach().to(device, torch.float32).contiguous()
        classes = num_classes if isinstance(num_classes, int) else None
        binding = session.io_binding()
        binding.bind_input(input_name, kind, index, np.float32, list(x.shape), x.data_ptr())
        if classes is None:  # symbolic class dimension: let ORT allocate, then copy
            binding.bind_output(output.name, kind, index)
        else:
            out = torch.empty((x.shape[0], classes), dtype=torch.float32, device=device)
            binding.bind_output(output.name, kind, index, np.float32, list(out.shape), out.data_ptr())
        if kind == "cuda":
            torch.cuda.current_stream(device).synchronize()  # the input written by torch is complete before ORT reads
        session.run_with_iobinding(binding)
        if classes is None:
            return torch.from_numpy(binding.copy_outputs_to_cpu()[0]).to(device)
        return out

    return predict


@RUNTIMES.register("onnxruntime-streams")
class OnnxRuntimeStreams(OnnxRuntime):
    """ONNX Runtime in throughput mode: one single-threaded CPU session per thread ("stream"), each running a
    contiguous shard of the batch at the same time (the sessions release the GIL), logits concatenated in order.

    `torch.get_num_threads()` streams, like the thread budget of the `onnxruntime` runtime. One call's latency is
    that of the largest shard on one thread, so small batches are slower than with `onnxruntime`; large batches of
    a small model are faster, because its small per-layer tensors do not split well across threads inside one
    operator (OpenVINO's THROUGHPUT mode and its "streams" are the same idea). CPU only.
    """

    name = "onnxruntime-streams"

    def prepare(
        self, model: nn.Module, example: torch.Tensor, precision: str = "fp32", device: torch.device | str = "cpu"
    ) -> Predict:
        if torch.device(device).type != "cpu":
            raise LeanvisionError(f"Runtime {self.name!r} runs on the CPU only. Received: device='{device}'. "
                                  "Use runtime 'onnxruntime' for CUDA.")
        streams = max(1, torch.get_num_threads())
        sessions = self._sessions(model, example, precision, "cpu", count=streams, threads=1)
        input_name = sessions[0].get_inputs()[0].name
        pool = ThreadPoolExecutor(max_workers=streams, thread_name_prefix="leanvision-ort-stream")

        def predict(x: torch.Tensor) -> torch.Tensor:
            array = x.detach().to("cpu", torch.float32).contiguous().numpy()
            shards = np.array_split(array, min(streams, len(array))) if len(array) else [array]
            if len(shards) == 1:
                return torch.from_numpy(sessions[0].run(None, {input_name: shards[0]})[0])
            futures = [pool.submit(session.run, None, {input_name: shard}) for session, shard in zip(sessions, shards)]
            return torch.from_numpy(np.concatenate([f.result()[0] for f in futures]))

        predict.providers = sessions[0].get_providers()  # type: ignore[attr-defined]
        predict.streams = streams  # type: ignore[attr-defined]
        weakref.finalize(predict, pool.shutdown, wait=False)
        return predict
