"""`bench/chaos.py --sweeps 1` end to end: a fault-free twin and one sweep under its seeded faults on a real local
stack (SeaweedFS, `mlflow server`, a Ray head), and its one JSON line saying nothing was lost."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

CHAOS = Path(__file__).resolve().parents[1] / "bench" / "chaos.py"


@pytest.mark.slow
@pytest.mark.timeout(3600)
def test_one_sweep_under_faults_loses_nothing(tmp_path: Path) -> None:
    # Seed 1's first sweep (`soak_faults.draw_schedule`): rank 0 killed after step 3, rank 1 killed while writing
    # the restarted attempt's checkpoint of step 6, and the driver killed at the trial's first report, then resumed.
    done = subprocess.run(
        [sys.executable, str(CHAOS), "--sweeps", "1", "--seed", "1", "--json", "--workdir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=3500,
        check=False,
    )
    lines = done.stdout.strip().splitlines()
    assert lines, done.stderr[-5000:]
    result = json.loads(lines[-1])
    assert result["problems"] == [], result
    assert done.returncode == 0, done.stderr[-5000:]
    assert (result["sweeps_run"], result["sweeps_finished"]) == (1, 1)
    faults = result["faults_injected"]
    assert sum(faults.values()) >= 2 and result["trial_restarts"] >= 1, result
    for key in (
        "samples_lost",
        "samples_repeated",
        "steps_differing_from_twin",
        "duplicate_runs",
        "missing_runs",
        "metric_points_lost",
        "metric_points_duplicated",
        "metric_points_wrong",
        "duplicate_versions",
        "missing_versions",
        "leftovers",
    ):
        assert result[key] == 0, (key, result)
