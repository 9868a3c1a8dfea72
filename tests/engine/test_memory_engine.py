"""Memory modes of the ReNO samplers on a real ComfyUI engine (tiny models).

Recomputing activations in the backward pass must change memory, never results: every ``memory`` mode
gives the same iterations (losses, best iteration, image) as ``no checkpointing``, for the SD UNet
(the 2024 engine's transformer block updates activations in place: the copying recompute path) and
for each family the engine has. ``auto`` measures, plans from the free memory, and when told that
memory is short asks ComfyUI to make room and recomputes everything.
"""

from __future__ import annotations

import sys

import pytest
import torch
from engine_support import PROMPT_TEXT, first_iteration, fixture_families, pack_module
from tolerances import EPS32, GRAD_K, ORACLE_IMAGE_K, assert_rounding_close

MODES = ["no checkpointing", "checkpoint rewards", "checkpoint rewards + VAE", "checkpoint all", "auto"]
REWARDS = (("imagereward", 1.0), ("hpsv2.1", 5.0), ("pickscore", 0.05), ("clipscore", 0.01))
ITERATIONS = 4


def run(engine, parts, stack, memory, side=64, **chain):
    """The node's (LATENT, IMAGE, RENO_HISTORY) and, from the loop itself, iteration 0's image and noise gradient;
    ``chain``: ReNO Sampler's steps / sampler_name / scheduler."""
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=side, height=side, batch_size=1)
    with first_iteration(engine) as first:
        out = engine.call_node("ReNOSampler", inference=True, model=parts["model"], positive=parts["pos"],
                               negative=parts["neg"], vae=parts["vae"], latent_image=latent, rewards=stack,
                               prompt=PROMPT_TEXT, seed=3, iterations=ITERATIONS, learning_rate=5.0, cfg=1.0,
                               regularization=0.01, grad_clip=0.1, memory=memory, **chain)
    assert "image" in first and "grad" in first, "iteration 0's image and gradient were not captured"
    return (*out["result"], first)


def assert_same_run(got, want, what):
    """Recomputing (or another memory layout) changes no result beyond rounding. After iteration 0 the
    trajectory (lr 5, four steps) amplifies summation-order noise, so the steps are compared where rounding
    bounds them: iteration 0's image, loss and noise gradient tightly; then the best iteration and the loss trend."""
    (lat_g, img_g, hist_g, first_g), (_, _, hist_w, first_w) = got, want
    losses_g = [r["loss"][0] for r in hist_g.records]
    losses_w = [r["loss"][0] for r in hist_w.records]
    # the same image in two decoder layouts at most (|image| <= 1; measured <= 27 roundings)
    assert_rounding_close(first_g["image"], first_w["image"], ORACLE_IMAGE_K, scale=1.0, msg=f"{what}: image 0")
    # the weighted loss of (nearly) the same image: the image's difference through the rewards, ~ the same number of
    # roundings of |loss| (~9) as the image had of 1 (measured <= 2)
    assert losses_g[0] == pytest.approx(losses_w[0], rel=ORACLE_IMAGE_K * EPS32, abs=0), what
    assert_rounding_close(first_g["grad"], first_w["grad"], GRAD_K, msg=f"{what}: iteration 0's noise gradient")
    assert hist_g.best_iteration == hist_w.best_iteration, what
    # the loss trend: every iteration ranks the same in both runs (here the losses are >= 0.4 apart, ~10^5 times
    # the rounding differences the trajectory picked up), and the reference run optimized
    assert sorted(range(ITERATIONS), key=losses_g.__getitem__) == sorted(range(ITERATIONS), key=losses_w.__getitem__), \
        (what, losses_g, losses_w)
    assert losses_w[-1] < losses_w[0] and losses_g[-1] < losses_g[0], f"{what}: a run did not optimize"
    assert torch.isfinite(lat_g["samples"]).all() and torch.isfinite(img_g).all(), what


@pytest.fixture(scope="module")
def sd_parts(engine):
    # transformer depth 1 on both engines: on the 2024 one the block's in-place `x += n` needs the copies
    model, vae = engine.call_node("ReNOTestTinySD", inference=True, transformer_depth=1, context_dim=32, seed=0)
    (pos,) = engine.call_node("ReNOTestConditioning", inference=True, text=PROMPT_TEXT, context_dim=32)
    return dict(model=model, vae=vae, pos=pos, neg=pos)


