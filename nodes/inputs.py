"""Input definitions shared by the ReNO sampler nodes (one wording, one set of defaults and ranges)."""

from __future__ import annotations

from ..optimizer import ReNOConfig

_DEFAULTS = ReNOConfig()

_SPECS = {
    "vae": ("VAE", {"tooltip": "The VAE that decodes the latent; rewards score the decoded image."}),
    "rewards": ("RENO_REWARDS", {"tooltip": "The reward stack from ReNO Load Reward node(s)."}),
    "prompt": ("STRING", {
        "multiline": True, "dynamicPrompts": False,
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


def reno_input(name: str) -> tuple:
    """A fresh copy of a shared input definition."""
    kind, options = _SPECS[name]
    return (kind, dict(options))


def reno_config(iterations, learning_rate, regularization, grad_clip) -> ReNOConfig:
    return ReNOConfig(iterations=int(iterations), learning_rate=float(learning_rate),
                      regularization=float(regularization), grad_clip=float(grad_clip))
