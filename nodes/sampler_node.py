"""ReNO Sampler: generation (one step or a few) whose initial noise is optimized for the connected rewards."""

from __future__ import annotations

from .guards import check_model_and_vae, with_oom_advice
from .inputs import chain_input, chain_settings, finite_input, reno_config, reno_input
from .memory import AUTO, MEMORY_INPUT
from .preview_node import save_previews
from .run import reno_sample
from .search import MAX_CANDIDATES

CATEGORY = "ReNO/sampling"


class ReNOSampler:
    DESCRIPTION = (
        "Reward-based Noise Optimization (ReNO): generates with a one-step model (SD-Turbo, SDXL-Turbo...), "
        "scores the image with the connected reward models, and runs gradient ascent on the initial noise. "
        "Returns the best iteration (the plain one-step image is iteration 0, so the result never scores lower)."
    )
    CATEGORY = CATEGORY
    SEARCH_ALIASES = [  # the node search finds it by these too (older servers: web/js/reno_search.js)
        "noise optimization", "reward noise optimization", "reward guidance", "optimize noise",
        "test-time optimization", "inference-time scaling", "prompt adherence", "one-step sampler"
    ]
    FUNCTION = "sample"
    RETURN_TYPES = ("LATENT", "IMAGE", "RENO_HISTORY")
    RETURN_NAMES = ("latent", "image", "history")
    OUTPUT_TOOLTIPS = (
        "The best iteration's denoised latent.",
        "The best iteration's decoded image.",
        "Every iteration's scores, losses, norms and preview images (for ReNO Iteration Preview).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "A one-step model (SD-Turbo, SDXL-Turbo, ...)."}),
                "positive": ("CONDITIONING", {"tooltip": "The positive conditioning the model generates from."}),
                "negative": ("CONDITIONING", {"tooltip": "The negative conditioning (used only when cfg > 1)."}),
                "vae": reno_input("vae"),
                "latent_image": ("LATENT", {"tooltip": "Sets the size and batch; an empty latent for text-to-image."}),
                "rewards": reno_input("rewards"),
                "prompt": reno_input("prompt"),
                "seed": ("INT", {
                    "default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                    "tooltip": "Seed of the initial noise (the same noise ComfyUI's samplers make for this seed).",
                }),
                "iterations": reno_input("iterations"),
                "learning_rate": reno_input("learning_rate"),
                "cfg": ("FLOAT", {
                    "default": 1.0, "min": 0.0, "max": 30.0, "step": 0.1, "round": 0.01,
                    "tooltip": "Classifier-free guidance; 1.0 (no guidance, one model call) for turbo models.",
                }),
                "regularization": reno_input("regularization"),
                "grad_clip": reno_input("grad_clip"),
            },
            "optional": {
                "continue_from": ("RENO_HISTORY", {
                    "tooltip": "Start from the best noise of an earlier ReNO run (its history output) instead of the "
                               "seed's noise: change the weights or the prompt and keep refining. Same size and batch.",
                }),
                "memory": (MEMORY_INPUT[0], dict(MEMORY_INPUT[1])),
                **{name: chain_input(name) for name in ("steps", "sampler_name", "scheduler", "gradient",
                                                        "gradient_steps")},
                "candidates": ("INT", {
                    "default": 1, "min": 1, "max": MAX_CANDIDATES, "advanced": True,
                    "tooltip": "Search, then gradient: generate and score this many seeds' images first (seed, seed+1, "
                               "...; no gradient, in batches) and run ReNO from the best 'keep' of them. 1: the seed's "
                               "noise only (no search). Needs a latent with batch_size 1.",
                }),
                "keep": ("INT", {
                    "default": 1, "min": 1, "max": MAX_CANDIDATES, "advanced": True,
                    "tooltip": "How many of the best candidates continue with ReNO (the images come out as a batch of "
                               "this many, the best candidate first). At most 'candidates'.",
                }),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def sample(self, model, positive, negative, vae, latent_image, rewards, prompt, seed, iterations,
               learning_rate, cfg, regularization, grad_clip, continue_from=None, memory=AUTO, steps=1,
               sampler_name="euler", scheduler="simple", gradient="exact", gradient_steps=1, candidates=1, keep=1,
               unique_id=None):
        cfg = finite_input("ReNO Sampler", "cfg", cfg, "1.0 = no guidance, for turbo models; the widget allows 0 to 30")
        config = reno_config(iterations, learning_rate, regularization, grad_clip)
        chain = chain_settings(sampler_name, gradient, gradient_steps)
        check_model_and_vae(model, vae)
        latent, image, history = with_oom_advice(
            "ReNO Sampler", reno_sample, model, positive, negative, vae, latent_image, rewards, prompt, seed, config,
            cfg, node_id=unique_id, continue_from=continue_from, memory=memory, steps=int(steps), scheduler=scheduler,
            chain=chain, candidates=candidates, keep=keep,
        )
        # reno_images/reno_prompt: the gallery's images as temp files and their prompt, for preference picks
        return {"ui": {"reno_summary": [history.summary()], "reno_chart": [history.chart()],
                       "reno_images": save_previews(history, "reno_sampler"), "reno_prompt": [history.prompt]},
                "result": (latent, image, history)}
