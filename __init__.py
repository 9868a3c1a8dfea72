"""ReNO for ComfyUI: Reward-based Noise Optimization for one-step text-to-image models.

Inside ComfyUI this registers the nodes; anywhere else it imports cleanly and its library
subpackages (``optimizer``, ``reward_loaders``) can be used on their own.
"""

import importlib.util
import logging

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}
WEB_DIRECTORY = "./web/js"

if importlib.util.find_spec("comfy") is not None and importlib.util.find_spec("folder_paths") is not None:
    from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS  # noqa: F811
else:
    logging.getLogger(__name__).debug("ComfyUI not found: ReNO nodes not registered (library use only)")

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
