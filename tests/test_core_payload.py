"""Pure parts: sampler splitting, LoRA family, payload compiler, result packaging.

Lists and responses are the recorded ones (tests/recordings), not hand-made.
"""

from __future__ import annotations

import json

import pytest

from a1111.matching import find_checkpoint, find_lora, resolve_sampler, split_sampler
from a1111.payload import compile_txt2img, compile_warnings
from a1111.resolved import Resolved, ResolvedLora
from a1111.results import combine, package
from cache.inspect import family_from_metadata as lora_family_from_metadata
from schemas.errors import ValidationFailed
from schemas.job import parse_job
from tests.contract import txt2img_problems
from tests.replay import recordings

A = recordings("a1111")
F = recordings("forge")


def body(folder: dict, name: str):
    return folder[name]["response"]["json"]


SAMPLERS = body(A, "get_samplers")
SCHEDULERS = body(A, "get_schedulers")


@pytest.mark.parametrize("name, expected", [
    ("DPM++ 2M", ("DPM++ 2M", None)),
    ("dpm++ 2m", ("DPM++ 2M", None)),
    ("k_dpmpp_2m", ("DPM++ 2M", None)),          # alias
    ("Euler a", ("Euler a", None)),
    ("DPM++ 2M Karras", ("DPM++ 2M", "Karras")),
    ("DPM++ SDE Karras", ("DPM++ SDE", "Karras")),
    ("DPM++ 2M SDE Exponential", ("DPM++ 2M SDE", "Exponential")),
    ("Euler a Karras", ("Euler a", "Karras")),
    ("Euler SGMUniform", ("Euler", "SGM Uniform")),
    # A1111 maps this one to DPM++ 2M + Uniform (first suffix in list order): we do not.
    ("Euler SGM Uniform", ("Euler", "SGM Uniform")),
    ("DDIM", ("DDIM", None)),
    ("LMS", ("LMS", None)),
    ("Heun", ("Heun", None)),
    ("UniPC", ("UniPC", None)),
    ("Eular a", None),
    ("Totally Unknown Sampler", None),
    ("Karras", None),
])
def test_split_sampler(name, expected):
    assert split_sampler(name, SAMPLERS, SCHEDULERS) == expected


def test_resolve_sampler_defaults_and_conflicts():
    assert resolve_sampler(None, None, SAMPLERS, SCHEDULERS) == ("DPM++ 2M", "Automatic", [])
    assert resolve_sampler("DPM++ 2M", "karras", SAMPLERS, SCHEDULERS) == ("DPM++ 2M", "Karras", [])
    assert resolve_sampler("DPM++ 2M Karras", "Karras", SAMPLERS, SCHEDULERS)[2] == []
    _, _, problems = resolve_sampler("DPM++ 2M Karras", "Exponential", SAMPLERS, SCHEDULERS)
    assert [p["field"] for p in problems] == ["scheduler"]
    _, _, problems = resolve_sampler("Eular a", "Karas", SAMPLERS, SCHEDULERS)
    assert [p["field"] for p in problems] == ["sampler_name", "scheduler"]
    assert "did you mean 'Euler a'" in problems[0]["message"]
    assert "did you mean 'Karras'" in problems[1]["message"]


def test_forge_samplers_and_schedulers():
    s, f = body(F, "get_samplers"), body(F, "get_schedulers")
    assert split_sampler("IPNDM", s, f) == ("IPNDM", None)
    assert split_sampler("Euler Turbo", s, f) == ("Euler", "Turbo")
    assert split_sampler("IPNDM", SAMPLERS, SCHEDULERS) is None  # A1111 has no IPNDM


def test_lora_family_from_recorded_metadata():
    loras = body(A, "sdxl_get_loras")
    fam = {e["name"]: lora_family_from_metadata(e["metadata"]) for e in loras}
    assert fam["detail_tweaker"] == "sd15"
    assert fam["rubber-tile-lora-v4_sdxl_lora"] == "sdxl"
    assert lora_family_from_metadata({"modelspec.architecture": "flux-1-dev/lora"}) == "flux"
    assert lora_family_from_metadata({}) is None


