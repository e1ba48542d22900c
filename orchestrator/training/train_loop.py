"""The per-worker train function of one trial: Ray Train runs `train_func(config)` on every rank.

The function does not know who launched it or how many times (torchvision's `run_with_submitit.py`): it finds the
latest checkpoint Ray Train hands it, loads it, and continues at exactly the next batch. Every failure leaves as a
`TrainFunctionError` that says what kind it is and whether a step had completed, for the restart policy.
"""

from __future__ import annotations

import json
import logging
import math
import tempfile
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from models import get_model
from orchestrator.sweep.config import TrialConfig
from orchestrator.training import metric_names as m
from orchestrator.training.chaos import Point, maybe_kill, should_kill
from orchestrator.training.checkpointing import (
    RankState,
    TrainState,
    capture_rng,
    checkpoint_dir_name,
    latest_complete_checkpoint,
    read_checkpoint,
    register_attempt,
    restore_rng,
    seed_everything,
    write_checkpoint,
)
from orchestrator.training.live_metrics import TrainMetrics
from orchestrator.training.lr_schedule import LRSchedule
from orchestrator.training.restart_policy import FailureKind, TrainFunctionError, classify_message
from pipelines.loader import Loader, LoaderSpec
from pipelines.loader_factory import make_loader
from pipelines.presets import IGNORE_INDEX
from pipelines.sharding import read_manifest

logger = logging.getLogger(__name__)

CHAOS_MARKER = "chaos.json"
# Between reports, the live Ray metrics are refreshed at most this often (each refresh syncs the GPU once).
_LIVE_METRICS_EVERY_S = 5.0
# Errors a bad trial config raises while the model and loaders are built (unknown model or option, missing data).
_CONFIG_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, PermissionError)
# Window sums, in this order, all-reduced at every report.
_SUMS = ("samples", "loss_sum", "correct1", "correct5", "wait_s", "step_s", "steps")


@dataclass
class _Progress:
    """What the failure handler needs to know about the attempt."""

    in_setup: bool = True
    steps_done: int = 0


class InvariantError(RuntimeError):
    """A pass read a different number of samples than its shard set holds: every metric of it would be wrong."""


def train_func(config: dict[str, Any]) -> None:
    """Ray Train's `train_loop_per_worker`: `config` is `TrialConfig.model_dump(mode="json")`."""
    progress = _Progress()
    try:
        _Trainer(TrialConfig.model_validate(config), progress).run()
    except TrainFunctionError:
        raise
    except Exception as exc:
        raise _as_failure(exc, progress) from exc


def _as_failure(exc: Exception, progress: _Progress) -> TrainFunctionError:
    text = f"{type(exc).__name__}: {exc}"
    frames = traceback.extract_tb(exc.__traceback__)
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno})" if frames else ""
    kind = FailureKind.INVARIANT if isinstance(exc, InvariantError) else classify_message(text)
    if kind is FailureKind.CODE and progress.in_setup and isinstance(exc, _CONFIG_ERRORS):
        kind = FailureKind.CONFIG
    return TrainFunctionError(kind.value, progress.steps_done, text + where)


@dataclass
class _Window:
    """Sums since the last report; device-side parts stay on the device so a step never waits for the GPU."""

    device: torch.device
    on_device: torch.Tensor = field(init=False)  # samples, loss_sum, correct1, correct5
    wait_s: float = 0.0
    step_s: float = 0.0
    steps: int = 0
    started: float = field(default_factory=time.perf_counter)

    def __post_init__(self) -> None:
        self.on_device = torch.zeros(4, dtype=torch.float64, device=self.device)

    def add(self, sums: torch.Tensor, wait_s: float, step_s: float) -> None:
        """`sums`: (samples, loss_sum, correct1, correct5) of one batch, from `batch_sums`."""
        self.on_device += sums
        self.wait_s += wait_s
        self.step_s += step_s
        self.steps += 1

    def local(self) -> list[float]:
        return [*self.on_device.tolist(), self.wait_s, self.step_s, float(self.steps)]


