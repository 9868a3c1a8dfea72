"""Chroma (ComfyUI's template ``image_chroma_text_to_image``) through ReNO Sampler (custom), as the template runs it.

The model: a tiny random-weight ``comfy.supported_models.Chroma`` (FLUX-schnell-derived: no vector input, every
block's modulation from the distilled guidance approximator) from the fixture pack (``ReNOTestTinyFamily`` family
``chroma``), text features of T5-XXL's width, FLUX's ``ae`` VAE (tiny). The template's chain: SamplerCustomAdvanced
with RandomNoise, CFGGuider at cfg 3.5 with the template's negative prompt, KSamplerSelect ``euler``, BasicScheduler
``beta`` 26 steps, both on ModelSamplingAuraFlow shift 1, EmptySD3LatentImage; ReNO Sampler (custom) is the SAMPLER
in place of KSamplerSelect. (a) Oracle: at one iteration (no update) SamplerCustomAdvanced with ReNO equals it with
KSamplerSelect euler, latent and decoded image. (b) The weighted reward (the paper's mix) rises over 6 iterations.
(c) The run leaves nothing on ComfyUI's objects. The numbers are printed (pytest -s).
"""

from __future__ import annotations

import comfy_host
import pytest
import torch
from engine_support import PROMPT_TEXT, first_iteration, fixture_families, reward_stack

STEPS, SAMPLER, SCHEDULER, SHIFT, CFG, SIDE, SEED = 26, "euler", "beta", 1.0, 3.5, 64, 3
PAPER_MIX = (("imagereward", 1.0), ("hpsv2.1", 5.0), ("pickscore", 0.05), ("clipscore", 0.01))
EPS32 = torch.finfo(torch.float32).eps
NEGATIVE_TEXT = ("This low quality greyscale unfinished sketch is inaccurate and flawed. The image is very blurred and "
                 "lacks detail with excessive chromatic aberrations and artifacts.")


@pytest.fixture(scope="module")
def c_engine(engine):
    """The engine with ModelSamplingAuraFlow (comfy_extras/nodes_model_advanced.py), as test_workflows boots it."""
    if (engine.host.root / "comfy_extras" / "nodes_model_advanced.py").is_file():
        comfy_host.boot_engine(engine.host, (), extra_nodes=["nodes_model_advanced.py"])
    reason = fixture_families(engine).family_unavailable("chroma")
    if reason:
        pytest.skip(f"{engine.info}: {reason}")
    missing = [c for c in ("ModelSamplingAuraFlow", "BasicScheduler", "SamplerCustomAdvanced", "CFGGuider")
               if c not in engine.nodes.NODE_CLASS_MAPPINGS]
    if missing:
        pytest.skip(f"{engine.info} has no {', '.join(missing)}")
    return engine


@pytest.fixture(scope="module")
def stack(c_engine):
    return reward_stack(c_engine, PAPER_MIX)


def build(engine):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, neg = engine.call_node("ReNOTestTinyFamily", inference=True, family="chroma", transformer_depth=1,
                                            seed=0, text=PROMPT_TEXT, negative_text=NEGATIVE_TEXT)
    (model,) = engine.call_node("ModelSamplingAuraFlow", inference=True, model=model, shift=SHIFT)
    (guider,) = engine.call_node("CFGGuider", inference=True, model=model, positive=pos, negative=neg, cfg=CFG)
    (sigmas,) = engine.call_node("BasicScheduler", inference=True, model=model, scheduler=SCHEDULER, steps=STEPS,
                                 denoise=1.0)
    (latent,) = engine.call_node("EmptySD3LatentImage", inference=True, width=SIDE, height=SIDE, batch_size=1)
    (noise,) = engine.call_node("RandomNoise", inference=True, noise_seed=SEED)
    return dict(model=model, vae=vae, positive=pos, negative=neg, guider=guider, sigmas=sigmas, latent=latent,
                noise=noise)


def sample(engine, parts, sampler):
    out = engine.call_node("SamplerCustomAdvanced", inference=True, noise=parts["noise"], guider=parts["guider"],
                           sampler=sampler, sigmas=parts["sigmas"], latent_image=parts["latent"])
    return out[0]


def reno_sampler(engine, parts, stack, *, iterations, lr=5.0, memory=None):
    extra = {"memory": memory} if memory else {}
    (s,) = engine.call_node("ReNOSamplerCustom", inference=True, vae=parts["vae"], rewards=stack, prompt=PROMPT_TEXT,
                            iterations=iterations, learning_rate=lr, regularization=0.01, grad_clip=0.1,
                            sampler_name=SAMPLER, **extra)
    return s


