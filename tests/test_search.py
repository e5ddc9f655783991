"""`leanvision search` on a tiny space over digits: end to end, resume, failures, constraints, workers, bad input."""

import dataclasses
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")

from testkit import REPO, one_error_line  # noqa: E402

from leanvision.cli import main  # noqa: E402
from leanvision.lock import MachineLock  # noqa: E402
from leanvision.search import deps  # noqa: E402
from leanvision.search.engine import (  # noqa: E402
    SearchError,
    SearchSettings,
    enqueue_seeds,
    open_study,
    pareto,
    search,
)
from leanvision.search.objective import dominators, rungs, train_options  # noqa: E402
from leanvision.search.space import SpaceError, conv_spec, load_space, sample, seed_trials  # noqa: E402

TINY = {"architecture": {"stages": {"choices": [1, 2]}, "width": [4, 12], "kernel_size": 3},
        "training": {"epochs": 2, "learning_rate": [2e-3, 1e-2]},
        "compression": {"prune": False, "int8": False}}
FAST = dict(dataset="digits", space=TINY, repeats=5, final_rounds=2, progress=False, stop_after=0)  # no early stops


def _study(out: Path, storage: str | None = None, name: str = "leanvision-search"):
    storage = storage or optuna.storages.JournalStorage(
        optuna.storages.journal.JournalFileBackend(str(out / "study.journal")))
    return optuna.load_study(study_name=name, storage=storage)


class _GuardedSplit:
    """The test split, logging when anything reads it."""

    def __init__(self, split, log):
        self._split, self._log = split, log

    def __getattr__(self, name):
        self._log.append(time.time())
        return getattr(self._split, name)

    def __len__(self):
        self._log.append(time.time())
        return len(self._split)


def test_end_to_end_resume_and_test_split_untouched(tmp_path, monkeypatch):
    reads: list[float] = []
    real = deps.load_dataset

    def guarded(**kwargs):
        ds = real(**kwargs)
        ds.test = _GuardedSplit(ds.test, reads)
        return ds

    monkeypatch.setattr(deps, "load_dataset", guarded)
    out = tmp_path / "s"
    first = search(**FAST, out=str(out), trials=3)
    trials = _study(out).get_trials()
    assert [t.number for t in trials] == [0, 1, 2]
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    last_done = max(t.datetime_complete.timestamp() for t in trials)
    assert reads and min(reads) > last_done  # the test split is read only after every trial finished
    assert first["pareto"] and all(0 <= p["test_accuracy"] <= 1 for p in first["pareto"])
    best = first["pareto"][0]
    lo, hi = best["test_accuracy_95ci"]
    assert lo <= best["test_accuracy"] <= hi
    kept = json.loads((Path(best["run_dir"]) / "result.json").read_text())  # what evaluate/serve read from the run
    assert (kept["test_accuracy"], kept["test_total"], kept["accuracy_split"]) == (best["test_accuracy"], 359, "test")
    for t in trials:  # selection values are validation accuracy, as recorded by the trial
        assert t.values[0] == pytest.approx(t.user_attrs["val_accuracy"])
        assert t.user_attrs["measured"]["runtime"] == "onnxruntime" and t.user_attrs["measured"]["threads"] >= 1
        assert t.user_attrs["machine"]["id"]
    # the chosen models are ordinary run directories
    run = deps.load_run(best["run_dir"])
    assert run.meta["spec"]["name"] == "search-convnet"
    assert main(["evaluate", best["run_dir"], "--json"]) == 0
    for name in ("results.json", "results.csv", "report.md", "report.html", "search.png"):
        assert (out / name).stat().st_size > 0
    report_md = (out / "report.md").read_text().splitlines()
    learned = [p for p in first["pareto"] if not deps.near_chance(p["val_accuracy"], 10)]
    assert report_md[2].startswith("**Answer: deploy trial " if learned else  # the answer block first
                                   "**Answer: no model to deploy** (every Pareto model is near chance")
    assert any(line.startswith("The most accurate model") for line in report_md)
    assert "data:image/png;base64," in (out / "report.html").read_text()
    assert len((out / "results.csv").read_text().splitlines()) == 4
    # re-running with a larger total continues the same study; finished trials are kept as they were
    before = {t.number: t.values for t in trials}
    registry = deps.train_run(deps.RunConfig(model="lenet5", data=deps.DataConfig("digits"),
                                             train=deps.TrainConfig(epochs=1, device="cpu")),
                              tmp_path / "lenet5", progress=False)
    second = search(**FAST, out=str(out), trials=5, compare=[str(tmp_path / "lenet5")])
    (compared,) = second["compared"]  # measured and scored with the front, in the same process
    assert compared["model"] == "lenet5" and compared["test_accuracy"] == pytest.approx(registry["test_accuracy"])
    assert "compared model within the limits, lenet5" in second["answer"]
    again = _study(out).get_trials()
    assert [t.number for t in again] == [0, 1, 2, 3, 4]
    assert {t.number: t.values for t in again[:3]} == before
    assert second["counts"] == {"COMPLETE": 5}


