"""Our errors next to He et al. 2015's, each said how it was measured, as a Markdown table and a PNG; and the Figure 4
style training curves.

Paper numbers are validation/test errors in percent (arXiv:1512.03385v1), each with the protocol it used:
- Table 2: top-1, 10-crop testing on ILSVRC-2012 val; plain vs residual 18/34 (residual nets use option A shortcuts,
  Section 4.1).
- Table 3: top-1/top-5, 10-crop testing; ResNet-34 options A/B/C, plain-34, and the 50/101/152 bottleneck nets
  (option B, Section 4.1 "Deeper Bottleneck Architectures").
- Table 4: top-1/top-5, single model, multi-scale fully-convolutional testing (Section 3.4).
- Table 6: CIFAR-10 test error (top-1) of the 6n+2-layer nets, option A, "the single view of the original 32x32
  image" (Section 4.2).

A row puts our number measured with the paper's protocol next to the paper's when the trial measured it; otherwise our
center-crop number, marked as a protocol mismatch. A row whose val set is not the paper's (ILSVRC-2012 val: 1,000
classes, 50,000 images; CIFAR-10 test: 10 classes, 10,000 images) shows the paper's number as not comparable.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # no display on cluster nodes or CI
import matplotlib.pyplot as plt
from matplotlib.figure import Figure

from orchestrator.training import metric_names as m


@dataclass(frozen=True)
class PaperData:
    """The evaluation set a paper number comes from."""

    name: str
    classes: int
    samples: int


IMAGENET_VAL = PaperData("ILSVRC-2012 val", 1000, 50_000)
CIFAR10_TEST = PaperData("CIFAR-10 test", 10, 10_000)


@dataclass(frozen=True)
class PaperResult:
    table: str
    top1: float
    top5: float | None
    protocol: str  # `presets.Protocol`: "ten_crop", "multi_scale" or "center"
    data: PaperData = IMAGENET_VAL
    note: str = ""


def _ten(table: str, top1: float, top5: float | None = None) -> PaperResult:
    return PaperResult(table, top1, top5, "ten_crop")


def _multi(top1: float, top5: float) -> PaperResult:
    return PaperResult("Table 4", top1, top5, "multi_scale")


def _cifar(top1: float, note: str = "") -> PaperResult:
    return PaperResult("Table 6", top1, None, "center", CIFAR10_TEST, note)


# (depth, residual, shortcut or None for "any") -> the paper's figures for that architecture.
_PAPER: dict[tuple[int, bool, str | None], list[PaperResult]] = {
    (18, False, None): [_ten("Table 2", 27.94)],
    (34, False, None): [_ten("Table 2", 28.54), _ten("Table 3", 28.54, 10.02)],
    (18, True, "A"): [_ten("Table 2", 27.88)],
    (34, True, "A"): [_ten("Table 2", 25.03), _ten("Table 3", 25.03, 7.76)],
    (34, True, "B"): [_ten("Table 3", 24.52, 7.46), _multi(21.84, 5.71)],
    (34, True, "C"): [_ten("Table 3", 24.19, 7.40), _multi(21.53, 5.60)],
    (50, True, "B"): [_ten("Table 3", 22.85, 6.71), _multi(20.74, 5.25)],
    (101, True, "B"): [_ten("Table 3", 21.75, 6.05), _multi(19.87, 4.60)],
    (152, True, "B"): [_ten("Table 3", 21.43, 5.71), _multi(19.38, 4.49)],
    (20, True, None): [_cifar(8.75)],
    (32, True, None): [_cifar(7.51)],
    (44, True, None): [_cifar(7.17)],
    (56, True, None): [_cifar(6.97)],
    (110, True, None): [_cifar(6.43, "best of 5")],
    (1202, True, None): [_cifar(7.93)],
}


def paper_results(depth: int, residual: bool, shortcut: str) -> list[PaperResult]:
    return _PAPER.get((depth, residual, shortcut), []) or _PAPER.get((depth, residual, None), [])


def protocol_label(protocol: str, scales: Sequence[int] = ()) -> str:
    if protocol == "ten_crop":
        return "10-crop"
    if protocol == "multi_scale":
        return f"multi-scale {{{', '.join(str(s) for s in scales)}}}" if scales else "multi-scale"
    return "center crop"


@dataclass(frozen=True)
class Measured:
    """One of our numbers and how it was measured."""

    protocol: str
    label: str  # e.g. "10-crop", "multi-scale {224, 256}"
    top1: float | None  # percent
    top5: float | None


@dataclass(frozen=True)
class ReportRow:
    trial_id: str
    architecture: str
    state: str
    measured: dict[str, Measured]  # protocol -> our number (center crop always, when validated)
    val_classes: int | None
    val_samples: int | None
    paper: list[PaperResult] = field(default_factory=list)
    val_is_train: bool = False  # validated on its own training images (`data.allow_val_equals_train`)

    def ours_for(self, protocol: str) -> Measured | None:
        """Our number with `protocol` if the trial measured it, else the center crop's (a mismatch to mark)."""
        return self.measured.get(protocol) or self.measured.get("center")

    def comparable(self, data: PaperData) -> bool:
        """Whether our val set is the paper's (same class and image count)."""
        return (self.val_classes, self.val_samples) == (data.classes, data.samples)


