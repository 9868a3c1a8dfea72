"""Krea 2 Turbo (ComfyUI's template ``image_krea2_turbo_t2i``, ComfyUI 0.33+) through ReNO Sampler, as the template runs it.

The model: a tiny random-weight ``comfy.supported_models.Krea2`` (the single-stream DiT of ``comfy/ldm/krea2``: a
text-fusion adapter over 12 tapped text-encoder layers, GQA with sigmoid-gated attention, 3-axis RoPE) from the fixture
pack (``ReNOTestTinyFamily`` family ``krea2``), the Qwen-Image VAE (Wan 2.1's causal 3-D ``WanVAE``, detected by
``comfy.sd.VAE``; the VAE test_qwen_image checks against a central difference). The template's chain (its LoRA switch
off, as shipped): the model as loaded (no ModelSampling patch: Krea2's own shift 1.15), ConditioningZeroOut negative,
EmptyLatentImage, KSampler 8 steps, cfg 1, ``euler`` / ``simple``. (a) Oracle: ReNO Sampler at one iteration (no
update) equals that KSampler, latent and decoded image. (b) The weighted reward (the paper's mix) rises over 6
iterations. (c) The run leaves nothing on ComfyUI's objects. On an engine without ``Krea2`` (0.3.75) every test skips
with the reason. The numbers are printed (pytest -s).
"""

from __future__ import annotations

import pytest
import torch
from engine_support import PROMPT_TEXT, fixture_families, reward_stack

STEPS, SAMPLER, SCHEDULER, SHIFT, SIDE, SEED = 8, "euler", "simple", 1.15, 64, 3
PAPER_MIX = (("imagereward", 1.0), ("hpsv2.1", 5.0), ("pickscore", 0.05), ("clipscore", 0.01))
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def k_engine(engine):
    reason = fixture_families(engine).family_unavailable("krea2")
    if reason:
        pytest.skip(f"{engine.info}: {reason}")
    return engine


@pytest.fixture(scope="module")
def stack(k_engine):
    return reward_stack(k_engine, PAPER_MIX)


def build(engine):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, _ = engine.call_node("ReNOTestTinyFamily", inference=True, family="krea2", transformer_depth=1,
                                          seed=0, text=PROMPT_TEXT, negative_text="")
    (neg,) = engine.call_node("ConditioningZeroOut", inference=True, conditioning=pos)
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=SIDE, height=SIDE, batch_size=1)
    return dict(model=model, vae=vae, positive=pos, negative=neg, latent_image=latent)


def reno(engine, parts, stack, *, iterations, lr=5.0, memory=None):
    extra = {"memory": memory} if memory else {}
    return engine.call_node("ReNOSampler", inference=True, **parts, rewards=stack, prompt=PROMPT_TEXT, seed=SEED,
                            iterations=iterations, learning_rate=lr, cfg=1.0, regularization=0.01, grad_clip=0.1,
                            steps=STEPS, sampler_name=SAMPLER, scheduler=SCHEDULER, **extra)["result"]


def ksampler(engine, parts, seed=SEED):
    (ks,) = engine.call_node("KSampler", inference=True, model=parts["model"], seed=seed, steps=STEPS, cfg=1.0,
                             sampler_name=SAMPLER, scheduler=SCHEDULER, positive=parts["positive"],
                             negative=parts["negative"], latent_image=parts["latent_image"], denoise=1.0)
    return ks


