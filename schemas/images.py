"""Job fields for images sent in: img2img, inpainting and the ``upscale`` action.

``ImageFields`` is mixed into schemas.job.Job, so these fields are validated as strictly as
the others (unknown fields refused, no coercion, ranges checked). Field names are A1111's
own (img2img and extras APIs). Which of them belong together is checked by
``image_problems``; the images themselves are decoded later, under the worker's limits
(inputs/). An image field holds base64, a ``data:image/...;base64,`` URL or an https URL the
worker fetches itself; nothing here ever echoes an image back in a message.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, Field

from schemas.errors import Problem

MAX_IMAGE_FIELD = 64 * 1024 * 1024  # characters; the byte limit proper is INPUT_IMAGE_MAX_BYTES


def _source(value: str) -> str:
    head = value[:16].lower()
    if head.startswith("http://"):
        raise ValueError("must be base64, a data:image URL or an https:// URL; plain http:// is refused "
                         "(the image would travel unprotected)")
    if "://" in value[:16] and not head.startswith("https://"):
        raise ValueError("must be base64, a data:image URL or an https:// URL")
    return value


ImageSource = Annotated[str, Field(min_length=1, max_length=MAX_IMAGE_FIELD), AfterValidator(_source)]

# The fields whose values are image data: errors describe them, never show them.
IMAGE_DATA_FIELDS = ("init_images", "mask", "images")
IMG2IMG_FIELDS = ("init_images", "denoising_strength", "resize_mode", "mask", "mask_blur", "inpainting_fill",
                  "inpaint_full_res", "inpaint_full_res_padding", "inpainting_mask_invert", "mask_resize")
MASK_FIELDS = ("mask_blur", "inpainting_fill", "inpaint_full_res", "inpaint_full_res_padding",
               "inpainting_mask_invert", "mask_resize")
UPSCALE_FIELDS = ("images", "upscaling_resize", "upscaling_resize_w", "upscaling_resize_h", "upscaler_1",
                  "upscaler_2", "extras_upscaler_2_visibility")
# What the upscale action takes besides its own fields.
UPSCALE_ALSO = {"output"}

IMAGE_ALLOWED: dict[str, str] = {
    "init_images": "a list of images (base64 PNG/JPEG/WebP, data:image URL or https URL)",
    "mask": "an image (base64 PNG/JPEG/WebP, data:image URL or https URL); white = repaint",
    "images": "a list of images (base64 PNG/JPEG/WebP, data:image URL or https URL)",
    "denoising_strength": "a number from 0 to 1",
    "resize_mode": "0 (just resize), 1 (crop and resize), 2 (resize and fill) or 3 (just resize, latent upscale)",
    "mask_blur": "an integer from 0 to 64",
    "inpainting_fill": "0 (fill), 1 (original), 2 (latent noise) or 3 (latent nothing)",
    "inpaint_full_res": "true (repaint the masked area at full resolution) or false (the whole picture)",
    "inpaint_full_res_padding": "an integer from 0 to 256 (pixels)",
    "inpainting_mask_invert": "0 (repaint the white area) or 1 (repaint the black area)",
    "mask_resize": "true (resize a mask of another size to the image) or false",
    "upscaling_resize": "a number from 1 to 8 (the upscale factor)",
    "upscaling_resize_w": "an integer from 64 to 8192 (target width)",
    "upscaling_resize_h": "an integer from 64 to 8192 (target height)",
    "upscaler_1": "an upscaler name from /sdapi/v1/upscalers such as 'Lanczos' or 'R-ESRGAN 4x+'",
    "upscaler_2": "an upscaler name from /sdapi/v1/upscalers",
    "extras_upscaler_2_visibility": "a number from 0 to 1",
}

_Unit = Annotated[float, Field(ge=0.0, le=1.0, allow_inf_nan=False)]


class ImageFields(BaseModel):
    """The image fields of a job (mixed into schemas.job.Job; its config applies)."""

    init_images: list[ImageSource] | None = Field(None, min_length=1, max_length=64)
    denoising_strength: _Unit | None = None
    resize_mode: Literal[0, 1, 2, 3] | None = None
    mask: ImageSource | None = None
    mask_blur: int | None = Field(None, ge=0, le=64)
    inpainting_fill: Literal[0, 1, 2, 3] | None = None
    inpaint_full_res: bool | None = None
    inpaint_full_res_padding: int | None = Field(None, ge=0, le=256)
    inpainting_mask_invert: Literal[0, 1] | None = None
    mask_resize: bool = False
    # upscale
    images: list[ImageSource] | None = Field(None, min_length=1, max_length=64)
    upscaling_resize: float | None = Field(None, ge=1.0, le=8.0, allow_inf_nan=False)
    upscaling_resize_w: int | None = Field(None, ge=64, le=8192)
    upscaling_resize_h: int | None = Field(None, ge=64, le=8192)
    upscaler_1: str | None = Field(None, min_length=1, max_length=200)
    upscaler_2: str | None = Field(None, min_length=1, max_length=200)
    extras_upscaler_2_visibility: _Unit | None = None


def _given(job: Any) -> set[str]:
    return set(job.model_fields_set) - {"action"}


def _img2img_problems(job: Any, given: set[str]) -> list[Problem]:
    problems = [Problem(name, f"'{name}' is only used with action 'upscale'"
                        + ("; for img2img use 'init_images'" if name == "images" else ""))
                for name in UPSCALE_FIELDS if name in given]
    if job.init_images is None:
        problems += [Problem(name, f"'{name}' is an img2img field: it needs 'init_images'")
                     for name in IMG2IMG_FIELDS if name in given and name != "init_images"]
        return problems
    if job.mask is None:
        problems += [Problem(name, f"'{name}' is an inpainting field: it needs 'mask'")
                     for name in MASK_FIELDS if name in given]
    if job.hires is not None:
        problems.append(Problem("hires", "hires fix is txt2img-only in A1111; for img2img give the output size in "
                                         "width/height (with resize_mode), or upscale the result with action "
                                         "'upscale'"))
    if job.preset == "rubber_tile":
        problems.append(Problem("preset", "preset 'rubber_tile' draws its own images and cannot start from "
                                          "init_images; remove 'init_images' or the preset"))
    return problems


def _upscale_problems(job: Any, given: set[str]) -> list[Problem]:
    problems = [Problem(name, f"action 'upscale' takes only {', '.join(UPSCALE_FIELDS)} and output; "
                              f"remove '{name}'")
                for name in sorted(given - set(UPSCALE_FIELDS) - UPSCALE_ALSO)]
    if job.images is None:
        problems.append(Problem("images", f"action 'upscale' needs 'images': {IMAGE_ALLOWED['images']}"))
    if job.upscaler_1 is None:
        problems.append(Problem("upscaler_1", f"action 'upscale' needs 'upscaler_1': {IMAGE_ALLOWED['upscaler_1']}"))
    elif job.upscaler_1.lower() == "none":
        problems.append(Problem("upscaler_1", "upscaler_1 'None' does not upscale; name an upscaler such as "
                                              "'Lanczos' or 'R-ESRGAN 4x+'"))
    sized = (job.upscaling_resize_w, job.upscaling_resize_h)
    if job.upscaling_resize is not None and any(v is not None for v in sized):
        problems.append(Problem("upscaling_resize", "give either 'upscaling_resize' (a factor) or "
                                                    "'upscaling_resize_w' and 'upscaling_resize_h' (a size), not both"))
    elif (sized[0] is None) != (sized[1] is None):
        missing = "upscaling_resize_h" if sized[1] is None else "upscaling_resize_w"
        problems.append(Problem(missing, f"'{missing}' is required with "
                                         f"'{'upscaling_resize_w' if sized[1] is None else 'upscaling_resize_h'}'"))
    two = job.upscaler_2 is not None and job.upscaler_2.lower() != "none"
    if two and not job.extras_upscaler_2_visibility:
        problems.append(Problem("extras_upscaler_2_visibility", "upscaler_2 has no effect unless "
                                "extras_upscaler_2_visibility is above 0 (0..1: how much of its result is blended in)"))
    if not two and job.extras_upscaler_2_visibility is not None:
        problems.append(Problem("extras_upscaler_2_visibility", "extras_upscaler_2_visibility needs 'upscaler_2'"))
    return problems


def image_problems(job: Any) -> list[Problem]:
    """Problems with how the job's image fields go together (img2img, inpainting, upscale)."""
    given = _given(job)
    if job.action == "upscale":
        return _upscale_problems(job, given)
    return _img2img_problems(job, given)
