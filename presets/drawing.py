"""Images the worker draws itself with Pillow: the rubber-tile colour map and the
ControlNet control image of the tile joints. Pure functions: parameters in, PNG out."""

from __future__ import annotations

import base64
import io
import math
from collections.abc import Sequence

from PIL import Image, ImageDraw, ImageFont

# Colour map layout. The bar is 1000 px wide so integer percentages map to whole pixels
# (10 px per percent) and the areas are exactly proportional.
BAR_WIDTH = 1000
BAR_HEIGHT = 200
MARGIN = 24
ROW_HEIGHT = 36
BACKGROUND = (255, 255, 255)
INK = (0, 0, 0)


def png_base64(img: Image.Image) -> str:
    buf = io.BytesIO()
    img.save(buf, format="PNG", optimize=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def split_widths(proportions: Sequence[int], total: int) -> list[int]:
    """Integer widths proportional to ``proportions`` summing exactly to ``total``
    (largest remainder, so no swatch gets more than its share by more than 1 px)."""
    weight = sum(proportions)
    exact = [p * total / weight for p in proportions]
    widths = [math.floor(x) for x in exact]
    order = sorted(range(len(exact)), key=lambda i: exact[i] - widths[i], reverse=True)
    for i in order[: total - sum(widths)]:
        widths[i] += 1
    return widths


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, OSError):  # Pillow without FreeType: fixed bitmap font
        return ImageFont.load_default()


def color_map(colors: Sequence[tuple[str, int, tuple[int, int, int]]]) -> Image.Image:
    """A legend of the tile's colour mix: one swatch per colour, its width proportional to
    its share, each labelled "<name> <n>%" underneath (pointed at by a short tick).

    ``colors``: (name, proportion, rgb) in the caller's order.
    """
    font = _font(26)
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    widths = split_widths([p for _, p, _ in colors], BAR_WIDTH)
    width = BAR_WIDTH + 2 * MARGIN
    # Place labels first: narrow neighbours would overprint each other, so a label that
    # does not fit on a row goes to the next one.
    labels = []
    row_ends: list[float] = []
    x = MARGIN
    for (name, proportion, _), w in zip(colors, widths, strict=True):
        text = f"{name} {proportion}%"
        tw = measure.textlength(text, font=font)
        centre = x + w / 2
        tx = min(max(centre - tw / 2, MARGIN), width - MARGIN - tw)
        row = next((i for i, end in enumerate(row_ends) if tx > end + 10), len(row_ends))
        if row == len(row_ends):
            row_ends.append(0.0)
        row_ends[row] = tx + tw
        labels.append((text, centre, tx, row))
        x += w
    label_top = MARGIN + BAR_HEIGHT + 14
    height = label_top + ROW_HEIGHT * max(1, len(row_ends)) + MARGIN
    img = Image.new("RGB", (width, height), BACKGROUND)
    draw = ImageDraw.Draw(img)
    x = MARGIN
    for (_, _, rgb), w in zip(colors, widths, strict=True):
        draw.rectangle([x, MARGIN, x + w - 1, MARGIN + BAR_HEIGHT - 1], fill=rgb)
        x += w
    for text, centre, tx, row in labels:
        ty = label_top + row * ROW_HEIGHT
        draw.line([centre, MARGIN + BAR_HEIGHT + 2, centre, label_top - 2], fill=INK, width=1)
        draw.text((tx, ty), text, fill=INK, font=font)
    # Thin frame so a white swatch stays visible on the white page; drawn outside the bar.
    draw.rectangle([MARGIN - 2, MARGIN - 2, MARGIN + BAR_WIDTH + 1, MARGIN + BAR_HEIGHT + 1], outline=INK, width=2)
    return img


def tile_joints(angle: float, width: int, height: int, *, tiles_across: int = 4) -> Image.Image:
    """Control image: white joint lines of a running-bond tile floor on black, the long
    joints running at ``angle`` degrees counter-clockwise from horizontal.

    A running bond (each row shifted by half a tile) is drawn rather than a square grid so
    that 90 degrees differs from 0 and the angle is visible in the image.
    """
    img = Image.new("RGB", (width, height), (0, 0, 0))
    draw = ImageDraw.Draw(img)
    line = max(2, round(min(width, height) / 170))
    tile_len = max(width, height) / tiles_across
    row_h = tile_len / 2
    a = math.radians(angle)
    ux, uy = math.cos(a), -math.sin(a)  # along the long joints (image y points down)
    vx, vy = -uy, ux  # across them
    cx, cy = width / 2, height / 2
    reach = math.hypot(width, height) / 2 + tile_len

    def at(s: float, t: float) -> tuple[float, float]:
        return cx + s * ux + t * vx, cy + s * uy + t * vy

    rows = math.ceil(reach / row_h)
    cols = math.ceil(reach / tile_len) + 1
    for r in range(-rows, rows + 1):
        t = r * row_h
        draw.line([at(-reach, t), at(reach, t)], fill=(255, 255, 255), width=line)
        offset = (tile_len / 2) if r % 2 else 0.0
        for c in range(-cols, cols + 1):
            s = c * tile_len + offset
            draw.line([at(s, t), at(s, t + row_h)], fill=(255, 255, 255), width=line)
    return img
