"""`leanvision study --storage URL`: several processes, on one or several machines, share one plan's variants.

The plan's variants x seeds are the jobs of a `storage.PlanQueue`: enqueued Optuna trials in `storage` (a database
URL such as postgresql://user@host:5432/db, or a path.journal file), checked against the plan (another plan, dataset,
epochs, seeds or device is refused). Each process pulls waiting jobs, trains each exactly as the plain study does
(`OUT/variants/<name>/seed<k>/`, the same config) under the machine lock's shared side, and records the outcome on its
trial: COMPLETE (value: validation accuracy; user attrs `val_accuracy`, `test_accuracy`, `run_dir`, `machine`,
`result`) or FAIL (`error`, one line). When no job waits or runs, the process that pops the plan's report job
re-measures every variant whose run directories it can read (in its OUT, typically a shared filesystem, or at the
path the training machine recorded, copied into OUT) under the machine lock's exclusive side, so every number in the
report comes from this one machine; a variant trained where this machine cannot read is listed in
`trained_elsewhere`. A process that finds jobs still running elsewhere says so and returns without a report.

Retries: a failed job (an error, or a dead worker: `storage.fail_stale`) is enqueued again by the next process that
starts, as a plain study retries its failed variants on a re-run; a re-run after everything is done trains nothing and
rebuilds the report. A worker killed on another host: on a database storage its job's heartbeat stops and the next
process to start (anywhere) fails and re-enqueues it once the grace period (`storage.GRACE_PERIOD_S`) has passed; on a
journal file the job stays RUNNING until a process starts on that host again.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import TrainingInterrupted, first_line
from .lock import MachineLock
from .storage import PlanQueue, TrialState, fingerprint, heartbeat, job_key, open_storage, redact

DEFAULT_STUDY_NAME = "leanvision-study"
LOCK_DIR = Path(tempfile.gettempdir()) / "leanvision-machine-lock"  # machine-local, even when OUT is shared


def plan_id(plan_data: dict[str, Any], configs: dict[str, Any], ds: Any, seeds: int) -> str:
    """A hash of everything that decides how the variants train: the plan, each variant's config, the data, seeds."""
    key = {"plan": plan_data, "configs": configs, "seeds": seeds,
           "data": [ds.name, len(ds.train), len(ds.val), len(ds.test) if ds.test is not None else 0,
                    list(ds.input_shape), ds.num_classes]}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:16]


def open_shared(url: str, out: Path) -> Any:
    """The Optuna storage at `url` (a database URL or a path.journal); a bad or unreachable one is a one-line error."""
    return open_storage(url, out / "study.journal")


def run_shared(cfg: Any, storage: Any, plan_data: dict[str, Any], configs: dict[str, Any], ds: Any, out: Path,
               settings: dict[str, Any], console: Any, *, train: Callable[[dict, int], dict],
               record: Callable[[dict, list[dict], list[int]], dict],
               failed: Callable[[dict, str], dict]) -> dict[str, Any]:
    """Pull and train jobs until none waits; then build the variants' records if this process reports.

    `train(variant, seed)` trains one seed and returns its result; `record(variant, results, trial_numbers)`
    measures a variant (or reuses its record.json) and returns its record; `failed(variant, error)` is a failed
    variant's entry. Returns `variants` and `trained_elsewhere` for the report, or `report_dir` None and a
    `report_note` saying who still trains.
    """
    label = redact(cfg.storage) if "://" in cfg.storage else cfg.storage
    name = cfg.study_name or DEFAULT_STUDY_NAME
    summary = {k: settings.get(k) for k in ("epochs", "seeds", "precision", "device", "recipe")}
    summary.update(plan=plan_data["name"], dataset=ds.name)
    jobs = [{"variant": v["name"], "seed": k} for v in plan_data["variants"] for k in range(cfg.seeds)]
    queue = PlanQueue(storage, name, plan_id(plan_data, configs, ds, cfg.seeds), summary, jobs, label)
    added = queue.enqueue()
    if added:
        console.print(f"study {name!r} in {label}: enqueued {len(added)} of {len(jobs)} variant job(s)")
    machine, lock = fingerprint(), MachineLock(LOCK_DIR)
    by_name = {v["name"]: v for v in plan_data["variants"]}
    trained = 0
    while (pulled := queue.pull()) is not None:
        trial, job = pulled
        if queue.is_report(job):
            if queue.finished():
                console.rule(f"report: re-measuring on {machine['host']}")
                result = _records(queue, plan_data, cfg.seeds, out, lock, record, failed)
                queue.study.tell(trial, float(sum(v.get("status") == "ok" for v in result["variants"])))
                return {**result, "storage": label, "study_name": name}
            queue.release(trial)  # jobs run elsewhere: the last process to finish one reports
            if queue.finished() or queue.waiting():
                continue
            break
        variant, seed = by_name[job["variant"]], job["seed"]
        console.rule(f"{variant['name']} seed {seed} (trial {trial.number} of study {name!r})")
        trial.set_user_attr("machine", machine)
        started = time.time()
        try:
            with heartbeat(queue.study, trial), lock.training():
                result = train(variant, seed)
        except (KeyboardInterrupt, TrainingInterrupted):  # Ctrl-C: the job is failed (retried next time), stop
            trial.set_user_attr("error", "interrupted")
            queue.study.tell(trial, state=TrialState.FAIL)
            raise
        except Exception as e:  # noqa: BLE001 - a failed job is recorded on its trial and the others go on
            error = f"{type(e).__name__}: {first_line(e)}"
            trial.set_user_attr("error", error)
            trial.set_user_attr("wall_s", time.time() - started)
            queue.study.tell(trial, state=TrialState.FAIL)
            console.print(f"[red]{variant['name']} seed {seed} failed: {error}")
            continue
        run_dir = (out / "variants" / variant["name"] / f"seed{seed}").resolve()
        trial.set_user_attr("result", json.loads(json.dumps(result, default=str)))
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("val_accuracy", result.get("best_val_accuracy"))
        trial.set_user_attr("test_accuracy", result.get("test_accuracy"))
        trial.set_user_attr("wall_s", time.time() - started)
        queue.study.tell(trial, float(result.get("best_val_accuracy") or 0.0))
        trained += 1
    running = queue.running()
    where = ", ".join(f"{t.user_attrs['job']['variant']} seed {t.user_attrs['job']['seed']} on "
                      f"{(t.user_attrs.get('worker') or {}).get('host', '?')}" for t in running[:5])
    note = (f"trained {trained} job(s) here; {len(running)} still running ({where}) and {queue.waiting()} waiting"
            f": the last process to finish writes the report to {out}") if running or queue.waiting() else \
        f"trained {trained} job(s) here; another process is writing the report to {out}"
    return {"report_dir": None, "report_note": note, "storage": label, "study_name": name,
            "variants": _statuses(queue, plan_data, cfg.seeds), "trained_elsewhere": [], "findings": []}


