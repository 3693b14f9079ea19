"""The core path end to end: handler -> real HTTP -> replay A1111 (and Forge) -> output.

Every test runs against both backends' recordings (WEBUI_BACKEND=a1111 and =forge), and
every txt2img body the handler sent is checked against that backend's recorded OpenAPI
schema when the test ends (tests/contract.py).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import handler as worker_module
from tests.replay import ReplayServer
from tests.support.jobs import TXT2IMG, JobRunner
from tests.support.jobs import job_like as like  # the name the tests below use
from tests.support.model_files import SDXL_CHECKPOINT_TENSORS, write_safetensors_header
from tests.support.worker import running_worker, start_worker, stop_and_check, write_catalog


@pytest.fixture(params=["a1111", "forge"])
def worker(request, monkeypatch, tmp_path, models_dir) -> Iterator[ReplayServer]:
    with running_worker(request.param, monkeypatch, tmp_path, models_dir) as srv:
        yield srv


run = JobRunner()


def recorded_response(srv: ReplayServer, name: str) -> dict:
    return srv.recording(name)["response"]["json"]


def only_txt2img(srv: ReplayServer) -> dict:
    sent = srv.sent("POST", TXT2IMG)
    assert len(sent) == 1, f"expected exactly one txt2img, got {len(sent)}"
    return sent[0]


# --------------------------------------------------------------------------- the "done when" list
def test_plain_prompt_returns_images(worker):
    out = run({"prompt": "a photo of a cat"})
    assert "error" not in out, out
    resp = recorded_response(worker, "txt2img_minimal")
    info = json.loads(resp["info"])
    assert out["images"] == resp["images"]  # passed through untouched
    assert out["seeds"] == info["all_seeds"]
    assert out["info"] == info
    body = only_txt2img(worker)
    assert out["parameters"] == body
    assert body["prompt"] == "a photo of a cat"
    assert body["override_settings"]["CLIP_stop_at_last_layers"] == 1  # stated in every payload
    assert body["override_settings"]["sd_model_checkpoint"] == "model_a.safetensors"  # the loaded one
    assert body["override_settings_restore_afterwards"] is False
    assert set(out["timings"]) >= {"resolve_s", "generate_s", "total_s"}
    assert out["models"]["checkpoint"] == "model_a.safetensors"


def test_legacy_sampler_name_is_split(worker):
    out = run(like(worker, "txt2img_sampler_legacy_dpmpp2m_karras", sampler_name="DPM++ 2M Karras"))
    assert "error" not in out, out
    body = only_txt2img(worker)
    assert (body["sampler_name"], body["scheduler"]) == ("DPM++ 2M", "Karras")
    assert out["info"]["sampler_name"] == "DPM++ 2M"
    assert out["info"]["extra_generation_params"]["Schedule type"] == "Karras"
    assert not any("sampler" in w for w in out["warnings"])


def test_clip_skip_goes_to_override_settings(worker):
    out = run(like(worker, "txt2img_clip_skip_2", clip_skip=2))
    assert "error" not in out, out
    body = only_txt2img(worker)
    assert body["override_settings"]["CLIP_stop_at_last_layers"] == 2
    assert "clip_skip" not in body  # A1111 ignores a top-level clip_skip
    assert out["info"]["clip_skip"] == 2


def test_clip_skip_does_not_leak_into_the_next_job(worker):
    worker.respond("POST", TXT2IMG, "txt2img_clip_skip_2")
    run({"prompt": "a cat", "clip_skip": 2})
    run({"prompt": "a cat"})
    first, second = worker.sent("POST", TXT2IMG)
    assert first["override_settings"]["CLIP_stop_at_last_layers"] == 2
    assert second["override_settings"]["CLIP_stop_at_last_layers"] == 1


def test_checkpoint_by_name_sends_exact_title_without_restore(worker):
    out = run(like(worker, "txt2img_override_checkpoint_restore_false", checkpoint="model_b"))
    assert "error" not in out, out
    body = only_txt2img(worker)
    assert body["override_settings"]["sd_model_checkpoint"] == "model_b.safetensors"
    assert body["override_settings_restore_afterwards"] is False
    assert out["info"]["sd_model_name"] == "model_b"
    assert out["models"]["checkpoint"] == "model_b.safetensors"
    assert out["warnings"] == []


def test_two_loras_become_two_tags(worker):
    out = run(like(worker, "txt2img_loras_two", loras=[{"name": "detail_tweaker", "weight": 0.8},
                                                      {"name": "film_grain", "weight": 0.4}]))
    assert "error" not in out, out
    body = only_txt2img(worker)
    assert body["prompt"] == "a photo of a cat <lora:detail_tweaker:0.8> <lora:film_grain:0.4>"
    assert body["prompt"] == worker.recording("txt2img_loras_two")["request"]["json"]["prompt"]
    assert out["info"]["prompt"] == body["prompt"]
    assert out["warnings"] == []
    assert out["models"]["loras"] == [{"name": "detail_tweaker", "weight": 0.8},
                                      {"name": "film_grain", "weight": 0.4}]


def test_lora_without_weight_gets_one(worker):
    run({"prompt": "a cat", "loras": [{"name": "Detail_Tweaker"}]})
    assert only_txt2img(worker)["prompt"] == "a cat <lora:detail_tweaker:1>"


@pytest.mark.parametrize("inp, error_type, field, words", [
    ({"loras": [{"name": "detail_tweeker", "weight": 0.8}]}, "model_not_found", "loras[0]",
     "did you mean 'detail_tweaker'"),
    ({"sampler_name": "Eular a"}, "validation", "sampler_name", "did you mean 'Euler a'"),
    ({"scheduler": "Karas"}, "validation", "scheduler", "did you mean 'Karras'"),
    ({"checkpoint": "model_c"}, "model_not_found", "checkpoint", "unknown checkpoint 'model_c'"),
    ({"steps": 500}, "validation", "steps", "1 to 150"),
    ({"width": 70}, "validation", "width", "multiple of 8"),
    ({"guidance_scale": 7.5}, "validation", "guidance_scale", "did you mean 'cfg_scale'"),
])
def test_bad_jobs_fail_before_any_txt2img(worker, inp, error_type, field, words):
    out = run({"prompt": "a cat", **inp})
    assert out["error_type"] == error_type, out
    assert words in out["error"]
    assert [d["field"] for d in out["details"]] == [field]
    assert "Traceback" not in json.dumps(out)
    assert worker.sent("POST", TXT2IMG) == []


def test_every_problem_of_a_job_is_reported_together(worker):
    out = run({"prompt": "a cat", "sampler_name": "Eular a", "checkpoint": "model_c",
               "loras": [{"name": "nope", "weight": 1}]})
    assert sorted(d["field"] for d in out["details"]) == ["checkpoint", "loras[0]", "sampler_name"]
    assert out["error_type"] == "validation"  # not every problem is a missing model
    assert worker.sent("POST", TXT2IMG) == []


def test_batch_returns_every_image_and_seed(worker):
    out = run(like(worker, "txt2img_batch_size_2"))
    assert len(out["images"]) == 2 and len(out["seeds"]) == 2
    assert only_txt2img(worker)["batch_size"] == 2


def test_embedding_is_checked_and_triggered_by_name(worker):
    out = run(like(worker, "txt2img_embedding_in_prompt", embeddings=["rubber_tile"]))
    assert "error" not in out, out
    assert out["models"]["embeddings"] == ["rubber_tile"]
    out = run({"prompt": "a cat", "embeddings": ["rubber_tyle"]})
    assert out["error_type"] == "model_not_found" and "rubber_tile" in out["error"]


def test_hires_fields_per_backend(worker):
    name = "txt2img_hires_latent_use_same_choices" if worker.backend == "forge" else "txt2img_hires_latent"
    out = run(like(worker, name, hires={"scale": 1.5, "upscaler": "Latent", "steps": 1, "denoising_strength": 0.5}))
    assert "error" not in out, out
    body = only_txt2img(worker)
    assert body["enable_hr"] is True and body["denoising_strength"] == 0.5
    if worker.backend == "forge":
        assert body["hr_additional_modules"] == ["Use same choices"] and body["hr_cfg"] == body["cfg_scale"]
    else:
        assert "hr_additional_modules" not in body and "hr_cfg" not in body


def test_escape_hatch_is_checked_against_openapi(worker):
    out = run(like(worker, "txt2img_tiling_true", a1111={"tiling": True}))
    assert "error" not in out, out
    assert only_txt2img(worker)["tiling"] is True
    out = run({"prompt": "a cat", "a1111": {"tilling": True}})
    assert out["error_type"] == "validation" and "did you mean 'tiling'" in out["error"]
    out = run({"prompt": "a cat", "a1111": {"tiling": "yes"}})
    assert out["error_type"] == "validation" and out["details"][0]["field"] == "a1111.tiling"
    assert len(worker.sent("POST", TXT2IMG)) == 1


# --------------------------------------------------------------------------- actions
def test_health(worker):
    out = run({"action": "health"})
    assert out["status"] == "ok" and out["backend"] == worker_module.Settings.from_env().backend
    assert out["checkpoint"] == "model_a.safetensors"
    assert out["memory"] == recorded_response(worker, "get_memory")
    assert out["ping_ms"] >= 0
    assert worker.sent("POST", TXT2IMG) == []


def test_list_models(worker):
    out = run({"action": "list_models"})
    assert [c["title"] for c in out["checkpoints"]] == [e["title"] for e in recorded_response(worker, "get_sd_models")]
    assert {"detail_tweaker", "film_grain"} <= {lo["name"] for lo in out["loras"]}
    assert "DPM++ 2M" in out["samplers"] and "Karras" in out["schedulers"]
    assert "rubber_tile" in {e["name"] for e in out["embeddings"]}
    assert out["catalog"] == []  # MODELS_CATALOG points nowhere in these tests


def test_unknown_action_field_for_health(worker):
    out = run({"action": "health", "prompt": "x"})
    assert out["error_type"] == "validation" and out["details"][0]["field"] == "prompt"


# --------------------------------------------------------------------------- SDXL specifics
@pytest.fixture
def sdxl_worker(monkeypatch, tmp_path, models_dir) -> Iterator[ReplayServer]:
    with running_worker("a1111-sdxl", monkeypatch, tmp_path, models_dir) as srv:
        yield srv


def _sdxl_checkpoint_file(models_dir: Path) -> None:
    """A header-only SDXL-shaped safetensors where A1111 lists sd_xl_base_1.0, so the
    worker can read the checkpoint's family (cache.inspect reads headers only)."""
    write_safetensors_header(models_dir / "checkpoints" / "sd_xl_base_1.0.safetensors", SDXL_CHECKPOINT_TENSORS)


