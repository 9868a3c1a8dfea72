"""ReNO Iteration Preview: every iteration of a run as an IMAGE batch, plus gallery and chart data."""

from __future__ import annotations

import os

import folder_paths
from PIL import Image

from .history import ReNOHistory

CATEGORY = "sampling/ReNO"


def chart_data(history: ReNOHistory) -> dict:
    """Per batch element: each reward's score, the weighted total and the loss at every iteration."""
    series = []
    batch = len(history.records[0]["loss"]) if history.records else 0
    for b in range(batch):
        scores = {r["label"]: [rec["scores"][r["label"]][b] for rec in history.records] for r in history.rewards}
        total = [sum(r["weight"] * rec["scores"][r["label"]][b] for r in history.rewards) for rec in history.records]
        series.append({
            "scores": scores,
            "weighted_total": total,
            "loss": [rec["loss"][b] for rec in history.records],
            "latent_norm": [rec["latent_norm"][b] for rec in history.records],
            "grad_norm": [rec["grad_norm"][b] if rec["grad_norm"] else None for rec in history.records],
            "best_iteration": history.best_iteration[b],
        })
    return {"iterations": history.iterations, "rewards": history.rewards, "series": series,
            "stop_reason": history.stop_reason}


def save_previews(history: ReNOHistory, prefix: str = "reno_iter") -> list[dict]:
    """Each iteration's preview as a temp PNG (served by ComfyUI's /view), iteration-major."""
    temp = folder_paths.get_temp_directory()
    first = history.previews[0]
    folder, filename, counter, subfolder, _ = folder_paths.get_save_image_path(prefix, temp, first.shape[2], first.shape[1])
    os.makedirs(folder, exist_ok=True)
    files = []
    for it, batch in enumerate(history.previews):
        for b, image in enumerate(batch):
            name = f"{filename}_{counter:05}_i{it:03}_b{b}.png"
            Image.fromarray(image.numpy()).save(os.path.join(folder, name), compress_level=1)
            files.append({"filename": name, "subfolder": subfolder, "type": "temp", "iteration": it, "batch_index": b})
    return files


class ReNOIterationPreview:
    DESCRIPTION = (
        "Shows every iteration of a ReNO run: the images (as one IMAGE batch, iteration by iteration) and "
        "each reward's score over the iterations, with the best iteration marked."
    )
    CATEGORY = CATEGORY
    FUNCTION = "preview"
    OUTPUT_NODE = True
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("images",)
    OUTPUT_TOOLTIPS = ("Every iteration's image at preview size, iteration-major (all of iteration 0, then 1...).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"history": ("RENO_HISTORY", {"tooltip": "The history output of a ReNO Sampler."})}}

    def preview(self, history):
        return {
            "ui": {"images": save_previews(history), "reno_chart": [chart_data(history)]},
            "result": (history.images(),),
        }
