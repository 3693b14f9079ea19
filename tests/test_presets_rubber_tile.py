"""The rubber-tile preset end to end: handler -> replay SDXL A1111 (real HTTP) -> result."""

from __future__ import annotations

import base64
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from handler import handler
from presets import drawing, rubber_tile
from schemas.job import parse_job
from schemas.presets import COLOR_RGB
from tests.contract import assert_txt2img_conforms
from tests.replay import ReplayServer
from tests.support.jobs import JobRunner
from tests.support.jobs import txt2img_bodies as bodies  # the name the assertions below use
from tests.support.worker import point_worker_at

RED_BLUE = [{"name": "red", "proportion": 60}, {"name": "blue", "proportion": 40}]
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def sdxl_env(monkeypatch: pytest.MonkeyPatch, sdxl_replay: ReplayServer, models_dir: Path) -> ReplayServer:
    # Private addresses stay refused: the catalog's ControlNet sources are public hosts, which
    # this offline machine cannot resolve, so a missing model fails fast instead of retrying.
    point_worker_at(monkeypatch, sdxl_replay.url, models_dir, allow_private=False)
    return sdxl_replay


run = JobRunner(job_id="rt", base={"preset": "rubber_tile"}).fields


def test_two_generations_and_a_colour_map(sdxl_env):
    out = run(colors=RED_BLUE, angle=0, quality="standard", seed=1234)
    assert "error" not in out, out
    preview, final = bodies(sdxl_env)
    for body in (preview, final):
        assert_txt2img_conforms(body, "a1111")
        assert body["sampler_name"] == "DPM++ 2M" and body["scheduler"] == "Karras"
        assert body["cfg_scale"] == 6.5 and body["seed"] == 1234
        assert "60% red, 40% blue" in body["prompt"]
        assert "<lora:rubber-tile-lora-v4_sdxl_lora:0.7>" in body["prompt"]
        assert body["prompt"].startswith("ohwx_rubber_tile rubber_tile_sdxl, ")
        assert body["negative_prompt"] == rubber_tile.NEGATIVE_PROMPT
        assert body["override_settings"]["sd_model_checkpoint"].startswith("sd_xl_base_1.0")
        assert "alwayson_scripts" not in body  # angle 0: no ControlNet
    assert (preview["width"], preview["height"], preview["steps"]) == (512, 512, 35)
    assert (final["width"], final["height"], final["steps"]) == (1024, 1024, 50)

    assert len(out["images"]) == 3
    assert out["labels"] == ["preview", "final", "colormap"]
    raw = base64.b64decode(out["images"][2])
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    arr = np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))
    red = int(np.all(arr == COLOR_RGB["red"], axis=-1).sum())
    blue = int(np.all(arr == COLOR_RGB["blue"], axis=-1).sum())
    assert red > 10_000 and red / blue == pytest.approx(60 / 40, rel=0.01)


def test_random_seed_is_shared_by_both_steps(sdxl_env):
    out = run(colors=[{"name": "green", "proportion": 100}], quality="high")
    assert "error" not in out, out
    preview, final = bodies(sdxl_env)
    assert preview["seed"] == final["seed"] and preview["seed"] >= 0
    assert (preview["steps"], final["steps"], final["cfg_scale"]) == (40, 60, 6.0)


@pytest.mark.parametrize(("colors", "field", "words"), [
    ([{"name": "red", "proportion": 60}, {"name": "blue", "proportion": 30}], "colors", "sum to 100, got 90"),
    ([{"name": "turquoise", "proportion": 100}], "colors[0].name", "red"),
    ([{"name": "red", "proportion": 50.5}, {"name": "blue", "proportion": 49.5}], "colors[0].proportion", ""),
    ([{"name": "red", "proportion": 50}, {"name": "red", "proportion": 50}], "colors", "repeated: red"),
    ([], "colors", "needs colors"),
])
def test_bad_colours_are_validation_errors(sdxl_env, colors, field, words):
    out = run(colors=colors)
    assert out["error_type"] == "validation", out
    assert field in {d["field"] for d in out["details"]}
    assert words in json.dumps(out)
    assert bodies(sdxl_env) == [] and sdxl_env.requests == []


def test_angle_and_quality_ranges(sdxl_env):
    out = run(colors=RED_BLUE, angle=200, quality="ultra")
    assert out["error_type"] == "validation"
    assert {"angle", "quality"} <= {d["field"] for d in out["details"]}
    out = run(colors=RED_BLUE, width=768, steps=20)
    assert out["error_type"] == "validation" and {"width", "steps"} <= {d["field"] for d in out["details"]}
    assert "512x512 preview" in out["error"]


def test_preset_fields_need_the_preset(sdxl_env):
    out = handler({"id": "x", "input": {"prompt": "a tile", "colors": RED_BLUE, "angle": 45}})
    assert out["error_type"] == "validation"
    assert {"colors", "angle"} <= {d["field"] for d in out["details"]}


def test_caller_fields_override_preset_defaults(sdxl_env):
    out = run(colors=RED_BLUE, negative_prompt="glossy", cfg_scale=5.0, prompt="top view")
    assert "error" not in out, out
    for body in bodies(sdxl_env):
        assert body["negative_prompt"] == "glossy" and body["cfg_scale"] == 5.0
        assert "detailed texture, top view" in body["prompt"]