def architecture(model: Mapping[str, Any]) -> str:
    if model.get("arch"):
        return str(model["arch"])
    kind = "ResNet" if model["residual"] else "plain"
    name = f"{kind}-{model['depth']}"
    return f"{name} ({model['shortcut']})" if model["residual"] and model["depth"] in (18, 34, 50, 101, 152) else name


def _pct(metrics: Mapping[str, float], key: str) -> float | None:
    return None if key not in metrics else 100.0 * metrics[key]


def _measured(metrics: Mapping[str, float], config: Mapping[str, Any]) -> dict[str, Measured]:
    out = {}
    if m.VAL_TOP1_ERR in metrics:
        out["center"] = Measured("center", "center crop", _pct(metrics, m.VAL_TOP1_ERR), _pct(metrics, m.VAL_TOP5_ERR))
    scales = config.get("recipe", {}).get("eval", {}).get("scales", ())
    for protocol in m.FINAL_PROTOCOLS:
        top1 = m.final_name(protocol, "top1_err")
        if top1 in metrics:
            top5 = _pct(metrics, m.final_name(protocol, "top5_err"))
            out[protocol] = Measured(protocol, protocol_label(protocol, scales), _pct(metrics, top1), top5)
    return out


def rows_from_trials(trials: Sequence[Mapping[str, Any]]) -> list[ReportRow]:
    """`trials`: the `status --json` trial objects (config, state, metrics with errors as fractions)."""
    rows = []
    for trial in trials:
        model = trial["config"]["model"]
        metrics = trial.get("metrics", {})
        paper = [] if model.get("arch") else paper_results(model["depth"], model["residual"], model["shortcut"])
        classes, samples = metrics.get(m.VAL_CLASSES), metrics.get(m.VAL_SAMPLES)
        rows.append(
            ReportRow(
                trial_id=trial["id"],
                architecture=architecture(model),
                state=trial["state"],
                measured=_measured(metrics, trial["config"]),
                val_classes=None if classes is None else int(classes),
                val_samples=None if samples is None else int(samples),
                paper=paper,
                val_is_train=bool(trial["config"].get("data", {}).get("allow_val_equals_train")),
            )
        )
    return rows


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


# The mark of a trial validated on its training images, and the note that explains it under the table.
VAL_IS_TRAIN_MARK = "†"
VAL_IS_TRAIN_NOTE = (
    f"{VAL_IS_TRAIN_MARK} validated on its own training images (data.allow_val_equals_train): training-set errors, "
    "not comparable to the paper's validation errors."
)


