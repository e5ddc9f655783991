"""Training: `fit(model, dataset, config, out_dir)` and the pieces around its loop, one home each.

- `loop`: `fit`, the epoch and step loop.
- `optim`: the optimizer and the learning-rate schedule; `augment`: batch augmentation on the device.
- `amp`: one optimizer step with fp16 loss scaling (and the XLA step cut); autocast itself is `device.autocast`.
- `ranks`: torchrun data parallelism behind one interface (`OneProcess` / `Ranks`).
- `checkpoint`: the training state, resume, and each epoch's files (weights, checkpoint, metrics.jsonl).
- `progress`: live bar, epoch lines and the metrics record; `stopping`: Ctrl-C, the test hook, divergence.
- `placement`: where the train split lives on the device.

Example: `history = fit(create_model("compact"), load_dataset("digits"), TrainConfig(epochs=2), "runs/a")`.
"""

from ..errors import TrainingInterrupted
from .augment import augment_batch
from .checkpoint import CHECKPOINT, METRICS
from .loop import fit
from .optim import fused_optimizer, learning_rate_at, make_optimizer, param_groups

__all__ = ["CHECKPOINT", "METRICS", "TrainingInterrupted", "augment_batch", "fit", "fused_optimizer",
           "learning_rate_at", "make_optimizer", "param_groups"]
