"""Parameters and multiply-adds of a model, per stage and block: compare architectures before a sweep.

    resnet-orch summary resnet50 --shortcut A --variant v1 --image-size 224     (prints `summary_table`)

Multiply-adds count the conv and linear layers (what the paper's Table 1 "FLOPs" counts); BN, ReLU, pooling
and the residual additions are left out. Models are built on the `meta` device: no memory, no weights.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from rich.table import Table
from torch import Tensor, nn

from models.registry import get_model, model_options

_Hook = Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]


@dataclass(frozen=True)
class SummaryRow:
    """One top-level module (`depth=0`: stem layers, stages, classifier) or one block of a stage (`depth=1`)."""

    name: str
    kind: str
    depth: int
    output_shape: tuple[int, ...]
    params: int
    macs: int


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, image_size: int = 224) -> int:
    """Multiply-adds of one forward pass on a single `3 x image_size x image_size` image."""
    macs, _ = _trace(model, image_size)
    return sum(macs.values())


def summarize(model: nn.Module, image_size: int = 224) -> list[SummaryRow]:
    """Rows for each top-level module and each block inside a stage (an `nn.Sequential`), in forward order."""
    macs, shapes = _trace(model, image_size)
    rows = []
    for name, module in _row_modules(model):
        if isinstance(module, nn.Identity):  # e.g. the CIFAR stem's absent max pool
            continue
        rows.append(
            SummaryRow(
                name=name,
                kind=type(module).__name__,
                depth=name.count("."),
                output_shape=shapes[name],
                params=count_params(module),
                macs=sum(v for leaf, v in macs.items() if leaf == name or leaf.startswith(name + ".")),
            )
        )
    return rows


def _row_modules(model: nn.Module) -> list[tuple[str, nn.Module]]:
    rows: list[tuple[str, nn.Module]] = []
    for name, child in model.named_children():
        rows.append((name, child))
        if isinstance(child, nn.Sequential) and not _is_leaf_group(child):
            rows.extend((f"{name}.{block_name}", block) for block_name, block in child.named_children())
    return rows


def _is_leaf_group(seq: nn.Sequential) -> bool:
    # A Sequential of plain layers (e.g. a projection shortcut) is one row, not a stage of blocks.
    return all(len(list(m.children())) == 0 for m in seq)


def _trace(model: nn.Module, image_size: int) -> tuple[dict[str, int], dict[str, tuple[int, ...]]]:
    """Run one forward pass with hooks: multiply-adds per conv/linear layer, output shape per row module."""
    if image_size <= 0:
        raise ValueError(f"image_size must be a positive number of pixels, got {image_size}")
    macs: dict[str, int] = {}
    shapes: dict[str, tuple[int, ...]] = {}

    def count(name: str) -> _Hook:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            per_sample = output.numel() // output.shape[0]
            if isinstance(module, nn.Conv2d):
                kh, kw = module.kernel_size
                macs[name] = macs.get(name, 0) + per_sample * (module.in_channels // module.groups) * kh * kw
            elif isinstance(module, nn.Linear):
                macs[name] = macs.get(name, 0) + per_sample * module.in_features

        return hook

    def record_shape(name: str) -> _Hook:
        def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            shapes[name] = tuple(output.shape[1:])

        return hook

    handles = [
        m.register_forward_hook(count(n)) for n, m in model.named_modules() if isinstance(m, nn.Conv2d | nn.Linear)
    ]
    handles += [m.register_forward_hook(record_shape(n)) for n, m in _row_modules(model)]
    first = next(model.parameters())
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, image_size, image_size, device=first.device, dtype=first.dtype))
    finally:
        model.train(was_training)
        for handle in handles:
            handle.remove()
    return macs, shapes


def summary_table(name: str, overrides: dict[str, object], image_size: int | None = None, blocks: bool = True) -> Table:
    """A registered model's layers with their output shapes, parameters and multiply-adds, as a table.

    The model is built on the `meta` device (no memory, no weights). `image_size` defaults to the model's own
    (`default_image_size`: 32 for the CIFAR nets) else 224; `blocks=False` keeps one row per stage. Raises
    `ValueError` for an unknown model or option, naming the valid ones.
    """
    with torch.device("meta"):
        model = get_model(name, **overrides)
    if image_size is None:
        image_size = int(getattr(model, "default_image_size", 224))
    rows = summarize(model, image_size)
    options = " ".join(f"{k}={v}" for k, v in {**model_options(name), **overrides}.items())
    table = Table(title=f"{name} at {image_size}x{image_size}", caption=options)
    for column in ("layer", "type", "output (C, H, W)"):
        table.add_column(column)
    for column in ("params", "multiply-adds"):
        table.add_column(column, justify="right")
    for row in rows:
        if row.depth and not blocks:
            continue
        label = "  " * row.depth + row.name
        shape = " x ".join(map(str, row.output_shape))
        table.add_row(label, row.kind, shape, f"{row.params:,}", _format_count(row.macs))
    total_macs = sum(r.macs for r in rows if r.depth == 0)
    table.add_section()
    table.add_row("total", "", "", f"{count_params(model):,}", _format_count(total_macs))
    return table


def _format_count(n: int) -> str:
    for scale, unit in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.2f} {unit}"
    return str(n)
