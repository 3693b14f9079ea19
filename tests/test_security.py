"""Security checks through the real handler: path traversal in every model-name field,
symlinks out of MODELS_DIR, pickled formats, private-address URLs, and token values that must
never reach a log line, the process's output, a job result, or A1111.

Everything runs over real HTTP on 127.0.0.1: the replay A1111 server, an HTTPS file server for
``url`` sources (they must be https) and the scripted model server (tests/support/servers.py)
standing in for Civitai and the Hugging Face Hub.
"""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest

from cache.safety import check_url
from schemas.errors import ValidationFailed
from tests.support.jobs import JobRunner, png_b64
from tests.support.model_files import lora_bytes
from tests.support.servers import ModelServer

TXT2IMG = "/sdapi/v1/txt2img"
JOB = {"prompt": "a photo of a cat", "steps": 1, "width": 64, "height": 64, "seed": 1}
MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")

# Every test starts a replay server of its own, and ports are reused: no inherited worker state.
pytestmark = pytest.mark.usefixtures("fresh_worker_state")

run = JobRunner(job_id="sec")


PNG = png_b64()


def model_files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.name.lower().endswith(MODEL_SUFFIXES)}


@pytest.fixture
def sec_env(worker_env, models_dir, tmp_path, monkeypatch):
    """worker_env plus a model outside MODELS_DIR (``<tmp>/outside/secret.safetensors``) that no
    job may reach, and fast download retries."""
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.safetensors").write_bytes(lora_bytes())
    monkeypatch.setenv("DOWNLOAD_ATTEMPTS", "1")
    worker_env.models_dir = models_dir
    assert "images" in run(JOB, "warm-up")  # ready (the warm-up generation is behind us)
    worker_env.reset_requests()
    return worker_env


# --------------------------------------------------------------------------- path traversal
TRAVERSALS = ["../../outside/secret", "../../outside/secret.safetensors", "..", "/etc/passwd",
              "..\\..\\outside\\secret", "loras/../../outside/secret", "....//outside/secret", "%2e%2e/outside/secret",
              "secret\x00.safetensors", "../secret", ".secret", " ../secret"]


def _job_with(field: str, name: str, base: str) -> dict:
    url = f"{base}/lora.safetensors"
    jobs = {
        "checkpoint": {**JOB, "checkpoint": name},
        "loras[].name": {**JOB, "loras": [{"name": name, "weight": 0.5}]},
        "loras[] as string": {**JOB, "loras": [name]},
        "loras[].url name": {**JOB, "loras": [{"url": url, "name": name}]},
        "loras[].hf file": {**JOB, "loras": [{"hf": "owner/repo", "file": name}]},
        "loras[].hf name": {**JOB, "loras": [{"hf": "owner/repo", "file": "x.safetensors", "name": name}]},
        "embeddings[]": {**JOB, "embeddings": [name]},
        "embeddings[].url name": {**JOB, "embeddings": [{"url": url, "name": name}]},
        "checkpoint.url name": {**JOB, "checkpoint": {"url": url, "name": name}},
        "controlnet[].model": {**JOB, "controlnet": [{"model": name, "image": PNG}]},
        "modules": {**JOB, "modules": [name]},
        "prefetch checkpoints": {"action": "prefetch", "checkpoints": [name]},
        "prefetch loras": {"action": "prefetch", "loras": [name]},
        "prefetch embeddings": {"action": "prefetch", "embeddings": [name]},
        "prefetch loras.url name": {"action": "prefetch", "loras": [{"url": url, "name": name}]},
        "prefetch checkpoints.hf file": {"action": "prefetch", "checkpoints": [{"hf": "o/r", "file": name}]},
    }
    return jobs[field]


FIELDS = ["checkpoint", "loras[].name", "loras[] as string", "loras[].url name", "loras[].hf file", "loras[].hf name",
          "embeddings[]", "embeddings[].url name", "checkpoint.url name", "controlnet[].model", "modules",
          "prefetch checkpoints", "prefetch loras", "prefetch embeddings", "prefetch loras.url name",
          "prefetch checkpoints.hf file"]


