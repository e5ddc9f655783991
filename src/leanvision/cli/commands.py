"""The subcommands' handlers: each turns its parsed flags into one library call and prints the result.

Heavy libraries (torch, onnxruntime) are imported inside each handler, not here, so that `leanvision --help` starts
fast; the export and bench handlers are in `export_bench.py`. Over 300 lines because it holds eight short handlers
that share the output conventions (--json, warnings on stderr, library argument names shown as flags); splitting them
would scatter those conventions.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import sys
from typing import Any

from ..cliparse import config_from_flags, flag_values
from ..config import (
    DataConfig,
    OptimizeConfig,
    RunConfig,
    StudyConfig,
    TrainConfig,
)
from ..errors import LeanvisionError, first_line
from ..registry import did_you_mean

ERROR_CHARS = 10_000  # an error line is shown whole (one line, however long: e.g. a list of the known names)



_values = flag_values  # the fields given as flags


def _json_arg(text: str | None, flag: str) -> dict[str, Any]:
    if not text:
        return {}
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        raise LeanvisionError(f"Invalid {flag} {text!r}. Expected a JSON object, e.g. '{{\"width\": 16}}'.") from None
    if not isinstance(value, dict):
        raise LeanvisionError(f"Invalid {flag} {text!r}. Expected a JSON object, e.g. '{{\"width\": 16}}'.")
    return value


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


CONFIG_FILE_KEYS = ("model", "recipe", "model_kwargs", "out")  # besides every DataConfig and TrainConfig field


def _config_file_values(path: str) -> dict[str, Any]:
    """The options of a `--config` file (YAML or JSON): flat, a run's nested layout, or a run's own config.json."""
    import yaml

    from ..config import check_value_types, flatten_config

    where = f"--config {path}"
    if not os.path.isfile(path):
        raise LeanvisionError(f"Config file {path} not found. Expected a YAML/JSON file of train options, e.g. a "
                              "run's config.json.")
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise LeanvisionError(f"Invalid YAML in {where}: {first_line(e)}.") from None
    values = flatten_config(data if data is not None else {}, where)
    known = [*CONFIG_FILE_KEYS, *(f.name for cls in (DataConfig, TrainConfig) for f in dataclasses.fields(cls))]
    for key in values:
        if key not in known:
            raise LeanvisionError(f"{where}: unknown option {key!r}.{did_you_mean(key, known)} Expected some of: "
                                  f"{', '.join(known)}.")
    check_value_types(values, where)
    if isinstance(values.get("model_kwargs"), str):
        values["model_kwargs"] = _json_arg(values["model_kwargs"], "model_kwargs")
    if values.get("model_kwargs") is not None and not isinstance(values["model_kwargs"], dict):
        raise LeanvisionError(f"{where}: `model_kwargs` must be a mapping, e.g. {{width: 16}}.")
    return values


def resolve_train_config(ns: Any) -> tuple[RunConfig, str, Any]:
    """The RunConfig `train` will run, the run directory, and the dataset if it was loaded already (for a recipe).

    Precedence: explicit flags > --config file > recipe > (with --resume) the run's stored config > defaults.
    """
    from ..config import flatten_config
    from ..io import read_json

    requested = _config_file_values(ns.config) if ns.config else {}
    if ns.model is not None:
        requested["model"] = ns.model
    if ns.model_kwargs is not None:
        requested["model_kwargs"] = _json_arg(ns.model_kwargs, "--model-kwargs")
    requested.update(_values(ns, DataConfig))
    requested.update(_values(ns, TrainConfig))
    recipe = ns.recipe or requested.pop("recipe", None)
    requested.pop("recipe", None)
    out = ns.out or requested.pop("out", None) or os.path.join(
        "runs", _run_name(str(requested.get("model", RunConfig.model))))
    requested.pop("out", None)
    stored: dict[str, Any] = {}
    if ns.resume and os.path.isfile(os.path.join(out, "config.json")):  # resume reads the run's own config
        stored = flatten_config(read_json(os.path.join(out, "config.json")), f"{out}/config.json")
    data_names = [f.name for f in dataclasses.fields(DataConfig)]
    dataset = None
    if recipe:  # the recipe fills every setting not given explicitly; it needs the data's shape
        from ..data import load_dataset
        from ..recipes import apply_recipe, resolve_recipe
        from ..runs import _data_kwargs

        merged = {**stored, **requested}
        dataset = load_dataset(**_data_kwargs(RunConfig(data=DataConfig(
            **{k: merged[k] for k in data_names if k in merged}))))
        requested = apply_recipe(resolve_recipe(recipe, dataset.input_shape, merged.get("device", "auto")), requested)
    values = {**stored, **requested}  # train_run names any field that differs from the stored run
    cfg = RunConfig(model=values.get("model", RunConfig.model), model_kwargs=dict(values.get("model_kwargs") or {}),
                    data=DataConfig(**{k: values[k] for k in data_names if k in values}),
                    train=TrainConfig(**{f.name: values[f.name] for f in dataclasses.fields(TrainConfig)
                                         if f.name in values}))
    return cfg, out, dataset


def cmd_train(ns: Any) -> int:
    from ..runs import train_run

    cfg, out, dataset = resolve_train_config(ns)
    if ns.print_config:  # the resolved config (recipe applied), in the layout --config reads back
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
        return 0
    result = train_run(cfg, out, resume=bool(ns.resume), progress=not ns.no_progress, dataset=dataset,
                       overwrite=bool(ns.overwrite), log=None if ns.json else print, recipe=ns.recipe,
                       epoch_lines=True)
    from ..distributed import is_main

    if not is_main():  # torchrun: rank 0 alone reports
        return 0
    _print_warnings(result)
    if ns.json:
        _print_json(result)
    else:
        acc, n = result.get("test_accuracy"), result["epochs_run"]
        compiled = f"; plus {result['compile_time_s']:.1f} s torch.compile" if "compile_time_s" in result else ""
        test = f"test accuracy {acc:.2%} ({result['test_correct']}/{result['test_total']})" if acc is not None else ""
        print(f"{cfg.model} on {result['dataset']}: {test}, best val accuracy {result['best_val_accuracy']:.2%}, "
              f"{n} epoch{'s' * (n != 1)} in {result['train_time_s']:.1f} s (fp32 eval, {cfg.train.precision} "
              f"training{compiled}) -> {out}")
    return 0


def _run_name(model: str) -> str:
    """Default run folder name: the model name, or a spec file's stem (`specs/net.yaml` -> `net`)."""
    name = os.path.basename(model)
    stem, suffix = os.path.splitext(name)
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", stem if suffix.lower() in (".yaml", ".yml", ".json") else name)


