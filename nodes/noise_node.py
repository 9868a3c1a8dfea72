"""ReNO Noise: a run's optimized noise as a NOISE for SamplerCustomAdvanced (the official code's "multi-apply").

Render the noise ReNO found with any sampler, step count or model with the same latent shape: optimize
FLUX.1-schnell at 1 step and render at 4, or SD-Turbo and render with SD 2.1 at 30 steps. With the run's own
sampler, scheduler and steps, SamplerCustomAdvanced reproduces ReNO's best latent exactly (the seed is the
run's, so ancestral samplers draw the same per-step noises).
"""

from __future__ import annotations

import torch

from .history import ReNOHistory

CATEGORY = "ReNO/sampling"


class OptimizedNoise:
    """ComfyUI's NOISE interface (``seed``, ``generate_noise(latent)``) giving a ReNO run's best noise."""

    def __init__(self, history: ReNOHistory):
        if history.best_noise is None:
            raise ValueError("ReNO Noise: this history holds no optimized noise (an empty run?)")
        self.seed = int(history.seed)
        self.noise = history.best_noise

    def generate_noise(self, input_latent: dict) -> torch.Tensor:
        samples = input_latent["samples"]
        if tuple(samples.shape) != tuple(self.noise.shape):
            raise ValueError(
                f"ReNO Noise: the optimized noise has shape {tuple(self.noise.shape)} but this latent is "
                f"{tuple(samples.shape)}: render with the same width, height and batch size, and a model of the same "
                "latent family (e.g. FLUX.1-schnell -> FLUX.1-dev, SD-Turbo -> SD 2.1, SDXL-Turbo -> SDXL)."
            )
        return self.noise.to(dtype=samples.dtype).clone()


class ReNONoise:
    DESCRIPTION = (
        "The best noise of a ReNO run as a NOISE for SamplerCustomAdvanced: render it with any sampler, scheduler, "
        "step count or model of the same latent shape (optimize at 1 step, render at 4). With the run's own sampler "
        "and steps it reproduces ReNO's result exactly."
    )
    CATEGORY = CATEGORY
    SEARCH_ALIASES = [  # the node search finds it by these too (older servers: web/js/reno_search.js)
        "optimized noise", "reuse noise", "noise from history"
    ]
    FUNCTION = "get_noise"
    RETURN_TYPES = ("NOISE",)
    RETURN_NAMES = ("noise",)
    OUTPUT_TOOLTIPS = ("The optimized initial noise (and the run's seed for ancestral samplers' per-step noises).",)

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"history": ("RENO_HISTORY", {"tooltip": "The history output of a ReNO Sampler."})}}

    def get_noise(self, history):
        return (OptimizedNoise(history),)
