"""The run directory format: its one home. Write it, validate it, load it, rebuild its model, tell an int8 run.

A run directory holds everything needed to rebuild, evaluate and deploy the model, with no pickle anywhere:
  config.json      the resolved RunConfig plus the environment it ran in (`optimize` adds what it applied)
  model.json       how to rebuild the model (registry name or full spec, kwargs, input shape, classes, normalization;
                   `optimize` adds shape_overrides / folded, or runtime="onnxruntime" + onnx_file for int8)
  metrics.jsonl    one line per epoch
  best.safetensors / last.safetensors   weights (best validation accuracy / last epoch)
  checkpoint.safetensors                resumable training state
  result.json      final test metrics and timings
`runs.train_run` and `optimize.optimize_run` write through the functions here.

A run directory is untrusted input. `validate_run` checks it before anything is built or allocated: model.json's
size, format and bounds, the safetensors header (read alone: 8-byte little-endian length + JSON, never the tensors),
and that the tensor shapes in that header are exactly those of the model that model.json describes (built on the
`meta` device, which allocates no memory). A tampered model.json is a one-line `RunDirError` (exit 2), never a
multi-GB allocation.

result.json's typed form (`TrainResult`, `OptimizeResult`: the API's `run.result`) is part of the format, so it lives
here too. (Over 300 lines on purpose: the whole format, reader, writer and typed results, in one place.)
"""

from __future__ import annotations

import copy
import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import nn

from .config import RunConfig
from .data import load_dataset
from .errors import RunDirError, first_line
from .io import load_weights, read_json, read_json_lines, save_weights, write_json
from .models import create_model
from .results import Result
from .runtimes.onnx_model import OnnxModule, is_onnx  # is_onnx: re-exported, its home is runtimes
from .techniques import restore_structure_
from .techniques.quantize import saturation_warning

MODEL_FORMAT = "leanvision-model/1"
CUSTOM_PREFIX = "custom:"  # model name of a run trained from a user's own nn.Module (class recorded, never imported)
CONFIG, MODEL, RESULT, METRICS = "config.json", "model.json", "result.json", "metrics.jsonl"
WEIGHTS = ("best", "last")

# Bounds on what an untrusted run directory may ask for (far above any model leanvision trains).
MAX_JSON_BYTES = 16 * 1024**2
MAX_HEADER_BYTES = 64 * 1024**2
MAX_SIDE = 8192  # image height/width
MAX_CHANNELS = 64
MAX_CLASSES = 1_000_000
MAX_PARAMS = 4_000_000_000
_DTYPE_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1, "U8": 1, "BOOL": 1}


# ---- result.json, typed (the Python API's `run.result`; `to_dict()` is the file's content and the CLI's --json) ----

@dataclass(kw_only=True)
class TrainResult(Result):
    """What `train` measured (result.json of a trained run): test accuracy of the best-validation weights (None
    without a test split), best validation accuracy, epochs and seconds of training, and `warnings` (health.py)."""

    model: str
    dataset: str
    epochs_run: int
    best_val_accuracy: float | None
    train_time_s: float
    wall_time_s_this_call: float | None = None
    num_params: int | None = None
    test_accuracy: float | None = None
    test_correct: int | None = None
    test_total: int | None = None
    compile_time_s: float | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass(kw_only=True)
class OptimizeStep(Result):
    """One step of an `optimize` chain as measured after it (the first is the source run): its `spec`, parameters,
    MACs, test accuracy, file size and speeds (`speed[runtime]`: latency_b1_median_ms, throughput_images_per_s)."""

    step: str
    params: int
    macs: int
    accuracy: float
    file_bytes: int | None = None
    spec: str | None = None
    speed: dict[str, Any] | None = None
    summary: str | None = None
    warning: str | None = None


@dataclass(kw_only=True)
class OptimizeResult(Result):
    """What `optimize` measured (result.json of an optimized run): test accuracy before and after, size, and one
    `OptimizeStep` per technique (`steps[0]` is the source run)."""

    nested: ClassVar[dict[str, type[Result]]] = {"steps": OptimizeStep}

    model: str
    dataset: str
    source_run: str
    techniques: list[str]
    num_params: int
    macs: int
    file_bytes: int | None
    test_accuracy: float
    test_correct: int | None = None
    test_total: int | None = None
    source_test_accuracy: float | None = None
    steps: list[OptimizeStep] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def typed_result(result: dict[str, Any]) -> TrainResult | OptimizeResult:
    """result.json's content as its type: `OptimizeResult` for an optimized run, else `TrainResult`."""
    return (OptimizeResult if "source_run" in result else TrainResult).from_dict(result)


