"""What a newcomer meets first: error strings that stand on their own, one validation round,
suggestions that follow what people type, the quick start, the schemas, the repository's setup."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tomllib
from pathlib import Path

import jsonschema
import pytest
import yaml

from a1111.matching import resolve_sampler
from a1111.resolve import EMPTY_PROMPT_WARNING
from schemas import export
from schemas.errors import MAX_ERROR_CHARS, Problem, error_result, problems_error
from schemas.output import ErrorResult, GenerationResult
from tests.replay import RECORDINGS
from tests.support.jobs import JobRunner, txt2img_bodies

ROOT = Path(__file__).resolve().parent.parent
run = JobRunner(job_id="newcomer")
WARM = {"prompt": "a cat", "steps": 1}


def _recorded(name: str):
    return json.loads((RECORDINGS / "a1111" / f"{name}.json").read_text())["response"]["json"]


# --------------------------------------------------------------------------- 1. the error string
def test_error_string_names_the_type_and_every_problem(worker_env):
    result = run.fields(prompt="x", steps=500, width=70)
    assert result["error"] == ("validation: steps must be an integer from 1 to 150, got 500; width must be a "
                               "multiple of 8 from 64 to 2048, got 70 (A1111 would silently render 64 pixels)")
    assert result["error_type"] == "validation" and [d["field"] for d in result["details"]] == ["steps", "width"]


def test_error_string_is_bounded_and_says_how_many_are_left_out():
    problems = [Problem(f"f{i}", f"f{i} is wrong in a rather long way, " + "x" * 40) for i in range(100)]
    result = error_result(problems_error(problems))
    error = result["error"]
    assert len(error) <= MAX_ERROR_CHARS and error.startswith("validation: f0 is wrong")
    shown = error.count(" is wrong ")
    assert error.endswith(f" (and {100 - shown} more)") and 5 < shown < 100
    assert len(result["details"]) == 100


def test_unknown_fields_by_the_hundred_stay_within_the_bound(worker_env):
    result = run({"prompt": "x", **{f"field_{i}": i for i in range(300)}})
    assert len(result["error"]) <= MAX_ERROR_CHARS and result["error"].endswith("more)")
    assert len(result["details"]) == 300


def test_every_error_type_leads_its_string():
    from schemas.errors import A1111Unavailable, JobTimeout
    assert error_result(JobTimeout("the job ran past JOB_TIMEOUT"))["error"] == \
        "timeout: the job ran past JOB_TIMEOUT"
    assert error_result(A1111Unavailable("x" * 5000))["error"].startswith("a1111_unavailable: xxx")
    assert len(error_result(A1111Unavailable("x" * 5000))["error"]) == MAX_ERROR_CHARS
    assert error_result(ValueError("boom"))["error"] == "internal: a bug in the worker: ValueError: boom"


@pytest.mark.slow
def test_test_input_prints_the_whole_error(replay, tmp_path):
    """What a user sees with ``--test_input``: the SDK logs only the error string and exits 1."""
    env = {**os.environ, "A1111_URL": replay.url, "MODELS_DIR": str(tmp_path), "A1111_READY_TIMEOUT": "5"}
    env.pop("A1111_PID_FILE", None)
    job = json.dumps({"input": {"prompt": "x", "steps": 500, "width": 70}})
    done = subprocess.run([sys.executable, "handler.py", "--test_input", job], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 1
    out = done.stdout + done.stderr
    assert "failed with error: validation: steps must be an integer from 1 to 150, got 500; width must be" in out


# --------------------------------------------------------------------------- 2. one round
def test_field_and_name_problems_come_back_together(worker_env):
    assert "error" not in run(WARM)  # A1111 is up: its lists are known
    result = run.fields(prompt="x", steps=500, sampler_name="Eular a", loras=[{"name": "nope", "weight": 0.5}],
                        checkpoint="model_zz", scheduler="Karras")
    assert result["error_type"] == "validation"
    fields = [d["field"] for d in result["details"]]
    assert fields == ["steps", "sampler_name", "checkpoint", "loras[0]"]
    assert "did you mean 'Euler a'" in result["error"] and "unknown lora 'nope'" in result["error"]
    assert len(txt2img_bodies(worker_env)) == 1  # the warm job's only


def test_preset_problems_and_name_problems_come_back_together(worker_env):
    assert "error" not in run(WARM)
    result = run.fields(preset="rubber_tile", colors=[{"name": "red", "proportion": 90}], sampler_name="Eular a")
    assert sorted(d["field"] for d in result["details"]) == ["colors", "sampler_name"]


def test_a_job_with_field_errors_downloads_nothing(worker_env, https_files, models_dir):
    """A LoRA source on a (local HTTPS) file server beside a bad field: the file server sees nothing."""
    https_files.files["/lora.safetensors"] = b"never fetched"
    assert "error" not in run(WARM)
    result = run.fields(prompt="x", steps=0, loras=[{"url": https_files.url + "/lora.safetensors", "weight": 1}],
                        checkpoint="deliberate_v6")
    assert [d["field"] for d in result["details"]] == ["steps"]
    assert https_files.seen == [] and not any((models_dir / "loras").iterdir())


def test_a_cold_worker_reports_field_problems_without_asking_a1111(worker_env):
    result = run.fields(prompt="x", steps=500, sampler_name="Eular a")
    assert [d["field"] for d in result["details"]] == ["steps"]
    assert worker_env.sent("GET", "/sdapi/v1/samplers") == []


# --------------------------------------------------------------------------- 3. suggestions
def test_jpg_is_taken_as_jpeg(worker_env):
    result = run.fields(prompt="x", output={"format": "jpg"})
    assert result["delivery"]["format"] == "jpeg" and result["images"][0].startswith("/9j/")


def test_a_misspelt_legacy_scheduler_suggests_that_scheduler_first():
    samplers, schedulers = _recorded("get_samplers"), _recorded("get_schedulers")
    _, _, (problem,) = resolve_sampler("DPM++ 2M Karas", None, samplers, schedulers)
    assert problem["suggestions"][0] == "DPM++ 2M Karras"
    assert "sampler 'DPM++ 2M' with scheduler 'Karras'" in problem.message
    # ... and what it suggests is accepted as it is.
    assert resolve_sampler("DPM++ 2M Karras", None, samplers, schedulers)[:2] == ("DPM++ 2M", "Karras")


def test_an_unknown_preset_gets_a_did_you_mean(worker_env):
    result = run.fields(prompt="x", preset="rubber_tyle")
    assert result["error_type"] == "validation"
    assert "did you mean 'rubber_tile'?" in result["error"] and result["details"][0]["suggestions"][0] == "rubber_tile"


def test_a_source_inside_a_lora_name_gets_the_accepted_form(worker_env):
    result = run.fields(prompt="x", loras=[{"name": {"civitai": 135867}}])
    assert '{"civitai": 135867, "weight": 0.8}' in result["error"]
    result = run.fields(prompt="x", checkpoint={"civitai": "135867"})
    assert 'the civitai form is {"civitai": 135867}' in result["error"]
    result = run.fields(prompt="x", loras=[7])
    assert '{"civitai": 135867, "weight": 0.8}' in result["error"]


def test_an_empty_prompt_is_accepted_with_a_warning(worker_env):
    result = run.fields(prompt="")
    assert "error" not in result and EMPTY_PROMPT_WARNING in result["warnings"]
    assert txt2img_bodies(worker_env)[-1]["prompt"] == ""


# --------------------------------------------------------------------------- 4. the repository
def test_readme_is_short_and_links_the_docs_and_schemas():
    readme = (ROOT / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    for target in ("docs/configuration.md", "docs/jobs.md", "docs/deployment.md", "docs/local.md",
                   "docs/robustness.md", "docs/security.md", "docs/performance.md", "schemas/job.schema.json",
                   "schemas/output.schema.json"):
        assert f"]({target})" in readme and (ROOT / target).is_file(), target
    assert "deliberate_v6\", \"loras\": [{\"name\": \"detail_tweaker_xl\"" not in readme


def test_python_311_is_required_and_said_so():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11"
    # handler.py on an older Python: its first lines stop with a message, before any import that needs 3.11.
    code = ("import sys; sys.version_info = (3, 10, 12, 'final', 0); "
            "exec(compile(open('handler.py').read(), 'handler.py', 'exec'), {'__name__': 'handler'})")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          check=False)
    assert done.returncode == 1 and "needs Python 3.11 or newer" in done.stderr


def test_docker_compose_runs_the_local_api_on_a_gpu_with_a_volume_folder():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    worker = compose["services"]["worker"]
    assert worker["command"][0] == "--rp_serve_api" and "0.0.0.0" in worker["command"]  # noqa: S104 - the container's API, published on 8000
    assert "8000:8000" in worker["ports"] and "./volume:/runpod-volume" in worker["volumes"]
    assert worker["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]


def test_quick_start_refuses_a_taken_port():
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        held.listen()
        port = held.getsockname()[1]
        done = subprocess.run([sys.executable, "-m", "tests.quickstart", "--port", str(port)], cwd=ROOT,
                              capture_output=True, text=True, timeout=60, check=False)
    assert done.returncode == 2
    assert f"cannot listen on 127.0.0.1:{port}" in done.stderr and "--port" in done.stderr


# --------------------------------------------------------------------------- 5. the schemas
def test_committed_schemas_are_current():
    for path, text in export.rendered().items():
        assert path.read_text() == text, f"{path.name} is stale: run python -m schemas.export"
    assert export.main(["--check"]) == 0


def test_real_results_conform_to_the_output_schema(worker_env):
    schema = json.loads(export.OUTPUT_SCHEMA.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    ok = run.fields(prompt="a cat", batch_size=2, output={"format": "webp"})
    GenerationResult.model_validate(ok)
    bad = run.fields(prompt="x", steps=500)
    ErrorResult.model_validate(bad)
    for result in (ok, bad, run({"action": "list_models"}), run({"action": "health"})):
        assert list(validator.iter_errors(result)) == []
    with pytest.raises(ValueError):
        ErrorResult.model_validate({"error": "x", "error_type": "nonsense"})


def test_job_schema_refuses_what_the_worker_refuses():
    validator = jsonschema.Draft202012Validator(json.loads(export.JOB_SCHEMA.read_text()))
    assert list(validator.iter_errors(json.loads((ROOT / "test_input.json").read_text()))) == []
    assert list(validator.iter_errors({"input": {"prompt": "x", "steps": "20"}})) != []
    assert list(validator.iter_errors({"input": {"prompt": "x", "guidance_scale": 7}})) != []
    assert list(validator.iter_errors({"input": {"prompt": "x", "loras": ["a", {"civitai": 1, "weight": 1}]}})) == []
