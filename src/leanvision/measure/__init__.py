"""Measurement: pure functions that count, time and size models without changing them or printing.

Sizes and compute (`counts`), accuracy statistics (`stats`), the one timing loop (`timing.measure_latency`, device
synchronized), the speed of a model through an inference runtime (`speed`), peak memory (`memory`) and the
environment a number was measured in (`env`). The runtimes themselves live in `leanvision.runtimes`.
"""

from .counts import count_flops, count_macs, count_params, file_bytes, weight_bytes
from .env import environment
from .memory import peak_memory, peak_tensor_memory
from .speed import measure_runtime, speed_b1_b256, time_batches
from .stats import mean_std, wilson_interval
from .timing import LatencyStats, device_sync, measure_latency, measure_throughput

__all__ = [
    "LatencyStats",
    "count_flops",
    "count_macs",
    "count_params",
    "device_sync",
    "environment",
    "file_bytes",
    "mean_std",
    "measure_latency",
    "measure_runtime",
    "measure_throughput",
    "peak_memory",
    "peak_tensor_memory",
    "speed_b1_b256",
    "time_batches",
    "wilson_interval",
    "weight_bytes",
]
