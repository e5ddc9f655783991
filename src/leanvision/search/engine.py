"""`leanvision search`: an Optuna study over the space in `space.py`, trials run by `objective.run_trial`.

Storage: by default a JournalStorage file `<out>/study.journal` (no server; several local processes share it);
`storage="postgresql://..."` (or any SQLAlchemy URL) uses Optuna's RDB storage so several machines cooperate on one
study (`--study-name`). The study is resumable: `trials` is the study's total, so re-running the same command
continues it; a trial that raised is recorded as FAIL (with its error) and the search goes on; a trial left
RUNNING by a killed process on this host is marked FAIL when the next worker starts. Each worker checks the total
before asking for a trial, so with W workers the study ends with between `trials` and `trials + W - 1` trials.

At the end (in this process, after the workers): the feasible Pareto set is re-measured together, interleaved
round by round on this machine, scored once on the test split (95% Wilson intervals), copied to `<out>/pareto/` as
ordinary run directories, and results.json, results.csv and report.md are written (`report.py`).
"""

from __future__ import annotations

import dataclasses
import json
import multiprocessing
import os
import shutil
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import optuna
import torch

from . import deps
from .deps import MachineLock, fingerprint
from .objective import OBJECTIVES, Measurer, TrialContext, TrialStopped, model_bytes, run_trial
from .report import write_outputs
from .space import Param, load_space, seed_trials


class SearchError(deps.LeanvisionError):
    """Bad search options (objectives, budget, storage)."""


@dataclasses.dataclass
class SearchSettings:
    dataset: str = "digits"
    out: str = "search"
    data_dir: str | None = None
    space: Any = "default"  # "default", a YAML path, or a mapping
    objectives: tuple[str, ...] = ("accuracy", "latency")
    max_latency_ms: float | None = None
    max_size_kb: float | None = None
    min_accuracy: float | None = None
    runtime: str = "onnxruntime"
    trials: int | None = 20
    minutes: float | None = None
    storage: str | None = None
    study_name: str = "leanvision-search"
    workers: int = 1
    sampler: str = "tpe"  # tpe | random
    stop_after: int = 3  # multi-fidelity: stop a trial dominated at a rung by this many others (0: never)
    seed: int | None = 0
    threads: int | None = None  # measurement threads (default: all cores)
    repeats: int = 50  # timed batch-1 calls per measurement
    compare: tuple[str, ...] = ()  # run directories (e.g. registry models) re-measured and scored with the front
    final_rounds: int = 5  # interleaved rounds of the final re-measurement
    warm_start: bool = True  # enqueue the registry designs the space can express (fastnet, ...) as the first trials
    val_fraction: float = 0.1
    progress: bool = True

    def check(self) -> None:
        if not isinstance(self.space, (str, Path, dict)):
            raise SearchError(f"Invalid space={self.space!r}. Expected 'default', a space YAML path, or a dict.")
        if not isinstance(self.out, (str, Path)) or not str(self.out):
            raise SearchError(f"Invalid out={self.out!r}. Expected a directory path.")
        for name in ("max_latency_ms", "max_size_kb", "min_accuracy", "minutes"):
            value = getattr(self, name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, (int, float))):
                raise SearchError(f"Invalid {name}={value!r}. Expected a number (or None).")
        for name in ("repeats", "threads", "stop_after"):
            value = getattr(self, name)
            low = 0 if name == "stop_after" else 1
            if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < low):
                raise SearchError(f"Invalid {name}={value!r}. Expected an integer >= {low}.")
        objectives = tuple(o.strip() for o in (self.objectives.split(",") if isinstance(self.objectives, str)
                                                else self.objectives) if o.strip())
        unknown = [o for o in objectives if o not in OBJECTIVES]
        if unknown or not objectives:
            raise SearchError(f"Unknown objective(s) {', '.join(map(repr, unknown)) or '(none)'}. Expected a "
                              f"comma-separated list of {', '.join(OBJECTIVES)}, e.g. accuracy,latency.")
        if len(set(objectives)) != len(objectives):
            raise SearchError(f"Repeated objective in {','.join(objectives)}. Name each objective once.")
        if "accuracy" not in objectives:
            raise SearchError("The objectives must include accuracy (what the search maximizes). "
                              f"Received: {','.join(objectives)}.")
        self.objectives = ("accuracy", *[o for o in objectives if o != "accuracy"])  # accuracy first, always
        if self.trials is None and self.minutes is None:
            raise SearchError("No budget: give trials=N and/or minutes=M (both > 0).")
        if self.trials is not None and (not isinstance(self.trials, int) or self.trials < 1):
            raise SearchError(f"Invalid budget trials={self.trials!r}. Expected an integer >= 1.")
        if self.minutes is not None and not self.minutes > 0:
            raise SearchError(f"Invalid budget minutes={self.minutes}. Expected a number > 0.")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise SearchError(f"Invalid workers={self.workers}. Expected an integer >= 1 (local processes).")
        for name in ("max_latency_ms", "max_size_kb"):
            if getattr(self, name) is not None and not getattr(self, name) > 0:
                raise SearchError(f"Invalid {name}={getattr(self, name)}. Expected a number > 0.")
        if self.min_accuracy is not None and not 0 <= self.min_accuracy <= 1:
            raise SearchError(f"Invalid min_accuracy={self.min_accuracy}. Expected a fraction in [0, 1] "
                              "(0.99 for 99%).")
        if self.sampler not in ("tpe", "random"):
            raise SearchError(f"Invalid sampler={self.sampler!r}. Expected tpe or random.")
        deps.get_runtime(self.runtime)  # an unknown runtime fails with the registry's one line


