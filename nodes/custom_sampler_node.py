"""ReNO Sampler (custom): ReNO as a SAMPLER for ComfyUI's SamplerCustomAdvanced (or SamplerCustom)."""

from __future__ import annotations

from ..optimizer import ReNOConfig
from .bridge import ReNOComfySampler
from .run import PREVIEW_SIZE, check_result, iteration_reporter, make_ensemble, reward_info_of

CATEGORY = "sampling/ReNO"
NODE_NAME = "ReNO Sampler (custom)"
_DEFAULTS = ReNOConfig()


class ReNOGuidedSampler(ReNOComfySampler):
    """A ``ReNOComfySampler`` that sets up progress, previews and events each time it samples.

    The guider (CFGGuider, BasicGuider, DualCFGGuider...) supplies the model, conditioning and CFG;
    the model patcher comes from the guider (2025) or from ComfyUI's loaded models (2024).
    """

    def __init__(self, rewards, prompt, config: ReNOConfig, vae, node_id=None):
        ensemble = make_ensemble(rewards, prompt, NODE_NAME)
        super().__init__(ensemble, config, vae, None, PREVIEW_SIZE)
        self.prompt = prompt
        self.node_id = node_id

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, *args, **kwargs):
        # progress goes to the executing node (SamplerCustomAdvanced); events name this node
        self.on_iteration = iteration_reporter(self.config.iterations, reward_info_of(self.ensemble),
                                               event_node_id=self.node_id, progress_node_id=None)
        samples = super().sample(model_wrap, sigmas, extra_args, callback, noise, *args, **kwargs)
        check_result(self.output.result, NODE_NAME)
        return samples


def make_sampler(vae, rewards, prompt, iterations, learning_rate, regularization, grad_clip, node_id=None):
    config = ReNOConfig(iterations=int(iterations), learning_rate=float(learning_rate),
                        regularization=float(regularization), grad_clip=float(grad_clip))
    return ReNOGuidedSampler(rewards, prompt, config, vae, node_id)


class ReNOSamplerCustom:
    DESCRIPTION = (
        "ReNO as a SAMPLER for SamplerCustomAdvanced (any guider: CFGGuider, BasicGuider, DualCFGGuider; any "
        "noise and sigmas) or SamplerCustom. It denoises in one step from the first sigma, scores the decoded "
        "image with the rewards and optimizes the initial noise by gradient ascent; the sampler's output is the "
        "best iteration's latent. Only the first sigma matters: with a schedule ending at 0 the result is the "
        "denoised latent, with one ending above 0 (a split schedule's high part) it is one Euler step from the "
        "first to the last sigma, for a second sampler to finish. Use a one-step schedule (SDTurboScheduler, "
        "or BasicScheduler with 1 step: sigma 1.0 for flow models such as FLUX and SD3)."
    )
    CATEGORY = CATEGORY
    FUNCTION = "get_sampler"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("A sampler for SamplerCustomAdvanced / SamplerCustom that runs ReNO.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
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
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def get_sampler(self, vae, rewards, prompt, iterations, learning_rate, regularization, grad_clip, unique_id=None):
        return (make_sampler(vae, rewards, prompt, iterations, learning_rate, regularization, grad_clip, unique_id),)
