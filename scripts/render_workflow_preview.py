"""Draw a UI-format workflow as a wireframe (node boxes, titles, typed links): a stand-in thumbnail.

The shipped thumbnails are pictures of each workflow loaded in the real frontend, written by the browser
test (``RENO_UPDATE_DOCS=1 python -m pytest -rs tests/browser``). This script is the fallback where no
browser is available: it writes the file the template browser asks for (``<name>.jpg``, as frontend
1.32.9 builds ``/api/workflow_templates/<pack>/<name>.jpg``), and never replaces an existing one unless
``--overwrite`` is given.

    python scripts/render_workflow_preview.py workflows/my_workflow.json   # writes workflows/my_workflow.jpg
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from PIL import Image, ImageDraw

COLORS = {"MODEL": (180, 160, 255), "CLIP": (255, 214, 0), "VAE": (255, 100, 100), "CONDITIONING": (255, 160, 60),
          "LATENT": (255, 140, 220), "IMAGE": (100, 180, 255), "RENO_REWARDS": (120, 220, 140),
          "RENO_HISTORY": (120, 220, 220)}
TITLE_H = 22


def render(workflow: dict, scale: float = 0.5, pad: int = 20) -> Image.Image:
    nodes = {n["id"]: n for n in workflow["nodes"]}
    xs = [n["pos"][0] for n in nodes.values()] + [n["pos"][0] + n["size"][0] for n in nodes.values()]
    ys = [n["pos"][1] for n in nodes.values()] + [n["pos"][1] + n["size"][1] + TITLE_H for n in nodes.values()]
    x0, y0 = min(xs), min(ys) - TITLE_H

    def p(x, y):
        return (pad + (x - x0) * scale, pad + (y - y0) * scale)

    img = Image.new("RGB", (int((max(xs) - x0) * scale + 2 * pad), int((max(ys) - y0) * scale + 2 * pad)), (32, 32, 36))
    draw = ImageDraw.Draw(img)

    def slot(n, kind, index):
        x = n["pos"][0] + (n["size"][0] if kind == "out" else 0)
        return p(x, n["pos"][1] + 14 + 20 * index)

    for _, origin, o_slot, target, t_slot, kind in workflow["links"]:
        a, b = slot(nodes[origin], "out", o_slot), slot(nodes[target], "in", t_slot)
        mid = (a[0] + b[0]) / 2
        draw.line([a, (mid, a[1]), (mid, b[1]), b], fill=COLORS.get(kind, (200, 200, 200)), width=2)
    for n in nodes.values():
        left, top = p(n["pos"][0], n["pos"][1] - TITLE_H)
        right, bottom = p(n["pos"][0] + n["size"][0], n["pos"][1] + n["size"][1])
        ours = n["type"].startswith("ReNO")
        draw.rectangle([left, top, right, bottom], fill=(53, 53, 60), outline=(120, 200, 130) if ours else (90, 90, 90))
        draw.rectangle([left, top, right, top + TITLE_H * scale], fill=(40, 90, 50) if ours else (70, 70, 78))
        draw.text((left + 4, top + 2), n.get("title") or n["type"], fill=(235, 235, 235))
    return img


def main(argv: list[str]) -> int:
    overwrite = "--overwrite" in argv
    for path in (Path(a) for a in argv if a != "--overwrite"):
        target = path.with_suffix(".jpg")
        if target.exists() and not overwrite:
            print(f"kept {target} (--overwrite replaces it)")
            continue
        render(json.loads(path.read_text())).save(target, quality=90, optimize=True)
        print(f"wrote {target}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