def search(**options: Any) -> dict[str, Any]:
    """Run (or continue) a search; returns results.json's content. Options: `SearchSettings` fields.

    Example: `search(dataset="digits", objectives="accuracy,latency", trials=20, out="search/digits")`.
    """
    names = {f.name for f in dataclasses.fields(SearchSettings)}
    unknown = sorted(set(options) - names)
    if unknown:
        raise SearchError(f"Unknown option(s) {', '.join(unknown)}. Expected some of: {', '.join(sorted(names))}.")
    settings = SearchSettings(**options)
    settings.check()
    load_space(settings.space)  # a bad space fails before any data is loaded or storage touched
    settings.compare = tuple(str(p).strip() for p in (settings.compare.split(",") if isinstance(settings.compare, str)
                                                      else settings.compare) if str(p).strip())
    _check_compare(settings)
    out = Path(settings.out)
    out.mkdir(parents=True, exist_ok=True)
    study = open_study(settings)  # creates the study (or checks an existing one) and fails early on a bad storage
    if settings.warm_start:
        enqueue_seeds(study, settings)
    start = time.time()
    if settings.workers == 1:
        work(settings, 0)
    else:
        ctx = multiprocessing.get_context("spawn")
        procs = [ctx.Process(target=_worker_main, args=(dataclasses.asdict(settings), i), daemon=False)
                 for i in range(settings.workers)]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        bad = [p.exitcode for p in procs if p.exitcode != 0]
        if len(bad) == len(procs) and not study.get_trials(deepcopy=False, states=STARTED):
            raise SearchError(f"All {len(procs)} worker processes failed before any trial (exit codes {bad}). From a "
                              "script, call search(workers=N) under `if __name__ == \"__main__\":` (workers are "
                              "spawned processes that import the script), or use workers=1.")
        if bad and settings.progress:
            print(f"search: {len(bad)} worker(s) exited with codes {bad}; their running trials are marked failed",
                  file=sys.stderr)
        _fail_stale(open_study(settings))
    return finish(settings, wall_s=time.time() - start)


def _worker_main(settings: dict[str, Any], index: int) -> None:
    s = SearchSettings(**settings)
    s.objectives = tuple(s.objectives)
    try:
        work(s, index)
    except KeyboardInterrupt:
        sys.exit(130)


def _storage(settings: SearchSettings) -> Any:
    return deps.open_storage(settings.storage, Path(settings.out) / "study.journal", SearchError)


NEW_CONSTRAINTS = hasattr(optuna.trial.Trial, "set_constraint")  # Optuna >= 5 stores constraints on the trial


def _constraints(settings: SearchSettings):
    def constraints(trial: Any) -> list[float]:
        return list(trial.user_attrs.get("constraints", [0.0]))
    return constraints


