"""What a sweep's driver job gets from this machine's environment, and how secrets stay on this machine.

A Ray job's runtime env is stored by the cluster and shown to anyone who reaches its dashboard or Jobs API
(`get_job_info`, `ray job list`, the dashboard's job page), and logged by its runtime-env agent. So it carries
settings only:

* **settings** (forwarded): the AWS_*, MLFLOW_* and RESNET_ORCH_* variables that are not secrets (endpoint URLs,
  region, tracking URI, ...) and RAY_AUTH_MODE. A remote cluster does not get the ones that name this machine's
  files or profiles (`MACHINE_LOCAL`): its nodes have no such file.
* **secrets** (`is_secret`): keys, tokens, passwords, URLs with a password, and the identity halves of credential
  pairs (AWS_ACCESS_KEY_ID, MLFLOW_TRACKING_USERNAME). An identity is not secret by itself, but without its secret
  it is useless, and worse: botocore refuses an AWS_ACCESS_KEY_ID without its secret (PartialCredentialsError)
  instead of falling back to the node's role, and a forwarded username would pair with the node's own password.

  - A **remote cluster** never gets them: its nodes authenticate as themselves (IRSA or an instance profile, a
    Kubernetes Secret via `envFrom`: infra/, docs/cluster.md). `withheld` names (never shows) what stayed here.
  - The **local head** (a cluster on this machine) gets them in a file readable by this user only
    (`RESNET_ORCH_HOME/job-secrets/<sweep id>.json`, 0600 in a 0700 folder). The runtime env carries its path;
    the driver (`driver.main`) and every worker process of the job (Ray's `worker_process_setup_hook`) load it at
    start (`load_job_secrets`), so the values reach the job's processes without entering Ray's job table or logs.
    The driver removes the file when it ends, `cancel` when it stops the job; a driver killed outright leaves it
    (still 0600) until the sweep is resumed and ends, or is cancelled.

One more copy to prevent: Ray Tune copies the driver's AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and session token
into every trial actor's runtime env (ray/tune/execution/class_cache.py), which the cluster stores and its
runtime-env agent logs in full (a world-readable file under the head's temp dir). So the driver moves whatever AWS
keys it holds (the job's, or its node's own) into a shared-credentials file of its own (`aws_keys_in_a_file`): boto3
and pyarrow read that just as well, and Tune finds nothing to copy. The trial actors authenticate as every other
process of the job does (the secrets file above, or their node's identity).
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from orchestrator.stack.processes import environment
from pipelines.files import write_atomic

FORWARDED_PREFIXES = ("AWS_", "MLFLOW_", "RESNET_ORCH_")
# Words in a variable's name that make it a secret (or half of a credential pair): AWS_SECRET_ACCESS_KEY,
# AWS_SESSION_TOKEN, AWS_ACCESS_KEY_ID, MLFLOW_TRACKING_PASSWORD/TOKEN/USERNAME, an API key, ...
_SECRET_WORDS = ("SECRET", "TOKEN", "PASSWORD", "PASSWD", "CREDENTIAL", "PRIVATE", "ACCESS_KEY", "API_KEY", "USERNAME")
# Settings that name a profile or a file on this machine: on a remote cluster botocore and MLflow would fail on them
# (ProfileNotFound, a missing file) instead of using the nodes' own configuration.
MACHINE_LOCAL = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_CONFIG_FILE",
    "AWS_SHARED_CREDENTIALS_FILE",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CA_BUNDLE",
    "MLFLOW_TRACKING_CLIENT_CERT_PATH",
    "MLFLOW_TRACKING_SERVER_CERT_PATH",
    "RESNET_ORCH_HOME",
)
# The runtime-env variable naming a local job's secrets file, and the hook Ray runs at every worker's start.
SECRETS_FILE_VAR = "RESNET_ORCH_JOB_SECRETS"
SETUP_HOOK = "orchestrator.sweep.job_env.load_job_secrets"
# The variables Ray Tune copies from the driver into trial actors' runtime envs, and their shared-credentials keys.
TUNE_COPIED_AWS = {
    "AWS_ACCESS_KEY_ID": "aws_access_key_id",
    "AWS_SECRET_ACCESS_KEY": "aws_secret_access_key",
    "AWS_SESSION_TOKEN": "aws_session_token",
    "AWS_SECURITY_TOKEN": "aws_session_token",  # the older name of the session token
}
DRIVER_PROFILE = "resnet-orch-driver"


def has_password(value: str) -> bool:
    """Whether `value` is a URL with a password in it (`https://user:password@host`)."""
    try:
        return "@" in value and urlsplit(value).password is not None
    except ValueError:  # not a URL at all
        return False


def is_secret(name: str, value: str = "") -> bool:
    """Whether variable `name` (with `value`) is a secret: by its name, or a URL that holds a password."""
    upper = name.upper()
    return any(word in upper for word in _SECRET_WORDS) or upper.endswith("_KEY") or has_password(value)


def _candidates(environ: Mapping[str, str]) -> dict[str, str]:
    # A secrets file named here belongs to the job that runs this process, not to the one being submitted.
    return {k: v for k, v in environ.items() if k.startswith(FORWARDED_PREFIXES) and k != SECRETS_FILE_VAR}


def job_settings(environ: Mapping[str, str], *, local: bool) -> dict[str, str]:
    """The non-secret variables a driver job (and every process of it) gets in its runtime env."""
    env = {k: v for k, v in _candidates(environ).items() if not is_secret(k, v)}
    if "RAY_AUTH_MODE" in environ:
        env["RAY_AUTH_MODE"] = environ["RAY_AUTH_MODE"]
    if not local:
        for key in MACHINE_LOCAL:
            env.pop(key, None)
    return env


def job_secrets(environ: Mapping[str, str]) -> dict[str, str]:
    """The secret variables among those a job would be given (what only a job on this machine gets, by file)."""
    return {k: v for k, v in _candidates(environ).items() if is_secret(k, v)}


def withheld(environ: Mapping[str, str]) -> list[str]:
    """Names of the secrets set here that a remote cluster does not get (for a notice; values are never shown)."""
    return sorted(job_secrets(environ))


def secrets_path(home: Path, sweep_id: str) -> Path:
    return home / "job-secrets" / f"{sweep_id}.json"


def local_runtime_env(environ: Mapping[str, str], secrets_file: Path) -> dict[str, Any]:
    """The runtime env of a driver job on this machine's head: settings, plus the secrets in `secrets_file`.

    The file is written (0600) only when there are secrets; the runtime env then names it and Ray's worker setup
    hook, which loads it in every worker process of the job.
    """
    runtime_env: dict[str, Any] = {"env_vars": job_settings(environ, local=True)}
    secrets = job_secrets(environ)
    if secrets:
        secrets_file.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        secrets_file.parent.chmod(0o700)
        write_atomic(secrets_file, json.dumps(secrets), mode=0o600)
        runtime_env["env_vars"][SECRETS_FILE_VAR] = str(secrets_file)
        runtime_env["worker_process_setup_hook"] = SETUP_HOOK
    return runtime_env


def load_job_secrets() -> None:
    """Put the job's secrets into this process's environment (its boto3, DALI, pyarrow and MLflow clients read them
    there). Ray runs it at the start of every worker process of a local job; the driver calls it first thing.

    Nothing to do outside such a job. A named file that is gone means the job was stopped (or its driver ended):
    refused with that said, rather than running on without credentials and failing later on an S3 or MLflow call.
    """
    path = os.environ.get(SECRETS_FILE_VAR)
    if not path:
        return
    try:
        secrets: dict[str, str] = json.loads(Path(path).read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise RuntimeError(
            f"{SECRETS_FILE_VAR}={path}: the job's secrets file is gone (the sweep was cancelled or its driver ended); "
            "`resnet-orch resume` the sweep to run it again"
        ) from None
    os.environ.update(secrets)


def forget_job_secrets(path: str | os.PathLike[str] | None) -> None:
    """Remove a job's secrets file (once its driver ended or was stopped)."""
    if path:
        Path(path).unlink(missing_ok=True)


@contextlib.contextmanager
def aws_keys_in_a_file() -> Iterator[None]:
    """Within the block this process's AWS keys live in a private shared-credentials file (0600, removed after), not
    in its environment, so Ray Tune has none to copy into trial actors' runtime envs; AWS_SHARED_CREDENTIALS_FILE
    and AWS_PROFILE point boto3 and pyarrow at it. The environment is restored after."""
    keys = {name: os.environ[name] for name in TUNE_COPIED_AWS if name in os.environ}
    if not keys:
        yield
        return
    with tempfile.TemporaryDirectory(prefix="resnet-orch-driver-") as folder:  # 0700
        path = Path(folder) / "credentials"
        entries = {TUNE_COPIED_AWS[name]: value for name, value in keys.items()}
        write_atomic(path, f"[{DRIVER_PROFILE}]\n" + "".join(f"{k} = {v}\n" for k, v in entries.items()), mode=0o600)
        with environment(tuple(keys), AWS_SHARED_CREDENTIALS_FILE=str(path), AWS_PROFILE=DRIVER_PROFILE):
            yield
