import json
import os
import subprocess
import sys

import pytest

from leanvision.diagnose import diagnose, latency_verdict
from leanvision.errors import LeanvisionError
from leanvision.study import load_plan, run_study

VARIANT_KEYS = {"name", "model", "base", "status", "params", "trainable_params", "macs", "weight_bytes_fp32",
                "file_bytes", "accuracy", "accuracy_ci95", "accuracy_mean", "accuracy_std", "accuracies",
                "latency_b1_median_ms", "latency_b1_p95_ms", "throughput_images_per_s", "peak_memory_bytes",
                "train_time_s", "train_images_per_s", "epochs", "runtimes", "history", "run_dir", "diagnosis"}


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory):
    out = tmp_path_factory.mktemp("study")
    plan = {"name": "tiny", "train": {"learning_rate": 0.002},
            "variants": [{"name": "base", "model": "seed-shallow"},
                         {"name": "reg", "model": "seed-shallow", "base": "base", "train": {"weight_decay": 1e-4}},
                         {"name": "broken", "model": "no-such-model", "base": "base"}]}
    study = run_study(dataset="digits", plan=plan, epochs=1, out=out, repeats=5, progress=False)
    return out, study, plan


def test_study_writes_every_report_file(tiny_study):
    out, _, _ = tiny_study
    for name in ("report.html", "report.md", "results.json", "results.csv", "plots/accuracy_vs_latency.png",
                 "plots/accuracy_vs_params.png", "plots/accuracy_vs_macs.png", "plots/training_curves.png"):
        assert (out / name).exists(), name
    assert (out / "variants" / "base" / "seed0" / "best.safetensors").exists()
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 4 and "https://" not in html


def test_study_results_json_schema(tiny_study):
    out, _, _ = tiny_study
    results = json.loads((out / "results.json").read_text())
    assert {"title", "dataset", "settings", "environment", "variants", "findings"} <= set(results)
    ok = [v for v in results["variants"] if v["status"] == "ok"]
    assert len(ok) == 2
    for v in ok:
        assert VARIANT_KEYS <= set(v), VARIANT_KEYS - set(v)
        assert v["params"] == 216_650 and v["macs"] == 411_008
        assert 0 <= v["accuracy_ci95"][0] <= v["accuracy"] <= v["accuracy_ci95"][1] <= 1
        assert v["latency_b1_p95_ms"] >= v["latency_b1_median_ms"] > 0
        assert v["peak_memory_bytes"] > 0
        assert set(v["runtimes"]) >= {"torch"}
        for r in v["runtimes"].values():
            assert r["accuracy"] == pytest.approx(v["accuracy"], abs=0.003)  # same weights on every runtime
    assert ok[1]["diagnosis"] and "Same parameters" in " ".join(ok[1]["diagnosis"])


def test_study_failed_variant_is_reported_and_study_goes_on(tiny_study):
    out, study, _ = tiny_study
    broken = next(v for v in study["variants"] if v["name"] == "broken")
    assert broken["status"] == "failed" and "no-such-model" in broken["error"]
    assert "broken" in (out / "report.html").read_text()
    assert any("Failed variants" in f for f in study["findings"])


def test_study_rerun_skips_finished_variants(tiny_study):
    out, study, plan = tiny_study
    again = run_study(dataset="digits", plan=plan, epochs=1, out=out, repeats=5, progress=False)
    for a, b in zip(study["variants"], again["variants"]):
        if a["status"] == "ok":
            assert a["latency_b1_median_ms"] == b["latency_b1_median_ms"]  # reused, not re-measured


@pytest.mark.parametrize("plan, match", [
    ("nope", "Unknown plan"), ({"variants": []}, "non-empty"), ({"variants": [{"name": "x"}]}, "model"),
    ({"variants": [{"model": "compact", "colour": 1}]}, "unknown key"),
    ({"variants": [{"model": "compact"}, {"model": "compact"}]}, "duplicate"),
    ({"variants": [{"model": "compact", "base": "ghost"}]}, "ghost"),
])
def test_load_plan_rejects_bad_plans(plan, match):
    with pytest.raises(LeanvisionError, match=match):
        load_plan(plan)


def test_builtin_reference_plan_has_the_four_reference_models():
    names = [v["model"] for v in load_plan("reference")["variants"]]
    assert names[:4] == ["seed-baseline", "seed-shallow", "seed-l2", "seed-dropout"]


