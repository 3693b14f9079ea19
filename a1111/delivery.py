"""Deliver a packaged txt2img result (design.md section 4): format conversion, image checks,
the real-size check, and bucket uploads.

- ``png`` (the default) passes A1111's base64 through untouched: the only work on the hot
  path is reading 24 bytes of each PNG header and measuring the serialized result.
- ``jpeg``/``webp`` re-encode with Pillow and carry the PNG's ``parameters`` infotext into an
  EXIF UserComment, the way A1111 itself saves those formats, so PNG-Info style readers work.
- The size that counts is the JSON the RunPod SDK sends (``json.dumps({"output": result},
  ensure_ascii=False)``): RunPod drops results over about 20 MB, and the SDK's own check is
  shallow and never fires (runpod-worker.md section 6). Over ``MAX_RESULT_MB`` the images go to
  the bucket, or the job fails with a message naming the size and the fixes. Uploads use boto3
  directly: runpod's ``rp_upload`` quietly writes to local disk when credentials are missing.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import logging
import os
import re
import struct
import time
import uuid
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from schemas.errors import ResultTooLarge, UploadFailed
from schemas.output import OutputOptions, parse_s3_config
from schemas.settings import Settings

log = logging.getLogger(__name__)

# The longest a SigV4 presigned URL may live (7 days); rp_upload uses the same.
URL_EXPIRES_S = 7 * 24 * 3600
ENV_VARS = ("BUCKET_ENDPOINT_URL", "BUCKET_ACCESS_KEY_ID", "BUCKET_SECRET_ACCESS_KEY")
BUCKET_NAME_ENV = "BUCKET_NAME"
CONTENT_TYPES = {"png": "image/png", "jpeg": "image/jpeg", "webp": "image/webp"}
EXTENSIONS = {"png": "png", "jpeg": "jpg", "webp": "webp"}
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A JPEG's EXIF (with its Exif\0\0 marker) lives in one APP1 segment: 65535 bytes with its length field.
_JPEG_MAX_EXIF = 65533


# --------------------------------------------------------------------------- image headers
@dataclass(frozen=True)
class ImageInfo:
    format: str  # "png" | "jpeg" | "webp" | other Pillow format name, lower-case
    width: int
    height: int


def _b64decode(data: str) -> bytes:
    return base64.b64decode(data, validate=True)


def image_info(b64: Any) -> ImageInfo | None:
    """Format and size of a base64 image from its header alone (no pixel decoding); None
    when it is not an image. A PNG needs only its first 32 base64 characters (IHDR)."""
    if not isinstance(b64, str):
        return None
    try:
        head = _b64decode(b64[:32])
    except (binascii.Error, ValueError):
        return None
    if head[:8] == _PNG_SIGNATURE and head[12:16] == b"IHDR":
        width, height = struct.unpack(">II", head[16:24])
        return ImageInfo("png", width, height)
    # Not a PNG (A1111 set to save jpg/webp samples, or a converted image): Pillow reads
    # only the header on open; the bytes still have to be base64-decoded to get there.
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(io.BytesIO(_b64decode(b64))) as im:
            return ImageInfo((im.format or "unknown").lower(), im.width, im.height)
    except (binascii.Error, ValueError, UnidentifiedImageError, OSError):
        return None


# --------------------------------------------------------------------------- expected sizes
def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def asked_size(params: Mapping[str, Any]) -> tuple[int, int] | None:
    """The size A1111 was asked for by a txt2img payload, hires fix included (A1111 v1.10
    ``StableDiffusionProcessingTxt2Img.init``: hr_resize_x/y win over hr_scale; one of them
    alone keeps the aspect ratio). PURE."""
    width, height = _num(params.get("width")), _num(params.get("height"))
    if not width or not height:
        return None
    if not params.get("enable_hr"):
        return int(width), int(height)
    rx, ry = _num(params.get("hr_resize_x")) or 0, _num(params.get("hr_resize_y")) or 0
    if rx == 0 and ry == 0:
        scale = _num(params.get("hr_scale")) or 2.0  # A1111's default hr_scale
        return int(width * scale), int(height * scale)
    if rx == 0:
        return int(ry * width / height), int(ry)
    if ry == 0:
        return int(rx), int(rx * height / width)
    return int(rx), int(ry)


def _seed_list(info: Any) -> list[Any] | None:
    seeds = info.get("all_seeds") if isinstance(info, dict) else None
    return seeds if isinstance(seeds, list) else None


@dataclass(frozen=True)
class Planned:
    """What one returned image was asked to be: None fields where nothing was asked
    (ControlNet detect maps, a preset's drawn extras)."""

    size: tuple[int, int] | None
    seed: int | None


def image_plan(result: Mapping[str, Any]) -> list[Planned]:
    """Per image of ``result["images"]``, its asked size and seed. Single step: the first
    ``len(seeds)`` images are the generated ones, the size from ``parameters``. A preset's
    steps are told apart by ``labels``, with ``parameters``/``info`` keyed by label and the
    steps' seeds concatenated in step order (a1111/results.combine). PURE."""
    images = result.get("images") or []
    params = result.get("parameters")
    seeds = result.get("seeds") if isinstance(result.get("seeds"), list) else []
    labels = result.get("labels")
    if not isinstance(labels, list) or len(labels) != len(images):
        size = asked_size(params) if isinstance(params, dict) else None
        count = len(seeds)
        return [Planned(size, seeds[i]) if i < count else Planned(None, None) for i in range(len(images))]
    info = result.get("info") if isinstance(result.get("info"), dict) else {}
    out: list[Planned] = []
    index: dict[str, int] = {}
    offset: dict[str, int] = {}
    next_offset = 0
    for label in labels:
        step_params = params.get(label) if isinstance(params, dict) and isinstance(label, str) else None
        step_seeds = _seed_list(info.get(label)) if isinstance(label, str) else None
        if not isinstance(step_params, dict) or step_seeds is None:
            out.append(Planned(None, None))
            continue
        if label not in offset:
            offset[label], next_offset = next_offset, next_offset + len(step_seeds)
        i = index[label] = index.get(label, -1) + 1
        if i < len(step_seeds):
            k = offset[label] + i
            out.append(Planned(asked_size(step_params), seeds[k] if k < len(seeds) else None))
        else:
            out.append(Planned(None, None))
    return out


def expected_sizes(result: Mapping[str, Any]) -> list[tuple[int, int] | None]:
    return [p.size for p in image_plan(result)]


def check_images(infos: Sequence[ImageInfo | None], expected: Sequence[tuple[int, int] | None],
                 *, want_format: str = "png") -> list[str]:
    """Warnings for images that are not what was asked. PURE."""
    notes: list[str] = []
    for i, info in enumerate(infos):
        if info is None:
            notes.append(f"image {i} is not a readable PNG, JPEG or WebP image")
            continue
        if info.format != want_format:
            notes.append(f"image {i} is {info.format.upper()}, not the {want_format.upper()} expected "
                         "(A1111's 'samples_format' setting decides the API's format)")
        size = expected[i] if i < len(expected) else None
        if size and (info.width, info.height) != size:
            hint = " (A1111 rounds sizes down to a multiple of 8)" if (
                (info.width, info.height) == (size[0] // 8 * 8, size[1] // 8 * 8)) else ""
            notes.append(f"image {i} is {info.width}x{info.height}, but {size[0]}x{size[1]} was asked{hint}")
    return notes


# --------------------------------------------------------------------------- conversion
def exif_user_comment(text: str) -> bytes:
    """EXIF (with its ``Exif\\0\\0`` marker) holding only a UserComment, encoded as A1111
    writes it (piexif's "unicode": ``UNICODE\\0`` + UTF-16BE). PURE."""
    data = b"UNICODE\x00" + text.encode("utf-16-be")
    ifd0 = struct.pack("<HHHII", 1, 0x8769, 4, 1, 26) + b"\0\0\0\0"  # -> Exif IFD at 26
    exif_ifd = struct.pack("<HHHII", 1, 0x9286, 7, len(data), 44) + b"\0\0\0\0"  # -> data at 44
    return b"Exif\x00\x00" + b"II*\x00" + struct.pack("<I", 8) + ifd0 + exif_ifd + data


def convert(raw: bytes, fmt: str, quality: int) -> tuple[bytes, ImageInfo, str | None]:
    """Re-encode one image as ``fmt`` (jpeg|webp) with its infotext carried over.
    Returns (bytes, info, warning or None)."""
    from PIL import Image

    with Image.open(io.BytesIO(raw)) as im:
        im.load()
        infotext = im.info.get("parameters")
        image = im
        if fmt == "jpeg" and im.mode not in ("RGB", "L"):
            image = im.convert("RGB")  # JPEG has no alpha; A1111 drops it the same way
        elif fmt == "webp" and im.mode not in ("RGB", "RGBA"):
            image = im.convert("RGBA" if "A" in im.mode or "transparency" in im.info else "RGB")
        kwargs: dict[str, Any] = {"quality": quality}
        warning = None
        if isinstance(infotext, str) and infotext:
            exif = exif_user_comment(infotext)
            if fmt == "jpeg" and len(exif) > _JPEG_MAX_EXIF:
                warning = "the infotext is too long for a JPEG's EXIF and was left out; use png or webp to keep it"
            else:
                kwargs["exif"] = exif
        out = io.BytesIO()
        image.save(out, "JPEG" if fmt == "jpeg" else "WEBP", **kwargs)
        return out.getvalue(), ImageInfo(fmt, image.width, image.height), warning


# --------------------------------------------------------------------------- size
def serialized_size(result: Any) -> int:
    """Bytes of the body the RunPod SDK sends for this result (rp_http: ``json.dumps(
    {"output": ...}, ensure_ascii=False)``, UTF-8)."""
    text = json.dumps({"output": result}, ensure_ascii=False)
    return len(text) if text.isascii() else len(text.encode("utf-8"))


def result_size(result: Any, limit: int) -> int:
    """``serialized_size`` without re-encoding megabytes of images when that cannot change
    the decision.

    A1111's base64 strings are pure ASCII with nothing JSON escapes, so each adds exactly its
    length plus two quotes; counting them that way makes the size check O(1) per image instead
    of one ``json.dumps`` of the whole result (about 35 ms for 4 images of 1024x1024, the
    handler's largest cost on the hot path). A string that is not ASCII, or a total near the
    limit, where an unexpected escape could matter, is measured exactly.
    """
    images = result.get("images") if isinstance(result, dict) else None
    if not isinstance(images, list) or not all(isinstance(i, str) and i.isascii() for i in images):
        return serialized_size(result)
    estimate = serialized_size({**result, "images": [""] * len(images)}) + sum(len(i) for i in images)
    return serialized_size(result) if estimate > 0.9 * limit else estimate


def _bytes_of(img: Any) -> bytes:
    """An image's bytes for upload; what is not valid base64 is stored as sent (and was
    already warned about)."""
    text = img if isinstance(img, str) else json.dumps(img)
    try:
        return _b64decode(text)
    except (binascii.Error, ValueError):
        return text.encode("utf-8")


def _mb(n: float) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{n / 1000:.1f} kB"


# --------------------------------------------------------------------------- bucket
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


# --------------------------------------------------------------------------- deliver
def _too_large_message(size: int, limit: int, options: OutputOptions, why_no_bucket: str | None) -> str:
    lighter = "output.format 'jpeg' or 'webp'" if options.format == "png" else "a lower output.quality"
    smaller = f"ask for fewer or smaller images (batch_size, n_iter, width/height, or {lighter})"
    if options.upload == "never":
        bucket = "or allow an upload (output.upload 'auto' or 'always') to a bucket"
    else:
        bucket = ("or configure a bucket (BUCKET_ENDPOINT_URL, BUCKET_ACCESS_KEY_ID, BUCKET_SECRET_ACCESS_KEY, "
                  f"or the request's s3Config) so the images are uploaded; {why_no_bucket}")
    return (f"the result is {_mb(size)}, over the {_mb(limit)} limit (MAX_RESULT_MB) of what RunPod "
            f"returns: {smaller}, {bucket}")


def _check_without_images(size: int, limit: int) -> None:
    if size > limit:
        raise ResultTooLarge(f"the result is still {_mb(size)} with its images uploaded, over the {_mb(limit)} "
                             "limit (MAX_RESULT_MB); raise MAX_RESULT_MB or ask for fewer images",
                             result_bytes=size, limit_bytes=limit)


def preflight(options: OutputOptions | None, s3_config: Any) -> None:
    """Checks that need no images, run before the generation so a job that cannot be
    delivered costs no GPU time: a bad s3Config (ValidationFailed) and upload 'always'
    without a bucket (UploadFailed)."""
    bucket, why_no_bucket = find_bucket(s3_config)
    if options is not None and options.upload == "always" and bucket is None:
        raise _no_bucket_for_always(why_no_bucket)


def _no_bucket_for_always(why_no_bucket: str | None) -> UploadFailed:
    return UploadFailed(f"output.upload is 'always' but {why_no_bucket}: set BUCKET_ENDPOINT_URL, "
                        "BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY, or pass s3Config with the job")


def deliver(result: dict, options: OutputOptions | None, settings: Settings, job_id: str,
            s3_config: dict | None, *, expected: Sequence[tuple[int, int] | None] | None = None) -> dict:
    """The result to hand to RunPod: images checked, converted if asked, uploaded when asked
    or when the result is too big. ``expected`` overrides the sizes derived from the result's
    ``parameters`` (see expected_sizes). Raises ValidationFailed (bad s3Config),
    ResultTooLarge, UploadFailed."""
    options = options or OutputOptions()
    bucket, why_no_bucket = find_bucket(s3_config)  # a bad s3Config fails before any work
    out = dict(result)
    images = list(out.get("images") or [])
    warnings = list(out.get("warnings") or [])
    infos = [image_info(img) for img in images]
    plan = image_plan(out)
    want = expected if expected is not None else [p.size for p in plan]
    warnings.extend(check_images(infos, want))

    raw: list[bytes | None] = [None] * len(images)  # decoded bytes, when already at hand
    if options.format != "png":
        quality = options.effective_quality()
        for i, img in enumerate(images):
            if infos[i] is None:
                continue  # already warned; passed through as A1111 sent it
            try:
                data, infos[i], note = convert(_b64decode(img), options.format, quality)
            except (OSError, ValueError, binascii.Error) as exc:  # a header that reads but a body that does not
                warnings.append(f"image {i} could not be converted to {options.format} ({type(exc).__name__}); "
                                f"it is returned as A1111 sent it")
                continue
            raw[i] = data
            images[i] = base64.b64encode(data).decode("ascii")
            if note and note not in warnings:
                warnings.append(note)
    out["images"] = images
    out["warnings"] = warnings

    limit = int(settings.max_result_mb * 1_000_000)
    size = result_size(out, limit)
    delivery: dict[str, Any] = {"format": options.format, "uploaded": False, "inline_bytes": size}
    must_upload = options.upload == "always" or (options.upload == "auto" and size > limit)
    if options.upload == "always" and bucket is None:
        raise _no_bucket_for_always(why_no_bucket)
    if size > limit and (options.upload == "never" or bucket is None):
        raise ResultTooLarge(_too_large_message(size, limit, options, why_no_bucket),
                             result_bytes=size, limit_bytes=limit)
    if must_upload and images:
        assert bucket is not None
        files = []
        for i, img in enumerate(images):
            data = raw[i] if raw[i] is not None else _bytes_of(img)
            files.append((data, infos[i].format if infos[i] else "bin"))
        # What stays inline (info, parameters) may be too big by itself: fail before uploading.
        stand_in = {"url": "u" * 2048, "format": "jpeg", "width": 99999, "height": 99999, "seed": 2**32}
        _check_without_images(serialized_size({**out, "images": [stand_in] * len(images)}), limit)
        log.info("job %s: uploading %d image(s), %s inline, to bucket '%s' at %s (%s)", job_id, len(files),
                 _mb(size), bucket.name, bucket.host, bucket.source)
        urls = upload(bucket, job_id, files)
        out["images"] = [{"url": url,
                          "format": infos[i].format if infos[i] else None,
                          "width": infos[i].width if infos[i] else None,
                          "height": infos[i].height if infos[i] else None,
                          "seed": plan[i].seed if i < len(plan) else None}
                         for i, url in enumerate(urls)]
        delivery.update(uploaded=True, url_kind="presigned", url_expires_s=URL_EXPIRES_S,
                        bucket=bucket.name, bucket_source=bucket.source)
        _check_without_images(serialized_size(out), limit)  # a presigned URL longer than foreseen
    out["delivery"] = delivery
    return out
