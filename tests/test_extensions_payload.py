"""Hires fix, ADetailer and ControlNet through the handler, over real HTTP against the
replay server: the payloads validate against the recorded OpenAPI schema, avoid the API's
traps (Forge-only hires fields sent to A1111, Forge's hr_cfg default, a null
hr_additional_modules, ControlNet's detect map returned as an image), and unknown names
are rejected before any txt2img is sent."""

from __future__ import annotations

from presets import drawing
from tests.contract import assert_txt2img_conforms
from tests.support.jobs import JobRunner, txt2img_bodies

PNG = drawing.png_base64(drawing.tile_joints(90, 64, 64))
BASE = {"prompt": "a rubber tile", "steps": 1, "width": 64, "height": 64, "seed": 42, "sampler_name": "Euler"}

run = JobRunner(base=BASE)


# --------------------------------------------------------------------------- hires fix
def test_hires_payload_a1111(worker_env):
    worker_env.respond("POST", "/sdapi/v1/txt2img", "txt2img_hires_latent")
    out = run({"hires": {"scale": 1.5, "upscaler": "Latent", "steps": 1, "denoising_strength": 0.5}})
    assert "error" not in out, out
    (body,) = txt2img_bodies(worker_env)
    assert body["enable_hr"] is True and body["hr_scale"] == 1.5 and body["hr_upscaler"] == "Latent"
    assert body["hr_second_pass_steps"] == 1 and body["denoising_strength"] == 0.5
    assert "hr_sampler_name" not in body and "hr_scheduler" not in body
    assert "hr_cfg" not in body and "hr_additional_modules" not in body  # Forge-only fields
    assert_txt2img_conforms(body, "a1111")


def test_hires_defaults_send_explicit_denoising(worker_env):
    out = run({"hires": {}})
    assert "error" not in out, out
    (body,) = txt2img_bodies(worker_env)
    assert body["denoising_strength"] == 0.5 and body["hr_upscaler"] == "Latent" and body["hr_scale"] == 2.0


def test_hires_esrgan_upscaler_from_the_live_list(worker_env):
    assert "error" not in run({"hires": {"upscaler": "R-ESRGAN 4x+", "scale": 2}})
    assert txt2img_bodies(worker_env)[0]["hr_upscaler"] == "R-ESRGAN 4x+"


def test_unknown_upscaler_rejected_before_generation(worker_env):
    out = run({"hires": {"upscaler": "4x-UltraSharp"}})
    assert out["error_type"] in {"model_not_found", "validation"}
    assert "4x-UltraSharp" in out["error"] and "hires.upscaler" in out["error"]
    assert txt2img_bodies(worker_env) == []


def test_hires_payload_forge_sets_hr_cfg_and_modules(forge_env):
    forge_env.respond("POST", "/sdapi/v1/txt2img", "txt2img_hires_latent_use_same_choices")
    out = run({"cfg_scale": 5.0, "hires": {"scale": 1.5, "steps": 1}})
    assert "error" not in out, out
    (body,) = txt2img_bodies(forge_env)
    assert body["hr_cfg"] == 5.0  # Forge's default 1.0 would drop the negative prompt
    assert body["hr_additional_modules"] == ["Use same choices"]  # null is a 500 on Forge
    assert "hr_sampler_name" not in body
    assert_txt2img_conforms(body, "forge")


# --------------------------------------------------------------------------- ADetailer
def test_adetailer_payload(worker_env):
    worker_env.respond("POST", "/sdapi/v1/txt2img", "ext_txt2img_adetailer_face_yolov8s_absent")
    out = run({"adetailer": [{"model": "mediapipe_face_full", "prompt": "detailed face", "confidence": 0.4}]})
    assert "error" not in out, out
    (body,) = txt2img_bodies(worker_env)
    args = body["alwayson_scripts"]["ADetailer"]["args"]
    assert args[:2] == [True, False]
    assert args[2] == {"ad_model": "mediapipe_face_full", "ad_prompt": "detailed face", "ad_negative_prompt": "",
                       "ad_confidence": 0.4, "ad_denoising_strength": 0.4}
    assert_txt2img_conforms(body, "a1111")