def test_every_memory_mode_gives_the_same_iterations(engine, sd_parts, stack):
    reference = run(engine, sd_parts, stack, "no checkpointing")
    assert reference[2].config["memory"].startswith("no checkpointing: recompute nothing")
    for mode in MODES[1:]:
        got = run(engine, sd_parts, stack, mode)
        assert_same_run(got, reference, mode)
        assert got[2].config["memory"].startswith(mode)
    everything = run(engine, sd_parts, stack, "checkpoint all")[2].config["memory"]
    assert "diffusion model, VAE decoder, imagereward, hpsv2.1, pickscore, clipscore" in everything


def test_several_steps_recompute_whole_steps_or_the_models_blocks_in_every_step_with_the_same_result(
        engine, sd_parts, stack, monkeypatch):
    """With 3 steps the model recomputes either whole steps or its blocks in every step (the second level,
    ``memory.inner``): both cost one more forward pass of the model, so ``checkpoint all`` and ``auto`` take the lower
    measured peak (here they choose differently: with the rewards kept, the blocks are leaner; with everything
    recomputed, whole steps), and the level not chosen, forced, gives the same run too. Each is the plain run (the SD
    block updates activations in place on the 2024 engine: the copying path, inputs without gradient history
    included)."""
    pack = pack_module(engine)
    steps = dict(steps=3, sampler_name="euler", scheduler="simple")
    reference = run(engine, sd_parts, stack, "no checkpointing", **steps)
    every = run(engine, sd_parts, stack, "checkpoint all", **steps)
    assert_same_run(every, reference, "checkpoint all, 3 steps")
    summary = every[2].config["memory"]
    assert summary.startswith("checkpoint all: recompute diffusion model")
    # auto: planned from the measured profiles (look at what it measured), with all the memory there is
    measured = {}
    real_plan = pack.optimizer.memory.plan_checkpointing
    peak = pack.optimizer.memory.estimate_peak
    inner = pack.nodes.memory.inner

    def plan(profiles, budget, forced=(), allowed=None):
        measured["profiles"] = profiles
        return real_plan(profiles, budget, forced, allowed)

    monkeypatch.setattr(pack.nodes.memory, "plan_checkpointing", plan)
    auto = run(engine, sd_parts, stack, "auto", **steps)
    profiles = measured["profiles"]
    model = next(p for p in profiles if p.name == pack.nodes.memory.MODEL)
    everything = {p.name for p in profiles if p.checkpointable} | {model.name}
    whole_all, blocks_all = peak(profiles, everything), peak(profiles, everything | {inner(model.name)})
    whole, blocks = peak(profiles, {model.name}), peak(profiles, {model.name, inner(model.name)})
    print(f"\n[memory, 3 steps] {engine.info}: {model.blocks} steps of {model.inner_blocks} blocks; peaks: whole steps "
          f"{whole} / blocks {blocks} (the rest kept), {whole_all} / {blocks_all} (everything recomputed); {summary}; "
          f"{auto[2].config['memory']}")
    assert model.blocks == 3 and model.inner_blocks > 0
    # both fit and cost one more forward pass of the model: the lower peak
    assert ("diffusion model's blocks" in auto[2].config["memory"]) == (blocks < whole)
    assert ("diffusion model's blocks" in summary) == (blocks_all < whole_all)
    assert blocks != whole and blocks_all != whole_all  # a real choice was made (measured: 7.59 vs 7.14 MB)
    assert_same_run(auto, reference, "auto, 3 steps")
    # the other level, forced: the same run again
    forced = "whole steps" if blocks < whole else "blocks"
    monkeypatch.setattr(pack.nodes.memory, "plan_checkpointing", lambda p, b, f=(), a=None: real_plan(
        p, b, set(f) | ({model.name} if forced == "whole steps" else {model.name, inner(model.name)}), set()))
    other = run(engine, sd_parts, stack, "auto", **steps)
    assert ("diffusion model's blocks" in other[2].config["memory"]) == (forced == "blocks")
    assert_same_run(other, reference, f"auto forced to {forced}, 3 steps")


