"""Which parts of a ReNO run recompute their activations in the backward pass, and where memory comes from.

``memory`` (an input of both ReNO samplers):

* ``auto`` (default): one forward pass measures what each part keeps for backward (the diffusion
  model, the VAE decoder, each reward), then the fastest choice of parts to recompute whose estimate
  fits the free memory is taken. Before recomputing anything, ComfyUI is asked to unload the other
  models it caches; when even recomputing everything does not fit, it is asked for the room outright
  (it may load the diffusion model partially), and the rewards' text towers, used once per prompt,
  leave the GPU.
* ``no checkpointing``: fastest, most memory (a reward loaded with gradient checkpointing on still
  recomputes).
* ``checkpoint rewards`` / ``checkpoint rewards + VAE`` / ``checkpoint all``: fixed choices (with several steps
  ``checkpoint all`` measures whether whole steps or the model's blocks in every step give the lower peak).

``reward_patcher(model)``: the ModelPatcher through which ComfyUI's memory manager loads, offloads and frees a
reward model (the loader node, the score node and every run use it).
"""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.model_patcher
import torch

from ..optimizer.memory import (
    RESERVE,
    SAFETY,
    ComponentProfile,
    MemoryPlan,
    estimate_peak,
    extrapolate_profiles,
    find_blocks,
    fits,
    inner,
    plan_checkpointing,
)
from . import host

log = logging.getLogger(__name__)

AUTO = "auto"
MEMORY_MODES = ["auto", "no checkpointing", "checkpoint rewards", "checkpoint rewards + VAE", "checkpoint all"]
MODEL, VAE = "diffusion model", "VAE decoder"

# ComfyUI's blocks, called one by one by their model's forward (the containers around them are not)
DIFFUSION_BLOCKS = (
    "ResBlock", "VideoResBlock", "SpatialTransformer", "SpatialVideoTransformer", "Downsample", "Upsample",  # SD UNets
    "DoubleStreamBlock", "SingleStreamBlock",  # FLUX
    "JointBlock",  # SD3 / SD3.5 MMDiT
    "PixArtMSBlock",  # PixArt
)
VAE_BLOCKS = ("ResnetBlock", "AttnBlock", "Upsample")

MEMORY_INPUT = (MEMORY_MODES, {
    "default": AUTO,
    "tooltip": "Gradient checkpointing (recompute activations in the backward pass: less memory, slower).\n"
               "auto: measure, then recompute only what does not fit in free memory.\n"
               "no checkpointing: fastest, most memory.\n"
               "checkpoint rewards / rewards + VAE / all: fixed choices, least memory with 'all'.",
})


def model_blocks(inner_model) -> list:
    root = getattr(inner_model, "diffusion_model", None)
    return find_blocks(root, DIFFUSION_BLOCKS) if root is not None else []


def vae_blocks(vae) -> list:
    decoder = getattr(getattr(vae, "first_stage_model", None), "decoder", None)
    return find_blocks(decoder, VAE_BLOCKS) if decoder is not None else []


def reward_blocks(reward_model) -> list:
    return find_blocks(reward_model)


def check_mode(mode: str) -> str:
    """``mode`` itself when it is one of ``MEMORY_MODES``; a clear error otherwise (before any work)."""
    if mode not in MEMORY_MODES:
        raise ValueError(f"memory: {mode!r} is not one of {', '.join(MEMORY_MODES)}")
    return mode


def forced_components(mode: str, reward_labels: list[str], loader_checkpointed: list[bool]) -> tuple[set, set | None]:
    """(parts that must recompute, parts auto may add or None for any) for a ``memory`` mode."""
    check_mode(mode)
    forced = {label for label, on in zip(reward_labels, loader_checkpointed) if on}
    if mode == AUTO:
        return forced, None
    if mode in ("checkpoint rewards", "checkpoint rewards + VAE", "checkpoint all"):
        forced |= set(reward_labels)
    if mode in ("checkpoint rewards + VAE", "checkpoint all"):
        forced.add(VAE)
    if mode == "checkpoint all":  # the leanest: with several steps, measured: whole steps or the model's blocks
        forced.add(MODEL)
        return forced, {inner(MODEL)}
    return forced, set()


