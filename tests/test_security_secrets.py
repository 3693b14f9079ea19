"""No secret in any error or log line: a job that pastes a credential into any field (a
``?token=`` URL in a model reference, a token as a field name) gets an error that names the
field but not the credential, and the worker's log lines do not carry it either.

The jobs run through the real handler against the replay A1111 server (real HTTP on
127.0.0.1); every URL here is refused by validation, so nothing is downloaded.
"""

from __future__ import annotations

import json
import logging
from urllib.parse import quote

import pytest

from cache.safety import redact_url
from schemas.errors import error_result
from schemas.redact import RedactingFilter, install_log_redaction, redact
from tests.support.jobs import JobRunner

pytestmark = pytest.mark.usefixtures("fresh_worker_state")

run = JobRunner(job_id="secrets")
JOB = {"prompt": "a photo of a cat", "steps": 1, "width": 64, "height": 64, "seed": 1}

ENV_SECRETS = {
    "CIVITAI_TOKEN": "civitai0123456789SecretTokenValue",
    "HF_TOKEN": "hf_SecretsTestToken0123456789abcd",
    "HUGGING_FACE_HUB_TOKEN": "hf_HubTokenSecretsTest9876543210",
    "BUCKET_SECRET_ACCESS_KEY": "BucketSecretKey/ForTheSecretsTest+01",
}
CIVITAI = ENV_SECRETS["CIVITAI_TOKEN"]
# Credentials only the URL's shape gives away (no variable holds them).
QUERY_TOKEN = "QueryTok-9f8e7d6c5b4a3210"
PASSWORD = "hunter2-UserInfoPass-77"
SIGNATURE = "AmzSignature0a1b2c3d4e5f6789"
LONG_PATH = "a" * 90  # reprlib shortens the middle of a long value and keeps its end, the query

URLS = [
    f"http://example.com/lora.safetensors?token={CIVITAI}",
    f"ftp://example.com/lora.safetensors?token={QUERY_TOKEN}",
    f"http://user:{PASSWORD}@example.com/lora.safetensors",
    f"http://example.com/{LONG_PATH}/lora.safetensors?v=2&token={QUERY_TOKEN}",
    f"http://bucket.example.com/m.safetensors?X-Amz-Signature={SIGNATURE}&X-Amz-Date=20240101T000000Z",
    f"http://example.com/{quote(ENV_SECRETS['BUCKET_SECRET_ACCESS_KEY'], safe='')}/m.safetensors",
]
# Every job field a model URL goes in: (label, job builder, the field the error must name).
FIELDS = [
    ("loras[].url", lambda u: {**JOB, "loras": [{"url": u, "weight": 0.5}]}, "loras[0]"),
    ("lora_urls", lambda u: {**JOB, "lora_urls": [u]}, "lora_urls"),
    ("checkpoint.url", lambda u: {**JOB, "checkpoint": {"url": u}}, "checkpoint"),
    ("checkpoint as a name", lambda u: {**JOB, "checkpoint": u}, "checkpoint"),
    ("embeddings[].url", lambda u: {**JOB, "embeddings": [{"url": u}]}, "embeddings[0]"),
    ("prefetch checkpoints", lambda u: {"action": "prefetch", "checkpoints": [{"url": u}]}, "checkpoints[0]"),
    ("prefetch loras", lambda u: {"action": "prefetch", "loras": [{"url": u}]}, "loras[0]"),
]
# A credential pasted where a field name goes, at the top and inside a LoRA entry.
FIELD_NAMES = [
    {**JOB, f"x_{CIVITAI}": 1},
    {**JOB, ENV_SECRETS["BUCKET_SECRET_ACCESS_KEY"]: 1},
    {**JOB, f"loras?token={QUERY_TOKEN}": []},
    {**JOB, "loras": [{"name": "x", ENV_SECRETS["HF_TOKEN"]: 1}]},
    {"action": "prefetch", "checkpoints": ["x"], ENV_SECRETS["HUGGING_FACE_HUB_TOKEN"]: True},
]


