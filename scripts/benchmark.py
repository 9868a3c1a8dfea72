"""ReNO through the real node path, timed: seconds per iteration, and the overhead ratio.

    python scripts/benchmark.py [--size 128] [--iterations 12] [--rewards imagereward,hpsv2.1,pickscore,clipscore]

A real ComfyUI engine (the host tests/comfy_host.py finds) runs ReNO Sampler on the tiny embedded model
with tiny reward checkpoints in their real formats. In the same process the same models are timed alone
(UNet forward+backward, VAE decode forward+backward, the reward stack forward+backward), so the
**overhead ratio** = ReNO's median iteration time / the sum of those parts shows what ReNO's own loop
costs on top of the models (its optimizer step, bookkeeping, previews, progress and events).
Prints a markdown table with peak RSS (CPU) or the allocator peak (GPU).
"""

from __future__ import annotations

import argparse
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))

import comfy_host  # noqa: E402
from engine_support import pack_module  # noqa: E402
from tiny_rewards import write_reward_root  # noqa: E402

PROMPT = "a red apple on a wooden table"
WEIGHTS = {"imagereward": 1.0, "hpsv2.1": 5.0, "hpsv2": 5.0, "pickscore": 0.05, "clipscore": 0.01, "aesthetic": 0.5}


def median_time(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=128, help="image side in pixels (multiple of 8)")
    ap.add_argument("--iterations", type=int, default=12)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--rewards", default="imagereward,hpsv2.1,pickscore,clipscore")
    ap.add_argument("--depth", type=int, default=None, help="UNet transformer depth (default: 1, 0 on the 2024 engine)")
    args = ap.parse_args()
    names = [n for n in args.rewards.split(",") if n]

    host = comfy_host.find_host()
    if host is None:
        print("no ComfyUI engine found: set COMFYUI_PATH or run scripts/setup_env.sh")
        return 2
    engine = comfy_host.boot_engine(host, [comfy_host.FIXTURE_PACK_DIR, comfy_host.PACK_DIR],
                                    Path(tempfile.mkdtemp(prefix="reno-bench-")))
    write_reward_root(Path(engine.folder_paths.get_folder_paths("reno_rewards")[0]), names)
    pack = pack_module(engine)
    import torch

    depth = args.depth if args.depth is not None else (0 if engine.is_legacy else 1)
    model, vae = engine.call_node("ReNOTestTinySD", inference=True, transformer_depth=depth, context_dim=32, seed=0)
    (cond,) = engine.call_node("ReNOTestConditioning", inference=True, text=PROMPT, context_dim=32)
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=args.size, height=args.size, batch_size=1)
    stack = None
    for name in names:
        (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward=name, weight=WEIGHTS[name], rewards=stack)

    # 1. ReNO through the node: time between consecutive iterations (progress updates)
    stamps: list[float] = []
    engine.add_progress_callback(lambda e: stamps.append(time.perf_counter()))

    def reno():
        stamps.clear()
        engine.call_node("ReNOSampler", inference=True, model=model, positive=cond, negative=cond, vae=vae,
                         latent_image=latent, rewards=stack, prompt=PROMPT, seed=0, iterations=args.iterations,
                         learning_rate=5.0, cfg=1.0, regularization=0.01, grad_clip=0.1)
        return [b - a for a, b in zip(stamps, stamps[1:])]

    reno()  # warm-up (loads, caches text features)
    per_iteration = statistics.median(reno())
    engine.clear_progress_callbacks()

    # 2. the same models alone, forward + backward, in the same process and mode
    inner = model.model
    ensemble = pack.reward_loaders.RewardEnsemble(list(stack), PROMPT)
    modules = [inner, vae.first_stage_model] + [r.model for r in stack]
    sigma = float(inner.model_sampling.sigma_max)
    with torch.inference_mode(False), torch.enable_grad(), pack.nodes.autograd.normal_tensors(modules):
        ensemble.prepare()
        context = cond[0][0].clone()
        noise = torch.randn(1, 4, args.size // 8, args.size // 8)

        def unet():
            x = (noise * (1 + sigma**2) ** 0.5).requires_grad_(True)
            inner.apply_model(x, torch.tensor([sigma]), c_crossattn=context).sum().backward()

        def decode():
            z = noise.clone().requires_grad_(True)
            pack.nodes.bridge.decode_with_grad(vae, z).sum().backward()

        def rewards():
            image = torch.rand(1, 3, args.size, args.size, requires_grad=True)
            ensemble(image)[0].sum().backward()

        parts = {"UNet": median_time(unet, args.repeats), "VAE decode": median_time(decode, args.repeats),
                 f"rewards ({', '.join(names)})": median_time(rewards, args.repeats)}
    alone = sum(parts.values())
    if torch.cuda.is_available():
        peak = f"{torch.cuda.max_memory_allocated() / 2**30:.2f} GiB GPU allocator peak"
    else:
        peak = f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20:.2f} GiB peak RSS"

    print(f"host: {engine.info}; torch {torch.__version__}; {torch.get_num_threads()} threads; "
          f"{args.size}x{args.size}, UNet transformer depth {depth}; {peak}\n")
    print("| measured | seconds |")
    print("|---|---|")
    for label, t in parts.items():
        print(f"| {label} alone, forward+backward | {t:.4f} |")
    print(f"| sum of the parts | {alone:.4f} |")
    print(f"| ReNO iteration (median of {args.iterations - 1}) | {per_iteration:.4f} |")
    print(f"| 50 iterations (extrapolated) | {per_iteration * 50:.2f} |")
    print(f"| **overhead ratio** (iteration / sum of parts) | **{per_iteration / alone:.3f}** |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
