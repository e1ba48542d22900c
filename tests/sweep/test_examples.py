"""Every shipped example loads and expands (litgpt's test_config_hub pattern); `validate` of one: tests/cli."""

from __future__ import annotations

from pathlib import Path

import pytest

from orchestrator.sweep.config import load_sweep

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
EXPECTED_TRIALS = {
    "quickstart.yaml": ["000-residual", "001-plain"],
    "table2_plain_vs_residual.yaml": [
        "000-depth18-plain",
        "001-depth18-residual",
        "002-depth34-plain",
        "003-depth34-residual",
    ],
    "table3_shortcuts.yaml": ["000-shortcutA", "001-shortcutB", "002-shortcutC"],
    "deep_bottleneck.yaml": ["000-depth50", "001-depth101", "002-depth152"],
    # Sampled by Tune from the seed 0: the ids pin the draws, so a change of sampling shows here.
    "asha_lr_search.yaml": [
        "000-lr0.1348-weight_decay5e-05",
        "001-lr0.02261-weight_decay0.0001",
        "002-lr0.02102-weight_decay0.0001",
        "003-lr0.308-weight_decay5e-05",
        "004-lr0.1231-weight_decay5e-05",
        "005-lr0.1019-weight_decay5e-05",
        "006-lr0.3293-weight_decay0.0001",
        "007-lr0.02016-weight_decay5e-05",
    ],
    "table6_cifar.yaml": [
        f"{i:03d}-depth{depth}-{kind}"
        for i, (depth, kind) in enumerate((d, k) for d in (20, 32, 44, 56, 110) for k in ("residual", "plain"))
    ],
}


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(EXPECTED_TRIALS)


@pytest.mark.parametrize("name", sorted(EXPECTED_TRIALS))
def test_example_expands(name: str) -> None:
    trials = load_sweep(EXAMPLES / name).expand(storage_root="/tmp/storage")
    assert [t.trial_id for t in trials] == EXPECTED_TRIALS[name]


def test_cifar_example_is_the_section_4_2_recipe() -> None:
    trials = load_sweep(EXAMPLES / "table6_cifar.yaml").expand(storage_root="/tmp/storage")
    for trial in trials:
        recipe = trial.recipe
        assert trial.model.registry_name == f"cifar_resnet{trial.model.depth}" and trial.model.num_classes == 10
        assert (recipe.batch_size, recipe.scaled_lr, recipe.momentum, recipe.weight_decay) == (128, 0.1, 0.9, 1e-4)
        assert (recipe.milestones, recipe.milestone_unit, recipe.max_steps) == ((32_000, 48_000), "step", 64_000)
        assert (recipe.preset, recipe.image_size, recipe.resize_size, recipe.eval.protocols) == ("cifar", 32, 32, ())
        # The warm-up at 0.01 is the 110-layer net's only (Section 4.2).
        warmup = trial.error_warmup
        if trial.model.depth == 110:
            assert warmup is not None and (warmup.lr, warmup.until_train_err) == (0.01, 0.8)
        else:
            assert warmup is None


def test_imagenet_examples_test_as_the_paper_does() -> None:
    assert load_sweep(EXAMPLES / "table2_plain_vs_residual.yaml").recipe.eval.protocols == ("ten_crop",)
    for name in ("table3_shortcuts.yaml", "deep_bottleneck.yaml"):
        evaluation = load_sweep(EXAMPLES / name).recipe.eval
        assert evaluation.protocols == ("ten_crop", "multi_scale")
        assert evaluation.scales == (224, 256, 384, 480, 640)
