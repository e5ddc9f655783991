import json

import pytest

from leanvision.errors import LeanvisionError
from leanvision.study import load_plan, run_study

pytest.importorskip("onnxruntime")


def test_study_variant_with_technique_chain_reports_each_step(tmp_path):
    plan = {"name": "chain", "train": {"learning_rate": 0.003, "batch_size": 64},
            "variants": [{"name": "base", "model": "compact"},
                         {"name": "pruned-int8", "model": "compact", "base": "base",
                          "techniques": ["prune:ratio=0.5,finetune_epochs=1", "quantize:mode=int8"]},
                         {"name": "sparse", "model": "compact", "base": "base",
                          "techniques": ["prune:ratio=0.5,structured=false"]}]}
    study = run_study(dataset="digits", plan=plan, epochs=1, out=tmp_path, repeats=5, progress=False)
    variants = {v["name"]: v for v in study["variants"]}
    assert all(v["status"] == "ok" for v in variants.values()), [v.get("error") for v in variants.values()]
    chain = variants["pruned-int8"]
    assert chain["diagnosis"][0].startswith("prune 50% (structured, l1):") and "MACs" in chain["diagnosis"][0]
    assert chain["diagnosis"][1].startswith("fold:")
    assert chain["diagnosis"][2].startswith("quantize int8:") and "int8 kernels for 3 conv" in chain["diagnosis"][2]
    assert set(chain["runtimes"]) == {"onnxruntime"} and "torch" in chain["unavailable_runtimes"]
    assert chain["runtimes"]["onnxruntime"]["precision"] == "int8"
    assert chain["params"] < variants["base"]["params"] / 3 and chain["run_dir"].endswith("seed0-optimized")
    assert chain["accuracy"] == pytest.approx(chain["runtimes"]["onnxruntime"]["accuracy"], abs=0.003)
    sparse = " ".join(variants["sparse"]["diagnosis"])
    assert "no speed change expected" in sparse and "same speed" in sparse
    results = json.loads((tmp_path / "results.json").read_text())
    assert any("prune 50%" in line for v in results["variants"] for line in v["diagnosis"])
    assert (tmp_path / "report.html").exists()


def test_plan_with_bad_technique_fails_at_load():
    with pytest.raises(LeanvisionError, match="ratio=2.0"):
        load_plan({"variants": [{"name": "a", "model": "compact", "techniques": ["prune:ratio=2.0"]}]})
