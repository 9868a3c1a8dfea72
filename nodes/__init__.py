"""Thin ComfyUI nodes over ``optimizer`` and ``reward_loaders``."""

from __future__ import annotations

import os

import folder_paths

from ..reward_loaders import FOLDER_NAME, set_search_path_provider
from .custom_sampler_node import ReNOSamplerCustom
from .noise_model_node import ReNONoiseModel, ReNOTrainNoiseModel
from .noise_node import ReNONoise
from .preference_routes import register as _register_preference_routes
from .preview_node import ReNOIterationPreview
from .reward_nodes import ReNORewardLoader
from .sampler_node import ReNOSampler
from .score_node import ReNOScoreImages
from .train_lora_node import ReNORewardLoRATrainer
from .train_preference_node import ReNOTrainPreferenceReward


def _register_model_folder() -> None:
    """models/reno_rewards/, also reachable through extra_model_paths.yaml (``reno_rewards:``)."""
    default = os.path.join(folder_paths.models_dir, FOLDER_NAME)
    if default not in folder_paths.folder_names_and_paths.get(FOLDER_NAME, ([], None))[0]:
        folder_paths.add_model_folder_path(FOLDER_NAME, default, is_default=True)
    set_search_path_provider(lambda: folder_paths.get_folder_paths(FOLDER_NAME))


_register_model_folder()
_register_preference_routes()  # the gallery's preference picks (POST /reno/preferences/mark, ...)

NODE_CLASS_MAPPINGS = {
    "ReNORewardLoader": ReNORewardLoader,
    "ReNOSampler": ReNOSampler,
    "ReNOSamplerCustom": ReNOSamplerCustom,
    "ReNOIterationPreview": ReNOIterationPreview,
    "ReNOScoreImages": ReNOScoreImages,
    "ReNONoise": ReNONoise,
    "ReNORewardLoRATrainer": ReNORewardLoRATrainer,
    "ReNOTrainPreferenceReward": ReNOTrainPreferenceReward,
    "ReNOTrainNoiseModel": ReNOTrainNoiseModel,
    "ReNONoiseModel": ReNONoiseModel,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ReNORewardLoader": "ReNO Load Reward",
    "ReNOSampler": "ReNO Sampler",
    "ReNOSamplerCustom": "ReNO Sampler (custom)",
    "ReNOIterationPreview": "ReNO Iteration Preview",
    "ReNOScoreImages": "ReNO Score Images",
    "ReNONoise": "ReNO Noise",
    "ReNORewardLoRATrainer": "ReNO Train Reward LoRA",
    "ReNOTrainPreferenceReward": "ReNO Train Preference Reward",
    "ReNOTrainNoiseModel": "ReNO Train Noise Model",
    "ReNONoiseModel": "ReNO Noise Model",
}
