"""What a ReNO run chooses for speed, on a real ComfyUI engine (tiny models): the VAE decoder's memory layout is
measured in the planner (both layouts timed at the run's own shapes; ``RENO_CHANNELS_LAST=1/0`` forces one), and the
gradient passes run PyTorch SDPA where the host would run an unfused attention in float32
(``RENO_PYTORCH_ATTENTION=0`` keeps the host's; the diffusion model's attention only with ``=all``, since KSampler runs
the host's). Neither may change results beyond float rounding: iteration 0's image
and noise gradient are compared between every layout and attention choice.
"""

from __future__ import annotations

import pytest
import torch
from engine_support import PROMPT_TEXT

REWARDS = (("imagereward", 1.0), ("hpsv2.1", 5.0), ("pickscore", 0.05), ("clipscore", 0.01))
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def parts(engine):
    model, vae = engine.call_node("ReNOTestTinySD", inference=True, transformer_depth=1, context_dim=32, seed=0)
    (pos,) = engine.call_node("ReNOTestConditioning", inference=True, text=PROMPT_TEXT, context_dim=32)
    return dict(model=model, vae=vae, pos=pos)


@pytest.fixture
def fresh_layouts(pack):
    """Every test measures (or injects) its own layout timings: the run's per-decoder record starts empty."""
    pack.nodes.lifecycle._LAYOUTS.clear()
    yield
    pack.nodes.lifecycle._LAYOUTS.clear()


def run(engine, parts, stack, iterations=2, side=64, memory="no checkpointing"):
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=side, height=side, batch_size=1)
    out = engine.call_node("ReNOSampler", inference=True, model=parts["model"], positive=parts["pos"],
                           negative=parts["pos"], vae=parts["vae"], latent_image=latent, rewards=stack,
                           prompt=PROMPT_TEXT, seed=3, iterations=iterations, learning_rate=5.0, cfg=1.0,
                           regularization=0.01, grad_clip=0.1, memory=memory)
    return out["result"]


def conv_layouts(parts):
    """Records, at every call of the decoder's last convolution, whether its weight is channels-last."""
    conv = parts["vae"].first_stage_model.decoder.conv_out
    seen: list[bool] = []
    real = conv.forward

    def spy(x):
        seen.append(conv.weight.is_contiguous(memory_format=torch.channels_last))
        return real(x)

    return conv, spy, seen


def injected(pack, monkeypatch, seconds, conv):
    """``time_layouts`` replaced by one that enters the run's real ``prepare`` for each layout (recording whether the
    decoder's ``conv`` weight is channels-last there) and reports ``seconds``."""
    calls = []

    def fake(prepare, step, **kwargs):
        for layout in ("contiguous", "channels-last"):
            with prepare(layout):
                calls.append((layout, conv.weight.is_contiguous(memory_format=torch.channels_last)))
        return dict(seconds)

    monkeypatch.setattr(pack.nodes.lifecycle, "time_layouts", fake)
    return calls


@pytest.mark.parametrize("faster", ["channels-last", "contiguous"])
def test_the_vae_layout_follows_the_measured_timings(engine, pack, parts, stack, monkeypatch, fresh_layouts, faster):
    monkeypatch.delenv("RENO_CHANNELS_LAST", raising=False)
    slow, fast = 0.2, 0.1
    seconds = {"contiguous": fast if faster == "contiguous" else slow,
               "channels-last": fast if faster == "channels-last" else slow}
    conv, spy, seen = conv_layouts(parts)
    weight = conv.weight
    calls = injected(pack, monkeypatch, seconds, conv)
    conv.forward = spy
    try:
        got = run(engine, parts, stack)
    finally:
        del conv.forward
    # the probe measured each layout as installed: the channels-last pass really had NHWC weights
    assert calls == [("contiguous", False), ("channels-last", True)]
    layout = got[2].config["vae_layout"]
    assert layout.startswith(f"{faster} (measured forward+backward at a 8x8 latent")
    assert "contiguous 0.2000 s" in layout or "contiguous 0.1000 s" in layout
    assert seen and all(s == (faster == "channels-last") for s in seen)  # the run used the faster one
    assert conv.weight is weight  # the user's VAE is left as it was


def test_a_layout_within_the_margin_stays_as_loaded_and_the_variable_forces_one(engine, pack, parts, stack,
                                                                                 monkeypatch, fresh_layouts):
    monkeypatch.delenv("RENO_CHANNELS_LAST", raising=False)
    margin = pack.optimizer.memory.LAYOUT_MARGIN
    calls = injected(pack, monkeypatch, {"contiguous": 0.1, "channels-last": 0.1 * (1 - margin / 2)},
                     parts["vae"].first_stage_model.decoder.conv_out)
    assert run(engine, parts, stack)[2].config["vae_layout"].startswith("contiguous (measured")
    assert len(calls) == 2
    calls.clear()
    run(engine, parts, stack)  # the same decoder and shape: remembered, not measured again
    assert calls == []
    monkeypatch.setenv("RENO_CHANNELS_LAST", "1")  # forced: nothing measured, whatever the timings say
    assert run(engine, parts, stack)[2].config["vae_layout"] == "channels-last (RENO_CHANNELS_LAST=1)"
    assert calls == []


