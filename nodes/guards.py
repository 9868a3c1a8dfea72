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
    "generate at a smaller size or batch; close other models (ComfyUI's 'Unload models'). The run's tensors have "
    "been released and ComfyUI unloads its models after this error, so the next run starts clean. ({detail})"
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


def oom_type() -> type[BaseException]:
    """The exception type ComfyUI's executor treats as out of memory (it then unloads every model)."""
    kind = getattr(comfy.model_management, "OOM_EXCEPTION", None)
    if isinstance(kind, type) and issubclass(kind, BaseException) and kind is not Exception:
        return kind
    return torch.OutOfMemoryError


def free_memory() -> None:
    gc.collect()
    with contextlib.suppress(Exception):
        comfy.model_management.soft_empty_cache(True)


def with_oom_advice(where: str, fn, *args, **kwargs):
    """``fn(*args, **kwargs)``; out of memory is raised again as ComfyUI's own OOM type, so the executor's cleanup
    (``unload_all_models``) still runs, with the pack's advice in the message.

    The new error is raised after the original one's handler has ended: no traceback keeps the run's frames,
    so its tensors are already gone when ComfyUI cleans up (a test checks it with weak references).
    """
    try:
        return fn(*args, **kwargs)
    except Exception as e:
        if not is_out_of_memory(e):
            raise
        detail = f"{type(e).__name__}: {e}"
    log.warning("ReNO: out of memory in %s: %s", where, detail)
    free_memory()
    raise oom_type()(OOM_ADVICE.format(where=where, detail=detail))