def test_auto_measures_and_recomputes_what_does_not_fit(engine, pack, sd_parts, stack, monkeypatch):
    memory = pack.nodes.memory
    reference = run(engine, sd_parts, stack, "no checkpointing")
    seen = {}

    def make_room(patchers, reward_models, peak, device):
        seen["peak"], seen["rewards"] = peak, len(reward_models)

    # plenty of memory: nothing recomputes
    monkeypatch.setattr(memory, "free_bytes", lambda device, patcher=None: 64 * 2**30)
    got = run(engine, sd_parts, stack, "auto")
    assert_same_run(got, reference, "auto, plenty of memory")
    assert "recompute nothing" in got[2].config["memory"]
    # no memory at all: ComfyUI is asked for room (on the CPU: the text towers are marked for offloading,
    # which is a no-op there), then everything recomputes
    monkeypatch.setattr(memory, "free_bytes", lambda device, patcher=None: 0)
    got = run(engine, sd_parts, stack, "auto")
    assert_same_run(got, reference, "auto, no memory, real make_room")
    offloaded = [r.model._text_offload for r in stack if r.model.text_modules]
    assert offloaded and all(d == torch.device("cpu") for d in offloaded)
    for r in stack:
        r.model._text_offload = None
    monkeypatch.setattr(memory, "make_room", make_room)
    got = run(engine, sd_parts, stack, "auto")
    assert_same_run(got, reference, "auto, no memory")
    summary = got[2].config["memory"]
    assert "diffusion model, VAE decoder, imagereward, hpsv2.1, pickscore, clipscore" in summary
    assert "may not fit" in summary
    assert seen["rewards"] == len(REWARDS) and seen["peak"] > 0


def test_auto_keeps_the_fastest_choice_that_fits(engine, pack, sd_parts, stack, monkeypatch):
    """With room for everything but the largest part, auto recomputes only what it must."""
    memory = pack.nodes.memory
    captured = {}
    real_plan = memory.plan_checkpointing

    def plan(profiles, budget, forced=(), allowed=None):
        captured["profiles"] = profiles
        return real_plan(profiles, budget, forced, allowed)

    monkeypatch.setattr(memory, "plan_checkpointing", plan)
    monkeypatch.setattr(memory, "free_bytes", lambda device, patcher=None: 64 * 2**30)
    run(engine, sd_parts, stack, "auto")
    profiles = captured["profiles"]
    names = [p.name for p in profiles]
    assert names == ["diffusion model", "VAE decoder", "imagereward", "hpsv2.1", "pickscore", "clipscore"]
    for p in profiles:
        assert p.saved_bytes > 0 and p.blocks > 0, p
        assert p.retained(True) < p.retained(False), p
    full = memory.estimate_peak(profiles, [])
    largest = max(profiles, key=lambda p: p.saved_bytes - p.retained(True))
    # a budget just too small for everything kept: recomputing the largest part is enough
    budget = int((full - 1) * 1.2) + 256 * 2**20
    chosen = real_plan(profiles, budget)
    assert chosen.fits and chosen.recompute and len(chosen.recompute) < len(profiles)
    assert memory.estimate_peak(profiles, chosen.recompute) <= full - 1
    # float64 sums of the 6 parts' seconds: <= 6 roundings of the total
    assert chosen.extra_seconds <= largest.seconds * (1 + 6 * sys.float_info.epsilon) or len(chosen.recompute) == 1


@pytest.mark.parametrize("family", ["sdxl", "sd3", "flux"])
def test_checkpoint_all_matches_for_every_family(engine, stack, family):
    fam = fixture_families(engine)
    reason = fam.family_unavailable(family)
    if reason:
        pytest.skip(f"{family}: {reason} ({engine.info})")
    model, vae, pos, neg = engine.call_node("ReNOTestTinyFamily", inference=True, family=family,
                                            transformer_depth=1, seed=0, text=PROMPT_TEXT, negative_text="")
    parts = dict(model=model, vae=vae, pos=pos, neg=neg)
    reference = run(engine, parts, stack, "no checkpointing")
    got = run(engine, parts, stack, "checkpoint all")
    assert_same_run(got, reference, family)
    assert "diffusion model" in got[2].config["memory"]


