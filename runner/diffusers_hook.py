"""``--diffusers <folder>``: items run on a diffusers one-step pipeline (``generators.run_diffusers_item``) instead of
a ComfyUI workflow; same items, layouts, results and summary. The pipeline and the rewards (``--reward
NAME:WEIGHT``, from ``--rewards-dir`` or the default reward folders) are loaded once. This process only (no Ray).
"""

from __future__ import annotations

import importlib
import time
import traceback

from .worker import png_bytes


def _pack():
    return __name__.rsplit(".", 2)[0]  # "<pack package>.runner.diffusers_hook" -> the pack package


def dispatch_diffusers(cfg, todo: list[dict], on_outcome, stop) -> None:
    if not todo:
        return
    if not cfg.diffusers_rewards:
        raise SystemExit("reno-batch: --diffusers needs at least one --reward NAME:WEIGHT (e.g. --reward hpsv2.1:5)")
    gen = importlib.import_module(f"{_pack()}.generators")
    rl = importlib.import_module(f"{_pack()}.reward_loaders")
    opts = dict(cfg.diffusers_options)
    rewards_dir = opts.pop("rewards_dir", None)
    pipe = gen.load_pipeline(cfg.diffusers, opts.get("kind"), dtype=opts.get("dtype"), device=opts.get("device"))
    extra = [rewards_dir] if rewards_dir else []
    rewards = [rl.WeightedReward(name, float(w), rl.load_reward(name, extra)) for name, w in cfg.diffusers_rewards]
    weights = [float(w) for _, w in cfg.diffusers_rewards]
    for item in todo:
        if stop.stop:
            break
        t0 = time.perf_counter()
        try:
            res = gen.run_diffusers_item(pipe, item["prompt"], int(item["seed"]), rewards, opts)
            labels = list(res.initial_scores)

            def scores(d, labels=labels):
                s = {k: float(v) for k, v in d.items()}
                if len(labels) == len(weights):
                    s["total"] = float(sum(w * s[k] for w, k in zip(weights, labels)))
                return s

            result = {"index": item["index"], "line": item["line"], "prompt": item["prompt"], "seed": int(item["seed"]),
                      "rewards": [{"label": k, "name": n, "weight": w}
                                  for k, (n, w) in zip(labels, cfg.diffusers_rewards)],
                      "initial": scores(res.initial_scores), "best": scores(res.best_scores),
                      "best_iteration": int(res.best_iteration), "iterations": int(res.result.iterations_run),
                      "stop_reason": res.result.stop_reason, "node_seconds": round(float(res.seconds), 4),
                      "seconds": round(time.perf_counter() - t0, 4)}
            images = {"best": png_bytes(res.best_image[0].permute(1, 2, 0))}
            if cfg.save_initial:
                images["initial"] = png_bytes(res.initial_image[0].permute(1, 2, 0))
            outcome = {"ok": True, "result": result, "images": images}
        except Exception as e:  # one bad item must not stop the batch
            outcome = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
        on_outcome(item, outcome)
