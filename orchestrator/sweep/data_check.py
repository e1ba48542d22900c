"""Before anything is queued: each `data:` location of a sweep holds a complete shard set its trials can train on.

`validate` and `submit` call `check_data`. Wrong and reachable (no manifest, a shard missing or cut short, more
classes than the model outputs, a chaos fault no trial reaches) is a `DataError` naming the location and the fix,
and the command exits 2 before anything is written. Out of reach from this machine (no credentials here, an endpoint
or a path only the cluster sees) is not checked, with a warning: the cluster may reach what this machine cannot.
The train loop checks the class count again on every rank (`check_num_classes`), against the shards it reads.
"""

from __future__ import annotations

import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from orchestrator.sweep.config import SweepConfig, TrialConfig
from pipelines.retry import ONE_TRY
from pipelines.sharding import read_manifest
from pipelines.sources import ShardingError
from pipelines.storage import StorageError, Store, open_store

logger = logging.getLogger(__name__)

# A quick look, not a transfer: a location that does not answer within this is reported as not checked.
_S3_LOOK = {"connect_timeout": 5, "read_timeout": 15, "retries": {"max_attempts": 2, "mode": "standard"}}


class DataError(ValueError):
    """A `data:` location the sweep's trials cannot train on; one line per problem, each naming the fix."""


@dataclass(frozen=True)
class ShardSetSummary:
    """What the checks need of a complete shard set."""

    uri: str
    samples: int
    classes: dict[str, int]  # wnid -> class index

    @property
    def num_classes(self) -> int:
        return max(self.classes.values(), default=-1) + 1


def read_shard_set(uri: str) -> ShardSetSummary:
    """The manifest's counts of the shard set at `uri`, once every shard it lists is in place at its size.

    `ShardingError` when the set is incomplete (the fix: `data shard` to completion); `StorageError` when the
    location cannot be reached from here.
    """
    store = open_store(uri, ONE_TRY, **_S3_LOOK)
    manifest = read_manifest(uri, store)
    shards: list[dict[str, Any]] = manifest["shards"]
    if sum(int(s["samples"]) for s in shards) != int(manifest["num_samples"]):
        raise ShardingError(f"{uri}: the manifest's shards do not add up to its num_samples; shard the set again")
    with ThreadPoolExecutor(max_workers=16) as pool:
        problems = [p for p in pool.map(lambda shard: _shard_problem(store, shard), shards) if p]
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise ShardingError(
            f"{problems[0]}{more}: {uri} is not a complete shard set; run `resnet-orch data shard SRC {uri}` again "
            "(it rewrites only what is missing)"
        )
    return ShardSetSummary(uri=uri, samples=int(manifest["num_samples"]), classes=dict(manifest["classes"]))


def _shard_problem(store: Store, shard: dict[str, Any]) -> str | None:
    tar_size = store.size(shard["name"])
    if tar_size is None:
        return f"{store.location.join(shard['name'])} is missing"
    if tar_size != int(shard["bytes"]):
        return f"{store.location.join(shard['name'])} is {tar_size} bytes, the manifest says {shard['bytes']}"
    if store.size(shard["index"]) is None:
        return f"{store.location.join(shard['index'])} is missing"
    return None


def class_count_mismatch(
    num_classes: int, dataset_classes: dict[str, int], split: str, uri: str
) -> tuple[str | None, str | None]:
    """(problem, warning) of a classifier with `num_classes` outputs on the shards at `uri` (`data.<split>`), whose
    manifest maps wnid -> class index (`dataset_classes`).

    Fewer outputs than classes would fail inside the loss on the first out-of-range label (a device-side assert on
    GPU): a problem. More outputs than classes only train logits no label ever asks for, which is legitimate (a
    subset, the CI sample) but worth a warning.
    """
    classes = max(dataset_classes.values(), default=-1) + 1
    if classes > num_classes:
        return (
            f"model.num_classes is {num_classes} but data.{split} ({uri}) has {classes} classes; "
            f"set model.num_classes: {classes} in the sweep file"
        ), None
    if classes < num_classes:
        return None, (
            f"model.num_classes is {num_classes} but data.{split} ({uri}) has {classes} classes: "
            f"{num_classes - classes} outputs never see a label; set model.num_classes: {classes} unless that is "
            "intended"
        )
    return None, None


def check_num_classes(num_classes: int, dataset_classes: dict[str, int], split: str, uri: str) -> None:
    """Refuse (`ValueError`) or warn about a class-count mismatch (`class_count_mismatch`); the train loop's check on
    every rank, against the shards it reads."""
    problem, warning = class_count_mismatch(num_classes, dataset_classes, split, uri)
    if problem is not None:
        raise ValueError(problem)
    if warning is not None:
        logger.warning("%s", warning)


def total_steps(trial: TrialConfig, train_samples: int) -> int:
    """The optimizer steps a trial runs over a train set of `train_samples`: each rank's padded batches per epoch
    (`pipelines.loader.EpochPlan`; an elastic trial's global steps, `pipelines.global_order.GlobalPlan`), capped
    by `recipe.steps_per_epoch`, times the epochs (or `recipe.max_steps`)."""
    from pipelines.global_order import GlobalPlan
    from pipelines.loader import EpochPlan

    resources = trial.resources
    batches = (
        GlobalPlan(train_samples, trial.per_worker_batch, resources.max_workers).steps
        if resources.elastic
        else EpochPlan(train_samples, 0, resources.max_workers, trial.per_worker_batch, last_batch="pad").batches
    )
    steps = batches if trial.recipe.steps_per_epoch is None else min(batches, trial.recipe.steps_per_epoch)
    return trial.recipe.total_steps(steps)


def check_data(config: SweepConfig, *, on_this_machine: bool = True) -> list[str]:
    """Check every `data:` location of `config`; return warnings for those not checked, raise `DataError` listing
    every problem found.

    `on_this_machine=False` (a sweep for a remote cluster): a local path that is not here may be on the cluster's
    nodes, so it is a warning, not a problem.
    """
    problems: list[str] = []
    warnings: list[str] = []
    found: dict[str, ShardSetSummary] = {}
    for split, uri in (("train", config.data.train), ("val", config.data.val)):
        if uri is None:
            continue
        try:
            found[split] = read_shard_set(uri)
        except ShardingError as exc:
            if not on_this_machine and "://" not in uri:
                warnings.append(f"data.{split}: {uri} is not a shard set on this machine; not checked here")
            else:
                problems.append(f"data.{split}: {exc}")
        except StorageError as exc:
            warnings.append(f"data.{split} not checked: {exc}")
    trials = config.expand(storage_root="<storage>")
    for split, summary in found.items():
        for num_classes in sorted({trial.model.resolved_num_classes for trial in trials}):
            problem, warning = class_count_mismatch(num_classes, summary.classes, split, summary.uri)
            problems += [problem] if problem is not None else []
            warnings += [warning] if warning is not None else []
    if "train" in found:
        problems += _unreachable_faults(config, trials, found["train"].samples)
    if problems:
        raise DataError("\n".join(problems))
    return warnings


def _unreachable_faults(config: SweepConfig, trials: list[TrialConfig], train_samples: int) -> list[str]:
    last = max(total_steps(trial, train_samples) for trial in trials)
    return [
        f"chaos{'' if len(config.chaos) == 1 else f'[{index}]'}.at_step: {fault.at_step} is beyond the last step of "
        f"every trial ({last} with data.train's {train_samples} samples), so the fault would never fire; choose "
        f"1..{last}"
        for index, fault in enumerate(config.chaos)
        if fault.at_step > last
    ]
