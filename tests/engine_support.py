"""Shared helpers for engine tests (importable: tests/ is on sys.path)."""

from __future__ import annotations

import sys

import comfy_host
from reno_prompts import reno_api_prompt

PROMPT_TEXT = "a photo of a cat"


def pack_module(engine):
    """The pack's module as ComfyUI loaded it (the 2025 engine keys sys.modules by path)."""
    init = engine.workdir / "custom_nodes" / comfy_host.PACK_NAME / "__init__.py"
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == str(init):
            return module
    raise AssertionError(f"the pack loaded from {init} is not in sys.modules")


def fixture_families(engine):
    """The fixture pack's ``families`` module as the engine loaded it (tiny models of every family)."""
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None) or ""
        if f.endswith("families.py") and hasattr(module, "family_unavailable") and str(engine.workdir) in f:
            return module
    raise AssertionError("the fixture pack's families module is not loaded")


def depth_for(engine) -> int:
    """Transformer depth of the tiny SD fixture: attention blocks (every supported engine backpropagates through
    them)."""
    return 1


def reward_stack(engine, rewards, files=None):
    """Tiny reward checkpoints (``files``: reward names, default those of ``rewards``) written into the engine's
    models/reno_rewards folder, then ReNO Load Reward chained over ``rewards`` [(name, weight), ...] as a workflow
    does; returns the RENO_REWARDS stack."""
    from pathlib import Path

    from tiny_rewards import write_reward_root

    root = Path(engine.folder_paths.get_folder_paths("reno_rewards")[0])
    write_reward_root(root, list(files) if files is not None else [name for name, _ in rewards])
    stack = None
    for name, weight in rewards:
        (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward=name, weight=weight, rewards=stack)
    return stack


def reno_prompt(engine, **kwargs):
    return reno_api_prompt(prompt=PROMPT_TEXT, transformer_depth=depth_for(engine), **kwargs)
