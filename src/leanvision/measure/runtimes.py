"""Inference runtimes behind one interface, so eager PyTorch, ONNX Runtime and later backends are timed alike.

A runtime is a class registered in `RUNTIMES` with a `name`, `is_available() -> (ok, reason)` and
`prepare(model, example, precision, device) -> predict`, where `predict(x)` maps a float batch `(N, C, H, W)` to
logits `(N, num_classes)`. `measure_runtime` times any of them; `predict_batches` computes logits for a whole
dataset through one, so accuracy and speed are measured on the same artefact.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import logging
import shutil
import tempfile
import warnings
import weakref
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..errors import LeanvisionError, first_line
from ..registry import Registry
from .timing import measure_latency

Predict = Callable[[torch.Tensor], torch.Tensor]
PRECISIONS = ("fp32", "bf16", "fp16")
ONNX_INPUT_NAME, ONNX_OUTPUT_NAME = "input", "logits"


class Runtime:
    """Base class of an inference runtime; subclass it and register it with `@RUNTIMES.register("<name>")`."""

    name: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    host_input: ClassVar[bool] = False  # True: reads inputs from CPU memory, so benchmarks keep inputs on the CPU
    onnx_models: ClassVar[bool] = False  # True: also runs int8 ONNX runs (`OnnxModule`) from `leanvision optimize`

    def is_available(self) -> tuple[bool, str]:
        """Whether the runtime can be used here, and why not (an install hint) when it cannot."""
        return True, ""

    def prepare(
        self, model: nn.Module, example: torch.Tensor, precision: str = "fp32", device: torch.device | str = "cpu"
    ) -> Predict:
        """Build the inference function from `model`; `example` is a float batch `(N, C, H, W)` fixing C, H, W."""
        raise NotImplementedError

    def _check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise LeanvisionError(
                f"Invalid precision {precision!r} for runtime {self.name!r}. "
                f"Expected one of: {', '.join(self.precisions)}."
            )


RUNTIMES: Registry[type[Runtime]] = Registry("runtime")


def get_runtime(name: str) -> Runtime:
    """An instance of the runtime registered as `name`. Example: `get_runtime("onnxruntime").is_available()`."""
    return RUNTIMES.get(name)()


@RUNTIMES.register("torch")
class TorchRuntime(Runtime):
    """Eager PyTorch on a private copy of the model, in eval mode under `torch.inference_mode`.

    Precisions: `fp32`; `bf16` via autocast (CPU or CUDA); `fp16` via autocast, CUDA only. Logits come back as
    float32 on `device`.
    """

    name = "torch"
    precisions = PRECISIONS

    def prepare(
        self, model: nn.Module, example: torch.Tensor, precision: str = "fp32", device: torch.device | str = "cpu"
    ) -> Predict:
        self._check_precision(precision)
        if getattr(model, "onnx_path", None) is not None:  # an int8 run from `leanvision optimize`
            raise LeanvisionError("This run holds an int8 ONNX model, which only ONNX Runtime can run. "
                                  "Use runtime 'onnxruntime' for it.")
        device = torch.device(device)
        if precision == "fp16" and device.type != "cuda":
            raise LeanvisionError(
                f"precision='fp16' needs a CUDA device for the torch runtime. Received: device='{device}'. "
                "Use precision='bf16' or 'fp32' on this device, or device='cuda'."
            )
        from ..accel.devices import check_autocast, inference_context

        check_autocast(device, precision)  # MPS: bf16 autocast depends on the torch and macOS version
        net = copy.deepcopy(model).to(device).eval()  # a copy: the caller's model keeps its device and train flag
        dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)

        def predict(x: torch.Tensor) -> torch.Tensor:
            autocast = torch.autocast(device.type, dtype=dtype) if dtype else contextlib.nullcontext()
            with inference_context(device), autocast:  # no_grad on XLA, inference_mode elsewhere
                return net(x.to(device, non_blocking=True)).float()

        return predict


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


GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def trt_cache_dir() -> str:
    """Where TensorRT keeps built engines and timing caches between runs: $LEANVISION_TRT_CACHE, else
    ~/.cache/leanvision/tensorrt (an engine takes seconds to minutes to build; the cache makes reruns start fast)."""
    import os

    path = Path(os.environ.get("LEANVISION_TRT_CACHE") or Path.home() / ".cache" / "leanvision" / "tensorrt")
    path.mkdir(parents=True, exist_ok=True)
    return str(path)


def ort_gpu_providers(available: Sequence[str], device: torch.device, precision: str = "fp32") -> list[Any]:
    """The provider list for a CUDA session: TensorRT (engine + timing cache, fp16 when asked), then CUDA, then CPU.

    ONNX Runtime's CPU package (`onnxruntime`, a core dependency) has no GPU provider; the GPU build is the separate
    `onnxruntime-gpu` package with the same import name, so it replaces the CPU one (`pip install
    'leanvision[cuda]'`, see the README). Example: `ort_gpu_providers(ort.get_available_providers(), dev)`.
    """
    gpu = [p for p in GPU_PROVIDERS if p in available]
    if not gpu:
        raise LeanvisionError(
            f"device='{device}' requested for onnxruntime, but this onnxruntime build has no CUDA or TensorRT "
            f"provider (available: {', '.join(available)}). Replace it with the GPU build: pip uninstall -y "
            "onnxruntime && pip install onnxruntime-gpu; or use device='cpu'."
        )
    if precision == "fp16" and "TensorrtExecutionProvider" not in gpu:
        raise LeanvisionError("onnxruntime runs fp16 only through its TensorRT provider, which this build lacks "
                              f"(available: {', '.join(available)}). Use precision fp32, or install TensorRT.")
    index = device.index or 0
    providers: list[Any] = []
    if "TensorrtExecutionProvider" in gpu:
        cache = trt_cache_dir()
        providers.append(("TensorrtExecutionProvider", {
            "device_id": index, "trt_fp16_enable": precision == "fp16", "trt_engine_cache_enable": True,
            "trt_engine_cache_path": cache, "trt_timing_cache_enable": True, "trt_timing_cache_path": cache}))
    if "CUDAExecutionProvider" in gpu and precision == "fp32":  # fp16 must not fall through to fp32 CUDA kernels
        providers.append(("CUDAExecutionProvider", {"device_id": index}))
    return providers + ["CPUExecutionProvider"]


def check_gpu_session(loaded: Sequence[str], precision: str = "fp32") -> None:
    """Raise when a CUDA session ended up without its GPU provider: ORT then falls back to the CPU silently (a
    missing CUDA/cuDNN/TensorRT library), and the timings would be the CPU's under a `device=cuda` label."""
    if precision == "fp16" and "TensorrtExecutionProvider" not in loaded:
        raise LeanvisionError(f"onnxruntime fp16 needs TensorRT, which failed to load (session providers: "
                              f"{', '.join(loaded)}). Check the TensorRT libraries, or use precision fp32.")
    if not any(p in loaded for p in GPU_PROVIDERS):
        raise LeanvisionError(f"onnxruntime fell back to CPU: its CUDA/TensorRT provider failed to load (session "
                              f"providers: {', '.join(loaded)}). Check the CUDA and cuDNN libraries onnxruntime-gpu "
                              "needs, or use device='cpu'.")


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


