"""The paper's numbers (He et al. 2015, Tables 2-4) next to ours in the Markdown report."""

from __future__ import annotations

from orchestrator.sweep.report import markdown, paper_results, rows_from_trials


def test_paper_numbers() -> None:
    # He et al. 2015: Table 3 (10-crop) and Table 4 (multi-scale) for ResNet-152, Table 2 for plain-34.
    assert [(r.table, r.top1, r.top5) for r in paper_results(152, True, "B")] == [
        ("Table 3", 21.43, 5.71),
        ("Table 4", 19.38, 4.49),
    ]
    assert [(r.table, r.top1) for r in paper_results(34, False, "B")] == [("Table 2", 28.54), ("Table 3", 28.54)]
    assert paper_results(18, True, "C") == []  # the paper has no ResNet-18 with option C
    rows = rows_from_trials(
        [
            {
                "id": "t",
                "state": "SUCCEEDED",
                "config": {"model": {"depth": 34, "residual": True, "shortcut": "C", "arch": None}},
                "metrics": {"val_top1_err": 0.25, "val_top5_err": 0.08},
            }
        ]
    )
    assert markdown(rows, "x").splitlines()[-2:] == [
        "| t | ResNet-34 (C) | SUCCEEDED | 25.00 | 8.00 | 24.19 | 7.40 | Table 3 (10-crop) |",
        "| t | ResNet-34 (C) | SUCCEEDED | 25.00 | 8.00 | 21.53 | 5.60 | Table 4 (multi-scale) |",
    ]