def _same(text: str) -> str:
    return text


_translator = {"to_flags": _same}


def use_flag_names(to_flags) -> None:
    """Set by `main` for the running command: library text names Python arguments (`learning_rate`); on the command
    line say the flags (`--lr`). cliparse.as_flags is the one translation."""
    _translator["to_flags"] = to_flags


def _to_flags(text: str) -> str:
    return _translator["to_flags"](text)


def _print_warnings(result: dict) -> None:
    """A result's `warnings` (bad-looking numbers, see health.py), one `warning: ...` line each on stderr."""
    for line in result.get("warnings") or []:
        print(f"warning: {_to_flags(line)}", file=sys.stderr)


def cmd_evaluate(ns: Any) -> int:
    from ..api import evaluate
    from ..evaluate import evaluate_table
    from ..rundir import load_run

    run = load_run(ns.run_dir, weights=ns.weights, device=_device(ns))
    m = evaluate(run, split=ns.split, data_dir=ns.data_dir, plot=not ns.no_plot).to_dict()  # the API's Evaluation
    if ns.json:
        _print_json(m)
        return 0
    print(f"{m['split']} accuracy: {m['accuracy']:.2%} ({m['correct']}/{m['total']}) on {m['dataset']}")
    print(evaluate_table(m))
    if "confusion_matrix_png" in m:
        print(f"confusion matrix: {m['confusion_matrix_png']}")
    return 0


