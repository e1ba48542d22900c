"""`resnet-orch data ...`: shard an image folder to WebDataset tars, check a shard set.

Exit codes: 0 done / shard set healthy, 1 `check` found problems, 2 bad input (message, no traceback).
Endpoint, credentials and region come from the standard AWS variables/profile; none is printed.
The pipelines (numpy, torch, DALI) are imported by the command that runs, not by `--help`.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

import typer
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeRemainingColumn
from rich.table import Table

from orchestrator.cli.errors import FAILED, err, fail, out

if TYPE_CHECKING:
    from pipelines.check import CheckReport
    from pipelines.sharding import ShardReport

app = typer.Typer(name="data", help="Shard ImageNet-style folders or CIFAR-10 to WebDataset tars; check shard sets.")


def _progress(quiet: bool) -> Progress:
    return Progress(
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn("images"),
        TimeRemainingColumn(),
        console=err(),
        disable=quiet,
    )


def _shard_table(reports: dict[str, ShardReport]) -> Table:
    table = Table(title="sharded")
    columns = ("split", "dest", "samples", "classes", "shards written", "shards kept", "re-encoded", "skipped", "mean")
    for column in columns:
        table.add_column(column)
    for split, r in reports.items():
        table.add_row(
            split,
            r.dest,
            str(r.samples),
            str(r.classes),
            str(r.shards_written),
            str(r.shards_reused),
            str(len(r.reencoded)),
            str(len(r.skipped)),
            "yes" if r.mean_image else "-",
        )
    return table


@app.command()
def shard(
    src: Path = typer.Argument(
        ...,
        help="ImageNet-style folder (<wnid>/*.JPEG, train/ + val/, or flat + labels), or the CIFAR-10 python archive "
        "(cifar-10-python.tar.gz or its extracted data_batch_*/test_batch files)",
    ),
    dest: str = typer.Argument(..., help="local folder or s3://bucket/prefix"),
    shard_size: str = typer.Option("256MB", help="target tar size, e.g. 256MB (real ImageNet), 1GiB"),
    labels: Path | None = typer.Option(None, help="TSV/CSV with columns file, wnid[, class_index] (flat SRC)"),
    shuffle_seed: int = typer.Option(0, help="samples are shuffled once across shards with this seed"),
    workers: int | None = typer.Option(None, min=1, help="threads validating images (default: CPU count)"),
    mean_image: bool = typer.Option(
        True, "--mean-image/--no-mean-image", help="store the training images' per-pixel mean (paper, cifar presets)"
    ),
    cifar_val: int = typer.Option(
        0, min=0, help="CIFAR-10: hold out this many training images as DEST/val (the paper's split: 5000)"
    ),
    address: str | None = typer.Option(
        None, help="Ray cluster (auto or host:port): one task per shard; every node must see SRC and DEST"
    ),
    as_json: bool = typer.Option(False, "--json", help="last line: one JSON object with the report"),
) -> None:
    """Write SRC as WebDataset shards + DALI index files + manifest.json at DEST (resumable); CIFAR-10 goes to
    DEST/train, DEST/val (with --cifar-val) and DEST/test."""
    from pipelines.shard_jobs import shard_jobs
    from pipelines.sharding import parse_size
    from pipelines.sources import ShardingError
    from pipelines.storage import StorageError

    try:
        shard_bytes = parse_size(shard_size)
        jobs = shard_jobs(src, dest, labels=labels, mean_image=mean_image, cifar_val=cifar_val, split_seed=shuffle_seed)
        reports: dict[str, ShardReport] = {}
        with _progress(as_json) as progress:
            for name, job in jobs.items():
                task = progress.add_task(f"sharding {name or src.name}", total=None)

                def update(done: int, total: int, task: TaskID = task) -> None:
                    progress.update(task, completed=done, total=total)

                reports[name or "-"] = job.run(
                    shard_bytes=shard_bytes,
                    shuffle_seed=shuffle_seed,
                    workers=workers,
                    progress=update,
                    address=address,
                )
    except (ShardingError, StorageError) as exc:
        raise fail(str(exc)) from None
    out().print(_shard_table(reports))
    for report in reports.values():
        for bad in report.skipped:
            out().print(f"skipped (undecodable): {bad['file']}: {bad['error']}", highlight=False, soft_wrap=True)
    if as_json:
        payload = {split: vars(r) for split, r in reports.items()}
        typer.echo(json.dumps(payload))


def _check_table(report: CheckReport) -> Table:
    table = Table(title=f"check {report.uri}")
    table.add_column("")
    table.add_column("value")
    rows = [
        ("samples", f"{report.samples} / {report.expected_samples} in manifest"),
        ("classes", f"{report.classes} / {report.expected_classes} in manifest"),
        ("records", f"{report.records} in the indexes ({report.mode}: {report.samples} decoded)"),
        ("structure errors", str(len(report.structure_errors))),
        ("decode errors", str(report.decode_errors)),
        ("labels out of range", str(report.label_errors)),
        ("images/s", f"{report.images_per_s:.0f} decoded"),
    ]
    if report.per_class:
        counts = sorted(report.per_class.values())
        rows.append(("per-class count", f"min {counts[0]}, median {counts[len(counts) // 2]}, max {counts[-1]}"))
    for key, value in rows:
        table.add_row(key, value)
    return table


@app.command()
def check(
    uri: str = typer.Argument(..., help="shard set: local folder or s3://bucket/prefix"),
    full: bool = typer.Option(False, "--full", help="decode every record, not a seeded sample"),
    sample: int = typer.Option(1000, min=1, help="records decoded without --full, drawn over the whole set"),
    seed: int = typer.Option(0, help="seed of the sample"),
    address: str | None = typer.Option(None, help="Ray cluster (auto or host:port): one task per shard"),
    as_json: bool = typer.Option(False, "--json", help="last line: one JSON object (samples, classes, ...)"),
) -> None:
    """Check every shard's structure (manifest, index, tar headers) and decode a seeded sample of records (every
    record with --full); report counts, bad records and images/s."""
    from pipelines.check import check_shards
    from pipelines.sources import ShardingError
    from pipelines.storage import StorageError

    try:
        with _progress(as_json) as progress:
            task = progress.add_task(f"checking {uri}", total=None)
            report = check_shards(
                uri,
                full=full,
                sample=sample,
                seed=seed,
                address=address,
                progress=lambda done, total: progress.update(task, completed=done, total=total),
            )
    except (ShardingError, StorageError, ValueError, ImportError) as exc:  # UnsafeName is a ValueError
        raise fail(str(exc)) from None
    out().print(_check_table(report))
    for name in report.bad_samples:
        out().print(f"undecodable: {name}", highlight=False)
    for problem in report.structure_errors:
        out().print(f"structure: {problem}", highlight=False, soft_wrap=True)
    if as_json:
        typer.echo(json.dumps(report.as_dict()))
    if not report.ok:
        raise typer.Exit(FAILED)
