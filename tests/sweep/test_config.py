"""The sweep/trial schema: expansion, derived values and the error texts a user sees."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from orchestrator.sweep.config import ConfigError, ModelConfig, SweepConfig, TrialConfig, load_sweep, parse_sweep

BASE = {"name": "t", "data": {"train": "s3://bucket/train"}}


def sweep(**overrides: object) -> SweepConfig:
    return parse_sweep({**BASE, **overrides}, source="sweep.yaml")


def error_text(**overrides: object) -> str:
    with pytest.raises(ConfigError) as info:
        sweep(**overrides)
    return str(info.value)


def test_grid_expands_to_cartesian_product_in_file_order() -> None:
    trials = sweep(grid={"depth": [18, 34], "residual": [False, True], "seed": [0, 1]}).expand("/tmp/storage")
    assert len(trials) == 8
    assert [t.trial_id for t in trials[:3]] == [
        "000-depth18-plain-seed0",
        "001-depth18-plain-seed1",
        "002-depth18-residual-seed0",
    ]
    assert [(t.model.depth, t.model.residual, t.seed) for t in trials[-2:]] == [(34, True, 0), (34, True, 1)]
    assert {t.storage for t in trials} == {"/tmp/storage"}


def test_recipe_axis_overrides_only_that_field() -> None:
    trials = sweep(recipe={"epochs": 3}, grid={"lr": [0.1, 0.2]}).expand("/s")
    assert [t.recipe.lr for t in trials] == [0.1, 0.2]
    assert {t.recipe.epochs for t in trials} == {3}


def test_expand_needs_storage() -> None:
    with pytest.raises(ConfigError, match="storage: not set"):
        sweep().expand()
    assert sweep(storage="s3://b/runs").expand()[0].storage == "s3://b/runs"


def test_model_names_and_kwargs_for_each_family() -> None:
    imagenet, cifar, tiny = (
        sweep(model={"depth": 50, "shortcut": "A", "variant": "v1"}).expand("/s")[0].model,
        sweep(model={"depth": 110, "residual": False}).expand("/s")[0].model,
        sweep(model={"arch": "test_resnet"}).expand("/s")[0].model,
    )
    assert imagenet.registry_name == "resnet50"
    assert imagenet.model_kwargs() == {
        "residual": True,
        "num_classes": 1000,
        "shortcut": "A",
        "variant": "v1",
        "zero_init_residual": False,
    }
    assert cifar.registry_name == "cifar_resnet110"
    assert cifar.model_kwargs() == {"residual": False, "num_classes": 10}
    assert tiny.registry_name == "test_resnet"


def test_num_classes_follows_the_family_unless_set() -> None:
    # He et al. 2015: the ImageNet nets classify 1000 classes (Section 4.1), the 6n+2 nets CIFAR-10's 10 (Section 4.2).
    by_depth = sweep(grid={"depth": [18, 20, 110]}).expand("/s")
    assert [t.model.num_classes for t in by_depth] == [1000, 10, 10]
    assert sweep(model={"arch": "cifar_resnet56"}).expand("/s")[0].model.num_classes == 10
    assert sweep(model={"arch": "test_resnet"}).expand("/s")[0].model.num_classes == 1000
    # Set explicitly, the count holds for every depth of the grid; a num_classes axis overrides it per trial.
    explicit = sweep(model={"num_classes": 100}, grid={"depth": [18, 20]}).expand("/s")
    assert [t.model.num_classes for t in explicit] == [100, 100]
    axis = sweep(model={"depth": 20}, grid={"num_classes": [10, 100]}).expand("/s")
    assert [t.model.model_kwargs()["num_classes"] for t in axis] == [10, 100]


def test_trial_config_records_the_resolved_class_count() -> None:
    trial = sweep(model={"depth": 32}).expand("/s")[0]
    rebuilt = TrialConfig.model_validate({**trial.model_dump(), "model": ModelConfig(depth=32)})
    assert rebuilt.model.num_classes == 10
    assert rebuilt.model_dump(mode="json")["model"]["num_classes"] == 10


def test_family_class_counts_match_the_model_builders() -> None:
    from models import list_models
    from models.registry import model_options

    for name in list_models():
        assert ModelConfig(arch=name).resolved_num_classes == model_options(name)["num_classes"], name


def test_linear_lr_scaling_and_auto_warmup() -> None:
    # Paper: 0.1 at batch 256; Goyal et al.: scale linearly and warm up for 5 epochs past 1024.
    paper = sweep().expand("/s")[0].recipe
    assert paper.scaled_lr == pytest.approx(0.1)
    assert paper.resolved_warmup_epochs == 0.0
    large = sweep(recipe={"batch_size": 8192}).expand("/s")[0].recipe
    assert large.scaled_lr == pytest.approx(3.2)
    assert large.resolved_warmup_epochs == 5.0
    assert sweep(recipe={"warmup_epochs": 2}).expand("/s")[0].recipe.resolved_warmup_epochs == 2


def test_chaos_takes_one_fault_or_a_list_and_every_trial_carries_them() -> None:
    one = sweep(resources={"workers": 2}, chaos={"kill_rank": 1, "at_step": 5}).expand("/s")[0]
    assert [(f.kill_rank, f.at_step, f.attempt) for f in one.chaos] == [(1, 5, 0)]
    faults = [{"kill_rank": 1, "at_step": 5}, {"kill_rank": 0, "at_step": 9, "attempt": 1}]
    two = sweep(resources={"workers": 2}, chaos=faults, grid={"seed": [0, 1]}).expand("/s")
    assert [[(f.kill_rank, f.at_step, f.attempt) for f in t.chaos] for t in two] == [[(1, 5, 0), (0, 9, 1)]] * 2
    assert sweep().expand("/s")[0].chaos == ()
    # The trial config a worker receives (JSON) reads back the same.
    assert TrialConfig.model_validate(two[0].model_dump(mode="json")).chaos == two[0].chaos


def test_what_the_cross_checks_let_through() -> None:
    # The default milestones (torchvision's 90-epoch schedule) are not the file's intent; a milestone at the last
    # epoch is not beyond it; other schedules ignore milestones.
    assert sweep(recipe={"epochs": 2}).expand("/s")[0].recipe.milestones == (30, 60, 80)
    sweep(recipe={"epochs": 2, "milestones": [2]})
    sweep(recipe={"epochs": 2, "milestones": [30], "schedule": "cosine"})
    # Validation on the training shards when the file says so; a fault some trial of the grid reaches.
    same = {"train": "s3://bucket/train", "val": "s3://bucket/train/", "allow_val_equals_train": True}
    assert sweep(data=same).data.val_is_train
    assert not sweep(data={"train": "s3://bucket/train", "val": "s3://bucket/val"}).data.val_is_train
    sweep(grid={"steps_per_epoch": [2, 8]}, recipe={"epochs": 3}, chaos={"kill_rank": 0, "at_step": 24})
    sweep(chaos={"kill_rank": 0, "at_step": 10_000})  # uncapped epochs: the data decides (`data_check`)


def test_per_worker_batch() -> None:
    assert sweep(resources={"workers": 4}).expand("/s")[0].per_worker_batch == 64


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"grid": {"depth": [18, 19]}},
            "sweep.yaml: grid.depth[1]: 19 is not a ResNet depth; choose one of 18, 34, 50, 101, 152, 20, 32, 44, "
            "56, 110, 1202",
        ),
        ({"grid": {"depth": []}}, "sweep.yaml: grid.depth: is empty; list at least one value or remove the axis"),
        (
            {"grid": {"seed": [0, "x"]}},
            "sweep.yaml: grid.seed[1]: 'x' is not an integer seed; write whole numbers, e.g. seed: [0, 1, 2]",
        ),
        (
            {"resources": {"workers": 3}},
            "sweep.yaml: recipe.batch_size: 256 is not divisible by resources.workers=3; choose a multiple of 3",
        ),
        (
            {"chaos": {"kill_rank": 1, "at_step": 5}},
            "sweep.yaml: chaos.kill_rank: 1 is not a rank of a 1-worker trial; choose 0..0",
        ),
        (
            {"recipe": {"epochs": 3, "steps_per_epoch": 4}, "chaos": [{"kill_rank": 0, "at_step": 13}]},
            "sweep.yaml: chaos.at_step: 13 is beyond the last step of every trial (at most 12 = recipe.epochs x "
            "recipe.steps_per_epoch), so the fault would never fire; choose 1..12",
        ),
        (
            {"recipe": {"image_size": 300}},
            "sweep.yaml: recipe: image_size 300 is larger than resize_size 256; the validation center crop must fit",
        ),
        ({"recipe": {"milestones": [60, 30]}}, "sweep.yaml: recipe.milestones: [60, 30] must be positive"),
    ],
)
def test_error_names_yaml_path_and_fix(overrides: dict[str, object], expected: str) -> None:
    assert error_text(**overrides).startswith(expected)


# Every kind of schema error a sweep file can hit: the YAML path, what was given, and what to write instead.
SCHEMA_ERRORS = [
    # Wrong type. Strict mode refuses text for numbers and booleans; the fix is the value without quotes.
    ({"recipe": {"lr": "0.1"}}, "recipe.lr: '0.1' is text (quoted), not a number; write it without quotes: lr: 0.1"),
    (
        {"recipe": {"weight_decay": "1e-4"}},
        "recipe.weight_decay: '1e-4' is text to YAML, not a number (an exponent needs a dot: 1.0e-4); "
        "write weight_decay: 0.0001",
    ),
    (
        {"recipe": {"epochs": "90"}},
        "recipe.epochs: '90' is text (quoted), not a whole number; write it without quotes: epochs: 90",
    ),
    (
        {"model": {"residual": "yes"}},
        "model.residual: 'yes' is text (quoted), not true or false; write it without quotes: residual: true",
    ),
    ({"recipe": {"epochs": 2.5}}, "recipe.epochs: 2.5 is not a whole number; write a whole number, e.g. epochs: 90"),
    ({"recipe": {"batch_size": True}}, "recipe.batch_size: true is not a whole number; write a whole number"),
    ({"name": 123}, "name: 123 is not text; quote it: name: '123'"),
    (
        {"recipe": {"milestones": 30}},
        "recipe.milestones: 30 is not a list; write a list, even of one value: milestones: [30]",
    ),
    ({"grid": {"depth": 18}}, "grid.depth: 18 is not a list; write a list, even of one value: depth: [18]"),
    (
        {"recipe": {"lr": [0.1, 0.2]}},
        "recipe.lr: [0.1, 0.2] is a list, but lr takes one value here; to sweep it, list the values under grid: "
        "grid: {lr: [0.1, 0.2]}",
    ),
    (
        {"model": "resnet50"},
        "model: 'resnet50' is not a mapping of keys; write a mapping of keys, e.g. model: {depth: 18}",
    ),
    (
        {"data": None},
        "data: null is not a mapping of keys; write a mapping of keys, e.g. data: {train: 's3://bucket/imagenet/train'}",
    ),
    # A union's member tags (`warmup_epochs.float`) never reach the user; the members' expectations are joined.
    (
        {"recipe": {"warmup_epochs": "5"}},
        "recipe.warmup_epochs: '5' is text (quoted), not a number or 'auto'; write it without quotes: warmup_epochs: 5",
    ),
    (
        {"recipe": {"warmup_epochs": "x"}},
        "recipe.warmup_epochs: 'x' is not a number or 'auto'; write a number or 'auto', e.g. warmup_epochs: auto",
    ),
    # Bad literal: the allowed values and one to copy.
    (
        {"model": {"shortcut": "D"}},
        "model.shortcut: 'D' is not one of 'A', 'B' or 'C'; write one of them, e.g. shortcut: B",
    ),
    (
        {"recipe": {"precision": "fp16"}},
        "recipe.precision: 'fp16' is not one of 'auto', 'fp32' or 'bf16'; write one of them, e.g. precision: auto",
    ),
    (
        {"checkpoint": {"upload": "background"}},
        "checkpoint.upload: 'background' is not one of 'sync' or 'async'; write one of them, e.g. upload: sync",
    ),
    # Out of range: every bound of the field, not only the one that was hit.
    ({"recipe": {"epochs": 0}}, "recipe.epochs: 0 is out of range; write a whole number > 0, e.g. epochs: 90"),
    (
        {"recipe": {"momentum": 1.0}},
        "recipe.momentum: 1.0 is out of range; write a number >= 0 and < 1, e.g. momentum: 0.9",
    ),
    (
        {"max_concurrent_trials": 0},
        "max_concurrent_trials: 0 is out of range; write a whole number > 0, e.g. max_concurrent_trials: 4",
    ),
    # Unknown key: the closest valid name (difflib) when one is close, and every valid name.
    (
        {"checkpoint": {"every": 5}},
        "checkpoint.every: unknown key; did you mean every_steps? valid keys here: every_steps, keep, upload",
    ),
    ({"modle": {}}, "modle: unknown key; did you mean model? valid keys here: budget, chaos, checkpoint, data, grid,"),
    ({"recipe": {"learning_rate": 0.1}}, "recipe.learning_rate: unknown key; valid keys here: batch_size,"),
    ({"grid": {"dept": [18]}}, "grid.dept: unknown axis; did you mean depth? choose among seed, arch,"),
    # Missing key: an example to add.
    ({"data": {}}, "data.train: is required; add it, e.g. train: 's3://bucket/imagenet/train'"),
    ({"chaos": {"kill_rank": 0}}, "chaos[0].at_step: is required; add it, e.g. at_step: 100"),
    # Grid values get the same hints, written as list items.
    ({"grid": {"lr": [0.1, "0.2"]}}, "grid.lr[1]: '0.2' is text (quoted), not a number; write it without quotes: 0.2"),
    (
        {"grid": {"shortcut": ["A", "D"]}},
        "grid.shortcut[1]: 'D' is not one of 'A', 'B' or 'C'; write one of them, e.g. B",
    ),
    ({"grid": {"momentum": [0.9, 2]}}, "grid.momentum[1]: 2 is out of range; write a number >= 0 and < 1, e.g. 0.9"),
    (
        {"grid": {"residual": [True, "no"]}},
        "grid.residual[1]: 'no' is text (quoted), not true or false; write it without quotes: false",
    ),
]


@pytest.mark.parametrize(("overrides", "expected"), SCHEMA_ERRORS)
def test_schema_errors_say_what_was_given_and_what_to_write(overrides: dict[str, object], expected: str) -> None:
    assert error_text(**overrides).startswith(f"sweep.yaml: {expected}")


def test_missing_name_has_an_example() -> None:
    with pytest.raises(ConfigError) as info:
        parse_sweep({"data": {"train": "s3://b/t"}}, source="s.yaml")
    assert str(info.value) == "s.yaml: name: is required; add it, e.g. name: resnet-paper"


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as info:
        parse_sweep({"name": "bad name", "recipe": {"epochs": 0}}, source="s.yaml")
    lines = str(info.value).splitlines()
    assert lines == [
        "s.yaml: name: 'bad name' is not a valid sweep name; use letters, digits, '-', '_' or '.' (at most 63 "
        "characters)",
        "s.yaml: recipe.epochs: 0 is out of range; write a whole number > 0, e.g. epochs: 90",
        "s.yaml: data: is required; add it, e.g. data: {train: 's3://bucket/imagenet/train'}",
    ]


def test_load_sweep_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"nope.yaml: no such file; pass the path of a sweep YAML"):
        load_sweep(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("name: x\ngrid: {depth: [18\n")
    with pytest.raises(ConfigError, match=r"broken.yaml: not valid YAML at line 3, column 1; fix the syntax there"):
        load_sweep(broken)
    listing = tmp_path / "list.yaml"
    listing.write_text("- 1\n")
    with pytest.raises(ConfigError, match="the top level must be a mapping"):
        load_sweep(listing)


def test_configs_are_frozen() -> None:
    trial = sweep().expand("/s")[0]
    with pytest.raises(ValueError, match="frozen"):
        trial.recipe.lr = 1.0  # type: ignore[misc]


def test_cli_validate_exits_2_with_every_message_and_no_traceback(tmp_path: Path) -> None:
    # The installed console script, as a user runs it: exit status, stderr text, nothing else.
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: s\ndata: {train: /shards}\nrecipe:\n  lr: '0.1'\n  weight_decay: 1e-4\nmodle: {depth: 50}\n")
    done = subprocess.run(
        [str(Path(sys.executable).with_name("resnet-orch")), "validate", str(bad)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"error: {bad}: recipe.lr: '0.1' is text (quoted), not a number; write it without quotes: lr: 0.1",
        f"{bad}: recipe.weight_decay: '1e-4' is text to YAML, not a number (an exponent needs a dot: 1.0e-4); "
        "write weight_decay: 0.0001",
        f"{bad}: modle: unknown key; did you mean model? valid keys here: budget, chaos, checkpoint, data, grid, "
        "max_concurrent_trials, max_failures, max_preemptions, model, name, num_samples, outages, recipe, resources, "
        "scheduler, search, seed, shared_filesystem, storage, tracking",
    ]
    assert "Traceback" not in done.stdout + done.stderr


@pytest.mark.parametrize(
    ("tracking", "expected"),
    [
        (
            {"registered_model": "it's"},
            "tracking.registered_model: \"it's\" is not a valid model name; use letters, digits, '-', '_' or '.'",
        ),
        ({"registered_model": "net@v2"}, "tracking.registered_model: 'net@v2' is not a valid model name"),
        ({"experiment": "../elsewhere"}, "tracking.experiment: '../elsewhere' climbs out of its folder ('..')"),
        ({"experiment": "/abs"}, "tracking.experiment: '/abs' is an absolute path"),
        (
            {"uri": "https://me:hunter2@mlflow.example:5000"},
            "tracking.uri: https://mlflow.example:5000 is given with a password; write the URI without it",
        ),
    ],
)
def test_tracking_names_and_uri_are_checked(tracking: dict[str, str], expected: str) -> None:
    # Model names go into `models:/NAME@alias` URIs and MLflow filters, experiment names become a folder of the
    # embedded store, and the URI is stored and printed: none may smuggle in syntax, a path or a password.
    text = error_text(tracking=tracking)
    assert text.startswith(f"sweep.yaml: {expected}")
    assert "hunter2" not in text


def test_experiment_names_may_hold_spaces_and_quotes() -> None:
    assert sweep(tracking={"experiment": 'it\'s "ResNet" v2'}).tracking.experiment == 'it\'s "ResNet" v2'


def test_an_elastic_worker_range_is_typed_and_reaches_every_trial() -> None:
    config = sweep(
        resources={"workers": {"min": 1, "max": 4, "resize_check_s": 5}},
        data={"train": "s3://bucket/train", "backend": "torch"},
        recipe={"batch_size": 64},
    )
    trial = config.expand("/s")[0]
    assert (trial.resources.elastic, trial.resources.min_workers, trial.resources.max_workers) == (True, 1, 4)
    assert trial.resources.workers.resize_check_s == 5  # type: ignore[union-attr]
    assert trial.per_worker_batch == 16  # one micro-batch: the global batch over the range's max
    fixed = sweep(resources={"workers": 2}).expand("/s")[0]
    assert (fixed.resources.elastic, fixed.resources.workers, fixed.per_worker_batch) == (False, 2, 128)
    # The resolved trial config round-trips (Ray Train hands it to every worker as JSON).
    assert TrialConfig.model_validate(trial.model_dump(mode="json")) == trial


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        (
            {"resources": {"workers": {"min": 3, "max": 2}}},
            "sweep.yaml: resources.workers: min 3 > max 2; give 1 <= min <= max, e.g. {min: 1, max: 3}",
        ),
        (
            {"resources": {"workers": {"min": 0, "max": 2}}},
            "sweep.yaml: resources.workers.min: 0 is out of range; write a whole number >= 1, e.g. min: 1",
        ),
        ({"resources": {"workers": {"max": 2}}}, "sweep.yaml: resources.workers.min: is required; add it, e.g. min: 1"),
        (
            {"resources": {"workers": [1, 2]}},
            "sweep.yaml: resources.workers: [1, 2] is neither a number of workers nor a range; give a whole number of "
            "at least 1 (workers: 2) or an elastic range (workers: {min: 1, max: 2})",
        ),
        (
            {"resources": {"workers": {"min": 1, "max": 3}}, "data": {"train": "/d", "backend": "torch"}},
            "recipe.batch_size: 256 is not divisible by resources.workers.max=3, so it cannot split into 3 equal "
            "micro-batches (one per worker at the range's max); choose a multiple of 3",
        ),
        (
            {"resources": {"workers": {"min": 1, "max": 2}}},
            "data.backend: 'auto': an elastic resources.workers range reads its samples with the torch loader, whose "
            "steps stay the same whatever the number of workers; set data.backend: torch (or give a fixed number of "
            "workers for DALI)",
        ),
    ],
)
def test_worker_range_errors_name_the_field_and_the_fix(overrides: dict[str, object], expected: str) -> None:
    text = error_text(**overrides)
    assert expected in text and len(text.splitlines()) == 1, text


def test_outages_bound_is_typed_and_reaches_every_trial() -> None:
    assert sweep().expand("/s")[0].outages.policy().max_wait_s == 180
    config = parse_sweep({"name": "s", "data": {"train": "/shards"}, "outages": {"retry_s": 30}})
    assert [t.outages.retry_s for t in config.expand("/s")] == [30]
    for bad, why in (({"retry_s": -1}, "-1 is out of range; write a number >= 0 and <= 3600"), ({"retry_s": "60"}, "")):
        with pytest.raises(ConfigError, match=f"outages.retry_s: {why}") as info:
            parse_sweep({"name": "s", "data": {"train": "/shards"}, "outages": bad})
        assert "text" in str(info.value) or why
