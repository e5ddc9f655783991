"""What this CPU's instructions make of bf16 training and int8 inference, measured on the colour net (whitenet).

Prints the CPU's vector ISA and its int8 dot-product / native bf16 instructions (`leanvision.measure.env.cpu_features`),
then, one measurement after another in this one process (nothing else should run):
- training throughput of whitenet (32,128,128) at 32x32x3, batch 512, channels_last, SGD: fp32 vs bf16 autocast
  (median of 3 steps after one warm-up step);
- ONNX Runtime (2 threads) batch-256 throughput and batch-1 latency, fp32 vs static int8 (leanvision's `quantize`:
  QDQ, uint8 activations, int8 per-channel weights, BatchNorm folded, stem kept fp32) for widths (32,128,128) and
  (64,256,256). The weights are random (BatchNorm statistics from random batches): speed does not depend on them.
Writes benchmarks/out/cpu_instructions.json.

Usage: python benchmarks/cpu_instructions.py [--repeats 30]
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from leanvision import create_model
from leanvision.measure import environment
from leanvision.optimize import ort_speed
from leanvision.runtimes.onnx_model import OnnxModule
from leanvision.techniques.fold import fold_conv_bn_
from leanvision.techniques.quantize import QuantizeConfig, quantize_onnx

SHAPE = (3, 32, 32)


def train_speed(precision: str, batch: int = 512, steps: int = 4) -> float:
    torch.manual_seed(0)
    model = create_model("whitenet", in_chans=3)
    model.init_from_data(torch.randn(512, *SHAPE))
    model = model.to(memory_format=torch.channels_last).train()
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.01, momentum=0.9, nesterov=True)
    x = torch.randn(batch, *SHAPE).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            loss = torch.nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - start)
    return batch / statistics.median(times[1:])


def int8_speed(widths: tuple[int, int, int], repeats: int, tmp: Path) -> dict:
    torch.manual_seed(0)
    model = create_model("whitenet", in_chans=3, widths=widths).train()
    model.init_from_data(torch.randn(512, *SHAPE))  # whitening filters as training would set them
    with torch.no_grad():
        for _ in range(5):  # BatchNorm running statistics of a plausible scale
            model(torch.randn(256, *SHAPE))
    model.eval()
    fold_conv_bn_(model, SHAPE)
    path = tmp / f"int8-{widths[0]}.onnx"
    quantize_onnx(model, SHAPE, path, QuantizeConfig(), torch.randn(256, *SHAPE))
    fp32, int8 = ort_speed(model, SHAPE, repeats), ort_speed(OnnxModule(path), SHAPE, repeats)
    return {"widths": widths, "fp32": fp32, "int8": int8,
            "throughput_speedup_b256": int8["throughput_images_per_s"] / fp32["throughput_images_per_s"],
            "latency_speedup_b1": fp32["latency_b1_median_ms"] / int8["latency_b1_median_ms"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    env = environment("cpu")
    print(f"CPU {env['cpu_model']} ({env['cpu_count']} cores): vector ISA {env['cpu_isa']}, int8 dot product "
          f"{env['cpu_int8'] or 'none (no VNNI/AMX)'}, native bf16 {env['cpu_bf16'] or 'none'}; torch {env['torch']}, "
          f"onnxruntime {env['onnxruntime']}, {env['torch_threads']} threads")
    out = {"environment": env, "train": {}, "int8": []}
    for precision in ("fp32", "bf16"):
        out["train"][precision] = train_speed(precision)
        print(f"train whitenet (32,128,128), batch 512, channels_last, {precision}: "
              f"{out['train'][precision]:,.0f} img/s", flush=True)
    print(f"bf16 / fp32 training throughput: {out['train']['bf16'] / out['train']['fp32']:.2f}x")
    with tempfile.TemporaryDirectory() as tmp:
        for widths in ((32, 128, 128), (64, 256, 256)):
            row = int8_speed(widths, args.repeats, Path(tmp))
            out["int8"].append(row)
            f, q = row["fp32"], row["int8"]
            print(f"ORT whitenet {widths}: batch 256 fp32 {f['throughput_images_per_s']:,.0f} -> int8 "
                  f"{q['throughput_images_per_s']:,.0f} img/s ({row['throughput_speedup_b256']:.2f}x); batch 1 "
                  f"{f['latency_b1_median_ms']:.3f} -> {q['latency_b1_median_ms']:.3f} ms "
                  f"({row['latency_speedup_b1']:.2f}x)", flush=True)
    dest = Path(__file__).parent / "out" / "cpu_instructions.json"
    dest.parent.mkdir(exist_ok=True)
    dest.write_text(json.dumps(out, indent=2, default=str))
    print(f"wrote {dest}")


if __name__ == "__main__":
    main()