def cmd_predict(ns: Any) -> int:
    from ..evaluate import predict_files
    from ..rundir import load_run

    if not ns.images:
        raise LeanvisionError("No images given. Usage: leanvision predict RUN_DIR IMAGE_OR_FOLDER [...].")
    run = load_run(ns.run_dir, weights=ns.weights, device=_device(ns))
    results = predict_files(run, ns.images, top_k=ns.top_k)
    from ..evaluate import polarity_warning

    failed = [r for r in results if "error" in r]
    if ns.json:
        _print_json(results)
    else:
        for r in results:
            if "error" not in r:
                preds = ", ".join(f"{p['class']} {p['probability']:.3f}" for p in r["predictions"])
                print(f"{r['file']}: {preds}")
    warning = polarity_warning(results, run.meta["mean"])
    if warning:
        print(f"warning: {warning}", file=sys.stderr)
    for r in failed:  # reported after the others went on
        print(f"error: cannot classify {r['file']}: {r['error']}", file=sys.stderr)
    return 1 if failed else 0


def cmd_models(ns: Any) -> int:
    from ..measure import count_macs, count_params
    from ..models import create_model, list_models

    shape = _shape(ns.input_shape)
    rows = []
    names = list_models(ns.pattern)
    if not names:
        raise LeanvisionError(f"No registered model matches {ns.pattern!r}. Available: {', '.join(list_models())}.")
    for name in names:
        model = create_model(name, num_classes=ns.num_classes, in_chans=shape[0], img_size=shape[1:])
        rows.append({"model": name, "params": count_params(model), "macs_per_image": count_macs(model, shape)})
    if ns.json:
        _print_json({"input_shape": list(shape), "num_classes": ns.num_classes, "models": rows})
        return 0
    print(f"input {shape[0]}x{shape[1]}x{shape[2]} (CxHxW), {ns.num_classes} classes; MACs per image, batch 1")
    print(f"{'model':<16}{'params':>12}{'MACs':>14}")
    for r in rows:
        print(f"{r['model']:<16}{r['params']:>12,}{r['macs_per_image']:>14,}")
    return 0


def cmd_datasets(ns: Any) -> int:
    from ..data import list_datasets

    if ns.data_dir is not None and not os.path.isdir(ns.data_dir):
        print(f"warning: --data-dir {ns.data_dir} does not exist; every dataset that needs files shows as missing.",
              file=sys.stderr, flush=True)
    rows = list_datasets(ns.data_dir)
    if ns.json:
        _print_json(rows)
        return 0
    print(f"{'dataset':<14} {'train':>6}  {'test':>6}  {'shape':<8} {'status':<8} location")
    for r in rows:
        shape = "x".join(str(s) for s in r.get("image_shape") or r.get("shape") or [])
        present = "present" if r.get("present") else "missing"
        print(f"{r['name']:<14} {r.get('num_train', '?'):>6}  {r.get('num_test', '?'):>6}  {shape:<8} "
              f"{present:<8} {r.get('location', '')}")
        if r.get("description"):
            print(f"{'':<14} {r['description']}")
    return 0