def test_find_checkpoint_and_lora():
    models = body(A, "get_sd_models")
    for name in ("model_b", "model_b.safetensors", "MODEL_B", "/runpod-volume/models/checkpoints/model_b.safetensors"
                 .rsplit("/", 1)[-1]):
        assert find_checkpoint(name, models)["title"] == "model_b.safetensors"
    assert find_checkpoint("model_c", models) is None
    hashed = [{"title": "sdxl/foo.safetensors [abcdef0123]", "model_name": "sdxl_foo",
               "filename": "/m/checkpoints/sdxl/foo.safetensors"}]
    assert find_checkpoint("foo", hashed) is hashed[0]
    assert find_checkpoint("sdxl/foo.safetensors", hashed) is hashed[0]
    loras = body(A, "get_loras")
    assert find_lora("Detail_Tweaker", loras)["name"] == "detail_tweaker"
    assert find_lora("film_grain.safetensors", loras)["name"] == "film_grain"
    assert find_lora("grain", loras) is None


def resolved(**kw) -> Resolved:
    base = dict(checkpoint="model_a.safetensors", checkpoint_name="model_a", family="sd15",
                sampler="DPM++ 2M", scheduler="Automatic")
    base.update(kw)
    return Resolved(**base)


def test_compile_minimal_states_checkpoint_and_clip_skip():
    payload = compile_txt2img(parse_job({"prompt": "a cat"}), resolved(), "a1111")
    assert payload == {
        "prompt": "a cat", "negative_prompt": "", "sampler_name": "DPM++ 2M", "scheduler": "Automatic",
        "steps": 20, "cfg_scale": 7.0, "width": 512, "height": 512, "seed": -1, "batch_size": 1, "n_iter": 1,
        "override_settings": {"sd_model_checkpoint": "model_a.safetensors", "CLIP_stop_at_last_layers": 1,
                              "sdxl_clip_l_skip": False},
        "override_settings_restore_afterwards": False,
    }
    assert txt2img_problems(payload, "a1111") == []
    for banned in ("eta", "s_noise", "s_churn", "s_tmin", "s_tmax", "clip_skip", "sampler_index"):
        assert banned not in payload


def test_compile_loras_clip_skip_sdxl_defaults():
    job = parse_job({"prompt": "tile", "clip_skip": 2, "steps": 30, "cfg_scale": 6.5, "seed": 42})
    r = resolved(family="sdxl", checkpoint="sd_xl_base_1.0.safetensors", checkpoint_name="sd_xl_base_1.0",
                 loras=[ResolvedLora("detail_tweaker", 0.8, "sd15"), ResolvedLora("film_grain", 0.4, "sd15"),
                        ResolvedLora("neg", -1.25, None)])
    payload = compile_txt2img(job, r, "a1111")
    assert payload["prompt"] == "tile <lora:detail_tweaker:0.8> <lora:film_grain:0.4> <lora:neg:-1.25>"
    assert (payload["width"], payload["height"]) == (1024, 1024)
    assert payload["override_settings"]["CLIP_stop_at_last_layers"] == 2
    assert payload["override_settings"]["sdxl_clip_l_skip"] is True
    assert compile_warnings(job, r, "a1111") and "sdxl_clip_l_skip" in compile_warnings(job, r, "a1111")[0]
    assert compile_warnings(job, r, "forge") == []
    forge = compile_txt2img(job, r, "forge")
    assert "sdxl_clip_l_skip" not in forge["override_settings"]
    assert txt2img_problems(payload, "a1111") == [] and txt2img_problems(forge, "forge") == []


def test_compile_hires_per_backend():
    job = parse_job({"prompt": "x", "cfg_scale": 5.0,
                     "hires": {"scale": 1.5, "upscaler": "Latent", "steps": 1, "denoising_strength": 0.5}})
    a = compile_txt2img(job, resolved(), "a1111")
    assert a["enable_hr"] is True and a["denoising_strength"] == 0.5 and "hr_cfg" not in a
    f = compile_txt2img(job, resolved(), "forge")
    assert f["hr_cfg"] == 5.0 and f["hr_additional_modules"] == ["Use same choices"]
    assert txt2img_problems(a, "a1111") == [] and txt2img_problems(f, "forge") == []


def test_compile_forge_only_fields():
    job = parse_job({"prompt": "x", "distilled_cfg_scale": 3.7})
    assert compile_txt2img(job, resolved(), "forge")["distilled_cfg_scale"] == 3.7
    with pytest.raises(ValidationFailed) as info:
        compile_txt2img(job, resolved(), "a1111")
    assert info.value.details[0]["field"] == "distilled_cfg_scale"


