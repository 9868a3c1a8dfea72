"""Noise Hypernetworks (ReNO Train Noise Model + ReNO Noise Model) against plain generation and ReNO, on tiny models.

    python scripts/bench_noise_model.py [--size 64] [--train-steps 300] [--regularization 0.01] [--held-out 4]
        [--rewards aesthetic:1,pickscore:0.05]

A real ComfyUI engine (the host testing/comfy_host.py finds, booted headless, on the CPU, one thread) with the tiny
SD model of the tests (``ReNOTestTinyFamily`` sd15, transformer depth 1, its pseudo text encoder) and tiny reward
checkpoints in their real formats (testing/tiny_rewards.py). The noise model is trained on ``--train`` prompts
(ReNO Train Noise Model, 1 euler step, scheduler simple, rank 8); then for each held-out prompt (never trained on),
with one seed each:

* **plain**: RandomNoise -> SamplerCustomAdvanced (CFGGuider cfg 1, KSamplerSelect euler, BasicScheduler simple, 1
  step) -> VAE Decode;
* **hyper-noise**: ReNO Noise Model (two model calls) -> the same SamplerCustomAdvanced -> VAE Decode;
* **ReNO 10 / ReNO 50**: ReNO Sampler with 10 / 50 iterations (its defaults: learning rate 5, regularization 0.01,
  grad clip 0.1), its best image.

Every image is scored by ReNO Score Images (the weighted total Σ wᵢ·scoreᵢ), outside the timed part. Time per image:
the wall time and the process's CPU time of the nodes that make the image (for ReNO, its whole run, its own reward
evaluations included), after one warm-up of each. The gain of a method is its mean weighted reward minus plain's.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from reno_batch import import_pack  # noqa: E402

comfy_host = import_pack("testing.comfy_host")
from reno_pack.testing.tiny_rewards import write_reward_root  # noqa: E402

TRAIN = [
    "a red cube on a blue sphere", "a cat in a wizard hat", "three apples in a bowl", "a lighthouse in a storm",
    "a castle on a hill", "a dog riding a bicycle", "a bowl of ramen", "a forest at dawn",
]
HELD_OUT = ["a purple ring", "an orange box on a table", "a robot reading a book", "a sailboat at sunset",
            "a teapot made of glass", "a fox in the snow", "a city skyline at night", "a bunch of tulips"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--train", type=int, default=8, help=f"training prompts (at most {len(TRAIN)})")
    ap.add_argument("--held-out", type=int, default=4, help=f"held-out prompts (at most {len(HELD_OUT)})")
    ap.add_argument("--train-steps", type=int, default=300)
    ap.add_argument("--learning-rate", type=float, default=0.1)
    ap.add_argument("--regularization", type=float, default=0.01)
    ap.add_argument("--rewards", default="aesthetic:1,pickscore:0.05", help="name:weight,...")
    ap.add_argument("--seed", type=int, default=100)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)

    import torch

    torch.set_num_threads(1)
    rewards = [(n, float(w)) for n, w in (item.split(":") for item in args.rewards.split(","))]
    host = comfy_host.find_host()
    if host is None:
        print("no ComfyUI engine found: set COMFYUI_PATH or run scripts/setup_env.sh")
        return 2
    engine = comfy_host.boot_engine(host, [comfy_host.FIXTURE_PACK_DIR, comfy_host.PACK_DIR],
                                    Path(tempfile.mkdtemp(prefix="reno-bench-noise-")), extra_nodes=[
                                        "nodes_custom_sampler.py", "nodes_train.py"])
    write_reward_root(Path(engine.folder_paths.get_folder_paths("reno_rewards")[0]), [n for n, _ in rewards])
    call = engine.call_node
    model, vae, _, _ = call("ReNOTestTinyFamily", inference=True, family="sd15", transformer_depth=1, seed=0,
                            text="x", negative_text="")
    (clip,) = call("ReNOTestTinyCLIP", inference=True, family="sd15")
    stack = None
    for name, weight in rewards:
        (stack,) = call("ReNORewardLoader", inference=True, reward=name, weight=weight, rewards=stack)
    (latent,) = call("EmptyLatentImage", inference=True, width=args.size, height=args.size, batch_size=1)
    (neg,) = call("CLIPTextEncode", inference=True, clip=clip, text="")
    (sampler,) = call("KSamplerSelect", inference=True, sampler_name="euler")
    (sigmas,) = call("BasicScheduler", inference=True, model=model, scheduler="simple", steps=1, denoise=1.0)
    train_prompts, held_prompts = TRAIN[:args.train], HELD_OUT[:args.held_out]

    def clocked(fn):
        w, c = time.perf_counter(), time.process_time()
        out = fn()
        return out, time.perf_counter() - w, time.process_time() - c

    t0w, t0c = time.perf_counter(), time.process_time()
    out = call("ReNOTrainNoiseModel", inference=True, model=model, clip=clip, vae=vae, rewards=stack,
               prompts="\n".join(train_prompts), training_steps=args.train_steps, learning_rate=args.learning_rate,
               rank=8, regularization=args.regularization, sampler_steps=1, sampler_name="euler", scheduler="simple",
               seed=0, width=args.size, height=args.size)
    train_wall, train_cpu = time.perf_counter() - t0w, time.process_time() - t0c
    lora, history = out["result"]
    train_curve = [sum(r["scores"][label][0] * w for (label, w) in zip([x["label"] for x in history.rewards], [
        x["weight"] for x in history.rewards])) for r in history.records]

    def score(images, prompt) -> float:
        out = call("ReNOScoreImages", inference=True, images=images, rewards=stack, prompt=prompt)
        totals = (out["result"] if isinstance(out, dict) else out)[0]
        return float(totals[0] if isinstance(totals, (list, tuple)) else totals)

    def generate(noise, pos):
        (guider,) = call("CFGGuider", inference=True, model=model, positive=pos, negative=neg, cfg=1.0)
        (samples, _) = call("SamplerCustomAdvanced", inference=True, noise=noise, guider=guider, sampler=sampler,
                            sigmas=sigmas, latent_image=latent)
        (images,) = call("VAEDecode", inference=True, samples=samples, vae=vae)
        return images

    def plain(pos, prompt, seed):
        (noise,) = call("RandomNoise", inference=True, noise_seed=seed)
        return generate(noise, pos)

    def hyper(pos, prompt, seed):
        (noise, _) = call("ReNONoiseModel", inference=True, model=model, noise_model=lora, positive=pos, latent=latent,
                          seed=seed, strength=1.0)
        return generate(noise, pos)

    def reno(iterations):
        def run(pos, prompt, seed):
            out = call("ReNOSampler", inference=True, model=model, positive=pos, negative=neg, vae=vae,
                       latent_image=latent, rewards=stack, prompt=prompt, seed=seed, iterations=iterations,
                       learning_rate=5.0, cfg=1.0, regularization=0.01, grad_clip=0.1)
            return out["result"][1]
        return run

    methods = {"plain": plain, "hyper-noise": hyper, "ReNO 10": reno(10), "ReNO 50": reno(50)}
    results = {}
    conds = [call("CLIPTextEncode", inference=True, clip=clip, text=p)[0] for p in held_prompts]
    for name, fn in methods.items():
        fn(conds[0], held_prompts[0], args.seed + 999)  # warm-up
        rewards_, walls, cpus = [], [], []
        for i, (pos, prompt) in enumerate(zip(conds, held_prompts)):
            images, wall, cpu = clocked(lambda fn=fn, pos=pos, prompt=prompt, i=i: fn(pos, prompt, args.seed + i))
            rewards_.append(score(images, prompt))
            walls.append(wall)
            cpus.append(cpu)
        results[name] = {"reward": statistics.mean(rewards_), "rewards": rewards_,
                         "wall": statistics.mean(walls), "cpu": statistics.mean(cpus)}
        print(f"{name}: reward {results[name]['reward']:.4f}, {results[name]['wall']:.3f} s wall, "
              f"{results[name]['cpu']:.3f} s CPU per image", flush=True)

    base = results["plain"]["reward"]
    gain50 = results["ReNO 50"]["reward"] - base
    lines = ["| method | held-out weighted reward | gain over plain | share of ReNO-50's gain | s/image (wall) | "
             "s/image (CPU) | time vs ReNO-50 |", "|---|---|---|---|---|---|---|"]
    for name, r in results.items():
        gain = r["reward"] - base
        share = gain / gain50 if gain50 else float("nan")
        lines.append(f"| {name} | {r['reward']:.3f} | {gain:+.3f} | {share:.0%} | {r['wall']:.3f} | {r['cpu']:.3f} | "
                     f"1/{results['ReNO 50']['cpu'] / r['cpu']:.1f} |")
    h = results["hyper-noise"]
    goal = (f"goal (>= 60 % of ReNO-50's gain at <= 1/20 of its time per image): share "
            f"{(h['reward'] - base) / gain50 if gain50 else float('nan'):.0%}, time 1/"
            f"{results['ReNO 50']['cpu'] / h['cpu']:.1f} (CPU)")
    evals = history.config.get("evaluations") or []
    print()
    print(f"training: {len(train_prompts)} prompts, {args.train_steps} steps, lr {args.learning_rate}, "
          f"regularization {args.regularization}, {args.size} px: {train_wall:.1f} s wall, {train_cpu:.1f} s CPU; "
          f"training reward (mean of the first / last 5 steps) {statistics.mean(train_curve[:5]):.3f} -> "
          f"{statistics.mean(train_curve[-5:]):.3f}{'; evaluations ' + str(evals) if evals else ''}")
    print("\n".join(lines))
    print(goal)
    print(f"{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} thread, "
          f"{engine.info}")
    if args.json:
        Path(args.json).write_text(json.dumps({"results": results, "train_wall": train_wall, "train_cpu": train_cpu,
                                               "train_curve": train_curve, "goal": goal}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
