"""`leanvision study --storage`: worker processes share one plan's variants through an Optuna storage (a journal
file here; PostgreSQL in test_study_shared_postgres.py): each variant trains once, one process writes the report."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from testkit import REPO, one_error_line  # noqa: E402

from leanvision.cli import main  # noqa: E402
from leanvision.errors import LeanvisionError  # noqa: E402
from leanvision.storage import PlanQueue, job_key, open_storage  # noqa: E402
from leanvision.study import run_study  # noqa: E402

PLAN = {"name": "duo", "train": {"learning_rate": 0.002},
        "variants": [{"name": "a", "model": "seed-shallow"},
                     {"name": "b", "model": "seed-shallow", "train": {"weight_decay": 1e-4}}]}


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


def _plan_file(tmp_path: Path) -> Path:
    path = tmp_path / "duo.yaml"
    path.write_text(json.dumps(PLAN))  # JSON is YAML
    return path


def _jobs(storage, name: str = "leanvision-study") -> list:
    return [t for t in optuna.load_study(study_name=name, storage=storage).get_trials() if "job" in t.user_attrs]


def run_two_workers(tmp_path: Path, storage: str, name: str = "leanvision-study") -> tuple[Path, list]:
    """Start two `leanvision study --storage` processes on one plan and OUT together; returns OUT and their
    (returncode, stdout, stderr)."""
    plan, out = _plan_file(tmp_path), tmp_path / "out"
    cmd = [sys.executable, "-m", "leanvision", "study", "--dataset", "digits", "--plan", str(plan), "--epochs", "1",
           "--repeats", "5", "--runtimes", "torch", "--device", "cpu", "--out", str(out), "--storage", storage,
           "--study-name", name, "--no-progress"]
    procs = [subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    done = []
    for p in procs:
        stdout, stderr = p.communicate(timeout=300)
        done.append((p.returncode, stdout, stderr))
    return out, done


def check_shared_study(out: Path, done: list, jobs: list) -> None:
    for code, stdout, stderr in done:
        assert code == 0, stderr
    reporters = [stdout for _, stdout, _ in done if "report: " in stdout]
    assert len(reporters) == 1, [d[2][-500:] for d in done]  # the last process to finish writes the report
    waiter = next(stderr for _, stdout, stderr in done if "report: " not in stdout)
    assert "writes the report" in waiter or "writing the report" in waiter, waiter
    complete = [job_key(t.user_attrs["job"]) for t in jobs if t.state.name == "COMPLETE" and "variant" in
                t.user_attrs["job"]]
    assert sorted(complete) == sorted({*complete}) and len(complete) == 2  # every variant trained exactly once
    assert not [t for t in jobs if t.state.name == "FAIL" and "variant" in t.user_attrs["job"]]
    results = json.loads((out / "results.json").read_text())
    assert [v["name"] for v in results["variants"]] == ["a", "b"]
    assert all(v["status"] == "ok" and v["latency_b1_median_ms"] > 0 for v in results["variants"])
    assert results["trained_elsewhere"] == [] and results["settings"]["study_name"]
    assert (out / "report.html").is_file()


@pytest.fixture(scope="module")
def shared_journal(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("shared")
    journal = tmp / "plan.journal"
    out, done = run_two_workers(tmp, str(journal))
    return tmp, journal, out, done


def test_two_workers_on_a_journal_share_one_plan(shared_journal):
    _, journal, out, done = shared_journal
    check_shared_study(out, done, _jobs(open_storage(str(journal), journal)))


def test_rerun_after_all_done_rebuilds_the_report_without_training(shared_journal):
    tmp, journal, out, _ = shared_journal
    before = len([t for t in _jobs(open_storage(str(journal), journal)) if "variant" in t.user_attrs["job"]])
    study = run_study(dataset="digits", plan=PLAN, epochs=1, repeats=5, runtimes="torch", device="cpu", out=out,
                      storage=str(journal), progress=False)
    after = [t for t in _jobs(open_storage(str(journal), journal)) if "variant" in t.user_attrs["job"]]
    assert len(after) == before and study["report_dir"] == str(out)
    assert [v["status"] for v in study["variants"]] == ["ok"] * 2


def test_another_plan_on_the_same_storage_is_refused(shared_journal):
    tmp, journal, out, _ = shared_journal
    with pytest.raises(LeanvisionError, match=r"runs another plan: epochs 1 \(received 2\)") as info:
        run_study(dataset="digits", plan=PLAN, epochs=2, repeats=5, runtimes="torch", device="cpu",
                  out=tmp / "other", storage=str(journal), progress=False)
    assert "\n" not in str(info.value) and "study_name" in str(info.value)


@pytest.mark.parametrize("storage, fragments", [
    ("nonsense", ("Invalid storage 'nonsense'", "postgresql://", ".journal")),
    ("postgresql://nobody@127.0.0.1:1/db", ("Cannot open storage", "127.0.0.1", "server runs")),
])
def test_bad_storage_is_one_line_error(tmp_path, capsys, storage, fragments):
    if storage.startswith("postgresql"):
        pytest.importorskip("psycopg2", reason="psycopg2-binary (the `postgres` extra) is not installed")
    code = main(["study", "--dataset", "digits", "--plan", "quick", "--out", str(tmp_path), "--storage", storage,
                 "--no-progress"])
    assert code == 2
    one_error_line(capsys.readouterr().err, *fragments)
    assert not (tmp_path / "variants").exists()  # refused before anything trained


def test_overwrite_with_storage_is_refused_before_anything_is_removed(shared_journal, capsys):
    tmp, journal, out, _ = shared_journal
    before = sorted(p.relative_to(out) for p in out.rglob("*.safetensors"))
    assert before
    code = main(["study", "--dataset", "digits", "--plan", str(_plan_file(tmp)), "--epochs", "2", "--out", str(out),
                 "--storage", str(journal), "--overwrite", "--no-progress"])
    assert code == 2
    one_error_line(capsys.readouterr().err, "--overwrite cannot be combined with --storage", "--study-name")
    assert sorted(p.relative_to(out) for p in out.rglob("*.safetensors")) == before  # nothing deleted


def test_bad_journal_files_are_one_line_errors(tmp_path, capsys):
    (tmp_path / "dir.journal").mkdir()
    (tmp_path / "junk.journal").write_text("not a journal\n")
    for storage, fragment in ((tmp_path / "dir.journal", "is a directory"),
                              (tmp_path / "junk.journal", "not an Optuna journal")):
        assert main(["study", "--dataset", "digits", "--plan", "quick", "--out", str(tmp_path / "o"), "--storage",
                     str(storage), "--no-progress"]) == 2
        one_error_line(capsys.readouterr().err, fragment)


def test_a_search_study_is_not_taken_for_a_plan(tmp_path, capsys):
    import optuna

    journal = tmp_path / "s.journal"
    storage = optuna.storages.JournalStorage(optuna.storages.journal.JournalFileBackend(str(journal)))
    search_study = optuna.create_study(storage=storage, study_name="leanvision-search",
                                       directions=["maximize", "minimize"])
    search_study.set_user_attr("objectives", ["accuracy", "latency"])
    assert main(["study", "--dataset", "digits", "--plan", "quick", "--out", str(tmp_path / "o"), "--storage",
                 str(journal), "--study-name", "leanvision-search", "--no-progress"]) == 2
    one_error_line(capsys.readouterr().err, "is a `leanvision search` study", "--study-name")
    assert len(search_study.get_trials()) == 0  # nothing was added to the search


def test_study_name_without_storage_is_refused(tmp_path, capsys):
    assert main(["study", "--study-name", "x", "--out", str(tmp_path)]) == 2
    one_error_line(capsys.readouterr().err, "--study-name x", "--storage")


def test_plan_queue_runs_each_job_once_when_two_processes_enqueue_together(tmp_path):
    """Two queues (two machines) both enqueue before either pulls: each job still runs once, one process reports."""
    storage = open_storage(None, tmp_path / "q.journal")
    jobs = [{"variant": name, "seed": 0} for name in "abc"]
    first, second = (PlanQueue(storage, "q", "id", {"plan": "p"}, jobs, "q.journal") for _ in range(2))
    assert first.enqueue() == jobs
    for job in [*jobs, PlanQueue.REPORT]:  # the race: the second saw an empty study too and enqueued everything
        second.study.enqueue_trial(dict(job), user_attrs={"job": dict(job), "reports": 0})
    pulled = []
    for queue in [first, second] * 8:  # as `study_shared.run_shared` does, alternating between the two
        got = queue.pull()
        if got is None:
            continue
        trial, job = got
        if not queue.is_report(job):
            pulled.append(job_key(job))
            queue.study.tell(trial, 1.0)
        elif queue.finished():
            pulled.append("report")
            queue.study.tell(trial, 3.0)
        else:
            queue.release(trial)  # jobs still wait: the report job goes back to the end of the queue
    assert sorted(pulled) == sorted([job_key(j) for j in jobs] + ["report"])
    assert second.pull() is None and first.enqueue() == []  # all done: a re-run trains nothing, it only reports
    trial, job = second.pull()
    assert second.is_report(job) and second.finished() and first.pull() is None
    with pytest.raises(LeanvisionError, match="runs another plan"):
        PlanQueue(storage, "q", "other-id", {"plan": "p2"}, jobs, "q.journal")


def test_a_killed_workers_job_is_failed_and_enqueued_again(tmp_path):
    storage = open_storage(None, tmp_path / "q.journal")
    jobs = [{"variant": "a", "seed": 0}]
    queue = PlanQueue(storage, "q", "id", {"plan": "p"}, jobs, "q.journal")
    queue.enqueue()
    trial, job = queue.pull()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    trial.set_user_attr("worker", {**trial.user_attrs["worker"], "pid": int(dead.stdout)})  # its process is gone
    again = PlanQueue(storage, "q", "id", {"plan": "p"}, jobs, "q.journal")  # the next process on this host
    assert again.enqueue() == jobs
    states = {t.number: t.state.name for t in again.trials()}
    assert states[trial.number] == "FAIL" and list(states.values()).count("WAITING") == 1
    trial, got = again.pull()
    assert again.is_report(got) and not again.finished()  # the report job waited first: it goes back behind the job
    again.release(trial)
    assert again.pull()[1] == job


def test_report_copies_readable_runs_and_lists_unreachable_ones(shared_journal):
    """A report built where OUT is another directory: runs it can read are copied in and measured; runs it cannot
    read (trained on a machine whose OUT is not shared) are listed, not measured."""
    tmp, journal, out, _ = shared_journal
    options = dict(dataset="digits", plan=PLAN, epochs=1, repeats=5, runtimes="torch", device="cpu",
                   storage=str(journal), progress=False)
    hidden = out.rename(tmp / "hidden")  # the training machine's OUT, out of this machine's reach
    try:
        study = run_study(out=tmp / "far", **options)
    finally:
        hidden.rename(out)
    assert study["variants"] == [] and [e["name"] for e in study["trained_elsewhere"]] == ["a", "b"]
    assert any("Trained on another machine" in f for f in study["findings"])
    near = run_study(out=tmp / "near", **options)
    assert [v["status"] for v in near["variants"]] == ["ok"] * 2 and near["trained_elsewhere"] == []
    assert (tmp / "near" / "variants" / "a" / "seed0" / "best.safetensors").is_file()
