"""Differentiable reward models for ReNO (no ComfyUI imports).

A reward scores (images in [0, 1], prompt) with its native score, differentiably; a
``RewardEnsemble`` turns several weighted rewards into ReNO's objective.
"""

from .base import RewardEnsemble, RewardModel, WeightedReward, unique_labels
from .errors import RewardFilesMissing, RewardLoadError
from .paths import FOLDER_NAME, set_search_path_provider
from .preprocess import clip_preprocess, comfy_to_bchw
from .registry import AVAILABLE_REWARDS, REWARDS, clear_cache, load_reward, locate, reward_fingerprint

__all__ = [
    "AVAILABLE_REWARDS", "REWARDS", "FOLDER_NAME", "RewardEnsemble", "RewardModel", "WeightedReward",
    "RewardFilesMissing", "RewardLoadError", "clear_cache", "clip_preprocess", "comfy_to_bchw",
    "load_reward", "locate", "reward_fingerprint", "set_search_path_provider", "unique_labels",
]
