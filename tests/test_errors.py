"""The error policy: one hierarchy in leanvision.errors, one exit code per class, seen through the real CLI."""

import pytest
from testkit import one_error_line

from leanvision import cli, errors
from leanvision.cli import main
from leanvision.errors import (
    DataError,
    DownloadError,
    LeanvisionError,
    ModelSpecError,
    RunDirError,
    TrainingDiverged,
    TrainingInterrupted,
    first_line,
)

EXPECTED = [(LeanvisionError, 2), (DataError, 2), (ModelSpecError, 2), (RunDirError, 2), (DownloadError, 1),
            (TrainingDiverged, 3), (TrainingInterrupted, 130), (KeyboardInterrupt, 130), (RuntimeError, 1)]


def test_every_error_class_lives_in_errors_and_is_covered_here():
    classes = {obj for obj in vars(errors).values() if isinstance(obj, type) and issubclass(obj, LeanvisionError)}
    assert classes == {cls for cls, _ in EXPECTED if issubclass(cls, LeanvisionError)}


@pytest.mark.parametrize(("cls", "code"), EXPECTED, ids=[c.__name__ for c, _ in EXPECTED])
def test_cli_exit_code_per_error_class(cls, code, monkeypatch, capsys):
    def command(ns):
        raise cls("batch_size=0 is wrong\nsecond line never shown")

    monkeypatch.setitem(cli.COMMANDS, "datasets", command)
    monkeypatch.delenv("LEANVISION_DEBUG", raising=False)
    assert main(["datasets"]) == code
    line = one_error_line(capsys.readouterr().err, only=True)
    if cls is KeyboardInterrupt:
        assert line == "error: interrupted"
    else:
        assert "is wrong" in line and "second line" not in line
    assert errors.exit_code(cls("x")) == code


def test_real_failures_exit_with_their_codes(tmp_path, capsys):
    assert main(["evaluate", str(tmp_path / "missing")]) == 2  # bad input
    one_error_line(capsys.readouterr().err, "not found")
    assert main(["train", "--epochs", "many"]) == 2  # a bad flag
    capsys.readouterr()
    # a learning rate of 1e12 diverges in the first epoch: exit 3, one line naming the flag as typed
    assert main(["train", "--dataset", "digits", "--model", "seed-shallow", "--epochs", "1", "--no-progress",
                 "--device", "cpu", "--optimizer", "sgd", "--lr", "1e30", "--out", str(tmp_path / "d")]) == 3
    one_error_line(capsys.readouterr().err, "--lr", "nan")


def test_library_messages_name_arguments_and_the_cli_names_flags(tmp_path, capsys):
    from leanvision.data.core import check_batch_args

    with pytest.raises(DataError, match=r"batch_size=0.*`batch_size`") as info:
        check_batch_args(0, 0)
    assert "--" not in str(info.value)
    assert main(["train", "--batch-size", "0", "--out", str(tmp_path / "a")]) == 2
    line = one_error_line(capsys.readouterr().err, "--batch-size 0")
    assert "batch_size" not in line


def test_first_line():
    assert first_line(ValueError("a\n  b")) == "a"
    assert first_line(ValueError("")) == "ValueError"
    assert first_line(ValueError("x"), with_type=True) == "ValueError: x"
    assert first_line(ValueError("bad\nGiven value: 3")) == "bad (Given value: 3)"
    assert len(first_line(ValueError("y" * 500), limit=10)) == 10
