"""One trial on real Ray Train (2 CPU workers, gloo) with data and checkpoints on a real S3 server (SeaweedFS).

The reference run and the drills share one config and seed: DDP over gloo on CPU with a fixed thread count computes
the same numbers bit for bit, so a restart that neither replays nor skips a sample and restores the weights, the
optimizer, the plateau schedule, the RNGs and every loader's position reproduces the reference's per-step losses,
its learning rates and its per-epoch validation, whichever attempt ran which step.
"""

from __future__ import annotations

import json
import math
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pyarrow.fs
import pytest

from orchestrator.stack.ray_head import in_process_ray
from orchestrator.stack.seaweedfs import SeaweedFS
from orchestrator.sweep.config import (
    ChaosConfig,
    CheckpointConfig,
    DataConfig,
    ModelConfig,
    RecipeConfig,
    ResourcesConfig,
    TrialConfig,
)
from orchestrator.training.checkpointing import (
    ATTEMPTS_DIR,
    MANIFEST_FILE,
    MODEL_FILE,
    STATE_FILE,
    checkpoint_dir_name,
    checkpoint_dirs,
    read_checkpoint,
)
from orchestrator.training.trial import TrialResult, open_checkpoint, run_trial, storage_location
from tests.learnable_images import TRAIN_PER_CLASS, VAL_PER_CLASS
from tests.s3_environment import s3_environment
from tests.training.checkpoint_tampering import flip_bit, plant_payload, truncate

pytestmark = pytest.mark.timeout(1800)

WORKERS = 2
GLOBAL_BATCH = 64
CLASSES = 10
TRAIN_SAMPLES = CLASSES * TRAIN_PER_CLASS  # 500: 250 per rank, 8 batches of 32 (the last one padded)
VAL_SAMPLES = CLASSES * VAL_PER_CLASS  # 200
STEPS_PER_EPOCH = 8
EPOCHS = 4
# Mid-epoch checkpoints at steps 3, 6, 9, ... besides every epoch end (8, 16, 24, 32).
CHECKPOINT_EVERY = 3
BASE_LR = 0.4 * GLOBAL_BATCH / 256  # the linear scaling rule of `RecipeConfig.scaled_lr`
GAMMA = 0.1
# What one epoch reports about itself, compared between runs.
EPOCH_KEYS = ("epoch_samples", "epoch_train_loss", "val_samples", "val_top1_err", "val_top5_err", "val_loss")


@pytest.fixture(scope="module")
def ray_cluster(s3_server: SeaweedFS) -> Iterator[None]:
    # Ray's workers inherit the AWS_* variables that point at the S3 server, set as it gives them.
    with s3_environment(s3_server), in_process_ray(num_cpus=4):
        yield


@pytest.fixture(scope="module")
def storage(s3_bucket: str) -> str:
    return f"s3://{s3_bucket}/train-tests/{uuid.uuid4().hex[:8]}"


def trial(name: str, data: tuple[str, str], storage: str, **changes: Any) -> TrialConfig:
    """The reference config: the tiny net on the learnable textures, validated every epoch, LR divided by 10 at
    the first epoch whose validation error does not improve (plateau, patience 0)."""
    train, val = data
    base: dict[str, Any] = {
        "trial_id": name,
        "sweep_name": "train-tests",
        # With this seed the error does not improve at the third epoch's end, so the plateau rule fires in the middle
        # of the run and a restart before it must carry the rule's state (the reference test checks that it fires).
        "seed": 8,
        "model": ModelConfig(arch="test_resnet", base_width=8, num_classes=CLASSES),
        "recipe": RecipeConfig(
            batch_size=GLOBAL_BATCH,
            epochs=EPOCHS,
            image_size=32,
            resize_size=40,
            lr=0.4,
            gamma=GAMMA,
            schedule="plateau",
            plateau_patience=0,
        ),
        "data": DataConfig(train=train, val=val, num_threads=1),
        "resources": ResourcesConfig(workers=WORKERS, cpus_per_worker=1),
        # `sync`: each report's checkpoint is in storage before the report, so the drills below know which checkpoint
        # a kill resumes from; `async` has a drill of its own.
        "checkpoint": CheckpointConfig(every_steps=CHECKPOINT_EVERY, keep=20, upload="sync"),
        "storage": storage,
        "max_failures": 2,
    }
    return TrialConfig(**(base | changes))


