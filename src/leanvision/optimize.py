"""`leanvision optimize`: compress a trained run into a new run directory, measuring what every step bought.

The chain runs in a fixed order: distill (retrain with a teacher) -> prune (+ fine-tune) -> fold (Conv-BN) ->
quantize (int8 ONNX Runtime model). After every step the model is measured the same way (parameters, MACs per
image, test accuracy, file size; for int8 also ONNX Runtime latency and throughput against the fp32 model), so a
step that does not pay shows up as such. The new run directory is an ordinary run: `evaluate`, `predict`, `bench`
and `export` accept it (pruned/folded runs rebuild from model.json; int8 runs load model.onnx into ONNX Runtime).
(Over 300 lines: the chain, the one measurement after each step and the step table read as one sequence; the
techniques themselves live in `techniques/`, the run format in `rundir`.)
"""

from __future__ import annotations

import copy
import shutil
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import save as safetensors_bytes
from torch import nn

from .config import OptimizeConfig
from .diagnose import int8_cpu_reason, spread_verdict
from .errors import LeanvisionError
from .health import step_warning
from .io import read_json
from .measure import count_macs, count_params, measure_latency, speed_b1_b256
from .measure.env import cpu_features
from .rundir import (
    CUSTOM_PREFIX,
    Run,
    config_from_run,
    is_onnx,
    load_run,
    read_model_meta,
    rebuild_model,
    write_config,
    write_model_meta,
    write_result,
    write_weights,
)
from .runs import dataset_summary
from .runtimes import RUNTIMES, get_runtime
from .runtimes.eager import predict_logits
from .techniques import (
    Context,
    DistillConfig,
    FoldConfig,
    PruneConfig,
    QuantizeConfig,
    TechniqueConfig,
    apply_,
    parse_technique,
    shape_overrides,
)

STAGES = ("distill", "prune", "fold", "quantize")  # the one order a chain runs in


def build_chain(*, prune: float | None = None, prune_method: str | None = None, unstructured: float | None = None,
                quantize: str | None = None, distill_from: str | None = None, alpha: float | None = None,
                temperature: float | None = None, finetune_epochs: int | None = None,
                calibration_size: int | None = None, fold: bool = OptimizeConfig.fold, round_to: int | None = None,
                techniques: Sequence[TechniqueConfig | str | dict] = ()) -> list[TechniqueConfig]:
    """The technique chain for the shortcut options plus any technique specs, in the one order they can run
    (distill -> prune -> fold -> quantize), validated. An option left None keeps the technique's own default.

    Example: `build_chain(prune=0.5, quantize="int8") == build_chain(techniques=["prune:ratio=0.5", "quantize"])`.
    """
    def given(**values: Any) -> dict[str, Any]:
        return {k: v for k, v in values.items() if v is not None}

    chain: list[TechniqueConfig] = []
    if round_to is not None and prune is None:
        raise LeanvisionError(f"round_to={round_to} applies to structured pruning only. Add `prune` (a ratio), or drop "
                              "`round_to`.")
    shortcut_only = {"prune_method": (prune_method, prune), "alpha": (alpha, distill_from),
                     "temperature": (temperature, distill_from), "calibration_size": (calibration_size, quantize)}
    for name, (value, needs) in shortcut_only.items():
        if value is not None and needs is None:
            owner = {"prune_method": "prune", "calibration_size": "quantize"}.get(name, "distill_from")
            raise LeanvisionError(f"{name}={value!r} applies only with `{owner}`. Add `{owner}`, or drop `{name}`.")
    if distill_from is not None:
        chain.append(DistillConfig(teacher=distill_from, **given(alpha=alpha, temperature=temperature)))
    if prune is not None:
        chain.append(PruneConfig(ratio=prune, **given(method=prune_method, finetune_epochs=finetune_epochs,
                                                      round_to=round_to)))
    if unstructured is not None:
        chain.append(PruneConfig(ratio=unstructured, structured=False, **given(finetune_epochs=finetune_epochs)))
    if quantize is not None:
        chain.append(QuantizeConfig(mode=quantize, **given(calibration_size=calibration_size,
                                                           finetune_epochs=finetune_epochs)))
    specs = [parse_technique(t) for t in techniques]
    twice = sorted({c.name for c in chain} & {c.name for c in specs})
    if twice:
        raise LeanvisionError(f"{', '.join(twice)} given twice: as an option (`prune`, `unstructured`, `quantize`, "
                              f"`distill_from`) and as a technique spec. Give each technique once.")
    chain += specs
    if fold and not any(c.name == "fold" for c in chain):
        chain.append(FoldConfig())
    chain.sort(key=lambda c: STAGES.index(c.name) if c.name in STAGES else len(STAGES))  # stable
    return order_chain(chain)


