import math

import pytest
import torch
from testkit import interrupt_at
from torch import nn

from leanvision.config import TrainConfig
from leanvision.errors import LeanvisionError, TrainingDiverged
from leanvision.io import load_state, load_weights
from leanvision.models import create_model
from leanvision.train import TrainingInterrupted, augment_batch, fit, learning_rate_at


def _model(name="compact", seed=0, **kw):
    torch.manual_seed(seed)
    return create_model(name, num_classes=10, in_chans=1, img_size=28, **kw)


def _strip_times(history):
    return [{k: v for k, v in r.items() if "time" not in k and "per_s" not in k} for r in history]


def test_fit_compact_on_digits_reaches_floor(digits, tmp_path):
    cfg = TrainConfig(epochs=8, optimizer="adam", learning_rate=3e-3, schedule="onecycle", device="cpu")
    history = fit(_model(), digits, cfg, tmp_path, progress=False)
    assert len(history) == 8
    assert history[-1]["val_accuracy"] >= 0.9
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    for name in ("best.safetensors", "last.safetensors", "checkpoint.safetensors", "metrics.jsonl"):
        assert (tmp_path / name).exists()
    assert len((tmp_path / "metrics.jsonl").read_text().splitlines()) == 8


def test_fit_on_epoch_end_sees_every_epoch(digits, tmp_path):
    seen = []
    fit(_model("seed-shallow"), digits, TrainConfig(epochs=2, device="cpu"), tmp_path, progress=False,
        on_epoch_end=lambda record, model: seen.append((record["epoch"], model.training)))
    assert seen == [(1, True), (2, True)]


