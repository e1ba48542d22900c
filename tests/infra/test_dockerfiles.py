"""infra/docker: no Docker engine here, so the Dockerfiles are checked against the project they package:
the CUDA base matches the CUDA of the pinned torch, the CPU image's torch satisfies pyproject's pin, every
COPY source exists and is not excluded by .dockerignore."""

from __future__ import annotations

import fnmatch
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = [REPO / "infra" / "docker" / "Dockerfile", REPO / "infra" / "docker" / "Dockerfile.cpu"]


def _instructions(path: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with line continuations joined and comments dropped."""
    joined = re.sub(r"\\\n(\s*#[^\n]*\n)*", " ", path.read_text())
    result = []
    for line in joined.splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            keyword, _, rest = line.partition(" ")
            result.append((keyword.upper(), rest.strip()))
    return result


def _args(path: Path) -> dict[str, str]:
    return dict(rest.split("=", 1) for kw, rest in _instructions(path) if kw == "ARG" and "=" in rest)


def _requirement(name: str) -> Requirement:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())
    (req,) = [Requirement(r) for r in pyproject["project"]["dependencies"] if Requirement(r).name == name]
    return req


def test_gpu_base_image_is_the_cuda_of_the_pinned_torch() -> None:
    torch = pytest.importorskip("torch")
    base = _args(DOCKERFILES[0])["CUDA_IMAGE"]
    match = re.fullmatch(r"nvidia/cuda:(\d+)\.(\d+)\.\d+-(base|runtime|cudnn-runtime)-ubuntu\d+\.\d+", base)
    assert match, base
    # The installed torch satisfies pyproject's pin; its CUDA major.minor is what the image must provide.
    assert _requirement("torch").specifier.contains(torch.__version__.split("+")[0])
    assert f"{match[1]}.{match[2]}" == ".".join(torch.version.cuda.split(".")[:2])


def test_dali_is_the_cuda_13_build() -> None:
    assert _requirement("nvidia-dali-cuda130").name == "nvidia-dali-cuda130"
    assert _args(DOCKERFILES[0])["CUDA_IMAGE"].startswith("nvidia/cuda:13.")


def test_cpu_image_torch_versions_satisfy_the_project_pins() -> None:
    args = _args(DOCKERFILES[1])
    assert _requirement("torch").specifier.contains(args["TORCH_VERSION"])
    assert _requirement("torchvision").specifier.contains(args["TORCHVISION_VERSION"])


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_copy_sources_exist_and_are_in_the_build_context(dockerfile: Path) -> None:
    ignored = [
        line.strip()
        for line in (REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    sources = []
    for keyword, rest in _instructions(dockerfile):
        if keyword == "COPY":
            parts = [p for p in rest.split() if not p.startswith("--")]
            sources += parts[:-1]
    assert {"pyproject.toml", "orchestrator", "models", "pipelines"} <= set(sources)
    for source in sources:
        assert (REPO / source).exists(), f"{dockerfile.name}: COPY {source} does not exist"
        assert not any(fnmatch.fnmatch(source, pattern) for pattern in ignored), f"{source} is in .dockerignore"


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_images_run_as_an_unprivileged_user_with_token_auth(dockerfile: Path) -> None:
    instructions = _instructions(dockerfile)
    assert [rest for kw, rest in instructions if kw == "USER"] == ["ray"]
    env = " ".join(rest for kw, rest in instructions if kw == "ENV")
    assert "RAY_AUTH_MODE=token" in env
