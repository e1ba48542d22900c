"""infra/aws/cluster.yaml through Ray's own cluster-launcher checks: `prepare_config` (defaults merged
as `ray up` does) then `validate_config` against Ray's `ray-schema.json`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from ray.autoscaler._private.util import prepare_config, validate_config

from orchestrator.stack.ray_head import TRIAL_DRIVER_RESOURCE

CLUSTER_YAML = Path(__file__).resolve().parents[2] / "infra" / "aws" / "cluster.yaml"


def _raw() -> dict[str, Any]:
    config: dict[str, Any] = yaml.safe_load(CLUSTER_YAML.read_text())
    return config


def _prepared(raw: dict[str, Any]) -> dict[str, Any]:
    config = prepare_config(raw)
    validate_config(config)
    return config


def test_cluster_yaml_passes_rays_validation() -> None:
    config = _prepared(_raw())
    assert config["provider"]["type"] == "aws"
    assert config["head_node_type"] == "head"


def test_ray_rejects_an_unknown_field() -> None:
    raw = _raw()
    raw["available_node_types"]["gpu_p4d_spot"]["max_worker"] = 8  # typo of max_workers
    with pytest.raises(jsonschema.ValidationError, match="max_worker"):
        _prepared(raw)


def test_gpu_capacity_is_64_gpus_of_one_kind() -> None:
    config = _prepared(_raw())
    node_types = config["available_node_types"]
    enabled = {name: t for name, t in node_types.items() if t["max_workers"] > 0 and t["resources"].get("GPU")}
    # One GPU type at a time: a DDP group spanning A100 and H100 nodes runs at the slower one's pace.
    assert list(enabled) == ["gpu_p4d_spot"]
    (gpu,) = enabled.values()
    assert gpu["min_workers"] == 0
    assert gpu["max_workers"] * gpu["resources"]["GPU"] == 64
    assert config["max_workers"] >= gpu["max_workers"]


def test_spot_workers_and_instance_profiles() -> None:
    node_types = _prepared(_raw())["available_node_types"]
    assert node_types["gpu_p4d_spot"]["node_config"]["InstanceMarketOptions"]["MarketType"] == "spot"
    for name, node_type in node_types.items():
        assert "instance-profile/" in node_type["node_config"]["IamInstanceProfile"]["Arn"], name
    text = CLUSTER_YAML.read_text()
    assert "AWS_SECRET_ACCESS_KEY" not in text and "aws_secret_access_key" not in text


def test_head_hosts_trial_drivers_not_training() -> None:
    head = _prepared(_raw())["available_node_types"]["head"]
    assert head["resources"]["CPU"] == 0 and "GPU" not in head["resources"]
    assert head["resources"][TRIAL_DRIVER_RESOURCE] >= 64


def test_every_worker_runs_the_spot_interruption_watcher() -> None:
    config = _prepared(_raw())
    root = CLUSTER_YAML.parents[2]
    source = config["file_mounts"]["~/spot-watch.sh"]
    assert (root / source).is_file(), source  # `ray up` runs from the repository root
    started = [c for c in config["worker_start_ray_commands"] if "spot-watch.sh" in c]
    assert started == ['nohup bash ~/spot-watch.sh "$RAY_HEAD_IP:6379" > /tmp/spot-watch.log 2>&1 &']
    # After `ray start`: the drain needs this node registered with the GCS.
    assert config["worker_start_ray_commands"].index(started[0]) > next(
        i for i, c in enumerate(config["worker_start_ray_commands"]) if "ray start" in c
    )
