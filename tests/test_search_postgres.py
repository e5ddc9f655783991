"""Two `leanvision search` workers (separate processes and output directories, as on two machines) share one study
on a throwaway PostgreSQL server. Skipped with a reason when the PostgreSQL binaries or the driver are absent."""

import glob
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg2", reason="psycopg2-binary (the `postgres` extra) is not installed")

from test_search import TINY, _env  # noqa: E402


def _pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    if found:
        return found
    candidates = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    return candidates[-1] if candidates else None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def postgres_url():
    initdb, pg_ctl = _pg_bin("initdb"), _pg_bin("pg_ctl")
    if not initdb or not pg_ctl:
        pytest.skip("PostgreSQL is not installed (initdb/pg_ctl not found; apt-get install -y postgresql)")
    as_root = os.geteuid() == 0  # initdb refuses to run as root: run the server as the postgres user
    if as_root and subprocess.run(["id", "postgres"], capture_output=True).returncode != 0:
        pytest.skip("running as root and there is no postgres user to run the server as")
    base = Path(tempfile.mkdtemp(prefix="lv-pg-"))
    data, port = base / "data", _free_port()
    if as_root:
        shutil.chown(base, "postgres")
        os.chmod(base, 0o700)

    def run(cmd: str) -> subprocess.CompletedProcess:
        argv = ["su", "postgres", "-c", cmd] if as_root else ["bash", "-c", cmd]
        return subprocess.run(argv, capture_output=True, text=True, timeout=120)

    done = run(f"{initdb} -D {data} -A trust -U postgres --no-sync -E UTF8")
    assert done.returncode == 0, done.stderr
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -c unix_socket_directories={base} -c fsync=off"
    done = run(f"{pg_ctl} -D {data} -l {base}/log -o '{opts}' -w start")
    assert done.returncode == 0, done.stderr + (base / "log").read_text() if (base / "log").exists() else ""
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres"
    finally:
        run(f"{pg_ctl} -D {data} -m immediate -w stop")
        shutil.rmtree(base, ignore_errors=True)


def test_two_workers_on_postgres_share_one_study(tmp_path, postgres_url):
    space = tmp_path / "tiny.yaml"
    space.write_text(str(TINY).replace("True", "true").replace("False", "false").replace("'", '"'))
    procs = []
    for name in ("machine-a", "machine-b"):
        cmd = [sys.executable, "-m", "leanvision", "search", "--out", str(tmp_path / name), "--space", str(space),
               "--storage", postgres_url, "--study-name", "shared", "--trials", "6", "--repeats", "5",
               "--stop-after", "0", "--seed", str(len(procs)), "--no-progress"]
        procs.append(subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        time.sleep(1.0)  # the first creates the study; the second loads it
    for p in procs:
        out, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    trials = optuna.load_study(study_name="shared", storage=postgres_url.replace(
        "postgresql://", "postgresql+psycopg2://")).get_trials()
    numbers = [t.number for t in trials]
    assert numbers == list(range(len(numbers))) and 6 <= len(numbers) <= 7  # none lost, none duplicated
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials)
    dirs = {Path(t.user_attrs["run_dir"]).parent.parent.name for t in trials}
    assert dirs == {"machine-a", "machine-b"}  # both workers ran trials of the one study


def test_remote_dead_worker_is_failed_on_postgres(tmp_path, postgres_url):
    from test_storage_heartbeat import check_remote_dead_worker_is_failed

    check_remote_dead_worker_is_failed(postgres_url, tmp_path)
