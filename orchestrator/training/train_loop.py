"""The per-worker train function of one trial: Ray Train runs `train_func(config)` on every rank.

The function does not know who launched it or how many times (torchvision's `run_with_submitit.py`): it finds the
latest checkpoint Ray Train hands it, loads it, and continues at exactly the next batch. Every failure leaves as a
`TrainFunctionError` that says what kind it is and whether a step had completed, for the restart policy.

The loop itself is here; what it is made of has a module each: `setup` (placement, model, loaders), `accounting`
(the sums a step adds), `evaluation` (the validation pass), `reporting` (the metrics of a report), `checkpointing`
(the state a restart needs, on disk).
"""

from __future__ import annotations

import json
import logging
import math
import time
import traceback
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import ray.train
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from orchestrator.sweep.config import TrialConfig
from orchestrator.training import metric_names as m
from orchestrator.training import setup
from orchestrator.training.accounting import InvariantError, LiveThroughput, Window, fold, zero_totals
from orchestrator.training.accumulation import Accumulator
from orchestrator.training.chaos import Point, maybe_kill, should_kill
from orchestrator.training.checkpoint_reports import CheckpointReports
from orchestrator.training.checkpointing import (
    CheckpointError,
    RankState,
    TrainState,
    capture_rng,
    load_newest_checkpoint,
    read_checkpoint,
    register_attempt,
    restore_rng,
    seed_everything,
    unsent_reports,
)
from orchestrator.training.evaluation import evaluate, evaluate_protocol, no_validation
from orchestrator.training.live_metrics import TrainMetrics
from orchestrator.training.lr_schedule import LRSchedule
from orchestrator.training.preemption import PreemptionNotices
from orchestrator.training.reporting import Position, epoch_metrics, train_top1_err, window_metrics
from orchestrator.training.restart_policy import FailureKind, TrainFunctionError, classify_message
from pipelines.elastic_loader import StepBatches
from pipelines.loader import Batch
from pipelines.presets import IGNORE_INDEX

logger = logging.getLogger(__name__)

CHAOS_MARKER = "chaos.json"
# Errors a bad trial config raises while the model and loaders are built (unknown model or option, missing data).
_CONFIG_ERRORS = (ValueError, KeyError, FileNotFoundError, NotADirectoryError, PermissionError)


@dataclass
class _Progress:
    """What the failure handler needs to know about the attempt."""

    in_setup: bool = True
    steps_done: int = 0


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


