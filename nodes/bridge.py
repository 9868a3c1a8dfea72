"""The bridge from a ComfyUI MODEL + VAE + conditioning to ReNO's ``generate(noise) -> image``.

``ReNOComfySampler`` is a ``comfy.samplers.Sampler``: run by ``comfy.sample.sample_custom`` (or by
``SamplerCustomAdvanced`` with any guider), ComfyUI loads the model, encodes the conditioning and
applies CFG and the latent format; inside ``sample`` the one-step denoise ``model_wrap(x, sigma)``
returns x0 with gradients, which is decoded by the VAE on the device and scored by the rewards.
"""

from __future__ import annotations

import contextlib
import logging
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import comfy.model_management
import comfy.samplers
import torch
import torch.nn.functional as F

from ..optimizer import IterationRecord, ReNOConfig, ReNOResult, optimize_noise
from ..optimizer.memory import INPLACE_MESSAGE, ActivationProbe, ComponentProfile, recompute_wrapper, wrap_blocks
from ..reward_loaders import RewardEnsemble
from . import memory
from .autograd import as_normal, channels_last_weights, normal_tensors
from .settings import channels_last_vae, compile_rewards

log = logging.getLogger(__name__)


def decode_with_grad(vae, latent: torch.Tensor) -> torch.Tensor:
    """VAE decode that keeps gradients: (B, C, h, w) latent -> (B, 3, H, W) image in [0, 1].

    ``VAE.decode`` copies to the CPU every call and may fall back to a tiled decode that runs under
    ``inference_mode`` (silently dropping gradients); this calls the decoder on its device.
    """
    model = vae.first_stage_model
    device = getattr(vae, "device", None) or next(model.parameters()).device
    dtype = getattr(vae, "vae_dtype", None) or next(model.parameters()).dtype
    out = model.decode(latent.to(device=device, dtype=dtype)).float()
    if out.dim() != 4:
        raise ValueError(
            f"ReNO works on images; this VAE decodes to a tensor of shape {tuple(out.shape)} (video or audio VAE?)"
        )
    process = getattr(vae, "process_output", None)
    return process(out) if process is not None else torch.clamp((out + 1.0) / 2.0, 0.0, 1.0)


