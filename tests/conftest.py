"""Shared fixtures: a real S3 server, sample images, and shard sets of them (sharded once per session).

Session-scoped (started once, cleaned up at the end):

* `s3_server` -> `orchestrator.stack.seaweedfs.SeaweedFS`: `weed mini` on 127.0.0.1, free ports. While it runs
  the process environment holds AWS_ENDPOINT_URL / AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY /
  AWS_REGION pointing at it (restored afterwards), so boto3, DALI and Ray workers started later find it.
  Use `.endpoint_url`, `.client()`, `.create_bucket(name)`, `.aws_env()`.
* `s3_bucket` -> str: a bucket created on `s3_server` (`S3_TEST_BUCKET`).
* `sample_images_dir` -> Path: a flat folder of JPEGs + `labels.tsv` (columns file, wnid, class_index,
  name): `../shared/data/imagenet-sample` (1,000 real ImageNet images, one per class) where present,
  else `GENERATED_CLASSES` classes x `GENERATED_PER_CLASS` JPEGs generated with PIL (some grayscale).
* `sample_labels` -> dict[str, int]: file name -> class index, read from that labels.tsv.
* `sample_shards_local` -> str: `sample_images_dir` sharded to a local folder (several shards).
* `sample_shards_s3` -> str: the same sharded to `s3://S3_TEST_BUCKET/imagenet-sample`.
* `tiny_images_dir` -> Path: always generated, `TINY_CLASSES` classes x `TINY_PER_CLASS` small JPEGs +
  labels.tsv (seconds to decode on any backend); `tiny_shards_local` -> str: it sharded, 3+ shards;
  `tiny_shards_s3` -> str: the same in `s3_bucket`.
* `learnable_shards_s3` -> (train URI, val URI): the ten texture classes of `tests/learnable_images.py` (a net
  learns them in a few epochs; train and val images apart), written by `resnet-orch data shard` to S3.
* `cifar_archive` -> Path: a small `cifar-10-python.tar.gz` in the real format (`write_cifar_archive`): five
  training batches of `CIFAR_PER_BATCH` images and a test batch of `CIFAR_TEST`, random pixels and labels.

Function-scoped: `home` -> Path: a private, empty RESNET_ORCH_HOME (and no MLFLOW_TRACKING_URI from the
environment), so sweeps land in the embedded store under it. Autouse: `_restore_rng` puts the `random`, numpy and
torch global RNG states back after every test. Tests marked `gpu` are skipped where CUDA is absent.
"""

from __future__ import annotations

import csv
import os

# Ray 2.60's token auth stays on in every test: set before anything imports Ray, so a test that monkeypatches the
# variable and restores it afterwards cannot leave later tests' clients and clusters in different auth modes.
os.environ["RAY_AUTH_MODE"] = "token"
import random
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from orchestrator.stack.seaweedfs import SeaweedFS
from tests.s3_environment import s3_environment

REPO_ROOT = Path(__file__).resolve().parent.parent
SHARED_SAMPLE = REPO_ROOT.parent / "shared" / "data" / "imagenet-sample"
S3_TEST_BUCKET = "resnet-orch-test"
# The shared sample's shape (one image for each of ImageNet's 1,000 classes), so tests that count samples, steps
# and shards hold on a clone without it.
GENERATED_CLASSES = 1000
GENERATED_PER_CLASS = 1
TINY_CLASSES = 8
TINY_PER_CLASS = 6
# The sample is cut into about this many shards: enough to exercise shard order and multi-shard reading.
SAMPLE_SHARDS = 4
CIFAR_PER_BATCH = 40
CIFAR_TEST = 60


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if not any(item.get_closest_marker("gpu") for item in items):
        return
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU; none is present")
    for item in items:
        if item.get_closest_marker("gpu"):
            item.add_marker(skip)


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("RESNET_ORCH_HOME", str(tmp_path / "home"))
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    return tmp_path / "home"


@pytest.fixture(autouse=True)
def _restore_rng() -> Iterator[None]:
    py_state = random.getstate()
    np_state = np.random.get_state()
    torch = sys.modules.get("torch")
    torch_state = torch.random.get_rng_state() if torch is not None else None
    yield
    random.setstate(py_state)
    np.random.set_state(np_state)
    if torch is not None and torch_state is not None:
        torch.random.set_rng_state(torch_state)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[SeaweedFS]:
    with SeaweedFS() as server, s3_environment(server):
        yield server


@pytest.fixture(scope="session")
def s3_bucket(s3_server: SeaweedFS) -> str:
    return s3_server.create_bucket(S3_TEST_BUCKET)


def generate_sample_images(
    root: Path, classes: int = GENERATED_CLASSES, per_class: int = GENERATED_PER_CLASS, max_side: int = 400
) -> Path:
    """Real JPEGs (random smooth colour fields, varied sizes; every 8th grayscale) + labels.tsv."""
    from PIL import Image

    rng = np.random.default_rng(0)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    for c in range(classes):
        wnid = f"n{c:08d}"
        for i in range(per_class):
            h, w = (int(v) for v in rng.integers(64, max_side, size=2))
            small = rng.integers(0, 256, size=(8, 8, 3), dtype=np.uint8)
            img = Image.fromarray(small).resize((w, h), Image.Resampling.BILINEAR)
            if (c * per_class + i) % 8 == 0:
                img = img.convert("L")
            name = f"{wnid}_{i}.JPEG"
            img.save(root / name, format="JPEG", quality=90)
            rows.append((name, wnid, c, f"class{c}"))
    with open(root / "labels.tsv", "w", newline="") as f:
        writer = csv.writer(f, dialect="excel-tab")
        writer.writerow(("file", "wnid", "class_index", "name"))
        writer.writerows(rows)
    return root


