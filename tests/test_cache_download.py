"""Downloads against real local HTTP servers: complete-and-verified or nothing at all."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from cache import ModelCache
from cache.catalog import Catalog
from cache.refs import parse_ref, url_file_name
from schemas.errors import DownloadFailed, ModelNotFound, ValidationFailed
from schemas.settings import Settings
from tests.support.cache import fast_downloads, leftovers, make_cache, registry
from tests.support.model_files import safetensors_bytes
from tests.support.servers import ModelServer


@pytest.fixture(autouse=True)
def fast_env(monkeypatch, models_dir):
    fast_downloads(monkeypatch, models_dir)


# ------------------------------------------------------------------------------- success path
def test_url_download_is_verified_registered_and_not_repeated(models_dir):
    data = safetensors_bytes(size=300_000, seed=1)
    sha = hashlib.sha256(data).hexdigest()
    with ModelServer() as srv:
        url = srv.add("/files/detail.safetensors", data)
        cache = make_cache()
        first = cache.prefetch({"lora": [{"url": url, "sha256": sha}]})
        name = url_file_name(url)
        assert first == [{"kind": "lora", "name": name[:-12], "path": f"loras/{name}", "sha256": sha,
                          "bytes": len(data), "downloaded": True}]
        assert (models_dir / "loras" / name).read_bytes() == data
        entry = registry(models_dir)[f"loras/{name}"]
        assert entry["sha256"] == sha and entry["downloaded"] is True and entry["source"] == {"url": url}
        sent_before = srv.sent["/files/detail.safetensors"]
        second = make_cache().prefetch({"lora": [{"url": url}]})
        assert second[0]["downloaded"] is False and second[0]["path"] == f"loras/{name}"
        assert srv.sent["/files/detail.safetensors"] - sent_before == 0  # a repeat transfers nothing
        assert len(srv.gets("/files/detail.safetensors")) == 1
        assert registry(models_dir)[f"loras/{name}"]["uses"] == 2
    assert leftovers(models_dir) == [f"loras/{name}"]


def test_500_then_success_is_retried(models_dir):
    data = safetensors_bytes(seed=2)
    with ModelServer() as srv:
        url = srv.add("/x.safetensors", data, [("status", 500, b"Internal Server Error", "text/plain"),
                                               ("status", 503, b"busy", "text/plain"), "ok"])
        placed = make_cache().ensure("lora", {"url": url, "name": "retry_me"})
        assert placed.downloaded and placed.path == "loras/retry_me.safetensors"
        assert len(srv.gets("/x.safetensors")) == 3
    assert (models_dir / "loras/retry_me.safetensors").read_bytes() == data


def test_truncated_body_resumes_with_range(models_dir):
    data = safetensors_bytes(size=6_000_000, seed=3)
    with ModelServer() as srv:
        url = srv.add("/t.safetensors", data, ["truncate", "ok"])
        placed = make_cache().ensure("checkpoint", {"url": url, "name": "resumed"})
        gets = srv.gets("/t.safetensors")
        # The cut-off read chunk is lost, the chunks written before it are kept and not asked again.
        offset = int(gets[1].headers["Range"].removeprefix("bytes=").rstrip("-"))
        assert len(gets) == 2 and 0 < offset <= len(data) // 2
        assert srv.sent["/t.safetensors"] == len(data) // 2 + len(data) - offset
    assert placed.sha256 == hashlib.sha256(data).hexdigest()
    assert (models_dir / "checkpoints/resumed.safetensors").read_bytes() == data


def test_stalled_transfer_times_out_and_resumes(models_dir, monkeypatch):
    monkeypatch.setenv("DOWNLOAD_READ_TIMEOUT_S", "0.3")
    data = safetensors_bytes(size=600_000, seed=4)
    with ModelServer() as srv:
        url = srv.add("/s.safetensors", data, [("stall", 3), "ok"])
        placed = make_cache().ensure("lora", {"url": url, "name": "stalled"})
        assert len(srv.gets("/s.safetensors")) == 2
    assert placed.downloaded and (models_dir / "loras/stalled.safetensors").read_bytes() == data


@pytest.mark.parametrize("behaviour, error, words", [
    ("truncate", DownloadFailed, ["failed after 3 attempts", "broke off"]),
    (("status", 500, b"oops", "text/plain"), DownloadFailed, ["500"]),
    (("status", 404, b"", "text/plain"), ModelNotFound, ["404"]),
    (("status", 200, b'{"error":"Unauthorized","message":"log in"}', "application/json"), DownloadFailed,
     ["application/json page", "Unauthorized"]),
])
def test_failures_leave_no_file_and_no_registry_entry(models_dir, behaviour, error, words):
    with ModelServer() as srv:
        url = srv.add("/bad.safetensors", safetensors_bytes(seed=5), [behaviour])
        with pytest.raises(error) as info:
            make_cache().ensure("lora", {"url": url, "name": "bad"})
    for w in words:
        assert w in info.value.message
    assert leftovers(models_dir) == []
    assert "loras/bad.safetensors" not in registry(models_dir)


def test_json_body_served_as_octet_stream_fails_the_header_check(models_dir):
    # Civitai-style auth failure body, but with a binary content type: only the header check sees it.
    with ModelServer() as srv:
        url = srv.add("/j.safetensors", b'{"error": "Unauthorized", "message": "You must be logged in"}')
        with pytest.raises(DownloadFailed, match="not a valid .safetensors file"):
            make_cache().ensure("lora", {"url": url, "name": "json_page"})
    assert leftovers(models_dir) == []


def test_sha256_mismatch_keeps_nothing(models_dir):
    with ModelServer() as srv:
        url = srv.add("/m.safetensors", safetensors_bytes(seed=6))
        with pytest.raises(DownloadFailed, match="does not match the expected"):
            make_cache().ensure("lora", {"url": url, "sha256": "0" * 64, "name": "mismatch"})
    assert leftovers(models_dir) == [] and registry(models_dir) == {}


def test_full_disk_is_reported_and_cleaned_up(models_dir):
    # The part file is a link to /dev/full, where every write fails with the kernel's ENOSPC.
    if not os.path.exists("/dev/full"):
        pytest.skip("needs /dev/full")
    with ModelServer() as srv:
        ref = {"url": srv.add("/big.safetensors", safetensors_bytes(seed=7)), "name": "full_disk"}
        part = models_dir / "loras" / parse_ref("lora", ref, None).part_name
        part.symlink_to("/dev/full")
        with pytest.raises(DownloadFailed, match="disk is full"):
            make_cache().ensure("lora", ref)
    assert not part.is_symlink()
    assert leftovers(models_dir) == []


# ------------------------------------------------------------------------------- Civitai
def test_civitai_token_redirect_and_file_name(models_dir, monkeypatch):
    data = safetensors_bytes(seed=8)
    monkeypatch.setenv("CIVITAI_TOKEN", "civ-secret-123456")
    with ModelServer() as api, ModelServer(host="localhost") as cdn:
        monkeypatch.setenv("CIVITAI_BASE_URL", api.url)
        cdn_url = cdn.add("/blob/abc", data, headers={
            "Content-Disposition": 'attachment; filename="add-detail-xl.safetensors"'})
        api.add("/api/download/models/135867", b"", [("redirect", cdn_url + "?X-Amz-Signature=s3cr3t")],
                auth="Bearer civ-secret-123456")
        placed = make_cache().ensure("lora", {"civitai": 135867})
        assert placed.path == "loras/add-detail-xl.safetensors" and placed.downloaded
        # The token went to Civitai but not to the storage host it redirected to.
        assert api.gets("/api/download/models/135867")[0].headers["Authorization"] == "Bearer civ-secret-123456"
        assert "Authorization" not in cdn.gets("/blob/abc")[0].headers
        again = make_cache().ensure("lora", {"civitai": 135867})
        assert again.downloaded is False and len(api.gets("/api/download/models/135867")) == 1
    text = (models_dir / "cache_registry.json").read_text()
    assert "civ-secret" not in text and "s3cr3t" not in text
    assert registry(models_dir)["loras/add-detail-xl.safetensors"]["source"] == {"civitai": 135867}


@pytest.mark.parametrize("token", [None, "civ-wrong-token-999"])
def test_civitai_401_names_the_token_variable_and_never_the_token(models_dir, monkeypatch, token):
    if token:
        monkeypatch.setenv("CIVITAI_TOKEN", token)
    with ModelServer() as api:
        monkeypatch.setenv("CIVITAI_BASE_URL", api.url)
        api.add("/api/download/models/42", safetensors_bytes(seed=9), auth="Bearer right")
        with pytest.raises(DownloadFailed) as info:
            make_cache().ensure("lora", {"civitai": 42})
    msg = info.value.message
    assert "401" in msg and "CIVITAI_TOKEN" in msg
    assert token is None or token not in json.dumps(info.value.to_result())
    assert leftovers(models_dir) == []


def test_url_query_token_is_redacted_everywhere(models_dir):
    data = safetensors_bytes(seed=10)
    with ModelServer() as srv:
        url = srv.add("/q.safetensors", data) + "?token=tok-abcdef-789&v=2"
        placed = make_cache().ensure("lora", {"url": url, "name": "query_token"})
        assert placed.downloaded
        bad = srv.add("/q404.safetensors", data, [("status", 404, b"", "text/plain")]) + "?token=tok-abcdef-789"
        with pytest.raises(ModelNotFound) as info:
            make_cache().ensure("lora", {"url": bad})
    assert "tok-abcdef" not in info.value.message and "token=%2A%2A%2A" in info.value.message
    assert "tok-abcdef" not in (models_dir / "cache_registry.json").read_text()


# ------------------------------------------------------------------------------- Hugging Face
def test_hugging_face_download_through_huggingface_hub(models_dir, monkeypatch):
    data = safetensors_bytes(size=200_000, seed=11)
    with ModelServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(models_dir.parent / "hf-home"))
        hub.add_hf("XpucT/Deliberate", "Deliberate_v6.safetensors", data)
        cat = {"models": [{"id": "deliberate_v6", "kind": "checkpoint", "file": "Deliberate_v6.safetensors",
                           "family": "sd15", "default": True, "sha256": hashlib.sha256(data).hexdigest(),
                           "source": {"hf": "XpucT/Deliberate", "file": "Deliberate_v6.safetensors"}}]}
        out = make_cache(cat).prefetch({}, catalog_defaults=True)
        assert out == [{"kind": "checkpoint", "name": "Deliberate_v6", "path": "checkpoints/Deliberate_v6.safetensors",
                        "sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data), "downloaded": True}]
        methods = [(s.method, s.path) for s in hub.seen]
        assert ("HEAD", "/XpucT/Deliberate/resolve/main/Deliberate_v6.safetensors") in methods
        assert ("GET", "/XpucT/Deliberate/resolve/main/Deliberate_v6.safetensors") in methods
        again = make_cache(cat).prefetch({"checkpoints": ["deliberate_v6"]})
        assert again[0]["downloaded"] is False
        assert len([m for m in methods if m[0] == "GET"]) == len([s for s in hub.seen if s.method == "GET"])
    assert (models_dir / "checkpoints/Deliberate_v6.safetensors").read_bytes() == data
    assert leftovers(models_dir) == ["checkpoints/Deliberate_v6.safetensors"]  # staging removed


def test_hugging_face_truncated_body_is_resumed(models_dir, monkeypatch):
    data = safetensors_bytes(size=2_000_000, seed=21)
    with ModelServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(models_dir.parent / "hf-home"))
        hub.add_hf("owner/big", "big.safetensors", data, behaviours=["truncate", "ok"])
        placed = make_cache().ensure("checkpoint", {"hf": "owner/big", "file": "big.safetensors"})
        assert len(hub.gets("/owner/big/resolve/main/big.safetensors")) == 2
    assert placed.sha256 == hashlib.sha256(data).hexdigest()
    assert leftovers(models_dir) == ["checkpoints/big.safetensors"]


def test_hugging_face_revision_and_token(models_dir, monkeypatch):
    data = safetensors_bytes(seed=12)
    monkeypatch.setenv("HF_TOKEN", "hf_secret_token_42")
    with ModelServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(models_dir.parent / "hf-home"))
        hub.add_hf("owner/repo", "sub/lora.safetensors", data, revision="v2", auth="Bearer hf_secret_token_42")
        placed = make_cache().ensure("lora", {"hf": "owner/repo", "file": "sub/lora.safetensors", "revision": "v2"})
        assert placed.path == "loras/lora.safetensors" and placed.downloaded
        assert hub.gets("/owner/repo/resolve/v2/sub/lora.safetensors")[0].headers["Authorization"] == \
            "Bearer hf_secret_token_42"


def test_hugging_face_401_names_hf_token(models_dir, monkeypatch):
    with ModelServer() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        monkeypatch.setenv("HF_HOME", str(models_dir.parent / "hf-home"))
        hub.add_hf("owner/private", "m.safetensors", safetensors_bytes(seed=13), auth="Bearer x")
        with pytest.raises(DownloadFailed, match="HF_TOKEN"):
            make_cache().ensure("lora", {"hf": "owner/private", "file": "m.safetensors"})
        with pytest.raises(ModelNotFound, match="no file"):
            hub.add_hf("owner/public", "other.safetensors", safetensors_bytes(seed=14))
            make_cache().ensure("lora", {"hf": "owner/public", "file": "missing.safetensors"})
    assert leftovers(models_dir) == []


# ------------------------------------------------------------------------------- safety
def test_private_addresses_refused_unless_allowed(models_dir, monkeypatch):
    monkeypatch.delenv("DOWNLOAD_ALLOW_PRIVATE")
    with ModelServer() as srv:
        url = srv.add("/p.safetensors", safetensors_bytes(seed=15))
        with pytest.raises(ValidationFailed, match="DOWNLOAD_ALLOW_PRIVATE"):
            make_cache().ensure("lora", {"url": url})
        assert srv.seen == []
    with pytest.raises(ValidationFailed, match="http"):
        make_cache().ensure("lora", {"url": "ftp://example.com/x.safetensors"})


def test_redirect_to_a_private_address_is_refused(models_dir, monkeypatch):
    monkeypatch.delenv("DOWNLOAD_ALLOW_PRIVATE")
    from cache.download import fetch_url

    with ModelServer() as srv:
        inner = srv.add("/inner.safetensors", safetensors_bytes(seed=16))
        with pytest.raises(ValidationFailed):
            fetch_url(inner, models_dir / "loras/.x.part", what="test", allow_private=False)


def test_pickle_formats_refused_unless_allowed_or_pinned(models_dir):
    blob = b"\x80\x04K\x01."  # a tiny pickle
    sha = hashlib.sha256(blob).hexdigest()
    with ModelServer() as srv:
        url = srv.add("/face_yolov8s.pt", blob)
        with pytest.raises(ValidationFailed, match="ALLOW_PICKLE_MODELS"):
            make_cache().ensure("adetailer", {"url": url, "name": "face_yolov8s.pt"})
        assert srv.seen == []
        pinned = {"models": [{"id": "face_yolov8s.pt", "kind": "adetailer", "file": "face_yolov8s.pt",
                              "source": {"url": url}, "sha256": sha}]}
        placed = make_cache(pinned).ensure("adetailer", "face_yolov8s.pt")
        assert placed.path == "adetailer/face_yolov8s.pt" and placed.sha256 == sha
        wrong = {"models": [{**pinned["models"][0], "file": "hand_yolov8s.pt", "id": "hand", "sha256": "1" * 64}]}
        with pytest.raises(DownloadFailed, match="does not match"):
            make_cache(wrong).ensure("adetailer", "hand")
        allowed = make_cache(allow_pickle_models=True).ensure("upscaler", {"url": url, "name": "4x-Test.pth"})
        assert allowed.path == "upscalers/4x-Test.pth"
    assert not (models_dir / "adetailer/hand_yolov8s.pt").exists()


def test_path_escapes_and_symlinks_out_of_models_dir(models_dir, tmp_path):
    cache = make_cache()
    for bad in ("../etc/passwd", "a/b.safetensors", ".hidden", "..", "x\\y"):
        with pytest.raises(ValidationFailed):
            cache.ensure("lora", bad)
    with pytest.raises(ValidationFailed):
        cache.ensure("lora", {"url": "https://example.com/x.safetensors", "name": "../../evil"})
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(safetensors_bytes(seed=17))
    (models_dir / "loras/linked.safetensors").symlink_to(outside)
    with pytest.raises(ValidationFailed, match="outside MODELS_DIR"):
        cache.ensure("lora", "linked")
    with pytest.raises(ValidationFailed, match="kind"):
        cache.ensure("hypernetwork", "x")


def test_catalog_entry_without_source_names_the_expected_path(models_dir):
    catalog = Catalog.load(Path(__file__).resolve().parent.parent / "models.json")
    cache = ModelCache(Settings.from_env(), catalog)
    with pytest.raises(ModelNotFound) as info:
        cache.ensure("lora", "rubber-tile-lora-v4_sdxl_lora")
    assert str(models_dir / "loras/rubber-tile-lora-v4_sdxl_lora.safetensors") in info.value.message
    with pytest.raises(ModelNotFound, match="incoming/rubber-tile-lora-v4_sdxl_embeddings.safetensors"):
        cache.ensure("embedding", "rubber_tile_sdxl")
    with pytest.raises(ModelNotFound, match="not in the catalog and not on the volume"):
        cache.ensure("lora", "no_such_lora")


def test_found_files_are_used_without_downloading(models_dir):
    (models_dir / "loras/mine.safetensors").write_bytes(safetensors_bytes(seed=18))
    placed = make_cache().ensure("lora", "mine")
    assert placed.path == "loras/mine.safetensors" and placed.downloaded is False
    assert make_cache().find_local("lora", "mine.safetensors").path == "loras/mine.safetensors"
    assert make_cache().find_local("lora", "other") is None
    assert registry(models_dir)["loras/mine.safetensors"]["downloaded"] is False


def test_prefetch_reports_every_failure_and_what_was_placed(models_dir):
    with ModelServer() as srv:
        ok = srv.add("/ok.safetensors", safetensors_bytes(seed=19))
        gone = srv.add("/gone.safetensors", b"", [("status", 404, b"", "text/plain")])
        with pytest.raises(DownloadFailed) as info:
            make_cache().prefetch({"loras": [{"url": ok, "name": "ok"}, {"url": gone, "name": "gone"}],
                                   "embeddings": [{"url": srv.add("/e.safetensors", b"{}"), "name": "e"}]})
    result = info.value.to_result()
    assert result["error_type"] == "download_failed" and "2 of 3" in result["error"]
    assert [m["path"] for m in result["models"]] == ["loras/ok.safetensors"]
    assert {d["error_type"] for d in result["details"]} == {"model_not_found", "download_failed"}


def test_part_left_by_a_crashed_worker_is_resumed(models_dir):
    data = safetensors_bytes(size=400_000, seed=20)
    with ModelServer() as srv:
        ref = {"url": srv.add("/crash.safetensors", data), "name": "after_crash"}
        (models_dir / "loras" / parse_ref("lora", ref, None).part_name).write_bytes(data[:150_000])
        placed = make_cache().ensure("lora", ref)
        assert srv.gets("/crash.safetensors")[0].headers["Range"] == "bytes=150000-"
        assert srv.sent["/crash.safetensors"] == len(data) - 150_000
    assert placed.sha256 == hashlib.sha256(data).hexdigest()
    assert leftovers(models_dir) == ["loras/after_crash.safetensors"]
