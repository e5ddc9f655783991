"""A worker killed on another machine: on a database storage its trial's heartbeat stops and `fail_stale` (run by
every process that starts) fails it once the grace period has passed; a live worker's trial and a trial with no
heartbeat at all (started before heartbeats, or on a journal file) are left alone. SQLite here; PostgreSQL in
test_search_postgres.py (the same check)."""

from __future__ import annotations

import time

import pytest

optuna = pytest.importorskip("optuna")

from leanvision import storage  # noqa: E402
from leanvision.storage import GRACE_PERIOD_S, HEARTBEAT_INTERVAL_S, fail_stale, heartbeat, open_storage  # noqa: E402


def check_remote_dead_worker_is_failed(url: str, tmp_path) -> None:
    st = open_storage(url, tmp_path / "unused.journal")
    assert (st.heartbeat_interval, st.grace_period) == (HEARTBEAT_INTERVAL_S, GRACE_PERIOD_S)
    study = optuna.create_study(storage=st, study_name="hb", directions=["maximize"])
    remote = {"host": "another-machine", "pid": 4242, "index": 0}
    dead, alive, silent = storage.ask(study), storage.ask(study), storage.ask(study)
    for t in (dead, alive, silent):
        t.set_user_attr("worker", remote)
    with heartbeat(study, dead):  # the remote worker sent heartbeats, then was killed
        time.sleep(0.05)
    st.grace_period = 1  # (the real grace period is minutes)
    time.sleep(2.2)  # SQLite's clock has whole seconds
    with heartbeat(study, alive):  # this one is still beating
        fail_stale(study)
    states = {t.number: t.state for t in study.get_trials(deepcopy=False)}
    assert states[dead.number] == optuna.trial.TrialState.FAIL
    assert states[alive.number] == states[silent.number] == optuna.trial.TrialState.RUNNING
    error = study.get_trials(deepcopy=False)[dead.number].user_attrs["error"]
    assert error == ("worker on another-machine stopped sending heartbeats (none for over 1 s: killed, crashed or cut "
                     "off)")


def test_remote_dead_worker_is_failed_on_a_database_storage(tmp_path):
    check_remote_dead_worker_is_failed(f"sqlite:///{tmp_path / 'hb.db'}", tmp_path)


def test_journal_storage_has_no_heartbeats_and_keeps_remote_trials(tmp_path):
    st = open_storage(None, tmp_path / "s.journal")
    study = optuna.create_study(storage=st, study_name="hb")
    t = storage.ask(study)
    t.set_user_attr("worker", {"host": "another-machine", "pid": 4242, "index": 0})
    with heartbeat(study, t):  # a no-op here
        pass
    fail_stale(study)
    assert study.get_trials(deepcopy=False)[0].state == optuna.trial.TrialState.RUNNING
    assert storage._stale_heartbeats(study) == []