@pytest.fixture(scope="session")
def sample_images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if (SHARED_SAMPLE / "labels.tsv").is_file():
        return SHARED_SAMPLE
    return generate_sample_images(tmp_path_factory.mktemp("imagenet-sample"))


def _sample_shard_bytes(images: Path) -> int:
    """A shard size that cuts `images` (110 MB when it is the shared sample) into about `SAMPLE_SHARDS` shards."""
    return sum(path.stat().st_size for path in images.iterdir()) // SAMPLE_SHARDS + 1


@pytest.fixture(scope="session")
def sample_labels(sample_images_dir: Path) -> dict[str, int]:
    with open(sample_images_dir / "labels.tsv", newline="") as f:
        return {row["file"]: int(row["class_index"]) for row in csv.DictReader(f, dialect="excel-tab")}


@pytest.fixture(scope="session")
def sample_shards_local(sample_images_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    from pipelines.sharding import shard_dataset

    dest = tmp_path_factory.mktemp("shards") / "imagenet-sample"
    shard_dataset(sample_images_dir, str(dest), shard_bytes=_sample_shard_bytes(sample_images_dir))
    return str(dest)


@pytest.fixture(scope="session")
def sample_shards_s3(sample_images_dir: Path, s3_bucket: str) -> str:
    from pipelines.sharding import shard_dataset

    uri = f"s3://{s3_bucket}/imagenet-sample"
    shard_dataset(sample_images_dir, uri, shard_bytes=_sample_shard_bytes(sample_images_dir))
    return uri


@pytest.fixture(scope="session")
def tiny_images_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return generate_sample_images(tmp_path_factory.mktemp("tiny-images"), TINY_CLASSES, TINY_PER_CLASS, max_side=160)


@pytest.fixture(scope="session")
def tiny_shards_local(tiny_images_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> str:
    from pipelines.sharding import shard_dataset

    dest = tmp_path_factory.mktemp("tiny-shards") / "tiny"
    shard_dataset(tiny_images_dir, str(dest), shard_bytes=60_000)
    return str(dest)


@pytest.fixture(scope="session")
def tiny_shards_s3(tiny_images_dir: Path, s3_bucket: str) -> str:
    from pipelines.sharding import shard_dataset

    uri = f"s3://{s3_bucket}/tiny"
    shard_dataset(tiny_images_dir, uri, shard_bytes=60_000)
    return uri


@pytest.fixture(scope="session")
def learnable_shards_s3(tmp_path_factory: pytest.TempPathFactory, s3_bucket: str) -> tuple[str, str]:
    from typer.testing import CliRunner

    from orchestrator.cli import app
    from tests.learnable_images import TRAIN_PER_CLASS, VAL_PER_CLASS, write_dataset

    root = write_dataset(tmp_path_factory.mktemp("learnable"), TRAIN_PER_CLASS, VAL_PER_CLASS)
    uri = f"s3://{s3_bucket}/learnable"
    done = CliRunner().invoke(app, ["data", "shard", str(root), uri, "--shard-size", "200KB", "--json"])
    assert done.exit_code == 0, done.output
    return f"{uri}/train", f"{uri}/val"


def write_cifar_archive(path: Path, per_batch: int = CIFAR_PER_BATCH, test: int = CIFAR_TEST, seed: int = 0) -> Path:
    """`cifar-10-python.tar.gz` as published: `cifar-10-batches-py/{data_batch_1..5, test_batch, batches.meta}`, each a
    protocol-2 pickle of a dict with bytes keys (b"data": uint8 N x 3072 of R, G, B row-major planes, b"labels": list
    of ints), its arrays naming `numpy.core.multiarray` as the Python 2 pickles do."""
    import io
    import pickle
    import tarfile

    from pipelines.cifar import CLASSES

    rng = np.random.default_rng(seed)
    files: dict[str, object] = {}
    for i in range(1, 6):
        files[f"data_batch_{i}"] = {
            b"batch_label": f"training batch {i} of 5".encode(),
            b"labels": [int(v) for v in rng.integers(0, 10, per_batch)],
            b"data": rng.integers(0, 256, size=(per_batch, 3072), dtype=np.uint8),
            b"filenames": [f"img_{i}_{k}.png".encode() for k in range(per_batch)],
        }
    files["test_batch"] = {
        b"batch_label": b"testing batch 1 of 1",
        b"labels": [int(v) for v in rng.integers(0, 10, test)],
        b"data": rng.integers(0, 256, size=(test, 3072), dtype=np.uint8),
    }
    files["batches.meta"] = {b"label_names": [n.encode() for n in CLASSES], b"num_vis": 3072}
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for name, content in files.items():
            data = pickle.dumps(content, protocol=2).replace(b"numpy._core.multiarray", b"numpy.core.multiarray")
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


@pytest.fixture(scope="session")
def cifar_archive(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cifar_archive(tmp_path_factory.mktemp("cifar") / "cifar-10-python.tar.gz")