def test_failed_trial_is_recorded_and_search_goes_on(tmp_path, monkeypatch):
    from leanvision.search import objective

    real = deps.train_run

    def flaky(cfg, out, **kwargs):
        if Path(out).name == "trial-0001":
            raise RuntimeError("simulated crash in training")
        return real(cfg, out, **kwargs)

    monkeypatch.setattr(objective.deps, "train_run", flaky)
    result = search(**FAST, out=str(tmp_path / "s"), trials=3)
    states = {t.number: t.state for t in _study(tmp_path / "s").get_trials()}
    assert states == {0: optuna.trial.TrialState.COMPLETE, 1: optuna.trial.TrialState.FAIL,
                      2: optuna.trial.TrialState.COMPLETE}
    failed = next(r for r in result["trials"] if r["number"] == 1)
    assert "simulated crash" in failed["error"]
    assert result["counts"] == {"COMPLETE": 2, "FAIL": 1}


def test_constraints_are_respected_through_the_public_api(tmp_path):
    import leanvision as lv

    space = {**TINY, "architecture": {**TINY["architecture"], "head": "flatten", "width": [4, 16]}}
    out = tmp_path / "s"
    found = lv.search(dataset="digits", space=space, repeats=5, stop_after=0, out=out, trials=4, max_size_kb=12.0,
                      min_accuracy=0.05)
    assert isinstance(found, lv.SearchResult) and found.out == out
    result = found.to_dict()
    written = json.loads((out / "results.json").read_text())
    assert (written["answer"], [p["trial"] for p in written["pareto"]]) == (found.answer,
                                                                            [p["trial"] for p in found.pareto])
    assert found.run_dirs == [Path(p["run_dir"]) for p in result["pareto"]]
    assert all(lv.load_run(d).meta["input_shape"] == [1, 28, 28] for d in found.run_dirs)  # ordinary run dirs
    records = [r for r in result["trials"] if r["state"] == "COMPLETE"]
    sizes = {r["number"]: r["size_kb"] for r in records}
    assert any(s > 12.0 for s in sizes.values()) or all(r["feasible"] for r in records)
    for r in records:
        assert r["feasible"] == (r["size_kb"] <= 12.0 and r["val_accuracy"] >= 0.05)
    assert all(p["size_kb"] <= 12.0 for p in result["pareto"])
    pruned = [r for r in result["trials"] if r["state"] == "PRUNED"]  # over the size limit with nothing to shrink it
    assert all("max_size_kb" in r["stopped"] for r in pruned)


def test_two_local_workers_share_one_journal(tmp_path):
    out = tmp_path / "s"
    search(**FAST, out=str(out), trials=6, workers=2)
    trials = _study(out).get_trials()
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(numbers))) and 6 <= len(numbers) <= 7  # none lost or duplicated
    assert all(t.state.is_finished() for t in trials)
    assert len({t.user_attrs["worker"]["pid"] for t in trials}) == 2


def _search_cmd(out: Path, *extra: str) -> list[str]:
    space = out.parent / "tiny.yaml"
    space.write_text(json.dumps(TINY))
    return [sys.executable, "-m", "leanvision", "search", "--out", str(out), "--space", str(space), "--repeats", "5",
            "--stop-after", "0", "--no-progress", *extra]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO / "src")}


