"""Container files: linters (shellcheck, hadolint from PyPI) and static checks of what a
Docker engine would only reveal at build time; RunPod convention files use real job fields."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from schemas.job import parse_job

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent


def _tool(name: str) -> str:
    found = BIN / name
    if found.exists():
        return str(found)
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed (it comes from requirements-dev.txt)")
    return path


def test_shellcheck_start_sh():
    proc = subprocess.run([_tool("shellcheck"), "start.sh"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_hadolint_dockerfile():
    proc = subprocess.run([_tool("hadolint"), "Dockerfile"], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


DOCKERFILE = (ROOT / "Dockerfile").read_text()


def _arg(name: str) -> str:
    m = re.search(rf"^ARG {name}=(\S+)$", DOCKERFILE, re.M)
    assert m, f"ARG {name} missing"
    return m.group(1)


def test_dockerfile_pins_webui_and_extensions():
    # issue 11: the torch wheels bundle CUDA's libraries, so the base is plain Ubuntu (was an
    # nvidia/cuda -runtime image, which duplicated them)
    assert _arg("BASE_IMAGE") == "ubuntu:22.04"
    assert _arg("A1111_TAG") == "v1.10.1"
    assert _arg("A1111_COMMIT") == "82a973c04367123ae98bd9abdf80d9eda9b910e2"  # recordings/a1111/INDEX.md
    assert _arg("FORGE_COMMIT") == "dfdcbab685e57677014f05a3309b48cc87383167"  # recordings/forge/INDEX.md
    assert _arg("ADETAILER_TAG") == "v25.3.0"
    assert re.fullmatch(r"[0-9a-f]{40}", _arg("CONTROLNET_COMMIT"))
    assert _arg("WEBUI_BACKEND") == "a1111"


def test_dockerfile_two_venvs_models_not_in_image_no_secrets():
    assert "python3.10 -m venv /opt/venv-webui" in DOCKERFILE
    assert "uv venv" in DOCKERFILE and "/opt/venv-worker" in DOCKERFILE
    assert "-r /opt/worker/requirements.txt" in DOCKERFILE
    # tokens only through BuildKit secret mounts, never ARG/ENV (which end up in the image)
    for line in DOCKERFILE.splitlines():
        if line.startswith(("ARG ", "ENV ")):
            assert "TOKEN" not in line and "SECRET" not in line, line
        if re.match(r"\s*(HF|CIVITAI)_TOKEN=", line):
            assert '"$(cat /run/secrets/' in line, line
    assert "--mount=type=secret,id=hf_token" in DOCKERFILE
    assert 'ENTRYPOINT ["/opt/worker/start.sh"]' in DOCKERFILE
    ignored = (ROOT / ".dockerignore").read_text().split()
    for pattern in (".venv", "models", "tests", "*.safetensors", ".env"):
        assert pattern in ignored


def _inputs() -> list[tuple[str, dict]]:
    out = [("test_input.json", json.loads((ROOT / "test_input.json").read_text())["input"])]
    tests = json.loads((ROOT / ".runpod" / "tests.json").read_text())
    out += [(f"tests.json:{t['name']}", t["input"]) for t in tests["tests"]]
    return out


@pytest.mark.parametrize(("where", "raw"), _inputs(), ids=lambda v: v if isinstance(v, str) else "")
def test_convention_inputs_are_valid_jobs(where, raw):
    parse_job(raw)  # raises ValidationFailed naming the field if a name is not ours


def test_hub_json_shape_and_env_keys_are_real():
    hub = json.loads((ROOT / ".runpod" / "hub.json").read_text())
    assert hub["type"] == "serverless" and hub["category"] == "image"
    assert hub["title"] and hub["description"]
    config = hub["config"]
    assert config["runsOn"] == "GPU" and config["gpuCount"] == 1
    # README links into docs/ (issue 11's rewrite): a variable documented in either counts
    readme = "\n".join(p.read_text() for p in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))])
    for entry in config["env"]:
        key = entry["key"]
        assert f"`{key}`" in readme, f"{key} is not documented in README.md or docs/"
        assert entry["input"]["name"] and entry["input"]["type"] in {"string", "number", "boolean"}
        if entry["input"]["type"] == "number":
            assert entry["input"]["min"] < entry["input"]["max"], key
    tests = json.loads((ROOT / ".runpod" / "tests.json").read_text())
    assert all(isinstance(t["timeout"], int) for t in tests["tests"])


def test_hub_test_names_a_catalog_checkpoint():
    # A Hub test endpoint has no volume: the test job must name a model the worker can fetch.
    catalog = json.loads((ROOT / "models.json").read_text())
    ids = {m["id"] for m in catalog["models"] if m["kind"] == "checkpoint"}
    tests = json.loads((ROOT / ".runpod" / "tests.json").read_text())["tests"]
    generating = [t for t in tests if t["input"].get("action", "txt2img") == "txt2img"]
    assert generating and all(t["input"].get("checkpoint") in ids for t in generating)


def test_args_are_declared_where_they_are_used():
    # An ARG before the first RUN is part of every later step's cache key: BAKE_MODELS there
    # rebuilt apt, torch and A1111 (issue 11).
    lines = DOCKERFILE.splitlines()
    at = {m.group(1): i for i, ln in enumerate(lines) if (m := re.match(r"ARG (\w+)=", ln))}
    worker_copy = lines.index("COPY . /opt/worker")
    lock_copy = lines.index("COPY image/ /opt/image/")
    assert at["BAKE_MODELS"] > worker_copy
    assert at["TORCH_CUDA"] < lock_copy and at["ADETAILER_TAG"] > lock_copy and at["CONTROLNET_COMMIT"] > lock_copy
    first_run = next(i for i, ln in enumerate(lines) if ln.startswith("RUN "))
    assert [a for a, i in at.items() if i < first_run] == ["BASE_IMAGE", "UV_IMAGE", "WEBUI_BACKEND"]


def test_every_backend_and_cuda_build_has_a_lock_the_dockerfile_installs():
    assert _arg("TORCH_CUDA") == "cu121"
    for backend in ("a1111", "forge"):
        for cuda in ("cu121", "cu128"):
            lock = ROOT / "image" / f"{backend}-{cuda}.lock"
            pins = dict(line.split("==") for line in lock.read_text().splitlines() if not line.startswith("#"))
            assert {"torch", "torchvision", "xformers", "clip-anytorch", "open-clip-torch", "setuptools"} <= pins.keys()
    assert '/opt/image/${WEBUI_BACKEND}-${TORCH_CUDA}.lock' in DOCKERFILE
    assert "PIP_CONSTRAINT=/opt/webui-lock.txt" in DOCKERFILE and "UV_CONSTRAINT=/opt/webui-lock.txt" in DOCKERFILE
    assert "lock.py installed /opt/webui-lock.txt" in DOCKERFILE


def test_ci_checks_the_locks_before_the_readme_test_command():
    steps = [ln for ln in (ROOT / ".ci" / "run").read_text().splitlines() if ln and not ln.startswith("#")]
    check = steps.index(".venv/bin/python image/lock.py check --uv .venv/bin/uv")
    assert steps[-1] == ".venv/bin/python -m pytest" and check < len(steps) - 1