def _val_set(row: ReportRow) -> str:
    if row.val_classes is None or row.val_samples is None:
        return "unknown"
    return f"{row.val_classes} classes, {row.val_samples:,} images"


def _line(row: ReportRow, ours: Measured | None, ref: PaperResult | None) -> str:
    trial = f"{row.trial_id} {VAL_IS_TRAIN_MARK}" if row.val_is_train else row.trial_id
    cells = [trial, row.architecture, row.state, _val_set(row)]
    cells += [ours.label if ours else "-", _num(ours.top1 if ours else None), _num(ours.top5 if ours else None)]
    if ref is None:
        return "| " + " | ".join([*cells, "-", "-", "-", "-"]) + " |"
    source = f"{ref.table} ({ref.data.name}{', ' + ref.note if ref.note else ''})"
    paper = [_num(ref.top1), _num(ref.top5)]
    if row.val_classes is None or row.val_samples is None:
        paper = [f"({paper[0]}) not compared: no validation yet", f"({paper[1]})" if ref.top5 else "-"]
    elif not row.comparable(ref.data):
        paper = [f"({paper[0]}) not comparable: different data", f"({paper[1]})" if ref.top5 else "-"]
    label = protocol_label(ref.protocol)
    protocol = f"{label} **(mismatch)**" if ours is not None and ours.protocol != ref.protocol else label
    return "| " + " | ".join([*cells, *paper, protocol, source]) + " |"


def markdown(rows: Sequence[ReportRow], title: str, champion: str | None = None) -> str:
    lines = [
        f"# {title}",
        "",
        "Top-1/top-5 error in %. Paper: He et al. 2015 (arXiv:1512.03385), same architecture. Each row says how our "
        "number was measured and how the paper's was; a protocol mismatch is marked, and a paper number measured on "
        "other data than our val set is not compared.",
        "",
        "| trial | architecture | state | our val set | our protocol | top-1 | top-5 | paper top-1 | paper top-5 "
        "| paper protocol | paper source |",
        "|---|---|---|---|---|---:|---:|---:|---:|---|---|",
    ]
    for row in rows:
        if row.paper:
            lines += [_line(row, row.ours_for(ref.protocol), ref) for ref in row.paper]
        else:
            lines += [_line(row, ours, None) for ours in row.measured.values()] or [_line(row, None, None)]
    if any(row.val_is_train for row in rows):
        lines += ["", VAL_IS_TRAIN_NOTE]
    if champion is not None:
        lines += ["", f"Champion: {champion}."]
    return "\n".join(lines) + "\n"


def plot_comparison(rows: Sequence[ReportRow], path: Path, title: str) -> None:
    """Bars: our top-1 next to the paper's (its first listed table) for each trial; the paper's bar is grey and
    hatched where its data is not ours, hatched where our protocol is not the paper's."""
    fig, ax = plt.subplots(figsize=(max(6.0, 1.2 * len(rows) + 2), 4.5))
    for x, row in enumerate(rows):
        ref = row.paper[0] if row.paper else None
        ours = row.ours_for(ref.protocol) if ref else row.measured.get("center")
        ax.bar(x - 0.2, (ours.top1 if ours else None) or 0.0, width=0.4, color="C0")
        if ref is not None:
            comparable = row.comparable(ref.data)
            mismatch = ours is None or ours.protocol != ref.protocol
            ax.bar(
                x + 0.2,
                ref.top1,
                width=0.4,
                color="C1" if comparable else "lightgrey",
                hatch="//" if mismatch or not comparable else None,
                edgecolor="grey",
            )
    ax.bar([], [], color="C0", label="ours (top-1)")
    ax.bar([], [], color="C1", label="paper (top-1)")
    ax.bar([], [], color="lightgrey", hatch="//", edgecolor="grey", label="paper: other data or protocol")
    ax.set_xticks(range(len(rows)), [f"{r.trial_id}\n{r.architecture}" for r in rows], rotation=30, ha="right")
    ax.tick_params(axis="x", labelsize=7)
    ax.set_ylabel("top-1 error (%)")
    ax.set_title(title)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