def preview_image(images: torch.Tensor, max_side: int) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, h, w, 3) uint8 on the CPU, longest side at most ``max_side``."""
    h, w = images.shape[-2:]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        images = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).movedim(1, -1).cpu()


@dataclass
class RunOutput:
    """What a ReNO run leaves for the node besides the latent ComfyUI returns."""

    result: ReNOResult
    sigma: float
    previews: list[torch.Tensor] = field(default_factory=list)  # per iteration: (B, h, w, 3) uint8
    memory: str = ""  # what recomputed its activations in backward, and the estimate when measured


class ReNOComfySampler(comfy.samplers.Sampler):
    """One-step sampling whose initial noise is optimized by ReNO before the result is returned."""

    def __init__(
        self,
        ensemble: RewardEnsemble,
        config: ReNOConfig,
        vae,
        on_iteration: Callable[[IterationRecord, torch.Tensor, torch.Tensor], None] | None = None,
        preview_size: int = 256,
        model_patcher=None,
        memory_mode: str = memory.AUTO,
    ):
        memory.forced_components(memory_mode, [], [])  # an unknown mode fails here, before any work
        self.memory_mode = memory_mode
        self.ensemble = ensemble
        self.config = config
        self.vae = vae
        self.on_iteration = on_iteration
        self.preview_size = preview_size
        self.model_patcher = model_patcher
        self.output: RunOutput | None = None

    def _reward_patchers(self):
        from .reward_nodes import reward_patcher

        return [reward_patcher(r.model) for r in self.ensemble.rewards]

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        """One ReNO run inside any ComfyUI sampling path (``sample_custom``, ``SamplerCustom``,
        ``SamplerCustomAdvanced`` with any guider).

        The image is the one-step denoise from ``sigmas[0]`` (whatever the model family: ComfyUI's own
        ``model_sampling`` scales the noise and turns the model output into x0 for ε, v, x0 and flow
        models). With the usual final sigma 0 the best x0 is returned; with a schedule that ends above
        0 (the high half of a split schedule) the result is one Euler step from ``sigmas[0]`` to
        ``sigmas[-1]`` taken with the best x0, ready for a second sampler. Intermediate sigmas are unused.
        """
        inner = model_wrap.inner_model
        model_sampling = inner.model_sampling
        patcher = self.model_patcher or getattr(model_wrap, "model_patcher", None) or _loaded_patcher_of(inner)
        rewards = self._reward_patchers()
        comfy.model_management.load_models_gpu(([patcher] if patcher is not None else []) + [self.vae.patcher] + rewards)
        max_denoise = self.max_denoise(model_wrap, sigmas)
        if len(sigmas) > 2:
            log.warning("ReNO: %d sigmas given; ReNO denoises in one step from the first (%.4f)",
                        len(sigmas), float(sigmas[0]))
        if not torch.any(noise != 0):
            raise ValueError("ReNO optimizes the initial noise, but the noise is all zeros: turn add_noise on "
                             "(SamplerCustom) or use RandomNoise, not DisableNoise (SamplerCustomAdvanced).")

        modules = [inner, self.vae.first_stage_model] + [r.model for r in self.ensemble.rewards]
        device = getattr(patcher, "load_device", None) or comfy.model_management.get_torch_device()
        with torch.inference_mode(False), torch.enable_grad(), normal_tensors(modules):
            sigma = as_normal(sigmas[0]).clone()
            sigma_last = as_normal(sigmas[-1]).clone()
            latent = as_normal(latent_image).clone() if latent_image is not None else torch.zeros_like(noise)
            mask = as_normal(denoise_mask).clone() if denoise_mask is not None else None
            start = as_normal(noise).clone()
            s_in = sigma.new_ones((start.shape[0],))
            args = _with_normal_conds(extra_args)
            self.ensemble.prepare()
            self.ensemble.compile = compile_rewards()
            previews: list[torch.Tensor] = []

            def noised(z):
                return model_sampling.noise_scaling(sigma, z.to(latent.dtype), latent, max_denoise)

            def copying() -> bool:
                return getattr(inner, "_reno_copy_saved", False)

            def forward(z, around=None):
                part = around or (lambda name: contextlib.nullcontext())
                # only models that update activations in place need (and pay for) the copies; never while measuring
                with part(memory.MODEL), saved_activations_copied() if copying() and around is None \
                        else contextlib.nullcontext():
                    x0 = model_wrap(noised(z), sigma * s_in, **args)
                if mask is not None:  # as KSamplerX0Inpaint: keep the unmasked part of the latent
                    x0 = x0 * mask + latent * (1.0 - mask)
                with part(memory.VAE):
                    image = decode_with_grad(self.vae, inner.process_latent_out(x0))
                return image, x0

            def on_iteration(record: IterationRecord, image: torch.Tensor):
                preview = preview_image(image, self.preview_size)
                previews.append(preview)
                if self.on_iteration is not None:
                    self.on_iteration(record, image, preview)

            blocks = {memory.MODEL: memory.model_blocks(inner), memory.VAE: memory.vae_blocks(self.vae)}
            recompute, summary = self._plan_memory(forward, start, blocks, device, [patcher, self.vae.patcher] + rewards)

            def run():
                with contextlib.ExitStack() as stack:
                    if channels_last_vae(device):  # the decoder's convolutions in NHWC: faster where measured
                        stack.enter_context(channels_last_weights([self.vae.first_stage_model]))
                    for part in (memory.MODEL, memory.VAE):
                        if part in recompute:
                            stack.enter_context(wrap_blocks(blocks[part], recompute_wrapper(copying)))
                    return optimize_noise(forward, self.ensemble, start, self.config, on_iteration)

            try:
                try:
                    result = run()
                except RuntimeError as e:
                    if copying() or INPLACE_MESSAGE not in str(e):
                        raise
                    # found at the first backward: remember it for this model and start the run again
                    log.info("ReNO: this model updates activations in place during its forward pass; "
                             "copying the activations backward needs (slightly slower)")
                    inner._reno_copy_saved = True
                    previews.clear()
                    result = run()
            finally:
                self.ensemble.recompute = None
            self.output = RunOutput(result=result, sigma=float(sigma), previews=previews, memory=summary)
            with torch.no_grad():
                x0 = result.best_extra.detach()
                samples = x0
                if float(sigma_last) > 0:  # one Euler step sigma -> sigma_last with the best x0
                    x = noised(result.best_noise.to(device=x0.device))
                    samples = x + (x - x0) / sigma * (sigma_last - sigma)
                samples = model_sampling.inverse_noise_scaling(sigma_last, samples)
        if callback is not None:  # ComfyUI's own preview / denoised_output hook, once, with the best x0
            callback(0, x0, samples, 1)
        return samples

    def _plan_memory(self, forward, start, blocks, device, patchers) -> tuple[frozenset, str]:
        """Choose what recomputes its activations in backward (see ``nodes/memory.py``); sets the rewards'."""
        labels = self.ensemble.labels
        forced, allowed = memory.forced_components(self.memory_mode, labels,
                                                   [r.gradient_checkpointing for r in self.ensemble.rewards])
        names = {memory.MODEL: "diffusion model", memory.VAE: "VAE decoder"}
        if allowed is not None:  # a fixed choice: nothing to measure
            recompute = frozenset(n for n in forced if n in labels or blocks.get(n))
            summary = f"{self.memory_mode}: recompute " + (", ".join(
                names.get(n, n) for n in [memory.MODEL, memory.VAE, *labels] if n in recompute) or "nothing")
        else:
            profiles = self._measure(forward, start, blocks, device)
            budget = memory.free_bytes(device)
            plan = memory.plan_checkpointing(profiles, budget, forced)
            if plan.recompute - forced or not plan.fits:
                # recomputing costs time on every iteration: first let ComfyUI unload the other models it caches
                fastest = memory.estimate_peak(profiles, forced)
                if memory.unload_other_models(patchers, fastest, device):
                    budget = memory.free_bytes(device)
                    plan = memory.plan_checkpointing(profiles, budget, forced)
            if not plan.fits:
                memory.make_room([p for p in patchers if p is not None], [r.model for r in self.ensemble.rewards],
                                 plan.estimated_peak, device)
                budget = memory.free_bytes(device)
                plan = memory.plan_checkpointing(profiles, budget, forced)
            recompute = plan.recompute
            summary = "auto: " + memory.summarize(plan, profiles, budget)
        log.info("ReNO memory: %s", summary)
        self.ensemble.recompute = {label: label in recompute for label in labels}
        return recompute, summary

    def _measure(self, forward, start, blocks, device) -> list[ComponentProfile]:
        """One forward pass that measures what each part keeps for backward (and keeps none of it)."""
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
        probe = ActivationProbe(sync)
        labels = self.ensemble.labels
        reward_blocks = [b for r in self.ensemble.rewards for b in memory.reward_blocks(r.model)]
        self.ensemble.recompute = dict.fromkeys(labels, False)
        z = start.detach().float().clone().requires_grad_(True)
        with probe, wrap_blocks(blocks[memory.MODEL] + blocks[memory.VAE] + reward_blocks, probe.block_wrapper):
            image, _ = forward(z, probe.component)
            self.ensemble(image, around=probe.component)
        return [probe.profiles.get(name) or ComponentProfile(name) for name in [memory.MODEL, memory.VAE, *labels]]


