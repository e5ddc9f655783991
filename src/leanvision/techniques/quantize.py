"""int8 quantization through ONNX Runtime: static (QDQ, calibrated), dynamic (Dense only) and quantization-aware.

Static int8 (`mode=int8`): the folded fp32 model is exported to ONNX, pre-processed (`quant_pre_process`), and
quantized by `quantize_static` in QDQ format with per-channel symmetric int8 weights and per-tensor activations whose
ranges come from a calibration set (MinMax). ONNX Runtime fuses the QDQ pairs into QLinearConv / QGemm kernels.
Activations are uint8 (asymmetric) by default: x86 VNNI's `vpdpbusd` multiplies unsigned 8-bit activations by
signed 8-bit weights natively (U8S8), both types ran at the same speed on an AVX-512 VNNI CPU here, and a uint8
range spends all 256 levels on the non-negative post-ReLU values where int8 would waste half of them. On x86 CPUs
without VNNI or AMX, ORT multiplies U8S8 with `vpmaddubsw`, whose 16-bit pair sums can saturate (ONNX Runtime's and
OpenVINO's documented caveat; whitenet on CIFAR-10 lost 8.3 pp that way on an AVX2 EPYC, 0.1 pp on a VNNI Xeon):
`reduce_range` quantizes weights to 7 bits so the sums cannot saturate. Its default (None) turns it on when the CPU
that quantizes (and measures) has no int8 dot-product instructions, which is where leanvision expects the model to
run; `reduce_range=false` forces 8-bit weights, and QAT fake-quantizes with the same range it will be converted to.

A stem convolution with a tiny reduction (in_channels x kh x kw < 32, e.g. a 3x3 conv on 1-channel images) is kept in
fp32 with the pooling right after it: its int8 kernel measured 5x slower than the fp32 one here (12 ms vs 2.2 ms per
256 MNIST images), because a 9-long dot product cannot amortize the int8 packing. ORT's QDQ propagation would move
the first quantize node above that pooling and run it in a slow 8-bit NCHW kernel, so the session disables
`QDQPropagationTransformer` for such models (stored in model.json, applied by `OnnxModule` and the ORT runtime).
ORT then hands the fp32 stem's output to the int8 part as `ReorderOutput -> QuantizeLinear -> Transpose`; sessions
made by leanvision (`runtimes.ort_session`) fuse that transpose into the ReorderOutput at load time, bit for bit (the
transpose cost more than the int8 GlobalAveragePool, Gemm and quantize steps together at 2 threads).
A global average pool written as ReduceMean is rewritten as GlobalAveragePool first (same numbers): ORT has an int8
NHWC kernel for the latter only, which saves a dequantize and a transpose of the last feature map.

Dynamic int8 (`mode=int8-dynamic`) quantizes weights ahead of time and activations on the fly, for MatMul/Gemm
(Dense) layers only: ORT's dynamic ConvInteger path measured about 9x slower than fp32 convolution here, so
convolutions stay fp32 and a CNN gains little. Use static int8 for CNNs.

QAT (`mode=qat`): see `qat.py`; the fine-tuned weights are converted by the same static path.
"""

from __future__ import annotations

import contextlib
import logging
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data.normalize import normalizer
from ..errors import LeanvisionError
from ..measure.env import cpu_features, x86_without_int8_dot
from ..runtimes.export import export_onnx
from ..runtimes.graph import spatial_means_to_global_pool
from ..runtimes.onnx_model import OnnxModule
from . import qat
from .base import Context, TechniqueConfig, check_choice, check_range, finetune_, register_technique
from .onnx_graph import graph_coverage, stem_nodes

MODES = ("int8", "int8-dynamic", "qat")
NO_PROPAGATION = {"disabled_optimizers": ["QDQPropagationTransformer"]}