class _Trainer:
    """One rank of one attempt of one trial."""

    def __init__(self, cfg: TrialConfig, progress: _Progress) -> None:
        # The order of these steps is part of the result: seeding, model creation and loader creation draw random
        # numbers in this order on every attempt, which is what makes a restart reproduce the uninterrupted run.
        self.cfg = cfg
        self.progress = progress
        self.at = setup.place(cfg)
        self.rank, self.world, self.device = self.at.rank, self.at.world, self.at.device
        storage = ray.train.get_context().get_storage()
        self.storage = storage
        self.metrics = TrainMetrics(sweep=cfg.sweep_id or cfg.sweep_name, trial=cfg.trial_id, rank=self.rank)
        fs, trial_path = storage.storage_filesystem, storage.experiment_fs_path
        self.attempt = setup.broadcast(register_attempt(fs, trial_path) if self.rank == 0 else 0, self.device)
        self.attempt_started = time.time()
        # Identical initial weights on every rank (DDP also broadcasts rank 0's at wrap time).
        seed_everything(cfg.seed)
        self.model = setup.build_model(cfg, self.at)
        self.train_loader, self.val_loader = setup.build_loaders(cfg, self.at)
        self.val_classes = setup.dataset_classes(cfg.data.val) if cfg.data.val is not None else 0
        self.steps_per_epoch = setup.steps_per_epoch(cfg, self.train_loader)
        self.total_steps = cfg.recipe.total_steps(self.steps_per_epoch)
        self.epochs = cfg.recipe.total_epochs(self.steps_per_epoch)
        self.schedule = LRSchedule(cfg.recipe, self.steps_per_epoch, cfg.error_warmup)
        self.criterion = nn.CrossEntropyLoss(
            reduction="sum", ignore_index=IGNORE_INDEX, label_smoothing=cfg.recipe.label_smoothing
        )
        self.state = TrainState(
            step=0, epoch=0, epoch_step=0, attempt=self.attempt, optimizer={}, schedule={}, ranks=[]
        )
        self.epoch_totals = zero_totals()
        self.resumed_from_step = -1
        self.unsent: list[dict[str, Any]] = []  # reports of the checkpoint resumed from to send again
        self.resume_loader = self._restore()
        self._wrap_and_optimize()
        self.first_step_unix_s = math.nan
        # This attempt's per-step losses not yet in `state.step_losses` (kept on the device until the next report).
        self.pending_losses: list[torch.Tensor] = []
        self.notices = PreemptionNotices()
        self.reports = CheckpointReports(cfg, fs, trial_path, self.rank, self._chaos)

    def _wrap_and_optimize(self) -> None:
        """DDP around the (restored) model, compiled if asked, and its optimizer with the restored state."""
        recipe = self.cfg.recipe
        on_gpu_index = self.at.on_gpu and self.device.index is not None
        # An elastic rank runs as many forwards per step as it has micro-batches, which may differ between ranks:
        # DDP's per-forward buffer broadcast would pair unequal collectives, so each rank keeps its own BN statistics.
        self.ddp = DistributedDataParallel(
            self.model,
            device_ids=[self.device.index] if on_gpu_index else None,
            broadcast_buffers=not self.cfg.resources.elastic,
        )
        self.forward: nn.Module = torch.compile(self.ddp) if recipe.compile else self.ddp  # type: ignore[assignment]
        # The paper's recipe (Section 3.4): SGD, momentum 0.9, weight decay 1e-4 on all weights, no dropout.
        self.optimizer = torch.optim.SGD(
            self.ddp.parameters(), lr=self.schedule.lr_at(0), momentum=recipe.momentum, weight_decay=recipe.weight_decay
        )
        if self.state.optimizer:
            self.optimizer.load_state_dict(self.state.optimizer)
        self.accumulator = Accumulator(
            self.ddp,
            self.forward,
            self.optimizer,
            self.criterion,
            device=self.device,
            bf16=self.at.bf16,
            world=self.world,
            elastic=self.cfg.resources.elastic,
        )

    # ---- resuming ----------------------------------------------------------------------------------------------

    def _newest_checkpoint(self) -> tuple[str | None, dict[str, Any] | None, TrainState | None]:
        """Rank 0 picks the newest checkpoint in the trial's storage that reads (skipping corrupt or refused ones,
        see `load_newest_checkpoint`); every rank gets its path, and rank 0 the state it already read."""
        fs = self.storage.storage_filesystem
        found, problem = None, None
        if self.rank == 0:
            try:
                found = load_newest_checkpoint(fs, self.storage.experiment_fs_path, map_location=self.device)
            except CheckpointError as exc:
                problem = str(exc)
        path, problem = setup.broadcast((found[0] if found else None, problem), self.device)
        if problem is not None:
            raise CheckpointError(problem)
        if found is not None:
            return found
        if path is not None:
            with ray.train.Checkpoint(path, filesystem=fs).as_directory() as directory:
                return (path, *read_checkpoint(Path(directory), map_location=self.device))
        # No checkpoint directory in the trial's storage: Ray's latest registered one, if it knows one.
        checkpoint = ray.train.get_checkpoint()
        if checkpoint is None:
            return None, None, None
        with checkpoint.as_directory() as directory:
            return (checkpoint.path, *read_checkpoint(Path(directory), map_location=self.device))

    def _restore(self) -> dict[str, Any] | None:
        """Load the newest readable checkpoint, if any, into the model, schedule and RNGs; return this rank's loader
        state."""
        path, model_state, state = self._newest_checkpoint()
        if model_state is None or state is None:
            seed_everything(self.cfg.seed + self.rank)
            return None
        registered = ray.train.get_checkpoint()
        self.unsent = setup.broadcast(unsent_reports(state, registered.path if registered else None), self.device)
        rank_state = setup.state_of_rank(state, self.rank, self.world, elastic=self.cfg.resources.elastic, path=path)
        self.model.load_state_dict(model_state)
        self.schedule.load_state_dict(state.schedule)
        restore_rng(rank_state.rng)
        self.epoch_totals = dict(state.epoch_totals)
        self.state = state
        self.resumed_from_step = state.step
        logger.info(
            "rank %d resumes attempt %d from step %d (epoch %d, step %d of it) of %s",
            self.rank,
            self.attempt,
            state.step,
            state.epoch,
            state.epoch_step,
            path,
        )
        return rank_state.loader

    # ---- training ----------------------------------------------------------------------------------------------

    def run(self) -> None:
        for metrics in self.unsent:
            ray.train.report(metrics)  # every rank: Ray Train counts reports per rank
        try:
            for epoch in range(self.state.epoch, self.epochs):
                if self.resume_loader is not None:
                    # Restored first, then moved to `epoch`: a state saved at an epoch's end stands before this epoch.
                    self.train_loader.load_state_dict(self.resume_loader)
                    self.resume_loader = None
                self.train_loader.set_epoch(epoch)
                self.state.epoch = epoch
                self._end_epoch(self._train_epoch())
            self.reports.flush()  # the last report waits for its checkpoint (an epoch's end: nothing is held back)
        finally:
            self.reports.close()

    def _steps_in_epoch(self) -> int:
        """Steps of the current epoch: `steps_per_epoch`, fewer in the last one when `recipe.max_steps` ends it."""
        return min(self.steps_per_epoch, self.total_steps - self.state.epoch * self.steps_per_epoch)

    def _train_epoch(self) -> Window:
        """Train the rest of the current epoch; return the window of steps not yet reported."""
        state = self.state
        window = Window(self.device)
        live = LiveThroughput(self.device)
        batches: Iterator[Batch | StepBatches] = iter(self.train_loader)
        self.forward.train()
        self.progress.in_setup = False
        steps = self._steps_in_epoch()
        while state.epoch_step < steps:
            started = time.perf_counter()
            batch = next(batches, None)
            if batch is None:
                raise RuntimeError(
                    f"the train loader ended after {state.epoch_step} of its {self.steps_per_epoch} batches "
                    f"in epoch {state.epoch}"
                )
            waited = time.perf_counter() - started
            lr = self.schedule.lr_at(state.step)
            sums, loss = self.accumulator.step(batch, lr)
            state.step += 1
            state.epoch_step += 1
            self.progress.steps_done += 1
            if self.schedule.watches_train_error:
                self._observe_train_error(sums)
            window.add(sums, waited, time.perf_counter() - started)
            live.add(sums)
            self.pending_losses.append(loss.detach())
            state.step_lrs.append(lr)
            if self.progress.steps_done == 1:
                self.first_step_unix_s = time.time()
            self._chaos("step")
            now = time.perf_counter()
            if live.due(now):
                trained, images_per_s = live.take(now)
                self.metrics.update(images_per_s=images_per_s, lr=lr, step=state.step)
                self.metrics.update(
                    train_loss=self.accumulator.live_loss(loss), data_wait_frac=window.wait_s / max(window.step_s, 1e-9)
                )
                self.metrics.add_images(trained)
            last_of_epoch = state.epoch_step == steps
            periodic = not last_of_epoch and state.step % self.cfg.checkpoint.every_steps == 0
            just_in_time = self._preemption_notice(checkpoint_due=periodic or last_of_epoch)
            if periodic or just_in_time:
                self._report(fold(window, self.epoch_totals, self.device), epoch_end=False, wait=just_in_time)
                window = Window(self.device)
        self.metrics.add_images(live.take(time.perf_counter())[0])
        return window

    def _preemption_notice(self, *, checkpoint_due: bool) -> bool:
        """Poll Ray Train for a preemption notice (every rank, every step: it is a barrier); count a new one in the
        trial's state, and say whether this boundary must write a just-in-time checkpoint for it."""
        info = ray.train.get_preemption_info()
        decision = self.notices.decide(info.preempted_node_ids if info else None, checkpoint_due=checkpoint_due)
        if decision.new_preemption and info is not None:
            self.state.preemptions += 1
            logger.warning(
                "rank %d: preemption notice at step %d for nodes %s (ranks %s, deadline %s ms); %s",
                self.rank,
                self.state.step,
                info.preempted_node_ids,
                info.preempted_ranks,
                info.deadline_ms,
                "just-in-time checkpoint" if decision.write_checkpoint else "this step's checkpoint serves it",
            )
        return decision.write_checkpoint

    def _observe_train_error(self, sums: torch.Tensor) -> None:
        """Feed the error warm-up (He et al. 2015, Section 4.2) this step's top-1 hits and samples over all ranks."""
        step = sums[[2, 0]].clone()  # correct1, samples
        dist.all_reduce(step)
        hits, samples = step.tolist()
        self.schedule.observe_train(hits, samples)

    def _end_epoch(self, window: Window) -> None:
        """Close the epoch: evaluate, reduce its sums, step the plateau rule, checkpoint and report."""
        state = self.state
        val = self._evaluate()
        if state.epoch + 1 == self.epochs:
            val |= self._final_evaluation()
        reduced = fold(window, self.epoch_totals, self.device)
        totals = self.epoch_totals
        steps = self._steps_in_epoch()
        expected = self.train_loader.samples_in_batches(steps)
        if int(totals["samples"]) != expected:
            raise InvariantError(
                f"epoch {state.epoch} trained {int(totals['samples'])} samples over all ranks, but its "
                f"{steps} steps per rank over data.train ({self.cfg.data.train}) hold {expected}"
            )
        # The plateau rule watches the validation error (He et al. 2015, Section 3.4); the training error if no
        # validation set is configured.
        val_err = val[m.VAL_TOP1_ERR]
        self.schedule.end_epoch(train_top1_err(totals) if math.isnan(val_err) else val_err)
        state.epoch_sizes.append(int(totals["samples"]))
        closed = epoch_metrics(totals, self.world, val)
        self.metrics.update(epoch_time_s=closed[m.EPOCH_TIME_S])
        state.epoch += 1
        state.epoch_step = 0
        self.epoch_totals = zero_totals()
        self._report(reduced, epoch_end=True, extra=closed)

    def _evaluate(self) -> dict[str, float]:
        if self.val_loader is None:
            return no_validation()
        return evaluate(
            self.model,
            self.val_loader,
            self.device,
            bf16=self.at.bf16,
            epoch=self.state.epoch,
            val_uri=self.cfg.data.val,
            classes=self.val_classes,
        )

    def _final_evaluation(self) -> dict[str, float]:
        """After the last epoch: each protocol of `recipe.eval.protocols` over the whole val set (He et al. 2015,
        Section 3.4); its loader lives only for the pass."""
        metrics: dict[str, float] = {}
        for protocol in self.cfg.recipe.eval.protocols:
            loader = setup.build_final_loader(self.cfg, self.at, protocol)
            metrics |= evaluate_protocol(
                self.model,
                loader,
                self.device,
                bf16=self.at.bf16,
                protocol=protocol,
                val_uri=self.cfg.data.val,
                chunk=self.cfg.per_worker_batch,
            )
        return metrics

    # ---- reporting ---------------------------------------------------------------------------------------------

    def _report(
        self, reduced: dict[str, float], *, epoch_end: bool, extra: dict[str, float] | None = None, wait: bool = True
    ) -> None:
        """Report a window (`reduced`: its sums over all ranks, already in the epoch's totals) with a checkpoint;
        `wait`: the report is made now, not held back for its upload (`checkpoint_reports`)."""
        metrics = window_metrics(reduced, self._position(epoch_end), extra)
        self.metrics.update(
            images_per_s_total=metrics[m.IMAGES_PER_S],
            train_loss=metrics[m.TRAIN_LOSS],
            data_wait_frac=metrics[m.DATA_WAIT_FRAC],
        )
        self.state.reports.append(metrics)
        self._capture_state()
        self.reports.publish(metrics, self.model.state_dict(), self.state, wait=wait)

    def _position(self, epoch_end: bool) -> Position:
        state = self.state
        return Position(
            epoch=state.epoch - 1 if epoch_end else state.epoch,
            step=state.step,
            epoch_end=epoch_end,
            lr=self.optimizer.param_groups[0]["lr"],
            samples_per_epoch=self.train_loader.samples_per_epoch,
            world=self.world,
            attempt=self.attempt,
            resumed_from_step=self.resumed_from_step,
            attempt_start_unix_s=self.attempt_started,
            first_step_unix_s=self.first_step_unix_s,
            preemptions=self.state.preemptions,
        )

    def _capture_state(self) -> None:
        """Bring `self.state` up to now: losses, optimizer, schedule, epoch totals and every rank's loader and RNGs."""
        state = self.state
        if self.pending_losses:
            state.step_losses.extend(self.accumulator.step_losses(self.pending_losses))
            self.pending_losses = []
        state.optimizer = self.optimizer.state_dict()
        state.schedule = self.schedule.state_dict()
        state.epoch_totals = dict(self.epoch_totals)
        state.attempt = self.attempt
        # At an epoch's end too: the DALI pipeline runs on into the next epoch, its state is part of what comes next.
        mine = RankState(loader=self.train_loader.state_dict(), rng=capture_rng())
        gathered: list[Any] = [None] * self.world
        dist.all_gather_object(gathered, mine)
        state.ranks = gathered

    def _chaos(self, point: Point, step: int | None = None) -> None:
        """A drill's kill at `point` of `step` (by default the step just completed)."""
        chaos = self.cfg.chaos
        step = self.state.step if step is None else step
        if should_kill(chaos, rank=self.rank, step=step, attempt=self.attempt, point=point):
            # Drills measure the time from the kill to the next completed step: leave the kill's time behind.
            marker = {"rank": self.rank, "step": step, "point": point, "unix_s": time.time()}
            path = f"{self.storage.experiment_fs_path}/{CHAOS_MARKER}"
            with self.storage.storage_filesystem.open_output_stream(path) as out:
                out.write(json.dumps(marker).encode())
        maybe_kill(chaos, rank=self.rank, step=step, attempt=self.attempt, point=point)