@pytest.mark.parametrize("field", FIELDS)
def test_path_traversal_refused_in_every_model_name_field(sec_env, files_server, models_dir, tmp_path,
                                                          field):
    base, files = files_server
    files.files["/lora.safetensors"] = (200, "application/octet-stream", lora_bytes(), None)
    secret = (tmp_path / "outside" / "secret.safetensors").read_bytes()
    before_models, before_tmp = model_files(models_dir), model_files(tmp_path)
    for name in TRAVERSALS:
        sent = len(sec_env.sent("POST", TXT2IMG))
        out = run(_job_with(field, name, base))
        assert "error" in out, (field, name, out)
        # ControlNet model names are only matched against A1111's own list, never used as paths.
        allowed = {"validation", "model_not_found"} if field == "controlnet[].model" else {"validation"}
        assert out["error_type"] in allowed, (field, name, out)
        assert len(sec_env.sent("POST", TXT2IMG)) == sent, "nothing was generated"
    assert files.hits == {}, "no download was even started"
    assert model_files(models_dir) == before_models and model_files(tmp_path) == before_tmp
    assert (tmp_path / "outside" / "secret.safetensors").read_bytes() == secret


def test_content_disposition_cannot_place_a_file_outside(sec_env, models_dir, tmp_path, monkeypatch):
    """Civitai names the file in Content-Disposition; a name with a path is cut to its base name."""
    with ModelServer() as civitai:
        civitai.add("/api/download/models/4242", lora_bytes(),
                    headers={"Content-Disposition": 'attachment; filename="../../outside/evil.safetensors"'})
        monkeypatch.setenv("CIVITAI_BASE_URL", civitai.url)
        out = run({"action": "prefetch", "loras": [{"civitai": 4242}]})
    assert "error" not in out, out
    assert out["models"][0]["path"] == "loras/evil.safetensors"
    assert not (tmp_path / "outside" / "evil.safetensors").exists()
    assert (models_dir / "loras" / "evil.safetensors").is_file()


# --------------------------------------------------------------------------- symlinks
def test_symlinked_model_out_of_models_dir_is_refused(sec_env, models_dir, tmp_path):
    (models_dir / "loras" / "escape.safetensors").symlink_to(tmp_path / "outside" / "secret.safetensors")
    (models_dir / "checkpoints" / "escape_ckpt.safetensors").symlink_to(tmp_path / "outside" / "secret.safetensors")
    sec_env.models_dir = None  # A1111 does not list it, so the worker's cache is asked for it
    for inp in ({**JOB, "loras": [{"name": "escape", "weight": 0.5}]},
                {**JOB, "checkpoint": "escape_ckpt"},
                {"action": "prefetch", "loras": ["escape"]},
                {"action": "prefetch", "checkpoints": ["escape_ckpt.safetensors"]}):
        out = run(inp)
        assert out.get("error_type") == "validation", (inp, out)
        assert "outside MODELS_DIR" in json.dumps(out), out
    assert not sec_env.sent("POST", TXT2IMG), "nothing was generated"


def test_download_never_writes_through_a_symlink(sec_env, files_server, models_dir, tmp_path):
    base, files = files_server
    files.files["/new.safetensors"] = (200, "application/octet-stream", lora_bytes(dim=8), None)
    victim = tmp_path / "outside" / "victim.safetensors"
    victim.write_bytes(b"operator data")
    (models_dir / "loras" / "target.safetensors").symlink_to(victim)
    out = run({"action": "prefetch", "loras": [{"url": f"{base}/new.safetensors", "name": "target"}]})
    assert out.get("error_type") == "validation", out
    assert victim.read_bytes() == b"operator data"
    assert (models_dir / "loras" / "target.safetensors").is_symlink()


# --------------------------------------------------------------------------- pickles
@pytest.mark.parametrize("suffix", [".ckpt", ".pt", ".pth", ".bin"])
def test_pickled_formats_refused_before_download(sec_env, files_server, models_dir, monkeypatch,
                                                 suffix):
    base, files = files_server
    files.files[f"/model{suffix}"] = (200, "application/octet-stream", b"PK\x03\x04 pickled torch zip", None)
    for inp in ({"action": "prefetch", "checkpoints": [{"url": f"{base}/model{suffix}"}]},
                {**JOB, "loras": [{"url": f"{base}/model{suffix}", "name": "pickled"}]},
                {**JOB, "embeddings": [{"hf": "owner/repo", "file": f"emb{suffix}"}]}):
        out = run(inp)
        assert out.get("error_type") == "validation", (inp, out)
        assert "ALLOW_PICKLE_MODELS" in out["error"] or "ALLOW_PICKLE_MODELS" in json.dumps(out.get("details")), out
    assert files.hits == {}, "a pickle is refused before a byte is downloaded"
    assert not [p for p in model_files(models_dir) if not p.endswith(".safetensors")]
    # The same download goes through when the operator allows pickles: the refusal above was the rule.
    monkeypatch.setenv("ALLOW_PICKLE_MODELS", "1")
    out = run({"action": "prefetch", "checkpoints": [{"url": f"{base}/model{suffix}"}]})
    assert "error" not in out, out
    assert out["models"][0]["path"].endswith(suffix)