# --------------------------------------------------------------------------- angles
@pytest.mark.parametrize(("angle", "kind"), [
    (0, None), (180, None), (45, "softedge"), (135, "softedge"), (90, "canny"),
    (10, "softedge"), (67, "softedge"), (68, "canny"), (112, "canny"), (113, "softedge"), (179, "softedge"),
])
def test_angle_to_controlnet_type(angle, kind):
    assert rubber_tile.control_kind(angle) == kind


def test_angle_45_adds_a_softedge_unit_with_a_drawn_control_image():
    job = parse_job({"preset": "rubber_tile", "colors": RED_BLUE, "angle": 45, "seed": 7})
    steps = rubber_tile.expand(job, None, None)
    assert [label for label, _ in steps] == ["preview", "final"]
    for (_, step), size in zip(steps, (512, 1024), strict=True):
        (unit,) = step.controlnet
        assert unit.module == rubber_tile.DEFAULTS["controlnet"]["softedge"]["module"]
        assert unit.model == rubber_tile.DEFAULTS["controlnet"]["softedge"]["model"]
        img = Image.open(io.BytesIO(base64.b64decode(unit.image)))
        assert img.size == (size, size)
        assert np.asarray(img.convert("L")).astype(int).tolist() == \
            np.asarray(drawing.tile_joints(45, size, size).convert("L")).astype(int).tolist()


def test_angle_90_uses_canny():
    job = parse_job({"preset": "rubber_tile", "colors": RED_BLUE, "angle": 90})
    (_, step), _ = rubber_tile.expand(job, None, None)
    assert step.controlnet[0].module == "canny"


def _catalog_with(tmp_path: Path, rubber: dict) -> Path:
    path = tmp_path / "models.json"
    base = json.loads((ROOT / "models.json").read_text()) if (ROOT / "models.json").exists() else {"models": []}
    base.setdefault("presets", {})["rubber_tile"] = {**base.get("presets", {}).get("rubber_tile", {}), **rubber}
    path.write_text(json.dumps(base))
    return path


def test_angle_45_end_to_end_with_a_listed_controlnet_model(sdxl_env, monkeypatch, tmp_path):
    # The recordings list one ControlNet model (an SD1.5 canny file); the preset's models are
    # configurable in models.json, so point SoftEdge at it: the API shape is what is tested.
    monkeypatch.setenv("MODELS_CATALOG", str(_catalog_with(tmp_path, {
        "controlnet": {"softedge": {"module": "pidinet", "model": "control_v11p_sd15_canny"}}})))
    sdxl_env.respond("GET", "/controlnet/model_list", "ext_controlnet_model_list_after_adding_model")
    out = run(colors=RED_BLUE, angle=45, seed=3)
    assert "error" not in out, out
    preview, final = bodies(sdxl_env)
    for body, size in ((preview, 512), (final, 1024)):
        assert_txt2img_conforms(body, "a1111")
        (unit,) = body["alwayson_scripts"]["controlnet"]["args"]
        assert unit["enabled"] is True and unit["module"] == "pidinet"
        assert unit["model"] == "control_v11p_sd15_canny" and unit["save_detected_map"] is False
        assert Image.open(io.BytesIO(base64.b64decode(unit["image"]))).size == (size, size)
    assert out["labels"] == ["preview", "final", "colormap"]


def test_angle_45_with_a_missing_controlnet_model_fails_before_generation(sdxl_env, models_dir):
    # Nothing listed by the extension, nothing on the volume, no network: the catalog's SDXL
    # SoftEdge model cannot be placed, and the job says so before any generation.
    out = run(colors=RED_BLUE, angle=45)
    assert "error" in out and "controlnet[0].model" in out["error"]
    assert "sargezt_xl_softedge" in out["error"]  # the catalog file the unit names
    assert bodies(sdxl_env) == []
    assert not any((models_dir / "controlnet").iterdir())  # nothing half-written


def test_preview_prompt_matches_the_recorded_canonical_request(sdxl_env):
    # txt2img_sdxl_rubber_tile_preview was recorded with the preset's intended prompt, negative
    # prompt and LoRA tag; the preset must produce exactly those strings.
    recorded = sdxl_env.recording("txt2img_sdxl_rubber_tile_preview")["request"]["json"]
    out = run(colors=RED_BLUE, seed=42)
    assert "error" not in out, out
    preview = bodies(sdxl_env)[0]
    for key in ("prompt", "negative_prompt", "sampler_name", "scheduler", "cfg_scale", "seed"):
        assert preview[key] == recorded[key], key


def test_missing_rubber_tile_files_name_their_expected_paths(monkeypatch, replay, models_dir):
    # The SD1.5 server lists none of the rubber-tile files, the volume is empty, and the
    # LoRA / TI have no public source: the error says where each file is expected.
    point_worker_at(monkeypatch, replay.url, models_dir, allow_private=False)
    out = run(colors=RED_BLUE)
    assert "error" in out
    by_field = {d["field"]: d["message"] for d in out["details"]}
    assert str(models_dir / "loras" / "rubber-tile-lora-v4_sdxl_lora.safetensors") in by_field["loras[0]"]
    assert "rubber-tile-lora-v4_sdxl_embeddings.safetensors" in by_field["embeddings[0]"]
    assert bodies(replay) == []
