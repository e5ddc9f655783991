"""Behaviour checked against an outside oracle or an exact expectation (issue 10, point 5: tests that bite)."""

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from sklearn.metrics import classification_report, precision_recall_fscore_support

from leanvision import study as study_module
from leanvision.cli import main
from leanvision.config import RunConfig, TrainConfig
from leanvision.errors import LeanvisionError
from leanvision.evaluate import classification_metrics, predict_files
from leanvision.models import MODELS, create_model
from leanvision.registry import Registry
from leanvision.rundir import load_run
from leanvision.runtimes.eager import predict_logits
from leanvision.techniques import parse_technique
from leanvision.train import fit, make_optimizer

# ---- precision / recall: scikit-learn is the oracle ---------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2])
def test_precision_recall_f1_match_scikit_learn(seed):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, 5, (200,), generator=g)
    logits = torch.randn(200, 5, generator=g) + 2.0 * torch.nn.functional.one_hot(labels, 5)
    logits[:, 4] -= 100  # class 4 is never predicted: precision undefined (None here, 0 in sklearn's averages)
    classes = list("abcde")
    m = classification_metrics(logits, labels, classes)
    pred = logits.argmax(1).numpy()
    p, r, f, s = precision_recall_fscore_support(labels.numpy(), pred, labels=range(5), zero_division=0)
    for i, row in enumerate(m["per_class"]):
        assert row["recall"] == pytest.approx(r[i]) and row["f1"] == pytest.approx(f[i]) and row["support"] == s[i]
        assert row["precision"] == (None if i == 4 else pytest.approx(p[i]))
    report = classification_report(labels.numpy(), pred, labels=range(5), output_dict=True, zero_division=0)
    for ours, theirs in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        for key, name in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert m[ours][key] == pytest.approx(report[theirs][name]), (ours, key)
    assert m["accuracy"] == pytest.approx(float((pred == labels.numpy()).mean()))


# ---- predict returns the right class on known images ---------------------------------------------------------------

@pytest.fixture(scope="module")
def shallow_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("oracle") / "shallow"
    assert main(["train", "--dataset", "digits", "--model", "seed-shallow", "--epochs", "2", "--no-progress",
                 "--device", "cpu", "--out", str(out)]) == 0
    return out


def test_predict_returns_the_label_of_known_images(shallow_run, digits, tmp_path):
    run = load_run(shallow_run)
    images, labels = digits.test.images[:60], digits.test.labels[:60]
    paths = []
    for i, image in enumerate(images):
        path = tmp_path / f"{i}.png"
        Image.fromarray(image[0].numpy().astype(np.uint8)).save(path)  # the 28x28 grayscale image, as a file
        paths.append(str(path))
    results = predict_files(run, paths)
    predicted = [run.meta["classes"].index(r["predictions"][0]["class"]) for r in results]
    logits, _ = predict_logits(run.model, digits.test, digits.mean, digits.std, torch.device("cpu"))
    # the file path and the evaluation path agree image by image (where the top two logits are not a near-tie that
    # another batch size could round the other way), and the classes are the true digits
    top2 = logits[:60].topk(2, dim=1).values
    clear = [i for i in range(60) if top2[i, 0] - top2[i, 1] > 1e-4]
    assert len(clear) >= 55
    assert [predicted[i] for i in clear] == logits[:60].argmax(1)[clear].tolist()
    assert sum(p == int(y) for p, y in zip(predicted, labels)) >= 0.85 * len(paths)


# ---- registries refuse a duplicate name -----------------------------------------------------------------------------

def test_registry_refuses_a_duplicate_name_and_keeps_the_first():
    things: Registry = Registry("thing")

    @things.register("one")
    def first():
        return 1

    with pytest.raises(LeanvisionError, match="Duplicate thing name 'one'"):
        things.register("one")(lambda: 2)
    assert things.get("one") is first
    original = MODELS.get("compact")
    with pytest.raises(LeanvisionError, match="Duplicate model name 'compact'"):
        MODELS.register("compact")(lambda **kw: None)
    assert MODELS.get("compact") is original


