"""The Flux preset on Forge, against the Forge recordings over real HTTP.

The recorded Forge ran SD1.5-sized random models (a random-weight Flux is ~12B parameters),
so these tests check the API shape: the preset's defaults, the module names checked
against /sdapi/v1/sd-modules, hires fix with Forge's extra fields, and the clear errors.
"""

from __future__ import annotations

import dataclasses
import hashlib
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import trustme
from safetensors.numpy import save

from handler import handler, load_catalog
from presets import flux
from presets._jobs import module_file_name, preset_config
from schemas.job import parse_job
from schemas.settings import Settings
from tests.contract import assert_txt2img_conforms
from tests.replay import ReplayServer

LISTED_MODULE = "random_vae.safetensors"  # the one module the recorded Forge lists


@pytest.fixture
def forge_env(monkeypatch: pytest.MonkeyPatch, forge_replay: ReplayServer, models_dir: Path) -> ReplayServer:
    monkeypatch.setenv("A1111_URL", forge_replay.url)
    monkeypatch.setenv("MODELS_DIR", str(models_dir))
    monkeypatch.setenv("WEBUI_BACKEND", "forge")
    monkeypatch.setenv("A1111_READY_TIMEOUT", "5")
    monkeypatch.setenv("DOWNLOAD_ALLOW_PRIVATE", "1")
    forge_replay.models_dir = models_dir
    return forge_replay


def bodies(srv: ReplayServer) -> list[dict]:
    return [b for b in srv.sent("POST", "/sdapi/v1/txt2img") if b.get("prompt") != "warm-up"]


def run(**inp) -> dict:
    # model_a stands in for the Flux checkpoint: it is what the recorded Forge lists.
    return handler({"id": "fx", "input": {"preset": "flux", "prompt": "a red fox", "checkpoint": "model_a", **inp}})


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
class _LoraFiles(BaseHTTPRequestHandler):
    files: dict[str, bytes] = {}
    gets: list[str] = []

    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        body = self.files.get(self.path.split("?")[0])
        if body is None:
            self.send_error(404)
            return
        self.gets.append(self.path)
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture
def https_files(tmp_path, monkeypatch):
    """A local HTTPS file server (lora_urls must be https), trusted through REQUESTS_CA_BUNDLE."""
    ca = trustme.CA()
    ca_pem = tmp_path / "ca.pem"
    ca.cert_pem.write_to_path(str(ca_pem))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca_pem))
    handler_cls = type("Files", (_LoraFiles,), {"files": {}, "gets": []})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler_cls)
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1").configure_cert(ctx)
    httpd.socket = ctx.wrap_socket(httpd.socket, server_side=True)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield httpd, handler_cls
    httpd.shutdown()
    httpd.server_close()


def _lora_bytes() -> bytes:
    # A real (tiny) kohya-style LoRA file, SD1.5 like the recorded server's checkpoint.
    tensors = {"lora_unet_down_blocks_0_attentions_0_proj_in.lora_down.weight": np.zeros((4, 320), np.float16),
               "lora_unet_down_blocks_0_attentions_0_proj_in.lora_up.weight": np.zeros((320, 4), np.float16)}
    return save(tensors, metadata={"ss_base_model_version": "sd_v1", "ss_network_dim": "4"})


def test_lora_urls_downloaded_once_and_tagged(forge_env, https_files, models_dir):
    httpd, files = https_files
    files.files["/loras/flux_detail.safetensors"] = _lora_bytes()
    url = f"https://127.0.0.1:{httpd.server_address[1]}/loras/flux_detail.safetensors"
    stem = f"flux_detail_{hashlib.sha256(url.encode()).hexdigest()[:8]}"
    for _ in range(2):
        out = run(modules=[LISTED_MODULE], lora_urls=[url], lora_scales=[0.8])
        assert "error" not in out, out
    first, second = bodies(forge_env)
    assert f"<lora:{stem}:0.8>" in first["prompt"] and f"<lora:{stem}:0.8>" in second["prompt"]
    assert (models_dir / "loras" / f"{stem}.safetensors").read_bytes() == files.files["/loras/flux_detail.safetensors"]
    assert files.gets == ["/loras/flux_detail.safetensors"]  # downloaded once, reused the second time
