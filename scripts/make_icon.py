#!/usr/bin/env python3
"""Make docs/icon.png, the pack's icon in the Comfy Registry and ComfyUI-Manager ([tool.comfy] Icon).

Drawn from the demo's own pictures: the best iteration of docs/demo_strip.jpg as the background, and the weighted
total's curve traced from docs/demo_reward_curve.png (the black line of its first panel) rising over it.
Run from the repository root: ``python scripts/make_icon.py``.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image, ImageDraw, ImageEnhance, ImageFilter, ImageFont

ROOT = Path(__file__).resolve().parents[1]
SIZE = 256
# docs/demo_strip.jpg: 11 tiles of 134 px, the best (iteration 38) is the 10th; docs/demo_reward_curve.png: the
# weighted-total panel's plot area
BEST_TILE = (1212, 6, 1338, 132)
TOTAL_PANEL = (80, 112, 697, 234)


def traced_curve(chart: Image.Image) -> list[tuple[float, float]]:
    """(x, y) in [0, 1] of the black curve in the panel, one point per column where the line is."""
    x0, y0, x1, y1 = TOTAL_PANEL
    panel = chart.convert("RGB").crop(TOTAL_PANEL)
    w, h = panel.size
    px = panel.load()
    points = []
    for x in range(w):
        ys = [y for y in range(h) if max(px[x, y]) < 70]
        if ys:
            points.append((x / (w - 1), 1.0 - (sum(ys) / len(ys)) / (h - 1)))
    return points


def make_icon() -> Image.Image:
    strip = Image.open(ROOT / "docs" / "demo_strip.jpg").convert("RGB")
    chart = Image.open(ROOT / "docs" / "demo_reward_curve.png")
    tile = strip.crop(BEST_TILE).resize((SIZE, SIZE), Image.Resampling.BICUBIC).filter(ImageFilter.GaussianBlur(1.2))
    icon = ImageEnhance.Brightness(tile).enhance(0.45)
    draw = ImageDraw.Draw(icon)
    points = traced_curve(chart)
    margin, top, bottom = 22, 110, 226
    xy = [(margin + x * (SIZE - 2 * margin), bottom - y * (bottom - top)) for x, y in points]
    draw.line(xy, fill=(255, 255, 255), width=9, joint="curve")
    draw.line(xy, fill=(255, 196, 0), width=5, joint="curve")
    ex, ey = xy[-1]
    draw.ellipse((ex - 11, ey - 11, ex + 11, ey + 11), fill=(220, 40, 40), outline=(255, 255, 255), width=3)
    font = ImageFont.load_default(size=78)
    box = draw.textbbox((0, 0), "ReNO", font=font)
    draw.text(((SIZE - (box[2] - box[0])) / 2 - box[0], 14 - box[1]), "ReNO", font=font, fill=(255, 255, 255),
              stroke_width=3, stroke_fill=(20, 20, 20))
    return icon


if __name__ == "__main__":
    out = ROOT / "docs" / "icon.png"
    make_icon().save(out, optimize=True)
    print(out)