@dataclass
class Run:
    """A trained model loaded from a run directory, with everything needed to feed it data.

    `run.result`: what was measured when it was written (`TrainResult` or `OptimizeResult`, None for an unfinished
    run); `run.history`: metrics.jsonl, one dict per epoch; `run.to_dict()`: result.json's content."""

    path: Path
    model: nn.Module
    meta: dict[str, Any]  # contents of model.json
    _result: TrainResult | OptimizeResult | None = field(default=None, repr=False, compare=False)

    @property
    def result(self) -> TrainResult | OptimizeResult | None:
        if self._result is None and (self.path / RESULT).is_file():
            self._result = typed_result(read_result(self.path))
        return self._result

    @property
    def history(self) -> list[dict[str, Any]]:
        file = self.path / METRICS
        return read_json_lines(file) if file.is_file() else []

    def to_dict(self) -> dict[str, Any]:
        """result.json's content: what `leanvision train/optimize --json` prints."""
        return self.result.to_dict() if self.result is not None else {}

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.meta["input_shape"])

    @property
    def is_onnx(self) -> bool:
        return is_onnx(self.model)

    def load_dataset(self, data_dir: str | None = None):
        source = dict(self.meta["dataset"])
        if data_dir is not None:
            source["data_dir"] = data_dir
        return load_dataset(**source)


def custom_module_error(name: str, where: str) -> RunDirError:
    return RunDirError(f"{where} was trained from your own nn.Module ({name[len(CUSTOM_PREFIX):]}); leanvision "
                       "never imports code named in a file. Use the Python API: "
                       "load_run(RUN_DIR, model=YourNet(...)), or leanvision.train(model=YourNet(...), ...) "
                       "to train it again.")


def rebuild_model(meta: dict[str, Any], *, structure: bool = True) -> nn.Module:
    """The model model.json describes, freshly initialized (seed first for reproducible weights); `structure=False`
    skips what `optimize` changed (pruned shapes, folded BatchNorm). Build under `torch.device("meta")` to get the
    shapes without allocating. Example: `rebuild_model(read_json("runs/compact/model.json"))`."""
    if str(meta.get("model") or "").startswith(CUSTOM_PREFIX):
        raise custom_module_error(meta["model"], "This run")
    c, h, w = meta["input_shape"]
    model = create_model(meta["spec"] if meta.get("spec") is not None else meta["model"],
                         num_classes=meta["num_classes"], in_chans=c, img_size=(h, w), **meta.get("model_kwargs", {}))
    if structure and (meta.get("shape_overrides") or meta.get("folded")):
        restore_structure_(model, meta)
    return model


# ---- validation (before anything is built or allocated) --------------------------------------------------------------

def _int_in(value: Any, low: int, high: int) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and low <= value <= high


