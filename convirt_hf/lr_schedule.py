"""Learning-rate control whose whole state is plain numbers, so it checkpoints as JSON.

The rate at a step is ``base_lr * warmup(step) * shape(step) * plateau_factor``:

- ``warmup``: linear from 0 over ``warmup_steps``;
- ``shape``: ``"constant"`` (the paper) or ``"cosine"`` decay to 0 at ``total_steps``;
- ``plateau_factor``: the paper's rule, halved after ``plateau_patience`` evaluations without a new best
  validation loss (0 disables it).

It is not a ``torch.optim.lr_scheduler`` on purpose: accelerate steps prepared schedulers once per process, and the
trainer's plateau rule depends on validation results, not on steps.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import cast


@dataclass
class LearningRateController:
    base_lr: float
    shape: str = "constant"
    warmup_steps: int = 0
    total_steps: int | None = None
    plateau_patience: int = 0
    plateau_factor: float = 0.5
    factor: float = 1.0
    best_loss: float | None = None
    evaluations_without_improvement: int = 0

    def __post_init__(self):
        if self.shape not in ("constant", "cosine"):
            raise ValueError(f"--lr_scheduler must be 'constant', 'cosine' or 'plateau', got {self.shape!r}")
        if self.shape == "cosine" and not self.total_steps:
            raise ValueError("--lr_scheduler cosine needs --max_steps (the decay length)")

    def lr_at(self, step: int) -> float:
        warmup = min(1.0, (step + 1) / self.warmup_steps) if self.warmup_steps else 1.0
        shape = 1.0
        if self.shape == "cosine":
            progress = min(1.0, step / max(1, cast(int, self.total_steps)))  # __post_init__ requires it for cosine
            shape = 0.5 * (1.0 + math.cos(math.pi * progress))
        return self.base_lr * warmup * shape * self.factor

    def apply(self, optimizer, step: int) -> float:
        lr = self.lr_at(step)
        for group in optimizer.param_groups:
            group["lr"] = lr
        return lr

    def observe_validation(self, loss: float) -> bool:
        """Records a validation loss; returns True if it is a new best. Halves the rate on a plateau."""
        if self.best_loss is None or loss < self.best_loss:
            self.best_loss = loss
            self.evaluations_without_improvement = 0
            return True
        self.evaluations_without_improvement += 1
        if self.plateau_patience and self.evaluations_without_improvement % self.plateau_patience == 0:
            self.factor *= self.plateau_factor
        return False

    def state_dict(self) -> dict:
        return asdict(self)

    def load_state_dict(self, state: dict) -> None:
        for key, value in state.items():
            setattr(self, key, value)