def test_civitai_pickle_named_by_the_server_is_refused_and_removed(sec_env, models_dir, monkeypatch):
    with ModelServer() as civitai:
        civitai.add("/api/download/models/77", b"PK\x03\x04 pickled torch zip",
                    headers={"Content-Disposition": 'attachment; filename="evil.ckpt"'})
        monkeypatch.setenv("CIVITAI_BASE_URL", civitai.url)
        out = run({"action": "prefetch", "checkpoints": [{"civitai": 77}]})
    assert out.get("error_type") == "validation" and "ALLOW_PICKLE_MODELS" in json.dumps(out), out
    left = [p for p in models_dir.rglob("*") if p.is_file() and p.name != "cache_registry.json"
            and ".locks" not in p.parts]
    assert left == [], left


# --------------------------------------------------------------------------- private addresses
PRIVATE_HOSTS = ["127.0.0.1", "localhost", "[::1]", "[::ffff:127.0.0.1]", "2130706433", "0.0.0.0", "127.1",  # noqa: S104
                 "10.0.0.5", "192.168.1.1", "172.16.0.1", "169.254.169.254", "[fe80::1]", "100.64.0.1"]


@pytest.mark.parametrize("host", PRIVATE_HOSTS)
def test_private_address_urls_refused(sec_env, files_server, monkeypatch, host):
    base, files = files_server
    port = base.rsplit(":", 1)[1]
    files.files["/x.safetensors"] = (200, "application/octet-stream", lora_bytes(), None)
    monkeypatch.delenv("DOWNLOAD_ALLOW_PRIVATE", raising=False)
    url = f"https://{host}:{port}/x.safetensors"
    for inp in ({"action": "prefetch", "loras": [{"url": url, "name": "x"}]},
                {**JOB, "loras": [{"url": url, "name": "x"}]},
                {**JOB, "lora_urls": [url]}):
        out = run(inp)
        assert out.get("error_type") == "validation", (inp, out)
        assert "DOWNLOAD_ALLOW_PRIVATE" in json.dumps(out), out
    assert files.hits == {}, "the private address was never contacted"


def test_private_civitai_and_hub_endpoints_refused(sec_env, monkeypatch):
    monkeypatch.delenv("DOWNLOAD_ALLOW_PRIVATE", raising=False)
    with ModelServer() as srv:
        srv.add("/api/download/models/5", lora_bytes())
        srv.add_hf("owner/repo", "x.safetensors", lora_bytes())
        monkeypatch.setenv("CIVITAI_BASE_URL", srv.url)
        monkeypatch.setenv("HF_ENDPOINT", srv.url)
        for ref in ({"civitai": 5}, {"hf": "owner/repo", "file": "x.safetensors"}):
            out = run({"action": "prefetch", "loras": [ref]})
            assert out.get("error_type") == "validation" and "DOWNLOAD_ALLOW_PRIVATE" in json.dumps(out), out
        assert srv.seen == []


def test_private_url_allowed_only_when_configured(sec_env, files_server, monkeypatch):
    """The control: with DOWNLOAD_ALLOW_PRIVATE=1 the very same URL downloads."""
    base, files = files_server
    files.files["/x.safetensors"] = (200, "application/octet-stream", lora_bytes(), None)
    monkeypatch.setenv("DOWNLOAD_ALLOW_PRIVATE", "1")
    out = run({"action": "prefetch", "loras": [{"url": f"{base}/x.safetensors", "name": "x"}]})
    assert "error" not in out, out
    assert files.hits == {"/x.safetensors": 1}


def test_check_url_blocks_every_non_public_address():
    for host in PRIVATE_HOSTS:
        with pytest.raises(ValidationFailed):
            check_url(f"https://{host}/x.safetensors", allow_private=False)


# --------------------------------------------------------------------------- tokens
SECRETS = {
    "HF_TOKEN": "hf_SecUrItyTestToken0123456789abcd",
    "CIVITAI_TOKEN": "civitai0123456789SecretTokenValue",
    "BUCKET_ACCESS_KEY_ID": "AKIASECURITYTEST0001",
    "BUCKET_SECRET_ACCESS_KEY": "BucketSecretKey/ForTheSecurityTest+01",
}
S3_SECRET = "PerRequestS3Secret-0123456789"


