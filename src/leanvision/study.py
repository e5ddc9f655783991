"""`leanvision study`: train a plan of variants, measure each the same way, diagnose, and report.

A plan is a list of variants (model or spec + training overrides) sharing one training budget. Each variant is
trained into `OUT/variants/<name>/seed<k>/`, measured on every available runtime (same inputs, same repeats), and
summarised in `OUT/variants/<name>/record.json`. Re-running the same command skips variants whose record matches
the config; a variant that fails is recorded as failed and the study goes on. With `storage` (a database URL or a
journal file), several processes or machines share the plan's variants: see `study_shared`.
(Over 300 lines: plan validation, per-variant config and the train-measure loop share the plan's precedence rules;
measuring is `measure`, diagnosing `diagnose`, reporting `report`.)
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

import torch
import yaml

from .config import DataConfig, RunConfig, StudyConfig, TrainConfig, config_diff, same_config
from .data import load_dataset
from .data.normalize import normalizer
from .device import resolve_device
from .diagnose import diagnose
from .errors import LeanvisionError, TrainingInterrupted, first_line
from .io import read_json, read_json_lines, write_json
from .measure import (
    count_macs,
    count_params,
    environment,
    file_bytes,
    mean_std,
    peak_tensor_memory,
    speed_b1_b256,
    weight_bytes,
    wilson_interval,
)
from .optimize import optimize_variant, order_chain
from .recipes import RECIPES, fast_precision, resolve_recipe
from .registry import did_you_mean
from .report import write_report
from .results import Result
from .rundir import is_onnx, load_run
from .runs import dataset_summary, train_run
from .runtimes import RUNTIMES, get_runtime, predict_batches

PLAN_NAMES = ("reference", "quick", "colour")
VARIANT_KEYS = {"name", "model", "model_kwargs", "base", "description", "train", "techniques", "recipe"}


def load_plan(plan: str | dict) -> dict[str, Any]:
    """Load a built-in plan by name or a YAML file; validate it.

    Example: `load_plan("reference")["variants"][0]["model"] == "seed-baseline"`.
    """
    if isinstance(plan, dict):
        data, where = plan, "plan"
    elif plan in PLAN_NAMES:
        data, where = yaml.safe_load(resources.files("leanvision").joinpath(f"plans/{plan}.yaml").read_text()), plan
    else:
        path = Path(plan)
        if not path.is_file():
            if path.suffix.lower() in (".yaml", ".yml", ".json") or len(path.parts) > 1:
                raise LeanvisionError(f"Plan file {plan} does not exist. Give an existing plan .yaml file or a "
                                      f"built-in plan: {', '.join(PLAN_NAMES)}.")
            raise LeanvisionError(f"Unknown plan {plan!r}.{did_you_mean(plan, PLAN_NAMES)} Expected one of "
                                  f"{', '.join(PLAN_NAMES)} or a plan .yaml file.")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as e:
            raise LeanvisionError(f"Invalid YAML in plan {path}: {first_line(e)}.") from None
        where = str(path)
    if not isinstance(data, dict) or not isinstance(data.get("variants"), list) or not data["variants"]:
        raise LeanvisionError(f"Plan {where} must be a mapping with a non-empty `variants` list.")
    seen = set()
    for i, v in enumerate(data["variants"]):
        if isinstance(v, str):
            v = data["variants"][i] = {"name": v, "model": v}
        if not isinstance(v, dict) or ("model" not in v and "recipe" not in v):
            raise LeanvisionError(f"Plan {where}: variant {i} must be a mapping with at least `model` or `recipe`.")
        unknown = set(v) - VARIANT_KEYS
        if unknown:
            raise LeanvisionError(f"Plan {where}: variant {i} has unknown key(s) {sorted(unknown)}; "
                                  f"expected some of {sorted(VARIANT_KEYS)}.")
        if v.get("techniques"):  # e.g. ["prune:ratio=0.5,finetune_epochs=2", "quantize:mode=int8"]: checked now
            order_chain(list(v["techniques"]))
        if v.get("recipe") is not None:  # e.g. `recipe: fast`: model and training come from it (for the data's shape)
            RECIPES.get(str(v["recipe"]))  # unknown names fail now, listing the known ones
        v.setdefault("name", Path(str(v.get("model") or v["recipe"])).stem)
        if v["name"] in seen:
            raise LeanvisionError(f"Plan {where}: duplicate variant name {v['name']!r}.")
        seen.add(v["name"])
    for v in data["variants"]:
        if v.get("base") is not None and v["base"] not in seen:
            raise LeanvisionError(f"Plan {where}: variant {v['name']!r} has base {v['base']!r}, "
                                  "which is not in the plan.")
    data.setdefault("name", Path(where).stem)
    data.setdefault("train", {})
    return data


def default_epochs(num_train: int) -> int:
    """Same budget for every variant: more passes over small datasets (digits: 12), few over large (MNIST: 3)."""
    return 12 if num_train < 10_000 else 3


def variant_config(plan_data: dict[str, Any], variant: dict[str, Any], input_shape: tuple[int, int, int],
                   epochs: int | None, precision: str | None, device: str, recipe: str | None = None) -> dict[str, Any]:
    """The model, builder arguments and TrainConfig fields (seed excluded) one variant trains with.

    Precedence: an explicit study-wide `epochs`/`precision` > the variant's `train` > its `recipe` > the study-wide
    `recipe` (its training settings only: the variant keeps its model) > the plan's `train` > defaults (epochs:
    `default_epochs`; precision: fp32; "auto" in a plan: the `fast` recipes' rule, bf16 only where it is native).
    """
    model, model_kwargs, recipe_train = variant.get("model"), dict(variant.get("model_kwargs") or {}), {}
    if variant.get("recipe") is not None:
        chosen = resolve_recipe(str(variant["recipe"]), input_shape, device)
        model = model or chosen.model
        model_kwargs = {**chosen.model_kwargs, **model_kwargs}
        recipe_train = {k: v for k, v in chosen.train.items() if k not in ("device",)}
    elif recipe is not None:
        recipe_train = {k: v for k, v in resolve_recipe(recipe, input_shape, device).train.items() if k != "device"}
    train = {"precision": "fp32", **plan_data["train"], **recipe_train, **(variant.get("train") or {})}
    if epochs is not None:
        train["epochs"] = epochs
    if precision is not None:
        train["precision"] = precision
    train.setdefault("epochs", plan_data.get("default_epochs"))
    if train.get("precision") == "auto":  # a plan's "auto": bf16 where the hardware has native bf16, else fp32
        train["precision"] = fast_precision(device)
    return {"model": str(model), "model_kwargs": model_kwargs, "train": {**train, "device": device}}


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


@dataclass(kw_only=True)
class StudyVariant(Result):
    """One variant of a study: `status` "ok" (measured) or "failed" (`error`); test `accuracy` (the seeds' mean when
    several), parameters, MACs, batch-1 latency (ms, median) and batch-256 throughput (images/s) on its headline
    runtime (torch, or onnxruntime for an int8 model), and the run directory measured."""

    name: str
    model: str | None = None
    status: str
    error: str | None = None
    accuracy: float | None = None
    params: int | None = None
    macs: int | None = None
    latency_b1_median_ms: float | None = None
    throughput_images_per_s: float | None = None
    run_dir: str | None = None
    warnings: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return self.status == "ok"


REPORT_FILES = {"html": "report.html", "md": "report.md", "json": "results.json", "csv": "results.csv"}


@dataclass(kw_only=True)
class Study(Result):
    """`study`'s result (results.json's content): the dataset, settings and environment it ran with, one
    `StudyVariant` each, the `findings`, and where the report is (`report_dir`, `report_files`)."""

    nested: ClassVar[dict[str, type[Result]]] = {"variants": StudyVariant}

    title: str
    plan: str
    dataset: dict[str, Any]
    settings: dict[str, Any]
    environment: dict[str, Any] = field(default_factory=dict)
    wall_time_s: float | None = None
    variants: list[StudyVariant] = field(default_factory=list)
    findings: list[str] = field(default_factory=list)
    report_dir: str | None = None
    report_note: str | None = None

    @property
    def report_files(self) -> dict[str, Path]:
        """Paths of report.html, report.md, results.json and results.csv ({} before the report is written)."""
        return {k: Path(self.report_dir) / name for k, name in REPORT_FILES.items()} if self.report_dir else {}


def run_study(config: StudyConfig | None = None, *, progress: bool = True, **options: Any) -> dict[str, Any]:
    """Train and measure every variant of `plan` on `dataset`, write the report into `out`; returns the study dict.

    `config`: a `StudyConfig`; `options`: any of its fields, applied on top (`run_study(plan="quick", epochs=2)`).
    `epochs` and `precision` given here apply to every variant; otherwise a variant's own (its `train`, its
    `recipe`), else the study's `recipe`, else the plan's, else `default_epochs` and fp32 (see `variant_config`).
    `remeasure=True` re-times finished variants (keeping their trained weights), e.g. on a quieter machine.
    A variant in `out` trained with another config is refused before anything runs, unless `overwrite=True`
    (which retrains it). A report with fewer ok variants than the one in `out` is written to `out/report-<time>/`
    instead (`study["report_dir"]`, `study["report_note"]`), unless `overwrite=True`.
    `storage="postgresql://..."` (or a path.journal) shares the variants with every process started with the same
    storage and options (`study_shared`); a process that ends while others still train returns `report_dir` None
    and a `report_note` saying so; the last one writes the report.

    Example: `run_study(dataset="digits", plan="quick", epochs=2, out="study-quick")`.
    """
    known = [f.name for f in dataclasses.fields(StudyConfig)]
    unknown = sorted(set(options) - set(known))
    if unknown:
        raise LeanvisionError(f"Unknown option(s) {', '.join(unknown)}. Expected some of: {', '.join(known)}, "
                              "progress.")
    cfg = dataclasses.replace(config or StudyConfig(), **options)
    if cfg.recipe is not None:
        RECIPES.get(cfg.recipe)  # an unknown name fails now, listing the known ones
    dataset, data_dir, plan, epochs, seeds = cfg.dataset, cfg.data_dir, cfg.plan, cfg.epochs, cfg.seeds
    out, device, precision, runtimes, repeats = cfg.out, cfg.device, cfg.precision, cfg.runtimes, cfg.repeats
    remeasure, overwrite = cfg.remeasure, cfg.overwrite
    from rich.console import Console

    console = Console(stderr=True, quiet=not progress)
    plan_data = load_plan(plan)
    out = Path(out)
    storage = None
    if cfg.storage is not None and overwrite:  # other processes may be training these variants right now
        raise LeanvisionError("--overwrite cannot be combined with --storage: the shared study's variants may be in "
                              "use by other processes. To start over, use a new --study-name and a new --out.")
    if cfg.storage is not None:  # a bad or unreachable storage fails before any data is loaded
        from .study_shared import open_shared

        storage = open_shared(cfg.storage, out)
    data_cfg = DataConfig(dataset=dataset, data_dir=data_dir)
    ds = load_dataset(dataset, data_dir)
    plan_data = {**plan_data, "default_epochs": plan_data["train"].get("epochs") or default_epochs(len(ds.train))}
    if device == "auto":  # stored concretely, so the variants' configs match across machines' defaults
        device = str(resolve_device(device))
    configs = {v["name"]: variant_config(plan_data, v, ds.input_shape, epochs, precision, device, cfg.recipe)
               for v in plan_data["variants"]}
    _check_existing(plan_data, data_cfg, configs, seeds, out, overwrite)
    console.print("\n".join(dataset_summary(ds)), highlight=False, markup=False)  # what the variants are trained on
    started, tick = datetime.now(timezone.utc), time.perf_counter()
    available = []
    for name in runtimes:
        ok, reason = get_runtime(name).is_available()
        if ok:
            available.append(name)
        else:
            console.print(f"runtime {name} skipped: {reason}")
    header = {
        "title": f"leanvision study: {ds.name} ({plan_data['name']} plan)",
        "plan": plan_data["name"],
        "dataset": {"name": ds.name, "num_train": len(ds.train), "num_val": len(ds.val),
                    "num_test": len(ds.test) if ds.test is not None else 0, "input_shape": list(ds.input_shape),
                    "num_classes": ds.num_classes, "notes": ds.notes},
        "settings": {**{k: v for k, v in plan_data["train"].items()}, "epochs": epochs or plan_data["default_epochs"],
                     "seeds": seeds, "precision": precision or plan_data["train"].get("precision", "fp32"),
                     "device": device, "latency_batch_size": 1, "throughput_batch_size": 256,
                     "repeats": repeats, "warmup": 10, "runtimes": available, "runtime": "torch",
                     **({"recipe": cfg.recipe} if cfg.recipe else {})},
    }
    elsewhere: list[dict[str, Any]] = []
    if cfg.storage is not None:  # the variants are trials of a shared Optuna study: `study_shared`
        from .study_shared import run_shared

        def train(variant, seed):
            return _train_seed(variant, data_cfg, configs[variant["name"]], ds, seed, out, progress, console, repeats)

        def record(variant, results, trials):  # measured here, or record.json reused (same config and trials)
            return _run_variant(variant, data_cfg, configs[variant["name"]], ds, seeds, out, available, repeats,
                                progress, console, remeasure, trained=results, key_extra={"trials": trials})

        def failed(variant, error):
            return failed_record(variant, configs[variant["name"]], error)

        shared = run_shared(cfg, storage, plan_data, configs, ds, out, header["settings"], console, train=train,
                            record=record, failed=failed)
        if shared.get("report_dir", "") is None:  # other processes still train: the last one writes the report
            return {**header, **shared, "wall_time_s": time.perf_counter() - tick}
        variants, elsewhere = shared["variants"], shared["trained_elsewhere"]
        header["settings"].update(storage=shared["storage"], study_name=shared["study_name"])
    else:
        variants = []
        for index, variant in enumerate(plan_data["variants"]):
            console.rule(f"[{index + 1}/{len(plan_data['variants'])}] {variant['name']}")
            try:
                record = _run_variant(variant, data_cfg, configs[variant["name"]], ds, seeds, out, available,
                                      repeats, progress, console, remeasure)
            except TrainingInterrupted:  # Ctrl-C stops the study (exit 130), not only this variant
                raise
            except (LeanvisionError, RuntimeError, MemoryError, ValueError) as e:
                console.print(f"[red]{variant['name']} failed: {first_line(e)}")
                record = failed_record(variant, configs[variant["name"]], e)
            variants.append(record)
    study = {
        **header,
        "environment": environment(torch.device(device)),
        "started": started.isoformat(timespec="seconds"),
        "finished": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "wall_time_s": time.perf_counter() - tick,
        "variants": variants,
    }
    diagnose(study)
    if cfg.storage is not None:
        study["trained_elsewhere"] = elsewhere
        if elsewhere:
            study["findings"].append(
                "Trained on another machine and not re-measured here (their run directories are not reachable "
                "from this machine; put `out` on a shared filesystem): " + ", ".join(
                    f"{e['name']} ({e['host']}: {e['run_dir']})" for e in elsewhere) + ".")
    report_dir = out
    if (out / "results.json").exists() and not overwrite:  # never replace a good report with a worse one
        try:
            earlier = sum(v.get("status") == "ok" for v in read_json(out / "results.json").get("variants", []))
        except (LeanvisionError, AttributeError):  # unreadable: nothing good to keep
            earlier = 0
        now = sum(v.get("status") == "ok" for v in variants)
        if now < earlier:
            report_dir = out / f"report-{started:%Y%m%d-%H%M%S}"
            study["report_note"] = (f"this run has {now} ok variants, the report in {out} has {earlier}: it is kept, "
                                    f"and this report was written to {report_dir}")  # the CLI prints it
    study["report_dir"] = str(report_dir)
    write_report(study, report_dir)  # the CLI prints where the report is (once)
    return study


def failed_record(variant: dict[str, Any], config: dict[str, Any], error: BaseException | str) -> dict[str, Any]:
    """A failed variant's entry: its name, model and base, and the error in one line (`Type: message`)."""
    message = error if isinstance(error, str) else f"{type(error).__name__}: {first_line(error)}"
    return {"name": variant["name"], "model": config["model"], "base": variant.get("base"),
            "description": variant.get("description", ""), "status": "failed", "error": message}