def ort_session(path: str | Path, threads: int, providers: Sequence[Any] = ("CPUExecutionProvider",),
                session_kwargs: dict[str, Any] | None = None, level: str = "all", optimized_path: str | None = None):
    """An ONNX Runtime session with all (`level="extended"`: portable) graph optimizations, `threads` intra-op
    threads and errors-only logging; with `optimized_path`, ORT's optimized graph is written there as is.

    Otherwise, on the CPU provider, one more layout rewrite follows ORT's own: ORT's NCHWc convolutions hand an int8
    part of the graph their output as `ReorderOutput (NCHWc -> NCHW) -> QuantizeLinear -> Transpose (-> NHWC)`, which
    `ReorderOutput(channels_last=1) -> QuantizeLinear` computes bit for bit without the transpose (ORT fuses that pair
    only when no QuantizeLinear sits between them). The optimized graph is hardware-specific, so the rewrite is done
    here, at session creation on the machine that runs it, never stored. When nothing matches (every fp32 model) or
    anything fails, ORT's own session is returned. `session.layout_rewrites` says how many chains were rewritten.
    """
    import onnxruntime as ort

    def options(optimized: str | None = None, rewritten: bool = False) -> ort.SessionOptions:
        opts = ort.SessionOptions()
        opts.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if rewritten
                                         else ort.GraphOptimizationLevel.ORT_ENABLE_ALL if level == "all"
                                         else ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED)
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3  # errors only: measurement never prints
        if optimized:
            opts.optimized_model_filepath = optimized
        return opts

    kwargs, providers = dict(session_kwargs or {}), list(providers)
    if (optimized_path or level != "all" or providers != ["CPUExecutionProvider"]
            or Path(path).stat().st_size > 100_000_000):
        session = ort.InferenceSession(str(path), sess_options=options(optimized_path), providers=providers, **kwargs)
        session.layout_rewrites = 0
        return session
    with tempfile.TemporaryDirectory(prefix="leanvision-ort-") as tmp:
        optimized = Path(tmp) / "optimized.onnx"
        session = ort.InferenceSession(str(path), sess_options=options(str(optimized)), providers=providers, **kwargs)
        session.layout_rewrites = 0
        try:
            import onnx

            graph = onnx.load(str(optimized))
            count = _reorder_output_to_nhwc(graph.graph)
            if count:
                session = ort.InferenceSession(graph.SerializeToString(), sess_options=options(rewritten=True),
                                               providers=providers)
                session.layout_rewrites = count
        except Exception:  # noqa: BLE001 - the rewrite is an optional speed-up; ORT's own session stays correct
            pass
        return session