def order_chain(chain: list[TechniqueConfig | str]) -> list[TechniqueConfig]:
    """Parse and check a chain: distill first, quantize last, nothing pruned after folding; a fold is inserted
    before quantize when missing (int8 scales must see the folded weights)."""
    configs = [parse_technique(c) for c in chain]
    names = [c.name for c in configs]
    for name in ("distill", "quantize", "fold"):
        if names.count(name) > 1:
            raise LeanvisionError(f"Technique {name!r} appears {names.count(name)} times in {names}; use it once.")
    if "distill" in names and names[0] != "distill":
        raise LeanvisionError(f"distill retrains the model from scratch, so it must come first. Received: {names}.")
    if "quantize" in names and names[-1] != "quantize":
        raise LeanvisionError(f"quantize produces the final int8 model, so it must come last. Received: {names}.")
    if "fold" in names and "prune" in names[names.index("fold"):]:
        raise LeanvisionError(f"prune needs the BatchNorm layers that fold removes: put prune before fold. "
                              f"Received: {names}.")
    if "quantize" in names and "fold" not in names:
        configs.insert(len(configs) - 1, FoldConfig())
    return configs


def _accuracy(model: nn.Module, dataset) -> tuple[float, int, int]:
    _, split = dataset.evaluation_split  # test, else validation
    logits, labels = predict_logits(model, split, dataset.mean, dataset.std, torch.device("cpu"))
    correct = int((logits.argmax(1) == labels).sum())
    return correct / max(1, len(labels)), correct, len(labels)


