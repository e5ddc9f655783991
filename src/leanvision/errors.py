"""User-facing errors.

Every problem a user can cause (bad path, bad spec, bad flag) is raised as a `LeanvisionError` whose message is one
line: what was received, what was expected, and how to fix it. The CLI prints it as `error: ...` and exits non-zero,
never with a traceback.
"""


class LeanvisionError(Exception):
    """A user-facing error with a one-line message (what was received, what was expected, how to fix it)."""


class DataError(LeanvisionError):
    """A dataset is missing, corrupt or in the wrong format."""


class ModelSpecError(LeanvisionError):
    """A model name or declarative model spec is invalid."""


class TrainingDiverged(LeanvisionError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""


def first_line(error: BaseException, *, with_type: bool = False, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (optionally prefixed by its type), for one-line reports."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    if with_type or not text:
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text[:limit]
