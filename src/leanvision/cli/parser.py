"""`build_parser`: every subcommand and its flags, generated from the config dataclasses (cliparse)."""

from __future__ import annotations

import re

from jsonargparse import ArgumentParser

from .. import __version__
from ..cliparse import add_dataclass_flags, polish
from ..config import (
    BenchConfig,
    DataConfig,
    ExportConfig,
    OptimizeConfig,
    RunConfig,
    RunSource,
    StudyConfig,
    TrainConfig,
)
from ..search.cli import search_parser  # light: Optuna loads only when `search` runs

ALIASES = {"learning_rate": ["--lr"]}


DESCRIPTION = ("Make image classifiers small and fast, and measure it: train a model, compress it (prune, distill, "
               "int8), compare variants in a report, export, benchmark and serve it. Start with `leanvision study`; "
               "`leanvision COMMAND --help` shows a command's options.")


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
    sub.add_subcommand("search", search_parser(), help="search for the most accurate model within a latency/size "
                                                       "budget (Optuna)")
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
