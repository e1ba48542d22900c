"""MLflow tracking against a real sqlite store: runs found again (no duplicates), params, registry, champion, pull."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from models import get_model
from orchestrator.sweep.config import TrialConfig, parse_sweep
from orchestrator.sweep.state import Champion
from orchestrator.sweep.tracking import (
    CHAMPION,
    TAG_ATTEMPTS,
    TAG_PARENT,
    Tracker,
    filter_literal,
    flatten,
    log_trial_model,
    mark_killed,
    numeric_metrics,
    pull_model,
)

SWEEP = {
    "name": "track",
    "grid": {"residual": [True, False]},
    "model": {"arch": "test_resnet", "num_classes": 10},
    "recipe": {"image_size": 32, "resize_size": 36, "batch_size": 4},
    "data": {"train": "/shards"},
}


def test_flatten_and_numeric_metrics() -> None:
    assert flatten({"model": {"depth": 18, "shortcut": "B"}, "recipe": {"milestones": [30, 60]}, "seed": 0}) == {
        "model.depth": "18",
        "model.shortcut": "B",
        "recipe.milestones": "[30, 60]",
        "seed": "0",
    }
    assert numeric_metrics({"a": 1, "b": float("nan"), "c": "x", "d": True, "e": 0.5}) == {"a": 1.0, "e": 0.5}


@pytest.fixture
def tracker(tmp_path: Path) -> Tracker:
    return Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", "track", tmp_path / "artifacts")


def _sweep_runs(tracker: Tracker, tmp_path: Path) -> tuple[Path, list[TrialConfig], str, list[str]]:
    """(sweep file, trials, parent run id, child run ids) of sweep `track-1`, as its driver creates them."""
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("name: track\n", encoding="utf-8")
    trials = parse_sweep(SWEEP).expand(storage_root=str(tmp_path / "storage"))
    parent = tracker.parent_run("track-1", sweep_file)
    return sweep_file, trials, parent, [tracker.child_run(parent, "track-1", t) for t in trials]


def test_runs_are_found_again_not_duplicated(tracker: Tracker, tmp_path: Path) -> None:
    sweep_file, trials, parent, children = _sweep_runs(tracker, tmp_path)
    # A restarted trial, a resumed driver: the same runs come back.
    assert tracker.parent_run("track-1", sweep_file) == parent
    assert [tracker.child_run(parent, "track-1", t) for t in trials] == children
    runs = tracker.client.search_runs([tracker.experiment_id])
    assert len(runs) == 3
    child = tracker.client.get_run(children[1])
    assert child.data.tags[TAG_PARENT] == parent
    assert child.data.params["model.residual"] == "False"
    assert child.data.params["recipe.image_size"] == "32"
    tracker.log_metrics(children[0], {"val_top1_err": 0.5, "train_top1_err": 0.6, "lr": float("nan")}, step=10)
    tracker.log_metrics(children[0], {"val_top1_err": 0.4, "train_top1_err": 0.5}, step=20)
    tracker.set_attempts(children[0], 2)
    assert tracker.trial_curves(children[0]) == {
        "train_top1_err": [(10, 0.6), (20, 0.5)],
        "val_top1_err": [(10, 0.5), (20, 0.4)],
    }
    assert tracker.client.get_run(children[0]).data.tags[TAG_ATTEMPTS] == "2"
    mark_killed(tracker.tracking_uri, [children[1]])  # `resnet-orch cancel`
    assert tracker.client.get_run(children[1]).info.status == "KILLED"
    tracker.log_curves(
        parent, {t.trial_id: tracker.trial_curves(c) for t, c in zip(trials, children, strict=True)}, "f4.png"
    )
    assert [a.path for a in tracker.client.list_artifacts(parent, "curves")] == ["curves/f4.png"]


def test_registry_champion_and_pull(tracker: Tracker, tmp_path: Path) -> None:
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("name: track\n", encoding="utf-8")
    trials = parse_sweep(SWEEP).expand(storage_root=str(tmp_path / "storage"))
    parent = tracker.parent_run("track-1", sweep_file)
    errors = {trials[0].trial_id: 0.30, trials[1].trial_id: 0.20}
    models: dict[str, torch.nn.Module] = {}
    for trial in trials:
        run_id = tracker.child_run(parent, "track-1", trial)
        torch.manual_seed(len(models))
        model = get_model("test_resnet", residual=trial.model.residual, num_classes=10)
        tags = {"resnet_orch.sweep_id": "track-1", "val_top1_err": str(errors[trial.trial_id])}
        version = log_trial_model(
            tracker, run_id, model, image_size=32, registered_model="track-model", version_tags=tags
        )
        # Registering the same run again (a re-run trial driver) returns the existing version.
        assert (
            log_trial_model(tracker, run_id, model, image_size=32, registered_model="track-model", version_tags=tags)
            == version
        )
        models[version] = model
    assert sorted(models) == ["1", "2"]
    assert tracker.crown_champion("track-model", "track-1") == Champion(
        model="track-model", version="2", val_top1_err=0.20, sweep_id="track-1"
    )
    assert str(tracker.client.get_model_version_by_alias("track-model", CHAMPION).version) == "2"

    pulled = pull_model(tracker.tracking_uri, f"track-model@{CHAMPION}")
    images = torch.randn(5, 3, 32, 32)  # a batch size other than the logged example's
    with torch.no_grad():
        torch.testing.assert_close(pulled(images), models["2"].eval()(images))


def test_resume_settles_trials_whose_model_is_registered(tracker: Tracker, tmp_path: Path) -> None:
    from orchestrator.sweep.recovery import settle_registered
    from orchestrator.sweep.state import SweepProgress, TrialState, TrialStatus

    _, trials, _, run_ids = _sweep_runs(tracker, tmp_path)
    # Trial 0 registered its model, then a cancel that raced with it marked it CANCELLED and its run KILLED.
    mark_killed(tracker.tracking_uri, run_ids[:1])
    tracker.client.create_registered_model("track-model")
    tracker.client.create_model_version("track-model", str(tmp_path / "model"), run_id=run_ids[0])
    progress = SweepProgress(
        sweep="track-1",
        trials=[
            TrialStatus(id=t.trial_id, config={}, state=TrialState.CANCELLED, mlflow_run_id=r)
            for t, r in zip(trials, run_ids, strict=True)
        ],
    )
    progress.requeue_unfinished()

    assert settle_registered(tracker, "track-model", progress) == [trials[0].trial_id]
    assert [t.state for t in progress.trials] == [TrialState.SUCCEEDED, TrialState.PENDING]
    assert tracker.client.get_run(run_ids[0]).info.status == "FINISHED"


def _register(tracker: Tracker, name: str, sweep_id: str, val_top1_err: float, tmp_path: Path) -> str:
    """A version of `name` from sweep `sweep_id` carrying its metric tag, as `trial_trainable` registers it."""
    if not tracker.client.search_registered_models(f"name = {filter_literal(name)}"):
        tracker.client.create_registered_model(name)
    tags = {"resnet_orch.sweep_id": sweep_id, "val_top1_err": str(val_top1_err)}
    return str(tracker.client.create_model_version(name, str(tmp_path / "model"), tags=tags).version)


@pytest.mark.parametrize("name", ["track-model", "Bob's model"])
def test_the_champion_moves_only_to_a_strictly_better_version_across_sweeps(
    tracker: Tracker, tmp_path: Path, name: str
) -> None:
    assert tracker.crown_champion(name, "sweep-1") is None  # nothing registered yet
    for err in (0.30, 0.20, 0.20):
        _register(tracker, name, "sweep-1", err, tmp_path)
    first = tracker.crown_champion(name, "sweep-1")
    # The lowest error; of two equal ones, the earlier version.
    assert first == Champion(model=name, version="2", val_top1_err=0.20, sweep_id="sweep-1")

    # A later sweep under the same name whose best only ties: the champion stays, and says who challenged it.
    _register(tracker, name, "sweep-2", 0.25, tmp_path)
    _register(tracker, name, "sweep-2", 0.20, tmp_path)
    kept = tracker.crown_champion(name, "sweep-2")
    assert kept == first.model_copy(update={"challenger_version": "5", "challenger_val_top1_err": 0.20})
    assert str(tracker.client.get_model_version_by_alias(name, CHAMPION).version) == "2"

    # A strictly better one takes it, even though an earlier sweep set it.
    _register(tracker, name, "sweep-3", 0.1999, tmp_path)
    assert tracker.crown_champion(name, "sweep-3") == Champion(
        model=name, version="6", val_top1_err=0.1999, sweep_id="sweep-3"
    )
    assert str(tracker.client.get_model_version_by_alias(name, CHAMPION).version) == "6"
    assert tracker.champion(name) == Champion(model=name, version="6", val_top1_err=0.1999, sweep_id="sweep-3")


def test_filter_literal_quotes_a_value_never_lets_it_become_syntax() -> None:
    assert filter_literal("plain") == "'plain'"
    assert filter_literal("it's") == '"it\'s"'
    assert filter_literal('say "hi"') == "'say \"hi\"'"
    for unwritable in ("both ' and \"", "ends in \\"):
        with pytest.raises(ValueError, match="cannot be searched for in MLflow"):
            filter_literal(unwritable)


@pytest.mark.parametrize("quote", ["'", '"'])
def test_names_with_quotes_are_found_as_values(tmp_path: Path, quote: str) -> None:
    # Interpolated unquoted, each of these names broke the filter (MlflowException) or changed what it matched.
    tracker = Tracker(f"sqlite:///{tmp_path / 'mlflow.db'}", f"it{quote}s an experiment", tmp_path / "artifacts")
    sweep_id, model_name = f"sweep{quote} and tags.x = {quote}", f"it{quote}s {quote}model"
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text("name: track\n", encoding="utf-8")
    (trial,) = parse_sweep({**SWEEP, "grid": {}}).expand(storage_root=str(tmp_path / "storage"))
    trial = trial.model_copy(update={"trial_id": f"000{quote}trial"})
    parent = tracker.parent_run(sweep_id, sweep_file)
    child = tracker.child_run(parent, sweep_id, trial)
    assert tracker.parent_run(sweep_id, sweep_file) == parent  # found again, not duplicated
    assert tracker.child_run(parent, sweep_id, trial) == child
    assert len(tracker.client.search_runs([tracker.experiment_id])) == 2

    for name in (model_name, f"it{quote}s"):  # a model whose name is a prefix of the other must not match it
        tracker.client.create_registered_model(name)
    tracker.client.create_model_version(f"it{quote}s", str(tmp_path / "other"), run_id=child)
    version = tracker.client.create_model_version(model_name, str(tmp_path / "model"), run_id=child)
    tracker.client.set_model_version_tag(model_name, version.version, "resnet_orch.sweep_id", sweep_id)
    tracker.client.set_model_version_tag(model_name, version.version, "val_top1_err", "0.25")
    assert tracker.version_of_run(model_name, child) == "1"
    crowned = tracker.crown_champion(model_name, sweep_id)
    assert crowned is not None and (crowned.version, crowned.val_top1_err) == ("1", 0.25)
    assert str(tracker.client.get_model_version_by_alias(model_name, CHAMPION).version) == "1"
