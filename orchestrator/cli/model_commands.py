"""`resnet-orch summary`: the layers, parameters and multiply-adds of a registered model (`models.summary`);
`resnet-orch bench`: its training throughput on this machine, stored for `validate`'s GPU-hour estimates."""

from __future__ import annotations

import typer

from orchestrator.cli.errors import fail, out


def summary(
    name: str = typer.Argument(..., help="registered model, e.g. resnet50, cifar_resnet56, test_resnet"),
    shortcut: str | None = typer.Option(None, help="A (zero-pad identity), B (projection when dims grow), C (all)"),
    plain: bool = typer.Option(False, "--plain", help="the plain net: same layers, no shortcuts"),
    variant: str | None = typer.Option(
        None, help="v1 (stride in the bottleneck's 1x1, the paper) or v1.5 (in the 3x3)"
    ),
    base_width: int | None = typer.Option(None, help="width of the first stage (64 ImageNet, 16 CIFAR)"),
    num_classes: int | None = typer.Option(None, help="classifier outputs"),
    image_size: int | None = typer.Option(None, min=1, help="input resolution (default 224; 32 for the CIFAR nets)"),
    blocks: bool = typer.Option(True, "--blocks/--stages", help="one row per block, or per stage only"),
) -> None:
    """Print a model's layers with their output shapes, parameters and multiply-adds."""
    from models.summary import summary_table

    given = {"shortcut": shortcut, "variant": variant, "base_width": base_width, "num_classes": num_classes}
    overrides: dict[str, object] = {k: v for k, v in given.items() if v is not None}
    if plain:
        overrides["residual"] = False
    try:
        table = summary_table(name, overrides, image_size, blocks)
    except ValueError as exc:
        raise fail(str(exc)) from None
    out().print(table)


def bench(
    name: str = typer.Argument(..., help="registered model, e.g. resnet50, test_resnet"),
    image_size: int = typer.Option(224, min=8, help="input resolution the sweep trains at"),
    batch_size: int = typer.Option(64, min=1, help="images per step on the one device"),
    steps: int = typer.Option(20, min=1, help="timed steps (after 3 warm-up steps)"),
) -> None:
    """Measure training images/s of one device here (the first GPU, else the CPU) and store it under the home."""
    from models import list_models
    from orchestrator.sweep.layout import orch_home
    from orchestrator.training.throughput import measure, save_figure

    if name not in list_models():
        raise fail(f"{name!r} is not a registered model; choose one of {', '.join(sorted(list_models()))}")
    figure = measure(name, image_size, batch_size, steps)
    path = save_figure(orch_home(), figure)
    out().print(
        f"{figure.model} at {figure.image_size}px on {figure.hardware}: {figure.images_per_s:,.1f} images/s "
        f"({figure.macs_per_image / 1e9:.3f} GMACs per image, batch {figure.batch_size}, {figure.steps} steps); "
        f"stored in {path}",
        highlight=False,
        soft_wrap=True,
    )


def register(app: typer.Typer) -> None:
    app.command("bench", help="Training throughput of a model on this machine, for validate's estimates.")(bench)
    app.command("summary", help="Layers, parameters and multiply-adds of a registered model.")(summary)