def _records(queue: PlanQueue, plan_data: dict[str, Any], seeds: int, out: Path, lock: MachineLock,
             record: Callable, failed: Callable) -> dict[str, Any]:
    outcomes = queue.outcomes()
    variants, elsewhere = [], []
    with lock.measuring():  # waits for this machine's training epochs; none elsewhere runs (all jobs are done)
        for variant in plan_data["variants"]:
            trials = [outcomes.get(job_key({"variant": variant["name"], "seed": k})) for k in range(seeds)]
            bad = next((t for t in trials if t is None or t.state != TrialState.COMPLETE), None)
            if bad is not None or None in trials:
                variants.append(failed(variant, (bad.user_attrs.get("error") if bad is not None else None)
                                       or "did not run"))
                continue
            away = [t for k, t in enumerate(trials) if not _local(out, variant, k, t)]
            if away:
                elsewhere.append({"name": variant["name"], "host": (away[0].user_attrs.get("machine") or {})
                                  .get("host", "?"), "run_dir": away[0].user_attrs.get("run_dir"),
                                  "val_accuracy": away[0].user_attrs.get("val_accuracy"),
                                  "test_accuracy": away[0].user_attrs.get("test_accuracy"),
                                  "trials": [t.number for t in trials]})
                continue
            try:
                entry = record(variant, [t.user_attrs["result"] for t in trials], [t.number for t in trials])
            except (KeyboardInterrupt, TrainingInterrupted):
                raise
            except Exception as e:  # noqa: BLE001 - measured as the plain study does: a failure fails the variant
                entry = failed(variant, f"{type(e).__name__}: {first_line(e)}")
            entry["trained_on"] = sorted({(t.user_attrs.get("machine") or {}).get("host", "?") for t in trials})
            variants.append(entry)
    return {"variants": variants, "trained_elsewhere": elsewhere}


def _local(out: Path, variant: dict[str, Any], seed: int, trial: Any) -> bool:
    """Whether seed `seed`'s run is in this machine's OUT, copying it there from the path the training machine
    recorded when this machine can read that path (another OUT on a shared filesystem)."""
    target = out / "variants" / variant["name"] / f"seed{seed}"
    dirs = [("", target)] + ([("-optimized", target.with_name(target.name + "-optimized"))]
                             if variant.get("techniques") else [])
    if all((d / "result.json").is_file() for _, d in dirs):
        return True
    source = Path(trial.user_attrs.get("run_dir") or "")
    for suffix, dest in dirs:
        src = source.with_name(source.name + suffix)
        if not (src / "result.json").is_file() or src.resolve() == dest.resolve():
            return False
        shutil.copytree(src, dest, dirs_exist_ok=True, ignore=shutil.ignore_patterns("checkpoint.safetensors"))
    return True


def _statuses(queue: PlanQueue, plan_data: dict[str, Any], seeds: int) -> list[dict[str, Any]]:
    """Each variant's state across its seeds' jobs: failed, running, waiting or trained."""
    outcomes, names = queue.outcomes(), {TrialState.COMPLETE: "trained", TrialState.RUNNING: "running",
                                          TrialState.WAITING: "waiting", TrialState.FAIL: "failed"}
    rows = []
    for variant in plan_data["variants"]:
        states = [names.get(getattr(outcomes.get(job_key({"variant": variant["name"], "seed": k})), "state", None),
                            "waiting") for k in range(seeds)]
        status = next((s for s in ("failed", "running", "waiting") if s in states), "trained")
        rows.append({"name": variant["name"], "status": status})
    return rows