Curves = Mapping[str, Mapping[str, list[tuple[int, float]]]]


def write_report(
    trials: Sequence[Mapping[str, Any]],
    sweep_id: str,
    output: Path,
    curves: Curves | None = None,
    champion: str | None = None,
) -> tuple[str, Path, Path, Path | None]:
    """`report.md` and `report.png` of a sweep's trials (`status --json` objects) in `output`, and `curves.png` (Figure
    4 style) when `curves` (trial id -> metric -> [(step, error)], from MLflow) has any; returns (the Markdown, the
    paths of the three files, the curves' None when not drawn). The Markdown names the registered model's
    `champion` if given."""
    rows = rows_from_trials(trials)
    output.mkdir(parents=True, exist_ok=True)
    text = markdown(rows, f"Sweep {sweep_id}", champion)
    md, png = output / "report.md", output / "report.png"
    md.write_text(text, encoding="utf-8")
    plot_comparison(rows, png, sweep_id)
    curves_png = None
    if curves and any(points for metrics in curves.values() for points in metrics.values()):
        curves_png = output / "curves.png"
        models = {t["id"]: t["config"]["model"] for t in trials}
        plot_curves(curves, curves_png, models)
    return text, md, png, curves_png


def plot_curves(curves: Curves, path: Path, models: Mapping[str, Mapping[str, Any]] | None = None) -> None:
    """Write `curves_figure(curves, models)` to `path`."""
    fig = curves_figure(curves, models)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def curves_figure(curves: Curves, models: Mapping[str, Mapping[str, Any]] | None = None) -> Figure:
    """Figure 4 of the paper: plain nets left, residual nets right, on the same axes; one colour per depth in both
    panels (a plain net and the residual net of its depth side by side); thin dashed = train error, bold = val error.

    `curves`: trial id -> metric (`train_top1_err`, `val_top1_err`) -> [(iteration, error fraction)]. `models`: trial
    id -> its model config (residual, depth); without it a trial is plain when its id says so (`-plain`).
    """

    def model(trial_id: str) -> Mapping[str, Any] | None:
        return models.get(trial_id) if models is not None else None

    def residual(trial_id: str) -> bool:
        config = model(trial_id)
        return bool(config["residual"]) if config is not None else "-plain" not in trial_id

    def colour_key(trial_id: str) -> str:
        config = model(trial_id)
        return str(config.get("arch") or config["depth"]) if config is not None else trial_id

    colours = {key: f"C{i}" for i, key in enumerate(dict.fromkeys(colour_key(t) for t in sorted(curves)))}
    panels = [
        (name, ids)
        for name, kind in (("plain", False), ("residual", True))
        if (ids := [t for t in sorted(curves) if residual(t) == kind])
    ]
    fig, axes = plt.subplots(1, len(panels), figsize=(6 * len(panels), 4.5), squeeze=False, sharex=True, sharey=True)
    for ax, (name, ids) in zip(axes[0], panels, strict=True):
        for trial_id in ids:
            config = model(trial_id)
            label = f"{trial_id} {architecture(config)}" if config is not None else trial_id
            for metric, width, style in ((m.TRAIN_TOP1_ERR, 1.0, "--"), (m.VAL_TOP1_ERR, 2.5, "-")):
                points = curves[trial_id].get(metric, [])
                if points:
                    steps, values = zip(*points, strict=True)
                    colour = colours[colour_key(trial_id)]
                    kind = metric.split("_")[0]
                    ax.plot(
                        steps, [100 * v for v in values], style, color=colour, linewidth=width, label=f"{label} {kind}"
                    )
        ax.set_title(name)
        ax.set_xlabel("iterations")
        ax.set_ylabel("top-1 error (%)")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)
    fig.tight_layout()
    return fig
