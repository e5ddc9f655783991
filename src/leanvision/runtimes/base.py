"""The runtime interface and registry: a runtime turns a model into `predict(x) -> logits`.

A runtime is a class registered in `RUNTIMES` with a `name`, `is_available() -> (ok, reason)` and
`prepare(model, example, precision, device) -> predict`, where `predict(x)` maps a float batch `(N, C, H, W)` to
logits `(N, num_classes)`. `predict_batches` computes logits for a whole dataset through one, so accuracy and speed
are measured on the same artefact (`leanvision.measure.speed` times them).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar

import numpy as np
import torch
from torch import nn

from ..config import PRECISIONS  # noqa: F401  (one tuple for training and runtimes; imported from here)
from ..errors import LeanvisionError
from ..registry import Registry

Predict = Callable[[torch.Tensor], torch.Tensor]


class Runtime:
    """Base class of an inference runtime; subclass it and register it with `@RUNTIMES.register("<name>")`."""

    name: ClassVar[str] = ""
    precisions: ClassVar[tuple[str, ...]] = ("fp32",)
    host_input: ClassVar[bool] = False  # True: reads inputs from CPU memory, so benchmarks keep inputs on the CPU
    onnx_models: ClassVar[bool] = False  # True: also runs int8 ONNX runs (`OnnxModule`) from `leanvision optimize`

    def is_available(self) -> tuple[bool, str]:
        """Whether the runtime can be used here, and why not (an install hint) when it cannot."""
        return True, ""

    def prepare(
        self, model: nn.Module, example: torch.Tensor, precision: str = "fp32", device: torch.device | str = "cpu"
    ) -> Predict:
        """Build the inference function from `model`; `example` is a float batch `(N, C, H, W)` fixing C, H, W."""
        raise NotImplementedError

    def _check_precision(self, precision: str) -> None:
        if precision not in self.precisions:
            raise LeanvisionError(
                f"Invalid precision {precision!r} for runtime {self.name!r}. "
                f"Expected one of: {', '.join(self.precisions)}."
            )


RUNTIMES: Registry[type[Runtime]] = Registry("runtime")


def get_runtime(name: str) -> Runtime:
    """An instance of the runtime registered as `name`. Example: `get_runtime("onnxruntime").is_available()`."""
    return RUNTIMES.get(name)()


def predict_batches(fn: Predict, images_float: torch.Tensor | np.ndarray, batch_size: int = 256) -> torch.Tensor:
    """Logits for all of `images_float` `(N, C, H, W)`, computed `batch_size` images at a time; returned on the CPU.

    Example: `acc = (predict_batches(predict, x_test).argmax(1) == y_test).float().mean()`.
    """
    if batch_size < 1:
        raise ValueError(f"Invalid `batch_size`. Expected an integer >= 1. Received: batch_size={batch_size}")
    images = torch.as_tensor(images_float)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(
            f"Invalid `images_float`. Expected a non-empty (N, C, H, W) batch. Received shape {tuple(images.shape)}"
        )
    chunks = [fn(images[i : i + batch_size].float()).detach().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(chunks)