def batch_sums(logits: torch.Tensor, labels: torch.Tensor, loss_sum: torch.Tensor) -> torch.Tensor:
    """(real samples, loss sum, top-1 hits, top-5 hits) of one batch as a float64 device tensor (no GPU sync).

    Padding positions (label `IGNORE_INDEX`, see `pipelines.loader`) never match a class, so they are no hits.
    """
    valid = labels != IGNORE_INDEX
    hits = logits.detach().topk(min(5, logits.shape[1]), dim=1).indices.eq(labels.unsqueeze(1))
    return torch.stack([valid.sum(), loss_sum.detach(), hits[:, :1].sum(), hits.any(dim=1).sum()]).double()


@dataclass
class LiveThroughput:
    """Real (non-padding) images this worker trained since the last live refresh, for the Ray metrics.

    Counts the same samples as the reported `images_per_s` (`batch_sums`' first entry), so the loader's tail padding
    (label `IGNORE_INDEX`) is not throughput. The count stays on the device; `take` syncs it once per refresh.
    """

    device: torch.device
    since: float = field(default_factory=time.perf_counter)
    images: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        self.images = torch.zeros((), dtype=torch.float64, device=self.device)

    def add(self, sums: torch.Tensor) -> None:
        """`sums`: one batch's `batch_sums`."""
        self.images += sums[0]

    def due(self, now: float) -> bool:
        return now - self.since >= _LIVE_METRICS_EVERY_S

    def take(self, now: float) -> tuple[int, float]:
        """(images, images per second) since the last take; starts a new window at `now`."""
        images = int(self.images.item())
        rate = images / max(now - self.since, 1e-9)
        self.images.zero_()
        self.since = now
        return images, rate


def check_num_classes(num_classes: int, dataset_classes: dict[str, int], split: str, uri: str) -> None:
    """Refuse a classifier that cannot output every class index of the shards at `uri` (`data.<split>`).

    `dataset_classes` is the manifest's wnid -> class index map. Fewer outputs than classes would fail inside the
    loss on the first out-of-range label (a device-side assert on GPU); more outputs than classes only train logits
    no label ever asks for, which is legitimate (a subset, the CI sample) but worth a warning.
    """
    classes = max(dataset_classes.values(), default=-1) + 1
    if classes > num_classes:
        raise ValueError(
            f"model.num_classes is {num_classes} but data.{split} ({uri}) has {classes} classes; "
            f"set model.num_classes: {classes} in the sweep file"
        )
    if classes < num_classes:
        logger.warning(
            "model.num_classes is %d but data.%s (%s) has %d classes: %d outputs never see a label; "
            "set model.num_classes: %d unless that is intended",
            num_classes,
            split,
            uri,
            classes,
            num_classes - classes,
            classes,
        )


def _all_reduce_sum(values: list[float], device: torch.device) -> dict[str, float]:
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(tensor)
    return dict(zip(_SUMS, tensor.tolist(), strict=True))


