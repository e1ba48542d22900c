"""infra/k8s/*.yaml validated by schema validators, not by eye.

* Kubernetes kinds (Deployment, Service, ConfigMap, ...): `kubernetes-validate` against the Kubernetes
  OpenAPI schemas it ships, strict (unknown fields are errors).
* RayCluster and RayJob: `jsonschema` against a strict schema of KubeRay's ray.io/v1 API
  (tests/infra/kuberay_schema.py) whose embedded Kubernetes types (pod templates, resources, env, ...) are the
  same strict Kubernetes definitions, plus the worker-group rules KubeRay's operator enforces; and the
  RayCluster through Ray's own KubeRay reader, which turns it into an autoscaler config and checks that with
  Ray's `ray-schema.json` (what the in-cluster autoscaler does at start).
* RayJob: its cluster selector, entrypoint and sweep file resolve against the other manifests, and the
  sweep it submits passes `load_sweep`.
"""

from __future__ import annotations

import copy
import re
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml
from ray.autoscaler._private.kuberay.autoscaling_config import _derive_autoscaling_config_from_ray_cr

from orchestrator.stack.ray_head import TRIAL_DRIVER_RESOURCE
from orchestrator.sweep.config import load_sweep
from tests.infra.kuberay_schema import K8S_VERSION, validate_kuberay

K8S_DIR = Path(__file__).resolve().parents[2] / "infra" / "k8s"


def _documents() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in sorted(K8S_DIR.glob("*.yaml")):
        docs.extend(doc for doc in yaml.safe_load_all(path.read_text()) if doc)
    return docs


DOCS = _documents()


def _one(kind: str) -> dict[str, Any]:
    (doc,) = [d for d in DOCS if d["kind"] == kind]
    return doc


def _pod_templates(ray_cluster: dict[str, Any]) -> list[dict[str, Any]]:
    spec = ray_cluster["spec"]
    return [spec["headGroupSpec"]["template"], *(g["template"] for g in spec["workerGroupSpecs"])]


@pytest.mark.parametrize("doc", [d for d in DOCS if not d["apiVersion"].startswith("ray.io/")], ids=lambda d: d["kind"])
def test_kubernetes_kinds_match_the_kubernetes_schema(doc: dict[str, Any]) -> None:
    assert kubernetes_validate.validate(doc, K8S_VERSION, strict=True) == K8S_VERSION


@pytest.mark.parametrize("doc", [d for d in DOCS if d["apiVersion"].startswith("ray.io/")], ids=lambda d: d["kind"])
def test_kuberay_kinds_match_the_kuberay_schema(doc: dict[str, Any]) -> None:
    validate_kuberay(doc)


def _broken_cluster(path: str, break_it: Any) -> dict[str, Any]:
    cluster = copy.deepcopy(_one("RayCluster"))
    *parents, key = path.split(".")
    node: Any = cluster
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    break_it(node, key)
    return cluster


def _rename(node: dict[str, Any], key: str, new_key: str) -> None:
    node[new_key] = node.pop(key)


# Each would be accepted by `kubectl apply` against the real CRD, which prunes unknown fields silently, and the
# cluster would come up wrong: no GPU workers, no autoscaling bound, a pod without its resource limits.
@pytest.mark.parametrize(
    ("path", "break_it", "message"),
    [
        ("spec.workerGroupSpecs", lambda n, k: _rename(n, k, "workerGroupSpec"), "workerGroupSpec"),
        ("spec.workerGroupSpecs.0.maxReplicas", lambda n, k: _rename(n, k, "maxReplica"), "maxReplica"),
        ("spec.workerGroupSpecs.0.maxReplicas", lambda n, k: n.update({k: "8"}), "'8' is not of type 'integer'"),
        ("spec.autoscalerOptions.upscalingMode", lambda n, k: n.update({k: "Fast"}), "'Fast' is not one of"),
        ("spec.authOptions.mode", lambda n, k: n.update({k: "tokens"}), "'tokens' is not one of"),
        ("spec.workerGroupSpecs.0.minReplicas", lambda n, k: n.update({k: 9}), "minReplicas 9 > maxReplicas 8"),
        ("spec.workerGroupSpecs.0.replicas", lambda n, k: n.update({k: 12}), "replicas 12 is outside"),
        (
            "spec.workerGroupSpecs.0.template.spec.containers.0.resources",
            lambda n, k: _rename(n, k, "resource"),
            "'resource' was unexpected",
        ),
        ("spec.headGroupSpec.template.spec.containers.0.image", lambda n, k: n.update({k: 8}), "8 is not of type"),
    ],
    ids=[
        "spec-field",
        "group-field",
        "group-type",
        "autoscaler-enum",
        "auth-enum",
        "min-max",
        "replicas",
        "pod-field",
        "pod-type",
    ],
)
def test_the_kuberay_schema_rejects_a_broken_raycluster(path: str, break_it: Any, message: str) -> None:
    with pytest.raises(jsonschema.ValidationError, match=re.escape(message)):
        validate_kuberay(_broken_cluster(path, break_it))