def _check_existing(plan_data, data_cfg, configs, seeds, out: Path, overwrite: bool) -> None:
    """Refuse, before anything runs, a study whose variants in `out` were trained with another config.

    With `overwrite`, those variants' directories are removed so they are retrained.
    """
    clashes = []
    for variant in plan_data["variants"]:
        config = configs[variant["name"]]
        for seed in range(seeds):
            stored = out / "variants" / variant["name"] / f"seed{seed}" / "config.json"
            if not stored.exists():
                continue
            try:
                cfg = RunConfig(model=config["model"], model_kwargs=config["model_kwargs"],
                                data=data_cfg, train=TrainConfig(**{**config["train"], "seed": seed}))
            except (LeanvisionError, TypeError):
                continue  # a bad variant is reported as failed by the study itself
            diff = config_diff(read_json(stored)["config"], cfg.to_dict())
            if diff:
                clashes.append((variant["name"], diff))
                break
    if not clashes:
        return
    if overwrite:
        import shutil

        for name, _ in clashes:
            shutil.rmtree(out / "variants" / name)
        return
    name, diff = clashes[0]
    raise LeanvisionError(f"{out} holds a study trained with another config ({len(clashes)} variant(s), e.g. {name}: "
                          f"{'; '.join(diff[:3])}). Use another `out`, `overwrite` to retrain them, or the same "
                          "options with `remeasure` to re-time it.")


