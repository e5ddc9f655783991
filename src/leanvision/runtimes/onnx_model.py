"""`OnnxModule`, an int8 ONNX model (from `leanvision optimize --quantize`) behind the `nn.Module` interface, and
`is_onnx(model)`: the one way to ask whether a model runs in ONNX Runtime only."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..errors import LeanvisionError
from .session import make_session


class OnnxModule(nn.Module):
    """An ONNX model run by ONNX Runtime on the CPU behind the `nn.Module` interface: `forward(x) -> logits`.

    `x` is a float batch (N, C, H, W) on any device; logits come back as float32 on the same device. The module has
    one empty parameter so `next(model.parameters()).device` works for callers that ask. `onnx_path` and
    `session_kwargs` let runtimes open the same file themselves.

    Example: `OnnxModule("runs/int8/model.onnx")(x).argmax(1)`.
    """

    def __init__(self, path: str | Path, session_kwargs: dict[str, Any] | None = None):
        super().__init__()
        self.onnx_path = Path(path)
        self.session_kwargs = dict(session_kwargs or {})
        self.anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        if not self.onnx_path.is_file():
            raise LeanvisionError(f"ONNX model {self.onnx_path} not found. Expected the model.onnx written by "
                                  "`leanvision optimize --quantize`; re-create the run.")
        self._session = None

    @property
    def session(self):
        if self._session is None:
            self._session = make_session(self.onnx_path, self.session_kwargs)
        return self._session

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        array = x.detach().to("cpu", torch.float32).contiguous().numpy()
        out = self.session.run(None, {self.session.get_inputs()[0].name: array})[0]
        return torch.from_numpy(out).to(x.device)

    def __deepcopy__(self, memo: dict) -> OnnxModule:
        return OnnxModule(self.onnx_path, self.session_kwargs)  # a fresh session; sessions cannot be copied

    def extra_repr(self) -> str:
        return f"{self.onnx_path}"


def is_onnx(model: Any) -> bool:
    """True for the int8 ONNX Runtime model of a quantized run (`OnnxModule`): it runs in ONNX Runtime only, and its
    file is `model.onnx_path`. The one way to ask."""
    return isinstance(model, OnnxModule)
