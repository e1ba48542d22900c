"""The rules of a sweep file that span fields, each refused with its YAML path and the fix (`config_errors.PathError`).

`SweepConfig._cross_checks` calls them with the file's parts, once per expanded trial where the grid changes what
they see. They read the config classes only; what needs the data (shard counts, classes) is `data_check.py`'s.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from orchestrator.sweep.config_errors import PathError

if TYPE_CHECKING:
    from orchestrator.sweep.config import ChaosConfig, DataConfig, RecipeConfig, ResourcesConfig


def check_stop(recipe: RecipeConfig, grid: Mapping[str, Any]) -> None:
    """A trial stops after `recipe.epochs` or after `recipe.max_steps`, never both."""
    epochs_given = "epochs" in recipe.model_fields_set or "epochs" in grid
    for where, given in (
        (("recipe", "max_steps"), recipe.max_steps is not None),
        (("grid", "max_steps"), "max_steps" in grid),
    ):
        if given and epochs_given:
            raise PathError(where, "replaces recipe.epochs (training stops after max_steps); remove epochs")


def check_recipe(recipe: RecipeConfig, resources: ResourcesConfig, *, milestones_given: bool) -> None:
    """The global batch splits evenly over the workers (an elastic range: into `max` micro-batches, whatever the
    group's size); every given milestone of the step schedule comes."""
    workers = resources.max_workers
    if recipe.batch_size % workers:
        why = (
            f"resources.workers.max={workers}, so it cannot split into {workers} equal micro-batches (one per worker "
            "at the range's max)"
            if resources.elastic
            else f"resources.workers={workers}"
        )
        raise PathError(
            ("recipe", "batch_size"),
            f"{recipe.batch_size} is not divisible by {why}; choose a multiple of {workers}",
        )
    # The defaults (30, 60, 80) are torchvision's 90-epoch schedule: only milestones the file gives are its intent.
    if recipe.schedule != "step" or not milestones_given:
        return
    end, what = _schedule_end(recipe)
    late = [m for m in recipe.milestones if end is not None and m > end]
    if late:
        unit = "steps" if recipe.milestone_unit == "step" else "epochs"
        raise PathError(
            ("recipe", "milestones"),
            f"{list(recipe.milestones)} reaches beyond {what}={end} ({unit} {late} never come), so the step schedule "
            f"would never divide the learning rate there; choose milestones of at most {end}, or train more {unit}",
        )


def _schedule_end(recipe: RecipeConfig) -> tuple[int | None, str]:
    """The last epoch or step (the milestones' unit) a trial reaches, and what sets it; None where it depends on
    the data (`max_steps` in epochs, or epochs in steps, without `steps_per_epoch`)."""
    per_epoch = recipe.steps_per_epoch
    if recipe.milestone_unit == "step":
        if recipe.max_steps is not None:
            return recipe.max_steps, "recipe.max_steps"
        return (recipe.epochs * per_epoch, "recipe.epochs x recipe.steps_per_epoch") if per_epoch else (None, "")
    if recipe.max_steps is None:
        return recipe.epochs, "recipe.epochs"
    return (recipe.total_epochs(per_epoch), "the epochs of recipe.max_steps") if per_epoch else (None, "")


def check_protocols(recipes: Sequence[RecipeConfig], data: DataConfig) -> None:
    """The final evaluation protocols need a val set."""
    protocols = {p for recipe in recipes for p in recipe.eval.protocols}
    if protocols and data.val is None:
        raise PathError(
            ("recipe", "eval", "protocols"),
            f"{sorted(protocols)} evaluate on data.val, which is not set; add data.val or remove the protocols",
        )


def check_faults(faults: Sequence[ChaosConfig], workers: int, recipes: Sequence[RecipeConfig]) -> None:
    """Each fault names a rank of the trial and a step some trial reaches (where `steps_per_epoch` or `max_steps`
    make it known)."""
    capped = [r.total_steps(r.steps_per_epoch or 0) for r in recipes if r.steps_per_epoch or r.max_steps]
    cap = "recipe.max_steps" if any(r.max_steps for r in recipes) else "recipe.epochs x recipe.steps_per_epoch"
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
                f"{fault.at_step} is beyond the last step of every trial (at most {max(capped)} = {cap}), so"
                f" the fault would never fire; choose 1..{max(capped)}",
            )


def check_elastic(resources: ResourcesConfig, data: DataConfig) -> None:
    """An elastic range reads each step's samples by their place in the epoch's global order, which the torch loader
    does (`pipelines.elastic_loader`); the DALI pipeline reads one contiguous slice per rank, which a resize changes."""
    if resources.elastic and data.backend != "torch":
        raise PathError(
            ("data", "backend"),
            f"{data.backend!r}: an elastic resources.workers range reads its samples with the torch loader, whose "
            "steps stay the same whatever the number of workers; set data.backend: torch (or give a fixed number "
            "of workers for DALI)",
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
