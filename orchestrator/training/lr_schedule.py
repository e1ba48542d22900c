"""The learning rate of every step: linear warm-up, then step / plateau / cosine decay. Pure, checkpointable.

One small class instead of chained torch schedulers: the rate is a function of the step (plus the plateau
state), so a restart from a mid-epoch checkpoint lands on exactly the rate the uninterrupted run used.
"""

from __future__ import annotations

import math
from typing import Any

from orchestrator.sweep.config import RecipeConfig

# ReduceLROnPlateau's default threshold: an epoch "improves" when the metric drops by more than 0.01%.
_PLATEAU_RELATIVE_THRESHOLD = 1e-4


class LRSchedule:
    """`lr_at(step)` for the 0-based optimizer step about to run; `end_epoch(metric)` feeds the plateau rule."""

    def __init__(self, recipe: RecipeConfig, steps_per_epoch: int) -> None:
        if steps_per_epoch <= 0:
            raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
        self.recipe = recipe
        self.steps_per_epoch = steps_per_epoch
        # Linear scaling rule with gradual warm-up (Goyal et al. 2017, Sections 2.1-2.2).
        self.base_lr = recipe.scaled_lr
        self.warmup_steps = round(recipe.resolved_warmup_epochs * steps_per_epoch)
        self.total_steps = recipe.epochs * steps_per_epoch
        self.plateau_scale = 1.0
        self.best_metric = math.inf
        self.bad_epochs = 0

    def lr_at(self, step: int) -> float:
        if step < self.warmup_steps:
            return self.base_lr * (step + 1) / self.warmup_steps
        recipe = self.recipe
        if recipe.schedule == "step":
            # "divided by 10" at fixed epochs (He et al. 2015, Section 3.4; torchvision's 30/60/80).
            epoch = step // self.steps_per_epoch
            return self.base_lr * recipe.gamma ** sum(1 for m in recipe.milestones if epoch >= m)
        if recipe.schedule == "cosine":
            # Loshchilov & Hutter 2017 (SGDR) without restarts, over the steps after warm-up.
            span = max(1, self.total_steps - self.warmup_steps)
            progress = min(1.0, (step - self.warmup_steps) / span)
            return 0.5 * self.base_lr * (1.0 + math.cos(math.pi * progress))
        return self.base_lr * self.plateau_scale

    def end_epoch(self, metric: float) -> None:
        """ "divided by 10 when the error plateaus" (He et al. 2015, Section 3.4): `metric` is that error."""
        if self.recipe.schedule != "plateau":
            return
        if metric < self.best_metric * (1.0 - _PLATEAU_RELATIVE_THRESHOLD):
            self.best_metric = metric
            self.bad_epochs = 0
            return
        self.bad_epochs += 1
        if self.bad_epochs > self.recipe.plateau_patience:
            self.plateau_scale *= self.recipe.gamma
            self.bad_epochs = 0

    def state_dict(self) -> dict[str, Any]:
        return {"plateau_scale": self.plateau_scale, "best_metric": self.best_metric, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.plateau_scale = float(state["plateau_scale"])
        self.best_metric = float(state["best_metric"])
        self.bad_epochs = int(state["bad_epochs"])