def read_model_meta(path: str | Path) -> dict[str, Any]:
    """model.json of a run directory, checked for size, format and bounds (one-line `RunDirError` otherwise)."""
    path = Path(path)
    if not path.is_dir():
        raise RunDirError(f"Run directory {path} not found. Expected a folder written by `leanvision train`.")
    file = path / MODEL
    if not file.is_file():
        raise RunDirError(f"{path} is not a run directory (no {MODEL}). Expected a folder written by "
                          "`leanvision train`.")
    if file.stat().st_size > MAX_JSON_BYTES:
        raise RunDirError(f"{file} is {file.stat().st_size:,} bytes; a model.json is at most {MAX_JSON_BYTES:,}. "
                          "Re-create the run.")
    meta = read_json(file)
    if not isinstance(meta, dict) or meta.get("format") != MODEL_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise RunDirError(f"{file} has format {found!r}; expected {MODEL_FORMAT!r}.")
    shape = meta.get("input_shape")
    if not (isinstance(shape, list) and len(shape) == 3 and _int_in(shape[0], 1, MAX_CHANNELS)
            and all(_int_in(s, 1, MAX_SIDE) for s in shape[1:])):
        raise RunDirError(f"{file}: input_shape={shape!r} is out of bounds. Expected [C, H, W] with C 1-{MAX_CHANNELS} "
                          f"and H, W 1-{MAX_SIDE}. The file was changed or damaged; re-create the run.")
    if not _int_in(meta.get("num_classes"), 1, MAX_CLASSES):
        raise RunDirError(f"{file}: num_classes={meta.get('num_classes')!r} is out of bounds (expected 1-"
                          f"{MAX_CLASSES:,}). The file was changed or damaged; re-create the run.")
    if not isinstance(meta.get("model_kwargs", {}), dict):
        raise RunDirError(f"{file}: model_kwargs must be a mapping. Re-create the run.")
    classes = meta.get("classes")
    if not (isinstance(classes, list) and len(classes) == meta["num_classes"]
            and all(isinstance(c, str) for c in classes)):
        found = f"{len(classes)} entries" if isinstance(classes, list) else repr(classes)[:40]
        raise RunDirError(f"{file}: classes has {found}; expected a list of {meta['num_classes']} class names "
                          "(num_classes). The file was changed or damaged; re-create the run.")
    image_size = (meta.get("dataset") or {}).get("image_size") if isinstance(meta.get("dataset"), dict) else None
    if image_size is not None and not all(_int_in(s, 1, MAX_SIDE) for s in
                                          (image_size if isinstance(image_size, list) else [image_size])):
        raise RunDirError(f"{file}: dataset image_size={image_size!r} is out of bounds (1-{MAX_SIDE}). Re-create "
                          "the run.")
    return meta


def safetensors_shapes(path: str | Path) -> dict[str, tuple[int, ...]]:
    """Tensor name -> shape from a safetensors file's header alone (8-byte little-endian length + JSON), checked
    against the file size; no tensor data is read."""
    path = Path(path)
    if not path.is_file():
        raise RunDirError(f"Missing weights file {path}. Expected a leanvision run directory containing it.")
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        length = int.from_bytes(head, "little") if len(head) == 8 else -1
        if not 2 <= length <= min(MAX_HEADER_BYTES, size - 8):
            raise RunDirError(f"Corrupt weights file {path} (header length {length} for a {size:,}-byte file). "
                              "Re-create the run.")
        try:
            header = json.loads(f.read(length))
        except (json.JSONDecodeError, UnicodeDecodeError):
            header = None
    if not isinstance(header, dict):
        raise RunDirError(f"Corrupt weights file {path} (unreadable header). Re-create the run.")
    shapes, data = {}, size - 8 - length
    for name, info in header.items():
        if name == "__metadata__":
            continue
        try:
            shape = tuple(info["shape"])
            start, end = info["data_offsets"]
            itemsize = _DTYPE_BYTES[info["dtype"]]
            ok = (all(_int_in(s, 0, MAX_PARAMS) for s in shape) and _int_in(start, 0, data)
                  and _int_in(end, start, data) and end - start == math.prod(shape) * itemsize)
        except (KeyError, TypeError, ValueError):
            ok = False
        if not ok:
            raise RunDirError(f"Corrupt weights file {path} (tensor {name!r}: {info!r} does not fit the file). "
                              "Re-create the run.")
        shapes[name] = shape
    return shapes


def _shape_mismatch(expected: dict[str, tuple[int, ...]], found: dict[str, tuple[int, ...]]) -> str | None:
    missing = [k for k in expected if k not in found]
    unexpected = [k for k in found if k not in expected]
    shapes = [k for k in expected if k in found and expected[k] != found[k]]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s), first {missing[0]!r}")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s), first {unexpected[0]!r}")
    if shapes:
        k = shapes[0]
        parts.append(f"{len(shapes)} shape mismatch(es), first {k!r}: {found[k]} in the weights, {expected[k]} in "
                     "the model")
    return "; ".join(parts) or None


