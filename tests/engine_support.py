"""Shared helpers for engine tests (importable: tests/ is on sys.path)."""

from __future__ import annotations

import contextlib
import sys

import comfy_host
from reno_prompts import reno_api_prompt

PROMPT_TEXT = "a photo of a cat"


pack_module = comfy_host.pack_module  # the pack's module as ComfyUI loaded it (testing/comfy_host.py)


@contextlib.contextmanager
def wrapped_generator(pack, wrap):
    """While inside, every ReNO run's loop (``nodes.lifecycle.optimize_noise`` of ``pack``, the pack's module as
    the engine loaded it) is given ``wrap(generate)`` in place of its generator (``wrap`` is called once per run).
    Restored on exit."""
    lifecycle = pack.nodes.lifecycle
    real = lifecycle.optimize_noise

    def optimize_noise(generate, objective, noise, config, callback=None):
        return real(wrap(generate), objective, noise, config, callback)

    lifecycle.optimize_noise = optimize_noise
    try:
        yield
    finally:
        lifecycle.optimize_noise = real


@contextlib.contextmanager
def first_iteration(engine):
    """While inside, every ReNO run records its iteration 0 from the loop itself: ``first["image"]`` (the decoded
    image, float32), ``first["extra"]`` (what the generator returns beside it: (B, 2, ...) KSampler's samples and
    x0) and ``first["grad"]`` (the gradient of iteration 0's loss + regularizer with respect to the noise). A run
    restarted with activation copies (an in-place model) keeps its last attempt's."""
    first: dict = {}

    def wrap(generate):
        first.clear()

        def keep_grad(g):
            first.setdefault("grad", g.detach().float().clone())

        def generate_first(z):
            out = generate(z)
            if "image" not in first:
                image, extra = out if isinstance(out, tuple) else (out, None)
                first["image"] = image.detach().float().clone()
                first["extra"] = None if extra is None else extra.detach().float().clone()
                z.register_hook(keep_grad)
            return out

        return generate_first

    with wrapped_generator(pack_module(engine), wrap):
        yield first


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


def tiny_sd_parts(engine, rewards, batch=1):
    """The tiny SD chain's inputs to ReNO Sampler, as the nodes make them (under inference mode, like the executor):
    model, vae, positive (PROMPT_TEXT), negative (""), a 64 px latent_image of ``batch`` and the ``rewards``
    [(name, weight), ...] chained through ReNO Load Reward (their checkpoints already in the rewards folder)."""
    model, vae = engine.call_node("ReNOTestTinySD", inference=True, transformer_depth=depth_for(engine),
                                  context_dim=32, seed=0)
    (pos,) = engine.call_node("ReNOTestConditioning", inference=True, text=PROMPT_TEXT, context_dim=32)
    (neg,) = engine.call_node("ReNOTestConditioning", inference=True, text="", context_dim=32)
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=64, height=64, batch_size=batch)
    stack = None
    for name, weight in rewards:
        (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward=name, weight=weight, rewards=stack)
    return dict(model=model, vae=vae, positive=pos, negative=neg, latent_image=latent, rewards=stack)


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
