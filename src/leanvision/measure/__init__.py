"""Measurement: pure functions that count, time and size models without changing them or printing.

Sizes and compute (`counts`), accuracy statistics (`stats`), latency/throughput (`timing`), peak memory
(`memory`), the environment a number was measured in (`env`) and pluggable inference runtimes (`runtimes`).
"""

from ..accel import runtimes as _accel_runtimes  # noqa: F401  (registers the torch-compile and openvino runtimes)
from .counts import count_flops, count_macs, count_params, file_bytes, weight_bytes
from .env import environment
from .memory import peak_memory, peak_tensor_memory
from .runtimes import (
    RUNTIMES,
    OnnxRuntime,
    Runtime,
    TorchRuntime,
    export_onnx,
    get_runtime,
    measure_runtime,
    predict_batches,
    speed_b1_b256,
)
from .stats import mean_std, wilson_interval
from .timing import LatencyStats, measure_latency, measure_throughput

__all__ = [
    "RUNTIMES",
    "LatencyStats",
    "OnnxRuntime",
    "Runtime",
    "TorchRuntime",
    "count_flops",
    "count_macs",
    "count_params",
    "environment",
    "export_onnx",
    "file_bytes",
    "get_runtime",
    "mean_std",
    "measure_latency",
    "measure_runtime",
    "measure_throughput",
    "peak_memory",
    "peak_tensor_memory",
    "predict_batches",
    "speed_b1_b256",
    "wilson_interval",
    "weight_bytes",
]