@dataclass(frozen=True)
class QuantizeConfig(TechniqueConfig):
    """int8 quantization of a trained model into an ONNX Runtime model. Spec: `"quantize:mode=int8"`."""

    mode: str = "int8"  # int8 (static, calibrated; convs included) | int8-dynamic (Dense layers only) | qat
    calibration_size: int = 512  # training images used to calibrate activation ranges (int8, qat)
    activation_type: str = "uint8"  # uint8 (U8S8: VNNI's native form) | int8 (S8S8)
    calibrate_method: str = "minmax"  # minmax | entropy | percentile (ORT calibrators)
    keep_stem_fp32: bool = True  # keep a tiny-reduction first conv (+ its pooling) in fp32: faster on CPU
    reduce_range: bool | None = None  # 7-bit weights against uint8 x int8 saturation; None: on CPUs without VNNI/AMX
    finetune_epochs: int = 1  # qat: epochs of fake-quant fine-tuning
    learning_rate: float | None = None  # qat: fine-tuning peak learning rate; None = 0.1x the source run's

    def __post_init__(self) -> None:
        check_choice("quantize", "mode", self.mode, MODES)
        check_choice("quantize", "activation_type", self.activation_type, ("uint8", "int8"))
        check_choice("quantize", "calibrate_method", self.calibrate_method, ("minmax", "entropy", "percentile"))
        check_range("quantize", "calibration_size", self.calibration_size, 1, 1_000_000)
        check_range("quantize", "finetune_epochs", self.finetune_epochs, 0, 10_000)

    def unused(self) -> frozenset[str]:
        return frozenset() if self.mode == "qat" else frozenset({"finetune_epochs", "learning_rate"})



def calibration_images(dataset, size: int, seed: int = 0) -> torch.Tensor:
    """`size` normalized training images (a seeded random sample), float (N, C, H, W) on the CPU."""
    normalize = normalizer(dataset.mean, dataset.std, torch.device("cpu"))
    chunks, total = [], 0
    for xb, _ in dataset.train.batches(min(size, 256), shuffle=True, generator=torch.Generator().manual_seed(seed)):
        chunks.append(normalize(xb) if xb.dtype == torch.uint8 else xb.float())
        total += len(xb)
        if total >= size:
            break
    return torch.cat(chunks)[:size]


@contextlib.contextmanager
def _quiet():
    logger = logging.getLogger()
    level = logger.level
    logger.setLevel(logging.ERROR)  # ORT's quantizer logs through the root logger
    try:
        yield
    finally:
        logger.setLevel(level)


def reduce_range(config: QuantizeConfig) -> bool:
    """The `reduce_range` to apply: the config's, else True on an x86 CPU without int8 dot-product instructions."""
    if config.reduce_range is not None:
        return config.reduce_range
    return x86_without_int8_dot(cpu_features())


def saturation_warning(record: dict[str, Any] | None, source: str | None = None) -> str | None:
    """A warning when an int8 model with 8-bit weights, quantized (and measured) on a CPU with VNNI/AMX or before
    leanvision recorded the CPU, is loaded on an x86 CPU without int8 dot-product instructions, where its uint8 x
    int8 products can saturate and its accuracy can fall below what was measured."""
    if not record or record.get("mode") not in ("int8", "qat") or record.get("reduce_range") is True:
        return None
    if not reduce_range(QuantizeConfig()):  # this CPU does not saturate (or is not x86)
        return None
    if x86_without_int8_dot(record.get("cpu")):  # quantized and measured on such a CPU already
        return None
    where = (f"by {record['cpu']['cpu_int8']}" if record.get("cpu") else "on an unrecorded CPU")
    return (f"this int8 model has 8-bit weights and was measured {where}, but this CPU has no VNNI/AMX, where ONNX "
            "Runtime's uint8 x int8 products can saturate: its accuracy here may be lower than recorded; measure it "
            f"here (leanvision evaluate), or re-quantize here (leanvision optimize {source or 'SOURCE_RUN'} "
            "--quantize int8 uses 7-bit weights on this CPU)")