def test_sd15_lora_on_sdxl_is_refused(sdxl_worker, models_dir):
    pytest.importorskip("cache.inspect", reason="needs cache.inspect.model_family")
    _sdxl_checkpoint_file(models_dir)
    out = run({"prompt": "a tile", "checkpoint": "sd_xl_base_1.0",
               "loras": [{"name": "detail_tweaker", "weight": 0.8}]})
    assert out["error_type"] == "validation", out
    assert "SD1.5" in out["error"] and "SDXL" in out["error"] and "sd_v1" in out["error"]
    assert sdxl_worker.sent("POST", TXT2IMG) == []


def test_sdxl_lora_on_sdxl_passes(sdxl_worker, models_dir):
    pytest.importorskip("cache.inspect", reason="needs cache.inspect.model_family")
    _sdxl_checkpoint_file(models_dir)
    out = run({"prompt": "a tile", "checkpoint": "sd_xl_base_1.0", "clip_skip": 2,
               "loras": [{"name": "rubber-tile-lora-v4_sdxl_lora", "weight": 0.7}]})
    assert "error" not in out, out
    body = only_txt2img(sdxl_worker)
    assert (body["width"], body["height"]) == (1024, 1024)  # the SDXL default size
    assert body["override_settings"]["sdxl_clip_l_skip"] is True
    assert any("clip_skip" in w for w in out["warnings"])


