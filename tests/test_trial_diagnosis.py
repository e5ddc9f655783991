"""A new user's trial findings: near-chance variants in studies, consistent speed verdicts, the int8 summary line,
prune/round-to warnings, CLI names in notes, under-training advice and colour inputs into a grayscale model."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from leanvision.config import DataConfig, RunConfig, TrainConfig
from leanvision.diagnose import diagnose, diagnose_variant, spread_verdict
from leanvision.health import step_warning, training_warnings
from leanvision.optimize import optimize_run, step_table, summarize
from leanvision.report import pareto_flags, write_report


def _variant(name, acc, lat, p95, params, macs, base=None, **extra):
    runtimes = {"torch": {"latency_b1_median_ms": lat, "latency_b1_p95_ms": p95, "throughput_images_per_s": 1e3 / lat,
                          "accuracy": acc, "precision": "fp32"}}
    return {"name": name, "model": name, "base": base, "description": name, "status": "ok", "params": params,
            "macs": macs, "file_bytes": 4 * params, "accuracy": acc, "accuracy_ci95": [acc - 0.02, acc + 0.02],
            "latency_b1_median_ms": lat, "latency_b1_p95_ms": p95, "throughput_images_per_s": 1e3 / lat,
            "runtimes": runtimes, "history": [], "run_dir": f"variants/{name}/seed0", **extra}


def _study(*variants):
    return {"title": "t", "dataset": {"name": "digits", "num_classes": 10, "input_shape": [1, 28, 28]},
            "settings": {}, "environment": {}, "variants": list(variants)}


CHANCE_WARNING = ("validation accuracy 10.03% after 1 epoch, 11 optimizer steps is near chance (10.00%): the model "
                  "has not learned yet; it is under-trained; train more epochs (--epochs, now 1).")


# 1. a near-chance variant is named, carries its run warnings, and stays off the headline and the Pareto fronts
def test_near_chance_variant_is_named_and_kept_off_headline_and_pareto(tmp_path):
    study = _study(_variant("baseline", 0.95, 0.50, 0.55, 100_000, 5_000_000),
                   _variant("compact", 0.1003, 0.05, 0.06, 33_338, 600_000, base="baseline",
                            warnings=[CHANCE_WARNING]))
    diagnose(study)
    text = " ".join(study["findings"])
    assert "compact did not learn: validation accuracy 10.03%" in text
    assert "Fastest at batch 1 (torch eager, fp32, CPU): baseline" in text
    assert study["variants"][1]["did_not_learn"] and not study["variants"][0]["did_not_learn"]
    assert pareto_flags(study["variants"])["latency"] == [True, False]
    write_report(study, tmp_path)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["variants"][1]["warnings"] == [CHANCE_WARNING]
    assert saved["variants"][1]["pareto"] == {"latency": False, "params": False, "macs": False}
    assert "compact did not learn" in (tmp_path / "report.md").read_text()


def test_study_variant_record_carries_its_run_warnings(tmp_path, digits):
    from leanvision.study import run_study

    plan = {"name": "one", "train": {"batch_size": 128, "learning_rate": 1e-3},
            "variants": [{"name": "compact", "model": "compact"}]}
    study = run_study(dataset="digits", plan=plan, epochs=1, out=tmp_path / "s", runtimes=("torch",), repeats=3,
                      progress=False)
    result = json.loads((tmp_path / "s" / "variants" / "compact" / "seed0" / "result.json").read_text())
    assert "warnings" in study["variants"][0]
    assert study["variants"][0]["warnings"] == result["warnings"]


# 2. one spread rule for verdicts and headlines; disturbed timings flagged, not reported as gains
def test_a_gap_far_beyond_the_steadier_sides_spread_is_faster():
    # the user's report: 0.052 ms vs 0.232 ms was "NOT measurably faster" because one p95 was far out
    assert spread_verdict(0.052, 0.30, 0.232, 0.25)[0] == "faster"
    assert spread_verdict(0.232, 0.25, 0.052, 0.30)[0] == "slower"
    assert spread_verdict(1.0, 1.3, 4.5, 9.0)[0] == "faster"  # a 4.5x gap
    assert spread_verdict(0.95, 1.2, 1.0, 1.3)[0] == "same"  # under the 10% floor
    assert spread_verdict(0.80, 1.20, 1.0, 1.05)[0] == "faster"  # 20% gap, beyond the steadier side's 0.05 ms
    assert spread_verdict(0.80, 1.30, 1.0, 1.40)[0] == "same"  # both sides spread more than the gap


def test_headline_says_tied_when_the_gap_is_not_measurable():
    study = _study(_variant("a", 0.95, 0.100, 0.140, 10_000, 1_000_000),
                   _variant("b", 0.96, 0.105, 0.150, 12_000, 1_100_000, base="a"))
    diagnose(study)
    line = next(f for f in study["findings"] if f.startswith("Fastest"))
    assert "tied" in line and "no measurable winner" in line
    assert any("NOT measurably faster" in s or "no measurable difference" in s
               for s in study["variants"][1]["diagnosis"])


def test_headline_and_diagnosis_agree_on_a_real_gap():
    study = _study(_variant("baseline", 0.97, 0.232, 0.25, 100_000, 5_000_000),
                   _variant("fast", 0.95, 0.052, 0.30, 10_000, 1_000_000, base="baseline"))
    diagnose(study)
    assert "Fastest at batch 1 (torch eager, fp32, CPU): fast at 0.052 ms" in " ".join(study["findings"])
    assert any("4.46x faster" in s for s in study["variants"][1]["diagnosis"])


def test_a_speedup_far_beyond_the_mac_ratio_with_a_noisy_tail_is_flagged_as_disturbed():
    base = _variant("baseline", 0.97, 40.09, 200.0, 100_000, 2_000_000)
    v = _variant("small", 0.96, 0.10, 0.11, 50_000, 1_000_000, base="baseline")
    text = " ".join(diagnose_variant(v, base))
    assert "400.90x" not in text.replace("measured 400.90x faster", "")
    assert "timing was disturbed" in text and "--remeasure" in text
    quiet = _variant("baseline", 0.97, 40.09, 41.0, 100_000, 2_000_000)  # a steady slow side: not flagged
    assert "disturbed" not in " ".join(diagnose_variant(v, quiet))


# 3. the int8 summary line: direction, what is compared, and the fp32 baseline the table shows
def _int8_step(fp32_b1, int8_b1, fp32_tp, int8_tp, mode="int8"):
    def speed(b1, tp):
        return {"latency_b1_median_ms": b1, "latency_b1_p95_ms": b1 * 1.05, "throughput_images_per_s": tp,
                "throughput_streams_images_per_s": tp * 1.5, "streams": 2}
    fp32, int8 = speed(fp32_b1, fp32_tp), speed(int8_b1, int8_tp)
    return {"step": "quantize", "config": {"mode": mode}, "params": 100, "macs": 1000, "file_bytes": 300,
            "accuracy": 0.95, "notes": [],
            "onnxruntime": {"fp32": fp32, "int8": int8, "throughput_speedup": int8_tp / fp32_tp,
                            "throughput_speedup_streams": 1.0, "latency_speedup": fp32_b1 / int8_b1}}


def test_int8_summary_line_uses_the_spread_rule_wording():
    before = {"params": 100, "macs": 1000, "file_bytes": 1200, "accuracy": 0.95}
    slower = summarize(_int8_step(0.10, 0.125, 16_226, 12_000, mode="int8-dynamic"), before)
    assert "int8 vs fp32 ONNX Runtime (cpu): batch-256 throughput 16,226 -> 12,000 img/s (1.35x SLOWER" in slower
    assert "batch-1 latency 0.100 -> 0.125 ms median (1.25x SLOWER)" in slower
    same = summarize(_int8_step(0.10, 0.094, 16_226, 17_000), before)
    assert "not measurably faster" in same and "NOT faster than fp32" in same
    faster = summarize(_int8_step(0.10, 0.05, 10_000, 30_000), before)
    assert "(3.00x faster" in faster and "(2.00x faster)" in faster and "NOT faster" not in faster


@pytest.fixture(scope="module")
def one_epoch_run(tmp_path_factory, digits):
    out = tmp_path_factory.mktemp("trial") / "compact"
    from leanvision.runs import train_run

    cfg = RunConfig(model="compact", data=DataConfig("digits"),
                    train=TrainConfig(epochs=1, batch_size=64, learning_rate=3e-3, device="cpu", seed=0))
    train_run(cfg, out, progress=False, dataset=digits)
    return out


def test_int8_fp32_baseline_is_the_fold_rows_measurement(one_epoch_run, tmp_path, digits):
    result = optimize_run(one_epoch_run, ["quantize:mode=int8,calibration_size=64"], tmp_path / "q",
                          dataset=digits, progress=False, repeats=3)
    fold, quant = result["steps"][-2], result["steps"][-1]
    assert fold["step"] == "fold"
    shown = fold["speed"]["onnxruntime"]["throughput_images_per_s"]
    assert quant["onnxruntime"]["fp32"]["throughput_images_per_s"] == shown
    assert f"batch-256 throughput {shown:,.0f} -> " in step_table(result)


# 4. prune that removed nothing warns, naming --round-to; explicit --round-to gets no contrary advice
def test_prune_with_a_round_to_above_the_channel_counts_warns(one_epoch_run, tmp_path, digits):
    result = optimize_run(one_epoch_run, ["prune:ratio=0.5,round_to=64,finetune_epochs=0"], tmp_path / "p",
                          dataset=digits, progress=False, repeats=3)
    prune = result["steps"][1]
    assert prune["params"] == result["steps"][0]["params"]
    assert any("prune removed nothing" in w and "round_to=64" in w for w in result["warnings"])


def test_explicit_round_to_gets_no_round_to_advice(one_epoch_run, tmp_path, digits):
    result = optimize_run(one_epoch_run, ["prune:ratio=0.5,round_to=12,finetune_epochs=0"], tmp_path / "p12",
                          dataset=digits, progress=False, repeats=3)
    notes = " ".join(result["steps"][1]["notes"])
    assert "round_to=8" not in notes
    auto = optimize_run(one_epoch_run, ["prune:ratio=0.3,finetune_epochs=0"], tmp_path / "p30",
                        dataset=digits, progress=False, repeats=3)
    notes = " ".join(auto["steps"][1]["notes"])
    if "not multiples of 8" in notes:  # the automatic rounding left odd channel counts: the advice names the argument
        assert "round_to=8" in notes


def test_step_warning_for_a_prune_that_kept_every_parameter():
    before = {"params": 33_338, "accuracy": 0.9}
    step = {"step": "prune", "config": {"structured": True, "round_to": 64, "ratio": 0.5}, "params": 33_338,
            "accuracy": 0.9}
    assert "round_to=64" in step_warning(step, before)
    assert step_warning({**step, "params": 9_000}, before) is None


# 5. CLI names and plain kwargs in user-facing text
def test_folder_note_names_the_cli_flag(tmp_path):
    from leanvision.data import load_dataset

    for cls in ("a", "b"):
        for i, size in enumerate([(20, 20), (30, 24)] * 3):
            (tmp_path / cls).mkdir(exist_ok=True)
            Image.fromarray(np.full((size[1], size[0]), 40 * i, np.uint8)).save(tmp_path / cls / f"{i}.png")
    ds = load_dataset(str(tmp_path))
    note = next(n for n in ds.notes if "different sizes" in n)
    assert "--image-size" in note


def test_train_start_block_prints_model_kwargs_plainly(digits):
    from leanvision.runs import run_summary

    cfg = RunConfig(model="fastnet", model_kwargs={"width": 32}, data=DataConfig("digits"),
                    train=TrainConfig(epochs=1, device="cpu"))
    first = run_summary(cfg, digits, "cpu").splitlines()[0]
    assert "fastnet (width=32)" in first and "{" not in first


# 6. near-chance advice: under-trained -> more epochs (BatchNorm note); lower lr only when the loss spiked
def test_near_chance_advice_depends_on_the_loss():
    falling = [{"train_loss": 2.2, "train_accuracy": 0.15, "val_accuracy": 0.1003}]
    text = " ".join(training_warnings(falling, 10, steps_per_epoch=11, learning_rate=1e-3, batchnorm=True))
    assert "under-trained" in text and "`epochs`" in text and "BatchNorm" in text and "learning_rate" not in text
    spiked = [{"train_loss": 2.0, "val_accuracy": 0.5}, {"train_loss": 9.0, "val_accuracy": 0.1}]
    text = " ".join(training_warnings(spiked, 10, learning_rate=0.5))
    assert "lower the learning rate (`learning_rate`, now 0.5)" in text and "under-trained" not in text


# 7. colour photos into a grayscale model: one conversion notice, no polarity claim
def test_colour_inputs_into_a_grayscale_model_are_named_not_called_inverted(one_epoch_run, tmp_path):
    from leanvision.evaluate import polarity_warning, predict_images
    from leanvision.runs import load_run

    run = load_run(one_epoch_run)
    rng = np.random.default_rng(0)
    files = []
    for i in range(4):  # bright colour photos: as grayscale they would look "inverted" against dark digits
        path = tmp_path / f"photo{i}.jpg"
        Image.fromarray(rng.integers(150, 255, (32, 32, 3), dtype=np.uint8)).save(path)
        files.append(str(path))
    results = predict_images(run, files + [np.full((28, 28, 3), 220, np.uint8)])
    assert not any(r["inverted_polarity"] for r in results)
    warning = polarity_warning(results, run.meta["mean"])
    assert warning.startswith("converted 5 colour image(s) to grayscale: the model was trained on 1-channel images")
    gray = tmp_path / "gray.png"  # a grayscale image with inverted polarity is still flagged
    Image.fromarray(np.full((28, 28), 230, np.uint8)).save(gray)
    results = predict_images(run, [str(gray)])
    assert results[0]["inverted_polarity"] and "converted" not in polarity_warning(results, run.meta["mean"])


# 8. int8 and bf16 on CPUs without the instructions for them: said plainly, from what was recorded at measure time
def test_cpu_features_name_the_int8_and_bf16_instructions():
    from leanvision.measure.env import cpu_features

    assert cpu_features({"avx2", "fma"}) | {"cpu_isa": None} == {"cpu_isa": None, "cpu_int8": None, "cpu_bf16": None}
    xeon = cpu_features({"avx512f", "avx512_vnni", "avx512_bf16", "amx_int8", "amx_bf16"})
    assert (xeon["cpu_int8"], xeon["cpu_bf16"]) == ("AMX", "AMX")
    zen4 = cpu_features({"avx512f", "avx512_vnni", "avx512_bf16"})
    assert (zen4["cpu_int8"], zen4["cpu_bf16"]) == ("AVX-512 VNNI", "AVX-512 BF16")
    assert cpu_features({"avx_vnni"})["cpu_int8"] == "AVX-VNNI"


def test_int8_not_faster_on_a_cpu_without_vnni_or_amx_says_why():
    before = {"params": 100, "macs": 1000, "file_bytes": 1200, "accuracy": 0.95}
    no_vnni = {"cpu_isa": "AVX2", "cpu_int8": None, "cpu_bf16": None}
    step = _int8_step(0.10, 0.094, 16_226, 17_000)
    step["onnxruntime"]["cpu"] = no_vnni
    line = summarize(step, before)
    assert ("NOT faster than fp32 here: this CPU has no int8 dot-product instructions (no VNNI or AMX; AVX2 only)"
            in line)
    step["onnxruntime"]["cpu"] = {**no_vnni, "cpu_int8": "AVX-512 VNNI"}
    assert "dot-product" not in summarize(step, before) and "for a model this small" in summarize(step, before)
    base = _variant("fp32", 0.95, 0.50, 0.52, 100_000, 5_000_000)
    q = _variant("int8", 0.95, 0.49, 0.53, 100_000, 5_000_000, base="fp32")
    q["runtimes"] = {"onnxruntime": {**q["runtimes"]["torch"], "precision": "int8"}}
    base["runtimes"]["onnxruntime"] = dict(base["runtimes"]["torch"])
    text = " ".join(diagnose_variant(q, base, no_vnni))
    assert "NOT measurably faster" in text and "no int8 dot-product instructions" in text
    assert "no int8 dot-product" not in " ".join(diagnose_variant(q, base, {**no_vnni, "cpu_int8": "AMX"}))
    assert "no int8 dot-product" not in " ".join(diagnose_variant(q, base, {**no_vnni, "cpu_isa": "SVE256"}))  # ARM
    study = diagnose(_study(base, q))  # the study's recorded environment is what the reason reads
    assert "dot-product" not in " ".join(study["variants"][1]["diagnosis"])


def test_train_block_explains_fp32_and_warns_on_emulated_bf16(digits, monkeypatch):
    from leanvision import runs

    cfg = RunConfig(model="compact", data=DataConfig("digits"), train=TrainConfig(epochs=1, device="cpu",
                                                                                  precision="bf16"))
    monkeypatch.setattr(runs, "cpu_features", lambda: {"cpu_isa": "AVX2", "cpu_int8": None, "cpu_bf16": None})
    assert "bf16 autocast is emulated and trains slower than fp32 here; pass --precision fp32" in runs.run_summary(
        cfg, digits, "cpu")
    fp32 = RunConfig(model="compact", data=DataConfig("digits"), train=TrainConfig(epochs=1, device="cpu"))
    assert "fp32 because this CPU has no native bf16 math (AVX2" in runs.run_summary(fp32, digits, "cpu", recipe="fast")
    assert "note   " not in runs.run_summary(fp32, digits, "cpu")  # the user chose fp32: nothing to explain
    monkeypatch.setattr(runs, "cpu_features", lambda: {"cpu_isa": "AVX512", "cpu_int8": "AMX", "cpu_bf16": "AMX"})
    assert "note   " not in runs.run_summary(cfg, digits, "cpu")


def test_report_header_names_the_cpu_instructions_behind_its_numbers():
    from leanvision.report.tables import summary_lines

    env = {"cpu_model": "AMD EPYC", "cpu_isa": "AVX2", "cpu_int8": None, "cpu_bf16": None}
    line = dict(summary_lines({"environment": env, "variants": []}))["Environment"]
    assert "CPU AMD EPYC, vector ISA AVX2, int8 dot product none (no VNNI/AMX), native bf16 none" in line
    line = dict(summary_lines({"environment": {**env, "cpu_int8": "AMX", "cpu_bf16": "AMX"}, "variants": []}))
    assert "int8 dot product AMX, native bf16 AMX" in line["Environment"]
    old = dict(summary_lines({"environment": {"cpu_model": "X"}, "variants": []}))["Environment"]  # older studies
    assert old == "CPU X"


def test_int8_accuracy_drop_on_a_cpu_without_vnni_suggests_reduce_range():
    from leanvision.techniques import parse_technique

    before = {"params": 100, "macs": 1000, "file_bytes": 1200, "accuracy": 0.95}
    step = {**_int8_step(0.10, 0.09, 16_000, 17_000), "accuracy": 0.90}
    step["onnxruntime"]["cpu"] = {"cpu_isa": "AVX2", "cpu_int8": None, "cpu_bf16": None}
    assert "try quantize:mode=int8,reduce_range=true (7-bit weights)" in step_warning(step, before)
    step["onnxruntime"]["cpu"]["cpu_int8"] = "AVX-512 VNNI"
    assert "reduce_range" not in step_warning(step, before)
    step["onnxruntime"]["cpu"]["cpu_int8"], step["quantization"] = None, {"reduce_range": True}  # already 7-bit
    assert "reduce_range" not in step_warning(step, before)
    config = parse_technique("quantize:mode=int8,reduce_range=true")
    assert config.reduce_range is True and "reduce_range=true" in config.spec()


def test_resume_check_treats_a_tuple_and_its_stored_list_as_the_same_value():
    from leanvision.config import config_diff

    stored = {"model": "whitenet", "model_kwargs": {"widths": [32, 128, 128]}, "train": {"epochs": 6}}
    assert config_diff(stored, {**stored, "model_kwargs": {"widths": (32, 128, 128)}}) == []
    assert config_diff(stored, {**stored, "model_kwargs": {"widths": (64, 256, 256)}}) == [
        "model_kwargs {'widths': [32, 128, 128]} -> {'widths': (64, 256, 256)}"]
