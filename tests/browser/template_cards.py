"""What the template browser shows for each shipped workflow: its title, its order and its card picture.

ComfyUI lists a pack's workflows by file name only (GET /api/workflow_templates: {pack: [name, ...]}, in the
order the server's glob finds them) and every frontend, 1.32.9 to 1.58, shows that name as the template's title
(1.32.9 also as its description, with - and _ as spaces); the card picture is <name>.jpg beside it. So:
* the title is the file name: "ReNO NN <model>, <what is special>", NN the place in the list;
* the order: the pack's web extension sorts its own list by name (web/js/reno_templates.js), so the template
  to start with comes first whatever the file system's order; "Alphabetical" sorting keeps it too;
* the description is on the card: the model, the sampling steps, size and learning rate (every workflow runs
  50 iterations), the reward mix, a tag (start here, download size, what is special) (and the peak VRAM where
  BENCHMARKS.md has a measurement: none for a full-size model yet), over a tight picture of the graph (drive.mjs
  renders it in chromium; RENO_UPDATE_DOCS=1 writes it).
"""

from __future__ import annotations

PAPER_MIX = "ImageReward 1 · HPSv2.1 5 · PickScore 0.05 · CLIPScore 0.01"

#: file stem -> (model, line of facts, reward mix, tag); the stem's number is the order
CARDS: dict[str, tuple[str, str, str, str]] = {
    "ReNO 05 SD-Turbo": ("SD-Turbo", "1 step · 512 px · lr 5", PAPER_MIX, "smallest · 5.2 GB"),
    "ReNO 06 SDXL-Turbo": ("SDXL-Turbo", "1 step · 512 px · lr 5", PAPER_MIX, "6.9 GB"),
    "ReNO 07 FLUX.1-schnell": ("FLUX.1-schnell", "1 step · 512 px · lr 5", PAPER_MIX, "4 files · 29 GB"),
    "ReNO 08 SD3.5-Large-Turbo": ("SD3.5 Large Turbo", "1 step · 1024 px · lr 10", PAPER_MIX, "gated download"),
    "ReNO 09 SD-Turbo, custom sampler": ("SD-Turbo", "SamplerCustomAdvanced · 1 step", PAPER_MIX, "custom sampler"),
    "ReNO 10 SDXL-Lightning, 4 steps": ("SDXL-Lightning", "4 steps euler · 1024 px · lr 10", PAPER_MIX, "through 4 steps"),
    "ReNO 11 FLUX.1-schnell, 4 steps": ("FLUX.1-schnell", "4 steps euler · 512 px · lr 5", PAPER_MIX, "through 4 steps"),
    "ReNO 12 FLUX.1-schnell, optimize at 1 step, render at 4": (
        "FLUX.1-schnell", "1 step, rendered at 4 · 512 px", PAPER_MIX, "ReNO Noise"),
    "ReNO 13 Hyper-SDXL, 1 step": ("Hyper-SDXL", "1 step at t = 800 · 1024 px", PAPER_MIX, "custom sampler"),
    "ReNO 14 SDXL with the Hyper-SD 8-step LoRA": ("SDXL + Hyper-SD", "8 steps euler · 1024 px · lr 10", PAPER_MIX, "LoRA"),
    "ReNO 15 SD 1.5 with LCM-LoRA, 4 steps": ("SD 1.5 + LCM", "4 steps lcm · 512 px · lr 5", PAPER_MIX, "LoRA"),
    "ReNO 16 Train a reward LoRA on SD-Turbo": (
        "Reward LoRA", "AlignProp · 1 step · 8 prompts", "ImageReward 1 · HPSv2.1 5", "training"),
    "ReNO 17 Train a noise model on SD-Turbo": (
        "Noise model", "HyperNoise · 1 step · 8 prompts", "ImageReward 1 · HPSv2.1 5", "training"),
    "ReNO 01 Z-Image-Turbo, 8 steps (start here)": ("Z-Image-Turbo", "8 steps res_multistep · 1024 px", PAPER_MIX,
                                                    "start here · 8 steps"),
    "ReNO 03 Qwen-Image, Lightning 2 steps": ("Qwen-Image 2512", "2 steps euler · 1328 px", PAPER_MIX, "LoRA · 2 steps"),
    "ReNO 04 FLUX.2 Klein, 4 steps": ("FLUX.2 Klein 4B", "4 steps euler · 1024 px", PAPER_MIX, "custom sampler"),
    "ReNO 02 Z-Image-Turbo as a subgraph": ("Z-Image-Turbo", "8 steps res_multistep · 1024 px", PAPER_MIX,
                                            "one subgraph node"),
    "ReNO 18 Krea 2 Turbo, 8 steps": ("Krea 2 Turbo", "8 steps euler · 1024 px", PAPER_MIX, "ComfyUI 0.33+ · 17 GB"),
    "ReNO 19 Chroma, 26 steps": ("Chroma1-HD", "26 steps euler · cfg 3.5 · 1024 px", PAPER_MIX, "custom sampler"),
    "ReNO 20 Lumina 2 (NetaYume), 30 steps": ("NetaYume Lumina", "30 steps res_multistep · cfg 4", PAPER_MIX,
                                              "one file · 9.9 GB"),
    "ReNO 21 Lens Turbo, 4 steps": ("Lens Turbo", "4 steps euler · 1440 px", PAPER_MIX, "ComfyUI 0.33+ · 20 GB"),
    "ReNO 22 Mage-Flow Turbo, 4 steps": ("Mage-Flow Turbo", "4 steps euler · 1024 px", PAPER_MIX,
                                         "ComfyUI 0.33+ · int8 · 12 GB"),
    "ReNO 23 ERNIE-Image Turbo, 8 steps": ("ERNIE-Image Turbo", "8 steps euler · 1024 px", PAPER_MIX,
                                           "ComfyUI 0.33+ · 22 GB"),
    "ReNO 24 HiDream-I1 Fast, 16 steps": ("HiDream-I1 Fast", "16 steps euler · 1024 px", PAPER_MIX, "6 files · 31 GB"),
    "ReNO 25 HunyuanImage 2.1, 20 steps": ("HunyuanImage 2.1", "20 steps euler · cfg 3.5 · 1024 px", PAPER_MIX,
                                           "no template · 28 GB"),
}


def order(stem: str) -> int:
    """The template's place in the list (the NN of "ReNO NN ...")."""
    return int(stem.split()[1])


def card_specs(stems, shots_dir, out_dir) -> list[dict]:
    """What drive.mjs --cards renders: one 640x400 card per workflow, over its tight graph picture."""
    specs = []
    for stem in stems:
        model, facts, rewards, tag = CARDS[stem]
        specs.append({"stem": stem, "number": f"{order(stem):02d}", "model": model, "facts": facts,
                      "rewards": rewards, "tag": tag, "graph": str(shots_dir / f"{stem}.graph.png"),
                      "out": str(out_dir / f"{stem}.card.jpg")})
    return specs
