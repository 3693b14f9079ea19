"""The images of a result: what they are (read from their headers), whether that is what
was asked, and their conversion to jpeg/webp.

``jpeg``/``webp`` re-encode with Pillow and carry the PNG's ``parameters`` infotext into an
EXIF UserComment, the way A1111 itself saves those formats, so PNG-Info style readers work.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
# A JPEG's EXIF (with its Exif\0\0 marker) lives in one APP1 segment: 65535 bytes with its length field.
_JPEG_MAX_EXIF = 65533


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


def convert_all(images: list[Any], infos: list[ImageInfo | None], fmt: str, quality: int,
                warnings: list[str]) -> list[bytes | None]:
    """Convert every readable image in place (``images`` and ``infos`` are updated, notes
    added to ``warnings``) and return the new bytes per image, None where it was left as
    sent, so an upload need not decode them again."""
    raw: list[bytes | None] = [None] * len(images)
    for i, img in enumerate(images):
        if infos[i] is None:
            continue  # already warned; passed through as A1111 sent it
        try:
            data, infos[i], note = convert(_b64decode(img), fmt, quality)
        except (OSError, ValueError, binascii.Error) as exc:  # a header that reads but a body that does not
            warnings.append(f"image {i} could not be converted to {fmt} ({type(exc).__name__}); "
                            f"it is returned as A1111 sent it")
            continue
        raw[i] = data
        images[i] = base64.b64encode(data).decode("ascii")
        if note and note not in warnings:
            warnings.append(note)
    return raw


def bytes_of(img: Any) -> bytes:
    """An image's bytes for upload; what is not valid base64 is stored as sent (and was
    already warned about)."""
    text = img if isinstance(img, str) else json.dumps(img)
    try:
        return _b64decode(text)
    except (binascii.Error, ValueError):
        return text.encode("utf-8")