def _variant_key(variant, data_cfg, config, seeds, runtimes, repeats) -> dict[str, Any]:
    """What a variant's record.json depends on (its `config_hash`): a record with the same key is reused."""
    key = {"variant": variant, "data": data_cfg.__dict__, "train": config["train"], "seeds": seeds,
           "runtimes": runtimes, "repeats": repeats}
    if variant.get("recipe") is not None:
        key["model"] = [config["model"], config["model_kwargs"]]
    return key


def _run_variant(variant, data_cfg, config, ds, seeds, out: Path, runtimes, repeats, progress, console,
                 remeasure=False, trained: list[dict[str, Any]] | None = None, key_extra: dict | None = None):
    """Train (or reuse) every seed of a variant and measure it; `trained`: the seeds' results, trained already (by
    `study --storage` workers); `key_extra`: more of what its record.json depends on."""
    vdir = out / "variants" / variant["name"]
    key = {**_variant_key(variant, data_cfg, config, seeds, runtimes, repeats), **(key_extra or {})}
    record_path = vdir / "record.json"
    if record_path.exists():
        old = read_json(record_path)
        if old.get("config_hash") == _hash(key) and old.get("status") == "ok" and not remeasure:
            console.print(f"{variant['name']}: already done with the same config, skipped")
            return old
    results = trained if trained is not None else [
        _train_seed(variant, data_cfg, config, ds, seed, out, progress, console, repeats) for seed in range(seeds)]
    return _measure_record(variant, config, ds, out, runtimes, repeats, results, key)


