"""ReNO Sampler (custom): ReNO as a SAMPLER for ComfyUI's SamplerCustomAdvanced (or SamplerCustom)."""

from __future__ import annotations

import dataclasses

from ..optimizer import ReNOConfig
from . import host_sampling
from .bridge import ReNOComfySampler
from .guards import with_oom_advice
from .inputs import chain_input, chain_settings, reno_config, reno_input
from .lifecycle import ChainSettings, ReNOBody, ReNORun, RunResult
from .memory import AUTO, MEMORY_INPUT, check_mode
from .run import PREVIEW_SIZE, check_result, iteration_reporter, make_ensemble, reward_info_of

CATEGORY = "ReNO/sampling"
NODE_NAME = "ReNO Sampler (custom)"


class ReNOGuidedSampler(ReNOComfySampler):
    """A ``ReNOComfySampler`` whose every sampling call is a fresh ``ReNORun`` with its own progress, previews
    and events. The guider (CFGGuider, BasicGuider, DualCFGGuider...) supplies the model, conditioning and CFG.
    """

    def __init__(self, rewards, prompt, config: ReNOConfig, vae, node_id=None, memory=AUTO,
                 chain: ChainSettings = ChainSettings()):
        self.ensemble = make_ensemble(rewards, prompt, NODE_NAME)
        self.config, self.vae, self.memory, self.node_id = config, vae, check_mode(memory), node_id
        self.chain = chain
        super().__init__(self._make_run)

    def _make_run(self) -> ReNORun:
        # progress goes to the executing node (SamplerCustomAdvanced); events name this node
        reporter = iteration_reporter(self.config.iterations, reward_info_of(self.ensemble),
                                      event_node_id=self.node_id, progress_node_id=None)
        return ReNORun(self.ensemble, self.vae, ReNOBody(self.config, reporter, PREVIEW_SIZE), memory_mode=self.memory,
                       chain=self.chain)

    def sample(self, *args, **kwargs):
        return with_oom_advice(NODE_NAME, super().sample, *args, **kwargs)

    def finished(self, out: RunResult) -> None:
        check_result(out.result, NODE_NAME)
        super().finished(out)


def make_sampler(vae, rewards, prompt, iterations, learning_rate, regularization, grad_clip, node_id=None,
                 memory=AUTO, sampler_name="euler", gradient="exact", gradient_steps=1, sampler=None):
    config = reno_config(iterations, learning_rate, regularization, grad_clip)
    chain = chain_settings(sampler_name, gradient, gradient_steps)
    if sampler is not None:  # a core node's SAMPLER (KSamplerSelect, SamplerDPMPP_2M_SDE, SamplerLCM...): its options
        host_sampling.differentiable_sampler(sampler)  # refused by name here, before any work, if it cannot run
        chain = dataclasses.replace(chain, sampler=host_sampling.sampler_label(sampler), sampler_object=sampler)
    return ReNOGuidedSampler(rewards, prompt, config, vae, node_id, memory, chain)


class ReNOSamplerCustom:
    DESCRIPTION = (
        "ReNO as a SAMPLER for SamplerCustomAdvanced (any guider: CFGGuider, BasicGuider, DualCFGGuider; any "
        "noise and sigmas) or SamplerCustom. It samples through all the sigmas it is given with ComfyUI's own "
        "sampler of its sampler_name (or the SAMPLER connected to its sampler input), scores the decoded result with the rewards and optimizes the "
        "initial noise by gradient ascent through the whole chain; the sampler's output is the best iteration's "
        "latent. With a schedule ending above 0 (a split schedule's high part) the output is the chain's latent at "
        "the last sigma, for a second sampler to finish (the rewards score the last step's denoised prediction)."
    )
    CATEGORY = CATEGORY
    SEARCH_ALIASES = [  # the node search finds it by these too (older servers: web/js/reno_search.js)
        "noise optimization", "reward sampler", "custom sampler", "optimize noise", "SamplerCustomAdvanced"
    ]
    FUNCTION = "get_sampler"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("A sampler for SamplerCustomAdvanced / SamplerCustom that runs ReNO.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                **{name: reno_input(name) for name in
                   ("vae", "rewards", "prompt", "iterations", "learning_rate", "regularization", "grad_clip")},
            },
            "optional": {
                "memory": (MEMORY_INPUT[0], dict(MEMORY_INPUT[1])),
                **{name: chain_input(name) for name in ("sampler_name", "gradient", "gradient_steps")},
                "sampler": ("SAMPLER", {
                    "tooltip": "Optional: a sampler made by a core node (KSamplerSelect, SamplerDPMPP_2M_SDE, SamplerER_SDE, "
                               "SamplerLCM, ...) to sample with, with its options, instead of sampler_name."}),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},
        }

    def get_sampler(self, vae, rewards, prompt, iterations, learning_rate, regularization, grad_clip, memory=AUTO,
                    sampler_name="euler", gradient="exact", gradient_steps=1, sampler=None, unique_id=None):
        return (make_sampler(vae, rewards, prompt, iterations, learning_rate, regularization, grad_clip, unique_id,
                             memory, sampler_name, gradient, gradient_steps, sampler),)