def _variant(name, acc, params, macs, lat, p95, base=None):
    return {"name": name, "status": "ok", "base": base, "accuracy": acc, "accuracy_ci95": [acc - 0.01, acc + 0.01],
            "params": params, "macs": macs, "latency_b1_median_ms": lat,
            "runtimes": {"torch": {"latency_b1_median_ms": lat, "latency_b1_p95_ms": p95}}}


def test_diagnosis_flags_cheaper_but_not_faster():
    base = _variant("base", 0.98, 1000, 10_000, 1.00, 1.10)
    fewer_macs_same_speed = _variant("v", 0.97, 100, 2_000, 0.95, 1.05, base="base")
    study = diagnose({"variants": [base, fewer_macs_same_speed]})
    text = " ".join(study["variants"][1]["diagnosis"])
    assert "NOT measurably faster" in text and "per-layer overhead" in text
    assert latency_verdict(fewer_macs_same_speed, base) == ("same", pytest.approx(1 / 0.95))


def test_diagnosis_reports_real_speedup_and_more_macs_slowdown():
    base = _variant("base", 0.98, 1000, 10_000, 1.00, 1.05)
    fast = _variant("fast", 0.98, 100, 1_000, 0.25, 0.27, base="base")
    slow = _variant("slow", 0.99, 900, 20_000, 2.0, 2.1, base="base")
    study = diagnose({"variants": [base, fast, slow]})
    assert "4.00x faster" in " ".join(study["variants"][1]["diagnosis"])
    assert "more MACs than the base" in " ".join(study["variants"][2]["diagnosis"])