def test_sd15_embedding_on_sdxl_is_refused(sdxl_worker, models_dir):
    pytest.importorskip("cache.inspect", reason="needs cache.inspect.model_family")
    _sdxl_checkpoint_file(models_dir)
    out = run({"prompt": "rubber_tile", "checkpoint": "sd_xl_base_1.0", "embeddings": ["rubber_tile"]})
    assert out["error_type"] == "validation" and "SD1.5" in out["error"]
    assert sdxl_worker.sent("POST", TXT2IMG) == []


# --------------------------------------------------------------------------- the catalog
CATALOG = [
    {"id": "cat_model_b", "kind": "checkpoint", "file": "model_b.safetensors", "family": "sd15", "source": None,
     "default": True, "description": "recorded SD1.5 test model"},
    {"id": "tweaker", "kind": "lora", "file": "detail_tweaker.safetensors", "family": "sd15", "source": None,
     "recommended_weight": 0.6, "description": "recorded SD1.5 test LoRA"},
    {"id": "xl_base", "kind": "checkpoint", "file": "sd_xl_base_1.0.safetensors", "family": "sdxl", "source": None,
     "description": "SDXL base"},
    {"id": "hand_made", "kind": "lora", "file": "hand_made.safetensors", "family": "sd15", "source": None,
     "description": "no public source: placed by hand"},
]