def first_iteration(pack, monkeypatch):
    """Iteration 0's image and reward-loss noise gradient, taken through the run's own installed forward pass."""
    seen = {}
    real = pack.nodes.lifecycle.optimize_noise

    def capture(generate, objective, noise, config, callback=None):
        z = noise.detach().float().clone().requires_grad_(True)
        image, _ = generate(z)
        loss, _ = objective(image)
        (grad,) = torch.autograd.grad(loss.sum(), z)
        seen["image"], seen["grad"], seen["noise"] = image.detach().clone(), grad, noise.detach().clone()
        return real(generate, objective, noise, config, callback)

    monkeypatch.setattr(pack.nodes.lifecycle, "optimize_noise", capture)
    return seen


def test_layouts_and_attention_change_speed_not_results(engine, pack, parts, stack, monkeypatch, fresh_layouts):
    """Iteration 0's image and noise gradient agree between channels-last and contiguous, the host's attention and
    PyTorch SDPA, within float32 rounding of their magnitudes; SDPA really ran where the host's default is unfused,
    and everything swapped is restored after the run."""
    import comfy.ldm.modules.attention as attention
    import comfy.ldm.modules.diffusionmodules.model as vae_model

    host = pack.nodes.host
    if host._host_sdpa() is None:
        pytest.skip("this ComfyUI has no attention override: the host's attention always runs")
    default = attention.optimized_attention.__name__
    blocks = [m for m in parts["vae"].first_stage_model.modules() if isinstance(m, vae_model.AttnBlock)]
    counts = {"unet": 0, "vae": 0}
    real_sdpa, real_vae = host._host_sdpa, vae_model.pytorch_attention

    def counted_sdpa():
        fn = real_sdpa()

        def call(*args, **kwargs):
            counts["unet"] += 1
            return fn(*args, **kwargs)
        return call

    def counted_vae(q, k, v):
        counts["vae"] += 1
        return real_vae(q, k, v)

    monkeypatch.setattr(host, "_host_sdpa", counted_sdpa)
    monkeypatch.setattr(vae_model, "pytorch_attention", counted_vae)
    seen = first_iteration(pack, monkeypatch)
    results = {}
    for layout in ("0", "1"):
        for sdpa in ("0", "1", "all"):
            monkeypatch.setenv("RENO_CHANNELS_LAST", layout)
            monkeypatch.setenv("RENO_PYTORCH_ATTENTION", sdpa)
            counts.update(unet=0, vae=0)
            history = run(engine, parts, stack)[2]
            results[(layout, sdpa)] = dict(seen, counts=dict(counts), attention=history.config["attention"])
    for (layout, sdpa), r in results.items():
        if sdpa == "0":
            assert r["counts"] == {"unet": 0, "vae": 0}, (layout, sdpa)
        else:  # the VAE decoder's unfused attention runs SDPA by default
            assert (r["counts"]["vae"] > 0) == any(b.optimized_attention is vae_model.normal_attention for b in blocks)
        if sdpa == "all":  # the diffusion model's only when asked (KSampler runs the host's: the oracle)
            unfused = default in host.FALLBACK_ATTENTION
            assert (r["counts"]["unet"] > 0) == unfused, (layout, sdpa, default)
            assert r["attention"].startswith("PyTorch SDPA" if unfused else "the host's")
        else:
            assert r["counts"]["unet"] == 0, (layout, sdpa)
            assert r["attention"].startswith("the host's, as KSampler"), r["attention"]
    assert all(b.optimized_attention is vae_model.normal_attention or b.optimized_attention is real_vae
               for b in blocks)  # restored (the host's own choice)

    ref = results[("0", "0")]
    assert torch.equal(ref["noise"], results[("1", "all")]["noise"])
    # the image in [0, 1] is computed from the noise-scaled start (|x| up to ~70 at sigma_max) through the UNet and the
    # decoder: another summation order moves a pixel by a fraction of eps32 of that magnitude (seen: 1.5e-6, i.e.
    # 0.2 eps32 * 70); a wrong layout or attention moves it by >= 1e-3
    sigma_max = float(parts["model"].model.model_sampling.sigma_max)
    image_tol = 4 * EPS32 * float(ref["noise"].abs().max()) * sigma_max
    # the gradient passes back through four rewards, the decoder and the UNet, each summing hundreds of terms: a few
    # hundred eps32 of its largest component (seen: 38 eps32 relative)
    grad_tol = 1024 * EPS32 * float(ref["grad"].abs().max())
    assert float(ref["grad"].abs().max()) > 0
    for key, r in results.items():
        assert float((r["image"] - ref["image"]).abs().max()) <= image_tol, key
        assert float((r["grad"] - ref["grad"]).abs().max()) <= grad_tol, key


def test_the_rewards_attention_is_pytorch_sdpa_already(stack):
    """The pack's own reward towers (open_clip, BLIP/BERT) call F.scaled_dot_product_attention; the transformers CLIP
    rewards must load with transformers' SDPA attention, not its eager softmax(QK^T)V."""
    found = {}
    for reward in stack:
        for module in reward.model.modules():
            impl = getattr(getattr(module, "config", None), "_attn_implementation", None)
            if impl is not None:
                found[reward.model.name] = impl
                break
    assert {"pickscore", "clipscore"} <= set(found)
    assert set(found.values()) == {"sdpa"}, found
