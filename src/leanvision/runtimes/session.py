"""ONNX Runtime sessions, built one way for every caller (runtimes, `leanvision export`, int8 quantization).

`ort_session` opens a session with the graph optimizations, thread count and quiet logging the measurements use
(and a bit-exact NHWC layout rewrite on the CPU, see `graph.reorder_output_to_nhwc`); `make_session` is it on the
CPU with torch's thread count; `ort_gpu_providers` / `check_gpu_session` build and verify CUDA/TensorRT sessions.

`onnxruntime` and `onnx` are imported inside functions: heavy libraries, kept off `import leanvision`'s path.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from ..errors import LeanvisionError
from .graph import reorder_output_to_nhwc

GPU_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider")


def trt_cache_dir() -> str:
    """Where TensorRT keeps built engines and timing caches between runs: $LEANVISION_TRT_CACHE, else
    ~/.cache/leanvision/tensorrt (an engine takes seconds to minutes to build; the cache makes reruns start fast)."""
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
            "onnxruntime && pip install onnxruntime-gpu; or use --device cpu."
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
                              "needs, or use --device cpu.")


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
            count = reorder_output_to_nhwc(graph.graph)
            if count:
                session = ort.InferenceSession(graph.SerializeToString(), sess_options=options(rewritten=True),
                                               providers=providers)
                session.layout_rewrites = count
        except Exception:  # noqa: BLE001 - the rewrite is an optional speed-up; ORT's own session stays correct
            pass
        return session


def make_session(path: str | Path, session_kwargs: dict[str, Any] | None = None, optimized_path: str | None = None,
                 level: str = "all"):
    """`ort_session` on the CPU with torch's thread count: the same session the `onnxruntime` runtime opens."""
    return ort_session(path, torch.get_num_threads(), session_kwargs=session_kwargs, level=level,
                       optimized_path=optimized_path)
