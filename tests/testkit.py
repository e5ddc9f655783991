"""Helpers shared by the tests (imported as `from testkit import ...`; conftest.py files are not importable by name,
since pytest loads one per folder under the same module name)."""

from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# the real data lives in shared/data inside the checkout or beside it (../shared/data); the first that exists
SHARED_DATA = next((p for p in (REPO / "shared" / "data", REPO.parent / "shared" / "data") if p.is_dir()),
                   REPO.parent / "shared" / "data")


def one_error_line(text: str, *fragments: str, only: bool = False) -> str:
    """The single `error: ...` line of a command's stderr (no traceback), checked to contain each fragment
    (case-insensitive); `only=True`: it is the only line of `text`."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    assert "Traceback" not in text, text
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == 1, text
    assert not only or len(lines) == 1, text
    for fragment in fragments:
        assert fragment.lower() in errors[0].lower(), errors[0]
    return errors[0]


@contextmanager
def interrupt_at(step: int):
    """`fit` behaves as if Ctrl-C came after optimizer step `step` (test hook `train.stopping.interrupt_at_step`)."""
    from leanvision.train import stopping

    stopping.interrupt_at_step = step
    try:
        yield
    finally:
        stopping.interrupt_at_step = None