def free_bytes(device: torch.device, patcher=None) -> int:
    """Memory ReNO's activations may use on ``device``: free memory plus what torch caches unused, plus (with
    dynamic VRAM) what the memory manager can reclaim: ``host.free_memory``, the patcher's figure where it has one."""
    return host.free_memory(device, patcher)


def activation_request(peak: int) -> int:
    """Bytes to ask ComfyUI for so that ``peak`` bytes of activations fit (the planner's margins)."""
    return int(peak * SAFETY) + RESERVE


def unload_other_models(patchers: list, peak: int, device: torch.device) -> bool:
    """Ask ComfyUI to unload models other than this run's until ``peak`` bytes of activations fit (a cached
    model is cheap to reload later; recomputing costs time on every iteration). False on the CPU, where
    unloading frees nothing."""
    mm = comfy.model_management
    if device.type == "cpu" or not hasattr(mm, "free_memory"):
        return False
    ours = {id(p) for p in patchers if p is not None}
    keep = [lm for lm in getattr(mm, "current_loaded_models", []) if id(getattr(lm, "model", None)) in ours]
    return bool(mm.free_memory(activation_request(peak), device, keep_loaded=keep))


def make_room(patchers: list, reward_models: list, peak: int, device: torch.device) -> None:
    """Ask ComfyUI for ``peak`` bytes of activations: it unloads other models (or loads the diffusion
    model partially, with its layers streamed), and the rewards' text towers go to the CPU."""
    for model in reward_models:
        offload = getattr(model, "offload_text_towers", None)
        if offload is not None:
            offload(comfy.model_management.unet_offload_device())
    if device.type != "cpu":
        comfy.model_management.load_models_gpu(patchers, memory_required=activation_request(peak))
        comfy.model_management.soft_empty_cache()


def summarize(plan: MemoryPlan, profiles: list[ComponentProfile], budget: int | None) -> str:
    order = [p.name for p in profiles]
    text = plan.describe(order)
    if budget is not None:
        text += f" of {budget / 2**30:.2f} GiB free"
        if not plan.fits:
            text += " (may not fit)"
    return text


__all__ = ["AUTO", "MEMORY_INPUT", "MEMORY_MODES", "MODEL", "VAE", "RewardPatcher", "activation_request", "check_mode",
           "compute_dtype", "estimate_peak",
           "extrapolate_profiles", "fits",
           "forced_components", "free_bytes", "inner", "make_room", "model_blocks", "plan_checkpointing", "reward_blocks",
           "reward_patcher", "summarize", "unload_other_models", "vae_blocks"]


# -- the rewards under ComfyUI's memory manager ----------------------------------------------------------

def compute_dtype(device: torch.device) -> torch.dtype:
    """bf16 (or fp16) for the reward towers on GPUs that run it well; float32 on the CPU."""
    if device.type == "cpu":
        return torch.float32
    mm = comfy.model_management
    try:
        if mm.should_use_bf16(device):
            return torch.bfloat16
        if mm.should_use_fp16(device):
            return torch.float16
    except Exception:  # noqa: BLE001 - an engine without these checks: stay exact
        pass
    return torch.float32


class RewardPatcher(comfy.model_patcher.ModelPatcher):
    """A ModelPatcher that always loads its reward model whole.

    ComfyUI loads a model partially when memory is short, leaving on the CPU the layers it cannot
    cast on the fly; a reward model is made of plain torch layers, so it must be on the device entirely
    (ComfyUI then makes room by unloading other models, or by loading the diffusion model partially).
    """

    def load(self, device_to=None, lowvram_model_memory=0, force_patch_weights=False, full_load=False):
        return super().load(device_to, 0, force_patch_weights, True)


def reward_patcher(model):
    """The ModelPatcher that lets ComfyUI's memory manager load, offload and free this reward model.

    Created once per loaded model, which is then cast to the device's compute dtype.
    """
    patcher = getattr(model, "_reno_patcher", None)
    if patcher is None:
        device = comfy.model_management.get_torch_device()
        model.set_compute_dtype(compute_dtype(device))
        patcher = RewardPatcher(
            model, load_device=device, offload_device=comfy.model_management.unet_offload_device(),
        )
        model._reno_patcher = patcher
    return patcher