def test_the_kuberay_schema_rejects_a_rayjob_with_no_cluster() -> None:
    job = copy.deepcopy(_one("RayJob"))
    del job["spec"]["clusterSelector"]
    with pytest.raises(jsonschema.ValidationError, match="is not valid under any of the given schemas"):
        validate_kuberay(job)


def test_ray_reads_the_raycluster_as_a_64_gpu_autoscaling_cluster() -> None:
    config = _derive_autoscaling_config_from_ray_cr(_one("RayCluster"))  # raises on an invalid config
    head, workers = config["available_node_types"]["headgroup"], config["available_node_types"]["gpu-p4d"]
    # The head trains nothing and hosts the trial drivers on the custom resource `submit` asks for.
    assert head["resources"]["CPU"] == 0 and "GPU" not in head["resources"]
    assert head["resources"][TRIAL_DRIVER_RESOURCE] >= 64
    assert workers["resources"]["GPU"] == 8
    assert (workers["min_workers"], workers["max_workers"]) == (0, 8)
    assert workers["max_workers"] * workers["resources"]["GPU"] == 64
    assert config["idle_timeout_minutes"] == 10


def test_gpu_workers_get_a_memory_backed_dev_shm() -> None:
    worker = _pod_templates(_one("RayCluster"))[1]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in worker["containers"][0]["volumeMounts"]}
    volumes = {v["name"]: v for v in worker["volumes"]}
    assert volumes[mounts["/dev/shm"]]["emptyDir"]["medium"] == "Memory"


