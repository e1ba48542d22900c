"""Names from data cannot escape their folder: a hostile manifest, labels file, index or tar, a symlink out of a source
tree, and storage keys with `..` are refused with a message naming the entry, before anything is read or written."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from orchestrator.cli.data_commands import app
from pipelines.dali_index import parse_index
from pipelines.loader import LoaderSpec, ShardSet
from pipelines.loader_factory import make_loader
from pipelines.names import UnsafeName, check_tar_members, unsafe_key, unsafe_name
from pipelines.sharding import MANIFEST_NAME, read_manifest, shard_dataset
from pipelines.sources import ShardingError, discover_source
from pipelines.storage import Location, S3Store, StorageError, open_store, parse_uri


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("shard-000000.tar", None),
        ("n01440764_10026.JPEG", None),
        ("a..b.jpg", None),  # dots inside a name climb nowhere
        ("", "is empty"),
        ("../../etc/passwd", "climbs out of its folder ('..')"),
        ("..", "climbs out of its folder ('..')"),
        ("/etc/passwd", "is an absolute path"),
        ("\\\\server\\share", "is an absolute path"),
        ("sub/shard.tar", "contains a path separator"),
        ("sub\\shard.tar", "contains a path separator"),
        (".", "names the folder itself ('.')"),
        ("shard\x00.tar", "contains a NUL byte"),
        ("shard\n.tar", "contains a control character"),
        (None, "is a NoneType, not a file name"),
    ],
)
def test_unsafe_name(name: object, reason: str | None) -> None:
    assert unsafe_name(name) == reason


@pytest.mark.parametrize(
    ("key", "reason"),
    [
        ("progress.json", None),
        ("sweep-1/000-trial/checkpoint.pt", None),
        ("a/../../b", "climbs out of its folder ('..')"),
        ("/abs/key", "is an absolute path"),
        ("a//b", "has an empty path component"),
        ("a/./b", "names the folder itself ('.')"),
        ("a/b\x00", "contains a NUL byte"),
    ],
)
def test_unsafe_key(key: str, reason: str | None) -> None:
    assert unsafe_key(key) == reason


def test_stores_refuse_keys_that_leave_their_location(tmp_path: Path) -> None:
    outside = tmp_path / "secret.txt"
    outside.write_text("not yours")
    store = open_store(str(tmp_path / "set"))
    for key in ("../secret.txt", str(outside), "x\x00"):
        with pytest.raises(StorageError, match="only names inside the location"):
            store.read_bytes(key)
        with pytest.raises(StorageError, match="only names inside the location"):
            store.put_bytes(key, b"overwritten")
    assert outside.read_text() == "not yours"
    assert not (tmp_path / "set").exists()
    # S3: refused before any request (this client would raise AttributeError on first use).
    s3 = S3Store(parse_uri("s3://bucket/prefix"), client=object())
    with pytest.raises(StorageError, match=r"s3://bucket/prefix: '\.\./other/key' climbs out"):
        s3.read_bytes("../other/key")
    assert Location("s3://b/p", "b", "p").join("") == "s3://b/p"


@pytest.fixture
def shard_copy(tiny_shards_local: str, tmp_path: Path) -> Path:
    """A private copy of the tiny shard set, to be damaged."""
    return Path(shutil.copytree(tiny_shards_local, tmp_path / "set"))


def _set_entry(shard_dir: Path, index: int, field: str, value: str) -> None:
    manifest = json.loads((shard_dir / MANIFEST_NAME).read_text())
    manifest["shards"][index][field] = value
    (shard_dir / MANIFEST_NAME).write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("field", "value", "reason"),
    [
        ("name", "../../etc/passwd", "climbs out of its folder"),
        ("name", "/etc/passwd", "is an absolute path"),
        ("index", "../secret.idx", "climbs out of its folder"),
        ("index", "", "is empty"),
        ("name", "shard\x00.tar", "contains a NUL byte"),
        ("name", "shard-000001.idx", "does not end in .tar"),
    ],
)
def test_a_hostile_manifest_is_refused_naming_the_entry(
    shard_copy: Path, tmp_path: Path, field: str, value: str, reason: str
) -> None:
    _set_entry(shard_copy, 1, field, value)
    expected = f"shards[1].{field} {value!r} {reason}"
    with pytest.raises(ShardingError) as refused:
        ShardSet.open(str(shard_copy))
    assert expected in str(refused.value)
    with pytest.raises(ShardingError, match="refusing it"):
        make_loader(LoaderSpec(uri=str(shard_copy), batch_size=4, backend="torch"), 0, 1, torch.device("cpu"))
    result = CliRunner().invoke(app, ["check", str(shard_copy)])
    assert result.exit_code == 2, result.output
    assert expected in " ".join(result.output.split()) and "Traceback" not in result.output


def test_a_manifest_pointing_next_door_reads_nothing_there(shard_copy: Path, tmp_path: Path) -> None:
    # A well-formed tar outside the set: an unchecked reader would train on it.
    shutil.copy(shard_copy / "shard-000000.tar", tmp_path / "elsewhere.tar")
    _set_entry(shard_copy, 0, "name", "../elsewhere.tar")
    with pytest.raises(ShardingError, match=r"shards\[0\]\.name '\.\./elsewhere\.tar' climbs out"):
        read_manifest(str(shard_copy))


def _append_member(tar_path: Path, name: str) -> None:
    """Append a member after the existing ones (their offsets, and so the index, stay valid)."""
    data = b"owned"
    info = tarfile.TarInfo(name)
    info.size = len(data)
    with tarfile.open(tar_path, "a", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(data))


@pytest.mark.parametrize("member", ["../../.bashrc", "/etc/cron.d/evil"])
def test_a_tar_member_that_escapes_is_refused_when_checked_or_read(shard_copy: Path, member: str) -> None:
    tar_path = shard_copy / "shard-000001.tar"
    _append_member(tar_path, member)
    result = CliRunner().invoke(app, ["check", str(shard_copy)])
    assert result.exit_code == 2, result.output
    assert f"shard-000001.tar: tar member {member!r}" in " ".join(result.output.split())

    loader = make_loader(
        LoaderSpec(uri=str(shard_copy), batch_size=4, backend="torch", shuffle=False), 0, 1, torch.device("cpu")
    )
    with pytest.raises(UnsafeName, match=f"shard-000001.tar: tar member {member!r}"):
        list(loader)


def _tar(*members: tarfile.TarInfo) -> io.BytesIO:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for info in members:
            tar.addfile(info, io.BytesIO(b"1" * info.size))
    return io.BytesIO(buffer.getvalue())


def test_tar_links_are_refused_and_plain_members_counted() -> None:
    plain = [tarfile.TarInfo(name) for name in ("a.jpg", "a.cls")]
    for info in plain:
        info.size = 1
    assert check_tar_members(_tar(*plain), "ok.tar") == 2
    link = tarfile.TarInfo("b.jpg")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    with pytest.raises(UnsafeName, match=r"x\.tar: tar member 'b\.jpg' is not a regular file"):
        check_tar_members(_tar(*plain, link), "x.tar")


def test_an_index_naming_an_escaping_member_is_refused(shard_copy: Path) -> None:
    index = shard_copy / "shard-000000.idx"
    lines = index.read_text().splitlines()
    key = lines[1].split()[3].removesuffix(".jpg")
    lines[1] = lines[1].replace(f"{key}.jpg", "../../x.jpg")
    index.write_text("\n".join(lines) + "\n")
    with pytest.raises(UnsafeName, match=r"shard-000000\.idx, line 2: member '\.\./\.\./x\.jpg' climbs out"):
        parse_index(index.read_text(), str(index))
    result = CliRunner().invoke(app, ["check", str(shard_copy)])
    assert result.exit_code == 2 and "line 2: member '../../x.jpg'" in " ".join(result.output.split())


@pytest.mark.parametrize(("name", "reason"), [("../../etc/passwd", "climbs out"), ("/etc/passwd", "is an absolute")])
def test_a_labels_file_naming_a_file_elsewhere_is_refused(
    tiny_images_dir: Path, tmp_path: Path, name: str, reason: str
) -> None:
    src = tmp_path / "flat"
    src.mkdir()
    first = sorted(tiny_images_dir.glob("*.JPEG"))[0]
    shutil.copy(first, src / first.name)
    (src / "labels.tsv").write_text(f"file\twnid\n{first.name}\tn0\n{name}\tn1\n")
    with pytest.raises(ShardingError, match=f"labels.tsv, line 3: file {name!r} {reason}"):
        discover_source(src)
    assert not (tmp_path / "out").exists()


def test_a_symlink_out_of_the_source_tree_is_refused(tiny_images_dir: Path, tmp_path: Path) -> None:
    images = sorted(tiny_images_dir.glob("*.JPEG"))
    src, outside = tmp_path / "src", tmp_path / "outside"
    (src / "n0").mkdir(parents=True)
    outside.mkdir()
    shutil.copy(images[0], src / "n0" / "a.JPEG")
    shutil.copy(images[1], outside / "private.JPEG")  # decodable: only the check keeps it out of the shards
    (src / "n0" / "inside.JPEG").symlink_to(src / "n0" / "a.JPEG")  # a link within the tree is fine
    assert len(discover_source(src).samples) == 2

    (src / "n0" / "z.JPEG").symlink_to(outside / "private.JPEG")
    with pytest.raises(ShardingError, match=r"n0/z\.JPEG leads to .*outside/private\.JPEG, outside SRC"):
        shard_dataset(src, str(tmp_path / "out"))
    (src / "n0" / "z.JPEG").unlink()
    (src / "n1").symlink_to(outside, target_is_directory=True)  # a whole class folder elsewhere
    with pytest.raises(ShardingError, match=r"n1/private\.JPEG leads to .*outside SRC"):
        shard_dataset(src, str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()
