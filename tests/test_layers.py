"""The architecture contracts in pyproject.toml's `[tool.importlinter]` (one layers contract for the whole package,
no cycles inside a package) hold, place every module, and really fail on an upward import."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: tomli, a dependency of import-linter there
    import tomli as tomllib

pytest.importorskip("importlinter", reason="import-linter is not installed (pip install -e '.[test]')")

REPO = Path(__file__).resolve().parents[1]
PACKAGE = Path(__import__("leanvision").__file__).parent  # the package under test (src/ or the installed copy)


def lint_imports(root: Path, package_parent: Path) -> subprocess.CompletedProcess:
    """`lint-imports` with `root`'s pyproject.toml on the `leanvision` package found in `package_parent`."""
    code = ("import sys; from importlinter.cli import lint_imports; "
            "sys.exit(lint_imports(config_filename='pyproject.toml', no_cache=True, no_logo=True))")
    return subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=120,
                          env={"PATH": "", "PYTHONPATH": str(package_parent)})


def test_import_contracts_are_kept():
    result = lint_imports(REPO, PACKAGE.parent)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


@pytest.mark.parametrize("module, line, broken", [
    ("runtimes/graph.py", "from ..measure import timing", "runtimes is not allowed to import leanvision.measure"),
    ("measure/stats.py", "from ..train import normalizer", "measure is not allowed to import leanvision.train"),
    ("device.py", "from .runtimes import base", "device is not allowed to import leanvision.runtimes"),
    ("runtimes/base.py", "from . import eager", "No import cycles"),  # a cycle inside runtimes/
    ("train/optim.py", "from . import loop", "No import cycles"),  # a cycle inside train/
    ("techniques/base.py", "from .. import runs", "techniques is not allowed to import leanvision.runs"),
    ("train/loop.py", "from ..techniques import fold", "train is not allowed to import leanvision.techniques"),
    ("data/core.py", "from .. import models", "data is not allowed to import leanvision.models"),
    ("optimize.py", "from . import evaluate", "optimize is not allowed to import leanvision.evaluate"),  # siblings
])
def test_an_upward_import_breaks_a_contract(tmp_path, module, line, broken):
    shutil.copy(REPO / "pyproject.toml", tmp_path / "pyproject.toml")
    copy = tmp_path / "src" / "leanvision"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    with open(copy / module, "a") as f:
        f.write(f"\n{line}  # noqa\n")
    result = lint_imports(tmp_path, tmp_path / "src")
    assert result.returncode == 1, result.stdout + result.stderr
    assert broken in result.stdout


def test_every_module_has_a_layer():
    """A new top-level module or package must be placed in the layers contract (else nothing checks its imports)."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"]
    layers = next(c for c in config if c["id"] == "layers")["layers"]
    placed = {name.strip().removeprefix("leanvision.") for layer in layers for name in layer.split("|")}
    modules = {p.stem for p in PACKAGE.glob("*.py") if p.name != "__init__.py"}
    packages = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    assert modules | packages == placed