@dataclass(frozen=True)
class Run:
    """What a finished trial recorded: its result, the audit trail of its last checkpoint, and each epoch's report."""

    result: TrialResult
    losses: list[float]
    lrs: list[float]
    epoch_sizes: list[int]
    epochs: dict[int, dict[str, Any]]  # epoch -> the metrics of its (last) epoch-end report


def finished(result: TrialResult, reports: list[dict[str, Any]] | None = None) -> Run:
    """`reports`: what the sweep received (`report_log`); by default those Ray Train registered with a checkpoint.
    A report re-sent after a kill (`unsent_reports`) reaches the sweep without one."""
    assert result.ok, result.error
    assert result.checkpoint_path is not None
    with open_checkpoint(result.checkpoint_path).as_directory() as directory:
        _, state = read_checkpoint(Path(directory))
    received = [m for _, m in result.checkpoints] if reports is None else reports
    ordered = sorted(((m["step"], m["attempt"]), m) for m in received if m["is_epoch_end"])
    epochs = {m["epoch"]: m for _, m in ordered}
    return Run(result, state.step_losses, state.step_lrs, state.epoch_sizes, epochs)


def assert_same_run(run: Run, reference: Run, from_epoch: int = 0) -> None:
    """Per-step losses, learning rates and per-epoch validation (of the epochs from `from_epoch` on, those the run
    reported itself) of `run` equal the reference's (fp32, CPU)."""
    assert run.losses == pytest.approx(reference.losses, abs=1e-4)
    assert run.lrs == pytest.approx(reference.lrs, rel=1e-9)
    assert run.epoch_sizes == reference.epoch_sizes
    assert sorted(run.epochs) == list(range(from_epoch, EPOCHS))
    for epoch in range(from_epoch, EPOCHS):
        for key in EPOCH_KEYS:
            assert run.epochs[epoch][key] == pytest.approx(reference.epochs[epoch][key], abs=1e-4), (epoch, key)


@pytest.fixture(scope="module")
def reference(ray_cluster: None, learnable_shards_s3: tuple[str, str], storage: str) -> Run:
    return finished(run_trial(trial("reference", learnable_shards_s3, storage)))


def plateau_lrs(val_errors: list[float]) -> list[float]:
    """The learning rate of every step under "divide by 10 when the error plateaus" with patience 0, written here
    from the rule (He et al. 2015, Section 3.4), not from `LRSchedule`."""
    lrs, scale, best = [], 1.0, math.inf
    for err in val_errors:
        lrs += [BASE_LR * scale] * STEPS_PER_EPOCH
        if err < best * (1 - 1e-4):
            best = err
        else:
            scale *= GAMMA
    return lrs


def test_uninterrupted_run_trains_and_validates_every_sample_each_epoch(reference: Run, storage: str) -> None:
    result = reference.result
    assert result.attempts == 1
    assert result.metrics["step"] == EPOCHS * STEPS_PER_EPOCH
    assert len(reference.losses) == EPOCHS * STEPS_PER_EPOCH
    assert reference.epoch_sizes == [TRAIN_SAMPLES] * EPOCHS
    assert result.metrics["samples_per_epoch"] == TRAIN_SAMPLES
    for epoch in range(EPOCHS):
        assert reference.epochs[epoch]["epoch_samples"] == TRAIN_SAMPLES
        assert reference.epochs[epoch]["val_samples"] == VAL_SAMPLES
    assert result.storage_path == f"{storage}/reference"
    assert result.checkpoint_path == f"{storage}/reference/checkpoint-step{EPOCHS * STEPS_PER_EPOCH:09d}-attempt0"
    # The schedule followed its rule on the validation errors the run reported; the rule fired at least once
    # (otherwise the restart tests below would not show that the plateau state survives a restart).
    expected = plateau_lrs([reference.epochs[e]["val_top1_err"] for e in range(EPOCHS)])
    assert reference.lrs == pytest.approx(expected, rel=1e-9)
    assert len(set(expected)) > 1, "the plateau rule never fired in the reference run; choose a config where it does"


