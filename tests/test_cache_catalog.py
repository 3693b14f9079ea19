"""The catalog (models.json): lookups, validation, and the seed entries the presets rely on."""

from __future__ import annotations

from pathlib import Path

import pytest

from cache import KIND_DIRS
from cache.catalog import Catalog, CatalogError
from cache.refs import parse_ref, url_file_name
from cache.safety import redact_url
from schemas.errors import ValidationFailed

SEEDS = Catalog.load(Path(__file__).resolve().parent.parent / "models.json")


def test_lookup_by_id_file_or_stem_case_insensitive():
    assert SEEDS.get("deliberate_v6").file == "Deliberate_v6.safetensors"
    assert SEEDS.get("DELIBERATE_V6.safetensors").id == "deliberate_v6"
    assert SEEDS.get("diffusers_xl_canny_mid").id == "controlnet_canny_sdxl"
    assert SEEDS.get("nothing") is None and SEEDS.get(None) is None


def test_seed_entries_the_systems_need():
    assert SEEDS.default_checkpoint("a1111").id == "deliberate_v6"
    assert SEEDS.default_checkpoint("forge").id == "deliberate_v6"
    assert SEEDS.get("sd_xl_base_1.0").source == {"hf": "stabilityai/stable-diffusion-xl-base-1.0",
                                                  "file": "sd_xl_base_1.0.safetensors"}
    weights = {e.id: e.recommended_weight for e in SEEDS.entries("lora")}
    assert weights["detail_tweaker_xl"] == 1.5 and weights["boring_reality_v3"] == 0.3
    assert weights["boring_reality_v4"] == 0.4 and weights["pony_realism_slider"] == 3.0
    assert weights["rubber-tile-lora-v4_sdxl_lora"] == 0.7
    # ids the presets use (presets/rubber_tile.py, presets/flux.py)
    for ref in ("rubber_tile_sdxl", "controlnet_softedge_sdxl", "controlnet_canny_sdxl", "flux1_dev_nf4",
                "flux_ae", "flux_clip_l", "flux_t5xxl_fp8", "4x-UltraSharp", "face_yolov8s.pt", "hand_yolov8s.pt"):
        assert SEEDS.get(ref) is not None, ref
    for e in SEEDS.entries():  # every seed is a valid reference with a plain file name in a known folder
        assert e.kind in KIND_DIRS
        req = parse_ref(e.kind, e.id, SEEDS)
        assert req.entry is e and req.file == e.file


@pytest.mark.parametrize("doc, words", [
    ({"models": [{"id": "a", "kind": "lora"}]}, "file"),
    ({"models": [{"id": "a", "kind": "hypernet", "file": "a.safetensors"}]}, "kind"),
    ({"models": [{"id": "a", "kind": "lora", "file": "../a.safetensors"}]}, "plain file name"),
    ({"models": [{"id": "a", "kind": "lora", "file": "a.safetensors", "source": {"hf": "x", "url": "y"}}]},
     "exactly one"),
    ({"models": [{"id": "a", "kind": "lora", "file": "a.safetensors"}] * 2}, "twice"),
    ({"models": "nope"}, "models"),
])
def test_broken_catalogs_are_reported_clearly(doc, words):
    with pytest.raises(CatalogError, match=words):
        Catalog.from_dict(doc)


def test_catalog_of_another_kind_does_not_shadow_a_name():
    req = parse_ref("lora", "deliberate_v6", SEEDS)
    assert req.entry is None and req.file == "deliberate_v6" and req.stem_only


def test_reference_forms():
    assert parse_ref("lora", {"hf": "o/r", "file": "dir/x.safetensors"}, None).file == "x.safetensors"
    assert parse_ref("lora", {"hf": "o/r", "file": "x.safetensors", "name": "mine"}, None).file == \
        "mine.safetensors"
    assert parse_ref("lora", {"civitai": 123}, None).file is None
    url = "https://example.com/files/Detail%20XL.safetensors?token=abc"
    name = url_file_name(url)
    assert name.startswith("Detail_XL_") and name.endswith(".safetensors")
    assert name == url_file_name("https://example.com/files/Detail%20XL.safetensors?token=other")
    assert "abc" not in redact_url(url)
    for bad in ({"hf": "noslash", "file": "x"}, {"civitai": -1}, {"civitai": True}, {"url": ""},
                {"hf": "o/r", "file": "../x"}, {"url": "https://x/y", "sha256": "zz"}, {"hf": "o/r", "civitai": 1}):
        with pytest.raises(ValidationFailed):
            parse_ref("lora", bad, None)