def _reorder_output_to_nhwc(graph) -> int:
    """Rewrite `ReorderOutput -> QuantizeLinear (per tensor) -> Transpose(0, 2, 3, 1)` chains, whose intermediate
    tensors have no other consumer, as `ReorderOutput(channels_last=1) -> QuantizeLinear`; returns the count."""
    from onnx import helper

    consumers: dict[str, list[Any]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    initializers = {init.name: init for init in graph.initializer}
    outputs = {o.name for o in graph.output}
    count = 0
    for reorder in list(graph.node):
        attrs = {a.name: helper.get_attribute_value(a) for a in reorder.attribute}
        if reorder.op_type != "ReorderOutput" or attrs.get("channels_last", 0) or reorder.output[0] in outputs:
            continue
        (quant, *more) = consumers.get(reorder.output[0], [None, None])
        if more or quant is None or quant.op_type != "QuantizeLinear" or quant.input[0] != reorder.output[0]:
            continue
        scale = initializers.get(quant.input[1])
        if scale is None or len(scale.dims) != 0 or quant.output[0] in outputs:  # per-tensor only
            continue
        (transpose, *more) = consumers.get(quant.output[0], [None, None])
        if more or transpose is None or transpose.op_type != "Transpose":
            continue
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), None)
        if perm != [0, 2, 3, 1]:
            continue
        for attr in reorder.attribute:
            if attr.name == "channels_last":
                attr.i = 1
        if "channels_last" not in attrs:
            reorder.attribute.append(helper.make_attribute("channels_last", 1))
        quant.output[0] = transpose.output[0]
        graph.node.remove(transpose)
        stale = {reorder.output[0], transpose.input[0]}  # their recorded NCHW shapes no longer hold
        for info in [v for v in graph.value_info if v.name in stale]:
            graph.value_info.remove(info)
        count += 1
    return count


def export_onnx(model: nn.Module, input_shape: tuple[int, int, int], path: str | Path, opset: int = 17) -> Path:
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
    source = getattr(model, "onnx_path", None)
    if source is not None:  # already an ONNX model (an int8 run from `leanvision optimize`): copied as is
        if Path(source).resolve() != path.resolve():
            shutil.copyfile(source, path)
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


