"""The rules of a sweep file that span fields, each refused with its YAML path and the fix (`config_errors.PathError`).

`SweepConfig._cross_checks` calls them with the file's parts, once per expanded trial where the grid changes what
they see. They read the config classes only; what needs the data (shard counts, classes) is `data_check.py`'s.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from orchestrator.sweep.config_errors import PathError

if TYPE_CHECKING:
    from orchestrator.sweep.config import ChaosConfig, DataConfig, RecipeConfig


def check_recipe(recipe: RecipeConfig, workers: int, *, milestones_given: bool) -> None:
    """The global batch splits evenly over the workers; every given milestone of the step schedule comes."""
    if recipe.batch_size % workers:
        raise PathError(
            ("recipe", "batch_size"),
            f"{recipe.batch_size} is not divisible by resources.workers={workers}; choose a multiple of {workers}",
        )
    late = [m for m in recipe.milestones if m > recipe.epochs]
    # The defaults (30, 60, 80) are torchvision's 90-epoch schedule: only milestones the file gives are its intent.
    if recipe.schedule == "step" and milestones_given and late:
        raise PathError(
            ("recipe", "milestones"),
            f"{list(recipe.milestones)} reaches beyond recipe.epochs={recipe.epochs} (epochs {late} never come), so "
            f"the step schedule would never divide the learning rate there; choose milestones of at most "
            f"{recipe.epochs}, or train more epochs",
        )


def check_faults(faults: Sequence[ChaosConfig], workers: int, recipes: Sequence[RecipeConfig]) -> None:
    """Each fault names a rank of the trial and a step some trial reaches (where capped epochs make it known)."""
    capped = [r.epochs * r.steps_per_epoch for r in recipes if r.steps_per_epoch is not None]
    for index, fault in enumerate(faults):
        where: tuple[str | int, ...] = ("chaos",) if len(faults) == 1 else ("chaos", index)
        if fault.kill_rank >= workers:
            raise PathError(
                (*where, "kill_rank"),
                f"{fault.kill_rank} is not a rank of a {workers}-worker trial; choose 0..{workers - 1}",
            )
        if len(capped) == len(recipes) and fault.at_step > max(capped):
            raise PathError(
                (*where, "at_step"),
                f"{fault.at_step} is beyond the last step of every trial (at most {max(capped)} = recipe.epochs x "
                f"recipe.steps_per_epoch), so the fault would never fire; choose 1..{max(capped)}",
            )


def check_val(data: DataConfig) -> None:
    """Validation on held-out images, unless the file says on purpose that it validates on the training set."""
    if data.val_is_train and not data.allow_val_equals_train:
        raise PathError(
            ("data", "val"),
            f"{data.val} is data.train too: errors on the training images measure memorisation, not "
            "generalisation; give a held-out shard set (`resnet-orch data shard` of the val split), or set "
            "data.allow_val_equals_train: true for a smoke run",
        )


def same_location(a: str, b: str) -> bool:
    """Whether two `data:` URIs name the same shard set (`~`, `./` and trailing slashes aside)."""

    def norm(uri: str) -> str:
        return uri.rstrip("/") if "://" in uri else str(Path(uri).expanduser().resolve())

    return norm(a) == norm(b)
