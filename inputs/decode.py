"""One input image: base64 or a data URL to bytes, bytes to a checked PNG for A1111. PURE.

Limits: only PNG, JPEG and WebP are opened (Pillow is told so, so no other decoder runs on
a job's bytes); the size in bytes is checked before base64 is decoded, and the pixel count
is read from the header before any pixel is decoded, so a small file declaring a huge
image (a decompression bomb) is refused without being unpacked. The image is turned
upright by its EXIF orientation (A1111 does the same for the UI, not for the API, so an
API caller's phone photo would arrive on its side) and re-encoded as PNG: A1111 gets
exactly the pixels that were checked, with no metadata.

Alpha is kept. A1111 flattens an init image onto its ``img2img_background_color`` (white)
and reads a mask's alpha channel as the mask when the mask is not fully opaque
(``images.create_binary_mask``: opaque = repaint), so dropping it here would change what
A1111 does. A mask without alpha is sent as greyscale: white = repaint.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from dataclasses import dataclass, field

from PIL import Image, ImageOps, UnidentifiedImageError

ACCEPTED = ("PNG", "JPEG", "WEBP")
DATA_TYPES = ("image/png", "image/jpeg", "image/jpg", "image/webp")
_DATA_URL = re.compile(r"data:([\w/+.-]{0,40})((?:;[\w=.-]{0,40})*);base64,", re.IGNORECASE)


class ImageRejected(ValueError):
    """Why an image is refused, as the end of a sentence that starts with its field name."""


@dataclass(frozen=True)
class InputImage:
    b64: str          # PNG, base64, as A1111 takes it
    width: int
    height: int
    format: str       # what it came as: PNG, JPEG or WEBP


def is_url(text: str) -> bool:
    return text[:8].lower() == "https://"


def base64_bytes(text: str, max_bytes: int) -> bytes:
    """The bytes of a base64 string or a ``data:image/...;base64,`` URL."""
    body = text
    if text[:5].lower() == "data:":
        m = _DATA_URL.match(text)
        if m is None:
            raise ImageRejected("is a data URL without ';base64,' image data")
        kind = m.group(1).lower()
        if kind not in DATA_TYPES:
            raise ImageRejected(f"is a data URL of type {kind!r}; allowed: image/png, image/jpeg, image/webp")
        body = text[m.end():]
    body = "".join(body.split())  # line breaks, as some encoders wrap base64
    if len(body) * 3 // 4 > max_bytes:
        raise ImageRejected(f"is about {len(body) * 3 // 4} bytes, more than INPUT_IMAGE_MAX_BYTES={max_bytes}")
    try:
        return base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
    except (binascii.Error, ValueError):
        raise ImageRejected("is not valid base64 (nor a data:image URL or an https:// URL)") from None


def _open(data: bytes, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # Pillow warns above its own MAX_IMAGE_PIXELS; our cap is checked just below.
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data), formats=ACCEPTED)
    except Image.DecompressionBombError:
        raise ImageRejected(f"declares more pixels than Pillow opens at all (INPUT_IMAGE_MAX_PIXELS={max_pixels}); "
                            "refused as a decompression bomb") from None
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError):
        raise ImageRejected("is not a PNG, JPEG or WebP image") from None
    w, h = img.size
    if w < 1 or h < 1 or w * h > max_pixels:
        raise ImageRejected(f"is {w}x{h} ({w * h} pixels), more than INPUT_IMAGE_MAX_PIXELS={max_pixels}; "
                            "send a smaller image")
    return img


def _has_alpha(img: Image.Image) -> bool:
    return img.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info


def decode_image(data: bytes, *, max_pixels: int, mask: bool = False) -> InputImage:
    """The checked, upright PNG of ``data``; raises ImageRejected."""
    img = _open(data, max_pixels)
    fmt = str(img.format)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img.load()  # the first frame of an animated image
            img = ImageOps.exif_transpose(img) or img
            mode = "RGBA" if _has_alpha(img) else ("L" if mask else "RGB")
            img = img.convert(mode)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError):
        raise ImageRejected(f"is a damaged or truncated {fmt} image") from None
    buf = io.BytesIO()
    # A1111 decodes it again at once on the same machine: speed over size.
    img.save(buf, "PNG", compress_level=1)
    return InputImage(base64.b64encode(buf.getvalue()).decode("ascii"), img.width, img.height, fmt)


@dataclass(frozen=True)
class JobImages:
    """Every decoded image of one job (inputs/load.py fills it), by the field it came from."""

    init_images: list[InputImage] = field(default_factory=list)
    mask: InputImage | None = None
    images: list[InputImage] = field(default_factory=list)  # the upscale action's
    fetched: int = 0                                         # how many came from https URLs