def test_fit_same_seed_identical_metrics(digits, tmp_path):
    cfg = TrainConfig(epochs=2, seed=3, device="cpu", augment="crop-flip")
    a = fit(_model("seed-dropout", seed=3), digits, cfg, tmp_path / "a", progress=False)
    b = fit(_model("seed-dropout", seed=3), digits, cfg, tmp_path / "b", progress=False)
    assert _strip_times(a) == _strip_times(b)
    wa, wb = load_weights(tmp_path / "a" / "last.safetensors"), load_weights(tmp_path / "b" / "last.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.mark.parametrize("interrupt", [5, 11, 24])  # mid-epoch 1, exactly at the end of epoch 1, mid-epoch 3
def test_fit_resume_after_interrupt_matches_uninterrupted(digits, tmp_path, interrupt):
    # dropout + augmentation + onecycle: every RNG stream and the schedule must survive the interruption
    cfg = TrainConfig(epochs=3, seed=1, device="cpu", augment="crop-flip", schedule="onecycle", batch_size=128)
    full = fit(_model("seed-dropout", seed=1), digits, cfg, tmp_path / "full", progress=False)
    with interrupt_at(interrupt), pytest.raises(TrainingInterrupted, match="`resume`"):
        fit(_model("seed-dropout", seed=1), digits, cfg, tmp_path / "cut", progress=False)
    state = load_state(tmp_path / "cut" / "checkpoint.safetensors")
    assert state["global_step"] == interrupt
    resumed = fit(_model("seed-dropout", seed=99), digits, cfg, tmp_path / "cut", progress=False, resume=True)
    assert _strip_times(resumed) == _strip_times(full)
    wa = load_weights(tmp_path / "full" / "last.safetensors")
    wb = load_weights(tmp_path / "cut" / "last.safetensors")
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_fit_resume_refuses_other_config(digits, tmp_path):
    fit(_model(), digits, TrainConfig(epochs=1, device="cpu"), tmp_path, progress=False)
    with pytest.raises(LeanvisionError, match="config differs"):
        fit(_model(), digits, TrainConfig(epochs=1, learning_rate=0.5, device="cpu"), tmp_path, progress=False,
            resume=True)


class _BlowsUp(nn.Module):
    """Wraps a model and returns NaN logits from the `after`-th training forward on."""

    def __init__(self, inner, after):
        super().__init__()
        self.inner, self.after, self.calls = inner, after, 0

    def forward(self, x):
        out = self.inner(x)
        if self.training:
            self.calls += 1
            if self.calls > self.after:
                return out * float("nan")
        return out


def test_fit_nan_loss_stops_and_keeps_last_good_checkpoint(digits, tmp_path):
    cfg = TrainConfig(epochs=3, device="cpu")
    steps_per_epoch = digits.train.num_batches(cfg.batch_size)
    model = _BlowsUp(_model(), after=steps_per_epoch + 3)  # diverges in epoch 2
    with pytest.raises(TrainingDiverged, match=r"Loss became nan at epoch 2.*last good checkpoint \(epoch 1\)"):
        fit(model, digits, cfg, tmp_path, progress=False)
    state = load_state(tmp_path / "checkpoint.safetensors")
    assert state["epoch"] == 1 and len(state["history"]) == 1
    assert all(torch.isfinite(v).all() for v in load_weights(tmp_path / "best.safetensors").values())


def test_fit_l2_penalty_shrinks_regularized_kernel(digits, tmp_path):
    spec = {"layers": [{"flatten": {}}, {"dense": {"units": 10, "kernel_regularizer": {"l2": 1.0}}}]}
    plain = {"layers": [{"flatten": {}}, {"dense": {"units": 10}}]}
    cfg = TrainConfig(epochs=2, device="cpu", learning_rate=1e-2)
    norms = []
    for i, s in enumerate((spec, plain)):
        torch.manual_seed(0)
        m = create_model(s, num_classes=10, in_chans=1, img_size=28)
        fit(m, digits, cfg, tmp_path / str(i), progress=False)
        norms.append(sum(p.pow(2).sum().item() for n, p in m.named_parameters() if n.endswith("weight")))
    assert norms[0] < 0.2 * norms[1]


@pytest.mark.parametrize("patience", [1, 2])
def test_fit_early_stopping_waits_exactly_patience_epochs(digits, tmp_path, patience):
    cfg = TrainConfig(epochs=30, device="cpu", early_stopping=patience, learning_rate=3e-3, optimizer="adam",
                      schedule="constant")  # improves, then plateaus well before 30 epochs
    history = fit(_model("seed-shallow"), digits, cfg, tmp_path, progress=False)
    val = [h["val_accuracy"] for h in history]
    improved = [i for i, v in enumerate(val) if v > max(val[:i], default=-1.0)]  # the rule: strictly better
    assert len(history) < 30
    # it stopped right after `patience` epochs without a better validation accuracy, and not earlier
    assert len(history) == improved[-1] + 1 + patience
    gaps = [b - a for a, b in zip(improved, improved[1:])]
    assert all(gap <= patience for gap in gaps)


def test_learning_rate_schedules():
    cfg = TrainConfig(learning_rate=0.1, schedule="onecycle")
    lrs = [learning_rate_at(s, 100, 10, cfg) for s in range(100)]
    assert lrs[0] == pytest.approx(0.1 / 25)
    assert max(lrs) == pytest.approx(0.1)
    assert lrs[-1] < 0.001
    cos = TrainConfig(learning_rate=0.1, schedule="cosine")
    assert learning_rate_at(0, 100, 10, cos) == pytest.approx(0.1)
    assert learning_rate_at(50, 100, 10, cos) == pytest.approx(0.05)
    warm = TrainConfig(learning_rate=0.1, schedule="warmup", warmup_epochs=1)
    assert learning_rate_at(0, 100, 10, warm) == pytest.approx(0.01)
    assert learning_rate_at(50, 100, 10, warm) == pytest.approx(0.1)


def test_augment_batch_crop_shifts_and_flip_mirrors():
    x = torch.arange(2 * 1 * 6 * 6, dtype=torch.float32).view(2, 1, 6, 6)
    g = torch.Generator().manual_seed(0)
    flipped = augment_batch(x, "flip", g)
    for i in range(2):
        assert torch.equal(flipped[i], x[i]) or torch.equal(flipped[i], x[i].flip(2))
    # a larger batch: each image is mirrored left-right exactly when its own draw says so (p = 0.5), both happen
    many = torch.arange(32 * 6 * 6, dtype=torch.float32).view(32, 1, 6, 6)
    mask = torch.rand(32, generator=torch.Generator().manual_seed(3)) < 0.5
    out = augment_batch(many, "flip", torch.Generator().manual_seed(3))
    assert 0 < int(mask.sum()) < 32
    for i in range(32):
        assert torch.equal(out[i], many[i].flip(2) if mask[i] else many[i]), i
    cropped = augment_batch(x, "crop", torch.Generator().manual_seed(1), pad=2)
    assert cropped.shape == x.shape
    assert not torch.equal(cropped, x)  # some sample moved with this seed
    # each crop is its image shifted by one (dy, dx) within +-pad, zero-filled: a window of the zero-padded image
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(2):
        windows = [padded[i, :, dy:dy + 6, dx:dx + 6] for dy in range(5) for dx in range(5)]
        assert sum(torch.equal(cropped[i], w) for w in windows) == 1, i


@pytest.mark.parametrize("kw, match", [
    ({"epochs": 0}, "epochs"), ({"learning_rate": -1.0}, "learning_rate"), ({"optimizer": "lbfgs"}, "optimizer"),
    ({"precision": "int4"}, "precision"), ({"nesterov": True, "optimizer": "adam"}, "nesterov"),
])
def test_train_config_rejects_bad_values(kw, match):
    with pytest.raises(LeanvisionError, match=match):
        TrainConfig(**kw)


def test_fit_fp16_on_cpu_is_a_clear_error(digits, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA present")
    with pytest.raises(LeanvisionError, match="fp16 needs a CUDA device"):
        fit(_model(), digits, TrainConfig(epochs=1, precision="fp16", device="cpu"), tmp_path, progress=False)


def test_fit_bf16_trains(digits, tmp_path):
    history = fit(_model("seed-shallow"), digits, TrainConfig(epochs=3, precision="bf16", device="cpu"),
                  tmp_path, progress=False)
    assert math.isfinite(history[-1]["train_loss"]) and history[-1]["val_accuracy"] > 0.8
