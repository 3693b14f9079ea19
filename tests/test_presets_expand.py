"""presets.expand / finish: dispatch, catalog presets and caller overrides (pure)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import presets
from schemas.errors import ValidationFailed
from schemas.job import parse_job
from schemas.settings import Settings

PORTRAIT = {
    "description": "test portrait",
    "defaults": {
        "checkpoint": "model_b",
        "loras": [{"name": "detail_tweaker", "weight": 0.8}, {"name": "film_grain", "weight": 0.3}],
        "sampler_name": "DPM++ 2M", "scheduler": "Karras", "steps": 30, "cfg_scale": 5.0,
        "width": 832, "height": 1216, "clip_skip": 2, "negative_prompt": "blurry",
    },
}


@dataclass
class StandInCatalog:
    """The two members presets use: ``presets`` and ``get`` (None = not in the catalog)."""

    presets: dict[str, Any] = field(default_factory=dict)

    def get(self, ref: str) -> None:
        return None


def settings(backend: str = "a1111") -> Settings:
    return dataclasses.replace(Settings.from_env(), backend=backend, models_dir=Path("/nonexistent"))


def test_no_preset_is_one_unlabelled_step():
    job = parse_job({"prompt": "a cat"})
    (step,) = presets.expand(job, None, settings())
    assert step.label is None and step.job is job
    assert presets.finish(job, [{}]) == []


def test_unknown_preset_lists_the_known_ones():
    with pytest.raises(ValidationFailed) as err:
        presets.expand(parse_job({"prompt": "a cat", "preset": "portrait"}), StandInCatalog({"anime": PORTRAIT}),
                       settings())
    assert "'portrait'" in err.value.message
    for name in ("rubber_tile", "flux", "anime"):
        assert name in err.value.message


def test_catalog_preset_fills_defaults():
    job = parse_job({"prompt": "an old fisherman", "preset": "portrait"})
    (step,) = presets.expand(job, StandInCatalog({"portrait": PORTRAIT}), settings())
    j = step.job
    assert (j.checkpoint, j.sampler_name, j.scheduler, j.steps, j.cfg_scale, j.width, j.height, j.clip_skip) == (
        "model_b", "DPM++ 2M", "Karras", 30, 5.0, 832, 1216, 2)
    assert [(x.name, x.weight) for x in j.loras] == [("detail_tweaker", 0.8), ("film_grain", 0.3)]
    assert j.prompt == "an old fisherman" and j.negative_prompt == "blurry"


def test_caller_fields_win_and_loras_merge_by_name():
    job = parse_job({"prompt": "x", "preset": "portrait", "steps": 12, "cfg_scale": 7.0, "negative_prompt": "",
                     "loras": [{"name": "film_grain", "weight": 0.9}, {"name": "other", "weight": 1.0}]})
    (step,) = presets.expand(job, StandInCatalog({"portrait": PORTRAIT}), settings())
    j = step.job
    # set explicitly, even to a value equal to a default: the caller wins
    assert (j.steps, j.cfg_scale, j.negative_prompt) == (12, 7.0, "")
    assert j.width == 832  # not set by the caller: the preset's
    assert [(x.name, x.weight) for x in j.loras] == [("detail_tweaker", 0.8), ("film_grain", 0.9), ("other", 1.0)]


def test_bad_catalog_defaults_are_reported_clearly():
    bad = {"defaults": {"steps": 500}}
    with pytest.raises(ValidationFailed) as err:
        presets.expand(parse_job({"prompt": "x", "preset": "bad"}), StandInCatalog({"bad": bad}), settings())
    assert "steps" in err.value.message


def test_builtin_preset_settings_come_from_models_json_section():
    cat = StandInCatalog({"rubber_tile": {"lora_weight": 0.5, "trigger_word": "ohwx_tile"}})
    job = parse_job({"preset": "rubber_tile", "colors": [{"name": "gray", "proportion": 100}]})
    steps = presets.expand(job, cat, settings())
    assert [s.label for s in steps] == ["preview", "final"]
    assert steps[0].job.loras[0].weight == 0.5 and steps[0].job.prompt.startswith("ohwx_tile ")
    extras = presets.finish(job, [{}, {}])
    assert [label for label, _ in extras] == ["colormap"]


def test_flux_needs_forge():
    job = parse_job({"preset": "flux", "prompt": "x"})
    with pytest.raises(ValidationFailed, match="WEBUI_BACKEND=forge"):
        presets.expand(job, None, settings("a1111"))
    (step,) = presets.expand(job, None, settings("forge"))
    assert step.job.distilled_cfg_scale == 3.7 and step.job.modules


def test_lora_scales_must_match_lora_urls():
    with pytest.raises(ValidationFailed) as err:
        parse_job({"prompt": "x", "lora_urls": ["https://example.org/a.safetensors"], "lora_scales": [0.5, 0.7]})
    assert "lora_scales" in {d["field"] for d in err.value.details}


# --------------------------------------------------------------------------- the real models.json
ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def catalog():
    from cache.catalog import Catalog

    return Catalog.load(ROOT / "models.json")


def test_realistic_portrait_uses_catalog_models_at_recommended_scales(catalog):
    job = parse_job({"prompt": "portrait of an old fisherman", "preset": "realistic_portrait"})
    (step,) = presets.expand(job, catalog, settings())
    ckpt = catalog.get(step.job.checkpoint)
    assert ckpt is not None and ckpt.id == "jib_mix_illustrious_realistic_v2" and ckpt.family == "sdxl"
    names = {x.name: x.weight for x in step.job.loras}
    assert set(names) == {"boring_reality_v4", "detail_tweaker_xl"}
    for name, weight in names.items():
        entry = catalog.get(name)
        assert entry is not None and entry.kind == "lora" and weight == entry.recommended_weight
    assert step.job.width % 8 == 0 and step.job.clip_skip == 2


def test_builtin_preset_models_exist_in_the_catalog(catalog):
    rt = presets.rubber_tile
    cfg = presets._jobs.preset_config(catalog, rt.NAME, rt.DEFAULTS)
    kinds = {cfg["checkpoint"]: "checkpoint", cfg["lora"]: "lora", cfg["embedding"]: "embedding",
             cfg["controlnet"]["softedge"]["model"]: "controlnet", cfg["controlnet"]["canny"]["model"]: "controlnet"}
    fx = presets._jobs.preset_config(catalog, presets.flux.NAME, presets.flux.DEFAULTS)
    kinds[fx["checkpoint"]] = "checkpoint"
    kinds.update({m: ("vae", "text_encoder") for m in fx["modules"]})
    kinds[fx["hires"]["upscaler"]] = "upscaler"
    kinds.update({m: "adetailer" for m in fx["adetailer_models"]})
    for ref, kind in kinds.items():
        entry = catalog.get(ref)
        assert entry is not None, ref
        assert entry.kind in (kind if isinstance(kind, tuple) else (kind,)), ref
    # the weight the rubber-tile LoRA was trained to be used at
    assert cfg["lora_weight"] == 0.7


def test_rubber_tile_with_the_real_catalog_names_a1111_file_stems(catalog):
    job = parse_job({"preset": "rubber_tile", "colors": [{"name": "red", "proportion": 100}], "angle": 90})
    preview, _ = presets.expand(job, catalog, settings())
    assert preview.job.prompt.startswith("ohwx_rubber_tile rubber_tile_sdxl, 100% red, ")
    # ControlNet lists models by file stem: the catalog id is turned into it
    assert preview.job.controlnet[0].model == "diffusers_xl_canny_mid"