def validate_run(path: str | Path, weights: str = "best", *, model: nn.Module | None = None) -> dict[str, Any]:
    """Check a run directory before anything is built or allocated; returns its model.json.

    model.json's bounds, the weights file's header, and that the model model.json describes (or `model`, when
    given) has exactly the tensor names and shapes of the weights. Raises a one-line `RunDirError`."""
    path = Path(path)
    meta = read_model_meta(path)
    if weights not in WEIGHTS:
        raise RunDirError(f"Invalid weights={weights!r}. Expected 'best' or 'last'.")
    if meta.get("runtime") == "onnxruntime":
        name = str(meta.get("onnx_file", "model.onnx"))
        if Path(name).name != name:
            raise RunDirError(f"{path / MODEL}: onnx_file={name!r} must be a file name inside the run directory.")
        onnx_file = path / name
        if not onnx_file.is_file():
            raise RunDirError(f"ONNX model {onnx_file} not found. Expected the model.onnx written by "
                              "`leanvision optimize --quantize`; re-create the run.")
        return meta
    found = safetensors_shapes(path / f"{weights}.safetensors")
    if sum(math.prod(s) for s in found.values()) > MAX_PARAMS:
        raise RunDirError(f"{path / f'{weights}.safetensors'} holds over {MAX_PARAMS:,} values. Refused.")
    if model is None and str(meta.get("model") or "").startswith(CUSTOM_PREFIX):
        raise custom_module_error(meta["model"], f"Run {path}")
    if model is None:
        try:
            with torch.device("meta"):  # shapes only: no memory, whatever model.json asks for
                described = rebuild_model(meta)
        except RunDirError:
            raise
        except NotImplementedError:  # an op without a meta kernel in restoring the structure (folding traces a forward)
            _check_size_only(path, meta, found)
            return meta
        except Exception as e:  # noqa: BLE001 - a model.json the model code rejects is bad input, in one line
            raise RunDirError(f"{path / MODEL} does not describe a model leanvision can build "
                              f"({first_line(e, with_type=True, limit=200)}). Re-create the run.") from None
    else:  # the caller's own module: a shape-only copy takes what `optimize` changed (pruned shapes, folded BN)
        described = copy.deepcopy(model).to("meta")
        if meta.get("shape_overrides") or meta.get("folded"):
            with torch.device("meta"):
                restore_structure_(described, meta)
    expected = {k: tuple(v.shape) for k, v in described.state_dict().items()}
    mismatch = _shape_mismatch(expected, found)  # first: it names what differs (a too-large model.json mismatches)
    if mismatch:
        which = f"the given {type(model).__name__}" if model is not None else "the model in model.json"
        fix = ("Pass an instance of the class the run was trained with (with the same arguments)." if model is not None
               else "model.json and the weights disagree (changed or damaged); re-create the run.")
        raise RunDirError(f"Weights in {path} do not fit {which}: {mismatch}. {fix}")
    if sum(math.prod(s) for s in expected.values()) > MAX_PARAMS:
        raise RunDirError(f"{path / MODEL} describes a model of over {MAX_PARAMS:,} values (at most {MAX_PARAMS:,} "
                          "are loaded). Refused; re-create the run.")
    return meta


def _check_size_only(path: Path, meta: dict[str, Any], found: dict[str, tuple[int, ...]]) -> None:
    """The fallback when the optimized structure cannot be traced on the meta device: the unpruned model must not be
    absurdly larger than the weights (pruning removes at most a few hundred times the values); `load_run` then
    builds it and refuses a state dict that does not fit."""
    with torch.device("meta"):
        plain = rebuild_model(meta, structure=False)
    values, stored = sum(p.numel() for p in plain.state_dict().values()), sum(math.prod(s) for s in found.values())
    if values > 1000 * stored + 10_000_000:
        raise RunDirError(f"{path / MODEL} describes a model of {values:,} values for weights of {stored:,}: "
                          "model.json and the weights disagree (changed or damaged); re-create the run.")


# ---- load ---------------------------------------------------------------------------------------------------------