def independent_val_errors(checkpoint_uri: str, val: str) -> dict[str, float]:
    """Top-1/top-5 error, mean loss and sample count of a checkpoint's weights on the val shards, computed here on
    one process (no ranks, no padding, no train-loop code) for comparison with what the trial reported."""
    import torch

    from models import get_model
    from orchestrator.training.checkpointing import read_model_state
    from pipelines.loader import LoaderSpec
    from pipelines.loader_factory import make_loader

    model = get_model("test_resnet", base_width=8, num_classes=CLASSES).eval()
    with open_checkpoint(checkpoint_uri).as_directory() as directory:
        model.load_state_dict(read_model_state(Path(directory)))
    spec = LoaderSpec(uri=val, split="val", batch_size=50, image_size=32, resize_size=40, num_threads=1)
    loader = make_loader(spec, rank=0, world_size=1, device=torch.device("cpu"))
    loader.set_epoch(0)
    seen, top1, top5, loss = 0, 0, 0, 0.0
    with torch.no_grad():
        for batch in loader:
            keep = batch.valid
            logits, labels = model(batch.images[keep]), batch.labels[keep]
            seen += len(labels)
            top1 += int((logits.argmax(dim=1) == labels).sum())
            top5 += int((logits.topk(5, dim=1).indices == labels[:, None]).any(dim=1).sum())
            loss += float(torch.nn.functional.cross_entropy(logits, labels, reduction="sum"))
    return {
        "val_samples": seen,
        "val_top1_err": 1 - top1 / seen,
        "val_top5_err": 1 - top5 / seen,
        "val_loss": loss / seen,
    }


def test_every_epoch_is_validated_on_the_whole_val_set(reference: Run, learnable_shards_s3: tuple[str, str]) -> None:
    # Each epoch's reported validation numbers must be those of the weights saved at that epoch's end, over every
    # val sample (a loader left at the end of its first pass read nothing after it).
    ends = sorted((m["step"], uri, m) for uri, m in reference.result.checkpoints if m["is_epoch_end"])
    assert [step for step, _, _ in ends] == [STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)]
    for epoch, (_, uri, reported) in enumerate(ends):
        assert reported["epoch"] == epoch
        expected = independent_val_errors(uri, learnable_shards_s3[1])
        assert expected["val_samples"] == VAL_SAMPLES
        assert reported["val_samples"] == expected["val_samples"]
        assert reported["val_top1_err"] == pytest.approx(expected["val_top1_err"], abs=1e-9)
        assert reported["val_top5_err"] == pytest.approx(expected["val_top5_err"], abs=1e-9)
        assert reported["val_loss"] == pytest.approx(expected["val_loss"], rel=1e-4)


def test_kills_mid_epoch_2_and_in_the_restarted_attempt_resume_exactly(
    reference: Run, learnable_shards_s3: tuple[str, str], storage: str, tmp_path: Path
) -> None:
    # Rank 1 dies at step 13, in the middle of the second epoch (steps 9-16), one step after the checkpoint of step
    # 12; the restarted attempt resumes there, and rank 0 dies at step 17, one step after the second epoch's end. The
    # DALI pipeline runs on from one epoch into the next rather than being rebuilt, so the epoch-end checkpoint holds
    # its state there, and the third epoch must continue exactly as the reference's.
    faults = (ChaosConfig(kill_rank=1, at_step=13), ChaosConfig(kill_rank=0, at_step=17, attempt=1))
    log = tmp_path / "reports.jsonl"
    result = run_trial(trial("killed-twice", learnable_shards_s3, storage, chaos=faults), reporter=report_log(log))
    # Epoch 1's report (step 16) may not be registered by Ray Train before the kill at step 17: the restart re-sends
    # it, without a checkpoint. What the sweep received holds every epoch's report exactly once.
    reports = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    epoch_ends = [r["epoch"] for r in reports if r["is_epoch_end"]]
    assert sorted(epoch_ends) == list(range(EPOCHS))
    run = finished(result, reports)
    assert run.result.attempts == 3
    assert run.result.metrics["attempt"] == 2
    # Each attempt resumed from the last checkpoint before its kill, even where Ray Train had not registered it yet.
    resumed = {m["attempt"]: m["resumed_from_step"] for _, m in run.result.checkpoints}
    assert resumed == {0: -1, 1: 12, 2: 16}
    assert_same_run(run, reference)


