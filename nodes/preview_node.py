"""ReNO Iteration Preview: every iteration of a run as an IMAGE batch, plus gallery and chart data."""

from __future__ import annotations

import os

import folder_paths
from PIL import Image

from .history import ReNOHistory

CATEGORY = "ReNO/sampling"


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
    SEARCH_ALIASES = [  # the node search finds it by these too (older servers: web/js/reno_search.js)
        "iteration gallery", "reward chart", "reward curve", "preview iterations"
    ]
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
            "ui": {"images": save_previews(history), "reno_chart": [history.chart()], "reno_prompt": [history.prompt]},
            "result": (history.images(),),
        }