def cmd_study(ns: Any) -> int:
    from ..study import run_study

    config = config_from_flags(ns, StudyConfig)
    study = run_study(config, progress=not ns.no_progress)
    if study.get("report_dir", "") is None:  # --storage: other processes still train; the last one reports
        print(f"study: {study['report_note']}", file=sys.stderr)
        if ns.json:
            _print_json(study)
        return 0
    ok = [v for v in study["variants"] if v.get("status") == "ok"]
    failed = [v for v in study["variants"] if v.get("status") != "ok"]
    if study.get("report_note"):  # the new report has fewer ok variants: written beside the earlier one
        print(f"note: {study['report_note']}", file=sys.stderr)
    if ns.json:
        _print_json(study)
        return 1 if failed else 0
    print(f"{study['title']}: {len(ok)}/{len(study['variants'])} variants ok in {study['wall_time_s']:.0f} s")
    width = max([16, *(len(v["name"]) + 2 for v in ok)])  # long names (whitenet-fast-prune40-r16) stay aligned
    print(f"{'variant':<{width}}{'accuracy (%)':>14}{'params':>10}{'MACs':>13}{'latency b1 (ms)':>17}"
          f"{'throughput b256 (img/s)':>25}")
    for v in sorted(ok, key=lambda v: -v["accuracy"]):
        mark = "*" if v.get("headline_runtime", "torch") != "torch" else ""  # e.g. an int8 ONNX variant
        print(f"{v['name'] + mark:<{width}}{100 * v['accuracy']:>14.2f}{v['params']:>10,}{v['macs']:>13,}"
              f"{v['latency_b1_median_ms']:>17.3f}{v['throughput_images_per_s']:>25,.0f}")
    print("(latency: median of batch-1 calls, torch eager fp32 on " + study["settings"]["device"] + ", "
          f"{study['environment'].get('torch_threads')} threads)")
    if any(v.get("headline_runtime", "torch") != "torch" for v in ok):
        print("* not runnable by torch (int8 ONNX model): latency and throughput measured on onnxruntime")
    for line in study["findings"]:
        print(f"- {line}")
    print(f"report: {study.get('report_dir', config.out)}/report.html")
    if failed:  # the report is written; the exit code says not everything worked
        print(f"error: {len(failed)} of {len(study['variants'])} variants failed: "
              + "; ".join(f"{v['name']} ({v.get('error')})" for v in failed), file=sys.stderr)
        return 1
    return 0


def cmd_optimize(ns: Any) -> int:
    from ..optimize import optimize_run, step_table

    config = config_from_flags(ns, OptimizeConfig)
    chain = optimize_chain(config)
    result = optimize_run(ns.run_dir, chain, config.out, data_dir=config.data_dir, progress=not ns.no_progress,
                          overwrite=config.overwrite, log=None if ns.json else print)
    _print_warnings(result)
    if ns.json:
        _print_json(result)
        return 0
    print(step_table(result))
    print(f"test accuracy {result['source_test_accuracy']:.2%} -> {result['test_accuracy']:.2%} "
          f"({result['test_correct']}/{result['test_total']}) -> {config.out}")
    return 0


def optimize_chain(config: OptimizeConfig) -> list:
    """The technique chain `optimize` runs: the --technique specs (an error names the spec as typed, since its field
    names are also shortcut flags) plus the shortcut options, validated before any work."""
    from ..optimize import build_chain
    from ..techniques import parse_technique

    techniques = []
    for spec in config.techniques:
        try:
            techniques.append(parse_technique(spec))
        except LeanvisionError as e:
            raise type(e)(f"--technique {spec!r}: {first_line(e, limit=ERROR_CHARS)}") from None
    if not config.shortcuts() and not techniques:
        options = "--technique, --prune, --unstructured, --distill-from, --quantize"
        if not config.fold:
            raise LeanvisionError(f"Nothing to do: no technique given. Give some of {options} (e.g. --prune 0.5 "
                                  "--quantize int8).")
        print(f"note: no technique given ({options}): only folding BatchNorm into the convolutions.",
              file=sys.stderr, flush=True)
    return build_chain(**config.shortcuts(), techniques=techniques, fold=config.fold)


def cmd_serve(ns: Any) -> int:
    from ..serve.server import serve

    serve(ns.run_dir, host=ns.host, port=ns.port, workers=ns.workers, runtime=ns.runtime,
          max_batch_size=ns.max_batch_size, max_wait_ms=ns.max_wait_ms, max_body_kb=ns.max_body_kb,
          max_concurrency=ns.max_concurrency, max_pixels=ns.max_pixels, top_k=ns.top_k, threads=ns.threads)
    return 0


def _shape(text: str) -> tuple[int, int, int]:
    try:
        shape = tuple(int(v) for v in text.replace("x", ",").split(","))
    except ValueError:
        shape = ()
    if len(shape) != 3 or min(shape) < 1:
        raise LeanvisionError(f"Invalid --input-shape {text!r}. Expected C,H,W such as 1,28,28.")
    return shape  # type: ignore[return-value]


def _device(ns: Any):
    from ..device import resolve_device

    return resolve_device(getattr(ns, "device", None) or "cpu")
