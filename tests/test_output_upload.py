"""Uploads to an S3-compatible bucket over real HTTP: moto's standalone server on 127.0.0.1.

Covers: auto-upload above MAX_RESULT_MB, base64 below it, per-request s3Config (winning over
the environment), upload 'always', presigned URLs that serve the very bytes, clear errors for
bad credentials (moto with IAM auth switched on), a missing bucket and an unreachable endpoint,
and never a file written to local disk (runpod's rp_upload does that without credentials).
The last tests go through handler.handler with the replay A1111 server."""

from __future__ import annotations

import base64
import io
import json
import logging
import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import boto3
import piexif
import piexif.helper
import pytest
import requests
from moto.server import ThreadedMotoServer
from PIL import Image

from output.bucket import Bucket, find_bucket
from schemas.errors import ResultTooLarge, UploadFailed, error_result
from schemas.output import OutputOptions
from schemas.settings import Settings
from tests.replay import ReplayServer
from tests.support.jobs import deliver_result, job_like, recorded_result
from tests.support.worker import start_worker

TXT2IMG = "/sdapi/v1/txt2img"
BUCKET_ENV = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY", "BUCKET_NAME")


@dataclass
class S3:
    url: str
    key_id: str  # a real IAM access key of the moto server (valid when auth is on)
    secret: str
    bucket: str

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, region_name="us-east-1",
                            aws_access_key_id=self.key_id, aws_secret_access_key=self.secret)

    def objects(self) -> dict[str, bytes]:
        c = self.client()
        listed = c.list_objects_v2(Bucket=self.bucket).get("Contents", [])
        return {o["Key"]: c.get_object(Bucket=self.bucket, Key=o["Key"])["Body"].read() for o in listed}

    def config(self, **over) -> dict:
        cfg = {"endpointUrl": self.url, "accessId": self.key_id, "accessSecret": self.secret,
               "bucketName": self.bucket}
        cfg.update(over)
        return cfg

    def auth(self, on: bool) -> None:
        """moto checks signatures against its IAM users only when told to (reset-auth 0)."""
        r = requests.post(f"{self.url}/moto-api/reset-auth", data="0" if on else "inf", timeout=5)
        r.raise_for_status()


