"""ReNO Train Reward LoRA, measured through the real node: seconds per training step and peak memory per method.

    python scripts/bench_training.py [--size 64] [--steps 6] [--rows "alignprop:1,drtune:1,refl:1,alignprop:4,..."]
        [--rewards aesthetic,pickscore]
    # full size, on a GPU, with your own ComfyUI models folder (a checkpoint and the reward files in place):
    python scripts/bench_training.py --checkpoint sd_turbo.safetensors --models-dir /path/to/ComfyUI/models \\
        --size 512 --steps 10 --rows alignprop:1,drtune:1,refl:1 --rewards imagereward,hpsv2.1

A real ComfyUI engine (the host testing/comfy_host.py finds, booted headless, as scripts/bench_multistep.py does)
runs ReNO Train Reward LoRA. Without ``--checkpoint``: on the tiny SD model of the tests (``ReNOTestTinyFamily``
sd15, transformer depth 1, its pseudo text encoder) with tiny reward checkpoints in their real formats
(testing/tiny_rewards.py), on the CPU. With ``--checkpoint``: CheckpointLoaderSimple's model, CLIP and VAE from
``--models-dir`` and the reward files in its ``reno_rewards`` folder, on the GPU when there is one.

Rows are ``method:sampler_steps[:k]`` (k default 1; euler, scheduler simple, rank 8, batch 1, memory auto, no held-out
prompts). Each row runs in its own subprocess: a 1-step warm-up run of the trainer, then the timed run of
``--steps`` steps. *s/step* is the median gap between the trainer's consecutive progress reports (one report per
optimizer step: the rollout's forward pass, its backward pass into the LoRA and the AdamW step). *Peak memory*
is, on the CPU, the growth of the process's peak RSS during the timed run (VmHWM reset through
/proc/self/clear_refs, as bench_multistep.py measures it, children with MALLOC_MMAP_THRESHOLD_=65536 so freed
tensors leave the RSS); on CUDA, ``torch.cuda.max_memory_allocated`` during the timed run minus the allocation
before it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_common import comma_list, find_host, print_header  # noqa: E402
from bench_multistep import RSSPeak, run_child_row  # noqa: E402
from reno_batch import import_pack  # noqa: E402

PROMPTS = "a red cube on a blue sphere\na cat in a wizard hat\nthree apples in a bowl\na lighthouse in a storm"
WEIGHTS = {"imagereward": 1.0, "hpsv2.1": 5.0, "hpsv2": 5.0, "pickscore": 0.05, "clipscore": 0.01, "aesthetic": 1.0}
DEFAULT_ROWS = "alignprop:1,drtune:1,refl:1,alignprop:4,drtune:4,refl:4,alignprop:4:4,drtune:4:4"
RESULT_TAG = "BENCH_TRAINING_RESULT "


def run_child(args) -> int:
    import torch

    comfy_host = import_pack("testing.comfy_host")

    method, steps, k = (args.child.split(":") + ["1"])[:3]
    host = find_host(comfy_host)
    if host is None:
        return 2
    workdir = Path(tempfile.mkdtemp(prefix="reno-bench-training-"))
    cuda = torch.cuda.is_available() and not args.cpu
    packs = [comfy_host.PACK_DIR] if args.checkpoint else [comfy_host.FIXTURE_PACK_DIR, comfy_host.PACK_DIR]
    if args.models_dir:  # the user's models folder (checkpoints/, reno_rewards/), not the workdir's
        engine = comfy_host._engine.boot_engine(
            host, [(comfy_host.default_pack_name(p), p) for p in packs], workdir, extra_nodes=["nodes_train.py"],
            cpu=not cuda, models_dir=args.models_dir, torchvision_standin=True, engine_class=comfy_host.Engine)
    else:
        engine = comfy_host.boot_engine(host, packs, workdir, cpu=not cuda, extra_nodes=["nodes_train.py"])
    if args.checkpoint:
        model, clip, vae = engine.call_node("CheckpointLoaderSimple", inference=True, ckpt_name=args.checkpoint)
    else:
        from reno_pack.testing.tiny_rewards import write_reward_root

        write_reward_root(Path(engine.folder_paths.get_folder_paths("reno_rewards")[0]), args.reward_names)
        model, vae, _, _ = engine.call_node("ReNOTestTinyFamily", inference=True, family="sd15", transformer_depth=1,
                                            seed=0, text="x", negative_text="")
        (clip,) = engine.call_node("ReNOTestTinyCLIP", inference=True, family="sd15")
    stack = None
    for name in args.reward_names:
        (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward=name, weight=WEIGHTS[name], rewards=stack)

    def train(steps_, on_progress):
        def progress(event):
            if event.total == steps_:
                on_progress()

        with engine.progress_callback(progress):
            out = engine.call_node(
                "ReNORewardLoRATrainer", inference=True, model=model, clip=clip, vae=vae, rewards=stack,
                prompts=PROMPTS, method=method, training_steps=steps_, learning_rate=1e-4, rank=8, batch_size=1,
                grad_accumulation=1, sampler_steps=int(steps), sampler_name="euler", scheduler="simple", cfg=1.0,
                k=int(k), seed=0, held_out="", width=args.size, height=args.size)
        return out["result"][2]

    train(1, lambda: None)
    stamps: list[float] = []
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        start = time.perf_counter()
        history = train(args.steps, lambda: stamps.append(time.perf_counter()))
        wall = time.perf_counter() - start
        peak, how = torch.cuda.max_memory_allocated() - before, "torch.cuda.max_memory_allocated - before"
        device = torch.cuda.get_device_name()
    else:
        with RSSPeak() as rss:
            start = time.perf_counter()
            history = train(args.steps, lambda: stamps.append(time.perf_counter()))
            wall = time.perf_counter() - start
        peak, how, device = rss.growth, rss.method, f"CPU ({os.cpu_count()} cores)"
    gaps = [b - a for a, b in zip(stamps, stamps[1:])]
    result = {"row": args.child, "method": method, "sampler_steps": int(steps), "k": int(k),
              "records": len(history.records),
              "s_per_step": statistics.median(gaps) if gaps else wall / args.steps, "gaps": len(gaps), "wall": wall,
              "peak": peak, "peak_method": how, "device": device, "host": engine.info, "torch": torch.__version__,
              "threads": torch.get_num_threads(), "loss_first": history.records[0]["loss"][0],
              "loss_last": history.records[-1]["loss"][0]}
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=64, help="image side in pixels (default 64; multiple of 8)")
    ap.add_argument("--steps", type=int, default=6, help="training steps of the timed run (default 6, at least 3)")
    ap.add_argument("--rows", default=DEFAULT_ROWS, help="comma list of method:sampler_steps[:k]")
    ap.add_argument("--rewards", default="aesthetic,pickscore")
    ap.add_argument("--checkpoint", default=None, help="a checkpoint in --models-dir/checkpoints (full-size run)")
    ap.add_argument("--models-dir", default=None, help="the ComfyUI models folder holding it and reno_rewards/")
    ap.add_argument("--cpu", action="store_true", help="stay on the CPU even when CUDA is available")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON to this file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.reward_names = comma_list(ap, "--rewards", args.rewards, WEIGHTS)
    args.row_names = [r.strip() for r in args.rows.split(",") if r.strip()]
    for r in args.row_names:
        method, steps, *rest = r.split(":") + [""]
        k = rest[0] or "1"
        if (method not in ("alignprop", "drtune", "refl") or not steps.isdigit() or int(steps) < 1
                or not k.isdigit() or int(k) < 1 or len(r.split(":")) > 3):
            ap.error(f"--rows: {r!r} is not method:sampler_steps[:k] (alignprop, drtune or refl; steps, k >= 1)")
    if args.steps < 3:
        ap.error("--steps must be at least 3 (s/step is a median of the gaps between steps)")
    if args.size < 8 or args.size % 8:
        ap.error("--size must be a positive multiple of 8")
    if args.checkpoint and not args.models_dir:
        ap.error("--checkpoint needs --models-dir (the ComfyUI models folder with checkpoints/ and reno_rewards/)")
    return args


def child_command(args, row: str) -> list[str]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", row, "--size", str(args.size), "--steps",
           str(args.steps), "--rewards", ",".join(args.reward_names)]
    if args.checkpoint:
        cmd += ["--checkpoint", args.checkpoint, "--models-dir", str(args.models_dir)]
    return cmd + (["--cpu"] if args.cpu else [])


def run_row(args, row: str) -> dict:
    return run_child_row(child_command(args, row), row, RESULT_TAG)


def table(rows: list[dict]) -> str:
    base = {r["sampler_steps"]: r for r in rows if r["method"] == "alignprop" and r["k"] == 1}
    lines = ["| method | sampler steps | k | s/training step | vs alignprop (k 1) | peak memory (MiB) | vs alignprop (k 1) |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        b = base.get(r["sampler_steps"])
        time_ratio = f"{r['s_per_step'] / b['s_per_step']:.2f}x" if b else "-"
        mem_ratio = f"{r['peak'] / b['peak']:.2f}x" if b and b["peak"] > 0 else "-"
        lines.append(f"| {r['method']} | {r['sampler_steps']} | {r['k']} | {r['s_per_step']:.3f} | {time_ratio} "
                     f"| {r['peak'] / 2**20:.1f} | {mem_ratio} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return run_child(args)
    if find_host(import_pack("testing.comfy_host")) is None:
        return 2
    print_header("scripts/bench_training.py")
    rows = []
    for name in args.row_names:
        r = run_row(args, name)
        rows.append(r)
        print(f"  {name}: {r['s_per_step']:.3f} s/step (median of {r['gaps']}), peak {r['peak'] / 2**20:.1f} MiB "
              f"({r['peak_method']}), loss {r['loss_first']:.3f} -> {r['loss_last']:.3f}; {r['process_seconds']:.0f} s",
              flush=True)
    first = rows[0]
    print(f"\nhost: {first['host']}; device {first['device']}; torch {first['torch']}; {first['threads']} threads; "
          f"{args.size}x{args.size}; rewards {', '.join(f'{n} ({WEIGHTS[n]:g})' for n in args.reward_names)}\n")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
