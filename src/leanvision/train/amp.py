"""One optimizer step with mixed-precision loss scaling: `GradientStep` (zero the gradients, backward, step; fp16
on CUDA through a `GradScaler`; on XLA the traced step is run at its end). The forward's autocast is
`device.autocast`."""

from __future__ import annotations

from typing import Any

import torch

from ..device import step_done


class GradientStep:
    """`step(loss)`: one optimizer update from `loss`; `state_dict`/`load_state_dict` carry the loss scale."""

    def __init__(self, optimizer: torch.optim.Optimizer, device: torch.device, precision: str):
        self.optimizer, self.device = optimizer, device
        self.scaler = torch.amp.GradScaler("cuda") if precision == "fp16" and device.type == "cuda" else None

    def step(self, loss: torch.Tensor) -> None:
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        step_done(self.device)  # XLA: run the traced step now

    def state_dict(self) -> dict[str, Any] | None:
        return self.scaler.state_dict() if self.scaler is not None else None

    def load_state_dict(self, state: dict[str, Any] | None) -> None:
        if self.scaler is not None and state:
            self.scaler.load_state_dict(state)
