"""ReNO Load Reward: adds one weighted reward model to a RENO_REWARDS stack."""

from __future__ import annotations

from ..reward_loaders import (
    AVAILABLE_REWARDS,
    REWARDS,
    RewardLoadError,
    WeightedReward,
    load_reward,
    reward_fingerprint,
)
from ..reward_loaders.custom import list_custom_rewards
from ..reward_loaders.paths import search_dirs
from .download_progress import NodeDownloads
from .inputs import finite_input
from .memory import reward_patcher
from .settings import downloads_allowed

CATEGORY = "ReNO/rewards"


def _reward_help() -> str:
    return "\n".join(
        [f"{name}: {spec.description} (paper weight {spec.paper_weight:g})" for name, spec in REWARDS.items()]
        + ["custom/<name>: a reward folder of your own, models/reno_rewards/custom/<name>/ with a reward.json "
           "(an ImageReward-format checkpoint or a CLIPModel folder)"]
    )


def reward_choices() -> list[str]:
    """The combo: the built-in rewards in their order, then ``custom/<name>`` for every custom reward folder now
    present (read each time, so a refresh of the browser shows new folders)."""
    return list(AVAILABLE_REWARDS) + list_custom_rewards(search_dirs())


class ReNORewardLoader:
    DESCRIPTION = (
        "Loads a human-preference reward model from ComfyUI/models/reno_rewards/<reward>/ and adds it, "
        "with its weight, to the reward stack that ReNO maximizes. Chain several loaders to combine rewards."
    )
    CATEGORY = CATEGORY
    SEARCH_ALIASES = [  # the node search finds it by these too (older servers: web/js/reno_search.js)
        "reward model", "load reward", "pickscore", "imagereward", "hpsv2", "hps", "clipscore", "clip score",
        "aesthetic score", "aesthetic predictor", "itercomp", "human preference"
    ]
    FUNCTION = "load"
    RETURN_TYPES = ("RENO_REWARDS",)
    RETURN_NAMES = ("rewards",)
    OUTPUT_TOOLTIPS = ("The reward stack: this reward appended to the incoming one.",)

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "reward": (reward_choices(), {"tooltip": "Which reward model to load.\n" + _reward_help()}),
                "weight": ("FLOAT", {
                    "default": 1.0, "min": -100.0, "max": 100.0, "step": 0.01,
                    "tooltip": "How much this reward counts in the objective: ReNO minimizes "
                               "sum(weight * (offset - score)). Negative weights push the score down.",
                }),
            },
            "optional": {
                "rewards": ("RENO_REWARDS", {"tooltip": "A reward stack to append to (chain loaders to combine rewards)."}),
                "gradient_checkpointing": (["off", "on"], {
                    "default": "off",
                    "tooltip": "Recompute this reward model's activations during backpropagation: much less "
                               "memory, about a third slower. Turn on when ReNO runs out of memory.",
                }),
            },
            "hidden": {"unique_id": "UNIQUE_ID"},  # where a first use's download progress is shown
        }

    @classmethod
    def IS_CHANGED(cls, reward, weight=None, rewards=None, gradient_checkpointing="off", unique_id=None):
        """A fingerprint of the reward's files (folder, and each file's size, modification time and inode): ComfyUI
        runs the loader again, instead of serving its cached output, when a file is replaced, added or deleted."""
        return reward_fingerprint(reward)

    def load(self, reward, weight, rewards=None, gradient_checkpointing="off", unique_id=None):
        return (load_into_stack(reward, weight, rewards, gradient_checkpointing == "on", unique_id),)


def load_into_stack(reward: str, weight: float, rewards=None, gradient_checkpointing: bool = False,
                    node_id=None) -> tuple:
    """The incoming stack with one more weighted reward (loaded, or downloaded first when allowed: with the
    download's progress on node ``node_id``, stopped by Cancel)."""
    weight = finite_input(f"ReNO Load Reward ({reward})", "weight", weight,
                          "0 turns this reward off, a negative weight pushes its score down; the widget allows -100 to 100")
    try:
        with NodeDownloads(node_id).reporting() as progress:
            model = load_reward(reward, download=downloads_allowed(), progress=progress)
    except (RewardLoadError, ValueError) as e:  # ValueError: an unknown or invalid reward name
        raise RuntimeError(str(e)) from None
    reward_patcher(model)
    return tuple(rewards or ()) + (WeightedReward(reward, weight, model, gradient_checkpointing),)
