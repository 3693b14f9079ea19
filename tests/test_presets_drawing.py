"""Colour map and control image, measured from their pixels."""

from __future__ import annotations

import base64
import io

import numpy as np
import pytest
from PIL import Image

from presets import drawing
from schemas.presets import COLOR_RGB


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGB"))


def _count(arr: np.ndarray, rgb: tuple[int, int, int]) -> int:
    return int(np.all(arr == np.array(rgb, dtype=arr.dtype), axis=-1).sum())


def test_color_map_areas_are_in_the_requested_ratio():
    img = drawing.color_map([("red", 60, COLOR_RGB["red"]), ("blue", 40, COLOR_RGB["blue"])])
    arr = _pixels(img)
    red, blue = _count(arr, COLOR_RGB["red"]), _count(arr, COLOR_RGB["blue"])
    assert red > 0 and blue > 0
    assert red / blue == pytest.approx(60 / 40, rel=1e-3)
    # Nothing but the two swatches uses those colours (labels are black ink).
    assert red + blue == drawing.BAR_WIDTH * drawing.BAR_HEIGHT


@pytest.mark.parametrize("mix", [
    [("red", 1), ("blue", 2), ("white", 3), ("green", 94)],
    [("black", 33), ("yellow", 33), ("pink", 34)],
    [("gray", 100)],
])
def test_color_map_every_share_is_exact(mix):
    img = drawing.color_map([(n, p, COLOR_RGB[n]) for n, p in mix])
    # The swatch band only: anti-aliased grey label ink may hit grey/white values exactly.
    arr = _pixels(img)[drawing.MARGIN: drawing.MARGIN + drawing.BAR_HEIGHT]
    total = drawing.BAR_WIDTH * drawing.BAR_HEIGHT
    for name, proportion in mix:
        assert _count(arr, COLOR_RGB[name]) == total * proportion // 100


def test_color_map_has_a_label_under_each_swatch():
    img = drawing.color_map([("red", 60, COLOR_RGB["red"]), ("blue", 40, COLOR_RGB["blue"])])
    arr = _pixels(img)
    band = arr[drawing.MARGIN + drawing.BAR_HEIGHT + 10:]
    dark = np.all(band < 100, axis=-1)
    cols = np.where(dark.any(axis=0))[0]
    # ink under the red half (x < 624) and under the blue half
    assert (cols < drawing.MARGIN + 600).any() and (cols > drawing.MARGIN + 600).any()
    # and it is text, not just the ticks: many dark pixels in a row band
    assert dark.sum() > 500


def test_png_base64_roundtrip():
    b64 = drawing.png_base64(Image.new("RGB", (8, 8), (1, 2, 3)))
    raw = base64.b64decode(b64)
    assert raw[:8] == b"\x89PNG\r\n\x1a\n"
    assert Image.open(io.BytesIO(raw)).size == (8, 8)


def test_split_widths_sums_exactly():
    assert drawing.split_widths([1, 1, 1], 1000) == [334, 333, 333]
    assert sum(drawing.split_widths([7, 13, 80], 997)) == 997


def _has_straight_joints_at(img: Image.Image, angle: float) -> bool:
    """Undo ``angle`` and look for near-solid white rows in the centre: long joints."""
    upright = img.convert("L").rotate(-angle, resample=Image.Resampling.BILINEAR)
    w, h = upright.size
    centre = np.asarray(upright)[h // 4: 3 * h // 4, w // 4: 3 * w // 4] > 128
    return bool((centre.mean(axis=1) > 0.9).any())


@pytest.mark.parametrize("angle", [0, 30, 45, 90, 135])
def test_tile_joints_run_at_the_angle(angle):
    img = drawing.tile_joints(angle, 512, 512)
    assert img.size == (512, 512)
    assert _has_straight_joints_at(img, angle)
    assert not _has_straight_joints_at(img, angle + 60)


def test_tile_joints_90_differs_from_0():
    a, b = _pixels(drawing.tile_joints(0, 256, 256)), _pixels(drawing.tile_joints(90, 256, 256))
    assert (a != b).any()
    white = (a[..., 0] > 128).mean()
    assert 0.02 < white < 0.4  # lines on black, not a blank or white image