def ort_speed(model: nn.Module, input_shape: tuple[int, int, int], repeats: int = 50) -> dict[str, float]:
    """ONNX Runtime batch-1 latency and batch-256 throughput (`speed_b1_b256`, as the study measures), plus
    batch-256 throughput in throughput mode (`onnxruntime-streams`: one single-thread session per thread)."""
    x = torch.zeros((2, *input_shape))
    speed = speed_b1_b256(get_runtime("onnxruntime").prepare(model, x), input_shape, repeats)
    streams = get_runtime("onnxruntime-streams").prepare(model, x)
    x256 = torch.randn((256, *input_shape), generator=torch.Generator().manual_seed(0))
    streamed = measure_latency(lambda: streams(x256), warmup=2, repeats=max(5, repeats // 5))
    return {**speed, "throughput_streams_images_per_s": 256 / (streamed.median_ms / 1e3), "streams": streams.streams}


def step_speed(model: nn.Module, input_shape: tuple[int, int, int], repeats: int = 50) -> dict[str, dict[str, float]]:
    """`speed_b1_b256` of a step's model on each CPU runtime that can run it: torch eager and ONNX Runtime for fp32
    models, ONNX Runtime for int8 ONNX models."""
    x = torch.zeros((2, *input_shape))
    names = [name for name in ("torch", "onnxruntime") if not is_onnx(model)
             or RUNTIMES.get(name).onnx_models]
    return {name: speed_b1_b256(get_runtime(name).prepare(model, x), input_shape, repeats) for name in names}


def measure_step(model: nn.Module, dataset, input_shape, previous: dict[str, Any] | None = None) -> dict[str, Any]:
    """Parameters, MACs, file size and test accuracy of the model after a step (int8: of its ONNX file)."""
    accuracy, correct, total = _accuracy(model, dataset)
    record: dict[str, Any] = {"accuracy": accuracy, "test_correct": correct, "test_total": total}
    if is_onnx(model):  # same network, 8-bit weights: counts carry over, the file is the ONNX model
        record.update(params=previous["params"], macs=previous["macs"], file_bytes=model.onnx_path.stat().st_size)
    else:
        state = {k: v.contiguous() for k, v in model.state_dict().items()}
        record.update(params=count_params(model), macs=count_macs(model, input_shape),
                      file_bytes=len(safetensors_bytes(state)))
        weights = [m.weight for m in model.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        record["nonzero_params"] = count_params(model) - sum(int((w == 0).sum()) for w in weights)
    return record


def summarize(step: dict[str, Any], before: dict[str, Any]) -> str:
    """One line on what a step did, from the measured numbers."""
    config = step["config"]
    label = step["step"]
    if label == "prune":
        kind = "structured" if config["structured"] else "unstructured"
        label = f"prune {config['ratio']:.0%} ({kind}, {config['method']})"
    elif label == "quantize":
        label = f"quantize {config['mode']}"
    elif label == "distill":
        label = f"distill (alpha {config['alpha']}, T {config['temperature']})"
    text = (f"{label}: {before['params']:,} -> {step['params']:,} params, {before['macs'] / 1e6:.2f}M -> "
            f"{step['macs'] / 1e6:.2f}M MACs, file {before['file_bytes'] / 1e3:,.1f} -> "
            f"{step['file_bytes'] / 1e3:,.1f} kB, accuracy {(step['accuracy'] - before['accuracy']) * 100:+.2f} pp")
    if step["step"] != "quantize" and before.get("speed") and step.get("speed"):
        changes = speed_change(step, before)
        if same_graph(step, before):
            text += (f", speed on {', '.join(changes)}: same inference graph (same parameters and MACs), so not "
                     "measurably faster (any measured gap is timing noise)")
        else:
            text += ", " + ", ".join(f"{name} batch-1 latency {_verdict_text(*c['latency_b1'])}, batch-256 throughput "
                                     f"{_verdict_text(*c['throughput_b256'])}" for name, c in changes.items())
    speed = step.get("onnxruntime")
    if speed:
        fp32, int8 = speed["fp32"], speed["int8"]
        b256 = spread_verdict(*(256e3 / int8["throughput_images_per_s"],) * 2,
                              *(256e3 / fp32["throughput_images_per_s"],) * 2)
        b1 = spread_verdict(int8["latency_b1_median_ms"], int8["latency_b1_p95_ms"], fp32["latency_b1_median_ms"],
                            fp32["latency_b1_p95_ms"])
        text += (f", int8 vs fp32 ONNX Runtime (cpu): batch-256 throughput {fp32['throughput_images_per_s']:,.0f} -> "
                 f"{int8['throughput_images_per_s']:,.0f} img/s ({_verdict_text(*b256)}; "
                 f"{speed['throughput_speedup_streams']:.2f}x in throughput mode, {int8['streams']} single-thread "
                 f"sessions; {_best_mode_ratio(fp32, int8):.2f}x each in its faster mode), batch-1 latency "
                 f"{fp32['latency_b1_median_ms']:.3f} -> "
                 f"{int8['latency_b1_median_ms']:.3f} ms median ({_verdict_text(*b1)})")
        if b256[0] != "faster" and config["mode"] == "int8-dynamic":
            text += " - NOT faster than fp32: the convolutions, which hold most of the MACs, stay fp32"
        elif b256[0] != "faster" and int8_cpu_reason(speed.get("cpu")):
            text += f" - NOT faster than fp32 here: {int8_cpu_reason(speed.get('cpu'))}"
        elif b256[0] != "faster":
            text += (" - NOT faster than fp32 here: for a model this small, quantize/dequantize and layout changes "
                     "eat the int8 gain (or the timing was disturbed; re-measure with `leanvision bench`)")
    return text + "".join(f"; {note}" for note in step["notes"])


def _best_mode_ratio(fp32: dict[str, float], int8: dict[str, float]) -> float:
    """int8 over fp32 batch-256 throughput, each in its faster ONNX Runtime mode (one session, or one per thread)."""
    def best(speed: dict[str, float]) -> float:
        return max(speed["throughput_images_per_s"], speed.get("throughput_streams_images_per_s") or 0.0)

    return best(int8) / best(fp32)


def _warn_weaker_teacher(configs: list[TechniqueConfig], src: Path) -> None:
    """One line on stderr when the distillation teacher's recorded test accuracy is below the student run's."""
    teacher = next((c.teacher for c in configs if c.name == "distill"), None)
    if teacher is None or not (Path(teacher) / "result.json").is_file() or not (src / "result.json").is_file():
        return
    t_acc = read_json(Path(teacher) / "result.json").get("test_accuracy")
    s_acc = read_json(src / "result.json").get("test_accuracy")
    if isinstance(t_acc, (int, float)) and isinstance(s_acc, (int, float)) and t_acc < s_acc:
        print(f"warning: teacher {teacher} has a lower recorded test accuracy ({t_acc:.2%}) than the student run {src} "
              f"({s_acc:.2%}); distilling from it will likely not help.", file=sys.stderr, flush=True)


def same_graph(step: dict[str, Any], before: dict[str, Any]) -> bool:
    """Same parameters and MACs and not quantized: the same dense inference graph as before the step."""
    return step["params"] == before["params"] and step["macs"] == before["macs"] and step["step"] != "quantize"


def speed_change(step: dict[str, Any], before: dict[str, Any]) -> dict[str, dict[str, tuple[str, float]]]:
    """Per runtime timed both before and after a step: (verdict, ratio) for batch-1 latency and batch-256 throughput
    by the study's measured-spread rule (`diagnose.spread_verdict`; batch 256 has no p95, so its noise floor only)."""
    out = {}
    for name, after in (step.get("speed") or {}).items():
        prev = (before.get("speed") or {}).get(name)
        keys = ("latency_b1_median_ms", "latency_b1_p95_ms", "throughput_images_per_s")
        if not prev or any(k not in after or k not in prev for k in keys):
            continue
        b256, prev_b256 = 256e3 / after["throughput_images_per_s"], 256e3 / prev["throughput_images_per_s"]
        out[name] = {"latency_b1": spread_verdict(after["latency_b1_median_ms"], after["latency_b1_p95_ms"],
                                                  prev["latency_b1_median_ms"], prev["latency_b1_p95_ms"]),
                     "throughput_b256": spread_verdict(b256, b256, prev_b256, prev_b256)}
    return out


def _verdict_text(verdict: str, ratio: float) -> str:
    return {"faster": f"{ratio:.2f}x faster", "slower": f"{1 / ratio:.2f}x SLOWER",
            "same": "not measurably faster (within the measured spread)"}.get(verdict, "not measured")


def optimize_run(run_dir, techniques: list[TechniqueConfig | str], out_dir: str | Path, *,
                 dataset=None, data_dir: str | None = None, progress: bool = True, overwrite: bool = False,
                 repeats: int = 50, log=None, model: nn.Module | None = None) -> dict[str, Any]:
    """Apply a technique chain to a trained run and write the result as a new run; returns result.json's content.

    `run_dir`: a run directory or a loaded `Run`; `model`: the module instance for a run directory trained from your
    own nn.Module (reload the result with `load_run(out_dir, model=YourNet(...))`). The given module or Run's model
    is left unchanged: the chain works on a copy.

    `log(text)`, when given, receives the start block: the chain as run and the dataset summary.

    Example: `optimize_run("runs/compact", ["prune:ratio=0.5,finetune_epochs=1", "quantize:mode=int8"], "runs/c8")`.
    """
    configs = order_chain(list(techniques))  # typed and validated before any work
    given = run_dir if isinstance(run_dir, Run) else None
    src, out = (given.path if given is not None else Path(run_dir)), Path(out_dir)
    meta = read_model_meta(src)
    if meta.get("optimized_from") is not None:
        raise LeanvisionError(f"{src} was written by `leanvision optimize` (from {meta['optimized_from']}). Optimize "
                              "the source run instead; one call can combine every technique.")
    custom = str(meta.get("model") or "").startswith(CUSTOM_PREFIX)
    if custom and any(c.name == "distill" for c in configs):
        raise LeanvisionError(f"distill rebuilds the run's architecture from model.json, which {src} cannot do: it "
                              f"was trained from your own nn.Module ({meta['model'][len(CUSTOM_PREFIX):]}). Use the "
                              "other techniques, or train a student with leanvision.train(model=YourNet(...)).")
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise LeanvisionError(f"{out} already exists and is not empty. Use `overwrite` to replace it, or "
                                  "choose another `out`.")
        shutil.rmtree(out)
    _warn_weaker_teacher(configs, src)
    run = given if given is not None else load_run(src, model=model)
    dataset = dataset if dataset is not None else run.load_dataset(data_dir)
    if list(dataset.input_shape) != meta["input_shape"] or dataset.num_classes != meta["num_classes"]:
        raise LeanvisionError(f"Dataset {dataset.name} does not match run {src} (input {dataset.input_shape}, "
                              f"{dataset.num_classes} classes). Pass the dataset the run was trained on.")
    out.mkdir(parents=True, exist_ok=True)
    if log is not None:
        log("\n".join([f"optimize {src} -> {out}: {' -> '.join(c.spec() for c in configs)}",
                       *dataset_summary(dataset)]))
    shape = tuple(meta["input_shape"])
    ctx = Context(dataset=dataset, train=config_from_run(src).train, work_dir=out, meta=meta, progress=progress,
                  load_run=load_run, rebuild=lambda: rebuild_model(meta))
    # the unpruned shapes: from model.json, or from the loaded module itself for a run of the user's own nn.Module
    reference = copy.deepcopy(run.model).cpu() if custom else rebuild_model(meta)
    user_owned = given is not None or model is not None  # never prune or fold the caller's own module in place
    model: nn.Module = (copy.deepcopy(run.model) if user_owned else run.model).cpu().eval()
    current = {"step": "source", "run": str(src), **measure_step(model, dataset, shape),
               "speed": step_speed(model, shape, repeats)}
    steps, overrides, folded = [current], {}, False
    for config in configs:
        ctx.info, ctx.notes = {}, []
        fp32_model, tick = model, time.perf_counter()
        model = apply_(model, config, ctx)
        record = {"step": config.name, "config": config.to_dict(), "spec": config.spec(),
                  "time_s": time.perf_counter() - tick, **measure_step(model, dataset, shape, current), **ctx.info}
        if is_onnx(model):
            fp32, int8 = ort_speed(fp32_model, shape, repeats), ort_speed(model, shape, repeats)
            # the fp32 baseline is the previous step's ONNX Runtime measurement, the one its table row shows
            fp32.update({k: v for k, v in ((current.get("speed") or {}).get("onnxruntime") or {}).items()
                         if k in ("latency_b1_median_ms", "latency_b1_p95_ms", "throughput_images_per_s")})
            record["onnxruntime"] = {
                "fp32": fp32, "int8": int8,
                "throughput_speedup": int8["throughput_images_per_s"] / fp32["throughput_images_per_s"],
                "throughput_speedup_streams": (int8["throughput_streams_images_per_s"]
                                               / fp32["throughput_streams_images_per_s"]),
                "latency_speedup": fp32["latency_b1_median_ms"] / int8["latency_b1_median_ms"],
                "cpu": cpu_features()}
            record["speed"] = {"onnxruntime": {k: int8[k] for k in ("latency_b1_median_ms", "latency_b1_p95_ms",
                                                                     "throughput_images_per_s")}}
        else:
            record["speed"] = step_speed(model, shape, repeats)
        folded = folded or config.name == "fold"
        if not folded and not is_onnx(model):
            overrides = shape_overrides(model, reference)
        record["notes"] = list(ctx.notes)
        record["summary"] = summarize(record, current)
        record["speed_change"] = {name: {k: {"verdict": v, "ratio": r} for k, (v, r) in change.items()}
                                  for name, change in speed_change(record, current).items()}
        warning = step_warning(record, current)
        if warning:
            record["warning"] = warning
        steps.append(record)
        current = record
    final_meta = {**meta, "num_params": current["params"], "macs": current["macs"], "shape_overrides": overrides,
                  "folded": folded, "optimized_from": str(src), "techniques": [c.spec() for c in configs]}
    if is_onnx(model):
        quantization = next(s["quantization"] for s in steps if "quantization" in s)
        final_meta.update(runtime="onnxruntime", onnx_file=model.onnx_path.name, quantization=quantization)
    else:
        write_weights(out, model.state_dict(), {"optimized_from": str(src)})
    write_model_meta(out, final_meta)
    source_config = read_json(src / "config.json")
    write_config(out, {**source_config, "optimize": {"source": str(src), "techniques": final_meta["techniques"]}})
    result = {
        "model": meta.get("model") or "spec", "dataset": dataset.name, "source_run": str(src),
        "techniques": final_meta["techniques"], "num_params": current["params"], "macs": current["macs"],
        "file_bytes": current["file_bytes"], "test_accuracy": current["accuracy"],
        "test_correct": current["test_correct"], "test_total": current["test_total"],
        "source_test_accuracy": steps[0]["accuracy"], "steps": steps,
        "warnings": [s["warning"] for s in steps if s.get("warning")],
    }
    write_result(out, result)
    return result


STEP_COLUMNS = [("step", 10), ("params", 10), ("MACs", 12), ("accuracy (%)", 14), ("file (kB)", 11),
                ("torch latency b1 (ms)", 23), ("torch throughput b256 (img/s)", 31),
                ("ORT latency b1 (ms)", 21), ("ORT throughput b256 (img/s)", 29)]


def step_table(result: dict[str, Any]) -> str:
    """A plain-text table of the steps (torch and ONNX Runtime speeds, fp32 CPU; int8: ONNX Runtime only) plus
    one summary line per step, for the CLI."""
    lines = ["".join(f"{h:<{w}}" if i == 0 else f"{h:>{w}}" for i, (h, w) in enumerate(STEP_COLUMNS))]
    for s in result["steps"]:
        cells = [s["step"], f"{s['params']:,}", f"{s['macs']:,}", f"{100 * s['accuracy']:.2f}",
                 f"{s['file_bytes'] / 1e3:,.1f}"]
        for runtime in ("torch", "onnxruntime"):
            speed = (s.get("speed") or {}).get(runtime) or {}
            cells += [f"{speed['latency_b1_median_ms']:.3f}" if speed else "-",
                      f"{speed['throughput_images_per_s']:,.0f}" if speed else "-"]
        lines.append("".join(f"{c:<{w}}" if i == 0 else f"{c:>{w}}" for i, (c, (_, w)) in
                             enumerate(zip(cells, STEP_COLUMNS))))
    lines.append("(median of batch-1 calls and batch-256 throughput, fp32 on cpu unless the step is int8; "
                 "'-' = not runnable there)")
    lines += [f"- {s['summary']}" for s in result["steps"][1:]]
    return "\n".join(lines)


def optimize_variant(run_dir: str | Path, techniques: list[str], dataset, progress: bool = False,
                     repeats: int = 50) -> dict[str, Any]:
    """Study hook: optimize a variant's trained run into `<run_dir>-optimized` (replacing an older one); returns the
    fields that replace the trained run's (test accuracy) plus the techniques and their steps."""
    out = Path(run_dir).parent / f"{Path(run_dir).name}-optimized"
    result = optimize_run(run_dir, techniques, out, dataset=dataset, progress=progress, overwrite=True,
                          repeats=repeats)
    return {key: result[key] for key in ("test_accuracy", "test_correct", "test_total", "techniques", "steps")}