class _Trainer:
    """One rank of one attempt of one trial."""

    def __init__(self, cfg: TrialConfig, progress: _Progress) -> None:
        self.cfg = cfg
        self.progress = progress
        recipe = cfg.recipe
        context = ray.train.get_context()
        self.rank = context.get_world_rank()
        self.world = context.get_world_size()
        self.device = ray.train.torch.get_device()
        on_gpu = self.device.type == "cuda"
        if on_gpu:
            torch.cuda.set_device(self.device)
        # bf16 autocast needs no loss scaling (same exponent range as fp32), so there is no GradScaler.
        self.bf16 = recipe.precision == "bf16" or (recipe.precision == "auto" and on_gpu)
        self.channels_last = recipe.channels_last if recipe.channels_last is not None else on_gpu
        # A fixed thread count per worker: the same math in the same order on every run of the same seed.
        torch.set_num_threads(max(1, int(cfg.resources.cpus_per_worker)))
        self.storage = context.get_storage()
        self.metrics = TrainMetrics(sweep=cfg.sweep_name, trial=cfg.trial_id, rank=self.rank)

        self.attempt = self._broadcast(
            register_attempt(self.storage.storage_filesystem, self.storage.experiment_fs_path) if self.rank == 0 else 0
        )
        self.attempt_started = time.time()

        # Identical initial weights on every rank (DDP also broadcasts rank 0's at wrap time).
        seed_everything(cfg.seed)
        self.model: nn.Module = get_model(cfg.model.registry_name, **cfg.model.model_kwargs())
        self.model.to(self.device)
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)
        self.train_loader = make_loader(self._spec("train", cfg.data.train), self.rank, self.world, self.device)
        self.val_loader: Loader | None = (
            make_loader(self._spec("val", cfg.data.val), self.rank, self.world, self.device)
            if cfg.data.val is not None
            else None
        )
        for split, uri in (("train", cfg.data.train), ("val", cfg.data.val)):
            if uri is not None:
                check_num_classes(cfg.model.resolved_num_classes, read_manifest(uri)["classes"], split, uri)
        self.steps_per_epoch = len(self.train_loader)
        if recipe.steps_per_epoch is not None:
            self.steps_per_epoch = min(self.steps_per_epoch, recipe.steps_per_epoch)
        if self.steps_per_epoch == 0:
            raise ValueError(
                f"data.train {cfg.data.train}: no full batch of {cfg.per_worker_batch} per worker; "
                "lower recipe.batch_size or add data"
            )
        self.schedule = LRSchedule(recipe, self.steps_per_epoch)
        self.criterion = nn.CrossEntropyLoss(
            reduction="sum", ignore_index=IGNORE_INDEX, label_smoothing=recipe.label_smoothing
        )
        self.state = TrainState(
            step=0, epoch=0, epoch_step=0, attempt=self.attempt, optimizer={}, schedule={}, ranks=[]
        )
        self.epoch_totals = dict.fromkeys(_SUMS, 0.0)
        self.resumed_from_step = -1
        resume_loader: dict[str, Any] | None = self._restore()

        self.ddp = DistributedDataParallel(
            self.model, device_ids=[self.device.index] if on_gpu and self.device.index is not None else None
        )
        self.forward: nn.Module = torch.compile(self.ddp) if recipe.compile else self.ddp  # type: ignore[assignment]
        # The paper's recipe (Section 3.4): SGD, momentum 0.9, weight decay 1e-4 on all weights, no dropout.
        self.optimizer = torch.optim.SGD(
            self.ddp.parameters(), lr=self.schedule.lr_at(0), momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
        if self.state.optimizer:
            self.optimizer.load_state_dict(self.state.optimizer)
        self.resume_loader = resume_loader
        self.first_step_unix_s = math.nan
        # This attempt's per-step losses not yet in `state.step_losses` (kept on the device until the next report).
        self.pending_losses: list[torch.Tensor] = []

    def _spec(self, split: str, uri: str) -> LoaderSpec:
        recipe = self.cfg.recipe
        return LoaderSpec(
            uri=uri,
            split=split,  # type: ignore[arg-type]
            batch_size=self.cfg.per_worker_batch,
            preset=recipe.preset,
            image_size=recipe.image_size,
            resize_size=recipe.resize_size,
            dtype="bfloat16" if self.bf16 else "float32",
            channels_last=self.channels_last,
            backend=self.cfg.data.backend,
            num_threads=self.cfg.data.num_threads,
            seed=self.cfg.seed,
        )

    def _broadcast(self, value: Any) -> Any:
        box = [value]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def _latest_checkpoint(self) -> ray.train.Checkpoint | None:
        """The newest complete checkpoint in the trial's storage, else Ray's latest registered one; rank 0 picks."""
        fs = self.storage.storage_filesystem
        newest = latest_complete_checkpoint(fs, self.storage.experiment_fs_path) if self.rank == 0 else None
        newest = self._broadcast(newest)
        if newest is not None:
            return ray.train.Checkpoint(newest, filesystem=fs)
        return ray.train.get_checkpoint()

    def _restore(self) -> dict[str, Any] | None:
        """Load the latest checkpoint, if any, into the model, schedule and RNGs; return this rank's loader state."""
        checkpoint = self._latest_checkpoint()
        if checkpoint is None:
            seed_everything(self.cfg.seed + self.rank)
            return None
        with checkpoint.as_directory() as directory:
            model_state, state = read_checkpoint(Path(directory))
        if len(state.ranks) != self.world:
            raise ValueError(
                f"the checkpoint at {checkpoint.path} was written by {len(state.ranks)} workers, this attempt has "
                f"{self.world}; resources.workers must stay the same to resume exactly"
            )
        self.model.load_state_dict(model_state)
        self.schedule.load_state_dict(state.schedule)
        rank_state = state.ranks[self.rank]
        restore_rng(rank_state.rng)
        self.epoch_totals = dict(state.epoch_totals)
        self.state = state
        self.resumed_from_step = state.step
        logger.info(
            "rank %d resumes attempt %d from step %d (epoch %d, step %d of it)",
            self.rank,
            self.attempt,
            state.step,
            state.epoch,
            state.epoch_step,
        )
        return rank_state.loader

    def run(self) -> None:
        recipe = self.cfg.recipe
        for epoch in range(self.state.epoch, recipe.epochs):
            self.train_loader.set_epoch(epoch)
            if self.resume_loader is not None:
                self.train_loader.load_state_dict(self.resume_loader)
                self.resume_loader = None
            self.state.epoch = epoch
            self._end_epoch(self._train_epoch())

    def _train_epoch(self) -> _Window:
        """Train the rest of the current epoch; return the window of steps not yet reported."""
        state = self.state
        window = _Window(self.device)
        live = LiveThroughput(self.device)
        batches = iter(self.train_loader)
        self.forward.train()
        self.progress.in_setup = False
        while state.epoch_step < self.steps_per_epoch:
            started = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                raise RuntimeError(
                    f"the train loader ended after {state.epoch_step} of its {self.steps_per_epoch} batches "
                    f"in epoch {state.epoch}"
                )
            waited = time.perf_counter() - started
            lr = self.schedule.lr_at(state.step)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images = batch.images.to(self.device, non_blocking=True)
            labels = batch.labels.to(self.device, non_blocking=True)
            with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
                logits = self.forward(images)
            # Sum over the real samples, divided by their count: a rank's all-padding tail batch gives 0, not NaN.
            loss_sum = self.criterion(logits.float(), labels)
            loss = loss_sum / (labels != IGNORE_INDEX).sum().clamp(min=1)
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            state.step += 1
            state.epoch_step += 1
            self.progress.steps_done += 1
            sums = batch_sums(logits, labels, loss_sum)
            window.add(sums, waited, time.perf_counter() - started)
            live.add(sums)
            self.pending_losses.append(loss.detach())
            if self.progress.steps_done == 1:
                self.first_step_unix_s = time.time()
            self._chaos("step")
            now = time.perf_counter()
            if live.due(now):
                trained, images_per_s = live.take(now)
                self.metrics.update(images_per_s=images_per_s, lr=lr, step=state.step)
                self.metrics.update(train_loss=float(loss), data_wait_frac=window.wait_s / max(window.step_s, 1e-9))
                self.metrics.add_images(trained)
            last_of_epoch = state.epoch_step == self.steps_per_epoch
            if not last_of_epoch and state.step % self.cfg.checkpoint.every_steps == 0:
                self._report(self._fold(window), epoch_end=False)
                window = _Window(self.device)
        self.metrics.add_images(live.take(time.perf_counter())[0])
        return window

    def _end_epoch(self, window: _Window) -> None:
        """Close the epoch: reduce its sums, evaluate, step the plateau rule, checkpoint and report."""
        state = self.state
        val = self._evaluate()
        reduced = self._fold(window)
        totals = self.epoch_totals
        expected = self.train_loader.samples_in_batches(self.steps_per_epoch)
        if int(totals["samples"]) != expected:
            raise InvariantError(
                f"epoch {state.epoch} trained {int(totals['samples'])} samples over all ranks, but its "
                f"{self.steps_per_epoch} steps per rank over data.train ({self.cfg.data.train}) hold {expected}"
            )
        train_top1_err = 1.0 - totals["correct1"] / max(totals["samples"], 1.0)
        # The plateau rule watches the validation error (He et al. 2015, Section 3.4); the training error if no
        # validation set is configured.
        self.schedule.end_epoch(train_top1_err if math.isnan(val[m.VAL_TOP1_ERR]) else val[m.VAL_TOP1_ERR])
        state.epoch_sizes.append(int(totals["samples"]))
        epoch_metrics = {
            m.EPOCH_TRAIN_LOSS: totals["loss_sum"] / max(totals["samples"], 1.0),
            m.EPOCH_TRAIN_TOP1_ERR: train_top1_err,
            m.EPOCH_TRAIN_TOP5_ERR: 1.0 - totals["correct5"] / max(totals["samples"], 1.0),
            m.EPOCH_SAMPLES: totals["samples"],
            m.EPOCH_TIME_S: totals["step_s"] / self.world,
            **val,
        }
        self.metrics.update(epoch_time_s=epoch_metrics[m.EPOCH_TIME_S])
        state.epoch += 1
        state.epoch_step = 0
        self.epoch_totals = dict.fromkeys(_SUMS, 0.0)
        self._report(reduced, epoch_end=True, extra=epoch_metrics)

    def _fold(self, window: _Window) -> dict[str, float]:
        reduced = _all_reduce_sum(window.local(), self.device)
        reduced["wall_s"] = time.perf_counter() - window.started
        for key in _SUMS:
            self.epoch_totals[key] += reduced[key]
        return reduced

    def _evaluate(self) -> dict[str, float]:
        """One complete pass over the val shards, all ranks together: every sample once, padding excluded."""
        if self.val_loader is None:
            return {m.VAL_TOP1_ERR: math.nan, m.VAL_TOP5_ERR: math.nan, m.VAL_LOSS: math.nan, m.VAL_SAMPLES: 0.0}
        model = self.model
        # Each rank's BatchNorm running statistics moved with its own last batches; evaluate rank 0's, which are
        # what the checkpoint saves, so the reported error is the saved model's. (DDP broadcasts rank 0's buffers
        # before every training forward anyway, so training is unchanged.)
        for buffer in model.buffers():
            dist.broadcast(buffer, src=0)
        model.eval()
        # The val set is one fixed epoch (no shuffle, no random augmentation): the same pass every time.
        self.val_loader.set_epoch(0)
        sums = torch.zeros(4, dtype=torch.float64, device=self.device)  # samples, loss_sum, correct1, correct5
        with torch.no_grad(), torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            for batch in self.val_loader:
                images = batch.images.to(self.device, non_blocking=True)
                labels = batch.labels.to(self.device, non_blocking=True)
                logits = model(images).float()
                loss_sum = nn.functional.cross_entropy(logits, labels, reduction="sum", ignore_index=IGNORE_INDEX)
                sums += batch_sums(logits, labels, loss_sum)
        dist.all_reduce(sums)
        model.train()
        samples, loss_sum, correct1, correct5 = sums.tolist()
        expected = self.val_loader.samples_per_epoch
        if int(samples) != expected:
            raise InvariantError(
                f"the validation pass after epoch {self.state.epoch} evaluated {int(samples)} samples over all "
                f"ranks, but data.val ({self.cfg.data.val}) holds {expected}"
            )
        return {
            m.VAL_TOP1_ERR: 1 - correct1 / samples,
            m.VAL_TOP5_ERR: 1 - correct5 / samples,
            m.VAL_LOSS: loss_sum / samples,
            m.VAL_SAMPLES: samples,
        }

    def _report(self, reduced: dict[str, float], *, epoch_end: bool, extra: dict[str, float] | None = None) -> None:
        """Checkpoint (rank 0 writes it, every rank sends its loader position and RNGs) and `ray.train.report`.

        `reduced`: the window's sums over all ranks (`_fold`), already added to the epoch's totals.
        """
        state = self.state
        samples = max(reduced["samples"], 1.0)
        wall_s = max(reduced["wall_s"], 1e-9)
        images_per_s = reduced["samples"] / wall_s
        metrics: dict[str, Any] = {
            m.EPOCH: state.epoch - 1 if epoch_end else state.epoch,
            m.STEP: state.step,
            m.IS_EPOCH_END: epoch_end,
            m.TRAIN_LOSS: reduced["loss_sum"] / samples,
            m.TRAIN_TOP1_ERR: 1.0 - reduced["correct1"] / samples,
            m.TRAIN_TOP5_ERR: 1.0 - reduced["correct5"] / samples,
            m.VAL_TOP1_ERR: math.nan,
            m.VAL_TOP5_ERR: math.nan,
            m.IMAGES_PER_S: images_per_s,
            m.IMAGES_PER_S_PER_WORKER: images_per_s / self.world,
            m.STEP_TIME_S: reduced["step_s"] / max(reduced["steps"], 1.0),
            m.EPOCH_TIME_S: math.nan,
            m.LR: self.optimizer.param_groups[0]["lr"],
            m.DATA_WAIT_FRAC: reduced["wait_s"] / max(reduced["step_s"], 1e-9),
            m.SAMPLES_PER_EPOCH: self.train_loader.samples_per_epoch,
            m.ATTEMPT: self.attempt,
            m.RESUMED_FROM_STEP: self.resumed_from_step,
            m.ATTEMPT_START_UNIX_S: self.attempt_started,
            m.FIRST_STEP_UNIX_S: self.first_step_unix_s,
            **(extra or {}),
        }
        self.metrics.update(
            images_per_s_total=images_per_s,
            train_loss=metrics[m.TRAIN_LOSS],
            data_wait_frac=metrics[m.DATA_WAIT_FRAC],
        )
        if self.pending_losses:
            state.step_losses.extend(torch.stack(self.pending_losses).float().cpu().tolist())
            self.pending_losses = []
        state.optimizer = self.optimizer.state_dict()
        state.schedule = self.schedule.state_dict()
        state.epoch_totals = dict(self.epoch_totals)
        state.attempt = self.attempt
        mine = RankState(loader=None if epoch_end else self.train_loader.state_dict(), rng=capture_rng())
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        state.ranks = gathered
        if self.rank != 0:
            self._chaos("checkpoint")
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory(prefix="resnet-orch-ckpt-") as tmp:
            directory = write_checkpoint(
                Path(tmp) / "checkpoint",
                self.model.state_dict(),
                state,
                after_first_file=lambda: self._chaos("checkpoint"),
            )
            ray.train.report(
                metrics,
                checkpoint=ray.train.Checkpoint.from_directory(directory),
                checkpoint_dir_name=checkpoint_dir_name(state.step, self.attempt),
            )

    def _chaos(self, point: Point) -> None:
        chaos = self.cfg.chaos
        step = self.state.step
        if should_kill(chaos, rank=self.rank, step=step, attempt=self.attempt, point=point):
            # Drills measure the time from the kill to the next completed step: leave the kill's time behind.
            marker = {"rank": self.rank, "step": step, "point": point, "unix_s": time.time()}
            path = f"{self.storage.experiment_fs_path}/{CHAOS_MARKER}"
            with self.storage.storage_filesystem.open_output_stream(path) as out:
                out.write(json.dumps(marker).encode())
        maybe_kill(chaos, rank=self.rank, step=step, attempt=self.attempt, point=point)