@pytest.fixture(params=["a1111", "forge"])
def catalog_worker(request, monkeypatch, tmp_path, models_dir) -> Iterator[ReplayServer]:
    pytest.importorskip("cache.catalog")
    catalog = write_catalog(tmp_path / "models.json", CATALOG)
    with running_worker(request.param, monkeypatch, tmp_path, models_dir, catalog=catalog) as srv:
        yield srv


def test_catalog_ids_and_recommended_weight(catalog_worker):
    out = run(like(catalog_worker, "txt2img_override_checkpoint_restore_false", checkpoint="cat_model_b",
                   loras=[{"name": "tweaker"}, {"name": "film_grain", "weight": 0.4}]))
    assert "error" not in out, out
    body = only_txt2img(catalog_worker)
    assert body["override_settings"]["sd_model_checkpoint"] == "model_b.safetensors"
    assert body["prompt"].endswith("<lora:detail_tweaker:0.6> <lora:film_grain:0.4>")


def test_catalog_default_checkpoint_is_used_when_present(catalog_worker):
    out = run(like(catalog_worker, "txt2img_override_checkpoint_restore_false"))
    assert "error" not in out, out
    assert only_txt2img(catalog_worker)["override_settings"]["sd_model_checkpoint"] == "model_b.safetensors"
    assert out["warnings"] == []


def test_catalog_default_missing_falls_back_to_the_loaded_checkpoint(monkeypatch, tmp_path, models_dir):
    pytest.importorskip("cache.catalog")
    catalog = write_catalog(tmp_path / "models.json", [
        {"id": "deliberate_v6", "kind": "checkpoint", "file": "Deliberate_v6.safetensors", "family": "sd15",
         "source": {"hf": "XpucT/Deliberate", "file": "Deliberate_v6.safetensors"}, "default": True}])
    srv = start_worker("a1111", monkeypatch, tmp_path, models_dir, catalog=catalog)
    try:
        out = run({"prompt": "a photo of a cat", "sampler_name": "Euler"})
        assert "error" not in out, out
        assert only_txt2img(srv)["override_settings"]["sd_model_checkpoint"] == "model_a.safetensors"
        assert any("deliberate_v6" in w and "model_a.safetensors" in w for w in out["warnings"])
        # the next job asks A1111 for nothing but the generation (lists and loaded model are cached)
        srv.reset_requests()
        out = run({"prompt": "a photo of a cat", "sampler_name": "Euler"})
        assert "error" not in out, out
        assert [(r.method, r.path) for r in srv.requests if r.path != "/sdapi/v1/progress"] == [("POST", TXT2IMG)]
    finally:
        stop_and_check(srv)


def test_catalog_family_refuses_a_mismatched_lora(monkeypatch, tmp_path, models_dir):
    pytest.importorskip("cache.catalog")
    catalog = write_catalog(tmp_path / "models.json", CATALOG)
    srv = start_worker("a1111-sdxl", monkeypatch, tmp_path, models_dir, catalog=catalog)
    try:
        out = run({"prompt": "a tile", "checkpoint": "xl_base", "loras": [{"name": "tweaker", "weight": 0.8}]})
        assert out["error_type"] == "validation", out
        assert "detail_tweaker" in out["error"] and "SDXL" in out["error"]
        assert srv.sent("POST", TXT2IMG) == []
    finally:
        stop_and_check(srv)


def test_catalog_model_without_source_says_where_to_put_it(catalog_worker):
    out = run({"prompt": "a cat", "loras": [{"name": "hand_made", "weight": 1}]})
    assert out["error_type"] == "model_not_found", out
    assert "hand_made" in out["error"] and "loras/hand_made.safetensors" in out["error"]
    assert catalog_worker.sent("POST", TXT2IMG) == []
