"""Accuracy floors on real data (../shared/data), fixed seeds. Marked slow: about two minutes on 2 CPU cores."""

import json

import pytest

from leanvision.config import DataConfig, RunConfig, TrainConfig
from leanvision.measure import count_params
from leanvision.models import create_model
from leanvision.recipes import keras
from leanvision.runs import train_run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def mnist(mnist_dir):
    from leanvision.data import load_dataset

    return load_dataset("mnist", str(mnist_dir), val_fraction=0.1, download=False)


def test_seed_baseline_one_epoch_mnist_reference_training(mnist, mnist_dir, tmp_path):
    # the reference training: Adam 1e-3, batch 128, one epoch
    cfg = RunConfig(model="seed-baseline", data=DataConfig("mnist", str(mnist_dir)),
                    train=TrainConfig(**{**keras((1, 28, 28)).train, "epochs": 1, "device": "cpu"}))
    result = train_run(cfg, tmp_path, progress=False, dataset=mnist)
    assert result["test_total"] == 10_000
    assert result["test_accuracy"] >= 0.975, result


def test_compact_beats_99_in_three_epochs_with_an_eighth_of_the_parameters(mnist, mnist_dir, tmp_path):
    baseline = count_params(create_model("seed-baseline"))
    compact = count_params(create_model("compact"))
    assert compact < baseline / 8
    cfg = RunConfig(model="compact", data=DataConfig("mnist", str(mnist_dir)),
                    train=TrainConfig(epochs=3, batch_size=128, optimizer="adam", learning_rate=3e-3,
                                      schedule="onecycle", device="cpu"))
    result = train_run(cfg, tmp_path, progress=False, dataset=mnist)
    assert result["test_accuracy"] >= 0.990, result


def test_cifar10_jpeg_folder_loads_and_trains(shared_data, tmp_path):
    root = shared_data / "cifar10" / "test_jpg"
    cfg = RunConfig(model="resnet8", data=DataConfig(str(root)),
                    train=TrainConfig(epochs=1, batch_size=256, optimizer="adam", learning_rate=2e-3, device="cpu",
                                      precision="bf16"))
    result = train_run(cfg, tmp_path, progress=False)
    assert result["test_total"] == 2_000  # 20% stratified test split of the 10,000 images
    assert result["test_accuracy"] > 0.2  # well above chance (0.1) after one epoch on 7,200 images


def test_ants_bees_folder_with_gif_loads_and_trains(shared_data, tmp_path):
    root = shared_data / "hymenoptera_data"
    cfg = RunConfig(model="dsconv", data=DataConfig(str(root), image_size=64),
                    train=TrainConfig(epochs=3, batch_size=32, learning_rate=2e-3, device="cpu"))
    result = train_run(cfg, tmp_path, progress=False)
    assert result["test_total"] == 153  # val/ is the held-out split
    assert result["epochs_run"] == 3
    losses = [json.loads(line)["train_loss"] for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert losses[-1] < losses[0]  # it learns from the photos (accuracy after 3 epochs on 220 images is noisy)
