"""Acceptance: ONNX Runtime classifies the MNIST test set exactly as PyTorch does, for every registered model.

Parity is a property of the runtime, not of training quality, so each model is trained only briefly (one pass over
3,200 MNIST images, 50 steps: clearly above chance) and then both runtimes classify the full 10,000-image test set.
"""

import dataclasses

import pytest
import torch

from leanvision.config import TrainConfig
from leanvision.data.normalize import normalizer
from leanvision.models import create_model, list_models
from leanvision.runtimes import get_runtime, predict_batches
from leanvision.train import fit

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def mnist_small(mnist_dir):
    from leanvision.data import load_dataset

    ds = load_dataset("mnist", str(mnist_dir), val_fraction=0.1, download=False)
    return dataclasses.replace(ds, train=ds.train.subset(range(3200)), val=ds.val.subset(range(200)))


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_onnxruntime_accuracy_equals_pytorch_on_mnist(name, mnist_small, tmp_path):
    ds = mnist_small
    torch.manual_seed(0)
    c, h, w = ds.input_shape
    model = create_model(name, num_classes=ds.num_classes, in_chans=c, img_size=(h, w))
    fit(model, ds, TrainConfig(epochs=1, batch_size=64, learning_rate=5e-3, device="cpu"), tmp_path, progress=False)
    model.eval().cpu()
    images = normalizer(ds.mean, ds.std, torch.device("cpu"))(ds.test.images)
    accuracy = {}
    for runtime in ("torch", "onnxruntime"):
        predict = get_runtime(runtime).prepare(model, images[:2])
        logits = predict_batches(predict, images, batch_size=1000)
        accuracy[runtime] = (logits.argmax(1) == ds.test.labels).float().mean().item()
    assert len(ds.test) == 10_000 and accuracy["torch"] > 0.15, accuracy  # trained: above chance (0.10)
    assert abs(accuracy["onnxruntime"] - accuracy["torch"]) * 100 <= 0.1, accuracy