def _leaks(text: str) -> list[str]:
    values = [*ENV_SECRETS.values(), quote(ENV_SECRETS["BUCKET_SECRET_ACCESS_KEY"], safe=""),
              QUERY_TOKEN, PASSWORD, SIGNATURE]
    # A shortened echo could still show a credential's first or last part.
    parts = [v[:12] for v in values] + [v[-12:] for v in values]
    return [p for p in parts if p in text]


@pytest.fixture
def secrets_env(worker_env, monkeypatch, caplog):
    for name, value in ENV_SECRETS.items():
        monkeypatch.setenv(name, value)
    caplog.set_level(logging.DEBUG)  # every logger, at every level
    return worker_env


@pytest.mark.parametrize("label, job, field", FIELDS, ids=[f[0] for f in FIELDS])
def test_model_url_credentials_never_in_results_or_logs(secrets_env, caplog, label, job, field):
    results = []
    for url in URLS:
        out = run(job(url))
        assert out.get("error_type") == "validation", (label, url, out)
        assert field in json.dumps(out), ("the error still names the field", out)
        results.append(out)
    assert caplog.records, "logs were captured"
    assert _leaks(json.dumps(results)) == [], (label, results)
    assert _leaks(caplog.text) == [], (label, caplog.text)


def test_credentials_as_field_names_never_in_results_or_logs(secrets_env, caplog):
    results = [run(job) for job in FIELD_NAMES]
    for out in results:
        assert out.get("error_type") == "validation" and "unknown field" in json.dumps(out), out
    assert _leaks(json.dumps(results)) == [], results
    assert _leaks(caplog.text) == [], caplog.text


def test_internal_error_message_and_traceback_are_redacted(monkeypatch, caplog):
    monkeypatch.setenv("CIVITAI_TOKEN", CIVITAI)
    caplog.set_level(logging.DEBUG)
    try:
        raise RuntimeError(f"boom at https://example.com/x?token={QUERY_TOKEN} with {CIVITAI}")
    except RuntimeError as exc:
        out = error_result(exc)
    assert out["error_type"] == "internal" and "https://example.com/x?token=" in out["error"], out
    assert caplog.records[-1].exc_info, "the traceback is logged"
    assert _leaks(json.dumps(out)) == [] and _leaks(caplog.text) == [], (out, caplog.text)


def test_log_filter_redacts_any_logger_through_its_handler(monkeypatch, caplog):
    """install_log_redaction on a handler covers loggers it never named (here a library's)."""
    monkeypatch.setenv("HF_TOKEN", ENV_SECRETS["HF_TOKEN"])
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="urllib3")  # importing runpod sets it to WARNING
    assert caplog.handler in logging.getLogger().handlers
    install_log_redaction()  # as handler.py's __main__ does, on the root logger and its handlers
    try:
        logging.getLogger("urllib3.connectionpool").debug('"GET /x.safetensors?token=%s HTTP/1.1" 200', QUERY_TOKEN)
        logging.getLogger("some.library").info("auth %s", {"Authorization": f"Bearer {ENV_SECRETS['HF_TOKEN']}"})
    finally:
        root = logging.getLogger()
        for target in (root, *root.handlers):
            for f in [f for f in target.filters if isinstance(f, RedactingFilter)]:
                target.removeFilter(f)
    assert len(caplog.records) == 2
    assert _leaks(caplog.text) == [], caplog.text


@pytest.mark.parametrize("url, shown", [
    ("https://u:pw@Example.com:8443/a.safetensors?token=t1&v=2#frag",
     "https://Example.com:8443/a.safetensors?token=%2A%2A%2A&v=2"),
    ("https://[::1]:8443/a?X-Amz-Date=1&X-Amz-Signature=s",
     "https://[::1]:8443/a?X-Amz-Date=%2A%2A%2A&X-Amz-Signature=%2A%2A%2A"),
    ("https://example.com/files/a.safetensors?v=2", "https://example.com/files/a.safetensors?v=2"),
])
def test_redact_url_hides_user_info_and_credential_parameters(url, shown):
    assert redact_url(url) == shown


def test_redact_masks_pairs_bearer_and_quoted_keys_in_free_text():
    text = redact(f"x?api_key={QUERY_TOKEN}&page=2 Authorization: Bearer {SIGNATURE} {{'password': '{PASSWORD}'}}")
    assert _leaks(text) == [] and "page=2" in text and "api_key=***" in text, text