def _train_seed(variant, data_cfg, config, ds, seed: int, out: Path, progress, console, repeats) -> dict[str, Any]:
    """Train one seed of a variant into `OUT/variants/<name>/seed<k>` (reusing a finished run with the same config,
    or an identical run of another variant), then its techniques into `seed<k>-optimized`; returns the result."""
    cfg = RunConfig(model=config["model"], model_kwargs=config["model_kwargs"],
                    data=data_cfg, train=TrainConfig(**{**config["train"], "seed": seed}))
    run_dir = out / "variants" / variant["name"] / f"seed{seed}"
    twin = _same_run(out, f"seed{seed}", cfg) if not (run_dir / "config.json").exists() else None
    if twin is not None:  # another variant trained exactly this (e.g. the base of a compression variant)
        import shutil

        shutil.copytree(twin, run_dir)
        console.print(f"{variant['name']}: seed {seed} uses the identical training of {twin.parent.name}")
    if (run_dir / "result.json").exists() and (run_dir / "config.json").exists() and \
            same_config(read_json(run_dir / "config.json")["config"], cfg.to_dict()):
        result = read_json(run_dir / "result.json")
    else:
        resume = (run_dir / "checkpoint.safetensors").exists()
        if resume and not same_config(read_json(run_dir / "config.json")["config"], cfg.to_dict()):
            raise LeanvisionError(f"{run_dir} holds a run with another config; delete it or use another `out`.")
        result = train_run(cfg, run_dir, resume=resume, progress=progress, dataset=ds)
    if variant.get("techniques"):  # compress the trained run into seed<k>-optimized; that model is measured
        result = {**result, **optimize_variant(run_dir, variant["techniques"], ds, progress, repeats)}
    return result


