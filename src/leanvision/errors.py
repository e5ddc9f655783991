"""User-facing errors: one hierarchy, one exit code per class, one way to shorten a message to a line.

Every problem a user can cause (bad path, bad spec, bad argument) is raised as a `LeanvisionError` whose message is
one line: what was received, what was expected, and how to fix it. Messages name the Python argument or config field
(`learning_rate=1e12`, `` `batch_size` ``); the CLI prints them as `error: ...` with the command's flags instead
(`--lr 1e12`, `--batch-size`: `cliparse.as_flags`) and exits with the class's `exit_code`, never with a traceback.

Exit codes (the README's table):
  0    success
  1    a failure while running (a download, an unexpected exception, some study/bench rows failed)
  2    bad input: a flag, a file, a dataset, a model spec, a run directory (`LeanvisionError` and most subclasses)
  3    training diverged (`TrainingDiverged`; the last good checkpoint was kept)
  130  interrupted (Ctrl-C, `TrainingInterrupted`; a resumable checkpoint was saved)
"""

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_DIVERGED, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class LeanvisionError(Exception):
    """A user-facing error with a one-line message (what was received, what was expected, how to fix it)."""

    exit_code = EXIT_BAD_INPUT


class DataError(LeanvisionError):
    """A dataset is missing, corrupt or in the wrong format."""


class ModelSpecError(LeanvisionError):
    """A model name or declarative model spec is invalid."""


class RunDirError(LeanvisionError):
    """A run directory is missing, malformed, or its model.json and weights disagree (refused before any build)."""


class DownloadError(LeanvisionError):
    """A download failed (offline, every mirror failed, checksum mismatch); the message is the short reason."""

    exit_code = EXIT_FAILED


class TrainingDiverged(LeanvisionError):
    """The loss became NaN or infinite; the last good checkpoint was kept."""

    exit_code = EXIT_DIVERGED


class TrainingInterrupted(LeanvisionError):
    """Ctrl-C during training; a resumable checkpoint was saved."""

    exit_code = EXIT_INTERRUPTED


def exit_code(error: BaseException) -> int:
    """The process exit code for `error`: its class's `exit_code`, 130 for KeyboardInterrupt, else 1."""
    if isinstance(error, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    return int(getattr(error, "exit_code", EXIT_FAILED)) if isinstance(error, LeanvisionError) else EXIT_FAILED


def first_line(error: BaseException | str, *, with_type: bool = False, limit: int = 300) -> str:
    """The first non-empty line of an exception's message (optionally prefixed by its type), for one-line reports.

    A message from jsonargparse/argparse that carries a `Given value: ...` line keeps it: `first line (Given value: x)`.
    """
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else ""
    given = next((line for line in lines[1:] if line.startswith("Given value:")), None)
    if given:
        text = f"{text} ({given})"
    if isinstance(error, BaseException) and (with_type or not text):
        text = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return text[:limit]


__all__ = ["LeanvisionError", "DataError", "ModelSpecError", "RunDirError", "DownloadError", "TrainingDiverged",
           "TrainingInterrupted", "exit_code", "first_line", "EXIT_OK", "EXIT_FAILED", "EXIT_BAD_INPUT",
           "EXIT_DIVERGED", "EXIT_INTERRUPTED"]
