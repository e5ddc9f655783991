"""What each ingredient of the colour `fast` recipe contributes: the recipe, then one ingredient changed at a time.

Every row trains whitenet with `--recipe fast` on the CIFAR-10 training split (45,000 images; 5,000 held out) and
reports the **validation** accuracy (the test split is not touched: ingredients were chosen on validation), the
training time and images/s, all measured in this one process, one row after another (nothing else running).
Flip test-time augmentation needs no retraining: its row is the full recipe's model evaluated without the mirror view.

Usage: python benchmarks/colour_ablation.py --cifar ../shared/data/cifar10/jpg [--epochs 8] [--rows all]
       python benchmarks/colour_ablation.py --cifar DIR --tiny   (a correctness check on 1,000 images, 1 epoch)
If `cifar10/jpg`'s two links arrived as small text files (a copy without symlinks), make the root
yourself: mkdir -p /tmp/cifar && ln -s "$PWD/../shared/data/cifar10/train_jpg" /tmp/cifar/train
          && ln -s "$PWD/../shared/data/cifar10/test_jpg" /tmp/cifar/test   (then pass --cifar /tmp/cifar)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
import time
from pathlib import Path

import torch

from leanvision.config import TrainConfig
from leanvision.data import load_dataset
from leanvision.measure import environment
from leanvision.models import create_model
from leanvision.recipes import resolve_recipe
from leanvision.runtimes.eager import predict_logits
from leanvision.train import fit

ROWS = {  # name: (TrainConfig changes, model kwargs changes, what it removes)
    "recipe": ({}, {}, "the fast recipe as shipped"),
    "no-whitening": ({}, {"skip_whitening": True}, "2x2 stem left at its random init (frozen) instead of whitened"),
    "no-lookahead": ({"lookahead": False}, {}, "no lookahead weight averaging"),
    "no-label-smoothing": ({"label_smoothing": 0.0}, {}, "label smoothing 0.2 -> 0"),
    "bn-lr-x1": ({"norm_lr_scale": 1.0}, {}, "BatchNorm shifts at the base learning rate (not 64x)"),
    "crop-flip": ({"augment": "crop-flip"}, {}, "4-px zero-padded crops instead of 2-px mirrored translations"),
    "relu": ({}, {"act": "relu"}, "ReLU instead of GELU"),
}


def run_row(name: str, dataset, epochs: int) -> dict:
    train_changes, model_changes, what = ROWS[name]
    recipe = resolve_recipe("fast", dataset.input_shape, "cpu")
    cfg = TrainConfig(**{**recipe.train, "epochs": epochs, "device": "cpu", **train_changes})
    kwargs = {**recipe.model_kwargs, **{k: v for k, v in model_changes.items() if k != "skip_whitening"}}
    torch.manual_seed(0)
    c, h, w = dataset.input_shape
    model = create_model(recipe.model, num_classes=dataset.num_classes, in_chans=c, img_size=(h, w), **kwargs)
    if model_changes.get("skip_whitening"):
        model.whitened.fill_(True)  # fit's data-dependent init then leaves the stem as built
    with tempfile.TemporaryDirectory() as out:
        start = time.perf_counter()
        history = fit(model, dataset, cfg, out, progress=False)
        train_s = time.perf_counter() - start
    row = {"row": name, "change": what, "val_accuracy": _val_accuracy(model, dataset), "train_s": train_s,
           "images_per_s": sum(len(dataset.train) for _ in history) / sum(h["epoch_time_s"] for h in history),
           "epochs": len(history)}
    if name == "recipe":
        model.flip_tta = False
        tta_off = {"row": "no-flip-tta", "change": "evaluated without the mirror view (same weights)",
                   "val_accuracy": _val_accuracy(model, dataset), "train_s": train_s,
                   "images_per_s": row["images_per_s"], "epochs": row["epochs"]}
        return [row, tta_off]
    return [row]


def _val_accuracy(model, dataset) -> float:
    logits, labels = predict_logits(model, dataset.val, dataset.mean, dataset.std, torch.device("cpu"))
    return (logits.argmax(1) == labels).float().mean().item()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cifar", required=True, help="CIFAR-10 root with train/ and test/ class folders")
    parser.add_argument("--epochs", type=int, default=None, help="default: the fast recipe's")
    parser.add_argument("--rows", default="all", help=f"comma-separated subset of {', '.join(ROWS)}")
    parser.add_argument("--tiny", action="store_true", help="1,000 training images, 1 epoch: a correctness check")
    args = parser.parse_args()
    rows = list(ROWS) if args.rows == "all" else args.rows.split(",")
    dataset = load_dataset(args.cifar)
    if args.tiny:
        pick = torch.Generator().manual_seed(0)  # random subsets: the splits are ordered by class
        dataset = dataclasses.replace(dataset, train=dataset.train.subset(torch.randperm(len(dataset.train),
                                                                                         generator=pick)[:1000]),
                                      val=dataset.val.subset(torch.randperm(len(dataset.val), generator=pick)[:500]))
    epochs = 1 if args.tiny else (args.epochs or resolve_recipe("fast", dataset.input_shape, "cpu").train["epochs"])
    results = []
    for name in rows:
        for row in run_row(name, dataset, epochs):
            results.append(row)
            print(json.dumps(row), flush=True)
    env = environment()
    full = results[0]["val_accuracy"] if results and results[0]["row"] == "recipe" else None
    print(f"\nwhitenet fast recipe, {epochs} epochs, {len(dataset.train):,} training images, validation accuracy "
          f"({len(dataset.val):,} images), bf16 training on {env['cpu_model']} ({env['torch_threads']} threads)")
    print(f"{'row':<20}{'val acc':>9}{'vs recipe':>11}{'train s':>9}{'img/s':>8}  change")
    for r in results:
        delta = f"{100 * (r['val_accuracy'] - full):+.2f} pp" if full is not None else "-"
        print(f"{r['row']:<20}{r['val_accuracy']:>9.4f}{delta:>11}{r['train_s']:>9.1f}{r['images_per_s']:>8.0f}"
              f"  {r['change']}")
    out = Path(__file__).parent / "out" / "colour_ablation.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"epochs": epochs, "rows": results, "environment": env}, indent=2))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
