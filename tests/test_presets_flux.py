"""The Flux preset on Forge, against the Forge recordings over real HTTP.

The recorded Forge ran SD1.5-sized random models (a random-weight Flux is ~12B parameters),
so these tests check the API shape: the preset's defaults, the module names checked
against /sdapi/v1/sd-modules, hires fix with Forge's extra fields, and the clear errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
from pathlib import Path

import pytest

from handler import handler, load_catalog
from presets import flux
from presets._jobs import module_file_name, preset_config
from schemas.job import parse_job
from schemas.settings import Settings
from tests.contract import assert_txt2img_conforms
from tests.replay import ReplayServer
from tests.support.jobs import JobRunner
from tests.support.jobs import txt2img_bodies as bodies  # the name the assertions below use
from tests.support.model_files import lora_bytes

LISTED_MODULE = "random_vae.safetensors"  # the one module the recorded Forge lists


@pytest.fixture
def forge_env(forge_env: ReplayServer, models_dir: Path) -> ReplayServer:
    """conftest's forge_env; the replay also lists files placed in MODELS_DIR (lora_urls), as Forge does."""
    forge_env.models_dir = models_dir
    return forge_env


# model_a stands in for the Flux checkpoint: it is what the recorded Forge lists.
run = JobRunner(job_id="fx", base={"preset": "flux", "prompt": "a red fox", "checkpoint": "model_a"}).fields


def test_flux_defaults_on_forge(forge_env):
    out = run(modules=[LISTED_MODULE], seed=5)
    assert "error" not in out, out
    (body,) = bodies(forge_env)
    assert_txt2img_conforms(body, "forge")
    assert (body["width"], body["height"], body["steps"]) == (768, 1344, 50)
    assert body["cfg_scale"] == 1.0 and body["distilled_cfg_scale"] == 3.7
    assert body["sampler_name"] == "Euler" and body["scheduler"] == "Simple"
    assert body["override_settings"]["forge_additional_modules"] == [LISTED_MODULE]
    assert "enable_hr" not in body and "alwayson_scripts" not in body


def test_caller_fields_override_flux_defaults(forge_env):
    out = run(modules=[LISTED_MODULE], width=1024, height=1024, steps=20, distilled_cfg_scale=3.0)
    assert "error" not in out, out
    (body,) = bodies(forge_env)
    assert (body["width"], body["height"], body["steps"], body["distilled_cfg_scale"]) == (1024, 1024, 20, 3.0)
    assert body["cfg_scale"] == 1.0


def test_default_modules_must_be_listed_by_forge(forge_env):
    out = run()
    assert "error" in out
    text = out["error"] + str(out.get("details"))
    catalog = load_catalog(Settings.from_env())
    for ref in preset_config(catalog, "flux", flux.DEFAULTS)["modules"]:
        assert module_file_name(catalog, ref) in text
    assert "sd-modules" in text and "restart" in text
    assert bodies(forge_env) == []


def test_flux_hires_defaults(forge_env):
    forge_env.respond("POST", "/sdapi/v1/txt2img", "txt2img_hires_latent_use_same_choices")
    out = run(modules=[LISTED_MODULE], hires={"upscaler": "ESRGAN_4x", "scale": 1.5})
    assert "error" not in out, out
    (body,) = bodies(forge_env)
    assert_txt2img_conforms(body, "forge")
    assert body["enable_hr"] is True and body["hr_second_pass_steps"] == 10 and body["hr_upscaler"] == "ESRGAN_4x"
    assert body["hr_cfg"] == 1.0 and body["hr_distilled_cfg"] == 3.7
    assert body["hr_additional_modules"] == ["Use same choices"]
    assert isinstance(body["denoising_strength"], float)


def test_flux_hires_default_upscaler_must_be_installed(forge_env):
    # 4x-UltraSharp is the preset's default; the recorded Forge has no such file.
    out = run(modules=[LISTED_MODULE], hires={})
    assert "4x-UltraSharp" in out["error"] and "ESRGAN_4x" in str(out)
    assert bodies(forge_env) == []


def test_flux_adetailer_true_expands_to_face_and_hand():
    job = parse_job({"preset": "flux", "prompt": "a portrait", "adetailer": True})
    settings = dataclasses.replace(Settings.from_env(), backend="forge")
    ((_, step),) = flux.expand(job, None, settings)
    assert [u.model for u in step.adetailer] == ["face_yolov8s.pt", "hand_yolov8s.pt"]


def test_flux_adetailer_without_the_extension_is_an_error(forge_env):
    out = run(modules=[LISTED_MODULE], adetailer=True)
    assert "ADetailer" in out["error"]
    assert bodies(forge_env) == []


def test_flux_on_plain_a1111_is_a_clear_error(worker_env):
    out = handler({"id": "fx", "input": {"preset": "flux", "prompt": "a red fox"}})
    assert out["error_type"] == "validation"
    assert "Forge" in out["error"] and "WEBUI_BACKEND=forge" in out["error"]
    assert worker_env.sent("POST", "/sdapi/v1/txt2img") == []


# --------------------------------------------------------------------------- lora_urls
def test_lora_urls_downloaded_once_and_tagged(forge_env, https_files, models_dir):
    files = https_files
    # SD1.5, like the recorded server's checkpoint.
    files.files["/loras/flux_detail.safetensors"] = lora_bytes("sd_v1")
    url = f"{files.url}/loras/flux_detail.safetensors"
    stem = f"flux_detail_{hashlib.sha256(url.encode()).hexdigest()[:8]}"
    for _ in range(2):
        out = run(modules=[LISTED_MODULE], lora_urls=[url], lora_scales=[0.8])
        assert "error" not in out, out
    first, second = bodies(forge_env)
    assert f"<lora:{stem}:0.8>" in first["prompt"] and f"<lora:{stem}:0.8>" in second["prompt"]
    assert (models_dir / "loras" / f"{stem}.safetensors").read_bytes() == files.files["/loras/flux_detail.safetensors"]
    assert files.gets == ["/loras/flux_detail.safetensors"]  # downloaded once, reused the second time
