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
