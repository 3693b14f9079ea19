"""Extension inputs: validation rules and the argument shapes the real extensions expect
(checked against the recorded /adetailer/v1/schema and /sdapi/v1/script-info)."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from pydantic import ValidationError

from a1111.extensions import adetailer_args, controlnet_args
from a1111.matching import controlnet_model_listed
from presets import drawing
from schemas.extensions import ADetailerUnit, ControlNetUnit, HiresSpec, adetailer_units

REC = Path(__file__).parent / "recordings" / "a1111"
PNG = drawing.png_base64(drawing.tile_joints(45, 64, 64))


def _rec(name: str) -> dict:
    return json.loads((REC / f"{name}.json").read_text())["response"]["json"]


def _script_args(name: str) -> list:
    return next(s for s in _rec("ext_get_script_info") if s["name"] == name and not s["is_img2img"])["args"]


def test_hires_defaults_and_ranges():
    h = HiresSpec()
    assert (h.scale, h.upscaler, h.steps, h.denoising_strength) == (2.0, "Latent", 0, 0.5)
    for bad in ({"scale": 4.5}, {"scale": 0.5}, {"denoising_strength": 1.2}, {"steps": -1}, {"upscaler": ""},
                {"denoise": 0.3}):
        with pytest.raises(ValidationError):
            HiresSpec(**bad)


def test_adetailer_unit_rules():
    assert ADetailerUnit(model="face_yolov8s.pt").confidence == 0.3
    for bad in ({"model": "None"}, {"model": "x.pt", "confidence": 2}, {"model": "x.pt", "ad_prompt": "typo"}, {}):
        with pytest.raises(ValidationError):
            ADetailerUnit(**bad)


def test_adetailer_true_means_face_and_hand():
    assert [u.model for u in adetailer_units(True)] == ["face_yolov8s.pt", "hand_yolov8s.pt"]
    assert adetailer_units(False) == [] and adetailer_units(None) == []


def test_adetailer_args_match_recorded_schema_exactly():
    schema = _rec("ext_adetailer_schema")
    args = adetailer_args(ADetailerUnit(model="face_yolov8s.pt", prompt="a face", confidence=0.5))
    # ADetailerArgs is extra=forbid: one unknown key and the unit is silently skipped.
    assert set(args) <= set(schema["properties"])
    jsonschema.validate(args, schema)
    # and the keys are the ones the tab dicts of script-info carry
    tab = _script_args("adetailer")[2]["value"]
    assert set(args) <= set(tab)


def test_controlnet_unit_rules():
    u = ControlNetUnit(model="control_v11p_sd15_canny", image="data:image/png;base64," + PNG)
    assert u.image == PNG and u.module == "none"
    for bad in ({"model": "None", "image": PNG}, {"model": "m", "image": "not base64!"},
                {"model": "m", "image": "aGVsbG8="},  # valid base64, not an image
                {"model": "m", "image": PNG, "guidance_start": 0.8, "guidance_end": 0.2},
                {"model": "m", "image": PNG, "control_mode": 2}, {"model": "m", "image": PNG, "input_image": PNG}):
        with pytest.raises(ValidationError):
            ControlNetUnit(**bad)


def test_controlnet_args_enabled_and_keys_known_to_the_extension():
    unit = ControlNetUnit(module="canny", model="control_v11p_sd15_canny [f8cfe9b1]", image=PNG)
    args = controlnet_args(unit, save_detected_map=False)
    assert args["enabled"] is True and args["save_detected_map"] is False and args["image"] == PNG
    assert "input_image" not in args
    assert set(args) <= set(_script_args("controlnet")[0]["value"])
    assert controlnet_args(unit, save_detected_map=True)["save_detected_map"] is True


def test_controlnet_model_name_matching():
    listed = _rec("ext_controlnet_model_list_after_adding_model")["model_list"]
    assert controlnet_model_listed("control_v11p_sd15_canny [f8cfe9b1]", listed)
    assert controlnet_model_listed("control_v11p_sd15_canny", listed)
    assert controlnet_model_listed("Control_V11p_SD15_Canny.safetensors", listed)
    assert not controlnet_model_listed("control_v11p_sd15_depth", listed)
    assert not controlnet_model_listed("control_v11p_sd15_canny", _rec("ext_controlnet_model_list")["model_list"])