def test_escape_hatch_merges_but_never_overrides_the_job():
    job = parse_job({"prompt": "x", "a1111": {"tiling": True, "subseed": 7,
                                              "override_settings": {"eta_noise_seed_delta": 31337}}})
    payload = compile_txt2img(job, resolved(), "a1111")
    assert payload["tiling"] is True and payload["subseed"] == 7
    assert payload["override_settings"]["eta_noise_seed_delta"] == 31337
    assert payload["override_settings"]["sd_model_checkpoint"] == "model_a.safetensors"
    bad = parse_job({"prompt": "x", "a1111": {"steps": 3, "save_images": True,
                                              "override_settings": {"CLIP_stop_at_last_layers": 2}}})
    with pytest.raises(ValidationFailed) as info:
        compile_txt2img(bad, resolved(), "a1111")
    assert sorted(d["field"] for d in info.value.details) == [
        "a1111.override_settings.CLIP_stop_at_last_layers", "a1111.save_images", "a1111.steps"]


def test_compile_is_pure():
    job = parse_job({"prompt": "x", "loras": [{"name": "a", "weight": 0.5}]})
    r = resolved(loras=[ResolvedLora("a", 0.5, None)])
    assert compile_txt2img(job, r, "a1111") == compile_txt2img(job, r, "a1111")
    assert job.prompt == "x" and r.warnings == []


def test_package_recorded_batch():
    rec = A["txt2img_batch_size_2"]
    out = package(rec["response"]["json"], {"prompt": "x"}, resolved(sampler="Euler"),
                  timings={"generate_s": 1.0}).result
    info = json.loads(rec["response"]["json"]["info"])
    assert out["images"] == rec["response"]["json"]["images"]  # untouched
    assert out["seeds"] == info["all_seeds"] and len(out["seeds"]) == 2
    assert out["info"] == info
    assert out["parameters"] == {"prompt": "x"}
    assert out["models"]["checkpoint"] == "model_a.safetensors"


def test_package_drops_controlnet_maps_unless_asked():
    rec = A["ext_txt2img_controlnet_canny_with_model"]
    resp = rec["response"]["json"]
    assert len(resp["images"]) == 2  # generated image + appended detect map
    out = package(resp, rec["request"]["json"], resolved(sampler=json.loads(resp["info"])["sampler_name"])).result
    assert out["images"] == resp["images"][:1]
    assert package(resp, {}, resolved(), return_control_maps=True).result["images"] == resp["images"]
    # the control image the caller sent is not echoed back in full
    assert "omitted" in json.dumps(out["parameters"])


def test_package_warns_when_a1111_ran_something_else():
    rec = A["txt2img_minimal"]  # ran model_a with Euler
    out = package(rec["response"]["json"], {}, resolved(checkpoint="model_b.safetensors",
                                                        checkpoint_name="model_b")).result
    assert any("model_a" in w for w in out["warnings"])
    assert any("Euler" in w for w in out["warnings"])


def test_combine_labels_steps():
    rec = A["txt2img_minimal"]["response"]["json"]
    one = package(rec, {"prompt": "p"}, resolved(sampler="Euler"), timings={"generate_s": 1.0})
    two = package(rec, {"prompt": "f"}, resolved(sampler="Euler"), timings={"generate_s": 2.0})
    assert combine([(None, one)]) is one
    both = combine([("preview", one), ("final", two)]).result
    assert both["labels"] == ["preview", "final"]
    assert both["images"] == one.result["images"] + two.result["images"]
    assert both["timings"]["generate_s"] == 3.0
    assert set(both["parameters"]) == {"preview", "final"}


@pytest.mark.parametrize("backend", ["a1111", "forge"])
def test_contract_check_catches_what_a1111_would_drop_or_refuse(backend):
    assert txt2img_problems({"prompt": "x", "steps": 20}, backend) == []
    problems = txt2img_problems({"prompt": "x", "steps": "20", "guidance_scale": 7, "override_settings": []},
                                backend)
    assert [p.split(":")[0] for p in problems] == ["override_settings", "steps", "guidance_scale"]
    # Forge-only fields are not in A1111's schema
    assert txt2img_problems({"prompt": "x", "hr_additional_modules": ["Use same choices"]}, backend) == (
        [] if backend == "forge" else
        ["hr_additional_modules: not a field of the a1111 txt2img schema (it would be dropped silently)"])


def test_package_checks_the_schedule_type_a1111_reports():
    resp = A["txt2img_sampler_dpmpp2m_scheduler_karras"]["response"]["json"]
    assert package(resp, {}, resolved(scheduler="Karras")).result["warnings"] == []
    out = package(resp, {}, resolved(scheduler="Exponential")).result
    assert out["warnings"] == ["A1111 reports schedule type 'Karras', not the requested 'Exponential'"]
