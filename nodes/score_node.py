"""ReNO Score Images: score any IMAGE batch with a reward stack (compare images inside a workflow)."""

from __future__ import annotations

import os

import comfy.model_management
import folder_paths
import torch
from PIL import Image

from ..reward_loaders import RewardEnsemble, comfy_to_bchw
from .guards import with_oom_advice
from .reward_nodes import reward_patcher

CATEGORY = "ReNO/rewards"
CHUNK = 8  # images scored at once


def score_images(images: torch.Tensor, rewards, prompt: str) -> tuple[list[float], str, dict[str, list[float]]]:
    """Σ wᵢ·scoreᵢ per image, a readable report, and each reward's score per image."""
    if not rewards:
        raise ValueError("ReNO Score Images: connect at least one 'ReNO Load Reward' node to 'rewards'.")
    ensemble = RewardEnsemble(list(rewards), prompt)
    comfy.model_management.load_models_gpu([reward_patcher(r.model) for r in ensemble.rewards])
    per_reward: dict[str, list[float]] = {label: [] for label in ensemble.labels}
    totals: list[float] = []
    bchw = comfy_to_bchw(images)
    with torch.no_grad():
        for start in range(0, bchw.shape[0], CHUNK):
            scores = ensemble.scores(bchw[start : start + CHUNK].float())
            for label in ensemble.labels:
                per_reward[label] += scores[label].cpu().tolist()
            totals += ensemble.weighted_total(scores).cpu().tolist()
    weights = {label: r.weight for label, r in zip(ensemble.labels, ensemble.rewards)}
    header = "image | weighted total | " + " | ".join(f"{label} (w={weights[label]:g})" for label in ensemble.labels)
    rows = [
        f"{i} | {total:.4f} | " + " | ".join(f"{per_reward[label][i]:.4f}" for label in ensemble.labels)
        for i, total in enumerate(totals)
    ]
    best = max(range(len(totals)), key=totals.__getitem__) if totals else None
    footer = [f"best: image {best} ({totals[best]:.4f})"] if best is not None else []
    return totals, "\n".join([f'prompt: "{prompt}"', header, *rows, *footer]), per_reward


def save_scored(images: torch.Tensor, prefix: str = "reno_score") -> list[dict]:
    """Each scored image as a temp PNG (shown in the node's gallery, where it can be marked preferred/rejected)."""
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(
        prefix, folder_paths.get_temp_directory(), images.shape[2], images.shape[1])
    os.makedirs(folder, exist_ok=True)
    files = []
    for b, image in enumerate(images):
        name = f"{filename}_{counter:05}_{b}.png"
        pixels = (image[..., :3].float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()
        Image.fromarray(pixels).save(os.path.join(folder, name), compress_level=1)
        files.append({"filename": name, "subfolder": subfolder, "type": "temp", "iteration": b})
    return files


class ReNOScoreImages:
    DESCRIPTION = (
        "Scores every image of a batch with the connected reward stack: one FLOAT per image "
        "(the weighted sum of the rewards' native scores) and a per-reward report."
    )
    CATEGORY = CATEGORY
    SEARCH_ALIASES = [  # the node search finds it by these too (older servers: web/js/reno_search.js)
        "score images", "rate images", "rank images", "reward score", "pickscore", "aesthetic score", "clip score",
        "imagereward", "best of n"
    ]
    FUNCTION = "score"
    OUTPUT_NODE = True  # shows its report even when nothing consumes the scores
    RETURN_TYPES = ("FLOAT", "STRING")
    RETURN_NAMES = ("scores", "report")
    OUTPUT_IS_LIST = (True, False)
    OUTPUT_TOOLTIPS = ("One score per image: sum of weight × score over the rewards.",
                       "Each reward's score for each image, as text.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to score (any size, any batch)."}),
                "rewards": ("RENO_REWARDS", {"tooltip": "The reward stack from ReNO Load Reward node(s)."}),
                "prompt": ("STRING", {"default": "", "multiline": True, "dynamicPrompts": False,
                                      "tooltip": "The text the images are scored against."}),
            }
        }

    def score(self, images, rewards, prompt):
        totals, report, _ = with_oom_advice("ReNO Score Images", score_images, images, rewards, prompt)
        # images/reno_scores/reno_prompt: the node's gallery, for preference picks
        return {"ui": {"text": [report], "images": save_scored(images), "reno_scores": totals, "reno_prompt": [prompt]},
                "result": (totals, report)}