def test_adetailer_unknown_detector_rejected_before_generation(worker_env):
    # The recorded server lists only the mediapipe models (YOLO downloads failed offline);
    # the real extension answers 200 with an untouched image for a missing model.
    out = run({"adetailer": [{"model": "face_yolov8s.pt"}, {"model": "mediapipe_face_ful"}]})
    assert out["error_type"] in {"model_not_found", "validation"}
    fields = {d["field"] for d in out["details"]}
    assert {"adetailer[0].model", "adetailer[1].model"} <= fields
    assert any("mediapipe_face_full" in d["message"] for d in out["details"])  # suggestion
    assert txt2img_bodies(worker_env) == []


def test_adetailer_true_without_the_extension_is_a_clear_error(forge_env):
    out = run({"adetailer": True})
    assert "ADetailer" in out["error"]
    assert txt2img_bodies(forge_env) == []


# --------------------------------------------------------------------------- ControlNet
def _canny(**kw) -> dict:
    return {"module": "canny", "model": "control_v11p_sd15_canny", "image": PNG, **kw}


def test_controlnet_payload_and_detect_map_dropped(worker_env):
    worker_env.respond("GET", "/controlnet/model_list", "ext_controlnet_model_list_after_adding_model")
    worker_env.respond("POST", "/sdapi/v1/txt2img", "ext_txt2img_controlnet_canny_with_model")
    out = run({"controlnet": [_canny(weight=0.8, guidance_end=0.9, control_mode="ControlNet is more important")]})
    assert "error" not in out, out
    (body,) = txt2img_bodies(worker_env)
    (unit,) = body["alwayson_scripts"]["controlnet"]["args"]
    assert unit["enabled"] is True and unit["image"] == PNG and unit["save_detected_map"] is False
    assert (unit["module"], unit["model"], unit["weight"], unit["guidance_end"]) == (
        "canny", "control_v11p_sd15_canny", 0.8, 0.9)
    assert unit["control_mode"] == "ControlNet is more important"
    assert_txt2img_conforms(body, "a1111")
    # The recorded answer carries the generated image + the appended detect map.
    assert len(out["images"]) == 1 and out["seeds"] == [42]


def test_controlnet_return_control_maps_keeps_the_map(worker_env):
    worker_env.respond("GET", "/controlnet/model_list", "ext_controlnet_model_list_after_adding_model")
    worker_env.respond("POST", "/sdapi/v1/txt2img", "ext_txt2img_controlnet_canny_with_model_save_detected_map_true")
    out = run({"controlnet": [_canny()], "return_control_maps": True})
    assert "error" not in out, out
    assert txt2img_bodies(worker_env)[0]["alwayson_scripts"]["controlnet"]["args"][0]["save_detected_map"] is True
    assert len(out["images"]) == 2


def test_controlnet_unknown_model_rejected_before_generation(worker_env):
    # Default recording: the extension lists no model at all.
    out = run({"controlnet": [_canny()]})
    assert out["error_type"] in {"model_not_found", "validation"}
    assert "control_v11p_sd15_canny" in out["error"]
    assert txt2img_bodies(worker_env) == []


def test_controlnet_unknown_module_rejected(worker_env):
    worker_env.respond("GET", "/controlnet/model_list", "ext_controlnet_model_list_after_adding_model")
    out = run({"controlnet": [_canny(module="softedge_pidinetx")]})
    assert "controlnet[0].module" in {d["field"] for d in out["details"]}
    assert txt2img_bodies(worker_env) == []


def test_controlnet_bad_image_is_a_validation_error(worker_env):
    out = run({"controlnet": [_canny(image="bm90IGFuIGltYWdl")]})
    assert out["error_type"] == "validation" and "controlnet" in out["error"]
    assert worker_env.requests == [] or txt2img_bodies(worker_env) == []