def constraint_values(settings: SearchSettings, attrs: dict[str, Any]) -> list[float]:
    """Optuna's convention: each value <= 0 means satisfied."""
    values = [0.0]
    if settings.max_latency_ms is not None:
        values.append(attrs["latency_ms"] - settings.max_latency_ms)
    if settings.max_size_kb is not None:
        values.append(attrs["size_kb"] - settings.max_size_kb)
    if settings.min_accuracy is not None:
        values.append(settings.min_accuracy - attrs["val_accuracy"])
    return values


def open_study(settings: SearchSettings, index: int = 0) -> Any:

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    seed = None if settings.seed is None else settings.seed + 1000 * index
    if settings.sampler == "random":
        sampler = optuna.samplers.RandomSampler(seed=seed)
    else:
        legacy = {} if NEW_CONSTRAINTS else {"constraints_func": _constraints(settings)}
        sampler = optuna.samplers.TPESampler(seed=seed, multivariate=True, n_startup_trials=8, **legacy)
    directions = [OBJECTIVES[o] for o in settings.objectives]
    storage = _storage(settings)
    try:
        study = optuna.create_study(storage=storage, study_name=settings.study_name, sampler=sampler,
                                    directions=directions, load_if_exists=True)
    except ValueError as e:
        raise SearchError(f"Study {settings.study_name!r} exists with other objectives: {deps.first_line(e)}. "
                          "Use the same --objectives, or another --study-name.") from None
    setup = {"runtime": settings.runtime, "max_latency_ms": settings.max_latency_ms,
             "max_size_kb": settings.max_size_kb, "min_accuracy": settings.min_accuracy,
             "space": json.dumps(runtime_space_dict(settings), sort_keys=True, default=str)}
    stored_setup = study.user_attrs.get("setup")
    if stored_setup is None:
        study.set_user_attr("setup", setup)
    else:
        changed = [k for k in setup if stored_setup.get(k) != setup[k]]
        if changed:
            said = "; ".join(f"{k} {stored_setup.get(k)!r} (received {setup[k]!r})" for k in changed if k != "space")
            if "space" in changed:
                said = "; ".join(x for x in (said, "another search space") if x)
            raise SearchError(f"Study {settings.study_name!r} was searched with other settings: {said}. Its trials "
                              "were judged by those; use the same settings, or another --study-name.")
    stored = study.user_attrs.get("objectives")
    if stored is None:
        study.set_user_attr("objectives", list(settings.objectives))
    elif list(stored) != list(settings.objectives):
        raise SearchError(f"Study {settings.study_name!r} searches {','.join(stored)}; received "
                          f"{','.join(settings.objectives)}. Use the same objectives, or another study name.")
    return study


def runtime_space_dict(settings: SearchSettings) -> dict[str, Any]:
    """The validated space as plain values (what a study records to refuse another space on continuation)."""
    return {section: {name: vars(p) if isinstance(p, Param) else p for name, p in params.items()}
            for section, params in runtime_space(settings).items()}


def runtime_space(settings: SearchSettings) -> dict[str, Any]:
    """The validated space, without int8 when the runtime cannot run ONNX models (int8 runs are ONNX models)."""
    space = load_space(settings.space)
    if not deps.get_runtime(settings.runtime).onnx_models:
        space["compression"]["int8"] = Param("int8", False, "space compression.int8")
    return space


def enqueue_seeds(study: Any, settings: SearchSettings) -> list[str]:
    """Enqueue, once per study, the registry designs this space can express (`space.REGISTRY_SEEDS`), so the first
    trials are what the registry already knows and the sampler works from there. Several processes starting
    together may both see an empty study; Optuna's `skip_if_exists` then keeps one copy of each."""
    if study.user_attrs.get("seeded") is not None or study.get_trials(deepcopy=False):
        return []
    seeds = seed_trials(runtime_space(settings))
    study.set_user_attr("seeded", sorted(seeds))
    for name, params in seeds.items():
        study.enqueue_trial(params, user_attrs={"registry_seed": name}, skip_if_exists=True)
    if seeds:
        _say(settings, f"warm start: enqueued {', '.join(seeds)} (registry designs in this space)")
    return list(seeds)


_fail_stale = deps.fail_stale  # trials this host left RUNNING in a dead process become FAIL


STARTED = (optuna.trial.TrialState.RUNNING, optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
           optuna.trial.TrialState.FAIL)


