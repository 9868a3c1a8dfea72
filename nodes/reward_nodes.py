"""ReNO Load Reward: adds one weighted reward model to a RENO_REWARDS stack."""

from __future__ import annotations

import comfy.model_management
import comfy.model_patcher

from ..reward_loaders import AVAILABLE_REWARDS, REWARDS, RewardLoadError, WeightedReward, load_reward

CATEGORY = "ReNO/rewards"


def reward_patcher(model):
    """The ModelPatcher that lets ComfyUI's memory manager load, offload and free this reward model."""
    patcher = getattr(model, "_reno_patcher", None)
    if patcher is None:
        patcher = comfy.model_patcher.ModelPatcher(
            model,
            load_device=comfy.model_management.get_torch_device(),
            offload_device=comfy.model_management.unet_offload_device(),
        )
        model._reno_patcher = patcher
    return patcher


def _reward_help() -> str:
    return "\n".join(f"{name}: {spec.description} (paper weight {spec.paper_weight:g})" for name, spec in REWARDS.items())


class ReNORewardLoader:
    DESCRIPTION = (
        "Loads a human-preference reward model from ComfyUI/models/reno_rewards/<reward>/ and adds it, "
        "with its weight, to the reward stack that ReNO maximizes. Chain several loaders to combine rewards."
    )
    CATEGORY = CATEGORY
    FUNCTION = "load"
    RETURN_TYPES = ("RENO_REWARDS",)
    RETURN_NAMES = ("rewards",)
    OUTPUT_TOOLTIPS = ("The reward stack: this reward appended to the incoming one.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reward": (list(AVAILABLE_REWARDS), {"tooltip": "Which reward model to load.\n" + _reward_help()}),
                "weight": ("FLOAT", {
                    "default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                    "tooltip": "How much this reward counts in the objective: ReNO minimizes "
                               "sum(weight * (offset - score)). Negative weights push the score down.",
                }),
            },
            "optional": {
                "rewards": ("RENO_REWARDS", {"tooltip": "A reward stack to append to (chain loaders to combine rewards)."}),
            },
        }

    def load(self, reward, weight, rewards=None):
        try:
            model = load_reward(reward)
        except RewardLoadError as e:
            raise RuntimeError(str(e)) from None
        reward_patcher(model)
        return (tuple(rewards or ()) + (WeightedReward(reward, float(weight), model),),)