def test_tokens_never_in_logs_output_results_or_a1111(sec_env, files_server, models_dir, monkeypatch,
                                                      caplog, capfd):
    base, files = files_server
    for name, value in SECRETS.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", "http://127.0.0.1:9")  # unreachable: the upload fails
    # Production logs at INFO (handler.py); our own modules are captured at DEBUG too.
    caplog.set_level(logging.INFO)
    for logger in ("worker", "handler", "cache", "a1111", "schemas", "presets"):
        caplog.set_level(logging.DEBUG, logger=logger)
    civ_auth = f"Bearer {SECRETS['CIVITAI_TOKEN']}"
    results = []
    with ModelServer() as civitai, ModelServer(host="localhost") as cdn:
        cdn.add("/files/model.safetensors", lora_bytes(dim=3),
                headers={"Content-Disposition": 'attachment; filename="civ_model.safetensors"'})
        civitai.add("/api/download/models/1", b"", [("redirect", f"{cdn.url}/files/model.safetensors")],
                    auth=civ_auth)
        civitai.add("/api/download/models/2", b"", [("status", 401, b'{"error":"Unauthorized"}',
                                                     "application/json")])
        civitai.add("/api/download/models/3", b"", [("status", 403, b"forbidden", "text/plain")])
        civitai.add_hf("owner/gated", "x.safetensors", lora_bytes(), auth="Bearer nobody-has-this")
        monkeypatch.setenv("CIVITAI_BASE_URL", civitai.url)
        monkeypatch.setenv("HF_ENDPOINT", civitai.url)
        files.files["/x.safetensors"] = (404, "text/plain", b"missing", None)
        jobs = [
            {"action": "prefetch", "loras": [{"civitai": 1}]},  # token sent, then a redirect to another host
            {"action": "prefetch", "loras": [{"civitai": 2}]},  # 401: the hint names the variable
            {"action": "prefetch", "loras": [{"civitai": 3}]},
            {"action": "prefetch", "loras": [{"hf": "owner/gated", "file": "x.safetensors"}]},
            {"action": "prefetch", "loras": [{"url": f"{base}/x.safetensors?token={SECRETS['CIVITAI_TOKEN']}",
                                              "name": "tok"}]},
            {**JOB, "output": {"upload": "always"}},  # env bucket unreachable
            {"action": "health"},
            {"action": "list_models"},
            {**JOB, "loras": [{"name": "civ_model", "weight": 0.4}]},
        ]
        for inp in jobs:
            results.append(run(inp))
        results.append(run(JOB, s3Config={"endpointUrl": "not-a-url", "accessId": "a", "accessSecret": S3_SECRET}))
        results.append(run({**JOB, "output": {"upload": "always"}},
                           s3Config={"endpointUrl": "http://127.0.0.1:9", "accessId": "a",
                                     "accessSecret": S3_SECRET, "bucketName": "out"}))
        civ_seen = [s for s in civitai.seen if s.path.startswith("/api/download/models/1")]
        cdn_seen = list(cdn.seen)
        hf_seen = [s for s in civitai.seen if "/owner/gated/" in s.path]
    # The jobs did what they should (so the scan below covers real paths, not early refusals).
    assert "error" not in results[0] and results[0]["models"][0]["name"] == "civ_model", results[0]
    assert results[1]["error_type"] == "download_failed" and "CIVITAI_TOKEN" in results[1]["error"], results[1]
    assert results[3]["error_type"] in {"download_failed", "model_not_found"}, results[3]
    assert results[5]["error_type"] == "upload_failed", results[5]
    assert "error" not in results[6] and "error" not in results[7]
    assert "images" in results[8], results[8]
    assert results[9]["error_type"] == "validation" and results[10]["error_type"] == "upload_failed"
    # Credentials go where they belong, and nowhere else.
    assert civ_seen and all(s.headers.get("Authorization") == civ_auth for s in civ_seen)
    assert cdn_seen and all("Authorization" not in s.headers for s in cdn_seen), "token sent to the CDN host"
    assert hf_seen and all(s.headers.get("Authorization") == f"Bearer {SECRETS['HF_TOKEN']}" for s in hf_seen)
    out, err = capfd.readouterr()
    haystacks = {"logs": caplog.text, "stdout": out, "stderr": err, "results": json.dumps(results),
                 "sent to A1111": json.dumps([[r.path, r.query, r.json, r.headers] for r in sec_env.requests])}
    assert caplog.records, "logs were captured"
    for name, value in [*SECRETS.items(), ("s3Config.accessSecret", S3_SECRET)]:
        for where, text in haystacks.items():
            assert value not in text, f"{name} appears in {where}"
    assert hashlib.sha256(SECRETS["HF_TOKEN"].encode()).hexdigest() not in json.dumps(results)