def work(settings: SearchSettings, index: int) -> None:
    """One worker: ask, run and tell trials until the study holds `trials` trials or `minutes` have passed."""

    settings.check()
    previous = torch.get_num_threads()
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // settings.workers))  # training threads per worker
    try:
        _work(settings, index)
    finally:
        torch.set_num_threads(previous)


def _work(settings: SearchSettings, index: int) -> None:

    threads = settings.threads or os.cpu_count() or 1
    study = open_study(settings, index)
    _fail_stale(study)
    full = deps.load_dataset(name=settings.dataset, data_dir=settings.data_dir, val_fraction=settings.val_fraction)
    dataset = dataclasses.replace(full, test=None)  # selection never sees the test split
    del full
    lock = MachineLock(settings.out)
    space = runtime_space(settings)
    ctx = TrialContext(dataset=dataset, space=space, objectives=settings.objectives,
                       out=Path(settings.out), measurer=Measurer(settings.runtime, threads, lock, settings.repeats),
                       lock=lock, max_size_kb=settings.max_size_kb, stop_after=settings.stop_after,
                       fingerprint=fingerprint())
    deadline = time.time() + 60 * settings.minutes if settings.minutes else None
    while True:
        if deadline is not None and time.time() >= deadline:
            break
        if settings.trials is not None and len(study.get_trials(deepcopy=False, states=STARTED)) >= settings.trials:
            break  # enqueued trials not yet started (the warm start) do not count against the budget
        trial = deps.ask(study)
        trial.set_user_attr("worker", deps.worker_attr(index))
        trial.set_user_attr("machine", ctx.fingerprint)
        started = time.time()
        try:
            with deps.heartbeat(study, trial):  # database storages: a dead worker's trial is failed from any host
                values = run_trial(trial, ctx)
        except TrialStopped as e:
            trial.set_user_attr("stopped", str(e))
            trial.set_user_attr("wall_s", time.time() - started)
            study.tell(trial, state=optuna.trial.TrialState.PRUNED)
            _say(settings, f"trial {trial.number}: stopped early ({e})")
            continue
        except KeyboardInterrupt:
            trial.set_user_attr("error", "interrupted")
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            raise
        except Exception as e:  # noqa: BLE001 - a crashed trial is recorded and the search goes on
            trial.set_user_attr("error", deps.first_line(e, with_type=True))
            trial.set_user_attr("wall_s", time.time() - started)
            study.tell(trial, state=optuna.trial.TrialState.FAIL)
            _say(settings, f"trial {trial.number}: failed ({deps.first_line(e, with_type=True)})")
            continue
        constraints = constraint_values(settings, trial.user_attrs)
        trial.set_user_attr("constraints", constraints)
        if NEW_CONSTRAINTS:  # Optuna >= 5: samplers read constraints stored on the trial
            for i, value in enumerate(constraints):
                trial.set_constraint(f"c{i}", value)
        trial.set_user_attr("wall_s", time.time() - started)
        study.tell(trial, values)
        _say(settings, f"trial {trial.number}: " + ", ".join(f"{o}={v:.4g}" for o, v in
                                                              zip(settings.objectives, values)))


def _say(settings: SearchSettings, text: str) -> None:
    if settings.progress:
        print(f"search: {text}", file=sys.stderr, flush=True)


def pareto(points: list[tuple[Any, list[float]]], directions: list[str]) -> list[Any]:
    """The items whose values no other item dominates (`directions`: maximize/minimize per value)."""
    objectives = {str(k): "max" if d == "maximize" else "min" for k, d in enumerate(directions)}
    front = deps.pareto_front([{str(k): v for k, v in enumerate(values)} for _, values in points], objectives)
    return [points[i][0] for i in front]


def _check_compare(settings: SearchSettings) -> None:
    for path in settings.compare:
        if not (Path(path) / "model.json").is_file():
            raise SearchError(f"compare: {path} is not a run directory (no model.json). Pass run directories written "
                              "by `leanvision train` or `optimize`, comma-separated.")


