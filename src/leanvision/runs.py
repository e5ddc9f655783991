"""Create a run directory by training (`train_run`); the format itself (write, validate, load, rebuild) lives in
`rundir`, re-exported here for callers of `runs.load_run`.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from . import __version__, distributed
from .config import RunConfig, config_diff, same_config
from .data import load_dataset
from .device import check_train_device
from .errors import LeanvisionError
from .health import training_warnings
from .io import load_weights, read_json
from .measure import environment as measured_environment
from .measure.env import cpu_features
from .models import MODELS, create_model, load_spec
from .models.registry_api import SPEC_SUFFIXES
from .rundir import (
    CUSTOM_PREFIX,
    MODEL_FORMAT,
    Run,
    config_from_run,
    custom_module_error,
    load_run,
    model_description,
    state_mismatch,
    write_config,
    write_model_meta,
    write_result,
)
from .runtimes.eager import predict_logits
from .train import CHECKPOINT, fit

RESUMABLE = {f"train.{k}" for k in ("epochs", "device", "compile", "channels_last", "memory_fraction",
                                    "expandable_segments")}  # what a resume may change (train.config_for_compare)


def _data_kwargs(cfg: RunConfig) -> dict[str, Any]:
    d = cfg.data
    return dict(name=d.dataset, data_dir=d.data_dir, image_size=d.image_size, channels=d.channels,
                val_fraction=d.val_fraction, strict=d.strict)


def build_model(cfg: RunConfig, dataset) -> nn.Module:
    if cfg.model.startswith(CUSTOM_PREFIX):
        raise custom_module_error(cfg.model, "This config")
    c, h, w = dataset.input_shape
    return create_model(cfg.model, num_classes=dataset.num_classes, in_chans=c, img_size=(h, w), **cfg.model_kwargs)


def environment(device: str | torch.device = "cpu") -> dict[str, Any]:
    """measure.environment (versions, threads, CPU/GPU names) plus the leanvision version and torchrun world size."""
    return {"leanvision": __version__, **measured_environment(device), "world_size": distributed.world_size()}


def train_run(cfg: RunConfig, out_dir: str | Path, *, resume: bool = False, progress: bool = True,
              dataset=None, loss_fn=None, overwrite: bool = False, log=None,
              recipe: str | None = None, epoch_lines: bool | None = None, model: nn.Module | None = None
              ) -> dict[str, Any]:
    """Train `cfg` into `out_dir` and evaluate the best weights on the test split; returns result.json's content.

    `resume=True` continues the run in `out_dir` (a larger `cfg.train.epochs` extends a finished one); only the
    epochs and speed options (device, compile, channels_last, memory options) may differ from its stored config.
    `overwrite=True` replaces a run already in `out_dir`.
    `log(text)`, when given, receives the start-of-run block (dataset summary and resolved settings; `recipe` names
    the recipe that chose them). `epoch_lines` prints one line per epoch even without the live bar (default:
    `progress`). `model`: train this `nn.Module` instance instead of building `cfg.model` (see `custom_module_name`).
    result.json's `warnings` lists what looks wrong in the numbers (`health.training_warnings`).

    Example: `train_run(RunConfig(model="compact", data=DataConfig("digits")), "runs/compact")`.
    """
    out = Path(out_dir)
    device = check_train_device(cfg.train)  # fail fast on a missing device or bad device option, before any write
    owns_group = distributed.init_from_env(cfg.train.device)  # launched by torchrun: join the group (DDP)
    try:
        return _train_run(cfg, out, device, resume=resume, progress=progress,
                          dataset=dataset, loss_fn=loss_fn, overwrite=overwrite, log=log, recipe=recipe,
                          epoch_lines=epoch_lines, model=model)
    finally:  # also on errors (a NaN stops every rank): the group is torn down, not left to the NCCL watchdog
        if owns_group:
            distributed.destroy()


def _train_run(cfg: RunConfig, out: Path, device: torch.device, *, resume: bool, progress: bool,
               dataset, loss_fn, overwrite: bool, log=None, recipe: str | None = None,
               epoch_lines: bool | None = None, model: nn.Module | None = None) -> dict[str, Any]:
    main = distributed.is_main()  # only rank 0 writes files
    if resume and overwrite:
        raise LeanvisionError("`resume` and `overwrite` exclude each other: continue the run in `out`, or replace "
                              "it.")
    if model is None:  # a module given in Python is its own model
        _check_model_name(cfg.model)  # cheap, and a typo is the likelier mistake than the run directory
    if resume and not (out / CHECKPOINT).exists():
        raise LeanvisionError(f"Cannot resume: no {CHECKPOINT} in {out}. Start it without `resume`.")
    if not resume and not overwrite and (out / CHECKPOINT).exists():
        raise LeanvisionError(f"{out} already holds a run. Use `resume` to continue it, `overwrite` to replace it, "
                              "or choose another `out`.")
    stored = None
    if resume:
        stored = read_json(out / "config.json")
        differs = [d for d in config_diff(stored["config"], cfg.to_dict()) if d.split(" ")[0] not in RESUMABLE]
        if differs:
            raise LeanvisionError(f"Cannot resume {out}: {'; '.join(differs)} (stored -> given). Resume without "
                                  "those options (the run's own config is used), or start a new `out`.")
    torch.manual_seed(cfg.train.seed)
    dataset = dataset if dataset is not None else load_dataset(**_data_kwargs(cfg))
    if model is None:
        model = build_model(cfg, dataset)
    meta = model_description(cfg, model, dataset)
    if overwrite and main and ((out / CHECKPOINT).exists() or (out / "config.json").exists()):
        shutil.rmtree(out)  # only now: a bad option or missing dataset above leaves the old run in place
    if log is not None and main:
        log(run_summary(cfg, dataset, device, recipe=recipe, resume=resume))
    out.mkdir(parents=True, exist_ok=True)
    if stored is not None and main and not same_config(stored["config"], cfg.to_dict()):  # e.g. --epochs
        write_config(out, {**stored, "config": cfg.to_dict()})
    if not resume and main:
        write_config(out, {"config": cfg.to_dict(), "dataset_notes": dataset.notes, "environment": environment(device)})
        write_model_meta(out, meta)
    start = time.perf_counter()
    history = fit(model, dataset, cfg.train, out, resume=resume, progress=progress,
                  loss_fn=loss_fn, epoch_lines=epoch_lines)
    wall = time.perf_counter() - start
    if not main:  # torchrun: rank 0 evaluates the test split and writes result.json; the other ranks read it
        distributed.barrier()
        return read_json(out / "result.json")
    model.load_state_dict(load_weights(out / "best.safetensors"))
    result: dict[str, Any] = {
        "model": cfg.model,
        "dataset": dataset.name,
        "epochs_run": len(history),
        "best_val_accuracy": max((h["val_accuracy"] or 0.0 for h in history), default=None),
        "train_time_s": sum(h["epoch_time_s"] for h in history),
        "wall_time_s_this_call": wall,
        "num_params": meta["num_params"],
    }
    if cfg.train.compile:
        result["compile_time_s"] = sum(h.get("compile_time_s") or 0.0 for h in history)
    if distributed.world_size() > 1:
        result["world_size"] = distributed.world_size()
    if dataset.test is not None and len(dataset.test):
        device = next(model.parameters()).device
        logits, labels = predict_logits(model, dataset.test, dataset.mean, dataset.std, device)
        correct = int((logits.argmax(1) == labels).sum())
        result.update(test_accuracy=correct / len(labels), test_correct=correct, test_total=len(labels))
    steps = -(-len(dataset.train) // cfg.train.batch_size)
    result["warnings"] = training_warnings(history, dataset.num_classes, steps_per_epoch=steps,
                                           learning_rate=cfg.train.learning_rate,
                                           batchnorm=any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                                         for m in model.modules()))
    write_result(out, result)
    distributed.barrier()
    return result


def _check_model_name(model: Any) -> None:
    """An unknown model name or a bad spec file fails here, before any run directory is looked at."""
    if isinstance(model, str) and not model.lower().endswith(SPEC_SUFFIXES):
        MODELS.get(model)
    elif isinstance(model, (str, os.PathLike)):
        load_spec(model)


def dataset_summary(dataset) -> list[str]:
    """Lines describing a loaded dataset: name, split sizes, image shape, classes, and how it was assembled."""
    test = len(dataset.test) if dataset.test is not None else 0
    c, h, w = dataset.input_shape
    names = ", ".join(dataset.classes[:6]) + (", ..." if dataset.num_classes > 6 else "")
    lines = [f"data   {dataset.name}: train {len(dataset.train):,}, val {len(dataset.val):,}, test {test:,} images "
             f"of {c}x{h}x{w} (CxHxW), {dataset.num_classes} classes ({names})"]
    lines += [f"       note: {note}" for note in dataset.notes]
    return lines


def run_summary(cfg: RunConfig, dataset, device: torch.device | str, *, recipe: str | None = None,
                resume: bool = False) -> str:
    """The block printed at the start of `leanvision train`: dataset summary and the resolved settings."""
    t = cfg.train
    kwargs = (" (" + ", ".join(f"{k}={v}" for k, v in cfg.model_kwargs.items()) + ")") if cfg.model_kwargs else ""
    chose = f" (recipe {recipe}: chose every setting below not given explicitly)" if recipe else ""
    optimizer = t.optimizer + (" nesterov" if t.nesterov else "")
    optimizer += f" wd {t.weight_decay:g}" if t.weight_decay else ""
    schedule = t.schedule + (f", {t.warmup_epochs:g} warm-up epochs" if t.warmup_epochs else "")
    extras = ", ".join(x for x in (f"label smoothing {t.label_smoothing:g}" if t.label_smoothing else "",
                                   f"augment {t.augment}", "channels_last" if t.channels_last else "",
                                   "compile" if t.compile else "", f"seed {t.seed}") if x)
    lines = [f"{'resume' if resume else 'train'}  {cfg.model}{kwargs}{chose}", *dataset_summary(dataset),
             f"setup  {optimizer}, lr {t.learning_rate:g}, {schedule}, {t.epochs} epoch{'s' * (t.epochs != 1)}, "
             f"batch {t.batch_size}, {t.precision} on {device}; {extras}"]
    note = precision_note(t.precision, device, chosen=bool(recipe))
    return "\n".join([*lines, f"note   {note}"] if note else lines)


def precision_note(precision: str, device: torch.device | str, chosen: bool = False) -> str | None:
    """Why fp32 on a CPU without native bf16 math (when a recipe chose it), or a warning that bf16 is emulated there."""
    if torch.device(device).type != "cpu":
        return None
    cpu = cpu_features()
    if cpu["cpu_bf16"] is not None:
        return None
    isa = cpu["cpu_isa"] or "no AVX-512 BF16 or AMX"
    if precision == "bf16":
        return (f"this CPU has no native bf16 math ({isa}: no AVX-512 BF16 or AMX), so bf16 autocast is emulated and "
                "trains slower than fp32 here; pass --precision fp32")
    if precision == "fp32" and chosen:
        return f"fp32 because this CPU has no native bf16 math ({isa}: no AVX-512 BF16 or AMX)"
    return None


__all__ = ["Run", "train_run", "load_run", "config_from_run", "build_model", "model_description", "run_summary",
           "dataset_summary", "state_mismatch", "CUSTOM_PREFIX", "MODEL_FORMAT"]