@pytest.mark.parametrize("family,block", [("sd15", "ResBlock"), ("sdxl", "SpatialTransformer"), ("sd3", "JointBlock"),
                                          ("flux", "DoubleStreamBlock"), ("flux_schnell", "SingleStreamBlock"),
                                          ("pixart", "PixArtMSBlock")])
def test_the_blocks_of_every_family_are_found(engine, pack, family, block):
    """What recomputes: the blocks each model's forward calls one by one (PixArt runs only at 512 px, so its
    recompute is not run here; its blocks are plain transformer blocks like SD3's)."""
    fam = fixture_families(engine)
    reason = fam.family_unavailable(family)
    if reason:
        pytest.skip(f"{family}: {reason} ({engine.info})")
    model, vae, _, _ = engine.call_node("ReNOTestTinyFamily", inference=True, family=family, transformer_depth=1,
                                        seed=0, text=PROMPT_TEXT, negative_text="")
    found = pack.nodes.memory.model_blocks(model.model)
    assert block in {type(b).__name__ for b in found}
    params = sum(p.numel() for b in found for p in b.parameters())
    # most of the model's weights (tiny models: embeddings and heads weigh relatively more than in real ones)
    assert params > 0.4 * sum(p.numel() for p in model.model.diffusion_model.parameters())
    vae_found = {type(b).__name__ for b in pack.nodes.memory.vae_blocks(vae)}
    assert "ResnetBlock" in vae_found


def test_unknown_memory_mode_is_refused_before_any_work(engine, sd_parts, stack):
    with pytest.raises(Exception, match="memory: 'lots' is not one of auto"):
        run(engine, sd_parts, stack, "lots")


def test_a_model_that_updates_activations_in_place_is_found_while_recomputing(engine, stack):
    """A fresh model run first with everything recomputed: an in-place update inside a block (the 2024 SD
    UNet's ``x += n``, FLUX's blocks) is caught by the recompute's version checks, and the run restarts
    with copies; the result equals the plain run's."""
    fam = fixture_families(engine)
    family = "flux" if fam.family_unavailable("flux") is None else "sd15"

    def fresh():
        model, vae, pos, neg = engine.call_node("ReNOTestTinyFamily", inference=True, family=family,
                                                transformer_depth=1, seed=0, text=PROMPT_TEXT, negative_text="")
        return dict(model=model, vae=vae, pos=pos, neg=neg)

    parts = fresh()
    got = run(engine, parts, stack, "checkpoint all")
    inner = parts["model"].model
    if family == "sd15":
        pytest.skip(f"no in-place model on this engine without FLUX ({engine.info})")
    assert pack_module(engine).nodes.lifecycle._IN_PLACE.get(inner, False), "the in-place update was not detected"
    assert "_reno_copy_saved" not in inner.__dict__  # the pack's record, not an attribute on ComfyUI's model
    assert_same_run(got, run(engine, fresh(), stack, "no checkpointing"), family)


def test_the_compile_setting_routes_the_rewards_through_torch_compile(engine, pack, sd_parts, stack, monkeypatch):
    """RENO_TORCH_COMPILE=1 (or the ReNO.TorchCompile setting) scores through each reward's compiled_score
    (compiling itself is tested on a tiny reward in tests/test_memory.py; here it is recorded, not run)."""
    used = []

    def compiled_score(self):
        used.append(self.name)
        return self.score

    reference = run(engine, sd_parts, stack, "no checkpointing")
    monkeypatch.setattr(pack.reward_loaders.base.RewardModel, "compiled_score", compiled_score)
    monkeypatch.setenv("RENO_TORCH_COMPILE", "1")
    got = run(engine, sd_parts, stack, "no checkpointing")
    assert_same_run(got, reference, "compiled")
    assert used.count("imagereward") == ITERATIONS and set(used) == {n for n, _ in REWARDS}
    used.clear()
    monkeypatch.setenv("RENO_TORCH_COMPILE", "0")
    run(engine, sd_parts, stack, "auto")
    assert used == []


