"""Models A1111 does not list yet: placed by the cache, A1111's list refreshed, checked again.

A local HTTPS file server (sources must be https) serves real safetensors files made here;
the replay A1111 lists the files found in MODELS_DIR (``models_dir``), as A1111 does after
a refresh.
"""

from __future__ import annotations

import numpy as np
import pytest

from handler import handler
from tests.support.jobs import TXT2IMG
from tests.support.model_files import lora_bytes, safetensors_bytes
from tests.support.worker import running_worker, start_worker, stop_and_check, write_catalog

pytest.importorskip("cache")


@pytest.fixture(params=["a1111", "forge"])
def worker(request, monkeypatch, tmp_path, models_dir):
    with running_worker(request.param, monkeypatch, tmp_path, models_dir) as srv:
        srv.models_dir = models_dir  # list routes also list the files placed there
        yield srv


def test_lora_from_url_is_placed_refreshed_and_tagged(worker, https_files, models_dir):
    base, served = https_files.url, https_files
    served.files["/dl/grain.safetensors"] = lora_bytes("sd_v1")
    job = {"prompt": "a cat", "loras": [{"url": f"{base}/dl/grain.safetensors", "name": "url_grain", "weight": 0.5}]}
    out = handler({"id": "t", "input": job})
    assert "error" not in out, out
    assert (models_dir / "loras" / "url_grain.safetensors").read_bytes() == served.files["/dl/grain.safetensors"]
    assert len(worker.sent("POST", "/sdapi/v1/refresh-loras")) == 1
    (body,) = worker.sent("POST", TXT2IMG)
    assert body["prompt"] == "a cat <lora:url_grain:0.5>"
    assert out["models"]["placed"][0]["downloaded"] is True
    # second job: listed now, nothing downloaded or refreshed again
    out = handler({"id": "t", "input": job})
    assert "error" not in out, out
    assert served.gets == ["/dl/grain.safetensors"]
    assert len(worker.sent("POST", "/sdapi/v1/refresh-loras")) == 1


def test_url_lora_of_another_family_is_refused_after_placing(https_files, monkeypatch, tmp_path, models_dir):
    pytest.importorskip("cache.catalog")
    catalog = write_catalog(tmp_path / "models.json", [
        {"id": "xl_base", "kind": "checkpoint", "file": "sd_xl_base_1.0.safetensors", "family": "sdxl"}])
    srv = start_worker("a1111-sdxl", monkeypatch, tmp_path, models_dir, catalog=catalog)
    srv.models_dir = models_dir
    try:
        base, served = https_files.url, https_files
        served.files["/dl/sd15.safetensors"] = lora_bytes("sd_v1")
        out = handler({"id": "t", "input": {"prompt": "a tile", "checkpoint": "xl_base", "loras": [
            {"url": f"{base}/dl/sd15.safetensors", "name": "sd15_lora", "weight": 1}]}})
        assert out["error_type"] == "validation", out
        assert "sd15_lora" in out["error"] and "SD1.5" in out["error"] and "SDXL" in out["error"]
        assert srv.sent("POST", TXT2IMG) == []
    finally:
        stop_and_check(srv)


def test_missing_download_is_a_clear_error_without_txt2img(worker, https_files):
    base = https_files.url
    out = handler({"id": "t", "input": {"prompt": "a cat", "loras": [{"url": f"{base}/dl/none.safetensors"}]}})
    # the cache reports a 404 as a model that does not exist there
    assert out["error_type"] == "model_not_found", out
    assert "404" in out["error"] and "none" in out["error"]
    assert worker.sent("POST", TXT2IMG) == []


def test_checkpoint_from_url(worker, https_files, models_dir):
    base, served = https_files.url, https_files
    served.files["/dl/ckpt.safetensors"] = safetensors_bytes({"model.diffusion_model.x": np.zeros((2, 2), np.float16)})
    out = handler({"id": "t", "input": {"prompt": "a cat", "checkpoint": {"url": f"{base}/dl/ckpt.safetensors",
                                                                          "name": "my_ckpt"}}})
    assert "error" not in out, out
    (body,) = worker.sent("POST", TXT2IMG)
    assert body["override_settings"]["sd_model_checkpoint"] == "my_ckpt.safetensors"
    assert len(worker.sent("POST", "/sdapi/v1/refresh-checkpoints")) == 1