# ---- unknown config fields are refused -------------------------------------------------------------------------------

def test_unknown_config_fields_are_refused():
    with pytest.raises(LeanvisionError, match=r"Unknown TrainConfig field\(s\): epoch\b"):
        RunConfig.from_dict({"model": "compact", "train": {"epoch": 3}})
    with pytest.raises(LeanvisionError, match=r"Unknown DataConfig field\(s\): datset"):
        RunConfig.from_dict({"data": {"datset": "digits"}})
    with pytest.raises(TypeError):
        TrainConfig(epoch=3)  # the dataclass itself has no such field
    with pytest.raises(LeanvisionError, match="ratioo"):
        parse_technique("prune:ratioo=0.5")


def test_unknown_config_file_key_is_one_line_at_the_cli(tmp_path, capsys):
    config = tmp_path / "c.yaml"
    config.write_text("epoch: 3\n")
    assert main(["train", "--config", str(config), "--out", str(tmp_path / "r")]) == 2
    err = capsys.readouterr().err
    assert err.count("error:") == 1 and "unknown option 'epoch'" in err and "epochs" in err


# ---- AdamW -----------------------------------------------------------------------------------------------------------

def test_adamw_is_decoupled_weight_decay_and_trains(digits, tmp_path):
    model = torch.nn.Linear(4, 2)
    opt = make_optimizer(model, TrainConfig(optimizer="adamw", learning_rate=0.1, weight_decay=0.5))
    assert type(opt) is torch.optim.AdamW and opt.defaults["weight_decay"] == 0.5 and opt.defaults["lr"] == 0.1
    # with a zero gradient, AdamW still shrinks every weight by lr * wd (decoupled); Adam's L2 term would not
    before = model.weight.detach().clone()
    model.weight.grad, model.bias.grad = torch.zeros_like(model.weight), torch.zeros_like(model.bias)
    opt.step()
    assert torch.allclose(model.weight, before * (1 - 0.1 * 0.5))
    torch.manual_seed(0)
    net = create_model("seed-shallow", num_classes=10, in_chans=1, img_size=28)
    history = fit(net, digits, TrainConfig(epochs=1, device="cpu", optimizer="adamw", weight_decay=1e-2),
                  tmp_path, progress=False)
    assert history[-1]["val_accuracy"] > 0.5


# ---- study --remeasure re-times without retraining ------------------------------------------------------------------

def test_study_remeasure_retimes_without_retraining(tmp_path, monkeypatch, capsys):
    plan = tmp_path / "plan.yaml"
    plan.write_text(yaml.safe_dump({"name": "mini", "variants": [{"name": "a", "model": "seed-shallow"}]}))
    out = tmp_path / "s"
    args = ["study", "--plan", str(plan), "--epochs", "1", "--out", str(out), "--runtime", "torch", "--repeats", "3",
            "--no-progress", "--device", "cpu"]
    assert main(args) == 0
    weights = (out / "variants" / "a" / "seed0" / "best.safetensors").read_bytes()
    calls = {"train": 0, "measure": 0}
    real_train, real_measure = study_module.train_run, study_module.measure_variant

    def counting(name, fn):
        def wrapper(*a, **kw):
            calls[name] += 1
            return fn(*a, **kw)
        return wrapper

    monkeypatch.setattr(study_module, "train_run", counting("train", real_train))
    monkeypatch.setattr(study_module, "measure_variant", counting("measure", real_measure))
    assert main(args) == 0  # same config: nothing runs again
    assert calls == {"train": 0, "measure": 0}
    assert main([*args, "--remeasure"]) == 0  # re-timed, the trained weights kept
    assert calls == {"train": 0, "measure": 1}
    assert (out / "variants" / "a" / "seed0" / "best.safetensors").read_bytes() == weights
    capsys.readouterr()
