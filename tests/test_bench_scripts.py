"""The benchmark scripts run as `python bench/<name>.py`, which puts bench/ first on sys.path: a script named after a
standard-library module (queue, profile, types, ...) replaces that module for torch and Ray in every other script."""

from __future__ import annotations

import sys
from pathlib import Path

BENCH = Path(__file__).resolve().parents[1] / "bench"


def test_no_benchmark_script_shadows_a_standard_library_module() -> None:
    scripts = sorted(path.stem for path in BENCH.glob("*.py"))
    assert scripts, f"no scripts in {BENCH}"
    assert [name for name in scripts if name in sys.stdlib_module_names] == []
