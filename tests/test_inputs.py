"""Input images (inputs/decode.py, inputs/load.py mask check, a1111/image_payload.py size):
what is accepted, what is refused, and that a refusal never quotes the image."""

from __future__ import annotations

import time

import pytest
from PIL import Image

from a1111.image_payload import img2img_size
from inputs.decode import ImageRejected, InputImage, base64_bytes, decode_image
from inputs.load import mask_problem
from tests.support.images import b64, bomb_png, decoded, encoded, image_b64, jpeg_with_orientation

MAX_PIXELS = 16_777_216
MAX_BYTES = 20_000_000


def load(text: str, *, mask: bool = False, max_pixels: int = MAX_PIXELS) -> InputImage:
    return decode_image(base64_bytes(text, MAX_BYTES), max_pixels=max_pixels, mask=mask)


@pytest.mark.parametrize("fmt", ["PNG", "JPEG", "WEBP"])
def test_accepted_formats_become_png_of_the_same_size(fmt: str) -> None:
    got = load(image_b64((40, 24), fmt=fmt))
    assert (got.width, got.height, got.format) == (40, 24, fmt)
    out = decoded(got.b64)
    assert out.format == "PNG" and out.size == (40, 24)


def test_data_url_is_accepted_and_other_data_types_are_not() -> None:
    assert load("data:image/png;base64," + image_b64((16, 16))).width == 16
    with pytest.raises(ImageRejected, match="data URL of type 'text/html'"):
        load("data:text/html;base64," + image_b64())


def test_bad_base64_is_refused_without_echo() -> None:
    bad = "iVBORw0KGgo!!!not base64 at all" * 10
    with pytest.raises(ImageRejected) as info:
        load(bad)
    assert "not valid base64" in str(info.value) and "iVBOR" not in str(info.value)


def test_non_image_bytes_are_refused() -> None:
    with pytest.raises(ImageRejected, match="not a PNG, JPEG or WebP image"):
        load(b64(b"<html><body>hello</body></html>" * 20))


def test_other_image_formats_are_refused() -> None:
    """GIF and BMP are images, but only PNG, JPEG and WebP decoders run on a job's bytes."""
    for fmt in ("GIF", "BMP"):
        with pytest.raises(ImageRejected, match="not a PNG, JPEG or WebP image"):
            load(image_b64((8, 8), fmt=fmt))


@pytest.mark.parametrize(("side", "said"), [
    (5_000, r"5000x5000 \(25000000 pixels\), more than INPUT_IMAGE_MAX_PIXELS=16777216"),
    (100_000, r"more pixels than Pillow opens at all .* decompression bomb"),
])
def test_decompression_bomb_is_refused_from_its_header(side: int, said: str) -> None:
    """A 300-byte PNG declaring side x side pixels (75 MB / 30 GB decoded) is refused at once,
    without decoding its pixels: by our cap, or by Pillow's own far above it."""
    data = bomb_png(side, side)
    assert len(data) < 1000
    t0 = time.monotonic()
    with pytest.raises(ImageRejected, match=said):
        decode_image(data, max_pixels=MAX_PIXELS)
    assert time.monotonic() - t0 < 1.0


def test_pixel_cap_is_the_setting() -> None:
    text = image_b64((100, 100))
    assert load(text, max_pixels=10_000).width == 100
    with pytest.raises(ImageRejected, match="INPUT_IMAGE_MAX_PIXELS=9999"):
        load(text, max_pixels=9_999)


def test_byte_cap_is_checked_before_decoding() -> None:
    with pytest.raises(ImageRejected, match="more than INPUT_IMAGE_MAX_BYTES=100"):
        base64_bytes(image_b64((64, 64)), 100)


def test_truncated_image_is_refused() -> None:
    data = encoded(Image.effect_noise((64, 64), 50).convert("RGB"), "PNG")
    with pytest.raises(ImageRejected, match="damaged or truncated PNG"):
        decode_image(data[: len(data) // 2], max_pixels=MAX_PIXELS)


def test_exif_orientation_is_applied() -> None:
    """A phone photo stored 40x20 with Orientation 6 is shown (and sent) 20x40."""
    got = decode_image(jpeg_with_orientation((40, 20), 6), max_pixels=MAX_PIXELS)
    assert (got.width, got.height) == (20, 40)
    assert decoded(got.b64).size == (20, 40)


def test_alpha_is_kept_and_plain_masks_are_greyscale() -> None:
    assert decoded(load(image_b64((8, 8), mode="RGBA", color=(255, 255, 255, 0))).b64).mode == "RGBA"
    assert decoded(load(image_b64((8, 8), mode="RGBA", color=(255, 255, 255, 0)), mask=True).b64).mode == "RGBA"
    assert decoded(load(image_b64((8, 8)), mask=True).b64).mode == "L"
    assert decoded(load(image_b64((8, 8), mode="L", color=255)).b64).mode == "RGB"


def test_mask_size_must_match_unless_resizing_is_asked() -> None:
    init, mask = InputImage("", 64, 64, "PNG"), InputImage("", 32, 48, "PNG")
    problem = mask_problem(init, mask, resize=False)
    assert problem is not None and "32x48" in problem.message and "64x64" in problem.message
    assert "mask_resize" in problem.message
    assert mask_problem(init, mask, resize=True) is None
    assert mask_problem(init, InputImage("", 64, 64, "PNG"), resize=False) is None


def test_img2img_size_defaults_to_the_image_in_multiples_of_8() -> None:
    def size(w: int, h: int, width: int | None = None, height: int | None = None) -> tuple[int, int]:
        return img2img_size(InputImage("", w, h, "PNG"), width, height)

    assert size(64, 64) == (64, 64)
    assert size(100, 70) == (104, 72)
    assert size(4000, 3000) == (2048, 1536)  # scaled into A1111's 2048 limit, shape kept
    assert size(20, 20) == (64, 64)
    assert size(64, 48) == (88, 64)  # scaled up to A1111's smallest side, shape kept
    assert size(1024, 768, width=512) == (512, 384)
    assert size(1024, 768, height=384) == (512, 384)
    assert size(1024, 768, 96, 96) == (96, 96)
