"""Deliver a packaged txt2img result: checked, converted if asked, and inline or uploaded.

- ``png`` (the default) passes A1111's base64 through untouched: the only work on the hot
  path is reading 24 bytes of each PNG header and measuring the serialized result.
- The size that counts is the JSON the RunPod SDK sends (``json.dumps({"output": result},
  ensure_ascii=False)``): RunPod drops results over about 20 MB, and the SDK's own check
  (``sys.getsizeof`` of the outer dict, never its contents, and only a logged tip) cannot
  catch it. Over ``MAX_RESULT_MB`` the images go to the bucket, or the job fails with a
  message naming the size and the fixes.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from output.bucket import URL_EXPIRES_S, Bucket, find_bucket, upload
from output.images import ImageInfo, bytes_of, check_images, convert_all, image_info
from schemas.errors import ResultTooLarge, UploadFailed
from schemas.output import ImageFacts, OutputOptions, Packaged
from schemas.settings import Settings

log = logging.getLogger(__name__)


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


def _mb(n: float) -> str:
    return f"{n / 1_000_000:.1f} MB" if n >= 100_000 else f"{n / 1000:.1f} kB"


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


# --------------------------------------------------------------------------- plan
@dataclass(frozen=True)
class DeliveryPlan:
    """How a job's result is to be delivered, settled before the generation: the output
    options and the bucket (or why there is none). Upload 'always' without a bucket is
    refused here, so no plan that cannot be kept exists."""

    options: OutputOptions
    bucket: Bucket | None
    why_no_bucket: str | None = None

    def __post_init__(self) -> None:
        if self.options.upload == "always" and self.bucket is None:
            raise UploadFailed(f"output.upload is 'always' but {self.why_no_bucket}: set BUCKET_ENDPOINT_URL, "
                               "BUCKET_ACCESS_KEY_ID and BUCKET_SECRET_ACCESS_KEY, or pass s3Config with the job")


def preflight(options: OutputOptions | None, s3_config: Any, env: Mapping[str, str] | None = None) -> DeliveryPlan:
    """The delivery plan, made before the generation so a job that cannot be delivered
    costs no GPU time: a bad s3Config raises ValidationFailed, upload 'always' without a
    bucket UploadFailed. ``env`` defaults to the process environment."""
    bucket, why_no_bucket = find_bucket(s3_config, env)
    return DeliveryPlan(options or OutputOptions(), bucket, why_no_bucket)


# --------------------------------------------------------------------------- deliver
def deliver(packaged: Packaged, plan: DeliveryPlan, settings: Settings, job_id: str) -> dict:
    """The result to hand to RunPod: images checked against their facts, converted if asked,
    uploaded when asked or when the result is too big. Raises ResultTooLarge, UploadFailed."""
    options = plan.options
    out = dict(packaged.result)
    images = list(out.get("images") or [])
    warnings = list(out.get("warnings") or [])
    infos = [image_info(img) for img in images]
    warnings.extend(check_images(infos, [fact.size for fact in packaged.images]))
    raw: list[bytes | None] = [None] * len(images)  # bytes already at hand, so an upload need not decode
    if options.format != "png":
        raw = convert_all(images, infos, options.format, options.effective_quality(), warnings)
    out["images"] = images
    out["warnings"] = warnings

    limit = int(settings.max_result_mb * 1_000_000)
    size = result_size(out, limit)
    delivery: dict[str, Any] = {"format": options.format, "uploaded": False, "inline_bytes": size}
    if size > limit and (options.upload == "never" or plan.bucket is None):
        raise ResultTooLarge(_too_large_message(size, limit, options, plan.why_no_bucket),
                             result_bytes=size, limit_bytes=limit)
    must_upload = options.upload == "always" or (options.upload == "auto" and size > limit)
    if must_upload and images and plan.bucket is not None:
        # What stays inline (info, parameters) may be too big by itself: fail before uploading.
        stand_in = {"url": "u" * 2048, "format": "jpeg", "width": 99999, "height": 99999, "seed": 2**32}
        _check_without_images(serialized_size({**out, "images": [stand_in] * len(images)}), limit)
        log.info("job %s: uploading %d image(s), %s inline, to bucket '%s' at %s (%s)", job_id, len(images),
                 _mb(size), plan.bucket.name, plan.bucket.host, plan.bucket.source)
        out["images"] = _upload(plan.bucket, job_id, images, infos, raw, packaged.images)
        delivery.update(uploaded=True, url_kind="presigned", url_expires_s=URL_EXPIRES_S,
                        bucket=plan.bucket.name, bucket_source=plan.bucket.source)
        _check_without_images(serialized_size(out), limit)  # a presigned URL longer than foreseen
    out["delivery"] = delivery
    return out


def _upload(bucket: Bucket, job_id: str, images: Sequence[Any], infos: Sequence[ImageInfo | None],
            raw: Sequence[bytes | None], facts: Sequence[ImageFacts]) -> list[dict[str, Any]]:
    """Upload every image and return what replaces it in the result: its URL and facts."""
    files = [(raw[i] if raw[i] is not None else bytes_of(img), infos[i].format if infos[i] else "bin")
             for i, img in enumerate(images)]
    urls = upload(bucket, job_id, files)
    return [{"url": url,
             "format": infos[i].format if infos[i] else None,
             "width": infos[i].width if infos[i] else None,
             "height": infos[i].height if infos[i] else None,
             "seed": facts[i].seed if i < len(facts) else None}
            for i, url in enumerate(urls)]
