"""Compile img2img and extras (upscale) bodies. PURE.

img2img is txt2img's body (a1111/payload.py: the same overrides, names, extensions and
escape hatch) plus the init images, the denoising strength and the inpainting fields, with
the images as the checked PNGs of inputs/ and never as a URL: A1111 would fetch a URL
itself only with ``api_enable_requests`` on (recording ``img2img_url_init_image``).
Width and height default to the first init image's size, scaled into 64..2048 and rounded
to a multiple of 8 (A1111 would silently round down).
"""

from __future__ import annotations

from typing import Any

from a1111.payload import compile_txt2img
from a1111.resolved import Resolved
from inputs.decode import InputImage, JobImages

IMG2IMG = "/sdapi/v1/img2img"
EXTRAS_SINGLE = "/sdapi/v1/extra-single-image"
EXTRAS_BATCH = "/sdapi/v1/extra-batch-images"
DEFAULT_DENOISING = 0.75  # A1111's own default for img2img
MIN_SIDE, MAX_SIDE = 64, 2048
_MASK_FIELDS = ("mask_blur", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
                "inpainting_mask_invert")


def _round8(v: float) -> int:
    return max(MIN_SIDE, min(MAX_SIDE, int(v / 8 + 0.5) * 8))  # half up, not to even


def img2img_size(image: InputImage, width: int | None, height: int | None) -> tuple[int, int]:
    """The output size: what the job gives, the rest from the image's shape."""
    if width is not None and height is not None:
        return width, height
    ratio = image.width / image.height
    if width is not None:
        return width, _round8(width / ratio)
    if height is not None:
        return _round8(height * ratio), height
    # Into A1111's 64..2048 with the image's shape (a very long and thin one is clamped).
    scale = min(1.0, MAX_SIDE / max(image.width, image.height))
    scale = max(scale, MIN_SIDE / min(image.width, image.height))
    return _round8(image.width * scale), _round8(image.height * scale)


def compile_img2img(job: Any, resolved: Resolved, backend: str, images: JobImages) -> dict[str, Any]:
    """The img2img body for one step; raises ValidationFailed like compile_txt2img."""
    payload = compile_txt2img(job, resolved, backend)
    payload["width"], payload["height"] = img2img_size(images.init_images[0], job.width, job.height)
    payload["init_images"] = [image.b64 for image in images.init_images]
    payload["denoising_strength"] = (job.denoising_strength if job.denoising_strength is not None
                                     else DEFAULT_DENOISING)
    if job.resize_mode is not None:
        payload["resize_mode"] = job.resize_mode
    if images.mask is not None:
        payload["mask"] = images.mask.b64
        for name in _MASK_FIELDS:
            value = getattr(job, name)
            if value is not None:
                payload[name] = value
    return payload


def extras_route_and_body(job: Any, upscalers: dict[str, str], images: JobImages) -> tuple[str, dict[str, Any]]:
    """(route, body) for the upscale action: one image goes to extra-single-image, several to
    extra-batch-images. ``upscalers`` maps the job's field to the name A1111 lists."""
    body: dict[str, Any] = {}
    if job.upscaling_resize_w is not None:
        body.update(resize_mode=1, upscaling_resize_w=job.upscaling_resize_w,
                    upscaling_resize_h=job.upscaling_resize_h, upscaling_crop=True)
    else:
        body.update(resize_mode=0, upscaling_resize=job.upscaling_resize if job.upscaling_resize is not None else 2)
    body["upscaler_1"] = upscalers["upscaler_1"]
    if "upscaler_2" in upscalers:
        body["upscaler_2"] = upscalers["upscaler_2"]
        body["extras_upscaler_2_visibility"] = job.extras_upscaler_2_visibility
    if len(images.images) == 1:
        return EXTRAS_SINGLE, {**body, "image": images.images[0].b64}
    return EXTRAS_BATCH, {**body, "imageList": [{"data": image.b64, "name": f"{i}.png"}
                                                for i, image in enumerate(images.images)]}


def upscaled_size(body: dict[str, Any], image: InputImage) -> tuple[int, int]:
    """The size A1111 upscales ``image`` to: resize_mode 1 crops to the size asked; a factor
    gives a size rounded down to a multiple of 8 (A1111 v1.10 ``Upscaler.upscale``)."""
    if body.get("resize_mode") == 1:
        return int(body["upscaling_resize_w"]), int(body["upscaling_resize_h"])
    factor = float(body.get("upscaling_resize", 2))
    return int(image.width * factor // 8 * 8), int(image.height * factor // 8 * 8)