def _measure_record(variant, config, ds, out: Path, runtimes, repeats, results, key) -> dict[str, Any]:
    """Measure a variant's trained seed 0 (`measure_variant`) and write its record.json from the seeds' `results`."""
    vdir = out / "variants" / variant["name"]
    seeds, accuracies = len(results), [r["test_accuracy"] for r in results]
    final_dir = vdir / ("seed0-optimized" if variant.get("techniques") else "seed0")
    run = load_run(final_dir)
    record = measure_variant(run, ds, runtimes, repeats)
    if variant.get("techniques"):  # one line per step, e.g. "prune 50%: 33,338 -> 8,610 params, ..."
        record.update(techniques=list(results[0]["techniques"]), steps=results[0]["steps"],
                      technique_steps=[step["summary"] for step in results[0]["steps"][1:]])
        record["diagnosis"] = [s if s.endswith(".") else s + "." for s in record["technique_steps"]]  # sentences
    first = results[0]
    mean, std = mean_std(accuracies)
    record.update(
        name=variant["name"], model=config["model"], base=variant.get("base"),
        description=variant.get("description", ""), status="ok", error=None,
        model_kwargs=config["model_kwargs"], recipe=variant.get("recipe"),
        accuracy=accuracies[0] if seeds == 1 else mean, accuracy_mean=mean, accuracy_std=std, accuracies=accuracies,
        accuracy_ci95=list(wilson_interval(first["test_correct"], first["test_total"])), test_total=first["test_total"],
        train_time_s=first["train_time_s"], epochs=first["epochs_run"],
        train_images_per_s=len(ds.train) * first["epochs_run"] / max(first["train_time_s"], 1e-9),
        history=[{k: h[k] for k in ("epoch", "train_loss", "train_accuracy", "val_loss", "val_accuracy")}
                 for h in (read_json_lines(vdir / "seed0" / "metrics.jsonl"))],
        run_dir=str(final_dir.as_posix()), config_hash=_hash(key),
        # what looked wrong in the runs (health.py: e.g. near-chance validation), seed 0's and every seed's optimize
        warnings=list(dict.fromkeys(w for r in results for w in r.get("warnings") or [])),
    )
    write_json(vdir / "record.json", record)
    return record