def test_channels_last_vae_changes_speed_not_results(engine, sd_parts, stack, monkeypatch):
    """RENO_CHANNELS_LAST (default: on for CPUs) swaps the VAE's conv weights for NHWC copies during the run only."""
    vae = sd_parts["vae"].first_stage_model
    before = {n: p for n, p in vae.named_parameters()}
    monkeypatch.setenv("RENO_CHANNELS_LAST", "0")
    reference = run(engine, sd_parts, stack, "no checkpointing")
    seen = []
    real = vae.decoder.conv_out.forward
    vae.decoder.conv_out.forward = lambda x: seen.append(vae.decoder.conv_out.weight.is_contiguous(
        memory_format=torch.channels_last)) or real(x)
    try:
        monkeypatch.setenv("RENO_CHANNELS_LAST", "1")
        got = run(engine, sd_parts, stack, "checkpoint all")
    finally:
        del vae.decoder.conv_out.forward
    assert seen and all(seen)
    assert_same_run(got, reference, "channels last")
    after = {n: p for n, p in vae.named_parameters()}
    assert all(after[n] is p for n, p in before.items())  # the user's VAE is left as it was


def test_auto_first_unloads_other_models_rather_than_recompute(engine, pack, sd_parts, stack, monkeypatch):
    """Short of memory for the fastest plan, auto asks ComfyUI to unload the models it caches for others, and
    recomputes nothing when that made room."""
    memory = pack.nodes.memory
    free = iter([1, 64 * 2**30])  # short at first, plenty once the other models are gone
    asked = []
    monkeypatch.setattr(memory, "free_bytes", lambda device, patcher=None: next(free))
    monkeypatch.setattr(memory, "unload_other_models", lambda patchers, peak, device: asked.append(peak) or True)
    monkeypatch.setattr(memory, "make_room", lambda *a: pytest.fail("no need to make room"))
    got = run(engine, sd_parts, stack, "auto")
    assert asked and asked[0] > 0
    assert "recompute nothing" in got[2].config["memory"]


def test_unloading_other_models_keeps_this_runs_models(engine, pack, monkeypatch):
    """On a GPU, ComfyUI's free_memory gets this run's loaded models as keep_loaded; on the CPU nothing is asked."""
    memory = pack.nodes.memory
    mm = engine.model_management

    class Loaded:
        def __init__(self, model):
            self.model = model

    ours, other = object(), object()
    monkeypatch.setattr(mm, "current_loaded_models", [Loaded(other), Loaded(ours)])
    calls = []
    monkeypatch.setattr(mm, "free_memory", lambda need, device, keep_loaded=(): calls.append(
        (need, device, [lm.model for lm in keep_loaded])) or ["unloaded"])
    assert memory.unload_other_models([ours, None], 2**30, torch.device("cpu")) is False and not calls
    assert memory.unload_other_models([ours, None], 2**30, torch.device("cuda")) is True
    (need, device, keep), = calls
    assert keep == [ours] and device.type == "cuda" and need == memory.activation_request(2**30) > 2**30


# -- sizing a large run before it starts, and Cancel inside long passes ----------------------------------------

def _reno(engine, parts, stack, side, memory="auto", iterations=1):
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=side, height=side, batch_size=1)
    return engine.call_node("ReNOSampler", inference=True, model=parts["model"], positive=parts["pos"],
                            negative=parts["neg"], vae=parts["vae"], latent_image=latent, rewards=stack,
                            prompt=PROMPT_TEXT, seed=3, iterations=iterations, learning_rate=5.0, cfg=1.0,
                            regularization=0.01, grad_clip=0.1, memory=memory)["result"]


