"""Forward+backward cost of each reward model, tiny (the tests' checkpoints) and full size (random weights).

    python scripts/bench_rewards.py [--full] [--repeats 3] [--size 512] [--device cpu]

For each reward: one image of --size px, preprocessing + image tower + score + backward to the image,
text features cached (as in a ReNO run). Tiny models are loaded from checkpoints written in the real
formats through the pack's own loaders; --full also builds the full-size architectures with random
weights in memory (ImageReward BLIP ViT-L/16 + BERT-base, HPS open_clip ViT-H-14, PickScore/CLIPScore
transformers CLIP ViT-H-14, aesthetic CLIP ViT-L/14 + MLP) - nothing is downloaded or written.
Prints a markdown table (median seconds of --repeats runs after one warm-up, peak RSS).
"""

from __future__ import annotations

import argparse
import gc
import importlib.util
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def load_pack(name: str = "reno_pack"):
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def time_reward(model, size: int, repeats: int, device: str, prompt="a red apple on a wooden table") -> float:
    model.to(device)
    model.text_features(prompt)
    times = []
    for k in range(repeats + 1):
        image = torch.rand(1, 3, size, size, device=device, requires_grad=True)
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        model(image, prompt).sum().backward()
        if device == "cuda":
            torch.cuda.synchronize()
        if k:  # the first run is a warm-up
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def full_models(tiny: dict):
    """Full-size architectures with random weights, built with the pack's own classes."""
    from reno_pack.reward_loaders.aesthetic import AestheticMLP, AestheticReward
    from reno_pack.reward_loaders.clip_rewards import CLIPModelReward
    from reno_pack.reward_loaders.hps import HPSReward
    from reno_pack.reward_loaders.imagereward import ImageRewardModel
    from reno_pack.reward_loaders.open_clip_model import OpenCLIP
    from transformers import CLIPConfig, CLIPModel, CLIPVisionConfig, CLIPVisionModelWithProjection

    def imagereward():
        return ImageRewardModel(tokenizer=tiny["imagereward"].tokenizer)

    def hps():
        return HPSReward(OpenCLIP(vit_h_14_config()), tiny["hpsv2.1"].tokenizer, "hpsv2.1", 1.0)

    def clip_h(name, offset):
        config = CLIPConfig(
            text_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                             vocab_size=49408, max_position_embeddings=77),
            vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                               image_size=224, patch_size=14),
            projection_dim=1024,
        )
        return lambda: CLIPModelReward(CLIPModel(config), tiny[name].tokenizer, name, offset)

    def aesthetic():
        vision = CLIPVisionModelWithProjection(CLIPVisionConfig(
            hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16, image_size=224,
            patch_size=14, projection_dim=768))
        return AestheticReward(vision, AestheticMLP([768, 1024, 128, 64, 16, 1]), "aesthetic", 10.0)

    return {
        "imagereward": ("BLIP ViT-L/16 + BERT-base", imagereward),
        "hpsv2.1 / hpsv2": ("open_clip ViT-H-14", hps),
        "pickscore / clipscore": ("CLIP ViT-H-14 (transformers)", clip_h("pickscore", 30.0)),
        "aesthetic": ("CLIP ViT-L/14 + MLP", aesthetic),
    }


def vit_h_14_config():
    """open_clip's ViT-H-14 sizes (the HPS architecture), from the pack's default model config."""
    from reno_pack.reward_loaders.open_clip_model import VIT_H_14, OpenCLIPConfig

    v, t = VIT_H_14["vision_cfg"], VIT_H_14["text_cfg"]
    return OpenCLIPConfig(
        embed_dim=VIT_H_14["embed_dim"], image_size=v["image_size"], patch_size=v["patch_size"],
        grid=v["image_size"] // v["patch_size"], vision_width=v["width"], vision_layers=v["layers"],
        vision_heads=v["width"] // v["head_width"], vision_mlp=4 * v["width"], context_length=t["context_length"],
        vocab_size=t["vocab_size"], text_width=t["width"], text_layers=t["layers"], text_heads=t["heads"],
        text_mlp=4 * t["width"],
    )


def peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--full", action="store_true", help="also time the full-size architectures (minutes on a CPU)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--size", type=int, default=512)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = ap.parse_args()
    load_pack()
    from reno_pack.reward_loaders import load_reward
    from reno_pack.testing.tiny_rewards import ALL_REWARDS, write_reward_root

    root = write_reward_root(Path(tempfile.mkdtemp(prefix="reno-bench-")), ALL_REWARDS)
    tiny = {name: load_reward(name, [root], download=False) for name in ALL_REWARDS}
    print(f"torch {torch.__version__}, device {args.device}, {torch.get_num_threads()} threads, "
          f"image {args.size}x{args.size}, median of {args.repeats} after a warm-up\n")
    print("| reward | size | architecture | parameters | forward+backward (s) |")
    print("|---|---|---|---|---|")
    for name, model in tiny.items():
        params = sum(p.numel() for p in model.parameters())
        t = time_reward(model, args.size, args.repeats, args.device)
        print(f"| {name} | tiny | checkpoint in the real format | {params:,} | {t:.3f} |", flush=True)
    if args.full:
        for label, (arch, build) in full_models(tiny).items():
            start = time.perf_counter()
            with torch.inference_mode(False):
                model = build().eval().requires_grad_(False)
            built = time.perf_counter() - start
            params = sum(p.numel() for p in model.parameters())
            t = time_reward(model, args.size, args.repeats, args.device)
            print(f"| {label} | full, random weights | {arch} | {params:,} | {t:.2f} (built in {built:.0f} s) |",
                  flush=True)
            del model
            gc.collect()
    print(f"\npeak RSS {peak_rss_gb():.1f} GB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
