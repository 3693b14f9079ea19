"""The bucket a job's images go to and the upload itself.

The bucket is the job's ``s3Config`` or else the ``BUCKET_*`` environment. Uploads use boto3
directly: runpod's ``rp_upload`` quietly writes to local disk when credentials are missing.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from schemas.errors import UploadFailed
from schemas.output import parse_s3_config

log = logging.getLogger(__name__)

# The longest a SigV4 presigned URL may live (7 days); rp_upload uses the same.
URL_EXPIRES_S = 7 * 24 * 3600
ENV_VARS = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")
BUCKET_NAME_ENV = "BUCKET_NAME"
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}


@dataclass(frozen=True)
class Bucket:
    endpoint_url: str
    access_id: str = field(repr=False)
    secret: str = field(repr=False)
    name: str
    source: str  # "s3Config" | "environment"

    @property
    def host(self) -> str:
        # hostname[:port] only: a netloc may carry user:password@
        parts = urlsplit(self.endpoint_url)
        return f"{parts.hostname}:{parts.port}" if parts.port else str(parts.hostname)

    def region(self) -> str:
        """From the endpoint host like rp_upload (AWS ``s3.<region>.``, DigitalOcean Spaces);
        us-east-1 otherwise (R2, MinIO and most others accept any)."""
        host = urlsplit(self.endpoint_url).hostname or ""
        m = re.search(r"(?:^|\.)s3[.-]([a-z0-9-]+)\.amazonaws\.com$", host)
        if m and m.group(1) != "external-1":
            return m.group(1)
        m = re.search(r"(?:^|\.)([a-z0-9-]+)\.digitaloceanspaces\.com$", host)
        return m.group(1) if m else "us-east-1"


def _default_bucket_name() -> str:
    # rp_upload's default: with a virtual-hosted endpoint (https://<bucket>.s3.<region>...)
    # it becomes a month folder inside that bucket, so existing RunPod setups keep working.
    return time.strftime("%m-%y")


def find_bucket(s3_config: Any, env: Mapping[str, str] | None = None) -> tuple[Bucket | None, str | None]:
    """The bucket to upload to: the job's s3Config, else the BUCKET_* environment.
    Returns (bucket, None) or (None, why there is none). Raises ValidationFailed for a bad
    s3Config."""
    cfg = parse_s3_config(s3_config)
    if cfg is not None:
        return Bucket(cfg.endpointUrl, cfg.accessId, cfg.accessSecret,
                      cfg.bucketName or _default_bucket_name(), "s3Config"), None
    env = os.environ if env is None else env
    values = {name: (env.get(name) or "").strip() for name in ENV_VARS}
    missing = [name for name, value in values.items() if not value]
    if len(missing) == len(ENV_VARS):
        return None, "no bucket is configured"
    if missing:
        return None, f"the bucket configuration is incomplete: {', '.join(missing)} not set"
    name = (env.get(BUCKET_NAME_ENV) or "").strip() or _default_bucket_name()
    return Bucket(values["BUCKET_ENDPOINT_URL"], values["BUCKET_ACCESS_KEY_ID"],
                  values["BUCKET_SECRET_ACCESS_KEY"], name, "environment"), None


_CLIENT_ERRORS = {
    "InvalidAccessKeyId": "the bucket rejected the access key id",
    "SignatureDoesNotMatch": "the bucket rejected the secret key (signature mismatch)",
    "AccessDenied": "the credentials may not write to the bucket",
    "Forbidden": "the credentials may not write to the bucket",
    "InvalidToken": "the bucket rejected the credentials",
    "ExpiredToken": "the credentials have expired",
}


def _upload_error(exc: Exception, bucket: Bucket) -> UploadFailed:
    """One sentence without credentials or presigned URLs (boto's own messages carry neither,
    but only the error code is kept to be sure)."""
    from botocore.exceptions import ClientError, ConnectTimeoutError, EndpointConnectionError

    where = f"bucket '{bucket.name}' at {bucket.host} (from {bucket.source})"
    if isinstance(exc, ClientError):
        code = str(exc.response.get("Error", {}).get("Code") or "")
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if code in {"NoSuchBucket", "404", "NotFound"}:
            hint = "s3Config.bucketName" if bucket.source == "s3Config" else BUCKET_NAME_ENV
            why = f"the bucket does not exist; create it or set {hint}"
        else:
            why = _CLIENT_ERRORS.get(code) or f"the bucket answered {code or 'an error'}"
        return UploadFailed(f"uploading the images to {where} failed: {why} "
                            f"(HTTP {status}, {code}); the images were not kept", upload_error=code)
    if isinstance(exc, EndpointConnectionError | ConnectTimeoutError):
        return UploadFailed(f"uploading the images to {where} failed: the endpoint could not be reached; "
                            "the images were not kept", upload_error=type(exc).__name__)
    return UploadFailed(f"uploading the images to {where} failed: {type(exc).__name__}; "
                        "the images were not kept", upload_error=type(exc).__name__)


def _s3_client(bucket: Bucket) -> Any:
    import boto3
    from botocore.config import Config

    return boto3.session.Session().client(
        "s3", endpoint_url=bucket.endpoint_url, region_name=bucket.region(),
        aws_access_key_id=bucket.access_id, aws_secret_access_key=bucket.secret,
        config=Config(signature_version="s3v4", connect_timeout=10, read_timeout=60,
                      retries={"max_attempts": 3, "mode": "standard"}),
    )


def _safe_key_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text)[:100] or "job"


def upload(bucket: Bucket, job_id: str, files: Sequence[tuple[bytes, str]]) -> list[str]:
    """Put each (bytes, format) under ``<job id>/<n>-<random>.<ext>`` and return presigned GET
    URLs, in order. All or nothing: on a failure the objects already written are deleted
    (best effort) and UploadFailed is raised; nothing is ever written to local disk."""
    from botocore.exceptions import BotoCoreError, ClientError

    client = _s3_client(bucket)
    prefix = _safe_key_part(job_id)
    token = uuid.uuid4().hex[:8]
    keys = [f"{prefix}/{i}-{token}.{EXTENSIONS.get(fmt, fmt)}" for i, (_, fmt) in enumerate(files)]

    def put(i: int) -> str:
        data, fmt = files[i]
        client.put_object(Bucket=bucket.name, Key=keys[i], Body=data,
                          ContentType=CONTENT_TYPES.get(fmt, "application/octet-stream"))
        return keys[i]

    done: list[str] = []
    failure: Exception | None = None
    with ThreadPoolExecutor(max_workers=min(4, len(files) or 1)) as pool:
        for future in [pool.submit(put, i) for i in range(len(files))]:
            try:
                done.append(future.result())
            except (BotoCoreError, ClientError) as exc:
                failure = failure or exc
    if failure is not None:
        for key in done:
            try:
                client.delete_object(Bucket=bucket.name, Key=key)
            except (BotoCoreError, ClientError):
                log.warning("could not delete a partly uploaded image from bucket '%s'", bucket.name)
        raise _upload_error(failure, bucket)
    try:
        return [client.generate_presigned_url("get_object", Params={"Bucket": bucket.name, "Key": key},
                                              ExpiresIn=URL_EXPIRES_S) for key in keys]
    except (BotoCoreError, ClientError) as exc:
        raise _upload_error(exc, bucket) from None
