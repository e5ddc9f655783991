"""The `leanvision` command: each subcommand parses its flags and calls one library function.

`main(argv) -> int` returns an exit code (0 ok, 1 failed, 2 bad input, 3 diverged, 130 interrupted: `errors.exit_code`)
so tests can call it directly.
User mistakes print one line, `error: ...`, never a traceback (set LEANVISION_DEBUG=1 to see one). `leanvision` with no
command prints the command list and exits 0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import re
import sys
from typing import Any

from jsonargparse import ArgumentParser

from . import __version__
from .accel.commands import cmd_bench, cmd_export
from .cliparse import (
    add_dataclass_flags,
    as_flags,
    command_list,
    config_from_flags,
    explain,
    flag_values,
    polish,
    unknown_command,
)
from .config import (
    BenchConfig,
    DataConfig,
    ExportConfig,
    OptimizeConfig,
    RunConfig,
    RunSource,
    StudyConfig,
    TrainConfig,
)
from .errors import LeanvisionError, exit_code, first_line
from .registry import did_you_mean

ALIASES = {"learning_rate": ["--lr"]}
ERROR_CHARS = 10_000  # an error line is shown whole (one line, however long: e.g. a list of the known names)
DESCRIPTION = ("Make image classifiers small and fast, and measure it: train a model, compress it (prune, distill, "
               "int8), compare variants in a report, export, benchmark and serve it. Start with `leanvision study`; "
               "`leanvision COMMAND --help` shows a command's options.")


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

    from .config import check_value_types, flatten_config

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
    from .config import flatten_config
    from .io import read_json

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
        from .data import load_dataset
        from .recipes import apply_recipe, resolve_recipe
        from .runs import _data_kwargs

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
    from .runs import train_run

    cfg, out, dataset = resolve_train_config(ns)
    if ns.print_config:  # the resolved config (recipe applied), in the layout --config reads back
        import yaml

        print(yaml.safe_dump(cfg.to_dict(), sort_keys=False).rstrip())
        return 0
    result = train_run(cfg, out, resume=bool(ns.resume), progress=not ns.no_progress, dataset=dataset,
                       overwrite=bool(ns.overwrite), log=None if ns.json else print, recipe=ns.recipe,
                       epoch_lines=True)
    from .distributed import is_main

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


def _to_flags(text: str) -> str:
    """Library text names Python arguments (`learning_rate`); on the command line say the flags (`--lr`). Set by
    `main` for the running command (cliparse.as_flags is the one translation)."""
    return text


def _print_warnings(result: dict) -> None:
    """A result's `warnings` (bad-looking numbers, see health.py), one `warning: ...` line each on stderr."""
    for line in result.get("warnings") or []:
        print(f"warning: {_to_flags(line)}", file=sys.stderr)