def _same_run(out: Path, seed_dir: str, cfg: RunConfig) -> Path | None:
    """A finished run of this study (any variant) trained with exactly `cfg`, or None."""
    for candidate in sorted((out / "variants").glob(f"*/{seed_dir}")):
        try:
            same = same_config(read_json(candidate / "config.json")["config"], cfg.to_dict())
        except (LeanvisionError, KeyError, TypeError):
            continue
        if same and (candidate / "result.json").exists():
            return candidate
    return None


def measure_variant(run, ds, runtimes: list[str], repeats: int = 50) -> dict[str, Any]:
    """Size, compute, per-runtime latency/throughput/accuracy and peak memory of a trained run (CPU, fp32)."""
    model, shape = run.model.eval().cpu(), run.input_shape
    onnx_file = model.onnx_path if is_onnx(model) else None  # an int8 run: ONNX Runtime only; counts: model.json
    if onnx_file is not None:
        runtimes = [name for name in runtimes if RUNTIMES.get(name).onnx_models]
    normalize = normalizer(ds.mean, ds.std, torch.device("cpu"))
    x_test = normalize(ds.test.images)
    generator = torch.Generator().manual_seed(0)
    x1 = torch.randn((1, *shape), generator=generator)
    x256 = torch.randn((256, *shape), generator=generator)
    record: dict[str, Any] = {
        "params": count_params(model), "trainable_params": count_params(model, trainable_only=True),
        "macs": count_macs(model, shape), "weight_bytes_fp32": weight_bytes(model, dtype_bytes=4),
        "file_bytes": file_bytes(onnx_file or run.path / "best.safetensors"), "runtimes": {},
    }
    if onnx_file is not None:
        params = run.meta["num_params"]
        record.update(params=params, macs=run.meta["macs"], weight_bytes_fp32=4 * params,
                      unavailable_runtimes={"torch": "int8 ONNX model: runs in ONNX Runtime only"})
    for name in runtimes:
        predict = get_runtime(name).prepare(model, x1, precision="fp32", device=torch.device("cpu"))
        speed = speed_b1_b256(predict, shape, repeats)
        logits = predict_batches(predict, x_test, batch_size=256)
        record["runtimes"][name] = {
            **speed,
            "accuracy": (logits.argmax(1) == ds.test.labels).float().mean().item(),
            "precision": "fp32" if onnx_file is None else "int8", "device": "cpu", "threads": torch.get_num_threads(),
        }
        if hasattr(predict, "streams"):  # onnxruntime-streams: that many single-thread sessions
            record["runtimes"][name]["streams"] = predict.streams
        if hasattr(predict, "compile_times_s"):  # torch-compile: its first batch-1 call compiled, timed apart
            record["runtimes"][name]["compile_time_s"] = predict.compile_times_s.get(tuple(x1.shape))
    torch_metrics = record["runtimes"].get("torch") or next(iter(record["runtimes"].values()), {})
    record.update(latency_b1_median_ms=torch_metrics.get("latency_b1_median_ms"),
                  latency_b1_p95_ms=torch_metrics.get("latency_b1_p95_ms"),
                  throughput_images_per_s=torch_metrics.get("throughput_images_per_s"))
    record["headline_runtime"] = "torch" if "torch" in record["runtimes"] else next(iter(record["runtimes"]), None)
    with torch.no_grad():
        # tensors alive at once during a batch-256 forward (weights and input excluded); see peak_tensor_memory
        record["peak_memory_bytes"] = peak_tensor_memory(lambda: model(x256)) if onnx_file is None else None
    return record
