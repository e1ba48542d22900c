"""Sharding: WebDataset layout, DALI index, image checks, resume, interrupted runs, CLI errors."""

from __future__ import annotations

import csv
import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
from PIL import Image
from wds2idx import IndexCreator  # DALI's own index writer: the reference for our index files

from pipelines.loader import LoaderSpec
from pipelines.loader_factory import make_loader
from pipelines.sharding import MANIFEST_NAME, parse_size, read_manifest, shard_dataset
from pipelines.sources import ShardingError


def _tar_labels(shard_dir: Path) -> dict[str, int]:
    """key -> label read back from every tar of a local shard set."""
    out: dict[str, int] = {}
    for tar_path in sorted(shard_dir.glob("shard-*.tar")):
        with tarfile.open(tar_path) as tar:
            for member in tar.getmembers():
                if member.name.endswith(".cls"):
                    data = tar.extractfile(member)
                    assert data is not None
                    out[member.name.removesuffix(".cls")] = int(data.read())
    return out


def _bad_source(tiny_images_dir: Path, root: Path) -> Path:
    """Eight good images plus a grayscale, a CMYK, a PNG named .JPEG, a truncated and a garbage file."""
    src = root / "src"
    src.mkdir()
    with open(tiny_images_dir / "labels.tsv") as f:
        rows = list(csv.DictReader(f, dialect="excel-tab"))[:8]
    for row in rows:
        shutil.copy(tiny_images_dir / row["file"], src / row["file"])
    wnid = rows[0]["wnid"]
    Image.new("L", (40, 30), 128).save(src / "gray.JPEG", format="JPEG")
    Image.new("CMYK", (40, 30), (10, 20, 30, 40)).save(src / "cmyk.JPEG", format="JPEG")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(src / "png.JPEG", format="PNG")
    good = (tiny_images_dir / rows[0]["file"]).read_bytes()
    (src / "truncated.JPEG").write_bytes(good[: len(good) // 3])
    (src / "garbage.JPEG").write_bytes(b"this is not an image")
    extra = ["gray.JPEG", "cmyk.JPEG", "png.JPEG", "truncated.JPEG", "garbage.JPEG"]
    with open(src / "labels.tsv", "w") as f:
        f.write("file\twnid\n")
        for name in [r["file"] for r in rows] + extra:
            f.write(f"{name}\t{wnid if name in extra else next(r['wnid'] for r in rows if r['file'] == name)}\n")
    return src


def test_labels_in_tars_match_labels_tsv(sample_shards_local: str, sample_labels: dict[str, int]) -> None:
    manifest = read_manifest(sample_shards_local)
    labels = _tar_labels(Path(sample_shards_local))
    assert manifest["num_samples"] == len(sample_labels) == len(labels)
    assert labels == {Path(name).stem: index for name, index in sample_labels.items()}
    assert len(manifest["shards"]) >= 3
    assert sum(s["samples"] for s in manifest["shards"]) == len(sample_labels)


def test_index_files_equal_dalis_wds2idx(tiny_shards_local: str, tmp_path: Path) -> None:
    for tar_path in sorted(Path(tiny_shards_local).glob("shard-*.tar")):
        reference = tmp_path / f"{tar_path.stem}.idx"
        with IndexCreator(str(tar_path), str(reference), verbose=False) as creator:
            creator.create_index()
        assert tar_path.with_suffix(".idx").read_text() == reference.read_text()


def test_bad_images_reencoded_or_skipped_and_named(tiny_images_dir: Path, tmp_path: Path) -> None:
    src = _bad_source(tiny_images_dir, tmp_path)
    report = shard_dataset(src, str(tmp_path / "out"), shard_bytes=10**6)
    assert report.samples == 11
    assert sorted(Path(s["file"]).name for s in report.skipped) == ["garbage.JPEG", "truncated.JPEG"]
    # n00000000_0 is one of the generated grayscale JPEGs.
    assert sorted(Path(f).name for f in report.reencoded) == ["cmyk.JPEG", "gray.JPEG", "n00000000_0.JPEG", "png.JPEG"]
    manifest = read_manifest(str(tmp_path / "out"))
    assert manifest["num_samples"] == 11 and len(manifest["skipped"]) == 2
    with tarfile.open(tmp_path / "out" / "shard-000000.tar") as tar:
        data = tar.extractfile("cmyk.jpg")
        assert data is not None
        image = Image.open(io.BytesIO(data.read()))
        assert (image.format, image.mode) == ("JPEG", "RGB")


def test_rerun_keeps_complete_shards_and_rewrites_damaged_one(tiny_images_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"
    first = shard_dataset(tiny_images_dir, str(dest), shard_bytes=60_000)
    assert first.shards_written >= 3 and first.shards_reused == 0
    again = shard_dataset(tiny_images_dir, str(dest), shard_bytes=60_000)
    assert (again.shards_written, again.shards_reused) == (0, first.shards_written)
    damaged = dest / "shard-000001.tar"
    data = bytearray(damaged.read_bytes())
    data[1000] ^= 0xFF  # same size, one byte of the first image flipped
    damaged.write_bytes(bytes(data))
    third = shard_dataset(tiny_images_dir, str(dest), shard_bytes=60_000)
    assert (third.shards_written, third.shards_reused) == (1, first.shards_written - 1)


def test_interrupted_run_leaves_no_complete_set_and_resumes(tiny_images_dir: Path, tmp_path: Path) -> None:
    dest = tmp_path / "out"

    def interrupt_after_first_shard(done: int, total: int) -> None:
        if (dest / "shard-000000.json").exists():  # shard 0 complete, shard 1 being written
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        shard_dataset(tiny_images_dir, str(dest), shard_bytes=60_000, progress=interrupt_after_first_shard)
    assert not (dest / MANIFEST_NAME).exists()
    assert not list(dest.glob("*.partial"))
    with pytest.raises(ShardingError, match="not a complete shard set"):
        make_loader(LoaderSpec(uri=str(dest), batch_size=4), 0, 1, __import__("torch").device("cpu"))
    resumed = shard_dataset(tiny_images_dir, str(dest), shard_bytes=60_000)
    assert resumed.shards_reused == 1 and resumed.samples == 48
    assert json.loads((dest / MANIFEST_NAME).read_text())["num_samples"] == 48


@pytest.mark.parametrize(("text", "expected"), [("256MB", 256 * 10**6), ("1GiB", 2**30), ("500k", 500_000), ("42", 42)])
def test_parse_size(text: str, expected: int) -> None:
    assert parse_size(text) == expected


def test_labels_file_naming_a_missing_image_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / "labels.tsv").write_text("file\twnid\nmissing.JPEG\tn000\n")
    with pytest.raises(ShardingError, match=r"lists 'missing.JPEG', which is not in"):
        shard_dataset(tmp_path, str(tmp_path / "out"))