@pytest.mark.parametrize("memory", ["auto", "checkpoint all"])
def test_a_latent_that_cannot_fit_is_refused_before_any_full_size_pass(engine, pack, sd_parts, stack, monkeypatch,
                                                                         memory):
    """4096 x 4096 px: three small probes size the run, and it is refused with the size, the estimate and the free
    memory before any full-size pass (the measuring pass at full size grew a server to 13.4 GB)."""
    import time

    lifecycle = pack.nodes.lifecycle
    crops = []
    measure = lifecycle.ReNORun._measure

    def spy(self, crop=None):
        crops.append(crop)
        return measure(self, crop)

    monkeypatch.setattr(lifecycle.ReNORun, "_measure", spy)
    monkeypatch.setattr(pack.nodes.memory, "free_bytes", lambda device, patcher=None: 2 * 2**30)
    start = time.perf_counter()
    with pytest.raises(lifecycle.ReNOMemoryError) as e:
        _reno(engine, sd_parts, stack, 4096, memory=memory)
    elapsed = time.perf_counter() - start
    message = str(e.value)
    assert "512x512 latent" in message and "4096x4096 px" in message and "2.0 GiB are free" in message
    assert "checkpoint all" in message and "smaller" in message
    assert crops == [(32, 32), (24, 24), (16, 16)]  # only the probes ran: no full-size pass
    assert elapsed < 60, f"refusing took {elapsed:.1f} s"


def test_the_preflight_estimate_tracks_the_full_size_measurement(engine, pack, sd_parts, stack):
    """At 1024 px (a 128 x 128 latent) the estimate extrapolated from the 32-, 24- and 16-latent probes is within a
    factor of 1.5 of what the full-size measuring pass then finds, per component."""
    lifecycle = pack.nodes.lifecycle
    found = {}
    original = pack.nodes.memory.extrapolate_profiles

    def keep(measured, target):
        found["estimate"] = original(measured, target)
        return found["estimate"]

    measure = lifecycle.ReNORun._measure

    def spy(self, crop=None):
        out = measure(self, crop)
        if crop is None:
            found["measured"] = out
        return out

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(pack.nodes.memory, "extrapolate_profiles", keep)
        mp.setattr(lifecycle.ReNORun, "_measure", spy)
        _reno(engine, sd_parts, stack, 1024)
    estimate = {p.name: p.saved_bytes for p in found["estimate"]}
    measured = {p.name: p.saved_bytes for p in found["measured"]}
    print("\n[preflight] estimate vs measured (MiB): " + ", ".join(
        f"{n} {estimate[n] / 2**20:.1f}/{measured[n] / 2**20:.1f}" for n in measured))
    for name, want in measured.items():
        assert want / 1.5 <= estimate[name] <= want * 1.5, (name, estimate[name], want)


def test_cancel_is_honoured_between_blocks_in_the_forward_and_the_backward_pass(engine, sd_parts, stack):
    """A Cancel that comes in the middle of a pass stops it at the next block, not at the end of the iteration."""
    import torch.nn as nn

    inner = sd_parts["model"].model
    blocks = pack_module(engine).nodes.memory.model_blocks(inner)
    calls = {"last": 0}
    first, last = blocks[0], blocks[-1]
    handles = [last.register_forward_hook(lambda *a: calls.__setitem__("last", calls["last"] + 1))]
    try:
        # forward: the cancel comes while the first UNet block runs; the last block never runs
        handles.append(first.register_forward_hook(lambda *a: engine.interrupt()))
        with pytest.raises(engine.model_management.InterruptProcessingException):
            _reno(engine, sd_parts, stack, 64, memory="no checkpointing", iterations=3)
        assert calls["last"] == 0
        engine.reset_interrupt()
        handles.pop().remove()
        # backward: the cancel comes while the VAE decoder's gradient is computed; the rest of the backward stops
        decoder_blocks = pack_module(engine).nodes.memory.vae_blocks(sd_parts["vae"])
        reached = []
        handles.append(first.register_full_backward_hook(lambda *a: reached.append("unet")))
        handles.append(decoder_blocks[-1].register_full_backward_hook(lambda *a: engine.interrupt()))
        with pytest.raises(engine.model_management.InterruptProcessingException):
            _reno(engine, sd_parts, stack, 64, memory="no checkpointing", iterations=3)
        assert reached == []  # the backward pass never got back to the UNet's first block
    finally:
        for h in handles:
            h.remove()
        engine.reset_interrupt()
    assert isinstance(first, nn.Module)
    assert _reno(engine, sd_parts, stack, 64, iterations=2)[2].iterations == 2  # the next run works
