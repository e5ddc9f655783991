"""The study and search reports as a user sees them: headless Chromium (Debian's `chromium`, driven by Playwright;
no browser is downloaded) at 1400 px wide. The answer is at the top, the wide tables scroll inside their own box
(the page never scrolls sideways, every column can be reached), the plots load and are large. Screenshots are saved
as test artifacts (paths printed; `pytest -s` shows them)."""

import copy
import shutil
from pathlib import Path

import pytest
from test_report import make_study

from leanvision.report import write_report
from leanvision.search.report import deploy, hypervolume_history
from leanvision.search.report import write_report as write_search_report

CHROMIUM = next((p for p in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser"))
                 if p and Path(p).is_file()), None)
WIDTH, HEIGHT = 1400, 900
MIN_PLOT_PX = 600


def wide_study() -> dict:
    """make_study measured on four runtimes: 3 + 4 x 3 runtime columns + 9 more, far wider than the page."""
    study = make_study()
    for v in study["variants"]:
        if v["status"] == "ok":
            lat = v["latency_b1_median_ms"]
            v["runtimes"]["onnxruntime-streams"] = {"latency_b1_median_ms": lat / 3, "latency_b1_p95_ms": lat / 2.5,
                                                    "throughput_images_per_s": 5000 / lat, "accuracy": v["accuracy"]}
            v["runtimes"]["torch-compile"] = {"latency_b1_median_ms": lat * 0.9, "latency_b1_p95_ms": lat,
                                              "throughput_images_per_s": 1100 / lat, "accuracy": v["accuracy"]}
    study["settings"]["runtimes"] = ["torch", "onnxruntime", "onnxruntime-streams", "torch-compile"]
    return study


def search_result() -> dict:
    """A search's results.json as `write_outputs` writes it: 12 trials on (accuracy, latency), 3 of them the
    re-measured Pareto set, each with its validation accuracy on 359 images. Trial 7 is the most accurate
    (validation); trial 4 is inside its validation interval and faster, so it is the answer; trial 2 is faster still
    but outside the interval."""
    trials = []
    for n in range(12):
        acc, lat = 0.80 + 0.015 * n, 0.02 + 0.004 * n
        trials.append({"number": n, "state": "COMPLETE", "values": [acc, lat], "feasible": n != 5,
                       "params": {"stages": 1 + n % 2}, "val_accuracy": acc, "latency_ms": lat, "size_kb": 10.0 + n,
                       "macs": 40_000 + 1000 * n, "num_params": 2000 + 100 * n, "throughput_images_per_s": None,
                       "run_dir": f"trials/trial-{n:04d}", "stopped": None, "error": None, "measured": None,
                       "worker": None, "wall_s": 5.0, "started_at": 1000.0 + 5 * n, "completed_at": 1005.0 + 5 * n,
                       "rungs": {}})
    arch = {"stages": 1, "widths": [11], "kernel_size": 3, "block": "plain", "downsample": "stride",
            "batchnorm": False, "head": "flatten"}

    def final(n, val_acc, test_acc, ci, lat):
        t = trials[n]
        return {"trial": n, "run_dir": f"pareto/trial-{n:04d}", "val_accuracy": val_acc, "val_total": 359,
                "test_accuracy": test_acc, "test_correct": round(359 * test_acc), "test_total": 359,
                "test_accuracy_95ci": ci, "latency_ms_rounds": [lat, lat], "latency_ms": lat, "size_kb": t["size_kb"],
                "macs": t["macs"], "params": t["num_params"], "arch": arch, "compress": {"prune_ratio": 0.0},
                "params_sampled": t["params"]}

    # validation 95% Wilson interval of trial 7 (341/359): [92.2, 96.8] %; trial 4 (336/359) inside, 2 (316/359) not
    pareto = [final(7, 0.950, 0.950, [0.92, 0.97], 0.040), final(4, 0.936, 0.930, [0.90, 0.95], 0.025),
              final(2, 0.880, 0.880, [0.84, 0.91], 0.018)]
    return {"answer": "The most accurate model found for digits is trial 7.", "study_name": "browser-check",
            "storage": "study.journal", "settings": {}, "objectives": ["accuracy", "latency"],
            "directions": ["maximize", "minimize"], "machine": {"id": "m1", "cpu": "test CPU"},
            "measurement": {"runtime": "onnxruntime", "batch_size": 1, "threads": 2, "device": "cpu",
                            "input_dtype": "float32", "unit": "ms", "statistic": "median after warm-up"},
            "counts": {"COMPLETE": 12}, "wall_time_s_this_call": 60.0, "pareto": pareto, "compared": [],
            "pareto_elsewhere": [], "trials": trials, "hypervolume": hypervolume_history(trials),
            "written_at": "2026-01-01T00:00:00+00:00"}


