"""Every lower-level leanvision function the search uses, imported here only (one place to re-point when the
package's layers move): data loading, model building, the trainer, compression, run directories and measurement."""

from __future__ import annotations

from ..config import DataConfig, RunConfig, TrainConfig
from ..data import load_dataset
from ..errors import LeanvisionError, first_line
from ..io import read_json, write_json
from ..measure import count_macs, environment, measure_latency, wilson_interval
from ..models import create_model
from ..optimize import build_chain, optimize_run
from ..pareto import pareto_front
from ..recipes import fast_channels_last, fast_precision
from ..rundir import load_run
from ..runs import train_run
from ..runtimes import get_runtime, is_onnx, predict_logits

__all__ = ["DataConfig", "build_chain", "LeanvisionError", "RunConfig", "TrainConfig", "count_macs", "create_model",
           "environment", "fast_channels_last", "fast_precision", "first_line", "is_onnx", "load_dataset",
           "load_run", "measure_latency", "optimize_run", "pareto_front", "predict_logits", "read_json",
           "get_runtime", "train_run", "wilson_interval", "write_json"]
