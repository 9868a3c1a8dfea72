"""``--diffusers <folder>``: items run on a diffusers one-step pipeline (``generators.run_diffusers_item``) instead of
a ComfyUI workflow; same items, layouts, results and summary. This process only (no Ray).

The pipeline and the rewards (``--reward NAME:WEIGHT``) are loaded once, before the first item. Reward folders
(``reno_rewards`` layout) are searched in this order: ``--rewards-dir``, ``<--models-dir>/reno_rewards``,
``$RENO_REWARDS_DIR``, then the ``models/reno_rewards`` folder of the ComfyUI the workflow runner would use (when
there is one; it is only looked at, never imported). The device is ``--device``, else CUDA when torch sees it
(unless ``--cpu``), else the CPU; the rewards go to the same device. ``--threads`` sets torch's threads for the run.
A pipeline or reward that cannot load stops the run before any item, with one line saying what to do (exit 2).
"""

from __future__ import annotations

import importlib
import sys
import time
import traceback
from pathlib import Path

from .worker import png_bytes

EXIT_BAD_INPUT = 2


def _pack():
    return __name__.rsplit(".", 2)[0]  # "<pack package>.runner.diffusers_hook" -> the pack package


def _refuse(message: str):
    """Bad input found before any item ran: one clear message, exit status 2 (as the CLI's other input errors)."""
    print(f"reno-batch: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


def reward_roots(cfg, folder_name: str = "reno_rewards") -> list[str]:
    """The reward folders to search besides ``$RENO_REWARDS_DIR`` (which ``reward_loaders`` reads itself)."""
    roots: list[Path] = []
    rewards_dir = cfg.diffusers_options.get("rewards_dir")
    if rewards_dir:
        roots.append(Path(rewards_dir).expanduser())
    models_dir = (cfg.worker_options or {}).get("models_dir")
    if models_dir:
        roots.append(Path(models_dir).expanduser() / folder_name)
    tail: list[Path] = []
    try:
        from .engine import HostError, find_host  # looks at folders only; ComfyUI is not imported

        host = find_host()
    except (HostError, OSError, ImportError):
        host = None
    if host is not None and not models_dir:
        tail.append(Path(host.root) / "models" / folder_name)
    return [str(p) for p in roots] + [str(p) for p in tail if p.is_dir()]


def _device(cfg, opts: dict) -> str:
    if opts.get("device"):
        return str(opts["device"])
    import torch

    if not (cfg.worker_options or {}).get("cpu") and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _load(cfg, opts: dict, gen, rl):
    """The pipeline and the weighted rewards, or a clear refusal."""
    try:
        pipe = gen.load_pipeline(cfg.diffusers, opts.get("kind"), dtype=opts.get("dtype"), device=opts["device"])
    except gen.PipelineLoadError as e:
        _refuse(f"--diffusers {cfg.diffusers}: {e}")
    except ImportError as e:  # diffusers (an optional extra) is not installed
        _refuse(f"--diffusers: {e}")
    roots = reward_roots(cfg, rl.FOLDER_NAME)
    rewards = []
    for name, weight in cfg.diffusers_rewards:
        try:
            model = rl.load_reward(name, roots).to(opts["device"])
        except (rl.RewardLoadError, ValueError, OSError) as e:
            hint = ""
            if not rl.paths.search_dirs(roots):
                hint = ("\nFor the batch runner: pass --rewards-dir FOLDER (a reno_rewards folder) or --models-dir "
                        "FOLDER (its reno_rewards/ subfolder).")
            _refuse(f"--reward {name}: {e}{hint}")
        rewards.append(rl.WeightedReward(name, float(weight), model))
    return pipe, rewards


def dispatch_diffusers(cfg, todo: list[dict], on_outcome, stop) -> None:
    if not todo:
        return
    if not cfg.diffusers_rewards:
        _refuse("--diffusers needs at least one --reward NAME:WEIGHT (e.g. --reward hpsv2.1:5)")
    gen = importlib.import_module(f"{_pack()}.generators")
    rl = importlib.import_module(f"{_pack()}.reward_loaders")
    import torch

    opts = dict(cfg.diffusers_options)
    opts.pop("rewards_dir", None)
    opts["device"] = _device(cfg, opts)
    def abort():  # a second Ctrl-C (run_batch's SIGINT handler) stops the item in flight
        raise KeyboardInterrupt

    threads_before = torch.get_num_threads()
    threads = (cfg.worker_options or {}).get("threads")
    if threads:
        torch.set_num_threads(int(threads))
    stop.on_abort = abort
    try:
        pipe, rewards = _load(cfg, opts, gen, rl)
        labels = rl.unique_labels([name for name, _ in cfg.diffusers_rewards])
        weights = dict(zip(labels, (float(w) for _, w in cfg.diffusers_rewards)))
        described = [{"label": k, "name": n, "weight": float(w)} for k, (n, w) in zip(labels, cfg.diffusers_rewards)]

        def scores(d: dict) -> dict:
            s = {k: float(d[k]) for k in labels}
            s["total"] = float(sum(w * s[k] for k, w in weights.items()))
            return s

        for item in todo:
            if stop.stop:
                break
            t0 = time.perf_counter()
            try:
                res = gen.run_diffusers_item(pipe, item["prompt"], int(item["seed"]), rewards, opts)
                result = {"index": item["index"], "line": item["line"], "prompt": item["prompt"],
                          "seed": int(item["seed"]), "rewards": described,
                          "initial": scores(res.initial_scores), "best": scores(res.best_scores),
                          "best_iteration": int(res.best_iteration), "iterations": int(res.result.iterations_run),
                          "stop_reason": res.result.stop_reason, "node_seconds": round(float(res.seconds), 4),
                          "seconds": round(time.perf_counter() - t0, 4)}
                images = {"best": png_bytes(res.best_image[0].permute(1, 2, 0))}
                if cfg.save_initial:
                    images["initial"] = png_bytes(res.initial_image[0].permute(1, 2, 0))
                outcome = {"ok": True, "result": result, "images": images}
            except KeyboardInterrupt:  # a second Ctrl-C: nothing of this item is written
                stop.stop = True
                break
            except Exception as e:  # one bad item must not stop the batch
                outcome = {"ok": False, "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc(limit=6)}
            on_outcome(item, outcome)
    finally:
        stop.on_abort = None
        torch.set_num_threads(threads_before)
