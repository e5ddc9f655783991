"""leanvision: image classifiers that are accurate and fast at once, measured on your own hardware.

The public API is loaded lazily (PEP 562), so `import leanvision` and `leanvision --help` do not import torch:

    import leanvision as lv
    run = lv.train(model="compact", dataset="digits", epochs=3, out="runs/compact")  # -> Run (run.result)
    lv.evaluate(run).accuracy, lv.predict(run, "digit.png")[0].label
    int8 = lv.optimize(run, [lv.QuantizeConfig(mode="int8")])  # -> Run
    lv.bench(int8, batch_sizes=1)  # -> list[BenchRow]
    lv.search(dataset="digits", max_latency_ms=0.05, trials=10, out="search/digits")  # -> SearchResult
    app = lv.serve_app("runs/compact")  # an ASGI app: uvicorn.run(app, host="127.0.0.1", port=8000)

Results are dataclasses (`TrainResult`, `OptimizeResult`, `Evaluation`, `Prediction`, `ExportResult`, `BenchRow`,
`Study`, `SearchResult`) whose `to_dict()` is exactly what the CLI prints with --json.
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
    "load_run": "leanvision.rundir",
    "Run": "leanvision.rundir",
    "TrainResult": "leanvision.rundir",
    "OptimizeResult": "leanvision.rundir",
    "OptimizeStep": "leanvision.rundir",
    "Evaluation": "leanvision.evaluate",
    "ClassMetrics": "leanvision.evaluate",
    "Prediction": "leanvision.evaluate",
    "ExportResult": "leanvision.accel.export",
    "BenchRow": "leanvision.accel.bench",
    "BenchConfig": "leanvision.accel.bench",
    "Study": "leanvision.study",
    "StudyVariant": "leanvision.study",
    "Recipe": "leanvision.recipes",
    "recipe": "leanvision.api",
    "list_recipes": "leanvision.api",
    "PruneConfig": "leanvision.techniques",
    "QuantizeConfig": "leanvision.techniques",
    "DistillConfig": "leanvision.techniques",
    "FoldConfig": "leanvision.techniques",
    "list_techniques": "leanvision.techniques",
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
    "search": "leanvision.api",
    "SearchResult": "leanvision.search",
    "serve_app": "leanvision.serve",
}
__all__ = ["__version__", *_API]


_CALLABLE_MODULES = ("train", "evaluate", "optimize", "study", "search")  # names that are also submodules (train.py, ...)


def __getattr__(name: str):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'leanvision' has no attribute {name!r}")
    if name in _CALLABLE_MODULES:  # importing binds the submodule, made callable by _Package.__setattr__
        return _importlib.import_module(f"leanvision.{name}")
    value = getattr(_importlib.import_module(module), name)
    globals()[name] = value  # next access skips __getattr__
    return value


def __dir__() -> list[str]:
    return sorted({n for n in globals() if not n.startswith("_") or n == "__version__"} | set(__all__))


class _CallableModule(_types.ModuleType):
    """A submodule that is also the API function of the same name: `leanvision.train(...)` calls `api.train`,
    while `leanvision.train.fit`, `import leanvision.train` and `from leanvision.train import fit` stay the module."""

    def __call__(self, *args, **kwargs):
        return self._api_function()(*args, **kwargs)

    def _api_function(self):
        from . import api

        return getattr(api, self.__name__.rsplit(".", 1)[1])

    @property
    def __signature__(self):  # inspect.signature(leanvision.train): the API function's parameters
        import inspect

        return inspect.signature(self._api_function())

    @property
    def __doc__(self):  # help(leanvision.train): the API function first, then the submodule's own docstring
        name = self.__name__.rsplit(".", 1)[1]
        own = self.__dict__.get("__doc__") or ""
        return (f"leanvision.{name}{self.__signature__}\n\n{self._api_function().__doc__ or ''}\n\n"
                f"leanvision.{name} is also the submodule {self.__name__}:\n\n{own}")

    @__doc__.setter
    def __doc__(self, value) -> None:  # importlib.reload sets the module docstring
        self.__dict__["__doc__"] = value


class _Package(_types.ModuleType):
    """Binds `train`, `evaluate`, `optimize`, `study` and `search` (API functions that share their name with a submodule) as
    the submodule made callable, whichever is imported first."""

    def __setattr__(self, name: str, value) -> None:
        if name in _CALLABLE_MODULES and isinstance(value, _types.ModuleType) and type(value) is _types.ModuleType:
            value.__class__ = _CallableModule
        super().__setattr__(name, value)


_sys.modules[__name__].__class__ = _Package
