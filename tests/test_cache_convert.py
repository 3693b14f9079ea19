"""SDXL textual inversion: trainer layout (text_encoders_0/1) -> A1111 layout (clip_l/clip_g)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from cache import ModelCache
from cache.catalog import Catalog
from cache.convert import ConversionError, convert_trainer_ti
from cache.inspect import NotSafetensors, model_family, safetensors_header
from schemas.settings import Settings
from tests.support.model_files import safetensors_bytes
from tests.support.servers import ModelServer

ROOT = Path(__file__).resolve().parent.parent


def trainer_ti(path: Path, seed: int = 0, dtype=np.float32) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    tensors = {"text_encoders_0": rng.standard_normal((2, 768)).astype(dtype),
               "text_encoders_1": rng.standard_normal((2, 1280)).astype(dtype)}
    save_file(tensors, str(path))
    return tensors


def test_conversion_keeps_the_vectors(tmp_path):
    src, dst = tmp_path / "trainer.safetensors", tmp_path / "a1111.safetensors"
    original = trainer_ti(src, seed=1, dtype=np.float16)
    convert_trainer_ti(src, dst)
    out = load_file(str(dst))
    assert set(out) == {"clip_l", "clip_g"}
    assert out["clip_l"].dtype == np.float16
    assert np.array_equal(out["clip_l"], original["text_encoders_0"])
    assert np.array_equal(out["clip_g"], original["text_encoders_1"])
    assert safetensors_header(dst)["__metadata__"]["converted_from"] == "sdxl_ti_trainer"
    assert model_family(dst) == "sdxl"


def test_conversion_refuses_other_layouts(tmp_path):
    src = tmp_path / "sd15.safetensors"
    save_file({"emb_params": np.zeros((2, 768), np.float32)}, str(src))
    with pytest.raises(ConversionError, match="not an SDXL trainer embedding"):
        convert_trainer_ti(src, tmp_path / "out.safetensors")
    bad = tmp_path / "swapped.safetensors"
    save_file({"text_encoders_0": np.zeros((2, 1280), np.float32),
               "text_encoders_1": np.zeros((2, 768), np.float32)}, str(bad))
    with pytest.raises(ConversionError, match="shape"):
        convert_trainer_ti(bad, tmp_path / "out2.safetensors")


def test_catalog_embedding_is_converted_from_the_volume(models_dir):
    catalog = Catalog.load(ROOT / "models.json")
    incoming = models_dir / "incoming"
    incoming.mkdir()
    original = trainer_ti(incoming / "rubber-tile-lora-v4_sdxl_embeddings.safetensors", seed=2)
    settings = dataclasses.replace(Settings.from_env(), models_dir=models_dir)
    placed = ModelCache(settings, catalog).ensure("embedding", "rubber_tile_sdxl")
    assert placed.path == "embeddings/rubber_tile_sdxl.safetensors" and placed.name == "rubber_tile_sdxl"
    assert placed.family == "sdxl" and placed.downloaded is False
    out = load_file(str(models_dir / placed.path))
    assert np.array_equal(out["clip_l"], original["text_encoders_0"])
    assert np.array_equal(out["clip_g"], original["text_encoders_1"])
    # The original stays where the operator put it; the second call finds the converted file.
    assert (incoming / "rubber-tile-lora-v4_sdxl_embeddings.safetensors").exists()
    again = ModelCache(settings, catalog).ensure("embedding", "rubber_tile_sdxl")
    assert again.path == placed.path and again.sha256 == placed.sha256
    assert sorted(p.name for p in (models_dir / "embeddings").iterdir()) == ["rubber_tile_sdxl.safetensors"]


def test_downloaded_trainer_embedding_is_converted_on_arrival(models_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("DOWNLOAD_BACKOFF_S", "0.01")
    src = tmp_path / "t.safetensors"
    original = trainer_ti(src, seed=3)
    settings = dataclasses.replace(Settings.from_env(), models_dir=models_dir, download_allow_private=True)
    with ModelServer() as srv:
        url = srv.add("/ti.safetensors", src.read_bytes())
        placed = ModelCache(settings, Catalog()).ensure("embedding", {"url": url, "name": "my_tile"})
    out = load_file(str(models_dir / "embeddings/my_tile.safetensors"))
    assert np.array_equal(out["clip_g"], original["text_encoders_1"]) and placed.downloaded


def test_header_checks_catch_truncation_and_pages(tmp_path):
    good = tmp_path / "good.safetensors"
    good.write_bytes(safetensors_bytes(size=4096))
    assert "lora_unet_down.weight" in safetensors_header(good)
    cut = tmp_path / "cut.safetensors"
    cut.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(NotSafetensors, match="truncated"):
        safetensors_header(cut)
    page = tmp_path / "page.safetensors"
    page.write_bytes(b"<!DOCTYPE html><html>Sign in</html>")
    with pytest.raises(NotSafetensors, match="HTML"):
        safetensors_header(page)


@pytest.mark.parametrize("tensors, metadata, family", [
    ({"conditioner.embedders.1.model.ln_final.weight": (1280,)}, None, "sdxl"),
    ({"cond_stage_model.transformer.text_model.final_layer_norm.weight": (768,)}, None, "sd15"),
    ({"double_blocks.0.img_attn.norm.key_norm.scale": (128,)}, None, "flux"),
    ({"lora_unet_x.weight": (4,)}, {"ss_base_model_version": "sdxl_base_v1-0"}, "sdxl"),
    ({"lora_unet_x.weight": (4,)}, {"ss_base_model_version": "sd_v1"}, "sd15"),
    ({"lora_unet_x.weight": (4,)}, {"modelspec.architecture": "flux-1-dev/lora"}, "flux"),
    ({"lora_unet_x.weight": (4,)}, {"ss_base_model_version": "sd_v2"}, None),  # not a catalog family
    ({"lora_unet_mid_attn2_to_k.lora_down.weight": (4, 2048)}, None, "sdxl"),
    ({"clip_l": (2, 768), "clip_g": (2, 1280)}, None, "sdxl"),
    ({"emb_params": (2, 768)}, None, "sd15"),
    ({"something": (3,)}, None, None),
])
def test_model_family_from_header_only(tmp_path, tensors, metadata, family):
    path = tmp_path / "m.safetensors"
    save_file({k: np.zeros(shape, np.float16) for k, shape in tensors.items()}, str(path), metadata=metadata)
    assert model_family(path) == family