def quantize_onnx(model: nn.Module, input_shape: tuple[int, int, int], out_path: Path, config: QuantizeConfig,
                  calibration: torch.Tensor | None) -> dict[str, Any]:
    """Export `model` (fp32, folded) and write its int8 ONNX model to `out_path`; returns the quantization record."""
    import onnx
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quant_pre_process,
        quantize_dynamic,
        quantize_static,
    )

    reduce = reduce_range(config)
    with tempfile.TemporaryDirectory(prefix="leanvision-quant-") as tmp, _quiet():
        fp32, pre = Path(tmp) / "fp32.onnx", Path(tmp) / "pre.onnx"
        export_onnx(model, input_shape, fp32)
        quant_pre_process(str(fp32), str(pre), skip_symbolic_shape=True)
        record: dict[str, Any] = {"mode": config.mode, "format": "QDQ", "weights": "int8 symmetric",
                                  "fp32_onnx_bytes": fp32.stat().st_size}
        if config.mode == "int8-dynamic":
            quantize_dynamic(str(pre), str(out_path), weight_type=QuantType.QInt8, per_channel=False,
                             op_types_to_quantize=["MatMul", "Gemm"])
            record.update(format="dynamic (weights int8, activations quantized at run time)", session={})
        else:
            graph = onnx.load(str(pre))
            if spatial_means_to_global_pool(graph):
                onnx.save(graph, str(pre))
            excluded = stem_nodes(graph) if config.keep_stem_fp32 else []
            batches = [{"input": calibration[i:i + 64].numpy()} for i in range(0, len(calibration), 64)]

            class Reader(CalibrationDataReader):
                def __init__(self):
                    self.items = iter(batches)

                def get_next(self):
                    return next(self.items, None)

            activation = QuantType.QUInt8 if config.activation_type == "uint8" else QuantType.QInt8
            method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
                      "percentile": CalibrationMethod.Percentile}[config.calibrate_method]
            quantize_static(str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                            weight_type=QuantType.QInt8, activation_type=activation, calibrate_method=method,
                            nodes_to_exclude=excluded or None, reduce_range=reduce)
            weights = "int8 symmetric, per output channel" + (", 7-bit range (reduce_range)" if reduce else "")
            record.update(weights=weights, activations=f"{config.activation_type} per tensor",
                          calibration_size=len(calibration), calibrate_method=config.calibrate_method,
                          fp32_nodes=excluded, session=NO_PROPAGATION if excluded else {}, reduce_range=reduce,
                          cpu=cpu_features())
    record["coverage"] = graph_coverage(out_path, record["session"])
    return record


def coverage_note(record: dict[str, Any]) -> str:
    """One honest line on what runs in int8, from the optimized graph (not from intentions)."""
    i, f = record["coverage"]["int8"], record["coverage"]["fp32"]
    text = (f"{record['mode']}: int8 kernels for {i['conv']} conv and {i['dense']} dense layer(s); "
            f"fp32 for {f['conv']} conv and {f['dense']} dense layer(s)")
    if record["mode"] == "int8-dynamic":
        text += "; dynamic int8 covers only the Dense (MatMul/Gemm) layer(s), convolutions stay fp32"
    elif record.get("fp32_nodes"):
        text += " (the tiny-reduction stem conv is kept fp32 on purpose: its int8 kernel is slower)"
    if record.get("reduce_range"):
        text += ("; weights in 7 bits (reduce_range), because 8-bit uint8 x int8 products can saturate on CPUs "
                 "without VNNI/AMX such as this one (quantize:reduce_range=false forces 8 bits)")
    elif record.get("mode") != "int8-dynamic" and x86_without_int8_dot(record.get("cpu")):
        text += ("; 8-bit weights on a CPU without VNNI/AMX: products can saturate, so check the accuracy change above "
                 "(quantize:reduce_range=true avoids it)")
    return text


@register_technique("quantize", QuantizeConfig)
def quantize_(model: nn.Module, config: QuantizeConfig, ctx: Context) -> nn.Module:
    """Technique entry point: write `model.onnx` (int8) into the new run and return it as an `OnnxModule`.

    The model should be folded already (the optimize pipeline folds before quantizing).
    Example: `int8 = quantize_(model, QuantizeConfig(mode="int8"), ctx)`.
    """
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        raise LeanvisionError("Quantization needs onnxruntime, a dependency of leanvision that is missing here. "
                              "Reinstall it: pip install 'onnxruntime>=1.18'") \
            from None
    model = model.cpu().eval()
    calibration = None if config.mode == "int8-dynamic" else calibration_images(ctx.dataset, config.calibration_size)
    fake_quant = None
    if config.mode == "qat":
        qat.prepare_(model, ctx.input_shape, config.activation_type, keep_stem_fp32=config.keep_stem_fp32,
                     reduce_range=reduce_range(config))
        qat.calibrate_(model, calibration)
        finetune_(model, ctx, config.finetune_epochs, "qat", config.learning_rate)
        qat.calibrate_(model, calibration)  # the final ranges: the same MinMax over the same images as ORT's
        fake_quant = qat.fake_quant_copy(model)
        qat.strip_(model)
    out = ctx.work_dir / "model.onnx"
    record = quantize_onnx(model, ctx.input_shape, out, config, calibration)
    int8 = OnnxModule(out, record["session"])
    if fake_quant is not None:
        record["conversion"] = ("QAT fine-tuned weights converted by ORT quantize_static (QDQ); activation ranges "
                                "re-calibrated with the same MinMax rule on the same images as the fake-quant model")
        record["qat_agreement"] = qat.agreement(fake_quant, int8, ctx.dataset)
    ctx.info["quantization"] = record
    ctx.notes.append(coverage_note(record))
    return int8
