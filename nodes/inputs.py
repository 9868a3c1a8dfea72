"""Input definitions shared by the ReNO sampler nodes (one wording, one set of defaults and ranges)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import comfy.samplers

from ..optimizer import ReNOConfig
from ..optimizer.chain import GRADIENT_LABELS, SAMPLERS, GradientPolicy
from . import host_sampling

_DEFAULTS = ReNOConfig()

_SPECS = {
    "vae": ("VAE", {"tooltip": "The VAE that decodes the latent; rewards score the decoded image."}),
    "rewards": ("RENO_REWARDS", {"tooltip": "The reward stack from ReNO Load Reward node(s)."}),
    "prompt": ("STRING", {
        "default": "", "multiline": True, "dynamicPrompts": False,
        "tooltip": "The text the rewards score the image against (usually the positive prompt).",
    }),
    "iterations": ("INT", {
        "default": _DEFAULTS.iterations, "min": 1, "max": 1000,
        "tooltip": "Images evaluated, the initial one included (50 = 50 forward passes, 49 noise "
                   "updates). 1 returns the plain one-step image.",
    }),
    "learning_rate": ("FLOAT", {
        "default": _DEFAULTS.learning_rate, "min": 0.0, "max": 100.0, "step": 0.1,
        "tooltip": "Step size of SGD with Nesterov momentum 0.9 on the noise. Paper: 5 at 512 px, "
                   "10 at 1024 px and for Hyper-SD.",
    }),
    "regularization": ("FLOAT", {
        "default": _DEFAULTS.regularization, "min": 0.0, "max": 10.0, "step": 0.001,
        "tooltip": "Weight of the noise-norm regularizer (keeps the noise Gaussian-like so images "
                   "stay natural). 0 turns it off.",
    }),
    "grad_clip": ("FLOAT", {
        "default": _DEFAULTS.grad_clip, "min": 0.0, "max": 100.0, "step": 0.01,
        "tooltip": "Largest L2 norm of the noise gradient per image before each step; 0 = no clipping.",
    }),
}


GRADIENT_MODES = list(GRADIENT_LABELS)  # the combo options "exact", "drtune", "last k" (optimizer.chain.GradientMode)

# the sampling chain (appended optional inputs): with the defaults a run is today's one-step ReNO
_CHAIN_SPECS = {
    "steps": ("INT", {
        "default": 1, "min": 1, "max": 100,
        "tooltip": "Sampling steps ReNO backpropagates through: 1 for one-step models (SD-Turbo, SDXL-Turbo...), the "
                   "model's own count for few-step ones (4 for SDXL-Lightning 4-step, FLUX.1-schnell, Hyper-SD 8-step: 8). "
                   "With iterations = 1 the result equals KSampler with the same sampler, scheduler and steps.",
    }),
    "sampler_name": (list(SAMPLERS), {  # the options: every sampler of the running host (chain_input)
        "default": "euler",
        "tooltip": "The sampler: ComfyUI's own sampler of that name, run with gradients, so any KSampler can be swapped "
                   "for ReNO Sampler one for one. A stochastic sampler's noise is drawn from the seed as KSampler draws "
                   "it and kept fixed while the noise is optimized.",
    }),
    "gradient": (GRADIENT_MODES, {
        "default": "exact",
        "tooltip": "How the reward's gradient reaches the noise through several steps.\n"
                   "exact: through every step (each step recomputed in the backward pass: about one step's memory).\n"
                   "drtune: the network's input detached at every step but the last gradient_steps (DRTune: its output "
                   "held fixed there): cheaper, approximate, the gradient flows through the sampler's updates.\n"
                   "last k: only the last gradient_steps model outputs carry gradient (AlignProp's truncation).",
    }),
    "gradient_steps": ("INT", {
        "default": 1, "min": 0, "max": 100,
        "tooltip": "k for drtune and last k: how many final steps keep the model's Jacobian (ignored by exact).",
    }),
}


def scheduler_input() -> tuple:
    return (list(comfy.samplers.KSampler.SCHEDULERS), {
        "default": "simple",
        "tooltip": "ComfyUI's scheduler for the steps (ReNO Sampler only; ReNO Sampler (custom) takes its sigmas "
                   "from the graph). With 1 step, simple starts at the model's sigma_max (t = 999).",
    })


def chain_input(name: str) -> tuple:
    """A fresh copy of a sampling-chain input definition (``scheduler`` included)."""
    if name == "scheduler":
        return scheduler_input()
    kind, options = _CHAIN_SPECS[name]
    if name == "sampler_name":  # every sampler of the host (KSampler.SAMPLERS), the default first as before
        kind = host_sampling.sampler_names()
    return (list(kind) if isinstance(kind, list) else kind, dict(options))


@dataclass(frozen=True)
class ChainSettings:
    """How the sigmas a run is given are sampled: ``sampler`` (a name of the host's ``KSampler.SAMPLERS``), and which
    paths carry the gradient back to the noise (``gradient``: ``exact``, ``drtune`` or ``last k``; ``k``: the last model
    calls that keep it). ``sampler_object``: a host ``SAMPLER`` (from KSamplerSelect, SamplerDPMPP_2M_SDE...) to
    sample with instead of the named one. ReNO's runs sample with the host's own sampler function under autograd
    (``host_sampling.sample``); the trainer's rollouts with ``optimizer.chain`` (its five samplers)."""

    sampler: str = "euler"
    gradient: str = "exact"
    k: int = 1
    sampler_object: object = field(default=None, compare=False)

    def policy(self, steps: int, copy_saved: bool, measuring: bool = False, skip=None) -> GradientPolicy:
        # several steps recompute each step's activations in backward (about one step's memory, not K steps');
        # one step keeps the block-level choice of the memory plan; the measuring pass sees what a step keeps.
        # ``skip``: the model's c_skip(sigma), so drtune holds the network's output fixed (DRTune's definition)
        return GradientPolicy(self.gradient, self.k, recompute=steps > 1 and not measuring, copy_saved=copy_saved,
                              skip=skip)


def chain_settings(sampler_name: str = "euler", gradient: str = "exact", gradient_steps: int = 1) -> ChainSettings:
    """The lifecycle's ChainSettings from the node inputs (a hand-edited workflow's bad value is named)."""
    names = host_sampling.sampler_names()
    if sampler_name not in names:
        raise ValueError(f"sampler_name: {sampler_name!r} is not a sampler of this ComfyUI ({', '.join(names)})")
    if gradient not in GRADIENT_MODES:
        raise ValueError(f"gradient: {gradient!r} is not one of {', '.join(GRADIENT_MODES)}")
    k = int(gradient_steps)
    if k < 0:
        raise ValueError(f"gradient_steps: {gradient_steps!r} must be 0 or more")
    return ChainSettings(sampler=sampler_name, gradient=gradient, k=k)


def reno_input(name: str) -> tuple:
    """A fresh copy of a shared input definition."""
    kind, options = _SPECS[name]
    return (kind, dict(options))


def reno_config(iterations, learning_rate, regularization, grad_clip) -> ReNOConfig:
    return ReNOConfig(iterations=int(iterations), learning_rate=float(learning_rate),
                      regularization=float(regularization), grad_clip=float(grad_clip))


def finite_input(node: str, name: str, value, what: str) -> float:
    """``value`` as a float, or a ValueError naming the node and the input when it is not a finite number.

    ComfyUI's validation compares against the widget's min/max only, and NaN passes every comparison: a
    hand-edited or scripted API prompt can carry ``NaN`` (JSON allows it), and a direct call any value.
    """
    try:
        number = float(value)
    except (TypeError, ValueError):
        number = math.nan
    if not math.isfinite(number):
        raise ValueError(f"{node}: {name}={value!r}: must be a finite number ({what})")
    return number
