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
}


def test_every_example_is_covered() -> None:
    assert sorted(p.name for p in EXAMPLES.glob("*.yaml")) == sorted(EXPECTED_TRIALS)


@pytest.mark.parametrize("name", sorted(EXPECTED_TRIALS))
def test_example_expands(name: str) -> None:
    trials = load_sweep(EXAMPLES / name).expand(storage_root="/tmp/storage")
    assert [t.trial_id for t in trials] == EXPECTED_TRIALS[name]
