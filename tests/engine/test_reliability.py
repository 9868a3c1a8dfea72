"""Failure cases inside a real engine (RELIABILITY.md): each gives a clear answer or a safe fallback,
leaves the models as they were, and the next run works."""

from __future__ import annotations

import copy
import logging

import pytest
import torch
from engine_support import PROMPT_TEXT, depth_for, pack_module, reno_prompt

pytestmark = pytest.mark.usefixtures("reward_dir")


@pytest.fixture(scope="module")
def reward_dir(engine, pack):
    from pathlib import Path

    from tiny_rewards import write_reward_root

    root = Path(engine.folder_paths.get_folder_paths("reno_rewards")[0])
    if not (root / "pickscore" / "model.safetensors").exists():
        write_reward_root(root, ("pickscore", "clipscore"))
    return root


@pytest.fixture(scope="module")
def pack(engine):
    return pack_module(engine)


def build(engine, width=64, height=64, batch=1, reward="pickscore", weight=1.0):
    model, vae = engine.call_node("ReNOTestTinySD", inference=True, transformer_depth=depth_for(engine),
                                  context_dim=32, seed=0)
    (pos,) = engine.call_node("ReNOTestConditioning", inference=True, text=PROMPT_TEXT, context_dim=32)
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=width, height=height, batch_size=batch)
    (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward=reward, weight=weight)
    return dict(model=model, vae=vae, positive=pos, negative=pos, latent_image=latent, rewards=stack)


def run(engine, parts, prompt=PROMPT_TEXT, **overrides):
    args = dict(seed=0, iterations=4, learning_rate=5.0, cfg=1.0, regularization=0.01, grad_clip=0.1)
    args.update(overrides)
    return engine.call_node("ReNOSampler", inference=True, prompt=prompt, **parts, **args)["result"]


def snapshot(parts):
    modules = {"unet": parts["model"].model, "vae": parts["vae"].first_stage_model,
               **{f"reward{k}": r.model for k, r in enumerate(parts["rewards"])}}
    return modules, {
        (k, f"{mn}.{n}"): (t, t.is_inference(), t.detach().clone())
        for k, m in modules.items() for mn, mod in m.named_modules()
        for table in ("_parameters", "_buffers") for n, t in getattr(mod, table).items() if t is not None
    }


def assert_restored(modules, before):
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    for (k, name), (t, was_inference, values) in before.items():
        mod_name, _, attr = name.rpartition(".")
        mod = modules[k].get_submodule(mod_name) if mod_name else modules[k]
        now = getattr(mod, attr)
        assert now is t and now.is_inference() == was_inference, f"{k}:{name} not restored"
        assert torch.equal(now.detach(), values), f"{k}:{name} changed"


def failing_score(model, at_call: int, make):
    """Patch one reward model's score to misbehave from its ``at_call``-th call on."""
    original = model.score
    calls = {"n": 0}

    def score(pixels, text):
        calls["n"] += 1
        out = original(pixels, text)
        return make(out) if calls["n"] >= at_call else out

    model.score = score
    return lambda: model.__dict__.pop("score", None)


def test_out_of_memory_is_caught_freed_and_explained(fresh_engine):
    engine = fresh_engine
    parts = build(engine)
    modules, before = snapshot(parts)
    model = parts["rewards"][0].model

    def oom(out):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    undo = failing_score(model, 3, oom)
    try:
        with pytest.raises(RuntimeError, match="ran out of memory") as e:
            run(engine, parts)
    finally:
        undo()
    assert "'checkpoint all'" in str(e.value) and "gradient_checkpointing" in str(e.value)
    assert "smaller size" in str(e.value)
    assert_restored(modules, before)
    assert run(engine, parts, iterations=2)[2].iterations == 2  # the next run works


def test_nan_reward_mid_run_returns_the_best_finite_image(fresh_engine, caplog):
    engine = fresh_engine
    parts = build(engine)
    undo = failing_score(parts["rewards"][0].model, 3, lambda out: out * float("nan"))
    try:
        with caplog.at_level(logging.WARNING):
            _, image, history = run(engine, parts, iterations=6)
    finally:
        undo()
    assert torch.isfinite(image).all()
    assert history.best_iteration[0] < 2 and history.stop_reason
    assert "NaN/Inf" in caplog.text
    assert run(engine, parts, iterations=2)[2].stop_reason is None


def test_nan_from_the_first_iteration_is_an_error_not_a_nan_image(fresh_engine):
    engine = fresh_engine
    parts = build(engine)
    undo = failing_score(parts["rewards"][0].model, 1, lambda out: out * float("nan"))
    try:
        with pytest.raises(RuntimeError, match="NaN/Inf from the first iteration"):
            run(engine, parts)
    finally:
        undo()


def test_a_vae_of_another_latent_space_is_refused_clearly(fresh_engine):
    engine = fresh_engine
    parts = build(engine)
    if getattr(parts["model"].model.latent_format, "latent_channels", None) is None:
        pytest.skip(f"{engine.info}: latent formats carry no channel count here")
    other = copy.copy(parts["vae"])
    other.latent_channels = 16
    with pytest.raises(ValueError, match="4-channel latents but the VAE with 16-channel"):
        run(engine, {**parts, "vae": other})


@pytest.mark.parametrize("lr", [0.0, 1e6])
def test_extreme_learning_rates_never_give_a_bad_image(fresh_engine, lr):
    engine = fresh_engine
    _, image, history = run(engine, build(engine), learning_rate=lr, iterations=4)
    assert torch.isfinite(image).all() and 0 <= image.min() and image.max() <= 1
    losses = [r["loss"][0] for r in history.records]
    assert history.best_loss[0] == min(losses)
    if lr == 0:
        assert max(losses) - min(losses) < 1e-4  # the noise never moves
        assert history.best_iteration == [0]


@pytest.mark.parametrize("weight", [0.0, -1.0])
def test_zero_and_negative_weights(fresh_engine, weight):
    engine = fresh_engine
    _, image, history = run(engine, build(engine, weight=weight), iterations=4)
    scores = [r["scores"]["pickscore"][0] for r in history.records]
    if weight == 0:
        assert history.best_iteration == [0] and all(r["loss"][0] == 0 for r in history.records)
    else:  # a negative weight pushes the score down
        assert scores[history.best_iteration[0]] <= scores[0]


@pytest.mark.parametrize("width, height, batch", [(72, 40, 1), (64, 64, 3), (16, 24, 2)])
def test_odd_sizes_and_batches(fresh_engine, width, height, batch):
    engine = fresh_engine
    latent, image, history = run(engine, build(engine, width, height, batch), iterations=2)
    assert image.shape == (batch, height, width, 3) and torch.isfinite(image).all()
    assert latent["samples"].shape == (batch, 4, height // 8, width // 8)


@pytest.mark.parametrize("prompt", ["", "a " * 400])
def test_empty_and_very_long_prompts(fresh_engine, prompt, caplog):
    engine = fresh_engine
    with caplog.at_level(logging.WARNING):
        _, image, _ = run(engine, build(engine), prompt=prompt, iterations=2)
    assert torch.isfinite(image).all()
    if prompt:
        assert "only the first" in caplog.text  # truncation is said, not hidden


def test_invalid_iteration_counts_are_rejected_by_validation(fresh_engine):
    engine = fresh_engine
    prompt = reno_prompt(engine, iterations=0)
    ok, err, _, node_errors = engine.validate(prompt)
    assert not ok and "iterations" in str(node_errors)