def all_report_steps() -> list[int]:
    """The step of every report an uninterrupted trial makes: every `CHECKPOINT_EVERY` steps and at each epoch's
    end (one report where both fall on the same step)."""
    total = STEPS_PER_EPOCH * EPOCHS
    periodic = set(range(CHECKPOINT_EVERY, total + 1, CHECKPOINT_EVERY))
    return sorted(periodic | {STEPS_PER_EPOCH * (e + 1) for e in range(EPOCHS)})


def report_log(path: Path) -> Callable[[dict[str, Any]], None]:
    """A `run_trial` reporter that appends each report, as the sweep's tracking receives it, to the JSON-lines file
    at `path`. It runs on Ray Train's controller, which cannot import this module: a closure is pickled by value."""

    def record(metrics: dict[str, Any]) -> None:
        with open(path, "a", encoding="utf-8") as out:
            out.write(json.dumps(metrics) + "\n")

    return record


@pytest.mark.slow
def test_a_kill_right_after_an_epoch_end_loses_no_report_and_repeats_none(
    reference: Run, learnable_shards_s3: tuple[str, str], storage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rank 1 dies at step 9, one step after the report that closed epoch 0 (step 8). Ray Train collects a rank's
    # report only at its next poll of the workers (every RAY_TRAIN_HEALTH_CHECK_INTERVAL_S, passed on to its
    # controller; 5 s here, checkpoints at epoch ends only, so the slower poll costs a few seconds): that report
    # dies in rank 1 if it is not collected before the kill, while its checkpoint is complete in storage and the
    # restart resumes from it (on a loaded machine the kill can come after the poll: then nothing may be sent
    # twice). The sweep must receive every report exactly once: no later report repeats epoch 0's validation.
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "5")
    log = tmp_path / "reports.jsonl"
    cfg = trial(
        "killed-after-epoch-end",
        learnable_shards_s3,
        storage,
        checkpoint=CheckpointConfig(every_steps=1000, keep=20),
        chaos=(ChaosConfig(kill_rank=1, at_step=STEPS_PER_EPOCH + 1),),
    )
    result = run_trial(cfg, reporter=report_log(log))
    reports = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert [(r["step"], r["epoch"]) for r in reports] == [(STEPS_PER_EPOCH * (e + 1), e) for e in range(EPOCHS)]
    assert all(r["is_epoch_end"] for r in reports)
    run = finished(result)
    assert result.attempts == 2
    assert result.metrics["resumed_from_step"] == STEPS_PER_EPOCH
    for report in reports:
        for key in EPOCH_KEYS:
            expected = reference.epochs[report["epoch"]][key]
            assert report[key] == pytest.approx(expected, abs=1e-4), (report["epoch"], key)
    assert run.losses == pytest.approx(reference.losses, abs=1e-4)
    assert run.lrs == pytest.approx(reference.lrs, rel=1e-9)