@pytest.mark.slow
def test_cli_study_with_no_arguments_works_offline(tmp_path):
    env = {**os.environ, "LEANVISION_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "leanvision", "study", "--no-progress"], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads((tmp_path / "study" / "results.json").read_text())
    assert len(results["variants"]) == 8 and all(v["status"] == "ok" for v in results["variants"])
    assert (tmp_path / "study" / "report.html").exists()
    assert "seed-baseline" in proc.stdout


def test_builtin_colour_plan_loads_with_recipes_and_compression():
    plan = load_plan("colour")
    variants = {v["name"]: v for v in plan["variants"]}
    assert [v["model"] for v in plan["variants"][:4]] == ["seed-baseline", "seed-shallow", "seed-l2", "seed-dropout"]
    assert "resnet8" in variants and variants["whitenet-fast"]["recipe"] == "fast"
    assert variants["whitenet-fast-int8"]["techniques"] == ["quantize:mode=int8"]
    from leanvision.study import variant_config

    cfg = variant_config({**plan, "default_epochs": 3}, variants["whitenet-fast-prune-half"], (3, 32, 32), None,
                         None, "cpu")
    assert cfg["model"] == "whitenet" and cfg["model_kwargs"] == {"widths": (32, 128, 128)}
    assert cfg["train"]["batch_size"] == 512 and cfg["train"]["lookahead"] is True  # the recipe's, not the plan's
    seed = variant_config({**plan, "default_epochs": 3}, variants["seed-baseline"], (3, 32, 32), None, None, "cpu")
    assert seed["train"]["optimizer"] == "adam" and seed["train"]["epochs"] == 3
    from leanvision.recipes import fast_precision

    assert seed["train"]["precision"] == fast_precision("cpu")  # plan's "auto": bf16 only where it is native


def test_variant_config_precedence():
    from leanvision.study import variant_config

    plan = {"train": {"epochs": 4, "learning_rate": 0.01}, "default_epochs": 4}
    own = {"name": "a", "model": "compact", "train": {"epochs": 2, "learning_rate": 0.5}}
    assert variant_config(plan, own, (1, 8, 8), None, None, "cpu")["train"]["epochs"] == 2  # the variant's own
    assert variant_config(plan, own, (1, 8, 8), 7, "bf16", "cpu")["train"] | {} == {
        "epochs": 7, "learning_rate": 0.5, "precision": "bf16", "device": "cpu"}  # explicit study-wide values win
    recipe = {"name": "r", "recipe": "fast"}
    cfg = variant_config(plan, recipe, (1, 8, 8), None, None, "cpu")
    assert cfg["model"] == "fastnet" and cfg["train"]["epochs"] == 2 and cfg["train"]["learning_rate"] == 0.1
    with pytest.raises(LeanvisionError, match="recipe"):
        load_plan({"variants": [{"recipe": "fsat"}]})


def test_compression_variant_reuses_the_identical_training(tmp_path):
    plan = {"name": "twins", "train": {"learning_rate": 0.002},
            "variants": [{"name": "base", "model": "compact"},
                         {"name": "folded", "model": "compact", "base": "base", "techniques": ["fold"]}]}
    study = run_study(dataset="digits", plan=plan, epochs=1, out=tmp_path, repeats=3, progress=False)
    assert [v["status"] for v in study["variants"]] == ["ok", "ok"]
    a, b = (tmp_path / "variants" / n / "seed0" / "metrics.jsonl" for n in ("base", "folded"))
    assert a.read_text() == b.read_text()  # copied (same measured epoch times), not trained again


def test_study_api_returns_a_typed_study(tiny_study):
    import leanvision as lv

    out, _, plan = tiny_study
    study = lv.study(dataset="digits", plan=plan, epochs=1, out=out, repeats=5)  # finished variants are skipped
    assert isinstance(study, lv.Study) and [v.name for v in study.variants] == ["base", "reg", "broken"]
    assert [v.ok for v in study.variants] == [True, True, False] and "no-such-model" in study.variants[2].error
    assert all(v.accuracy > 0 and v.params > 0 and v.latency_b1_median_ms > 0 for v in study.variants[:2])
    assert set(study.report_files) == {"html", "md", "json", "csv"} and all(
        p.is_file() for p in study.report_files.values())
    stored = json.loads(study.report_files["json"].read_text())
    assert [v["name"] for v in stored["variants"]] == [v.name for v in study.variants]
    assert study.to_dict()["variants"][0]["accuracy"] == stored["variants"][0]["accuracy"]


def test_identical_training_is_found_when_the_config_holds_tuples(tmp_path):
    # recipes give tuples (whitenet widths); config.json stores lists: the colour plan's compression variants must
    # still reuse their base's training instead of training it again
    from leanvision.config import RunConfig, TrainConfig
    from leanvision.rundir import write_config
    from leanvision.study import _same_run

    cfg = RunConfig(model="whitenet", model_kwargs={"widths": (32, 128, 128)}, train=TrainConfig(epochs=6))
    base = tmp_path / "variants" / "whitenet-fast" / "seed0"
    base.mkdir(parents=True)
    write_config(base, {"config": cfg.to_dict()})
    assert json.loads((base / "config.json").read_text())["config"]["model_kwargs"]["widths"] == [32, 128, 128]
    assert _same_run(tmp_path, "seed0", cfg) is None  # no result.json: not finished
    (base / "result.json").write_text("{}")
    assert _same_run(tmp_path, "seed0", cfg) == base
    other = RunConfig(model="whitenet", model_kwargs={"widths": (64, 256, 256)}, train=TrainConfig(epochs=6))
    assert _same_run(tmp_path, "seed0", other) is None


def test_diagnosis_says_more_macs_not_a_fraction_fewer():
    from leanvision.diagnose import _fewer_more

    assert _fewer_more(15_730_048, 66_132_544, "MACs") == "4.20x more MACs"  # not "0.24x fewer MACs"
    assert _fewer_more(66_132_544, 29_806_848, "MACs") == "2.22x fewer MACs"
    assert _fewer_more(10, 10, "parameters") == "the same parameters"


def test_technique_errors_suggest_the_close_choice_and_name_bool_spellings():
    from leanvision.techniques.base import parse_technique

    with pytest.raises(LeanvisionError, match=r"mode='int9'\. Did you mean 'int8'\?"):
        parse_technique("quantize:mode=int9")
    with pytest.raises(LeanvisionError, match="Expected true or false"):
        parse_technique("quantize:keep_stem_fp32=maybe")
    static = parse_technique("quantize:mode=int8")
    assert "finetune_epochs" not in static.spec() and parse_technique(static.spec()) == static  # QAT-only: left out
    qat = parse_technique("quantize:mode=qat")
    assert "finetune_epochs=1" in qat.spec() and parse_technique(qat.spec()) == qat
