"""leanvision: image classifiers that are accurate and fast at once, measured on your own hardware.

The public API is loaded lazily (PEP 562), so `leanvision --help` does not import torch:

    import leanvision as lv
    lv.train(model="compact", dataset="digits", epochs=3, out="runs/compact")
    lv.predict("runs/compact", "digit.png")
"""

import importlib as _importlib
import sys as _sys
import types as _types

__version__ = "0.1.0"

_API = {
    "create_model": "leanvision.models",
    "list_models": "leanvision.models",
    "load_dataset": "leanvision.data",
    "list_datasets": "leanvision.data",
    "load_run": "leanvision.runs",
    "RunConfig": "leanvision.config",
    "DataConfig": "leanvision.config",
    "TrainConfig": "leanvision.config",
    "LeanvisionError": "leanvision.errors",
    "train": "leanvision.api",
    "evaluate": "leanvision.api",
    "predict": "leanvision.api",
    "optimize": "leanvision.api",
    "export": "leanvision.api",
    "bench": "leanvision.api",
    "study": "leanvision.api",
}
__all__ = ["__version__", *_API]


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'leanvision' has no attribute {name!r}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # next access skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({n for n in globals() if not n.startswith("_") or n == "__version__"} | set(__all__))


class _Package(_types.ModuleType):
    """`train`, `evaluate`, `optimize` and `study` are both API functions and submodules (leanvision/train.py, ...).
    Importing such a submodule would bind it as the package attribute; here the function keeps the name, and the
    submodule stays importable by name (`from leanvision.train import fit`, `sys.modules["leanvision.train"]`)."""

    def __setattr__(self, name: str, value) -> None:
        if name in _API and isinstance(value, _types.ModuleType):
            return
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