def test_placed_but_never_listed_is_a_clear_error(worker, https_files, models_dir):
    base, served = https_files.url, https_files
    served.files["/dl/e.safetensors"] = lora_bytes("sd_v1")
    worker.models_dir = None  # this A1111 does not look at our MODELS_DIR
    out = handler({"id": "t", "input": {"prompt": "a cat", "loras": [{"url": f"{base}/dl/e.safetensors",
                                                                       "name": "lost"}]}})
    assert out["error_type"] == "model_not_found", out
    assert "does not list it" in out["error"] and "refresh-loras" in out["error"]
    assert worker.sent("POST", TXT2IMG) == []


def test_prefetch_action_places_models(worker, https_files, models_dir):
    base, served = https_files.url, https_files
    served.files["/dl/a.safetensors"] = lora_bytes("sd_v1")
    out = handler({"id": "t", "input": {"action": "prefetch",
                                        "loras": [{"url": f"{base}/dl/a.safetensors", "name": "pre_a"}]}})
    assert "error" not in out, out
    assert [(p["kind"], p["name"], p["downloaded"]) for p in out["models"]] == [("lora", "pre_a", True)]
    assert (models_dir / "loras" / "pre_a.safetensors").is_file()
    assert worker.sent("POST", TXT2IMG) == []
    # A1111 was asked to rescan its LoRA folder, so the next job finds the file at once
    assert out["a1111_refreshed"] == ["loras"]
    assert len(worker.sent("POST", "/sdapi/v1/refresh-loras")) == 1
    again = handler({"id": "t", "input": {"action": "prefetch",
                                          "loras": [{"url": f"{base}/dl/a.safetensors", "name": "pre_a"}]}})
    assert [p["downloaded"] for p in again["models"]] == [False] and again["a1111_refreshed"] == []
    out = handler({"id": "t", "input": {"action": "prefetch", "checkpoints": ["not_in_catalog_anywhere"]}})
    assert out["error_type"] == "model_not_found", out
    assert "not_in_catalog_anywhere" in out["error"]


def test_embedding_from_url(worker, https_files, models_dir):
    base, served = https_files.url, https_files
    served.files["/dl/emb.safetensors"] = safetensors_bytes({"emb_params": np.zeros((2, 768), np.float32)})
    out = handler({"id": "t", "input": {"prompt": "a cat, my_emb", "embeddings": [
        {"url": f"{base}/dl/emb.safetensors", "name": "my_emb"}]}})
    assert "error" not in out, out
    assert out["models"]["embeddings"] == ["my_emb"]
    assert (models_dir / "embeddings" / "my_emb.safetensors").is_file()
    # A1111 has /sdapi/v1/refresh-embeddings; the Forge recordings have none (404 there): the
    # worker re-reads the list either way.
    assert len(worker.sent("POST", "/sdapi/v1/refresh-embeddings")) == 1
    assert len(worker.sent("POST", TXT2IMG)) == 1


def test_failed_download_is_reported_with_the_other_problems(worker, https_files):
    base, served = https_files.url, https_files
    served.forbidden = {"/dl/private.safetensors"}  # answered 403: a token would be needed
    src = {"url": f"{base}/dl/private.safetensors"}
    out = handler({"id": "t", "input": {"prompt": "a cat", "sampler_name": "Eular a", "checkpoint": src,
                                        "loras": [{"name": "nope_lora"}]}})
    assert sorted(d["field"] for d in out["details"]) == ["checkpoint", "loras[0]", "sampler_name"], out
    assert out["error_type"] == "validation"  # the bad sampler is the caller's to fix first
    out = handler({"id": "t", "input": {"prompt": "a cat", "checkpoint": src, "loras": [{"name": "nope_lora"}]}})
    assert out["error_type"] == "download_failed", out
    assert "403" in out["error"]
    assert [d["field"] for d in out["details"]] == ["checkpoint", "loras[0]"]
    assert worker.sent("POST", TXT2IMG) == []
