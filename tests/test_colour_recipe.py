"""The colour (CIFAR-10) recipe's pieces: whitenet, patch whitening, lookahead, the triangular schedule, BatchNorm
parameter groups, translate-flip augmentation, and the recipe end to end on a small real colour subset."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from testkit import interrupt_at
from torch import nn

from leanvision.config import DataConfig, RunConfig, TrainConfig
from leanvision.lookahead import Lookahead
from leanvision.models import create_model
from leanvision.recipes import resolve_recipe
from leanvision.train import augment_batch, fit, learning_rate_at, make_optimizer


def test_whitenet_shapes_counts_and_flip_tta():
    from leanvision.measure import count_macs, count_params

    model = create_model("whitenet", in_chans=3, img_size=32)
    assert count_params(model) == 498_104
    assert count_macs(model, (3, 32, 32)) == pytest.approx(66.13e6, rel=0.01)  # inference: image + mirror image
    single = create_model("whitenet", in_chans=3, img_size=32, flip_tta=False)
    assert count_macs(single, (3, 32, 32)) == pytest.approx(33.07e6, rel=0.01)
    x = torch.randn(4, 3, 32, 32)
    model.eval()
    with torch.no_grad():
        both = model(x)
        assert torch.allclose(both, 0.5 * (model._logits(x) + model._logits(x.flip(-1))), atol=1e-5)
        assert not torch.allclose(both, model._logits(x), atol=1e-3)  # the mirror view does change the answer
        model.flip_tta = False
        assert torch.allclose(model(x), model._logits(x), atol=1e-6)
    wide = create_model("whitenet", in_chans=3, img_size=32, widths=64)
    assert [m.out_channels for m in wide.modules() if isinstance(m, nn.Conv2d)][1::2] == [64, 256, 256]


def test_whitenet_refuses_bad_widths():
    from leanvision.errors import LeanvisionError

    with pytest.raises(LeanvisionError, match="widths"):
        create_model("whitenet", in_chans=3, img_size=32, widths=[32, 64])


def test_init_from_data_whitens_patches():
    """After init, the whitening conv's first half of outputs has (near) identity covariance on the data's
    2x2 patches, and the weights are frozen."""
    torch.manual_seed(0)
    mix = torch.tensor([[1.0, 0.8, 0.6], [0.0, 0.5, 0.4], [0.0, 0.0, 0.2]])
    images = torch.einsum("dc,nchw->ndhw", mix, torch.randn(400, 3, 16, 16))
    images = images + 0.7 * images.roll(1, dims=3)  # neighbouring pixels correlated
    model = create_model("whitenet", in_chans=3, img_size=16)
    model.init_from_data(images)
    assert not model.whiten.weight.requires_grad
    with torch.no_grad():
        out = model.whiten(images) - model.whiten.bias.view(1, -1, 1, 1)
    half = out[:, :12].permute(1, 0, 2, 3).reshape(12, -1)
    cov = half @ half.T / half.shape[1]
    assert torch.allclose(cov, torch.eye(12), atol=0.05)
    assert torch.allclose(out[:, 12:], -out[:, :12])


def test_lookahead_pulls_weights_to_the_slow_average_and_ends_on_it():
    model = nn.Linear(1, 1, bias=False)
    la = Lookahead(model, total_steps=20)  # starts at step 6, updates every 5 steps, and at step 20
    with torch.no_grad():
        model.weight.fill_(1.0)
    la.after_step(5)
    assert la.slow is None  # before 30% of training nothing happens
    la.after_step(6)  # not a multiple of 5
    assert la.slow is None
    la.after_step(10)
    assert la.slow["weight"].item() == 1.0  # first update: the slow copy starts at the current weights
    with torch.no_grad():
        model.weight.fill_(3.0)
    la.after_step(15)
    decay = 0.95**5 * (15 / 20) ** 3
    expected = 1.0 + (1 - decay) * (3.0 - 1.0)
    assert model.weight.item() == pytest.approx(expected)  # fast reset to slow
    with torch.no_grad():
        model.weight.fill_(10.0)
    la.after_step(20)  # the last step: the model ends at the slow weights, not pulled toward 10
    assert model.weight.item() == pytest.approx(expected)


def test_triangle_schedule():
    cfg = TrainConfig(schedule="triangle", learning_rate=2.0)
    lrs = [learning_rate_at(s, 100, 10, cfg) for s in range(101)]
    assert lrs[0] == pytest.approx(0.4)
    assert max(lrs) == pytest.approx(2.0) and lrs.index(max(lrs)) == 23
    assert lrs[100] == pytest.approx(0.14)
    assert all(a <= b for a, b in zip(lrs[:23], lrs[1:24])) and all(a >= b for a, b in zip(lrs[23:], lrs[24:]))


def test_norm_parameters_get_their_own_learning_rate_and_decay():
    model = create_model("whitenet", in_chans=3, img_size=32)
    cfg = TrainConfig(optimizer="sgd", learning_rate=0.5, weight_decay=1e-3, norm_lr_scale=64.0)
    opt = make_optimizer(model, cfg)
    main, norm = opt.param_groups
    bn_shifts = {id(m.bias) for m in model.modules() if isinstance(m, nn.BatchNorm2d)}
    assert {id(p) for p in norm["params"]} == bn_shifts  # frozen BN scales and whitening weights are not trained
    assert norm["lr"] == pytest.approx(32.0) and norm["weight_decay"] == pytest.approx(1e-3 / 64)
    assert main["lr"] == 0.5 and main["weight_decay"] == 1e-3
    trained = sum(p.numel() for g in opt.param_groups for p in g["params"])
    assert trained == sum(p.numel() for p in model.parameters() if p.requires_grad)
    assert len(make_optimizer(model, dataclasses.replace(cfg, norm_lr_scale=1.0)).param_groups) == 1


def test_translate_flip_is_a_mirrored_shift_of_each_image():
    x = torch.randn(16, 3, 8, 8)
    out = augment_batch(x, "translate-flip", torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2), mode="reflect")
    seen = set()
    for i in range(len(x)):
        matches = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                   if torch.equal(out[i], (lambda v: v.flip(-1) if f else v)(padded[i, :, dy:dy + 8, dx:dx + 8]))]
        assert matches, f"image {i} is not a shifted/flipped copy"
        seen.add(matches[0])
    assert len(seen) > 4  # shifts and flips vary across the batch


def test_lookahead_resume_is_exact(digits, tmp_path):
    """A run with lookahead interrupted and resumed ends with the same weights as one that was not."""
    cfg = TrainConfig(epochs=2, batch_size=64, optimizer="sgd", learning_rate=0.05, lookahead=True,
                      schedule="triangle", norm_lr_scale=4.0)

    def run(out, interrupt=None):
        torch.manual_seed(0)
        model = create_model("compact", in_chans=1, img_size=8)
        if interrupt:
            from leanvision.train import TrainingInterrupted

            with interrupt_at(interrupt), pytest.raises(TrainingInterrupted):
                fit(model, digits, cfg, out, progress=False)
            torch.manual_seed(0)
            model = create_model("compact", in_chans=1, img_size=8)
            fit(model, digits, cfg, out, progress=False, resume=True)
        else:
            fit(model, digits, cfg, out, progress=False)
        return model.state_dict()

    straight, resumed = run(tmp_path / "a"), run(tmp_path / "b", interrupt=30)
    for k in straight:
        assert torch.equal(straight[k], resumed[k]), k


@pytest.fixture(scope="module")
def cifar_subset(shared_data, tmp_path_factory) -> Path:
    """A small real colour dataset: 150 training and 40 test JPEGs per CIFAR-10 class (links, nothing copied)."""
    src = shared_data / "cifar10"
    if not (src / "train_jpg").is_dir() or not (src / "test_jpg").is_dir():
        pytest.skip(f"CIFAR-10 JPEG folders not found in {src}")
    root = tmp_path_factory.mktemp("cifar-subset")
    for split, per_class in (("train", 150), ("test", 40)):
        for cls_dir in sorted((src / f"{split}_jpg").iterdir()):
            dest = root / split / cls_dir.name
            dest.mkdir(parents=True)
            for f in sorted(cls_dir.iterdir())[:per_class]:
                (dest / f.name).symlink_to(f)
    return root


def test_colour_fast_recipe_learns_on_real_photos(cifar_subset, tmp_path):
    from leanvision.data import load_dataset
    from leanvision.runs import train_run

    dataset = load_dataset(str(cifar_subset))
    recipe = resolve_recipe("fast", dataset.input_shape, "cpu")
    assert recipe.model == "whitenet" and recipe.train["lookahead"] and recipe.train["norm_lr_scale"] == 64.0
    train = {**recipe.train, "epochs": 12, "batch_size": 128, "seed": 0, "device": "cpu"}  # 1,350 images
    cfg = RunConfig(model=recipe.model, model_kwargs=recipe.model_kwargs,
                    data=DataConfig(str(cifar_subset)), train=TrainConfig(**train))
    result = train_run(cfg, tmp_path / "run", progress=False, dataset=dataset)
    assert result["test_accuracy"] >= 0.40  # chance is 10%; measured 0.5975 (seed 0, 400 test images)
