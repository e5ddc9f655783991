"""Every lower-level leanvision function the search uses, imported here only (one place to re-point when the
package's layers move): data loading, model building, the trainer, compression, run directories, measurement,
Optuna storages and the machine lock (the last two shared with `study --storage`)."""

from __future__ import annotations

from ..config import DataConfig, RunConfig, TrainConfig
from ..data import load_dataset
from ..errors import LeanvisionError, first_line
from ..health import near_chance
from ..io import read_json, write_json
from ..lock import MachineLock
from ..measure import count_macs, environment, measure_latency, wilson_interval
from ..models import create_model
from ..optimize import build_chain, optimize_run
from ..pareto import pareto_front
from ..recipes import fast_channels_last, fast_precision
from ..rundir import load_run
from ..runs import train_run
from ..runtimes import get_runtime, is_onnx, predict_logits
from ..storage import ask, fail_stale, fingerprint, heartbeat, open_storage, redact, worker_attr

__all__ = ["DataConfig", "LeanvisionError", "MachineLock", "RunConfig", "TrainConfig", "ask", "build_chain",
           "count_macs", "create_model", "environment", "fail_stale", "fast_channels_last", "heartbeat", "fast_precision",
           "fingerprint", "first_line", "is_onnx", "load_dataset", "load_run", "measure_latency", "near_chance",
           "open_storage", "optimize_run", "pareto_front", "predict_logits", "read_json", "redact", "get_runtime",
           "train_run", "wilson_interval", "worker_attr", "write_json"]