def test_corrupt_and_tampered_latest_checkpoints_give_way_to_the_previous_one(
    reference: Run, learnable_shards_s3: tuple[str, str], storage: str, tmp_path: Path
) -> None:
    # A trial whose first attempt died after step 20: the reference's attempt marker and its checkpoints up to step
    # 18, under a trial name of its own.
    cfg = trial("corrupt", learnable_shards_s3, storage)
    path, filesystem = storage_location(storage)
    assert filesystem is not None
    source, target = f"{path}/reference", f"{path}/{cfg.trial_id}"
    pyarrow.fs.copy_files(
        f"{source}/{ATTEMPTS_DIR}",
        f"{target}/{ATTEMPTS_DIR}",
        source_filesystem=filesystem,
        destination_filesystem=filesystem,
    )
    for checkpoint in checkpoint_dirs(filesystem, source):
        if int(checkpoint.rsplit("step", 1)[1].split("-")[0]) <= 18:
            name = checkpoint.rsplit("/", 1)[1]
            pyarrow.fs.copy_files(
                checkpoint, f"{target}/{name}", source_filesystem=filesystem, destination_filesystem=filesystem
            )
    newest = checkpoint_dirs(filesystem, target)[:4]
    assert [p.rsplit("/", 1)[1] for p in newest] == [f"checkpoint-step{s:09d}-attempt0" for s in (18, 16, 15, 12)]
    # Its three newest checkpoints went bad in storage: cut short, a flipped bit, a train state that runs code.
    marker = tmp_path / "payload-ran"
    truncate(filesystem, newest[0], MODEL_FILE)
    flip_bit(filesystem, newest[1], STATE_FILE)
    plant_payload(filesystem, newest[2], str(marker))

    run = finished(run_trial(cfg))
    assert run.result.attempts == 2
    assert run.result.metrics["resumed_from_step"] == 12
    assert not marker.exists(), "the tampered train state was unpickled with its payload"
    # The epochs it ran itself (the one before ended in the reference run it was copied from) match the reference.
    assert_same_run(run, reference, from_epoch=1)


def test_config_error_fails_once_with_its_reason(
    ray_cluster: None, learnable_shards_s3: tuple[str, str], storage: str
) -> None:
    cfg = trial("bad-model", learnable_shards_s3, storage, model=ModelConfig(arch="resnet19"), max_failures=3)
    result = run_trial(cfg)
    assert not result.ok
    assert result.attempts == 1
    assert result.error is not None
    assert "config error before the first training step" in result.error
    assert "resnet19" in result.error
    assert result.checkpoint_path is None


@pytest.mark.slow
def test_a_kill_mid_async_upload_resumes_from_the_complete_checkpoint_before_it(
    reference: Run, learnable_shards_s3: tuple[str, str], storage: str, tmp_path: Path
) -> None:
    # `checkpoint.upload: async`: rank 0's background thread uploads each checkpoint while the steps run on, and each
    # report waits for its checkpoint until the next report point. Rank 0 is killed on that thread once the weights
    # of step 12's checkpoint are in storage and its manifest is not, while its main thread trains on. Step 9's
    # upload had finished before step 12's started (one at a time), so the restart resumes there, whether or not
    # Ray Train had registered it.
    fault = ChaosConfig(kill_rank=0, at_step=12, during="checkpoint")
    log = tmp_path / "reports.jsonl"
    cfg = trial(
        "kill-in-async-upload",
        learnable_shards_s3,
        storage,
        checkpoint=CheckpointConfig(every_steps=CHECKPOINT_EVERY, keep=20, upload="async"),
        chaos=(fault,),
    )
    result = run_trial(cfg, reporter=report_log(log))
    reports = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    run = finished(result, reports)
    assert run.result.attempts == 2
    assert run.result.metrics["resumed_from_step"] == 9
    # The cut-off upload is still in storage: the weights, no manifest.
    path, filesystem = storage_location(f"{storage}/{cfg.trial_id}")
    assert filesystem is not None
    cut_off = f"{path}/{checkpoint_dir_name(12, 0)}"
    assert filesystem.get_file_info(f"{cut_off}/{MODEL_FILE}").is_file
    assert not filesystem.get_file_info(f"{cut_off}/{MANIFEST_FILE}").is_file
    # Every report point's report reached the sweep exactly once (step 12's of the killed attempt never went out:
    # it was held back for its upload), and each checkpoint Ray Train registered is the one of its report's step.
    points = sorted({*range(CHECKPOINT_EVERY, EPOCHS * STEPS_PER_EPOCH, CHECKPOINT_EVERY)} | {*range(8, 33, 8)})
    assert sorted(r["step"] for r in reports) == points
    assert all(uri.endswith(checkpoint_dir_name(m["step"], m["attempt"])) for uri, m in run.result.checkpoints)
    assert_same_run(run, reference)


