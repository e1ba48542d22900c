"""`resnet-orch validate` on bad sweep files: exit code 2, the exact message, no traceback, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app

DATA = "data: {train: /shards/train}\n"

BAD_SWEEPS = [
    (
        "depth",
        "name: s\n" + DATA + "grid:\n  depth: [18, 19]\n",
        "grid.depth[1]: 19 is not a ResNet depth; choose one of 18, 34, 50, 101, 152, 20, 32, 44, 56, 110, 1202",
    ),
    (
        "shortcut",
        "name: s\n" + DATA + "grid:\n  shortcut: [A, D]\n",
        "grid.shortcut[1]: 'D' is not one of 'A', 'B' or 'C'; write one of them, e.g. B",
    ),
    (
        "residual",
        "name: s\n" + DATA + "grid:\n  residual: [true, 'no']\n",
        "grid.residual[1]: 'no' is text (quoted), not true or false; write it without quotes: false",
    ),
    (
        "unknown-axis",
        "name: s\n" + DATA + "grid:\n  colour: [red]\n",
        "grid.colour: unknown axis; choose among seed, arch, base_width, depth, num_classes, residual, shortcut, "
        "variant, zero_init_residual, batch_size, channels_last, compile, deterministic, epochs, error_warmup, eval, "
        "gamma, image_size, label_smoothing, lr, lr_reference_batch, max_steps, milestone_unit, milestones, momentum, "
        "plateau_patience, precision, preset, resize_size, schedule, steps_per_epoch, warmup_epochs, weight_decay",
    ),
    (
        "empty-axis",
        "name: s\n" + DATA + "grid:\n  seed: []\n",
        "grid.seed: is empty; list at least one value or remove the axis",
    ),
    (
        "unknown-key",
        "name: s\n" + DATA + "recipe:\n  learning_rate: 0.1\n",
        "recipe.learning_rate: unknown key; valid keys here: batch_size, channels_last, compile, deterministic, "
        "epochs, error_warmup, eval, gamma, image_size, label_smoothing, lr, lr_reference_batch, max_steps, "
        "milestone_unit, milestones, momentum, plateau_patience, precision, preset, resize_size, schedule, "
        "steps_per_epoch, warmup_epochs, weight_decay",
    ),
    (
        "string-number",
        "name: s\n" + DATA + "recipe:\n  lr: '0.1'\n",
        "recipe.lr: '0.1' is text (quoted), not a number; write it without quotes: lr: 0.1",
    ),
    ("no-data", "name: s\n", "data: is required; add it, e.g. data: {train: 's3://bucket/imagenet/train'}"),
    (
        "batch-split",
        "name: s\n" + DATA + "resources: {workers: 3}\n",
        "recipe.batch_size: 256 is not divisible by resources.workers=3; choose a multiple of 3",
    ),
    (
        "chaos-rank",
        "name: s\n" + DATA + "resources: {workers: 2}\nchaos: {kill_rank: 2, at_step: 5}\n",
        "chaos.kill_rank: 2 is not a rank of a 2-worker trial; choose 0..1",
    ),
    (
        "chaos-rank-of-two",
        "name: s\n" + DATA + "resources: {workers: 2}\n"
        "chaos: [{kill_rank: 1, at_step: 5}, {kill_rank: 3, at_step: 9}]\n",
        "chaos[1].kill_rank: 3 is not a rank of a 2-worker trial; choose 0..1",
    ),
    (
        "chaos-never-fires",
        "name: s\n" + DATA + "grid: {steps_per_epoch: [4, 8]}\nrecipe: {epochs: 3}\n"
        "chaos: {kill_rank: 0, at_step: 25}\n",
        "chaos.at_step: 25 is beyond the last step of every trial (at most 24 = recipe.epochs x "
        "recipe.steps_per_epoch), so the fault would never fire; choose 1..24",
    ),
    (
        "milestones-beyond-epochs",
        "name: s\n" + DATA + "recipe: {epochs: 10, milestones: [5, 30]}\n",
        "recipe.milestones: [5, 30] reaches beyond recipe.epochs=10 (epochs [30] never come), so the step schedule "
        "would never divide the learning rate there; choose milestones of at most 10, or train more epochs",
    ),
    (
        "milestones-beyond-swept-epochs",
        "name: s\n" + DATA + "grid: {epochs: [90, 20]}\nrecipe: {milestones: [30, 60]}\n",
        "recipe.milestones: [30, 60] reaches beyond recipe.epochs=20 (epochs [30, 60] never come), so the step "
        "schedule would never divide the learning rate there; choose milestones of at most 20, or train more epochs",
    ),
    (
        "step-milestones-beyond-max-steps",
        "name: s\n" + DATA + "recipe: {max_steps: 64000, milestone_unit: step, milestones: [32000, 68000]}\n",
        "recipe.milestones: [32000, 68000] reaches beyond recipe.max_steps=64000 (steps [68000] never come), so the "
        "step schedule would never divide the learning rate there; choose milestones of at most 64000, or train "
        "more steps",
    ),
    (
        "chaos-beyond-max-steps",
        "name: s\n" + DATA + "recipe: {max_steps: 10}\nchaos: {kill_rank: 0, at_step: 11}\n",
        "chaos.at_step: 11 is beyond the last step of every trial (at most 10 = recipe.max_steps), so the fault "
        "would never fire; choose 1..10",
    ),
    (
        "val-is-train",
        "name: s\ndata: {train: /shards/train, val: /shards/train/}\n",
        "data.val: /shards/train/ is data.train too: errors on the training images measure memorisation, not "
        "generalisation; give a held-out shard set (`resnet-orch data shard` of the val split), or set "
        "data.allow_val_equals_train: true for a smoke run",
    ),
    (
        "name",
        "name: 'bad name'\n" + DATA,
        "name: 'bad name' is not a valid sweep name; use letters, digits, '-', '_' or '.' (at most 63 characters)",
    ),
    (
        "concurrency",
        "name: s\n" + DATA + "max_concurrent_trials: 0\n",
        "max_concurrent_trials: 0 is out of range; write a whole number > 0, e.g. max_concurrent_trials: 4",
    ),
    ("yaml-syntax", "name: s\ndata: [train\n", "not valid YAML at line 3, column 1; fix the syntax there"),
    (
        "max-steps-and-epochs",
        "name: s\n" + DATA + "recipe: {max_steps: 64000, epochs: 3}\n",
        "recipe.max_steps: replaces recipe.epochs (training stops after max_steps); remove epochs",
    ),
    (
        "protocols-without-val",
        "name: s\n" + DATA + "recipe: {eval: {protocols: [ten_crop]}}\n",
        "recipe.eval.protocols: ['ten_crop'] evaluate on data.val, which is not set; add data.val or remove the "
        "protocols",
    ),
    (
        "unknown-protocol",
        "name: s\ndata: {train: /t, val: /v}\nrecipe: {eval: {protocols: [five_crop]}}\n",
        "recipe.eval.protocols[0]: 'five_crop' is not one of 'ten_crop' or 'multi_scale'; write one of them",
    ),
    (
        "no-scales",
        "name: s\ndata: {train: /t, val: /v}\nrecipe: {eval: {protocols: [multi_scale], scales: []}}\n",
        "recipe.eval.scales: [] must be distinct positive shorter sides, e.g. [224, 256, 384, 480, 640]",
    ),
    (
        "step-milestones-on-plateau",
        "name: s\n" + DATA + "recipe: {milestone_unit: step, schedule: plateau}\n",
        "recipe: milestone_unit 'step' counts the milestones of schedule 'step', not 'plateau'",
    ),
]


@pytest.mark.parametrize(("case", "text", "expected"), BAD_SWEEPS, ids=[c[0] for c in BAD_SWEEPS])
def test_bad_sweep_file(case: str, text: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("RESNET_ORCH_HOME", str(home))
    path = tmp_path / f"{case}.yaml"
    path.write_text(text, encoding="utf-8")
    for command in ("validate", "submit"):
        result = CliRunner().invoke(app, [command, str(path)])
        assert result.exit_code == 2, result.output
        assert result.stderr.strip() == f"error: {path}: {expected}"
        assert "Traceback" not in result.output
    assert not home.exists()  # nothing submitted, nothing half-written


def test_missing_file(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["validate", str(tmp_path / "nope.yaml")])
    assert result.exit_code == 2
    assert (
        result.stderr.strip()
        == f"error: {tmp_path / 'nope.yaml'}: no such file; pass the path of a sweep YAML (see examples/)"
    )


def test_unknown_sweep_id(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_ORCH_HOME", str(tmp_path))
    result = CliRunner().invoke(app, ["status", "nope"])
    assert result.exit_code == 2
    assert result.stderr.strip() == (
        f"error: no sweeps under {tmp_path}; submit one with `resnet-orch submit sweep.yaml`"
    )
