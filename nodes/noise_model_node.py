"""ReNO Train Noise Model and ReNO Noise Model: Noise Hypernetworks (HyperNoise) with ComfyUI's own adapters.

The logic is in ``nodes/noise_model.py``; the training record, progress and chart are the reward LoRA trainer's
(``nodes/train_lora_node.py``).
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils

from .guards import check_model_and_vae
from .history import ReNOHistory
from .inputs import finite_input, scheduler_input
from .memory import AUTO, MEMORY_INPUT, check_mode
from .noise_model import noise_model_noise, noise_sigma, train_noise_model
from .noise_node import OptimizedNoise
from .run import model_sampling_of
from .train_lora_node import (
    MIN_LEARNING_RATE,
    _held_out_files,
    train_config,
    train_with_progress,
    training_prompts,
    training_summary,
)
from .training import Sampling

log = logging.getLogger(__name__)

CATEGORY = "ReNO/training"
NODE = "ReNO Train Noise Model"


class ReNOTrainNoiseModel:
    DESCRIPTION = (
        "Trains a noise model (Noise Hypernetworks / HyperNoise): a LoRA on the model itself that predicts an offset "
        "for the initial noise, so that the base model's image from the offset noise scores higher on the connected "
        "rewards. ReNO's gain amortized over a prompt set: at inference ReNO Noise Model costs two extra model calls "
        "instead of ReNO's tens of iterations. The offset is exactly zero before training. The LoRA is ComfyUI's own "
        "format (Save LoRA Weights writes it); use it with ReNO Noise Model, not as a LoRA on the model."
    )
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["hypernoise", "noise hypernetwork", "noise model", "amortized reno"]
    FUNCTION = "train"
    RETURN_TYPES = ("LORA_MODEL", "RENO_HISTORY")
    RETURN_NAMES = ("noise_model", "history")
    OUTPUT_TOOLTIPS = (
        "The noise model (a LORA_MODEL: connect ReNO Noise Model, or Save LoRA Weights to keep it).",
        "Per training step: the loss, each reward and the held-out reward of hyper-noise images "
        "(for ReNO Iteration Preview).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model (a few-step or one-step model) whose noise to learn: the "
                                               "noise model is a LoRA on it, and the images come from it unchanged."}),
                "clip": ("CLIP", {"tooltip": "Encodes the prompts (as CLIP Text Encode does)."}),
                "vae": ("VAE", {"tooltip": "Decodes the rollouts' latents for the rewards."}),
                "rewards": ("RENO_REWARDS", {"tooltip": "The reward stack (ReNO Load Reward nodes) to train for."}),
                "prompts": ("STRING", {"default": "", "multiline": True, "dynamicPrompts": False,
                                       "tooltip": "Training prompts, one per line (blank lines are ignored)."}),
                "training_steps": ("INT", {"default": 200, "min": 1, "max": 100000,
                                           "tooltip": "Optimizer steps (each batch_size rollouts: one image each)."}),
                "learning_rate": ("FLOAT", {"default": 1e-4, "min": MIN_LEARNING_RATE, "max": 1.0, "step": 1e-5,
                                            "round": 1e-7,
                                            "tooltip": "AdamW learning rate of the noise model's LoRA (> 0)."}),
                "rank": ("INT", {"default": 8, "min": 1, "max": 128, "tooltip": "LoRA rank of the noise model."}),
                "regularization": ("FLOAT", {"default": 0.1, "min": 0.0, "max": 1000.0, "step": 0.01,
                                             "tooltip": "λ of λ·mean(f²): keeps the noise offset f small, so the "
                                                        "offset noise stays noise the model knows (0: none)."}),
                "sampler_steps": ("INT", {"default": 1, "min": 1, "max": 100,
                                          "tooltip": "Sampling steps of each training image (the model's own step "
                                                     "count; the gradient runs through all of them)."}),
                "sampler_name": (list(comfy.samplers.KSampler.SAMPLERS), {
                    "default": "euler", "tooltip": "The sampler of the training and held-out images (ComfyUI's)."}),
                "scheduler": scheduler_input(),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "Seed of the prompt order, the noises, the LoRA's initialization and the "
                                            "held-out images."}),
            },
            "optional": {
                "held_out": ("STRING", {"default": "", "multiline": True, "dynamicPrompts": False,
                                        "tooltip": "Prompts never trained on, one per line: the reward of their "
                                                   "hyper-noise images is measured every eval_every steps."}),
                "width": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                                  "tooltip": "Width of the training and held-out images."}),
                "height": ("INT", {"default": 512, "min": 64, "max": 4096, "step": 8,
                                   "tooltip": "Height of the training and held-out images."}),
                "batch_size": ("INT", {"default": 1, "min": 1, "max": 64,
                                       "tooltip": "Rollouts per optimizer step (each its own prompt and noise)."}),
                "eval_every": ("INT", {"default": 10, "min": 1, "max": 100000,
                                       "tooltip": "Measure the held-out reward every this many steps."}),
                "memory": (MEMORY_INPUT[0], dict(MEMORY_INPUT[1])),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def train(self, model, clip, vae, rewards, prompts, training_steps, learning_rate, rank, regularization,
              sampler_steps, sampler_name, scheduler, seed, held_out="", width=512, height=512, batch_size=1,
              eval_every=10, memory=AUTO, unique_id=None):
        return train_noise_model_node(model, clip, vae, rewards, prompts, training_steps, learning_rate, rank,
                                      regularization, sampler_steps, sampler_name, scheduler, seed, held_out, width,
                                      height, batch_size, eval_every, memory, unique_id)


def train_noise_model_node(model, clip, vae, rewards, prompts, training_steps, learning_rate, rank, regularization,
                           sampler_steps, sampler_name, scheduler, seed, held_out="", width=512, height=512,
                           batch_size=1, eval_every=10, memory=AUTO, unique_id=None):
    texts, held_texts = training_prompts(NODE, prompts, held_out)
    if sampler_name not in comfy.samplers.KSampler.SAMPLERS:
        raise ValueError(f"{NODE}: sampler_name {sampler_name!r} is not one of this ComfyUI's samplers")
    if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        raise ValueError(f"{NODE}: scheduler {scheduler!r} is not one of this ComfyUI's schedulers")
    check_mode(memory)
    lr = finite_input(NODE, "learning_rate", learning_rate, "the noise model's AdamW step size, e.g. 1e-4")
    lam = finite_input(NODE, "regularization", regularization, "λ of λ·mean(f²), e.g. 0.1")
    if lam < 0:
        raise ValueError(f"{NODE}: regularization must be >= 0, got {lam}")
    config = train_config(method="alignprop", steps=int(training_steps), learning_rate=lr, batch_size=int(batch_size),
                          sampler_steps=int(sampler_steps), k=1, eval_every=int(eval_every), seed=int(seed) % 2**63)
    check_model_and_vae(model, vae)
    sampling = Sampling(int(sampler_steps), sampler_name, scheduler, 1.0, int(width), int(height))
    adapters, result, history, held_previews = train_with_progress(
        NODE, clip, rewards, texts, held_texts, config, sampling, unique_id,
        lambda train_set, held_set, negative, on_step, previews: train_noise_model(
            model, vae, rewards, train_set, held_set, negative, sampling, config, int(rank), lam, memory, on_step,
            previews))
    lora = adapters.state()
    history.config.update({"method": "hypernoise", "regularization": lam, "rank": int(rank)})
    held = ""
    if result.held_out_before is not None:
        held = f"; held-out reward {result.held_out_before:.4f} -> {result.held_out_after:.4f}"
    log.info("%s: %d step(s)%s", NODE, len(result.records), held)
    summary = training_summary(result, config, held_texts)
    summary["method"] = "hypernoise"
    ui = {"reno_chart": [history.chart()], "reno_training": [summary]}
    if held_previews:
        ui["images"] = _held_out_files(held_previews, result)
    return {"ui": ui, "result": (lora, history)}


class ReNONoiseModel:
    DESCRIPTION = (
        "The noise model's initial noise (HyperNoise): the seed's noise plus the offset a ReNO Train Noise Model LoRA "
        "predicts for this prompt, as a NOISE for SamplerCustomAdvanced (generate with the base model, the noise "
        "model's LoRA is not applied to it), and as a history that ReNO Sampler's continue_from starts from (a short "
        "ReNO run from the hyper-noise). Cost: two model calls. With an untrained noise model or strength 0 it is "
        "exactly RandomNoise's noise for the seed."
    )
    CATEGORY = CATEGORY
    SEARCH_ALIASES = ["hypernoise", "noise hypernetwork", "hyper noise"]
    FUNCTION = "get_noise"
    RETURN_TYPES = ("NOISE", "RENO_HISTORY")
    RETURN_NAMES = ("noise", "history")
    OUTPUT_TOOLTIPS = (
        "The hyper-noise ε' = ε + strength·f (for SamplerCustomAdvanced; the seed goes along for ancestral samplers).",
        "A history whose best noise is ε' (connect ReNO Sampler's continue_from, or ReNO Noise).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The model the noise model was trained on (the same one generates)."}),
                "noise_model": ("LORA_MODEL", {"tooltip": "The noise model from ReNO Train Noise Model (or its saved "
                                                          "file through Load LoRA Model's source)."}),
                "positive": ("CONDITIONING", {"tooltip": "The prompt the noise is made for."}),
                "latent": ("LATENT", {"tooltip": "The latent to generate (its shape; e.g. Empty Latent Image)."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF, "control_after_generate": True,
                                 "tooltip": "The seed of the initial noise ε (as RandomNoise's)."}),
                "strength": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.05,
                                       "tooltip": "Scale of the predicted offset (1: as trained; 0: the plain noise)."}),
            },
        }

    def get_noise(self, model, noise_model, positive, latent, seed, strength=1.0):
        return noise_model_node(model, noise_model, positive, latent, seed, strength)


def noise_model_node(model, noise_model, positive, latent, seed, strength=1.0):
    name = "ReNO Noise Model"
    strength = finite_input(name, "strength", strength, "1.0 = the offset as trained")
    samples = comfy.sample.fix_empty_latent_channels(model, latent["samples"])
    eps, hyper = noise_model_noise(model, noise_model, positive, samples, int(seed), latent.get("batch_index"),
                                   strength)
    offset = (hyper.float() - eps.float()).flatten(1)
    sigma = float(noise_sigma(model_sampling_of(model)))
    history = ReNOHistory(
        prompt="", seed=int(seed), rewards=[],
        config={"noise_model": True, "strength": strength,
                "offset_rms": [float(v) for v in offset.pow(2).mean(1).sqrt()]},
        sigma=sigma, records=[], previews=[], best_noise=hyper.float().cpu(),
    )
    return (OptimizedNoise(history), history)