def test_search_answer_block_by_hand(tmp_path):
    result = search_result()
    answer = deploy(copy.deepcopy(result))
    assert (answer["trial"], answer["reference"], answer["runtime"]) == (4, 7, "onnxruntime")
    lines = dict(answer["lines"])
    # 93 - 95 = -2 pp; 0.040 / 0.025 ms = 1.6x; 14 kB / 17 kB = 0.82x
    assert lines["Cost"].startswith("-2.00 pp accuracy, 1.60x faster (batch-1 latency), 0.82x the size (model file)")
    assert "93.00 % top-1 on the test split (359 images), 95% Wilson interval [90.00, 95.00]" in lines["Accuracy"]
    write_search_report(result, tmp_path)
    md = (tmp_path / "report.md").read_text()
    assert md.splitlines()[2] == ("**Answer: deploy trial 4 on onnxruntime** (cpu, float32 input, 2 threads, "
                                  "machine m1).")
    assert md.index("**Answer:") < md.index(result["answer"]) < md.index("## Pareto set")


def test_search_answer_leaves_out_near_chance_models():
    result = search_result()
    for p in result["pareto"]:
        p["num_classes"] = 10
    result["pareto"][1]["val_accuracy"] = 0.12  # trial 4 did not learn (chance is 10%)
    answer = deploy(result)
    assert (answer["trial"], answer["reference"]) == (7, 7)  # trial 2 is outside 7's interval: 7 itself
    assert "Left out as near chance (did not learn): trial(s) 4." in dict(answer["lines"])["Why"]


def _check_page(page, url: str, shot: Path, min_plots: int) -> dict:
    """Open `url` at 1400 px, check the layout, save a full-page screenshot; returns what was measured."""
    page.goto(url)
    page.wait_for_load_state("load")
    answer = page.locator("#answer")
    assert answer.is_visible()
    box = answer.bounding_box()
    assert box["y"] < 150 and box["y"] + box["height"] < HEIGHT, box  # the answer is in the first screen
    assert "Deploy" in answer.inner_text()
    doc_width = page.evaluate("document.documentElement.scrollWidth")
    assert doc_width <= page.evaluate("window.innerWidth"), f"page scrolls sideways: {doc_width} px"
    images = page.evaluate("[...document.images].map(i => ({alt: i.alt, complete: i.complete, "
                           "natural: i.naturalWidth, shown: i.getBoundingClientRect().width}))")
    assert len(images) >= min_plots
    for image in images:
        assert image["complete"] and image["natural"] > 0, image  # decoded, not a broken image
        assert image["shown"] >= MIN_PLOT_PX, image
    page.screenshot(path=str(shot), full_page=True)
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    print(f"screenshot: {shot}")
    return {"images": images}


@pytest.mark.skipif(CHROMIUM is None, reason="no Chromium found (/usr/bin/chromium); on Debian: apt-get install "
                                             "chromium (.ci/run installs it)")
def test_reports_in_chromium_at_1400px(tmp_path):
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    study_dir, search_dir = tmp_path / "study", tmp_path / "search"
    write_report(wide_study(), study_dir)
    search_dir.mkdir()
    write_search_report(search_result(), search_dir)
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        try:
            page = browser.new_page(viewport={"width": WIDTH, "height": HEIGHT})
            errors, requests = [], []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))

            _check_page(page, (study_dir / "report.html").as_uri(), tmp_path / "study_report.png", min_plots=4)
            assert "Deploy mid on onnxruntime-streams" in " ".join(page.locator("#answer .headline").inner_text()
                                                                   .split())
            table = page.locator("#results-table")
            sizes = table.evaluate("b => ({scroll: b.scrollWidth, client: b.clientWidth})")
            assert sizes["scroll"] > sizes["client"], sizes  # the table is wider than the page: its box scrolls
            last = table.locator("thead tr").first.locator("th").last
            assert last.inner_text().startswith("Pareto: MACs")
            table.evaluate("b => { b.scrollLeft = b.scrollWidth; }")  # scroll the box to its end
            assert last.bounding_box()["x"] + last.bounding_box()["width"] <= WIDTH + 1  # the last column in view
            variant = table.locator("tbody tr").first.locator("td").nth(1)
            assert variant.inner_text() == "big"
            assert 0 <= variant.bounding_box()["x"] < 200  # the variant column stays in view (sticky)
            assert page.evaluate("document.documentElement.scrollWidth") <= WIDTH
            table.screenshot(path=str(tmp_path / "study_table_scrolled.png"))
            print(f"screenshot: {tmp_path / 'study_table_scrolled.png'}")
            groups = [g.strip() for g in table.locator("th.group").all_inner_texts()]
            assert [g.split(" [")[0] for g in groups] == ["onnxruntime", "onnxruntime-streams", "torch",
                                                          "torch-compile"]  # every runtime, ONNX Runtime first

            _check_page(page, (search_dir / "report.html").as_uri(), tmp_path / "search_report.png", min_plots=1)
            assert "Deploy trial 4 on onnxruntime" in " ".join(page.locator("#answer .headline").inner_text().split())
        finally:
            browser.close()
    assert errors == []
    assert all(url.startswith("file://") or url.startswith("data:") for url in requests)  # nothing external