def saved_activations_copied():
    """Autograd saves a copy of each activation the model's backward needs (used only for models found
    to need it: see ``ReNOComfySampler.sample``).

    Diffusion models written for inference update activations in place after another op saved them
    for backward (FLUX's blocks: ``txt += ...``, ``x += ...``; the 2024 SD UNet: ``x += n``), which makes
    backward fail ("modified by an inplace operation"). Copying saved non-leaf tensors at save time
    (each tensor once per version) makes any such model differentiable; weights (leaves) are
    never copied, and the originals are freed as the forward moves on, so peak memory barely changes.
    """
    copies: dict = {}  # id(tensor) -> (weak reference, version, copy): each tensor copied once per version

    def pack(t: torch.Tensor):
        if t.grad_fn is None:
            return t
        entry = copies.get(id(t))
        if entry is not None and entry[0]() is t and entry[1] == t._version:
            return entry[2]
        copy = t.clone()
        copies[id(t)] = (weakref.ref(t), t._version, copy)
        return copy

    return torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t)


def _loaded_patcher_of(inner_model):
    """The ModelPatcher that ComfyUI loaded for ``inner_model`` (the 2024 engine's model_wrap has none)."""
    for loaded in getattr(comfy.model_management, "current_loaded_models", []):
        patcher = getattr(loaded, "model", None)
        if patcher is not None and getattr(patcher, "model", None) is inner_model:
            return patcher
    return None


def _with_normal_conds(extra_args: dict) -> dict:
    """extra_args whose model call sees normal tensors for every conditioning input.

    Conditioning tensors were made under inference mode by ComfyUI; wrapping the model function makes
    each one a zero-copy normal tensor at call time. ``model_options`` is copied, never mutated (on
    the 2024 engine it is the ModelPatcher's own dict).
    """
    options = dict(extra_args.get("model_options") or {})
    previous = options.get("model_function_wrapper")

    def wrapper(apply_model, args):
        args = dict(args)
        args["c"] = {k: as_normal(v) for k, v in args["c"].items()}
        args["input"], args["timestep"] = as_normal(args["input"]), as_normal(args["timestep"])
        if previous is not None:
            return previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    options["model_function_wrapper"] = wrapper
    return {**extra_args, "model_options": options}
