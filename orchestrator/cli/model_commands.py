"""`resnet-orch summary`: the layers, parameters and multiply-adds of a registered model (`models.summary`)."""

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


def register(app: typer.Typer) -> None:
    app.command("summary", help="Layers, parameters and multiply-adds of a registered model.")(summary)
