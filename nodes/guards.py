"""Checks and error translation around a ReNO run: clear answers instead of stack traces."""

from __future__ import annotations

import contextlib
import gc
import logging

import comfy.model_management
import torch

log = logging.getLogger(__name__)

OOM_ADVICE = (
    "ReNO ran out of memory ({where}). It backpropagates through the model, the VAE decoder and every reward, "
    "so it needs much more memory than plain sampling. Try, in this order: set the sampler's memory input to "
    "'checkpoint all' (recomputes activations in the backward pass; 'auto' chooses from an estimate, which can "
    "miss), or turn gradient_checkpointing on in the ReNO Load Reward nodes; use fewer or smaller rewards; "
    "generate at a smaller size or batch; close other models (ComfyUI's 'Unload models'). Memory has been "
    "freed; the next run starts clean."
)


def model_latent_channels(model) -> int | None:
    fmt = getattr(getattr(model, "model", None), "latent_format", None)
    return getattr(fmt, "latent_channels", None)


def check_model_and_vae(model, vae) -> None:
    """A VAE whose latent space is not the model's gives garbage or a deep shape error: say so up front."""
    expected, actual = model_latent_channels(model), getattr(vae, "latent_channels", None)
    if expected is not None and actual is not None and expected != actual:
        raise ValueError(
            f"ReNO Sampler: the model works with {expected}-channel latents but the VAE with {actual}-channel ones. "
            "Connect the VAE of this model family (e.g. the checkpoint's own VAE, or ae.safetensors for FLUX)."
        )


def is_out_of_memory(e: BaseException) -> bool:
    oom_types = tuple(t for t in (getattr(torch, "OutOfMemoryError", None),
                                  getattr(torch.cuda, "OutOfMemoryError", None)) if isinstance(t, type))
    return (bool(oom_types) and isinstance(e, oom_types)) or (
        isinstance(e, RuntimeError) and "out of memory" in str(e).lower())


def free_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        comfy.model_management.soft_empty_cache(True)


@contextlib.contextmanager
def friendly_errors(where: str):
    """Out-of-memory becomes one actionable message (after freeing what the run held)."""
    try:
        yield
    except Exception as e:
        if is_out_of_memory(e):
            log.warning("ReNO: out of memory in %s: %s", where, e)
            e = None  # drop the traceback's references to the run's tensors before freeing
            free_memory()
            raise RuntimeError(OOM_ADVICE.format(where=where)) from None
        raise
