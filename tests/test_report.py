"""The study report: files, Pareto flags, ranking, CSV/JSON content, HTML self-containment and escaping."""

from __future__ import annotations

import copy
import csv
import html
import json

import pytest

from leanvision.report import pareto_flags, results_table, write_report

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
PLOTS = ["accuracy_vs_latency", "accuracy_vs_params", "accuracy_vs_macs", "training_curves"]
EVIL = "<script>alert(1)</script>"
ERROR = "RuntimeError: shapes (4x9) & (8x2) cannot be multiplied"


def _variant(name, acc, lat, params, macs, onnx=True, **extra):
    runtimes = {"torch": {"latency_b1_median_ms": lat, "latency_b1_p95_ms": lat * 1.2,
                          "throughput_images_per_s": 1000 / lat, "accuracy": acc}}
    if onnx:
        runtimes["onnxruntime"] = {"latency_b1_median_ms": lat / 2, "latency_b1_p95_ms": lat * 0.6,
                                   "throughput_images_per_s": 2000 / lat, "accuracy": acc - 0.001}
    variant = {
        "name": name, "model": name, "base": None, "description": f"{name} model", "status": "ok", "error": None,
        "params": params, "trainable_params": params, "macs": macs, "weight_bytes_fp32": 4 * params,
        "file_bytes": 4 * params + 300, "accuracy": acc, "accuracy_ci95": [acc - 0.02, acc + 0.01],
        "accuracy_mean": acc, "accuracy_std": 0.0, "accuracies": [acc], "test_total": 359,
        "latency_b1_median_ms": lat, "latency_b1_p95_ms": lat * 1.2, "throughput_images_per_s": 1000 / lat,
        "peak_memory_bytes": 3 * 2**20, "train_time_s": 5.0, "train_images_per_s": 2500.0, "epochs": 3,
        "runtimes": runtimes,
        "history": [{"epoch": e, "train_loss": 1.0 / e, "train_accuracy": acc - 0.1 / e, "val_loss": 1.2 / e,
                     "val_accuracy": acc - 0.05 / e} for e in (1, 2, 3)],
        "run_dir": f"variants/{name}/seed0", "diagnosis": [f"{name} looks fine."],
    }
    variant.update(extra)
    return variant


def make_study():
    # Plan order: fast, mid, EVIL, big, broken. By hand (accuracy up, cost down):
    #   latency: fast (0.90, 0.2) < mid (0.95, 0.5) < big (0.97, 2.0) on the front; EVIL (0.93, 0.8) beaten by mid.
    #   params:  fast (0.90, 10k), big (0.97, 100k) on the front; mid (200k) and EVIL (300k) beaten by big.
    #   MACs:    fast (1M), EVIL (0.93, 6M), big (0.97, 20M) on the front; mid (0.95, 30M) beaten by big.
    return {
        "title": "leanvision study: digits",
        "dataset": {"name": "digits", "num_train": 1294, "num_val": 144, "num_test": 359, "input_shape": [1, 28, 28],
                    "num_classes": 10, "notes": ["8x8 digits upscaled to 28x28"]},
        "settings": {"epochs": 3, "seeds": 1, "batch_size": 128, "optimizer": "adam", "learning_rate": 0.002,
                     "schedule": "onecycle", "precision": "fp32", "latency_batch_size": 1,
                     "throughput_batch_size": 256, "repeats": 50, "warmup": 10},
        "environment": {"python": "3.11.9", "torch": "2.5.1", "onnxruntime": "1.20.0", "threads": 2,
                        "cpu": "AMD EPYC 7B13", "device": "cpu"},
        "started": "2025-01-01T00:00:00", "finished": "2025-01-01T00:01:00", "wall_time_s": 60.0,
        "variants": [
            _variant("fast", 0.90, 0.2, 10_000, 1_000_000),
            _variant("mid", 0.95, 0.5, 200_000, 30_000_000),
            _variant(EVIL, 0.93, 0.8, 300_000, 6_000_000, onnx=False),
            _variant("big", 0.97, 2.0, 100_000, 20_000_000, onnx=False),
            {"name": "broken", "model": "broken", "base": "fast", "description": "bad head", "status": "failed",
             "error": ERROR, "run_dir": "variants/broken/seed0", "diagnosis": []},
        ],
        "findings": ["mid: accuracy +5.00 pp over fast, 2.5x the latency."],
    }


EXPECTED = {
    "latency": [True, True, False, True, False],
    "params": [True, False, False, True, False],
    "macs": [True, False, True, True, False],
}


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    study = make_study()
    before = copy.deepcopy(study)
    out = tmp_path_factory.mktemp("report")
    paths = write_report(study, out)
    assert study == before, "write_report must not modify the caller's study"
    return out, paths


