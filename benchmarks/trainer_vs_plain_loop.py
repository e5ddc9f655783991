"""Is leanvision's trainer at least as fast as a plain hand-written PyTorch loop?

Trains `seed-baseline` on full MNIST for one epoch, batch 128, Adam 1e-3, in one process: a minimal hand-written
loop (randperm indexing of a pre-normalized float tensor, forward, cross-entropy, backward, step) against
`leanvision.train.fit` (uint8 batches normalized on the fly, metrics, checkpoints, progress), for fp32 and bf16
autocast. Prints both times and the ratio and writes benchmarks/out/trainer_vs_plain_loop.json.

Usage: python benchmarks/trainer_vs_plain_loop.py [--data-dir ../shared/data] [--precisions fp32,bf16]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from leanvision.config import TrainConfig
from leanvision.data import load_dataset
from leanvision.measure import environment
from leanvision.models import create_model
from leanvision.recipes import keras
from leanvision.train import fit


def plain_loop(dataset, precision: str, seed: int) -> tuple[float, float]:
    torch.manual_seed(seed)
    model = create_model("seed-baseline", num_classes=10, in_chans=1, img_size=28)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    mean, std = dataset.mean[0], dataset.std[0]
    x_all = (dataset.train.images.float() / 255 - mean) / std
    y_all = dataset.train.labels
    start = time.perf_counter()
    model.train()
    perm = torch.randperm(len(y_all))
    for i in range(0, len(perm), 128):
        idx = perm[i:i + 128]
        ctx = torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()
        with ctx:
            logits = model(x_all[idx])
        loss = F.cross_entropy(logits.float(), y_all[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    elapsed = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        x_test = (dataset.test.images.float() / 255 - mean) / std
        acc = (model(x_test).argmax(1) == dataset.test.labels).float().mean().item()
    return elapsed, acc


def leanvision_fit(dataset, precision: str, seed: int) -> tuple[float, float]:
    torch.manual_seed(seed)
    model = create_model("seed-baseline", num_classes=10, in_chans=1, img_size=28)
    cfg = TrainConfig(**{**keras(dataset.input_shape).train, "epochs": 1, "precision": precision, "seed": seed,
                         "device": "cpu"})  # constant Adam 1e-3, batch 128: what the plain loop does
    with tempfile.TemporaryDirectory() as out:
        history = fit(model, dataset, cfg, out, progress=False)
    model.eval()
    with torch.no_grad():
        x_test = (dataset.test.images.float() / 255 - dataset.mean[0]) / dataset.std[0]
        acc = (model(x_test).argmax(1) == dataset.test.labels).float().mean().item()
    return history[0]["epoch_time_s"], acc


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=2, help="runs of each, alternating; medians are reported")
    args = parser.parse_args()
    # val_fraction=0: both loops see the same 60,000 training images
    dataset = load_dataset("mnist", args.data_dir, val_fraction=0.0, download=False)
    rows = []
    for precision in args.precisions.split(","):
        plain, lv = [], []
        for r in range(args.repeats):  # alternate which goes first so drift hits both alike
            pair = [("plain", plain_loop), ("lv", leanvision_fit)]
            for tag, fn in pair if r % 2 == 0 else pair[::-1]:
                (plain if tag == "plain" else lv).append(fn(dataset, precision, args.seed))
        plain_s, lv_s = float(np.median([t for t, _ in plain])), float(np.median([t for t, _ in lv]))
        rows.append({"precision": precision, "plain_loop_s": plain_s, "leanvision_s": lv_s,
                     "ratio_leanvision_over_plain": lv_s / plain_s, "plain_test_accuracy": plain[0][1],
                     "leanvision_test_accuracy": lv[0][1], "repeats": args.repeats,
                     "plain_loop_s_all": [t for t, _ in plain], "leanvision_s_all": [t for t, _ in lv]})
    print(f"seed-baseline, MNIST 60,000 train images, 1 epoch, batch 128, Adam 1e-3, CPU, median of {args.repeats}, "
          f"{torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"{'precision':<10}{'plain loop s':>14}{'leanvision s':>14}{'ratio':>8}{'plain acc':>11}{'lv acc':>9}")
    for r in rows:
        print(f"{r['precision']:<10}{r['plain_loop_s']:>14.2f}{r['leanvision_s']:>14.2f}"
              f"{r['ratio_leanvision_over_plain']:>8.3f}{r['plain_test_accuracy']:>11.4f}"
              f"{r['leanvision_test_accuracy']:>9.4f}")
    out = Path(__file__).parent / "out" / "trainer_vs_plain_loop.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"rows": rows, "environment": environment(torch.device("cpu"))}, indent=2))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