def finish(settings: SearchSettings, wall_s: float) -> dict[str, Any]:
    """Re-measure the feasible Pareto set and the `compare` runs together, interleaved; score them on the test
    split once; write the outputs."""

    study = open_study(settings)
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    feasible = [t for t in done if all(c <= 0 for c in t.user_attrs.get("constraints", [0.0]))]
    front = pareto([(t, list(t.values)) for t in feasible], [OBJECTIVES[o] for o in settings.objectives])
    front.sort(key=lambda t: -t.values[0])
    elsewhere = [t.number for t in front if not Path(t.user_attrs.get("run_dir", "")).is_dir()]
    front = [t for t in front if t.number not in elsewhere]  # trained on another machine: its run directory is there
    out = Path(settings.out)
    threads = settings.threads or os.cpu_count() or 1
    lock = MachineLock(out)
    measurer = Measurer(settings.runtime, threads, lock, settings.repeats)
    final: list[dict[str, Any]] = []
    compared: list[dict[str, Any]] = []
    if front or settings.compare:
        full = deps.load_dataset(name=settings.dataset, data_dir=settings.data_dir,
                                 val_fraction=settings.val_fraction)  # the test split is read here, once
        shape = tuple(full.input_shape)
        paths = [Path(t.user_attrs["run_dir"]) for t in front] + [Path(p) for p in settings.compare]
        runs = [deps.load_run(p) for p in paths]
        for path, run in zip(paths[len(front):], runs[len(front):]):
            if list(run.meta["input_shape"]) != list(shape) or run.meta["num_classes"] != full.num_classes:
                raise SearchError(f"compare: {path} was trained on input {run.meta['input_shape']} with "
                                  f"{run.meta['num_classes']} classes; this search's dataset has {list(shape)} and "
                                  f"{full.num_classes}. Compare runs trained on {settings.dataset}.")
        predictors = [measurer.predictor(r.model, shape) for r in runs]
        rounds: list[list[float]] = [[] for _ in runs]
        with lock.measuring():
            for r in range(max(1, settings.final_rounds)):
                order = list(range(len(runs)))
                order = order[r % len(order):] + order[:r % len(order)]  # rotate who goes first
                for i in order:
                    rounds[i].append(measurer.time(predictors[i], shape, repeats=max(5, settings.repeats // 2),
                                                   warmup=5))
        scores = []
        for run in runs:
            logits, labels = deps.predict_logits(run.model, full.test, full.mean, full.std, torch.device("cpu"))
            correct, total = int((logits.argmax(1) == labels).sum()), len(labels)
            scores.append({"test_accuracy": correct / total, "test_correct": correct, "test_total": total,
                           "test_accuracy_95ci": list(deps.wilson_interval(correct, total))})
        pareto_dir = out / "pareto"
        for t, times, score in zip(front, rounds, scores):
            dest = pareto_dir / f"trial-{t.number:04d}"
            if dest.exists():
                shutil.rmtree(dest)
            shutil.copytree(t.user_attrs["run_dir"], dest, ignore=shutil.ignore_patterns("checkpoint.safetensors"))
            if (dest / "result.json").is_file():  # the trial never saw the test split: its result.json's accuracy
                result = deps.read_json(dest / "result.json")  # (if any) is validation; the test score is this one
                result.update(score, accuracy_split="test", val_accuracy=t.user_attrs.get("val_accuracy"),
                              val_total=len(full.val))
                deps.write_json(dest / "result.json", result)
            final.append({"trial": t.number, "run_dir": str(dest), "val_accuracy": t.user_attrs.get("val_accuracy"),
                          "val_total": len(full.val), "num_classes": full.num_classes,
                          **score, "latency_ms_rounds": times, "latency_ms": statistics.median(times),
                          "size_kb": t.user_attrs.get("size_kb"), "macs": t.user_attrs.get("macs"),
                          "params": t.user_attrs.get("params"), "arch": t.user_attrs.get("arch"),
                          "compress": t.user_attrs.get("compress"), "params_sampled": t.params})
        for path, run, times, score in zip(paths[len(front):], runs[len(front):], rounds[len(front):],
                                           scores[len(front):]):
            compared.append({"run_dir": str(path), "model": run.meta.get("model") or "spec", **score,
                             "latency_ms_rounds": times, "latency_ms": statistics.median(times),
                             "size_kb": model_bytes(path) / 1024, "params": run.meta.get("num_params"),
                             "int8": deps.is_onnx(run.model)})
    return write_outputs(settings, study, trials, final, fingerprint(), threads, wall_s, elsewhere, compared)