def test_all_files_written_atomically(report):
    out, paths = report
    names = ["report.html", "report.md", "results.json", "results.csv", *(f"plots/{p}.png" for p in PLOTS)]
    for name in names:
        assert (out / name).is_file(), name
    assert {p.relative_to(out).as_posix() for p in paths.values()} == set(names)
    assert paths["html"] == out / "report.html" and paths["md"] == out / "report.md"
    assert not [p for p in out.rglob("*") if p.name.endswith(".tmp")]
    for plot in PLOTS:
        assert (out / "plots" / f"{plot}.png").read_bytes().startswith(PNG_MAGIC)


def test_pareto_flags_by_hand():
    assert pareto_flags(make_study()["variants"]) == EXPECTED


def test_results_json_has_study_and_pareto_flags(report):
    out, _ = report
    data = json.loads((out / "results.json").read_text())
    assert data["title"] == "leanvision study: digits"
    assert [v["name"] for v in data["variants"]] == ["fast", "mid", EVIL, "big", "broken"]
    for i, variant in enumerate(data["variants"]):
        assert variant["pareto"] == {front: EXPECTED[front][i] for front in EXPECTED}
    assert data["variants"][0]["history"][0]["epoch"] == 1


def test_results_csv(report):
    out, _ = report
    with open(out / "results.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 5
    for column in ["rank", "name", "status", "accuracy", "accuracy_ci95_low", "params", "macs", "latency_b1_median_ms",
                   "throughput_images_per_s", "pareto_latency", "pareto_params", "pareto_macs",
                   "torch_latency_b1_median_ms", "onnxruntime_latency_b1_median_ms", "onnxruntime_accuracy", "error"]:
        assert column in rows[0], column
    assert [r["name"] for r in rows] == ["big", "mid", EVIL, "fast", "broken"]
    assert [r["rank"] for r in rows] == ["1", "2", "3", "4", ""]
    broken = rows[-1]
    assert broken["error"] == ERROR and broken["accuracy"] == "" and broken["pareto_latency"] == "False"
    assert rows[0]["onnxruntime_latency_b1_median_ms"] == ""  # big has no onnxruntime
    assert float(rows[1]["onnxruntime_latency_b1_median_ms"]) == 0.25


def test_ranking_by_accuracy_then_latency():
    study = make_study()
    study["variants"][0]["accuracy"] = 0.97  # fast ties big on accuracy and is faster
    rows = results_table(study)
    assert [r["name"] for r in rows] == ["fast", "big", "mid", EVIL, "broken"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, None]


def test_html_is_self_contained_and_escaped(report):
    out, _ = report
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.count("data:image/png;base64,") == len(PLOTS)
    assert "http://" not in page and "https://" not in page
    assert EVIL not in page and html.escape(EVIL) in page
    for name in ["fast", "mid", "big", "broken"]:
        assert f">{name}<" in page
    assert html.escape(ERROR) in page
    assert "Failed variants" in page and "Findings" in page
    assert html.escape("mid: accuracy +5.00 pp over fast, 2.5x the latency.") in page
    assert "mid looks fine." in page
    for fact in ["AMD EPYC 7B13", "2.5.1", "1.20.0", "fp32", "batch 256", "1294"]:
        assert fact in page, fact
    assert "97.00 [95.00, 98.00]" in page  # accuracy with its 95% CI, in percent
    assert "11.18 M" not in page and "20.00 M" in page  # MACs in human units, only the given numbers


def test_markdown_references_plots(report):
    out, _ = report
    md = (out / "report.md").read_text(encoding="utf-8")
    for plot in PLOTS:
        assert f"(plots/{plot}.png)" in md
    assert EVIL not in md and "\\<script>" in md  # no raw tag can form; the text stays readable
    assert "## Failed variants" in md and ERROR.replace("<", "\\<") in md
    assert "&lt;" not in md and "&amp;" not in md and "-&gt;" not in md  # plain text, not HTML entities
    assert md.index("| 1 | big |") < md.index("| 2 | mid |") < md.index("| 4 | fast |")


def test_multi_seed_accuracy_cell_and_all_failed_study(tmp_path):
    study = make_study()
    study["settings"]["seeds"] = 3
    study["variants"] = [v for v in study["variants"] if v["name"] == "broken"]
    paths = write_report(study, tmp_path)
    assert paths["accuracy_vs_latency"].read_bytes().startswith(PNG_MAGIC)
    assert "No variant finished successfully" in paths["html"].read_text()

    seeded = make_study()
    seeded["settings"]["seeds"] = 3
    seeded["variants"][1].update(accuracies=[0.94, 0.95, 0.96], accuracy_mean=0.95, accuracy_std=0.01)
    from leanvision.report.tables import accuracy_cell

    row = next(r for r in results_table(seeded) if r["name"] == "mid")
    assert accuracy_cell(row) == "95.00 ± 1.00 (n=3)"


def test_runtime_accuracy_column_says_seed_0_when_the_accuracy_column_is_a_seed_mean():
    from leanvision.report.tables import display_columns

    variant = {"name": "a", "status": "ok", "accuracy": 0.9, "onnxruntime_accuracy": 0.91,
               "runtimes": {"onnxruntime": {"accuracy": 0.91, "latency_b1_median_ms": 0.1}}}
    titles = [c.header for c in display_columns({"settings": {"seeds": 2}, "variants": [variant]})]
    assert "onnxruntime accuracy % (seed 0)" in titles
    titles = [c.header for c in display_columns({"settings": {"seeds": 1}, "variants": [variant]})]
    assert "onnxruntime accuracy %" in titles


def test_the_report_leads_with_the_answer(report):
    # By hand from make_study: big is the most accurate (97.00 %, 95% interval [95.00, 98.00]); only mid (95.00 %)
    # lies inside it. mid's fastest runtime is onnxruntime (0.25 ms vs torch 0.50); big has torch only (2.00 ms).
    # fast is faster still (0.10 ms) but 90.00 % is outside the interval, so it is not the answer.
    out, _ = report
    page = (out / "report.html").read_text(encoding="utf-8")
    block = page[page.index('<section class="answer"'):page.index("</section>")]
    assert page.index('<section class="answer"') < page.index("<h2>Results</h2>")
    assert "Deploy <strong>mid</strong> on <strong>onnxruntime</strong>" in block
    for fact in ["95.00 % top-1 on the test split (359 images), 95% interval [93.00, 96.00]", "94.90 % as run on",
                 "0.25 ms median (p95 0.30 ms) at batch 1", "4,000 images/s at batch 256",
                 "200,000 parameters", "-2.00 pp accuracy, 8.00x faster (batch-1 latency), 2.00x the size (file)",
                 "big: 97.00 % [95.00, 98.00], 2.00 ms on torch"]:
        assert html.escape(fact) in block, fact
    md = (out / "report.md").read_text(encoding="utf-8")
    assert md.index("**Answer: deploy mid on onnxruntime**") < md.index("## Results")
    assert "-2.00 pp accuracy, 8.00x faster" in md


def test_the_answer_takes_each_models_fastest_runtime_and_prefers_onnxruntime_on_a_tie():
    from leanvision.report.lead import lead

    study = make_study()
    mid = study["variants"][1]
    mid["runtimes"]["torch"]["latency_b1_median_ms"] = 0.2  # torch now beats onnxruntime (0.25) for mid
    assert (lead(study)["variant"], lead(study)["runtime"]) == ("mid", "torch")
    mid["runtimes"]["torch"]["latency_b1_median_ms"] = 0.25  # a tie: onnxruntime
    assert lead(study)["runtime"] == "onnxruntime"
    study["variants"][3]["accuracy_ci95"] = [0.96, 0.98]  # mid (0.95) now outside big's interval: big it is
    answer = lead(study)
    assert (answer["variant"], answer["runtime"]) == ("big", "torch")
    assert dict(answer["lines"])["Cost"] == "it is also the most accurate model: nothing is traded"
    for v in study["variants"]:
        v["status"] = "failed"
    assert lead(study) is None


def test_results_table_puts_onnxruntime_first_with_every_runtime_column():
    from leanvision.report.tables import display_columns, runtime_order

    assert runtime_order(["torch", "openvino", "onnxruntime-streams", "onnxruntime"]) == [
        "onnxruntime", "onnxruntime-streams", "torch", "openvino"]
    headers = [c.header for c in display_columns(make_study())]
    runtime_headers = [h for h in headers if h.startswith(("onnxruntime ", "torch "))]
    assert runtime_headers == [
        "onnxruntime latency ms, batch 1, median (p95) [fp32, cpu]", "onnxruntime throughput images/s, batch 256 "
        "[fp32, cpu]", "onnxruntime accuracy %", "torch latency ms, batch 1, median (p95) [fp32, cpu]",
        "torch throughput images/s, batch 256 [fp32, cpu]", "torch accuracy %"]
    assert headers.index(runtime_headers[0]) == 3  # right after rank, variant and accuracy