@pytest.mark.slow
def test_kill_during_checkpoint_write_uses_the_previous_one(
    reference: Run, learnable_shards_s3: tuple[str, str], storage: str, tmp_path: Path
) -> None:
    # Epoch 0's report (step 8) may still wait in rank 0's result queue when it dies at step 9: the restart re-sends
    # it without a checkpoint, so the epochs come from what the sweep received, not from the registered checkpoints.
    fault = ChaosConfig(kill_rank=0, at_step=9, during="checkpoint")
    log = tmp_path / "reports.jsonl"
    result = run_trial(trial("kill-in-write", learnable_shards_s3, storage, chaos=(fault,)), reporter=report_log(log))
    reports = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["step"] for r in reports) == all_report_steps()
    run = finished(result, reports)
    assert run.result.attempts == 2
    assert run.result.metrics["resumed_from_step"] == 8
    assert_same_run(run, reference)


@pytest.mark.slow  # a 5 s poll interval and a restart: 1-3 min here; the chaos soak meets the same fault
def test_a_kill_during_a_checkpoint_loses_no_mid_epoch_report_waiting_before_it(
    reference: Run, learnable_shards_s3: tuple[str, str], storage: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Rank 1 dies while the checkpoint of step 6 is written; rank 0 completes it. The report of step 3 still waits in
    # rank 0's one-slot result queue (Ray Train collects it at its next poll of the workers, every 5 s here), so it
    # dies with the worker group although no later report repeats it; the restart resumes from step 6 and must
    # re-send it, mid-epoch as it is. The sweep receives every report, each step once.
    monkeypatch.setenv("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "5")
    log = tmp_path / "reports.jsonl"
    fault = ChaosConfig(kill_rank=1, at_step=2 * CHECKPOINT_EVERY, during="checkpoint")
    result = run_trial(trial("kill-1-in-write", learnable_shards_s3, storage, chaos=(fault,)), reporter=report_log(log))
    reports = [json.loads(line) for line in log.read_text(encoding="utf-8").splitlines()]
    assert sorted(r["step"] for r in reports) == all_report_steps()
    run = finished(result, reports)
    assert run.result.attempts == 2
    assert run.result.metrics["resumed_from_step"] == 2 * CHECKPOINT_EVERY
    assert_same_run(run, reference)


@pytest.mark.slow
def test_loss_falls_and_top1_rises_far_above_chance(ray_cluster: None, sample_shards_s3: str, storage: str) -> None:
    # ResNet-18 at width 16 on 48 px crops memorises the 1,000-image sample: ~2-3 minutes on 2 busy cores.
    epochs, steps_per_epoch = 25, 16  # 1,000 samples over 2 ranks of 32: 16 batches per epoch
    cfg = trial(
        "learns",
        (sample_shards_s3, sample_shards_s3),
        storage,
        model=ModelConfig(depth=18, base_width=16),
        recipe=RecipeConfig(
            batch_size=GLOBAL_BATCH, epochs=epochs, image_size=48, resize_size=56, lr=0.8, schedule="cosine"
        ),
        data=DataConfig(train=sample_shards_s3, num_threads=1),
        checkpoint=CheckpointConfig(every_steps=10_000, keep=1),
        max_failures=0,
    )
    run = finished(run_trial(cfg))
    assert len(run.losses) == epochs * steps_per_epoch
    first, last = run.losses[:steps_per_epoch], run.losses[-steps_per_epoch:]
    assert sum(last) / len(last) < sum(first) / len(first) - 1.0
    # Chance is 1/1000 top-1 (0.999 error); 3% top-1 on the augmented training batches is 30 times that.
    assert run.result.metrics["epoch_train_top1_err"] < 0.97
