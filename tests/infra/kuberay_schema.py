"""A strict JSON Schema of KubeRay's `ray.io/v1` RayCluster and RayJob, for validating infra/k8s offline.

The KubeRay CRDs' own openAPIV3Schema (0.7 MB for RayCluster) ships in no package this project can install
(PyPI has no KubeRay distribution; the CRDs come with the Helm chart and the Go module), so this schema is
transcribed from the KubeRay v1 API reference (`docs/reference/api.md`, the `ray-operator/apis/ray/v1` Go types,
KubeRay v1.6 for `authOptions`). Only the KubeRay layer is written here: every Kubernetes type the CRD embeds
(PodTemplateSpec, Service, ResourceRequirements, EnvVar, ...) is a `$ref` into the strict Kubernetes OpenAPI
definitions that `kubernetes-validate` ships, so a pod template is checked exactly like a Deployment's.

Unlike the real CRD (which prunes unknown fields silently), every object here refuses fields it does not list:
a misspelled `workerGroupSpec` or `minReplica` would be dropped by the API server without a word, and the cluster
would come up without its GPU workers. A field KubeRay added after v1.6 needs a line here before we use it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
from referencing import Registry, Resource

# The Kubernetes version whose strict definitions the embedded types are checked against (kubernetes-validate).
K8S_VERSION = "1.33"
_K8S_DEFINITIONS_ID = "https://kubernetes.io/api/_definitions.json"

JsonSchema = dict[str, Any]


def _k8s(type_name: str) -> JsonSchema:
    """A reference to a Kubernetes API type, e.g. `core.v1.PodTemplateSpec`."""
    return {"$ref": f"{_K8S_DEFINITIONS_ID}#/$defs/io.k8s.api.{type_name}"}


def _closed(properties: dict[str, JsonSchema], required: tuple[str, ...] = ()) -> JsonSchema:
    return {"type": "object", "properties": properties, "required": list(required), "additionalProperties": False}


_STRING: JsonSchema = {"type": "string"}
_BOOL: JsonSchema = {"type": "boolean"}
_INT32: JsonSchema = {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}
_NUMBER: JsonSchema = {"type": "number", "minimum": 0}
_STRING_MAP: JsonSchema = {"type": "object", "additionalProperties": {"type": "string"}}
_OBJECT_META: JsonSchema = {"$ref": f"{_K8S_DEFINITIONS_ID}#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"}
# RayJob and RayCluster go through the operator's managedBy handshake (KubeRay API reference, RayClusterSpec).
_MANAGED_BY: JsonSchema = {"enum": ["ray.io/kuberay-operator", "kueue.x-k8s.io/multikueue"]}

_AUTOSCALER_OPTIONS = _closed(
    {
        "resources": _k8s("core.v1.ResourceRequirements"),
        "image": _STRING,
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "securityContext": _k8s("core.v1.SecurityContext"),
        "idleTimeoutSeconds": _INT32,
        "upscalingMode": {"enum": ["Default", "Aggressive", "Conservative"]},
        "version": {"enum": ["v1", "v2"]},
        "env": {"type": "array", "items": _k8s("core.v1.EnvVar")},
        "envFrom": {"type": "array", "items": _k8s("core.v1.EnvFromSource")},
        "volumeMounts": {"type": "array", "items": _k8s("core.v1.VolumeMount")},
    }
)

_REDIS_CREDENTIAL = _closed({"valueFrom": _k8s("core.v1.EnvVarSource"), "value": _STRING})

_HEAD_GROUP_SPEC = _closed(
    {
        "template": _k8s("core.v1.PodTemplateSpec"),
        "headService": _k8s("core.v1.Service"),
        "enableIngress": _BOOL,
        "rayStartParams": _STRING_MAP,
        "serviceType": {"enum": ["ClusterIP", "NodePort", "LoadBalancer", "ExternalName"]},
    },
    required=("template",),
)

_WORKER_GROUP_SPEC = _closed(
    {
        "suspend": _BOOL,
        "groupName": {"type": "string", "minLength": 1},
        "replicas": _INT32,
        "minReplicas": _INT32,
        "maxReplicas": _INT32,
        "idleTimeoutSeconds": _INT32,
        "rayStartParams": _STRING_MAP,
        "template": _k8s("core.v1.PodTemplateSpec"),
        "scaleStrategy": _closed({"workersToDelete": {"type": "array", "items": _STRING}}),
        "numOfHosts": {"type": "integer", "minimum": 1},
    },
    required=("groupName", "template"),
)

RAY_CLUSTER_SPEC = _closed(
    {
        "suspend": _BOOL,
        "managedBy": _MANAGED_BY,
        # KubeRay >= 1.6: token auth with a Secret we create ourselves (key auth_token).
        "authOptions": _closed(
            {"mode": {"enum": ["disabled", "token"]}, "secretName": _STRING, "enableK8sTokenAuth": _BOOL}
        ),
        "autoscalerOptions": _AUTOSCALER_OPTIONS,
        "headServiceAnnotations": _STRING_MAP,
        "enableInTreeAutoscaling": _BOOL,
        "gcsFaultToleranceOptions": _closed(
            {
                "redisUsername": _REDIS_CREDENTIAL,
                "redisPassword": _REDIS_CREDENTIAL,
                "externalStorageNamespace": _STRING,
                "redisAddress": _STRING,
            },
            required=("redisAddress",),
        ),
        "headGroupSpec": _HEAD_GROUP_SPEC,
        "rayVersion": _STRING,
        "workerGroupSpecs": {"type": "array", "items": _WORKER_GROUP_SPEC},
    },
    required=("headGroupSpec",),
)

_DELETION_POLICY = _closed({"policy": {"enum": ["DeleteCluster", "DeleteWorkers", "DeleteSelf", "DeleteNone"]}})

RAY_JOB_SPEC = _closed(
    {
        "activeDeadlineSeconds": {"type": "integer", "minimum": 1},
        "backoffLimit": _INT32,
        "rayClusterSpec": RAY_CLUSTER_SPEC,
        "submitterPodTemplate": _k8s("core.v1.PodTemplateSpec"),
        "metadata": _STRING_MAP,
        "clusterSelector": _STRING_MAP,
        "submitterConfig": _closed({"backoffLimit": _INT32}),
        "managedBy": _MANAGED_BY,
        "deletionStrategy": _closed({"onSuccess": _DELETION_POLICY, "onFailure": _DELETION_POLICY}),
        "entrypoint": _STRING,
        "runtimeEnvYAML": _STRING,
        "jobId": _STRING,
        "submissionMode": {"enum": ["K8sJobMode", "HTTPMode", "InteractiveMode", "SidecarMode"]},
        "entrypointResources": _STRING,
        "entrypointNumCpus": _NUMBER,
        "entrypointNumGpus": _NUMBER,
        "ttlSecondsAfterFinished": _INT32,
        "shutdownAfterJobFinishes": _BOOL,
        "suspend": _BOOL,
    },
)
# A cluster to create or one to select: the operator has nothing to run the entrypoint on otherwise; and an
# entrypoint, except in InteractiveMode where the user submits the job themselves.
RAY_JOB_SPEC["anyOf"] = [{"required": ["rayClusterSpec"]}, {"required": ["clusterSelector"]}]
RAY_JOB_SPEC["if"] = {
    "not": {"properties": {"submissionMode": {"const": "InteractiveMode"}}, "required": ["submissionMode"]}
}
RAY_JOB_SPEC["then"] = {"required": ["entrypoint"]}


def _resource(kind: str, spec: JsonSchema) -> JsonSchema:
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        **_closed(
            {"apiVersion": {"const": "ray.io/v1"}, "kind": {"const": kind}, "metadata": _OBJECT_META, "spec": spec},
            required=("apiVersion", "kind", "metadata", "spec"),
        ),
    }


SCHEMAS: dict[str, JsonSchema] = {
    "RayCluster": _resource("RayCluster", RAY_CLUSTER_SPEC),
    "RayJob": _resource("RayJob", RAY_JOB_SPEC),
}


def _k8s_definitions() -> Resource[Any]:
    schema_dir = Path(kubernetes_validate.__file__).parent / "kubernetes-json-schema" / f"v{K8S_VERSION}.0-local-strict"
    return Resource.from_contents(json.loads((schema_dir / "_definitions.json").read_text()))


def validate_kuberay(doc: dict[str, Any]) -> None:
    """Raise `jsonschema.ValidationError` where `doc` (a RayCluster or RayJob) breaks the schema or KubeRay's rules."""
    schema = SCHEMAS.get(doc.get("kind", ""))
    if schema is None:
        raise jsonschema.ValidationError(f"kind {doc.get('kind')!r} is not one of {sorted(SCHEMAS)}")
    registry: Registry[Any] = _k8s_definitions() @ Registry()
    jsonschema.Draft202012Validator(schema, registry=registry).validate(doc)
    cluster_spec = doc["spec"] if doc["kind"] == "RayCluster" else doc["spec"].get("rayClusterSpec")
    if cluster_spec is not None:
        _check_worker_groups(cluster_spec.get("workerGroupSpecs", []))


def _check_worker_groups(groups: list[dict[str, Any]]) -> None:
    """The cross-field rules KubeRay's operator enforces on worker groups (ray-operator/controllers/ray/utils)."""
    names = [group["groupName"] for group in groups]
    if len(set(names)) != len(names):
        raise jsonschema.ValidationError(f"workerGroupSpecs: groupName must be unique, got {names}")
    for group in groups:
        low, high = group.get("minReplicas", 0), group.get("maxReplicas", 2**31 - 1)
        if low > high:
            raise jsonschema.ValidationError(f"{group['groupName']}: minReplicas {low} > maxReplicas {high}")
        if "replicas" in group and not low <= group["replicas"] <= high:
            raise jsonschema.ValidationError(
                f"{group['groupName']}: replicas {group['replicas']} is outside [minReplicas, maxReplicas] = "
                f"[{low}, {high}]"
            )
