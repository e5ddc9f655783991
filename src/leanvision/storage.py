"""Optuna storages shared by processes and machines: `leanvision search` and `leanvision study --storage`.

`open_storage(url, default)`: a JournalStorage file (`path.journal`, `journal:path`, else `default`) or Optuna's RDB
storage for a database URL (postgresql://user@host:5432/db), with one-line errors for a bad or unreachable URL.
`fail_stale` marks FAIL the trials this host left RUNNING in a process that no longer exists and, on a database
storage, the trials of any host whose worker stopped sending heartbeats (`heartbeat(study, trial)` sends them while a
trial runs: every HEARTBEAT_INTERVAL_S; stale after GRACE_PERIOD_S; a journal file has no heartbeats, so there a
worker killed on another host keeps its trial RUNNING until a process starts on that host again). `fingerprint()` names
the machine a number was measured on. `PlanQueue`: a fixed set of jobs (a study plan's variants x seeds) as enqueued
trials that several processes pull from, each job run once.
Optuna is imported here: import this module only where a storage is used (`leanvision --help` stays fast).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import optuna

from .errors import LeanvisionError, first_line
from .measure import environment

TrialState = optuna.trial.TrialState
LIVE = (TrialState.WAITING, TrialState.RUNNING, TrialState.COMPLETE)  # a job with one of these needs no new trial
HEARTBEAT_INTERVAL_S = 30  # database storages: a running trial's worker writes its heartbeat this often
GRACE_PERIOD_S = 180  # a RUNNING trial whose last heartbeat is older than this belongs to a dead worker


def open_storage(url: str | None, default: str | Path, error: type[LeanvisionError] = LeanvisionError) -> Any:
    """The Optuna storage for `url` (None: the journal file `default`); `error` is the class raised for a bad URL."""
    if url is None or url.startswith("journal:") or url.endswith(".journal"):
        path = Path(url[len("journal:"):] if url and url.startswith("journal:") else url or default)
        try:
            if path.is_dir():
                raise error(f"Storage {str(path)!r} is a directory. Expected a journal file (path.journal), "
                            "created when missing.")
            path.parent.mkdir(parents=True, exist_ok=True)
            if path.is_file() and path.stat().st_size:
                with path.open("rb") as f:  # Optuna reads it lazily: a file that is not a journal fails here
                    first = f.readline(1 << 20)
                try:
                    json.loads(first)
                except ValueError:
                    raise error(f"Storage {str(path)!r} is not an Optuna journal (its first line is not JSON). Give "
                                "a path.journal written by leanvision search/study, or a new file name.") from None
            return optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(path)))
        except LeanvisionError:
            raise
        except Exception as e:  # noqa: BLE001 - unreadable, unwritable or not a journal
            raise error(f"Cannot use journal file {str(path)!r}: {type(e).__name__}: {first_line(e).rstrip('.')}. "
                        "Give a writable path.journal that Optuna wrote, or a new one.") from None
    if "://" not in url:
        raise error(f"Invalid storage {url!r}. Expected a database URL (postgresql://user@host:port/db) or a "
                    "journal file (path.journal).")
    if url.startswith("postgres://"):  # the common alias (Heroku, libpq) that SQLAlchemy does not accept
        url = "postgresql://" + url[len("postgres://"):]
    url = postgres_driver(url)
    kwargs: dict[str, Any] = {"pool_pre_ping": True}
    if url.startswith("postgresql"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    try:
        for attempt in range(4):
            try:
                with warnings.catch_warnings():  # heartbeats are "experimental" in Optuna (since 2.x)
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    return optuna.storages.RDBStorage(url, engine_kwargs=kwargs, grace_period=GRACE_PERIOD_S,
                                                      heartbeat_interval=HEARTBEAT_INTERVAL_S)
            except Exception as e:  # noqa: BLE001 - processes creating the schema of a new database at once
                if attempt == 3 or not any(s in str(e) for s in ("duplicate key", "already exists", "UniqueViol")):
                    raise
                time.sleep(0.5 + attempt)  # the other process's tables are there now: load them
    except ImportError as e:
        hint = ("pip install 'leanvision[postgres]'" if url.startswith("postgres") else
                "the SQLAlchemy driver for that database (leanvision tests PostgreSQL: pip install "
                "'leanvision[postgres]')")
        raise error(f"Storage {url.split('://')[0]} needs a database driver: {first_line(e).rstrip('.')}. "
                    f"Install {hint}.") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy's errors: unreachable server, bad credentials
        raise error(f"Cannot open storage {redact(url)}: {first_line(e).rstrip('.')}. Check that the "
                    "server runs and the URL (host, port, database, user) is right.") from None


def postgres_driver(url: str) -> str:
    """SQLAlchemy 2.1 maps postgresql:// to psycopg 3; the `postgres` extra installs psycopg2-binary, so a plain
    URL uses psycopg2 when psycopg 3 is absent."""
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is None \
            and importlib.util.find_spec("psycopg2") is not None:
        return "postgresql+psycopg2://" + url[len("postgresql://"):]
    return url


def redact(url: str) -> str:
    """A storage URL without its password, for messages and reports."""
    head, _, tail = url.partition("://")
    if "@" in tail and ":" in tail.split("@")[0]:
        user = tail.split("@")[0].split(":")[0]
        tail = f"{user}:***@{tail.split('@', 1)[1]}"
    return f"{head}://{tail}"


def worker_attr(index: int = 0) -> dict[str, Any]:
    """Who runs a trial (`fail_stale` reads it): this host, this process."""
    return {"host": os.uname().nodename, "pid": os.getpid(), "index": index}


def fail_stale(study: Any) -> None:
    """Trials this host left RUNNING in a process that no longer exists become FAIL, and so do (database storages)
    RUNNING trials on any host whose heartbeat is older than the storage's grace period."""
    host = os.uname().nodename
    stale = set(_stale_heartbeats(study))
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        owner = t.user_attrs.get("worker") or {}
        if t._trial_id in stale:
            error = (f"worker on {owner.get('host', 'another host')} stopped sending heartbeats (none for over "
                     f"{_grace_period(study)} s: killed, crashed or cut off)")
        elif owner.get("host") == host and not _alive(owner.get("pid")):
            error = "worker process died (killed or crashed)"
        else:
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "error", error)
            study.tell(t.number, state=TrialState.FAIL)
        except Exception:  # noqa: BLE001 - another worker failed it first
            pass