def cmd_evaluate(ns: Any) -> int:
    from .api import evaluate
    from .evaluate import evaluate_table
    from .rundir import load_run

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
    from .evaluate import predict_files
    from .rundir import load_run

    if not ns.images:
        raise LeanvisionError("No images given. Usage: leanvision predict RUN_DIR IMAGE_OR_FOLDER [...].")
    run = load_run(ns.run_dir, weights=ns.weights, device=_device(ns))
    results = predict_files(run, ns.images, top_k=ns.top_k)
    from .evaluate import polarity_warning

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
    from .measure import count_macs, count_params
    from .models import create_model, list_models

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
    from .data import list_datasets

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
    from .study import run_study

    config = config_from_flags(ns, StudyConfig)
    study = run_study(config, progress=not ns.no_progress)
    ok = [v for v in study["variants"] if v.get("status") == "ok"]
    failed = [v for v in study["variants"] if v.get("status") != "ok"]
    if study.get("report_note"):  # the new report has fewer ok variants: written beside the earlier one
        print(f"note: {study['report_note']}", file=sys.stderr)
    if ns.json:
        _print_json(study)
        return 1 if failed else 0
    print(f"{study['title']}: {len(ok)}/{len(study['variants'])} variants ok in {study['wall_time_s']:.0f} s")
    print(f"{'variant':<16}{'accuracy (%)':>14}{'params':>10}{'MACs':>13}{'latency b1 (ms)':>17}"
          f"{'throughput b256 (img/s)':>25}")
    for v in sorted(ok, key=lambda v: -v["accuracy"]):
        mark = "*" if v.get("headline_runtime", "torch") != "torch" else ""  # e.g. an int8 ONNX variant
        print(f"{v['name'] + mark:<16}{100 * v['accuracy']:>14.2f}{v['params']:>10,}{v['macs']:>13,}"
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
    from .optimize import optimize_run, step_table

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
    from .optimize import build_chain
    from .techniques import parse_technique

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
    from .serve.server import serve

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
    from .device import resolve_device

    return resolve_device(getattr(ns, "device", None) or "cpu")


def build_parser() -> ArgumentParser:
    parser = ArgumentParser(prog="leanvision", description=DESCRIPTION, usage="%(prog)s COMMAND [options]",
                            exit_on_error=False)
    parser.add_argument("--version", action="version", version=f"leanvision {__version__}",
                        help="print the leanvision version and exit")
    sub = parser.add_subcommands(dest="command", required=True)

    train = ArgumentParser(description="Train a model on a dataset into a run directory (weights, metrics, config; "
                                       "resumable). The defaults are Adam with a one-cycle schedule peaking at 3e-3; "
                                       "--recipe picks tuned settings. Example: leanvision train --dataset mnist "
                                       "--model compact --epochs 3 --out runs/compact", exit_on_error=False)
    train.add_argument("--config", type=str, default=None, help="YAML/JSON file of these options: flat (epochs: 3), or "
                                                                "a run's config.json to re-run it")
    train.add_argument("--print-config", action="store_true", help="print the resolved config (recipe and --config "
                                                                   "applied) as YAML and exit")
    train.add_argument("--model", type=str, default=None, help=f"registered name or spec .yaml/.json (default: "
                                                                f"{RunConfig.model})")
    train.add_argument("--recipe", type=str, default=None, help=f"named settings for every option not given: "
                                                                 f"{', '.join(recipe_names())} (keras: the reference "
                                                                 "Keras code's constant Adam 1e-3, batch 128)")
    train.add_argument("--model-kwargs", type=str, default=None,
                       help="builder arguments as JSON, e.g. '{\"width\": 8}'")
    add_dataclass_flags(train, DataConfig, aliases=ALIASES, negatable=True)
    add_dataclass_flags(train, TrainConfig, aliases=ALIASES, negatable=True)
    train.add_argument("--out", type=str, default=None, help="run directory (default: runs/<model>)")
    train.add_argument("--resume", action="store_true", help="continue the run in --out with its stored config; "
                                                             "a larger --epochs extends a finished run")
    train.add_argument("--overwrite", action="store_true", help="replace the run in --out if there is one")
    train.add_argument("--no-progress", action="store_true", help="no live progress bar")
    train.add_argument("--json", action="store_true", help="print the result as JSON")
    sub.add_subcommand("train", train, help="train a model")

    evaluate = ArgumentParser(description="Test accuracy, per-class precision/recall/F1 and the confusion matrix of a "
                                          "trained run. Example: leanvision evaluate runs/compact",
                              exit_on_error=False)
    evaluate.add_argument("run_dir", type=str, help="run directory written by `leanvision train` or `optimize`")
    evaluate.add_argument("--split", type=str, default="test", choices=["test", "val", "train"],
                          help="which split of the run's dataset")
    evaluate.add_argument("--weights", type=str, default="best", choices=["best", "last"],
                          help="best (validation) or last epoch's weights")
    evaluate.add_argument("--data-dir", type=str, default=None, help="where the run's dataset lives, if moved")
    evaluate.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda | cuda:N | mps")
    evaluate.add_argument("--no-plot", action="store_true", help="do not write the confusion matrix PNG")
    evaluate.add_argument("--json", action="store_true", help="print the metrics as JSON")
    sub.add_subcommand("evaluate", evaluate, help="evaluate a run on its test split")

    predict = ArgumentParser(description="Classify image files (or folders of them) with a trained run. Example: "
                                         "leanvision predict runs/compact digit.png --top-k 3", exit_on_error=False)
    predict.add_argument("run_dir", type=str, help="run directory written by `leanvision train` or `optimize`")
    predict.add_argument("images", nargs="*", type=str, help="image files or folders (recursively)")
    predict.add_argument("--top-k", type=int, default=1, help="classes shown per image, most probable first")
    predict.add_argument("--weights", type=str, default="best", choices=["best", "last"],
                         help="best (validation) or last epoch's weights")
    predict.add_argument("--device", type=str, default="auto", help="auto | cpu | cuda | cuda:N | mps")
    predict.add_argument("--json", action="store_true", help="print the predictions as JSON")
    sub.add_subcommand("predict", predict, help="classify image files")

    models = ArgumentParser(description="List registered models with their parameters and MACs for an input shape. "
                                        "Example: leanvision models 'seed*' --input-shape 3,32,32",
                            exit_on_error=False)
    models.add_argument("pattern", nargs="?", type=str, default="*", help="model names to list (glob, e.g. 'seed*')")
    models.add_argument("--input-shape", type=str, default="1,28,28", help="input C,H,W for the counts")
    models.add_argument("--num-classes", type=int, default=10, help="classes of the output layer")
    models.add_argument("--json", action="store_true", help="print the table as JSON")
    sub.add_subcommand("models", models, help="list models")

    datasets = ArgumentParser(description="List datasets, their sizes and where they are looked for. Example: "
                                          "leanvision datasets --data-dir ../shared/data",
                              exit_on_error=False)
    datasets.add_argument("--data-dir", type=str, default=None, help="where dataset files are looked for "
                                                                      "(default: $LEANVISION_DATA, else "
                                                                      "~/.cache/leanvision)")
    datasets.add_argument("--json", action="store_true", help="print the list as JSON")
    sub.add_subcommand("datasets", datasets, help="list datasets")

    study = ArgumentParser(description="Train a plan of model variants on a dataset, measure each the same way "
                                       "(accuracy, size, MACs, latency, throughput per runtime) and write an HTML/MD "
                                       "report with the Pareto front and a plain diagnosis. Example: leanvision study "
                                       "--dataset mnist --plan quick --epochs 2", exit_on_error=False)
    add_dataclass_flags(study, StudyConfig, aliases={"runtimes": ["--runtime"]},
                        choices={"recipe": recipe_names()})
    _output_flags(study, "the study (results.json's content)")
    sub.add_subcommand("study", study, help="train and compare a plan of variants (the main job)")

    optimize = ArgumentParser(description="Compress a trained run into a new run (distill -> prune -> fold -> int8), "
                                          "measuring what every step bought. Example: leanvision optimize runs/compact "
                                          "--prune 0.5 --quantize int8 --out runs/compact-int8, or the same as "
                                          "--technique prune:ratio=0.5 --technique quantize:mode=int8.",
                              epilog=technique_help(), exit_on_error=False)
    optimize.add_argument("run_dir", type=str, help="trained run directory to compress")
    add_dataclass_flags(optimize, OptimizeConfig, aliases={"techniques": ["--technique"]}, repeat=("techniques",),
                        required=("out",))
    _output_flags(optimize, "the result")
    sub.add_subcommand("optimize", optimize, help="prune, distill, fold and quantize a trained run")

    serve = ArgumentParser(description="Serve a run over HTTP: POST /predict with dynamic batching, /model, /metrics, "
                                       "/health, /ready, a page at /. Example: leanvision serve runs/compact --port "
                                       "8000", exit_on_error=False)
    serve.add_argument("run_dir", type=str, help="run directory written by `leanvision train` or `optimize`")
    serve.add_argument("--host", type=str, default="127.0.0.1", help="address to listen on (loopback by default)")
    serve.add_argument("--port", type=int, default=8000, help="TCP port (0: any free port)")
    serve.add_argument("--runtime", type=str, default="onnxruntime", help="onnxruntime | torch | onnxruntime-streams")
    serve.add_argument("--max-batch-size", type=int, default=64, help="images per runtime call at most")
    serve.add_argument("--max-wait-ms", type=float, default=2.0, help="an image waits at most this for a batch")
    serve.add_argument("--max-body-kb", type=int, default=2048, help="larger request bodies get 413")
    serve.add_argument("--max-concurrency", type=int, default=256, help="requests in progress; more get 503")
    serve.add_argument("--max-pixels", type=int, default=16_000_000, help="larger images get 413 (bomb guard)")
    serve.add_argument("--top-k", type=int, default=1, help="predictions per image unless ?top_k= says")
    serve.add_argument("--workers", type=int, default=1, help="processes, each with its own model")
    serve.add_argument("--threads", type=int, default=None, help="inference threads per process (default: CPU "
                                                                 "cores - 1, shared among the workers)")
    sub.add_subcommand("serve", serve, help="serve a run over HTTP")

    export = ArgumentParser(description="Export a run's model to ONNX (dynamic batch, class names and normalization "
                                        "in its metadata) and check that ONNX Runtime classifies the test split like "
                                        "PyTorch (fails beyond 0.1 pp). Example: leanvision export runs/compact",
                            exit_on_error=False)
    export.add_argument("run_dir", type=str, help="run directory written by `leanvision train` or `optimize`")
    add_dataclass_flags(export, ExportConfig)
    add_dataclass_flags(export, RunSource)
    _output_flags(export, "the export summary", progress=False)
    sub.add_subcommand("export", export, help="export a run to ONNX")

    bench = ArgumentParser(description="Latency, throughput, accuracy, energy and cost of a run per runtime, "
                                       "precision and batch size, in one table. Example: leanvision bench runs/compact "
                                       "--runtimes torch,onnxruntime --batch-sizes 1,64", exit_on_error=False)
    bench.add_argument("run_dir", type=str, help="run directory written by `leanvision train` or `optimize`")
    add_dataclass_flags(bench, BenchConfig, aliases={"runtimes": ["--runtime"], "precisions": ["--precision"]})
    add_dataclass_flags(bench, RunSource)
    _output_flags(bench, "the rows and environment", progress=False)
    sub.add_subcommand("bench", bench, help="benchmark a run per runtime, precision and batch size")
    return polish(parser)


def _output_flags(parser: ArgumentParser, what: str, progress: bool = True) -> None:
    """How a command shows its result (not part of its config): --json, and --no-progress for long commands."""
    if progress:
        parser.add_argument("--no-progress", action="store_true", help="no live progress output")
    parser.add_argument("--json", action="store_true", help=f"print {what} as JSON")


def recipe_names() -> list[str]:
    """The registered recipe names, for --recipe's choices (recipes.py imports torch, so the names are read from its
    `@RECIPES.register("name")` lines to keep `leanvision --help` fast)."""
    from importlib import resources

    text = resources.files("leanvision").joinpath("recipes.py").read_text(encoding="utf-8")
    return re.findall(r'@RECIPES\.register\("([\w-]+)"\)', text)


def technique_help() -> str:
    """--technique's syntax and every technique with its fields' defaults, read from the technique modules' source
    (their config dataclasses are the one home of the defaults; importing them would load torch for `--help`)."""
    from importlib import resources

    folder = resources.files("leanvision").joinpath("techniques")
    text = "\n\n\n".join(p.read_text(encoding="utf-8") for p in sorted(folder.iterdir(), key=lambda p: p.name)
                          if p.name.endswith(".py"))
    specs = []
    for name, cls in re.findall(r'^@register_technique\("([\w-]+)", (\w+)\)', text, flags=re.M):
        if f"class {cls}(" in text:
            body = text.split(f"class {cls}(", 1)[1].split("\n\n\n", 1)[0]
            fields = re.findall(r"^    (\w+): [^=\n]+ = ([^#\n]+?)\s*(?:#.*)?$", body, flags=re.M)
            args = ", ".join(f"{k}=" + ("(required)" if v in ('""', "''") else v.strip("\"'").replace("True", "true")
                                         .replace("False", "false")) for k, v in fields)
            specs.append(f"{name}: {args}" if args else f"{name} (no fields)")
    return ("--technique NAME:KEY=VALUE,... gives one technique per flag, in any order (they run as distill -> "
            "prune -> fold -> quantize); a shortcut option is the same technique with its other fields at their "
            "defaults. Every technique with its fields' defaults: " + "; ".join(specs) + ".")


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "predict": cmd_predict, "models": cmd_models,
            "datasets": cmd_datasets, "study": cmd_study, "optimize": cmd_optimize, "serve": cmd_serve,
            "export": cmd_export, "bench": cmd_bench}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    if not argv:  # bare `leanvision`: the command list, exit 0
        print(command_list(parser))
        return 0
    if argv[0] == "--version":
        print(f"leanvision {__version__}")
        return 0
    if not argv[0].startswith("-") and unknown_command(parser, argv[0]):
        print(f"error: {unknown_command(parser, argv[0])}", file=sys.stderr)
        return 2
    try:
        ns = parser.parse_args(argv)
    except SystemExit as e:  # --help, --version, or jsonargparse's own exit
        return int(e.code or 0)
    except (argparse.ArgumentError, ValueError, TypeError) as e:
        command = next((a for a in argv if not a.startswith("-")), None)
        see = f"leanvision {command} --help" if command else "leanvision --help"
        print(f"error: {explain(parser, argv, e)}. See `{see}`.", file=sys.stderr)
        return 2
    command = ns.command
    global _to_flags
    _to_flags = lambda text: as_flags(text, parser, command, argv)  # noqa: E731
    try:
        code = COMMANDS[command](ns[command])
        sys.stdout.flush()  # a reader that closed the pipe (`| head`) shows here, not at interpreter exit
        return code
    except BrokenPipeError:  # like other CLIs: stop quietly (Python docs, "Note on SIGPIPE")
        try:
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        except (OSError, ValueError):
            pass
        return 0
    except LeanvisionError as e:  # the class says the exit code: 2 bad input, 1 failed, 3 diverged, 130 interrupted
        print(f"error: {as_flags(first_line(e, limit=ERROR_CHARS), parser, command, argv)}", file=sys.stderr)
        return exit_code(e)
    except KeyboardInterrupt as e:
        print("error: interrupted", file=sys.stderr)
        return exit_code(e)
    except Exception as e:  # noqa: BLE001 - last line of defence: one line, not a traceback
        if os.environ.get("LEANVISION_DEBUG"):
            raise
        print(f"error: {first_line(e, with_type=True, limit=ERROR_CHARS)} (set LEANVISION_DEBUG=1 for the traceback)",
              file=sys.stderr)
        return exit_code(e)


if __name__ == "__main__":
    sys.exit(main())