def test_secrets_are_referenced_never_inlined() -> None:
    assert [d["metadata"]["name"] for d in DOCS if d["kind"] == "Secret"] == []
    secret_like = ("SECRET", "PASSWORD", "TOKEN", "ACCESS_KEY", "BACKEND_STORE_URI")
    containers = [c for t in _pod_templates(_one("RayCluster")) for c in t["spec"]["containers"]]
    containers += _one("Deployment")["spec"]["template"]["spec"]["containers"]
    for container in containers:
        for var in container.get("env", []):
            if any(word in var["name"] for word in secret_like):
                assert "secretKeyRef" in var.get("valueFrom", {}), f"{container['name']}: {var['name']} is inline"
    assert _one("RayCluster")["spec"]["authOptions"] == {"mode": "token", "secretName": "resnet-orch-ray-token"}
    mlflow_env = {v["name"]: v for v in _one("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert mlflow_env["MLFLOW_BACKEND_STORE_URI"]["valueFrom"]["secretKeyRef"]["name"] == "resnet-orch-mlflow-db"


def test_rayjob_submits_a_valid_sweep_into_the_raycluster(tmp_path: Path) -> None:
    job, cluster = _one("RayJob"), _one("RayCluster")
    assert job["spec"]["clusterSelector"] == {"ray.io/cluster": cluster["metadata"]["name"]}
    command, subcommand, sweep_path, *flags = job["spec"]["entrypoint"].split()
    assert (command, subcommand, flags) == ("resnet-orch", "submit", ["--wait"])
    # The sweep file is a key of the ConfigMap that the head pod mounts at that directory.
    head = cluster["spec"]["headGroupSpec"]["template"]["spec"]
    mount = next(m for m in head["containers"][0]["volumeMounts"] if sweep_path.startswith(m["mountPath"] + "/"))
    config_map_name = next(v for v in head["volumes"] if v["name"] == mount["name"])["configMap"]["name"]
    (sweeps,) = [d for d in DOCS if d["kind"] == "ConfigMap" and d["metadata"]["name"] == config_map_name]
    sweep_file = tmp_path / Path(sweep_path).name
    sweep_file.write_text(sweeps["data"][Path(sweep_path).name])
    sweep = load_sweep(sweep_file)
    (trial,) = sweep.expand()
    assert trial.storage.startswith("s3://")  # a multi-node cluster has no shared local disk
    gpus = trial.resources.workers * trial.resources.gpus_per_worker
    assert gpus == 64
    assert trial.recipe.batch_size % trial.resources.workers == 0
    assert sweep.tracking.uri == "http://mlflow.resnet-orch.svc:5000"


def test_mlflow_service_is_the_uri_the_pods_are_given() -> None:
    service, config = _one("Service"), next(d for d in DOCS if d["metadata"]["name"] == "resnet-orch-config")
    port = service["spec"]["ports"][0]["port"]
    url = f"http://{service['metadata']['name']}.{service['metadata']['namespace']}.svc:{port}"
    assert config["data"]["MLFLOW_TRACKING_URI"] == url
    deployment_labels = _one("Deployment")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= deployment_labels.items()


def _all_containers(node: Any) -> list[dict[str, Any]]:
    """Every container of every pod template in a manifest (Deployments, Ray head and worker groups, ...)."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        for key, value in node.items():
            if key in ("containers", "initContainers") and isinstance(value, list):
                found += value
            else:
                found += _all_containers(value)
    elif isinstance(node, list):
        for item in node:
            found += _all_containers(item)
    return found


def test_no_secret_reaches_a_command_line() -> None:
    # Arguments are visible to anyone who can read the pod spec and, expanded, to `ps` in the container; secrets
    # travel as env vars from a Secret (which MLflow and Ray read themselves), never as `$(VAR)` in argv.
    containers = [c for doc in DOCS for c in _all_containers(doc)]
    assert {c["name"] for c in containers} >= {"mlflow", "ray-head"}
    job_entrypoint = _one("RayJob")["spec"]["entrypoint"]
    for name, argv in [(c["name"], [*c.get("command", []), *c.get("args", [])]) for c in containers] + [
        ("rayjob entrypoint", [job_entrypoint])
    ]:
        for arg in argv:
            assert "$(" not in arg and "${" not in arg, f"{name}: {arg!r} expands a variable into the command line"
            assert not any(word in arg.upper() for word in ("PASSWORD", "SECRET", "TOKEN", "STORE_URI")), (
                f"{name}: {arg!r} puts a secret on the command line"
            )


def test_the_mlflow_server_reads_its_store_uri_from_the_secret_env_var() -> None:
    # What lets the Deployment drop `--backend-store-uri` from argv: the installed `mlflow server` takes both
    # options from these variables, and the Deployment sets them from the Secret and the ConfigMap.
    from mlflow.cli import server

    envvars = {param.name: param.envvar for param in server.params}
    assert envvars["backend_store_uri"] == "MLFLOW_BACKEND_STORE_URI"
    assert envvars["artifacts_destination"] == "MLFLOW_ARTIFACTS_DESTINATION"
    env = {v["name"]: v["valueFrom"] for v in _one("Deployment")["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["MLFLOW_BACKEND_STORE_URI"] == {"secretKeyRef": {"name": "resnet-orch-mlflow-db", "key": "uri"}}
    assert "configMapKeyRef" in env["MLFLOW_ARTIFACTS_DESTINATION"]


def test_spot_workers_turn_their_eviction_into_rays_preemption_notice() -> None:
    import re

    worker = _pod_templates(_one("RayCluster"))[1]["spec"]
    assert worker["nodeSelector"]["eks.amazonaws.com/capacityType"] == "SPOT"
    (hook,) = worker["containers"][0]["lifecycle"]["preStop"]["exec"]["command"][2:]
    assert "ray drain-node --reason=DRAIN_NODE_REASON_PREEMPTION" in hook
    deadline = int(re.search(r"--deadline-remaining-seconds=(\d+)", hook).group(1))  # type: ignore[union-attr]
    held = int(re.search(r"sleep (\d+)", hook).group(1))  # type: ignore[union-attr]
    # The pod stays up until the drain's deadline, and Kubernetes lets the hook run that long.
    assert deadline <= held < worker["terminationGracePeriodSeconds"]