@pytest.fixture(scope="module")
def s3_server() -> Iterator[S3]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    url = f"http://{host}:{port}"
    setup = dict(endpoint_url=url, region_name="us-east-1", aws_access_key_id="setup", aws_secret_access_key="setup")
    iam = boto3.client("iam", **setup)
    iam.create_user(UserName="worker")
    iam.put_user_policy(UserName="worker", PolicyName="s3", PolicyDocument=json.dumps(
        {"Version": "2012-10-17", "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
    key = iam.create_access_key(UserName="worker")["AccessKey"]
    srv = S3(url, key["AccessKeyId"], key["SecretAccessKey"], "")
    try:
        yield srv
    finally:
        srv.auth(False)
        server.stop()


@pytest.fixture
def s3(s3_server: S3) -> S3:
    """A fresh, empty bucket per test."""
    s3_server.auth(False)
    bucket = f"out-{uuid.uuid4().hex[:10]}"
    s3_server.client().create_bucket(Bucket=bucket)
    return S3(s3_server.url, s3_server.key_id, s3_server.secret, bucket)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No bucket in the environment, 20 MB default limit, and a private empty working
    directory, returned so tests can show nothing was written there."""
    for name in (*BUCKET_ENV, "MAX_RESULT_MB"):
        monkeypatch.delenv(name, raising=False)
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd


def assert_nothing_written(cwd: Path) -> None:
    assert list(cwd.rglob("*")) == []
    repo = Path(__file__).resolve().parent.parent
    assert not (repo / "simulated_uploaded").exists() and not (repo / "local_upload").exists()


def settings_with(monkeypatch: pytest.MonkeyPatch, max_mb: str | None = None) -> Settings:
    if max_mb is not None:
        monkeypatch.setenv("MAX_RESULT_MB", max_mb)
    return Settings.from_env()


def env_bucket(monkeypatch: pytest.MonkeyPatch, s3: S3) -> None:
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", s3.url)
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", s3.key_id)
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", s3.secret)
    monkeypatch.setenv("BUCKET_NAME", s3.bucket)


# --------------------------------------------------------------------------- deliver_result()
def test_auto_uploads_above_the_limit_and_urls_serve_the_same_bytes(s3, clean_env, monkeypatch, caplog):
    caplog.set_level(logging.DEBUG, logger="output.delivery")
    env_bucket(monkeypatch, s3)
    settings = settings_with(monkeypatch, "0.01")  # 10 kB: two 64x64 PNGs are ~25 kB of JSON
    result = recorded_result("txt2img_batch_size_2")
    originals = [base64.b64decode(b) for b in result["images"]]
    out = deliver_result(result, None, settings, "job/../42", None)

    assert [sorted(img) for img in out["images"]] == [["format", "height", "seed", "url", "width"]] * 2
    assert [img["seed"] for img in out["images"]] == result["info"]["all_seeds"]
    assert all((img["format"], img["width"], img["height"]) == ("png", 64, 64) for img in out["images"])
    for img, original in zip(out["images"], originals, strict=True):
        got = requests.get(img["url"], timeout=10)
        assert got.status_code == 200 and got.content == original
        assert got.headers["content-type"] == "image/png"
        assert "X-Amz-Signature=" in img["url"] and "X-Amz-Expires=604800" in img["url"]
    stored = s3.objects()
    assert sorted(stored.values()) == sorted(originals)
    assert all(key.startswith("job_.._42/") for key in stored)  # the job id cannot make a path
    assert out["delivery"]["uploaded"] and out["delivery"]["url_kind"] == "presigned"
    assert out["delivery"]["inline_bytes"] > 10_000
    assert s3.secret not in json.dumps(out) and s3.secret not in caplog.text
    assert "uploading 2 image(s)" in caplog.text
    assert_nothing_written(clean_env)


def test_below_the_limit_stays_base64_even_with_a_bucket(s3, clean_env, monkeypatch):
    env_bucket(monkeypatch, s3)
    result = recorded_result("txt2img_batch_size_2")
    out = deliver_result(dict(result), None, settings_with(monkeypatch), "j", None)
    assert out["images"] == result["images"] and not out["delivery"]["uploaded"]
    assert s3.objects() == {}
    assert_nothing_written(clean_env)


def test_per_request_s3config_wins_over_the_environment(s3, clean_env, monkeypatch):
    # the environment points at an endpoint nobody listens on: touching it would fail
    monkeypatch.setenv("BUCKET_ENDPOINT_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("BUCKET_ACCESS_KEY_ID", "env-id")
    monkeypatch.setenv("BUCKET_SECRET_ACCESS_KEY", "env-secret")
    out = deliver_result(recorded_result("txt2img_minimal"), OutputOptions(upload="always"),
                  settings_with(monkeypatch), "job-s3", s3.config())
    assert out["delivery"]["bucket"] == s3.bucket and out["delivery"]["bucket_source"] == "s3Config"
    stored = s3.objects()
    assert len(stored) == 1 and next(iter(stored)).startswith("job-s3/")
    assert requests.get(out["images"][0]["url"], timeout=10).status_code == 200
    assert_nothing_written(clean_env)


def test_always_with_jpeg_uploads_jpeg_with_its_infotext(s3, clean_env, monkeypatch):
    result = recorded_result("txt2img_hires_latent")
    with Image.open(io.BytesIO(base64.b64decode(result["images"][0]))) as im:
        infotext = im.info["parameters"]
    out = deliver_result(result, OutputOptions(format="jpeg", quality=80, upload="always"),
                  settings_with(monkeypatch), "j", s3.config())
    img = out["images"][0]
    assert (img["format"], img["width"], img["height"], img["seed"]) == ("jpeg", 96, 96, result["seeds"][0])
    got = requests.get(img["url"], timeout=10)
    assert got.headers["content-type"] == "image/jpeg"
    with Image.open(io.BytesIO(got.content)) as im:
        assert im.format == "JPEG"
        exif = piexif.load(im.info["exif"])
        assert piexif.helper.UserComment.load(exif["Exif"][piexif.ExifIFD.UserComment]) == infotext
    assert [k.endswith(".jpg") for k in s3.objects()] == [True]


def test_bad_credentials_are_a_clear_error_without_secrets(s3, clean_env, monkeypatch, caplog):
    caplog.set_level(logging.INFO)
    settings = settings_with(monkeypatch, "0.01")
    s3.auth(True)
    try:
        # the real key is accepted with auth on: the failures below are the credentials' fault
        ok = deliver_result(recorded_result("txt2img_minimal"), OutputOptions(upload="always"), settings, "ok",
                     s3.config())
        assert ok["delivery"]["uploaded"]
        cases = [(s3.config(accessId="AKIANOTAREALKEY00000"), "rejected the access key id"),
                 (s3.config(accessSecret="wrong-secret-value-123"), "rejected the secret key")]
        for cfg, why in cases:
            with pytest.raises(UploadFailed) as exc:
                deliver_result(recorded_result("txt2img_batch_size_2"), None, settings, "bad", cfg)
            out = error_result(exc.value)
            assert out["error_type"] == "upload_failed" and why in out["error"]
            assert f"bucket '{s3.bucket}'" in out["error"] and "the images were not kept" in out["error"]
            text = json.dumps(out) + caplog.text
            assert cfg["accessSecret"] not in text and s3.secret not in text
    finally:
        s3.auth(False)
    assert [k.split("/")[0] for k in s3.objects()] == ["ok"]  # nothing from the failed jobs
    assert_nothing_written(clean_env)


def test_missing_bucket_is_a_clear_error(s3, clean_env, monkeypatch):
    with pytest.raises(UploadFailed) as exc:
        deliver_result(recorded_result("txt2img_minimal"), OutputOptions(upload="always"), settings_with(monkeypatch),
                "j", s3.config(bucketName="no-such-bucket-here"))
    msg = exc.value.message
    assert "bucket 'no-such-bucket-here'" in msg and "does not exist" in msg and "s3Config.bucketName" in msg
    env_bucket(monkeypatch, s3)
    monkeypatch.setenv("BUCKET_NAME", "also-missing")
    with pytest.raises(UploadFailed, match="does not exist; create it or set BUCKET_NAME"):
        deliver_result(recorded_result("txt2img_minimal"), OutputOptions(upload="always"), settings_with(monkeypatch),
                "j", None)
    assert_nothing_written(clean_env)


def test_still_too_large_after_upload_is_an_error(s3, clean_env, monkeypatch):
    # 1 kB: even without its images, a result's info and parameters are larger
    with pytest.raises(ResultTooLarge, match=r"is still \d+\.\d kB with its images uploaded"):
        deliver_result(recorded_result("txt2img_minimal"), None, settings_with(monkeypatch, "0.001"), "j", s3.config())
    assert s3.objects() == {}  # measured with stand-in URLs before anything was uploaded
    assert_nothing_written(clean_env)


def test_unreachable_endpoint_is_a_clear_error(clean_env, monkeypatch):
    cfg = {"endpointUrl": "http://127.0.0.1:9", "accessId": "a", "accessSecret": "b", "bucketName": "out"}
    with pytest.raises(UploadFailed, match="could not be reached"):
        deliver_result(recorded_result("txt2img_minimal"), OutputOptions(upload="always"), settings_with(monkeypatch),
                "j", cfg)
    assert_nothing_written(clean_env)


def test_over_the_limit_without_a_bucket_writes_nothing(clean_env, monkeypatch):
    with pytest.raises(ResultTooLarge, match="configure a bucket"):
        deliver_result(recorded_result("txt2img_batch_size_2"), None, settings_with(monkeypatch, "0.01"), "j", None)
    assert_nothing_written(clean_env)


def test_region_and_default_bucket_name():
    def region(url: str) -> str:
        return Bucket(url, "a", "b", "n", "environment").region()

    assert region("https://s3.eu-west-3.amazonaws.com") == "eu-west-3"
    assert region("https://mybucket.s3.us-west-2.amazonaws.com") == "us-west-2"
    assert region("https://ams3.digitaloceanspaces.com") == "ams3"
    assert region("https://acc.r2.cloudflarestorage.com") == "us-east-1"
    bucket, why = find_bucket(None, {"BUCKET_ENDPOINT_URL": "http://h", "BUCKET_ACCESS_KEY_ID": "a",
                                     "BUCKET_SECRET_ACCESS_KEY": "b"})
    assert why is None and len(bucket.name) == 5 and bucket.name[2] == "-"  # rp_upload's "%m-%y"


# --------------------------------------------------------------------------- through the handler
@pytest.fixture
def worker(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, models_dir: Path,
           clean_env: Path) -> Iterator[ReplayServer]:
    srv = start_worker("a1111", monkeypatch, tmp_path, models_dir)
    yield srv
    srv.stop()


def test_handler_auto_uploads_to_the_jobs_s3config(worker, s3, monkeypatch, clean_env):
    from handler import handler

    monkeypatch.setenv("MAX_RESULT_MB", "0.01")
    out = handler({"id": "rp-job-1", "input": job_like(worker, "txt2img_batch_size_2"), "s3Config": s3.config()})
    assert "error" not in out, out
    recorded = worker.recording("txt2img_batch_size_2")["response"]["json"]["images"]
    assert [requests.get(i["url"], timeout=10).content for i in out["images"]] == \
        [base64.b64decode(b) for b in recorded]
    assert all(k.startswith("rp-job-1/") for k in s3.objects())
    assert s3.secret not in json.dumps(out)
    assert_nothing_written(clean_env)


def test_handler_webp_below_the_limit_is_inline(worker, clean_env):
    from handler import handler

    out = handler({"id": "j", "input": job_like(worker, "txt2img_minimal", output={"format": "webp", "quality": 60})})
    assert "error" not in out, out
    with Image.open(io.BytesIO(base64.b64decode(out["images"][0]))) as im:
        assert (im.format, im.size) == ("WEBP", (64, 64))
    assert out["delivery"] == {"format": "webp", "uploaded": False, "inline_bytes": out["delivery"]["inline_bytes"]}


def test_handler_refuses_an_undeliverable_job_before_generating(worker, clean_env):
    from handler import handler

    bad = handler({"id": "j", "input": job_like(worker, "txt2img_minimal"),
                   "s3Config": {"endpointUrl": "http://h", "accessId": "id-123"}})
    assert bad["error_type"] == "validation" and "s3Config.accessSecret is required" in bad["error"]
    always = handler({"id": "j", "input": job_like(worker, "txt2img_minimal", output={"upload": "always"})})
    assert always["error_type"] == "upload_failed" and "no bucket is configured" in always["error"]
    assert worker.sent("POST", TXT2IMG) == []  # no GPU time spent on either


def test_handler_too_large_without_a_bucket(worker, monkeypatch, clean_env):
    from handler import handler

    monkeypatch.setenv("MAX_RESULT_MB", "0.01")
    out = handler({"id": "j", "input": job_like(worker, "txt2img_batch_size_2")})
    assert out["error_type"] == "result_too_large"
    assert "fewer or smaller images" in out["error"] and "configure a bucket" in out["error"]
    assert len(worker.sent("POST", TXT2IMG)) == 1
    assert_nothing_written(clean_env)
    assert not os.listdir(clean_env)

