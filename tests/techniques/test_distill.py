import json

import pytest
import torch
import torch.nn.functional as F

from leanvision.config import DataConfig, RunConfig, TrainConfig
from leanvision.errors import LeanvisionError
from leanvision.io import load_weights, read_json
from leanvision.optimize import optimize_run
from leanvision.runs import load_run, train_run
from leanvision.techniques import distillation_loss
from leanvision.techniques.distill import load_teacher

STUDENT = RunConfig(model="lenet5", data=DataConfig("digits"),
                    train=TrainConfig(epochs=1, batch_size=64, learning_rate=2e-3, device="cpu", label_smoothing=0.1))
TIMING = {"epoch_time_s", "train_images_per_s"}


def _metrics(run_dir):
    lines = (run_dir / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def test_distillation_with_alpha_zero_equals_plain_training(base_run, tmp_path, digits):
    teacher = load_run(base_run).model
    plain = train_run(STUDENT, tmp_path / "plain", progress=False, dataset=digits)
    distilled = train_run(STUDENT, tmp_path / "kd0", progress=False, dataset=digits,
                          loss_fn=distillation_loss(teacher, alpha=0.0, label_smoothing=STUDENT.train.label_smoothing))
    assert _metrics(tmp_path / "plain") == _metrics(tmp_path / "kd0")
    assert plain["test_accuracy"] == distilled["test_accuracy"]
    a, b = load_weights(tmp_path / "plain" / "best.safetensors"), load_weights(tmp_path / "kd0" / "best.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_distillation_loss_matches_hinton_formula():
    teacher = torch.nn.Linear(4, 3)
    x, y = torch.randn(8, 4), torch.randint(0, 3, (8,))
    student_logits = torch.randn(8, 3)
    alpha, t = 0.7, 3.0
    with torch.no_grad():
        p_teacher = F.softmax(teacher(x) / t, dim=1)
    log_p_student = F.log_softmax(student_logits / t, dim=1)
    kl = (p_teacher * (p_teacher.log() - log_p_student)).sum(1).mean()  # KL(teacher || student), per image
    expected = alpha * t * t * kl + (1 - alpha) * F.cross_entropy(student_logits, y)
    got = distillation_loss(teacher, alpha=alpha, temperature=t)(student_logits, y, x)
    torch.testing.assert_close(got, expected)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_optimize_distill_retrains_the_run_architecture(base_run, tmp_path, digits):
    train_run(STUDENT, tmp_path / "student", progress=False, dataset=digits)
    result = optimize_run(tmp_path / "student", [f"distill:teacher={base_run},alpha=0.5,temperature=4"],
                          tmp_path / "distilled", dataset=digits, progress=False)
    step = result["steps"][1]
    assert step["step"] == "distill" and step["teacher"] == str(base_run) and step["epochs"] == 1
    assert step["params"] == result["steps"][0]["params"]  # same architecture, new weights
    assert read_json(tmp_path / "distilled" / "model.json")["model"] == "lenet5"
    assert load_run(tmp_path / "distilled").model(torch.zeros(1, 1, 28, 28)).shape == (1, 10)


def test_teacher_must_match_the_student(base_run):
    meta = read_json(base_run / "model.json")
    with pytest.raises(LeanvisionError, match="does not match the student"):
        load_teacher(base_run, {**meta, "num_classes": 7}, load_run)
