"""Lookahead weight averaging as airbench uses it (after Zhang et al., 2019, "Lookahead Optimizer").

Every `EVERY` optimizer steps after `START` of training, a slow copy of the weights (and BatchNorm statistics) moves
toward the current weights, and the current weights are reset to it:
`slow <- slow + (1 - decay) * (fast - slow); fast <- slow`, with `decay = 0.95**5 * progress**3`, so averaging is
weak early and strong at the end. The last step leaves the model at the slow weights. `fit` runs it when
`TrainConfig.lookahead` is on; its state is part of the resumable checkpoint.
"""

from __future__ import annotations

import torch
from torch import nn

EVERY = 5  # optimizer steps between updates
START = 0.3  # fraction of training before the first update
BASE = 0.95


class Lookahead:
    """Slow weights of `model` for a run of `total_steps` optimizer steps.

    Example: `la = Lookahead(model, total_steps)`; after each optimizer step `la.after_step(global_step)` with the
    number of steps done so far.
    """

    def __init__(self, model: nn.Module, total_steps: int):
        self.model, self.total_steps = model, total_steps
        self.start = int(START * total_steps)
        self.slow: dict[str, torch.Tensor] | None = None

    def _floats(self) -> dict[str, torch.Tensor]:
        return {k: v for k, v in self.model.state_dict().items() if v.dtype.is_floating_point}

    @torch.no_grad()
    def after_step(self, steps_done: int) -> None:
        last = steps_done >= self.total_steps
        if steps_done < self.start or (steps_done % EVERY and not last):
            return
        current = self._floats()
        if self.slow is None:
            self.slow = {k: v.detach().clone() for k, v in current.items()}
            return
        decay = 1.0 if last else BASE**EVERY * (steps_done / self.total_steps) ** 3  # last: fast <- slow as is
        for name, slow in self.slow.items():
            slow.lerp_(current[name], 1 - decay)
            current[name].copy_(slow)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.slow or {})

    def load_state_dict(self, state: dict[str, torch.Tensor] | None) -> None:
        current = self._floats()
        self.slow = {k: v.to(current[k]).clone() for k, v in state.items()} if state else None
