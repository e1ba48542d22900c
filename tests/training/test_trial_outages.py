"""A trial on real Ray Train whose S3 server goes away mid-run: the server process (a SeaweedFS of this module) is
stopped by its pid once the trial's first checkpoint is in storage, and started again seconds later on the same port
and data. Within the retry bound the checkpoint uploads wait it out; with a bound shorter than the outage they are
skipped and training goes on. Either way the run is never restarted and its per-step losses, learning rates and
samples per epoch equal an uninterrupted run's (the data is local: only the checkpoints' storage is away)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest
from typer.testing import CliRunner

from orchestrator.stack.ray_head import in_process_ray
from orchestrator.stack.seaweedfs import SeaweedFS
from orchestrator.sweep.outage_config import OutageConfig
from orchestrator.training.checkpointing import checkpoint_step
from orchestrator.training.trial import run_trial
from tests.learnable_images import TRAIN_PER_CLASS, VAL_PER_CLASS, write_dataset
from tests.s3_environment import s3_environment
from tests.training.test_trial_ray import EPOCHS, STEPS_PER_EPOCH, TRAIN_SAMPLES, Run, finished, trial

pytestmark = [pytest.mark.slow, pytest.mark.timeout(2400)]

BUCKET = "outage-runs"
OUTAGE_S = 8.0


@pytest.fixture(scope="module")
def own_s3() -> Iterator[SeaweedFS]:
    with SeaweedFS() as server:
        server.create_bucket(BUCKET)
        yield server


@pytest.fixture(scope="module")
def ray_cluster(own_s3: SeaweedFS) -> Iterator[None]:
    with s3_environment(own_s3), in_process_ray(num_cpus=4):
        yield


@pytest.fixture(scope="module")
def local_data(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, str]:
    from orchestrator.cli import app

    root = write_dataset(tmp_path_factory.mktemp("learnable"), TRAIN_PER_CLASS, VAL_PER_CLASS)
    dest = tmp_path_factory.mktemp("learnable-shards") / "set"
    done = CliRunner().invoke(app, ["data", "shard", str(root), str(dest), "--shard-size", "200KB", "--json"])
    assert done.exit_code == 0, done.output
    return f"{dest}/train", f"{dest}/val"


@pytest.fixture(scope="module")
def storage() -> str:
    return f"s3://{BUCKET}/runs/{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def reference(ray_cluster: None, local_data: tuple[str, str], storage: str) -> Run:
    return finished(run_trial(trial("reference", local_data, storage)))


@dataclass
class Outage:
    """Stops `server` once `prefix` holds a checkpoint, starts it again `seconds` later; records when."""

    server: SeaweedFS
    prefix: str
    seconds: float
    stopped_at: float = 0.0
    back_at: float = 0.0
    error: list[BaseException] = field(default_factory=list)

    def run(self) -> None:
        try:
            client = self.server.client()
            deadline = time.monotonic() + 1200
            while time.monotonic() < deadline:
                listing = client.list_objects_v2(Bucket=BUCKET, Prefix=self.prefix)
                if any(o["Key"].endswith("manifest.json") for o in listing.get("Contents", [])):
                    break
                time.sleep(0.05)
            self.server.interrupt()
            self.stopped_at = time.time()
            time.sleep(self.seconds)
            self.server.start()
            self.back_at = time.time()
        except BaseException as exc:  # reported by the test
            self.error.append(exc)


def run_through_outage(name: str, data: tuple[str, str], storage: str, server: SeaweedFS, retry_s: float) -> Run:
    key_prefix = storage.removeprefix(f"s3://{BUCKET}/") + f"/{name}/checkpoint-step"
    outage = Outage(server, key_prefix, OUTAGE_S)
    thread = threading.Thread(target=outage.run, daemon=True)
    thread.start()
    result = run_trial(trial(name, data, storage, outages=OutageConfig(retry_s=retry_s)))
    thread.join(timeout=600)
    assert not outage.error, outage.error
    assert outage.stopped_at > 0 and outage.back_at > outage.stopped_at
    # The outage fell inside the run: some of its checkpoints were in storage before the server stopped, the rest
    # (the final one among them) reached it after the server was back.
    uploaded = _manifest_times(server, key_prefix)
    assert any(t < outage.stopped_at for t in uploaded.values()), (uploaded, outage)
    assert uploaded[max(uploaded)] > outage.back_at, (uploaded, outage)
    return finished(result)


def _manifest_times(server: SeaweedFS, prefix: str) -> dict[int, float]:
    """Checkpoint step -> when its manifest (written last) reached the server (unix seconds)."""
    listing = server.client().list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return {
        checkpoint_step(o["Key"].rsplit("/", 1)[0]): o["LastModified"].timestamp()
        for o in listing.get("Contents", [])
        if o["Key"].endswith("/manifest.json")
    }


def _steps(run: Run) -> list[int]:
    return sorted(checkpoint_step(uri) for uri, _ in run.result.checkpoints)


def _assert_same_training(run: Run, reference: Run) -> None:
    assert run.result.attempts == 1  # never restarted: the outage did not kill a worker
    assert run.losses == pytest.approx(reference.losses, abs=1e-4)
    assert run.lrs == pytest.approx(reference.lrs, rel=1e-9)
    assert run.epoch_sizes == reference.epoch_sizes == [TRAIN_SAMPLES] * EPOCHS
    assert len(run.losses) == EPOCHS * STEPS_PER_EPOCH


def test_uploads_wait_out_an_outage_within_the_bound(
    reference: Run, local_data: tuple[str, str], storage: str, own_s3: SeaweedFS
) -> None:
    run = run_through_outage("waits", local_data, storage, own_s3, retry_s=300)
    _assert_same_training(run, reference)
    assert _steps(run) == _steps(reference)  # no checkpoint skipped


def test_uploads_past_the_bound_are_skipped_and_training_goes_on(
    reference: Run, local_data: tuple[str, str], storage: str, own_s3: SeaweedFS
) -> None:
    run = run_through_outage("skips", local_data, storage, own_s3, retry_s=1)
    _assert_same_training(run, reference)
    skipped = set(_steps(reference)) - set(_steps(run))
    assert skipped, "no checkpoint fell into the outage"
    assert set(_steps(run)) < set(_steps(reference))
    # The final checkpoint is complete and carries the whole run (checked above through `finished`).
    assert max(_steps(run)) == EPOCHS * STEPS_PER_EPOCH
