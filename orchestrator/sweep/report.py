"""Our errors next to He et al. 2015's, as a Markdown table and a PNG; and the Figure 4 style training curves.

Paper numbers are ImageNet validation errors in percent (arXiv:1512.03385v1):
- Table 2: top-1, 10-crop testing; plain vs residual 18/34 (residual nets use option A shortcuts, Section 4.1).
- Table 3: top-1/top-5, 10-crop testing; ResNet-34 options A/B/C, plain-34, and the 50/101/152 bottleneck nets
  (option B, Section 4.1 "Deeper Bottleneck Architectures").
- Table 4: top-1/top-5, single model, multi-scale fully-convolutional testing (Section 3.4).
- Table 6: CIFAR-10 test error (top-1) of the 6n+2-layer nets, option A.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes or CI
import matplotlib.pyplot as plt

from orchestrator.training.metric_names import TRAIN_TOP1_ERR, VAL_TOP1_ERR, VAL_TOP5_ERR


@dataclass(frozen=True)
class PaperResult:
    table: str
    top1: float
    top5: float | None
    note: str


# (depth, residual, shortcut or None for "any") -> the paper's figures for that architecture.
_PAPER: dict[tuple[int, bool, str | None], list[PaperResult]] = {
    (18, False, None): [PaperResult("Table 2", 27.94, None, "10-crop")],
    (34, False, None): [
        PaperResult("Table 2", 28.54, None, "10-crop"),
        PaperResult("Table 3", 28.54, 10.02, "10-crop"),
    ],
    (18, True, "A"): [PaperResult("Table 2", 27.88, None, "10-crop")],
    (34, True, "A"): [
        PaperResult("Table 2", 25.03, None, "10-crop"),
        PaperResult("Table 3", 25.03, 7.76, "10-crop"),
    ],
    (34, True, "B"): [
        PaperResult("Table 3", 24.52, 7.46, "10-crop"),
        PaperResult("Table 4", 21.84, 5.71, "multi-scale"),
    ],
    (34, True, "C"): [
        PaperResult("Table 3", 24.19, 7.40, "10-crop"),
        PaperResult("Table 4", 21.53, 5.60, "multi-scale"),
    ],
    (50, True, "B"): [
        PaperResult("Table 3", 22.85, 6.71, "10-crop"),
        PaperResult("Table 4", 20.74, 5.25, "multi-scale"),
    ],
    (101, True, "B"): [
        PaperResult("Table 3", 21.75, 6.05, "10-crop"),
        PaperResult("Table 4", 19.87, 4.60, "multi-scale"),
    ],
    (152, True, "B"): [
        PaperResult("Table 3", 21.43, 5.71, "10-crop"),
        PaperResult("Table 4", 19.38, 4.49, "multi-scale"),
    ],
    (20, True, None): [PaperResult("Table 6", 8.75, None, "CIFAR-10 test")],
    (32, True, None): [PaperResult("Table 6", 7.51, None, "CIFAR-10 test")],
    (44, True, None): [PaperResult("Table 6", 7.17, None, "CIFAR-10 test")],
    (56, True, None): [PaperResult("Table 6", 6.97, None, "CIFAR-10 test")],
    (110, True, None): [PaperResult("Table 6", 6.43, None, "CIFAR-10 test, best of 5")],
    (1202, True, None): [PaperResult("Table 6", 7.93, None, "CIFAR-10 test")],
}


def paper_results(depth: int, residual: bool, shortcut: str) -> list[PaperResult]:
    return _PAPER.get((depth, residual, shortcut), []) or _PAPER.get((depth, residual, None), [])


@dataclass(frozen=True)
class ReportRow:
    trial_id: str
    architecture: str
    state: str
    top1: float | None  # percent
    top5: float | None
    paper: list[PaperResult]
    val_is_train: bool = False  # validated on its own training images (`data.allow_val_equals_train`)


def architecture(model: Mapping[str, Any]) -> str:
    if model.get("arch"):
        return str(model["arch"])
    kind = "ResNet" if model["residual"] else "plain"
    name = f"{kind}-{model['depth']}"
    return f"{name} ({model['shortcut']})" if model["residual"] and model["depth"] in (18, 34, 50, 101, 152) else name


def rows_from_trials(trials: Sequence[Mapping[str, Any]]) -> list[ReportRow]:
    """`trials`: the `status --json` trial objects (config, state, metrics with errors as fractions)."""
    rows = []
    for trial in trials:
        model = trial["config"]["model"]
        metrics = trial.get("metrics", {})
        top1, top5 = metrics.get(VAL_TOP1_ERR), metrics.get(VAL_TOP5_ERR)
        paper = [] if model.get("arch") else paper_results(model["depth"], model["residual"], model["shortcut"])
        rows.append(
            ReportRow(
                trial_id=trial["id"],
                architecture=architecture(model),
                state=trial["state"],
                top1=None if top1 is None else 100.0 * top1,
                top5=None if top5 is None else 100.0 * top5,
                paper=paper,
                val_is_train=bool(trial["config"].get("data", {}).get("allow_val_equals_train")),
            )
        )
    return rows


def _pct(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# The mark of a trial validated on its training images, and the note that explains it under the table.
VAL_IS_TRAIN_MARK = "†"
VAL_IS_TRAIN_NOTE = (
    f"{VAL_IS_TRAIN_MARK} validated on its own training images (data.allow_val_equals_train): training-set errors, "
    "not comparable to the paper's validation errors."
)


def markdown(rows: Sequence[ReportRow], title: str, champion: str | None = None) -> str:
    lines = [
        f"# {title}",
        "",
        "Top-1/top-5 validation error in %. Paper: He et al. 2015 (arXiv:1512.03385), same architecture.",
        "",
        "| trial | architecture | state | top-1 | top-5 | paper top-1 | paper top-5 | paper source |",
        "|---|---|---|---:|---:|---:|---:|---|",
    ]
    for row in rows:
        refs: list[PaperResult | None] = [*row.paper] or [None]
        trial = f"{row.trial_id} {VAL_IS_TRAIN_MARK}" if row.val_is_train else row.trial_id
        for ref in refs:
            lines.append(
                f"| {trial} | {row.architecture} | {row.state} | {_pct(row.top1)} | {_pct(row.top5)} | "
                + (f"{_pct(ref.top1)} | {_pct(ref.top5)} | {ref.table} ({ref.note}) |" if ref else "- | - | - |")
            )
    if any(row.val_is_train for row in rows):
        lines += ["", VAL_IS_TRAIN_NOTE]
    if champion is not None:
        lines += ["", f"Champion: {champion}."]
    return "\n".join(lines) + "\n"


def plot_comparison(rows: Sequence[ReportRow], path: Path, title: str) -> None:
    """Bars: our top-1 next to the paper's (its first listed table) for each trial."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.5))
    xs = range(len(rows))
    ours = [r.top1 or 0.0 for r in rows]
    paper = [r.paper[0].top1 if r.paper else 0.0 for r in rows]
    ax.bar([x - 0.2 for x in xs], ours, width=0.4, label="ours (top-1)")
    ax.bar([x + 0.2 for x in xs], paper, width=0.4, label="paper (top-1)")
    ax.set_xticks(list(xs), [f"{r.trial_id}\n{r.architecture}" for r in rows], rotation=30, ha="right", fontsize=7)
    ax.set_ylabel("top-1 error (%)")
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def write_report(
    trials: Sequence[Mapping[str, Any]], sweep_id: str, output: Path, champion: str | None = None
) -> tuple[str, Path, Path]:
    """`report.md` and `report.png` of a sweep's trials (`status --json` objects) in `output`, naming the registered
    model's champion if given; returns (the Markdown, its path, the PNG's path)."""
    rows = rows_from_trials(trials)
    output.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, f"Sweep {sweep_id}", champion)
    md, png = output / "report.md", output / "report.png"
    md.write_text(text, encoding="utf-8")
    plot_comparison(rows, png, sweep_id)
    return text, md, png


def plot_curves(curves: Mapping[str, Mapping[str, list[tuple[int, float]]]], path: Path) -> None:
    """Figure 4 of the paper: plain nets left, residual nets right; thin = train error, bold = val error.

    `curves`: trial id -> metric (`train_top1_err`, `val_top1_err`) -> [(iteration, error fraction)].
    """
    plain = {k: v for k, v in curves.items() if "-plain" in k}
    residual = {k: v for k, v in curves.items() if k not in plain}
    panels = [(name, group) for name, group in (("plain", plain), ("residual", residual)) if group]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False)
    for ax, (name, group) in zip(axes[0], panels, strict=True):
        for index, (trial_id, metrics) in enumerate(sorted(group.items())):
            color = f"C{index}"
            for metric, width, style in ((TRAIN_TOP1_ERR, 1.0, "--"), (VAL_TOP1_ERR, 2.5, "-")):
                points = metrics.get(metric, [])
                if points:
                    steps, values = zip(*points, strict=True)
                    label = f"{trial_id} {metric.split('_')[0]}"
                    ax.plot(steps, [100 * v for v in values], style, color=color, linewidth=width, label=label)
        ax.set_title(name)
        ax.set_xlabel("iterations")
        ax.set_ylabel("top-1 error (%)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