def test_killed_worker_trial_is_failed_and_rerun_continues(tmp_path):
    out = tmp_path / "s"
    out.mkdir()
    proc = subprocess.Popen(_search_cmd(out, "--trials", "6"), env=_env(), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while time.time() < deadline:  # kill it while a second trial runs
            if (out / "study.journal").exists():
                trials = _study(out).get_trials()
                if any(t.state.is_finished() for t in trials) and any(
                        t.state == optuna.trial.TrialState.RUNNING for t in trials):
                    break
            time.sleep(0.2)
        else:
            pytest.fail("no trial finished in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    killed = [t.number for t in _study(out).get_trials() if t.state == optuna.trial.TrialState.RUNNING]
    assert killed
    done = subprocess.run(_search_cmd(out, "--trials", str(max(killed) + 2)), env=_env(), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    trials = _study(out).get_trials()
    for number in killed:
        assert trials[number].state == optuna.trial.TrialState.FAIL
        assert "died" in trials[number].user_attrs["error"]
    assert trials[-1].state.is_finished() and len(trials) == max(killed) + 2


@pytest.mark.parametrize("args, fragments", [
    (["--objectives", "accuracy,speed"], ["unknown objective", "'speed'"]),
    (["--objectives", "accuracy,latency,latency"], ["repeated objective"]),
    (["--trials", "0"], ["budget", "--trials 0"]),
    (["--minutes", "0"], ["budget", "--minutes 0"]),
    (["--storage", "postgresql://nobody@127.0.0.1:1/none"], ["cannot open storage", "127.0.0.1:1"]),
    (["--storage", "not-a-url"], ["invalid storage"]),
    (["--storage", "postgres://nobody@127.0.0.1:1/none"], ["cannot open storage", "postgresql"]),  # the alias
    (["--max-latency-ms", "0"], ["invalid --max-latency-ms 0"]),
    (["--space", "missing.yaml"], ["not found"]),
    (["--compare", "no/such/run"], ["not a run directory"]),
])
def test_bad_input_is_one_line_exit_2(tmp_path, capsys, args, fragments):
    assert main(["search", "--out", str(tmp_path / "s"), *args]) == 2
    one_error_line(capsys.readouterr().err, *fragments)


@pytest.mark.parametrize("space, fragment", [
    ({}, "empty or invalid search space"),
    ({"arch": {}}, "unknown search space section"),
    ({"architecture": {"depth": 3}}, "unknown key"),
    ({"architecture": {"width": [64, 8]}}, "low > high"),
    ({"architecture": {"block": {"choices": []}}}, "empty choices"),
    ({"architecture": {"block": ["plain", "fancy"]}}, "fancy"),
    ({"training": {"learning_rate": [0, 1e-2]}}, "log-scale"),
    ({"compression": {"prune": True, "prune_ratio": 0}}, "contradictory"),
])
def test_bad_space_is_refused_with_one_line(space, fragment):
    with pytest.raises(SpaceError) as info:
        load_space(space)
    assert fragment in str(info.value).lower() and "\n" not in str(info.value)


def test_empty_space_file_exits_2(tmp_path, capsys):
    (tmp_path / "empty.yaml").write_text("")
    assert main(["search", "--out", str(tmp_path / "s"), "--space", str(tmp_path / "empty.yaml")]) == 2
    one_error_line(capsys.readouterr().err, "empty or invalid search space")


def test_api_rejects_unknown_option():
    with pytest.raises(SearchError, match="Unknown option"):
        search(epochz=3)


def test_space_builds_the_family():
    arch = {"stages": 3, "widths": [8, 16, 32], "kernel_size": 5, "block": "separable", "downsample": "stride",
            "batchnorm": True, "head": "global_pool"}
    layers = conv_spec(arch, num_classes=10, input_shape=(1, 28, 28))["layers"]
    kinds = [next(iter(x)) if isinstance(x, dict) else x for x in layers]
    assert kinds == ["conv2d", "batchnorm", "relu", "separable_conv2d", "batchnorm", "relu", "separable_conv2d",
                     "batchnorm", "relu", "global_avg_pool", "dense"]
    assert [x[k]["strides"] for x, k in zip(layers, kinds) if k.endswith("conv2d")] == [2, 2, 1]
    model = deps.create_model(conv_spec({**arch, "downsample": "pool", "batchnorm": False, "head": "flatten"},
                                        num_classes=10, input_shape=(1, 28, 28)), num_classes=10, in_chans=1,
                              img_size=(28, 28))
    assert not any("BatchNorm" in type(m).__name__ for m in model.modules())


def test_multi_fidelity_rules():
    assert rungs(8) == [1, 2, 4] and rungs(1) == [] and rungs(5) == [1, 2, 4]

    class T:
        def __init__(self, number, point):
            self.number, self.user_attrs = number, {"rung_1": point}

    others = [T(0, [0.9, 100]), T(1, [0.8, 50]), T(2, [0.7, 300]), T(3, [0.5, 200])]
    assert dominators(others, 9, "rung_1", 0.6, 200) == 2  # 0 and 1 dominate it; 2 is slower; 3 is worse
    assert dominators(others, 3, "rung_1", 0.5, 200) == 2  # itself excluded
    assert pareto([("a", [0.9, 2.0]), ("b", [0.8, 1.0]), ("c", [0.7, 3.0])], ["maximize", "minimize"]) == ["a", "b"]


def test_measuring_waits_for_training(tmp_path):
    lock, events = MachineLock(tmp_path), []
    entered = threading.Event()

    def train():
        with lock.training():
            entered.set()
            time.sleep(0.3)
            events.append("epoch done")

    worker = threading.Thread(target=train)
    worker.start()
    entered.wait(5)
    with lock.measuring():
        events.append("measuring")
    worker.join()
    assert events == ["epoch done", "measuring"]


def test_a_dominated_trial_stops_at_its_first_rung(tmp_path, digits):
    from leanvision.search.objective import Measurer, TrialContext, TrialStopped, run_trial

    study = optuna.create_study(directions=["maximize", "minimize"])
    for _ in range(2):  # two earlier trials that were perfect and free after one epoch
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.PRUNED, user_attrs={"rung_1": [1, 0]}))
    space = load_space({**TINY, "training": {**TINY["training"], "epochs": 4}})
    lock = MachineLock(tmp_path)
    ctx = TrialContext(dataset=dataclasses.replace(digits, test=None), space=space,
                       objectives=("accuracy", "latency"), out=tmp_path, measurer=Measurer("onnxruntime", 1, lock, 5),
                       lock=lock, stop_after=2)
    trial = study.ask()
    with pytest.raises(TrialStopped, match="dominated at epoch 1"):
        run_trial(trial, ctx)
    run_dir = Path(trial.user_attrs["run_dir"])
    assert len((run_dir / "metrics.jsonl").read_text().splitlines()) == 1  # one epoch of four was spent
    assert trial.user_attrs["rung_1"][0] <= 1
    ctx.stop_after = 0  # 0: never stop early, the next trial trains its full schedule
    trial = study.ask()
    values = run_trial(trial, ctx)
    assert len(values) == 2
    assert len((Path(trial.user_attrs["run_dir"]) / "metrics.jsonl").read_text().splitlines()) == 4


def test_a_waiting_measurement_runs_when_training_pauses_between_epochs(tmp_path):
    lock, events = MachineLock(tmp_path), []
    holding, waiting = threading.Event(), threading.Event()

    def train():
        with lock.training() as hold:
            holding.set()
            waiting.wait(5)
            time.sleep(0.5)  # the measurer is now blocked on the exclusive lock
            events.append("epoch 1 done")
            hold.pause()
            events.append("epoch 2 started")

    worker = threading.Thread(target=train)
    worker.start()
    holding.wait(5)
    waiting.set()
    with lock.measuring():
        events.append("measuring")
        time.sleep(0.1)
    worker.join()
    assert events == ["epoch 1 done", "measuring", "epoch 2 started"]


def test_hypervolume_and_objective_order():
    from leanvision.search.engine import SearchSettings
    from leanvision.search.report import hypervolume_2d, hypervolume_history

    # points (accuracy, cost): 0.5 from cost 1 to 2, then 0.9 from 2 to the reference 4
    assert hypervolume_2d([(0.5, 1.0), (0.9, 2.0), (0.4, 3.0)], 4.0) == pytest.approx(0.5 * 1 + 0.9 * 2)
    assert hypervolume_2d([(0.9, 5.0)], 4.0) == 0.0  # beyond the reference: no area
    trials = [{"state": "COMPLETE", "feasible": True, "values": [0.5, 100.0], "started_at": 0.0, "completed_at": 1.0},
              {"state": "COMPLETE", "feasible": True, "values": [0.9, 50.0], "started_at": 1.0, "completed_at": 3.0}]
    history = hypervolume_history(trials, reference_cost=0.04, second="throughput")  # 1/throughput: 0.01, 0.02
    assert [h["elapsed_s"] for h in history] == [1.0, 3.0]
    assert history[-1]["hypervolume"] == pytest.approx(0.5 * 0.01 + 0.9 * 0.02)
    settings = SearchSettings(objectives="latency,accuracy")
    settings.check()
    assert settings.objectives == ("accuracy", "latency")


def test_default_space_expresses_fastnet_exactly_and_seeds_it():
    """The registry's fastnet (fast recipe) is a point of the default space: same layers, parameters and MACs."""
    space = load_space("default")
    seeds = seed_trials(space)
    assert set(seeds) == {"fastnet-fast", "fastnet-fast-int8", "fastnet-accurate"}
    study = optuna.create_study(directions=["maximize", "minimize"])
    study.enqueue_trial(seeds["fastnet-fast"])
    arch, train, compress = sample(space, study.ask())
    model = deps.create_model(conv_spec(arch, num_classes=10, input_shape=(1, 28, 28)), num_classes=10, in_chans=1,
                              img_size=(28, 28))
    fastnet = deps.create_model("fastnet", num_classes=10, in_chans=1, img_size=(28, 28), width=16, pool_first=True)
    assert sum(p.numel() for p in model.parameters()) == sum(p.numel() for p in fastnet.parameters()) == 24_314
    assert deps.count_macs(model, (1, 28, 28)) == deps.count_macs(fastnet, (1, 28, 28))
    names = [type(m).__name__ for m in model.children()]
    assert names[:4] == ["Conv2d", "MaxPool2d", "BatchNorm2d", "ReLU"] and names[-2:] == ["GlobalMaxPool", "Linear"]
    assert train["optimizer"] == "sgd" and train["learning_rate"] == 0.1 and train["epochs"] == 2
    assert train_options(train)["nesterov"] and train_options(train)["precision"] in ("bf16", "fp32")
    assert compress == {"prune_ratio": 0.0, "int8": False}
    # a space that cannot express fastnet (no 5x5 stem) gets no seed; rates without an optimizer are Adam's
    narrow = load_space({"architecture": {"stem_kernel_size": 3}, "training": {"learning_rate": [1e-3, 1e-2]}})
    assert seed_trials(narrow) == {}
    assert narrow["training"]["optimizer"].values == ["adam"]


def test_warm_start_enqueues_once_and_can_be_turned_off(tmp_path):
    space = {**TINY, "architecture": {**TINY["architecture"], "stages": {"choices": [1, 2, 3]},
                                      "width": [4, 64], "kernel_size": {"choices": [3, 5]}}}
    space["training"] = {"epochs": {"choices": [1, 2]}, "optimizer": ["sgd", "adam"], "learning_rate": "per-optimizer"}
    space["compression"] = {"prune": False, "int8": False}
    # the space has no 5x5 stem choice: stem_kernel_size stays at the default's [3, 5], so fastnet fits (fp32 only)
    settings = SearchSettings(dataset="digits", out=str(tmp_path / "s"), space=space, trials=1, progress=False)
    settings.check()
    (tmp_path / "s").mkdir()
    study = open_study(settings)
    assert enqueue_seeds(study, settings) == ["fastnet-fast"]
    assert enqueue_seeds(open_study(settings), settings) == []  # a re-run does not enqueue again
    waiting = open_study(settings).get_trials(states=(optuna.trial.TrialState.WAITING,))
    assert len(waiting) == 1 and waiting[0].user_attrs["registry_seed"] == "fastnet-fast"
    search(**{**FAST, "space": space}, trials=1, out=str(tmp_path / "off"), warm_start=False)
    trials = _study(tmp_path / "off").get_trials()
    assert len(trials) == 1 and "registry_seed" not in trials[0].user_attrs
    search(**{**FAST, "space": space}, trials=1, out=str(tmp_path / "on"))
    assert _study(tmp_path / "on").get_trials()[0].user_attrs["registry_seed"] == "fastnet-fast"


def test_warm_start_trials_waiting_do_not_eat_the_budget(tmp_path):
    result = search(dataset="digits", repeats=5, final_rounds=1, progress=False, out=str(tmp_path / "s"), trials=1)
    assert result["counts"] == {"COMPLETE": 1, "WAITING": 2}  # fastnet's 3 designs enqueued, 1 run (trials=1)


def test_continuing_a_study_with_other_constraints_or_space_is_refused(tmp_path):
    out = str(tmp_path / "s")
    search(**FAST, out=out, trials=1)
    with pytest.raises(SearchError, match=r"max_size_kb None \(received 10\)"):
        search(**FAST, out=out, trials=2, max_size_kb=10)
    with pytest.raises(SearchError, match="another search space"):
        search(**{**FAST, "space": {**TINY, "architecture": {**TINY["architecture"], "kernel_size": 5}}}, out=out,
               trials=2)


@pytest.mark.parametrize("options, fragment", [
    (dict(space=42), "Invalid space=42"), (dict(out=42), "Invalid out=42"),
    (dict(max_latency_ms="fast"), "Invalid max_latency_ms='fast'"), (dict(trials="2"), "trials='2'"),
    (dict(repeats=0), "Invalid repeats=0"),
])
def test_api_arguments_of_the_wrong_kind_are_one_line_errors(options, fragment):
    with pytest.raises(SearchError) as info:
        search(**{"trials": 1, **options})
    assert fragment in str(info.value) and "\n" not in str(info.value)