def _grace_period(study: Any) -> int:
    storage = getattr(study._storage, "_backend", study._storage)  # Optuna wraps RDBStorage in a cache
    return getattr(storage, "grace_period", None) or GRACE_PERIOD_S


def _stale_heartbeats(study: Any) -> list[int]:
    """Ids of RUNNING trials whose heartbeat expired (Optuna's own rule); empty for storages without heartbeats."""
    from optuna.storages._heartbeat import is_heartbeat_enabled  # Optuna's private helpers (ask/tell has no public)

    storage = study._storage
    if not is_heartbeat_enabled(storage):
        return []
    return list(storage._get_stale_trial_ids(study._study_id))


def ask(study: Any) -> Any:
    """`study.ask()`, without Optuna's warning that heartbeats are meant for `Study.optimize` (this module sends them
    itself, with `heartbeat`)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Heartbeat of storage is supposed to be used with Study.optimize")
        return study.ask()


@contextmanager
def heartbeat(study: Any, trial: Any) -> Iterator[None]:
    """While the block runs, `trial`'s heartbeat is written every HEARTBEAT_INTERVAL_S (database storages; nothing for
    a journal file), so `fail_stale` on any machine can tell a dead worker's trial from a slow one."""
    from optuna.storages._heartbeat import get_heartbeat_thread  # what Study.optimize uses; ask/tell has no public one

    with get_heartbeat_thread(trial._trial_id, study._storage):
        yield


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int):
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def fingerprint() -> dict[str, Any]:
    """The machine a number was measured on: host, CPU model, core count, versions; `id` hashes them."""
    import torch

    env = environment("cpu")
    facts = {"host": platform.node(), "cpu": env.get("cpu") or env.get("cpu_model") or platform.processor(),
             "cores": os.cpu_count(), "machine": platform.machine(), "torch": torch.__version__,
             "onnxruntime": env.get("onnxruntime")}
    facts["id"] = hashlib.sha256(repr(sorted(facts.items())).encode()).hexdigest()[:12]
    return facts


def job_key(job: dict[str, Any]) -> str:
    return json.dumps(job, sort_keys=True)


