"""The paper's numbers (He et al. 2015, Tables 2-4 and 6) next to ours, each with how it was measured, and the
Figure 4 style curves."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from orchestrator.sweep.report import curves_figure, markdown, paper_results, rows_from_trials, write_report

IMAGENET_VAL = {"val_classes": 1000.0, "val_samples": 50_000.0}
HEADER = (
    "| trial | architecture | state | our val set | our protocol | top-1 | top-5 | paper top-1 | paper top-5 "
    "| paper protocol | paper source |"
)


def _trial(trial_id: str, model: dict[str, Any], metrics: dict[str, float], scales: list[int] | None = None) -> dict:
    config = {"model": {"arch": None, "shortcut": "B", **model}, "recipe": {"eval": {"scales": scales or []}}}
    return {"id": trial_id, "state": "SUCCEEDED", "config": config, "metrics": metrics}


def test_paper_numbers_and_their_protocols() -> None:
    # He et al. 2015: Table 3 (10-crop) and Table 4 (multi-scale) for ResNet-152, Table 2 for plain-34.
    assert [(r.table, r.top1, r.top5, r.protocol) for r in paper_results(152, True, "B")] == [
        ("Table 3", 21.43, 5.71, "ten_crop"),
        ("Table 4", 19.38, 4.49, "multi_scale"),
    ]
    assert [(r.table, r.top1) for r in paper_results(34, False, "B")] == [("Table 2", 28.54), ("Table 3", 28.54)]
    assert [(r.table, r.top1, r.protocol, r.data.samples) for r in paper_results(110, True, "A")] == [
        ("Table 6", 6.43, "center", 10_000)
    ]
    assert paper_results(18, True, "C") == []  # the paper has no ResNet-18 with option C


def test_each_row_says_how_both_numbers_were_measured() -> None:
    center_only = {"val_top1_err": 0.25, "val_top5_err": 0.08, **IMAGENET_VAL}
    both = {
        **center_only,
        "final_ten_crop_top1_err": 0.24,
        "final_ten_crop_top5_err": 0.07,
        "final_multi_scale_top1_err": 0.22,
        "final_multi_scale_top5_err": 0.06,
    }
    rows = rows_from_trials(
        [
            _trial("c", {"depth": 34, "residual": True, "shortcut": "C"}, center_only),
            _trial("m", {"depth": 34, "residual": True, "shortcut": "C"}, both, scales=[224, 256, 384, 480, 640]),
        ]
    )
    lines = markdown(rows, "x").splitlines()
    assert HEADER in lines
    # Only center-crop numbers: shown, but the paper's 10-crop and multi-scale protocols are marked as not ours.
    assert lines[-4:] == [
        "| c | ResNet-34 (C) | SUCCEEDED | 1000 classes, 50,000 images | center crop | 25.00 | 8.00 | 24.19 | 7.40 "
        "| 10-crop **(mismatch)** | Table 3 (ILSVRC-2012 val) |",
        "| c | ResNet-34 (C) | SUCCEEDED | 1000 classes, 50,000 images | center crop | 25.00 | 8.00 | 21.53 | 5.60 "
        "| multi-scale **(mismatch)** | Table 4 (ILSVRC-2012 val) |",
        "| m | ResNet-34 (C) | SUCCEEDED | 1000 classes, 50,000 images | 10-crop | 24.00 | 7.00 | 24.19 | 7.40 "
        "| 10-crop | Table 3 (ILSVRC-2012 val) |",
        "| m | ResNet-34 (C) | SUCCEEDED | 1000 classes, 50,000 images | multi-scale {224, 256, 384, 480, 640} | 22.00 "
        "| 6.00 | 21.53 | 5.60 | multi-scale | Table 4 (ILSVRC-2012 val) |",
    ]


def test_other_data_is_not_compared() -> None:
    rows = rows_from_trials(
        [
            # 200 classes, 200 images: not ILSVRC-2012 val, whatever the protocol.
            _trial(
                "sub",
                {"depth": 18, "residual": False},
                {"val_top1_err": 0.9, "val_classes": 200.0, "val_samples": 200.0},
            ),
            # CIFAR-10's test set: Table 6 compares (single view, as the paper tests).
            _trial(
                "c56",
                {"depth": 56, "residual": True, "shortcut": "A"},
                {"val_top1_err": 0.07, "val_top5_err": 0.0, "val_classes": 10.0, "val_samples": 10_000.0},
            ),
            _trial("new", {"depth": 18, "residual": False}, {}),
        ]
    )
    lines = markdown(rows, "x").splitlines()[-3:]
    assert lines == [
        "| sub | plain-18 | SUCCEEDED | 200 classes, 200 images | center crop | 90.00 | - | (27.94) not comparable: "
        "different data | - | 10-crop **(mismatch)** | Table 2 (ILSVRC-2012 val) |",
        "| c56 | ResNet-56 | SUCCEEDED | 10 classes, 10,000 images | center crop | 7.00 | 0.00 | 6.97 | - "
        "| center crop | Table 6 (CIFAR-10 test) |",
        "| new | plain-18 | SUCCEEDED | unknown | - | - | - | (27.94) not compared: no validation yet | - | 10-crop "
        "| Table 2 (ILSVRC-2012 val) |",
    ]


def test_curves_put_plain_and_residual_of_a_depth_side_by_side_on_the_same_axes(tmp_path: Path) -> None:
    trials = [
        _trial("000-depth18-plain", {"depth": 18, "residual": False}, {}),
        _trial("001-depth18-residual", {"depth": 18, "residual": True}, {}),
        _trial("002-depth34-plain", {"depth": 34, "residual": False}, {}),
    ]
    curves = {
        "000-depth18-plain": {"train_top1_err": [(10, 0.9), (20, 0.8)], "val_top1_err": [(20, 0.85)]},
        "001-depth18-residual": {"train_top1_err": [(10, 0.7), (20, 0.5)], "val_top1_err": [(20, 0.6)]},
        "002-depth34-plain": {"train_top1_err": [(10, 0.95)], "val_top1_err": []},
    }
    models = {t["id"]: t["config"]["model"] for t in trials}
    fig = curves_figure(curves, models)
    plain, residual = fig.axes
    assert (plain.get_title(), residual.get_title()) == ("plain", "residual")
    assert plain.get_ylim() == residual.get_ylim() and plain.get_xlim() == residual.get_xlim()
    lines = {line.get_label(): line for ax in fig.axes for line in ax.get_lines()}
    assert sorted(lines) == [
        "000-depth18-plain plain-18 train",
        "000-depth18-plain plain-18 val",
        "001-depth18-residual ResNet-18 (B) train",
        "001-depth18-residual ResNet-18 (B) val",
        "002-depth34-plain plain-34 train",
    ]
    assert list(lines["001-depth18-residual ResNet-18 (B) train"].get_ydata()) == [70.0, 50.0]
    # Depth 18 has one colour in both panels, depth 34 another.
    assert (
        lines["000-depth18-plain plain-18 val"].get_color()
        == lines["001-depth18-residual ResNet-18 (B) val"].get_color()
    )
    assert lines["000-depth18-plain plain-18 val"].get_color() != lines["002-depth34-plain plain-34 train"].get_color()
    text, md, png, curves_png = write_report(trials, "s", tmp_path, curves)
    assert curves_png == tmp_path / "curves.png" and curves_png.stat().st_size > 0
    assert md.read_text() == text and png.stat().st_size > 0
    assert write_report(trials, "s", tmp_path / "none", {"000-depth18-plain": {}})[3] is None