def measure_runtime(
    model: nn.Module,
    runtime_name: str,
    input_shape: tuple[int, int, int],
    *,
    precision: str = "fp32",
    device: torch.device | str = "cpu",
    batch_sizes: Sequence[int] = (1, 256),
    warmup: int = 10,
    repeats: int = 50,
) -> list[dict[str, Any]]:
    """Latency and throughput of `model` through one runtime, one record per batch size.

    Inputs are seeded random images `(batch_size, C, H, W)` placed on `device` (on the CPU for runtimes that read
    host memory); CUDA work is synchronized after each call. Each record has `runtime`, `precision`, `device`,
    `batch_size`, `threads`, `latency_median_ms`, `latency_p95_ms`, `latency_mean_ms`, `latency_min_ms`,
    `images_per_s` (from the median), `repeats`, `warmup`, `latency_unit` ("ms/batch"), `throughput_unit`
    ("images/s"), and `providers` when the runtime reports them.

    Example: `measure_runtime(model, "onnxruntime", (3, 32, 32), batch_sizes=(1, 256))`.
    """
    runtime = get_runtime(runtime_name)
    ok, reason = runtime.is_available()
    if not ok:
        raise LeanvisionError(f"Runtime {runtime_name!r} is not available here: {reason}")
    device = torch.device(device)
    generator = torch.Generator().manual_seed(0)  # private RNG: the global torch seed is left alone
    example = torch.randn((2, *input_shape), generator=generator)
    predict = runtime.prepare(model, example, precision=precision, device=device)
    input_device = torch.device("cpu") if runtime.host_input else device
    sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
    records = []
    for batch_size in batch_sizes:
        x = torch.randn((batch_size, *input_shape), generator=generator).to(input_device)
        stats = measure_latency(lambda: predict(x), warmup=warmup, repeats=repeats, sync=sync)
        record = {
            "runtime": runtime_name,
            "precision": precision,
            "device": str(device),
            "batch_size": batch_size,
            "threads": torch.get_num_threads(),
            "latency_median_ms": stats.median_ms,
            "latency_p95_ms": stats.p95_ms,
            "latency_mean_ms": stats.mean_ms,
            "latency_min_ms": stats.min_ms,
            "images_per_s": batch_size / (stats.median_ms / 1e3) if stats.median_ms > 0 else float("inf"),
            "repeats": stats.repeats,
            "warmup": stats.warmup,
            "latency_unit": "ms/batch",
            "throughput_unit": "images/s",
        }
        if hasattr(predict, "providers"):
            record["providers"] = list(predict.providers)
        if hasattr(predict, "streams"):
            record["streams"] = predict.streams
        records.append(record)
    return records


def speed_b1_b256(predict: Predict, input_shape: tuple[int, int, int], repeats: int = 50) -> dict[str, float]:
    """Batch-1 latency (median, p95) and batch-256 throughput of `predict` on seeded random inputs, the two speeds
    the study and `leanvision optimize` report: `latency_b1_median_ms`, `latency_b1_p95_ms`,
    `throughput_images_per_s` (from the median batch-256 call; `max(5, repeats // 5)` calls after 2 warm-ups).

    Example: `speed_b1_b256(get_runtime("onnxruntime").prepare(model, x), (1, 28, 28))`.
    """
    generator = torch.Generator().manual_seed(0)
    x1 = torch.randn((1, *input_shape), generator=generator)
    x256 = torch.randn((256, *input_shape), generator=generator)
    latency = measure_latency(lambda: predict(x1), warmup=10, repeats=repeats)
    batch = measure_latency(lambda: predict(x256), warmup=2, repeats=max(5, repeats // 5))
    return {"latency_b1_median_ms": latency.median_ms, "latency_b1_p95_ms": latency.p95_ms,
            "throughput_images_per_s": 256 / (batch.median_ms / 1e3)}


def predict_batches(fn: Predict, images_float: torch.Tensor | np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Logits for all of `images_float` `(N, C, H, W)`, computed `batch_size` images at a time; returned on the CPU.

    Example: `acc = (predict_batches(predict, x_test).argmax(1) == y_test).float().mean()`.
    """
    if batch_size < 1:
        raise ValueError(f"Invalid `batch_size`. Expected an integer >= 1. Received: batch_size={batch_size}")
    images = torch.as_tensor(images_float)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"Invalid `images_float`. Expected a non-empty (N, C, H, W) batch. Received shape {tuple(images.shape)}"
        )
    chunks = [fn(images[i : i + batch_size].float()).detach().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)


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