def test_the_tiny_model_is_krea2_as_the_template_loads_it(k_engine):
    import comfy.latent_formats
    import comfy.ldm.wan.vae
    import comfy.model_detection
    import comfy.supported_models

    parts = build(k_engine)
    inner = parts["model"].model
    assert type(inner.model_config) is comfy.supported_models.Krea2
    # real key names: ComfyUI's own detection reads the tiny weights as Krea2 with the fixture's weight-derived config
    sd = inner.diffusion_model.state_dict()
    detected = comfy.model_detection.detect_unet_config(sd, "")
    config = fixture_families(k_engine)._unet_config("krea2", 1)
    assert {k: detected[k] for k in ("image_model", "features", "channels", "patch", "layers", "heads", "kvheads", "txtlayers", "txtdim")} == {
        k: config[k] for k in ("image_model", "features", "channels", "patch", "layers", "heads", "kvheads", "txtlayers", "txtdim")}
    assert type(comfy.model_detection.model_config_from_unet_config(detected, sd)) is comfy.supported_models.Krea2
    dm = inner.diffusion_model
    assert type(dm).__name__ == "SingleStreamDiT" and dm.txtlayers == 12 and dm.first.in_features == 16 * 2 * 2
    assert dm.blocks[0].attn.heads == 2 and dm.blocks[0].attn.kvheads == 1 and dm.blocks[0].attn.headdim == 128
    assert isinstance(inner.latent_format, comfy.latent_formats.Wan21)
    ms = parts["model"].get_model_object("model_sampling")
    # Krea2's own (ModelType.FLUX: ComfyUI's ModelSamplingFlux, shift 1.15); the template patches nothing
    assert type(ms).__name__ == "ModelSampling" and float(ms.shift) == pytest.approx(SHIFT)
    vae = parts["vae"]
    assert type(vae.first_stage_model) is comfy.ldm.wan.vae.WanVAE and vae.latent_dim == 3  # detected, Wan 2.1
    # EmptyLatentImage's 4 channels: ComfyUI widens them to Wan 2.1's 16 (and one frame) at sampling
    assert parts["latent_image"]["samples"].shape == (1, 4, SIDE // 8, SIDE // 8)


def test_oracle_one_iteration_equals_the_templates_ksampler(k_engine, stack):
    engine = k_engine
    parts = build(engine)
    latent, image, history = reno(engine, parts, stack, iterations=1)
    ks = ksampler(engine, parts)
    (ks_image,) = engine.call_node("VAEDecode", inference=True, samples=ks, vae=parts["vae"])
    assert latent["samples"].shape == ks["samples"].shape == (1, 16, 1, SIDE // 8, SIDE // 8)
    assert image.shape == ks_image.shape == (1, SIDE, SIDE, 3)
    err_latent = float((latent["samples"].float() - ks["samples"].float()).abs().max())
    err_image = float((image.float() - ks_image.float()).abs().max())
    bound_latent = max(1e-5, 256 * EPS32 * float(ks["samples"].abs().max()))
    bound_image = max(1e-5, 256 * EPS32)
    print(f"\n[krea2 oracle] {engine.info}: {STEPS} steps {SAMPLER}/{SCHEDULER}: max abs error latent {err_latent:.3g} "
          f"(bound {bound_latent:.3g}, max |latent| {float(ks['samples'].abs().max()):.3g}), image {err_image:.3g} "
          f"(bound {bound_image:.3g})")
    assert history.iterations == 1
    assert err_latent <= bound_latent and err_image <= bound_image


def test_the_weighted_reward_rises_over_six_iterations(k_engine, stack):
    engine = k_engine
    parts = build(engine)
    _, _, history = reno(engine, parts, stack, iterations=6)
    first = history.records[0]
    assert first["grad_norm"][0] is not None and first["grad_norm"][0] > 0, "no gradient reached the noise"
    initial, best = first["loss"][0], history.best_loss[0]
    total = history.chart()["series"][0]["weighted_total"]  # sum of weight x score, the paper's mix
    print(f"\n[krea2 reward] {engine.info}: weighted reward per iteration {[round(v, 4) for v in total]} (gain "
          f"{total[-1] - total[0]:.4f}); loss {initial:.4f} -> best {best:.4f} at iteration {history.best_iteration[0]}")
    assert history.best_iteration[0] > 0 and best < initial
    assert total[-1] > total[0] and total[history.best_iteration[0]] > total[0]


def test_recomputing_every_part_gives_the_same_run(k_engine, stack):
    """memory 'checkpoint all' (the DiT's steps, the rewards and the decoder blocks the pack finds recompute in the
    backward pass) runs the same optimization as 'no checkpointing': the same losses and gradient norms at both
    iterations, up to float32 rounding."""
    engine = k_engine
    parts = build(engine)
    runs = {m: reno(engine, parts, stack, iterations=2, memory=m)[2] for m in ("no checkpointing", "checkpoint all")}
    plain, recomputed = runs["no checkpointing"], runs["checkpoint all"]
    for a, b in zip(plain.records, recomputed.records):
        assert a["loss"][0] == pytest.approx(b["loss"][0], rel=1e-5, abs=1e-6), (a["iteration"], a["loss"], b["loss"])
        if a["grad_norm"]:
            assert a["grad_norm"][0] == pytest.approx(b["grad_norm"][0], rel=1e-4), (a["grad_norm"], b["grad_norm"])
    print(f"\n[krea2 memory] {engine.info}: losses {[r['loss'][0] for r in plain.records]} (no checkpointing) vs "
          f"{[r['loss'][0] for r in recomputed.records]} (checkpoint all)")


def test_a_run_leaves_nothing_on_comfyuis_objects(k_engine, stack):
    """As test_qwen_image's test of the same name, on the Krea 2 chain: per module of the DiT, the VAE and the rewards,
    the same attributes and per tensor the same object, values and flags; Wan 2.1's latent statistics restored."""
    engine = k_engine
    parts = build(engine)
    reno(engine, parts, stack, iterations=1)  # ComfyUI's own first-load bookkeeping happens here
    modules = {"unet": parts["model"].model, "vae": parts["vae"].first_stage_model,
               **{f"reward{k}": r.model for k, r in enumerate(stack)}}
    before = {(k, f"{mn}.{n}"): (t, t.is_inference(), t.detach().clone())
              for k, m in modules.items() for mn, mod in m.named_modules()
              for table in ("_parameters", "_buffers") for n, t in getattr(mod, table).items() if t is not None}
    attributes = {(k, name): (set(mod.__dict__), {n: id(v) for n, v in mod.__dict__.items() if not n.startswith("_")})
                  for k, m in modules.items() for name, mod in m.named_modules()}
    flags = {(k, n): (t.requires_grad, t.is_inference())
             for k, m in modules.items() for n, t in [*m.named_parameters(), *m.named_buffers()]}
    model_attrs = set(parts["model"].__dict__)
    fmt = parts["model"].model.latent_format
    fmt_tensors = {n: (v, v.is_inference()) for n, v in vars(fmt).items() if isinstance(v, torch.Tensor)}
    assert {"latents_mean", "latents_std"} <= set(fmt_tensors)
    ksampler(engine, parts, seed=0)  # what ComfyUI's own sampling rewrites at every call is the baseline
    host_rewrites = {(k, name, n) for (k, name), (keys, values) in attributes.items()
                     for mod in [modules[k].get_submodule(name) if name else modules[k]]
                     for n, v in mod.__dict__.items() if not n.startswith("_") and values.get(n, id(v)) != id(v)}
    reno(engine, parts, stack, iterations=2)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    for (k, name), (t, was_inference, values) in before.items():
        mod_name, _, attr = name.rpartition(".")
        now = getattr(modules[k].get_submodule(mod_name) if mod_name else modules[k], attr)
        assert now is t and now.is_inference() == was_inference, f"{k}:{name} not restored"
        assert torch.equal(now.detach(), values), f"{k}:{name} changed"
    for (k, name), (keys, values) in attributes.items():
        mod = modules[k].get_submodule(name) if name else modules[k]
        assert set(mod.__dict__) == keys, f"{k}:{name} gained or lost {set(mod.__dict__) ^ keys}"
        now = {n: id(v) for n, v in mod.__dict__.items() if not n.startswith("_") and (k, name, n) not in host_rewrites}
        assert now == {n: i for n, i in values.items() if (k, name, n) not in host_rewrites}, f"{k}:{name} changed"
    for k, m in modules.items():
        for n, t in [*m.named_parameters(), *m.named_buffers()]:
            assert (t.requires_grad, t.is_inference()) == flags[(k, n)], f"{k}:{n} flags changed"
    assert set(parts["model"].__dict__) == model_attrs
    assert {n: (v, v.is_inference()) for n, v in vars(fmt).items() if isinstance(v, torch.Tensor)} == fmt_tensors
