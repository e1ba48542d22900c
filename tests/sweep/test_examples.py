"""Every shipped example loads and expands (litgpt's test_config_hub pattern), and `validate` prints its trials."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from orchestrator.cli import app
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


def test_validate_prints_trials_and_macs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RESNET_ORCH_HOME", str(tmp_path / "home"))
    result = CliRunner().invoke(app, ["validate", str(EXAMPLES / "deep_bottleneck.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.stdout)
    assert [t["id"] for t in payload["trials"]] == EXPECTED_TRIALS["deep_bottleneck.yaml"]
    # He et al. 2015, Table 1: 3.8, 7.6 and 11.3 x 10^9 FLOPs (multiply-adds) at 224 px.
    gmacs = [round(t["macs_per_image"] / 1e9, 1) for t in payload["trials"]]
    assert gmacs == [3.9, 7.6, 11.3]
    assert payload["trials"][2]["config"]["model"]["depth"] == 152
    assert not (tmp_path / "home").exists()  # validate submits nothing