def load_run(run_dir: str | Path, weights: str = "best", device: str | torch.device = "cpu", *,
             model: nn.Module | None = None) -> Run:
    """Validate a run directory (`validate_run`), rebuild its model from model.json and load its safetensors
    weights (no pickle). An int8 run loads its model.onnx into ONNX Runtime (`is_onnx(run.model)`).

    `model`: load the weights into this module instead (required for a run trained from your own nn.Module).

    Example: `run = load_run("runs/compact"); logits = run.model(x)`.
    """
    if not isinstance(run_dir, (str, Path)):
        raise RunDirError(f"Invalid run_dir={run_dir!r} ({type(run_dir).__name__}). Expected a run directory path "
                          "(str or pathlib.Path), e.g. load_run('runs/compact').")
    if model is not None and not isinstance(model, nn.Module):
        raise RunDirError(f"Invalid model={model!r} ({type(model).__name__}). Expected an nn.Module instance (for a "
                          "run trained from your own module); leave it out for a registered model.")
    path = Path(run_dir)
    meta = validate_run(path, weights, model=model)
    if meta.get("runtime") == "onnxruntime":  # an int8 model from `leanvision optimize`: runs in ONNX Runtime (CPU)
        session = (meta.get("quantization") or {}).get("session")
        risk = saturation_warning(meta.get("quantization"), meta.get("optimized_from"))
        if risk:
            warnings.warn(f"{path}: {risk}", stacklevel=2)
        return Run(path=path, model=OnnxModule(path / meta.get("onnx_file", "model.onnx"), session).eval(), meta=meta)
    if model is None:
        model = rebuild_model(meta)
    elif meta.get("shape_overrides") or meta.get("folded"):  # validated above on a shape-only copy
        restore_structure_(model, meta)
    state = load_weights(path / f"{weights}.safetensors")
    try:
        model.load_state_dict(state)
    except RuntimeError:  # only after `_check_size_only`: validate_run compared every shape otherwise
        raise RunDirError(f"Weights in {path} do not fit the model: {state_mismatch(model, state)}. "
                          "Re-create the run.") from None
    model.eval().to(device)
    return Run(path=path, model=model, meta=meta)


def state_mismatch(model: nn.Module, state: dict[str, torch.Tensor]) -> str:
    """The first difference between `model`'s parameters and a saved state dict, in words (for one-line errors)."""
    return _shape_mismatch({k: tuple(v.shape) for k, v in model.state_dict().items()},
                           {k: tuple(v.shape) for k, v in state.items()}) or "the state dict does not load"


def config_from_run(run_dir: str | Path) -> RunConfig:
    return RunConfig.from_dict(read_json(Path(run_dir) / CONFIG)["config"])


# ---- write ----------------------------------------------------------------------------------------------------------

def write_config(out: Path, payload: dict[str, Any]) -> None:
    """config.json: `{"config": RunConfig.to_dict(), ...}` (environment, dataset notes, optimize provenance)."""
    write_json(out / CONFIG, payload)


def model_description(cfg: RunConfig, model: nn.Module, dataset) -> dict[str, Any]:
    """model.json's content for `model` built from `cfg` for `dataset` (what `rebuild_model` reads back)."""
    spec = getattr(model, "spec", None)
    return {
        "format": MODEL_FORMAT,
        "model": None if spec is not None else cfg.model,
        "spec": spec,
        "model_kwargs": cfg.model_kwargs,
        "num_classes": dataset.num_classes,
        "input_shape": list(dataset.input_shape),
        "classes": list(dataset.classes),
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "dataset": dataset.source,
        "num_params": sum(p.numel() for p in model.parameters()),
    }


def write_model_meta(out: Path, meta: dict[str, Any]) -> None:
    """model.json: what `rebuild_model` needs (`model_description`), in MODEL_FORMAT."""
    write_json(out / MODEL, {**meta, "format": MODEL_FORMAT})


def write_weights(out: Path, state: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None,
                  names: tuple[str, ...] = WEIGHTS) -> None:
    """best/last.safetensors (both the same state when an optimized run has one)."""
    for name in names:
        save_weights(out / f"{name}.safetensors", state, metadata)


def write_result(out: Path, result: dict[str, Any]) -> None:
    write_json(out / RESULT, result)


def read_result(run_dir: str | Path) -> dict[str, Any]:
    return read_json(Path(run_dir) / RESULT)


__all__ = ["Run", "TrainResult", "OptimizeResult", "OptimizeStep", "typed_result",
           "MODEL_FORMAT", "CUSTOM_PREFIX", "is_onnx", "rebuild_model", "read_model_meta",
           "safetensors_shapes", "validate_run", "load_run", "state_mismatch", "config_from_run", "write_config",
           "model_description", "write_model_meta", "write_weights", "write_result", "read_result",
           "custom_module_error"]