def test_the_tiny_model_is_chroma_as_the_template_loads_it(c_engine):
    import comfy.latent_formats
    import comfy.model_detection
    import comfy.supported_models

    parts = build(c_engine)
    inner = parts["model"].model
    assert type(inner.model_config) is comfy.supported_models.Chroma
    # real key names: ComfyUI's own detection reads the tiny weights as Chroma with the fixture's weight-derived config
    sd = inner.diffusion_model.state_dict()
    detected = comfy.model_detection.detect_unet_config(sd, "")
    config = fixture_families(c_engine)._unet_config("chroma", 1)
    assert {k: detected[k] for k in ("image_model", "hidden_size", "context_in_dim", "in_channels", "out_channels", "patch_size", "depth",
                                   "depth_single_blocks", "axes_dim")} == {
        k: config[k] for k in ("image_model", "hidden_size", "context_in_dim", "in_channels", "out_channels", "patch_size", "depth",
                                   "depth_single_blocks", "axes_dim")}
    assert type(comfy.model_detection.model_config_from_unet_config(detected, sd)) is comfy.supported_models.Chroma
    dm = inner.diffusion_model
    assert type(dm).__name__ == "Chroma" and dm.txt_in.in_features == 4096 and dm.img_in.in_features == 64
    assert dm.distilled_guidance_layer.out_proj.out_features == dm.hidden_size == 256
    assert isinstance(inner.latent_format, comfy.latent_formats.Flux)
    ms = parts["model"].get_model_object("model_sampling")
    assert float(ms.shift) == SHIFT and float(ms.multiplier) == 1.0  # ModelSamplingAuraFlow's patch
    vae = parts["vae"].first_stage_model
    assert type(vae).__name__ == "AutoencodingEngine" and not hasattr(vae, "post_quant_conv")  # FLUX's ae
    assert parts["latent"]["samples"].shape == (1, 16, SIDE // 8, SIDE // 8)
    assert parts["sigmas"].shape == (STEPS + 1,) and float(parts["sigmas"][0]) == 1.0 and float(parts["sigmas"][-1]) == 0
    assert not torch.equal(parts["positive"][0][0], parts["negative"][0][0])  # a real negative prompt, not zeroed


def test_oracle_one_iteration_equals_the_templates_custom_sampler(c_engine, stack):
    engine = c_engine
    parts = build(engine)
    (core,) = engine.call_node("KSamplerSelect", inference=True, sampler_name=SAMPLER)
    with first_iteration(engine) as first:
        got = sample(engine, parts, reno_sampler(engine, parts, stack, iterations=1))
    want = sample(engine, parts, core)
    (want_image,) = engine.call_node("VAEDecode", inference=True, samples=want, vae=parts["vae"])
    (got_image,) = engine.call_node("VAEDecode", inference=True, samples=got, vae=parts["vae"])
    err_latent = float((got["samples"].float() - want["samples"].float()).abs().max())
    # ReNO's own decoded image (iteration 0, decoded with gradients) against VAE Decode of the core sampler's latent
    reno_image = first["image"].movedim(1, -1)
    err_image = float((reno_image - want_image.float()).abs().max())
    err_decoded = float((got_image.float() - want_image.float()).abs().max())
    bound_latent = max(1e-5, 256 * EPS32 * float(want["samples"].abs().max()))
    bound_image = max(1e-5, 256 * EPS32)
    print(f"\n[chroma oracle] {engine.info}: {STEPS} steps {SAMPLER}/{SCHEDULER} cfg {CFG}: max abs error latent "
          f"{err_latent:.3g} (bound {bound_latent:.3g}, max |latent| {float(want['samples'].abs().max()):.3g}), ReNO's "
          f"image {err_image:.3g}, VAE Decode of its latent {err_decoded:.3g} (bound {bound_image:.3g})")
    assert got["samples"].shape == want["samples"].shape == (1, 16, SIDE // 8, SIDE // 8)
    assert err_latent <= bound_latent and err_image <= bound_image and err_decoded <= bound_image


def test_the_weighted_reward_rises_over_six_iterations(c_engine, stack):
    engine = c_engine
    parts = build(engine)
    sampler = reno_sampler(engine, parts, stack, iterations=6)
    runs = []
    sampler.on_result = runs.append  # what the run returned (the bridge's hook; ReNO Sampler builds its history so)
    sample(engine, parts, sampler)
    (run,) = runs
    result = run.result
    ensemble = sampler.ensemble
    weights = {label: r.weight for label, r in zip(ensemble.labels, ensemble.rewards)}
    total = [sum(w * rec.scores[label][0] for label, w in weights.items()) for rec in result.records]
    first = result.records[0]
    assert first.grad_norm[0] is not None and first.grad_norm[0] > 0, "no gradient reached the noise"
    initial, best, at = first.loss[0], result.best_loss[0], result.best_iteration[0]
    print(f"\n[chroma reward] {engine.info}: weighted reward per iteration {[round(v, 4) for v in total]} (gain "
          f"{total[-1] - total[0]:.4f}); loss {initial:.4f} -> best {best:.4f} at iteration {at}")
    assert run.sigmas == pytest.approx([float(s) for s in parts["sigmas"]])  # the chain ran BasicScheduler's sigmas
    assert at > 0 and best < initial
    assert total[-1] > total[0] and total[at] > total[0]


def test_a_run_leaves_nothing_on_comfyuis_objects(c_engine, stack):
    """As test_flux2's test of the same name, on the Chroma chain (SamplerCustomAdvanced, 26 beta sigmas, cfg 3.5): per
    module of the Chroma transformer, the ae and the rewards, the same attributes and per tensor the same object,
    values and flags."""
    engine = c_engine
    parts = build(engine)
    sample(engine, parts, reno_sampler(engine, parts, stack, iterations=1))  # ComfyUI's first-load bookkeeping
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
    (core,) = engine.call_node("KSamplerSelect", inference=True, sampler_name=SAMPLER)
    sample(engine, parts, core)  # what ComfyUI's own sampling rewrites at every call is the baseline
    host_rewrites = {(k, name, n) for (k, name), (keys, values) in attributes.items()
                     for mod in [modules[k].get_submodule(name) if name else modules[k]]
                     for n, v in mod.__dict__.items() if not n.startswith("_") and values.get(n, id(v)) != id(v)}
    sample(engine, parts, reno_sampler(engine, parts, stack, iterations=2))
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