class PlanQueue:
    """A fixed plan's jobs (e.g. `{"variant": "base", "seed": 0}`) as enqueued trials of one Optuna study, plus one
    `REPORT` job: whoever pops it once no job waits or runs builds the report (Optuna pops a waiting trial for one
    process only, so one process reports).

    `plan_id` (a hash of everything that decides how the jobs train) is stored as the study's `plan_id` user attr
    and `plan` (a readable summary) beside it; a process with another plan is refused with `error`. `enqueue` adds
    every job without a waiting, running or complete trial (so a failed job is retried by the next process that
    starts) and a `REPORT` job unless one waits or runs. Two processes enqueueing at once may both add a job: `pull`
    runs only the lowest-numbered live trial of a job and tells a later copy PRUNED (`duplicate_of`), so no job runs
    twice; a report job enqueued before another report was written is stale and PRUNED the same way.
    """

    REPORT = {"step": "report"}

    def __init__(self, storage: Any, study_name: str, plan_id: str, plan: dict[str, Any], jobs: list[dict[str, Any]],
                 label: str, error: type[LeanvisionError] = LeanvisionError):
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.jobs, self.label, self.error = jobs, label, error
        self.study = optuna.create_study(storage=storage, study_name=study_name, direction="maximize",
                                         load_if_exists=True)
        if self.study.user_attrs.get("plan_id") is None and (self.study.user_attrs.get("objectives") is not None
                                                             or len(self.study.directions) != 1):
            raise error(f"Study {study_name!r} in {label} is a `leanvision search` study, not a study plan. Use "
                        "another --study-name (default leanvision-study).")
        stored = self.study.user_attrs.get("plan_id")
        if stored is None:
            self.study.set_user_attr("plan_id", plan_id)
            self.study.set_user_attr("plan", plan)
            self.study.set_user_attr("jobs", jobs)
            stored = self.study.user_attrs.get("plan_id")  # read back: of two first processes, the last write wins
        if stored != plan_id:
            theirs = self.study.user_attrs.get("plan") or {}
            diff = [f"{k} {theirs.get(k)!r} (received {plan.get(k)!r})" for k in sorted(set(plan) | set(theirs))
                    if theirs.get(k) != plan.get(k)] or ["the variants' configs differ"]
            raise error(f"Study {study_name!r} in {label} runs another plan: {'; '.join(diff[:4])}. Use the same "
                        "options on every machine, or another `study_name`.")
        fail_stale(self.study)

    def is_report(self, job: dict[str, Any]) -> bool:
        return job == self.REPORT

    def _live(self, job: dict[str, Any]) -> tuple[Any, ...]:
        # a complete report does not stop a later one (a re-run rebuilds the report); a complete job is done
        return (TrialState.WAITING, TrialState.RUNNING) if self.is_report(job) else LIVE

    def trials(self, report: bool = False) -> list[Any]:
        """The jobs' trials (`report=True`: the report job's)."""
        return [t for t in self.study.get_trials(deepcopy=False)
                if "job" in t.user_attrs and self.is_report(t.user_attrs["job"]) == report]

    def enqueue(self) -> list[dict[str, Any]]:
        """Enqueue every job without a live trial (first run: all of them; later: the failed ones), then the report
        job unless one waits or runs; returns the jobs enqueued (the report job not included)."""
        live = {job_key(t.user_attrs["job"]) for t in self.trials() if t.state in LIVE}
        added = [job for job in self.jobs if job_key(job) not in live]
        for job in added:
            self.study.enqueue_trial(dict(job), user_attrs={"job": dict(job)})
        if not any(t.state in self._live(self.REPORT) for t in self.trials(report=True)):
            self._enqueue_report()
        return added

    def _reports(self) -> int:
        return sum(t.state == TrialState.COMPLETE for t in self.trials(report=True))

    def _enqueue_report(self) -> None:
        # `reports`: the reports written so far; a report job popped after another report was written is stale
        self.study.enqueue_trial(dict(self.REPORT), user_attrs={"job": dict(self.REPORT), "reports": self._reports()})

    def pull(self) -> tuple[Any, dict[str, Any]] | None:
        """The next waiting job as (trial, job), marked as run by this process; None when none is waiting."""
        while any(t.state == TrialState.WAITING for t in self.study.get_trials(deepcopy=False)
                  if "job" in t.user_attrs):
            trial = ask(self.study)
            job = trial.user_attrs.get("job")
            if job is None:  # another process took the last waiting job between our look and our ask
                trial.set_user_attr("error", "no job was waiting (another process took it)")
                self.study.tell(trial, state=TrialState.FAIL)
                return None
            trial.set_user_attr("worker", worker_attr())
            owner = min((t.number for t in self.trials(self.is_report(job))
                         if t.state in self._live(job) and job_key(t.user_attrs["job"]) == job_key(job)),
                        default=trial.number)
            if self.is_report(job) and trial.user_attrs.get("reports", 0) < self._reports():
                owner = max(t.number for t in self.trials(report=True) if t.state == TrialState.COMPLETE)
            if owner != trial.number:
                trial.set_user_attr("duplicate_of", owner)
                self.study.tell(trial, state=TrialState.PRUNED)
                continue
            return trial, job
        return None

    def release(self, trial: Any) -> None:
        """Give the report job back (jobs still run elsewhere): this trial is PRUNED and a fresh one waits."""
        trial.set_user_attr("released", "jobs still waiting or running")
        self.study.tell(trial, state=TrialState.PRUNED)
        self._enqueue_report()

    def waiting(self) -> int:
        """Jobs waiting (the report job not counted)."""
        return sum(t.state == TrialState.WAITING for t in self.trials())

    def running(self) -> list[Any]:
        """The jobs' trials running now, here or on another machine."""
        return [t for t in self.trials() if t.state == TrialState.RUNNING]

    def finished(self) -> bool:
        """No job waits or runs any more (here or on another machine)."""
        return not any(t.state in (TrialState.WAITING, TrialState.RUNNING) for t in self.trials())

    def outcomes(self) -> dict[str, Any]:
        """Job key -> the trial that decides it: its live trial (lowest number), else its latest failed one."""
        best: dict[str, Any] = {}
        for t in sorted(self.trials(), key=lambda t: t.number):
            if t.state == TrialState.PRUNED:
                continue
            key, held = job_key(t.user_attrs["job"]), best.get(job_key(t.user_attrs["job"]))
            if held is None or (held.state not in LIVE and (t.state in LIVE or t.number > held.number)):
                best[key] = t
        return best
