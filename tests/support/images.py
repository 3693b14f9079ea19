"""Input images for the img2img, inpainting and upscale tests, built with Pillow (and one
by hand: a PNG whose header declares far more pixels than it holds)."""

from __future__ import annotations

import base64
import io
import struct
import zlib

from PIL import Image


def encoded(img: Image.Image, fmt: str = "PNG", **save: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, fmt, **save)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def image_b64(size: tuple[int, int] = (64, 64), mode: str = "RGB", fmt: str = "PNG", color: object = None) -> str:
    return b64(encoded(Image.new(mode, size, color if color is not None else (90, 120, 200)[: len(mode)]), fmt))


def decoded(text: str) -> Image.Image:
    img = Image.open(io.BytesIO(base64.b64decode(text)))
    img.load()
    return img


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_png(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid-looking PNG of a few hundred bytes whose header declares ``width`` x ``height``
    RGB pixels (a decompression bomb: decoding it would need width*height*3 bytes)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 4096, 9)  # the start of the first rows; the rest is "missing"
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", idat) + _chunk(b"IEND", b"")


def jpeg_with_orientation(size: tuple[int, int], orientation: int) -> bytes:
    """A JPEG of ``size`` as stored, with an EXIF Orientation tag (6: shown turned 90 degrees)."""
    img = Image.new("RGB", size, (200, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = orientation
    return encoded(img, "JPEG", exif=exif.tobytes())
