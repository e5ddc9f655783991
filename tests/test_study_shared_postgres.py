"""Two `leanvision study --storage postgresql://...` processes share one plan on a throwaway PostgreSQL server (the
fixture of test_search_postgres.py). Skipped with a reason when the PostgreSQL binaries or the driver are absent."""

import pytest

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg2", reason="psycopg2-binary (the `postgres` extra) is not installed")

from test_search_postgres import postgres_url  # noqa: E402, F401 - the fixture
from test_study_shared import _jobs, check_shared_study, run_two_workers  # noqa: E402

from leanvision.storage import open_storage  # noqa: E402


def test_two_workers_on_postgres_share_one_plan(tmp_path, postgres_url):  # noqa: F811
    out, done = run_two_workers(tmp_path, postgres_url, name="shared-plan")
    check_shared_study(out, done, _jobs(open_storage(postgres_url, tmp_path / "unused.journal"), "shared-plan"))
