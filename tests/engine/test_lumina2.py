"""Lumina-Image 2.0 (ComfyUI's template ``image_netayume_lumina_t2i``, NetaYume Lumina, a Lumina 2 finetune) through
ReNO Sampler, as the template runs it.

The model: a tiny random-weight ``comfy.supported_models.Lumina2`` (NextDiT as "Original Lumina 2": GQA heads of 96,
RoPE axes [32, 32, 32], theta 10000; Z-Image shares this code with its own modulation) from the fixture pack
(``ReNOTestTinyFamily`` family ``lumina2``), caption features of Gemma-2-2B's width, FLUX's ``ae`` VAE (tiny). The
template's chain: ModelSamplingAuraFlow shift 4, a real negative prompt (CLIP Text Encode of the template's negative
after its system prompt), EmptySD3LatentImage, KSampler 30 steps, cfg 4, ``res_multistep`` / ``simple``. (a) Oracle:
ReNO Sampler at one iteration (no update) equals that KSampler, latent and decoded image. (b) The weighted reward (the
paper's mix) rises over 6 iterations. (c) The run leaves nothing on ComfyUI's objects. The numbers are printed
(pytest -s).
"""

from __future__ import annotations

import comfy_host
import pytest
import torch
from engine_support import PROMPT_TEXT, fixture_families, reward_stack

STEPS, SAMPLER, SCHEDULER, SHIFT, CFG, SIDE, SEED = 30, "res_multistep", "simple", 4.0, 4.0, 64, 3
PAPER_MIX = (("imagereward", 1.0), ("hpsv2.1", 5.0), ("pickscore", 0.05), ("clipscore", 0.01))
EPS32 = torch.finfo(torch.float32).eps
#: the template's system prompts, put before the prompts it encodes (StringConcatenate)
POSITIVE_SYSTEM = "You are an assistant designed to generate high quality anime images based on textual prompts. <Prompt Start> "
NEGATIVE_SYSTEM = "You are an assistant designed to generate low-quality images based on textual prompts <Prompt Start> "
NEGATIVE_TEXT = "blurry, worst quality, low quality, jpeg artifacts, signature, watermark"


@pytest.fixture(scope="module")
def l_engine(engine):
    """The engine with ModelSamplingAuraFlow (comfy_extras/nodes_model_advanced.py), as test_workflows boots it."""
    if (engine.host.root / "comfy_extras" / "nodes_model_advanced.py").is_file():
        comfy_host.boot_engine(engine.host, (), extra_nodes=["nodes_model_advanced.py"])
    reason = fixture_families(engine).family_unavailable("lumina2")
    if reason:
        pytest.skip(f"{engine.info}: {reason}")
    return engine


@pytest.fixture(scope="module")
def stack(l_engine):
    return reward_stack(l_engine, PAPER_MIX)


def build(engine):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, neg = engine.call_node("ReNOTestTinyFamily", inference=True, family="lumina2", transformer_depth=1,
                                            seed=0, text=POSITIVE_SYSTEM + PROMPT_TEXT,
                                            negative_text=NEGATIVE_SYSTEM + NEGATIVE_TEXT)
    (model,) = engine.call_node("ModelSamplingAuraFlow", inference=True, model=model, shift=SHIFT)
    (latent,) = engine.call_node("EmptySD3LatentImage", inference=True, width=SIDE, height=SIDE, batch_size=1)
    return dict(model=model, vae=vae, positive=pos, negative=neg, latent_image=latent)


def reno(engine, parts, stack, *, iterations, lr=5.0, memory=None):
    extra = {"memory": memory} if memory else {}
    return engine.call_node("ReNOSampler", inference=True, **parts, rewards=stack, prompt=PROMPT_TEXT, seed=SEED,
                            iterations=iterations, learning_rate=lr, cfg=CFG, regularization=0.01, grad_clip=0.1,
                            steps=STEPS, sampler_name=SAMPLER, scheduler=SCHEDULER, **extra)["result"]


def ksampler(engine, parts, seed=SEED):
    (ks,) = engine.call_node("KSampler", inference=True, model=parts["model"], seed=seed, steps=STEPS, cfg=CFG,
                             sampler_name=SAMPLER, scheduler=SCHEDULER, positive=parts["positive"],
                             negative=parts["negative"], latent_image=parts["latent_image"], denoise=1.0)
    return ks


def test_the_tiny_model_is_lumina2_as_the_template_loads_it(l_engine):
    import comfy.latent_formats
    import comfy.model_detection
    import comfy.supported_models

    parts = build(l_engine)
    inner = parts["model"].model
    assert type(inner.model_config) is comfy.supported_models.Lumina2
    # real key names: ComfyUI's own detection reads the tiny weights as Lumina2 with the fixture's weight-derived config
    sd = inner.diffusion_model.state_dict()
    detected = comfy.model_detection.detect_unet_config(sd, "")
    config = fixture_families(l_engine)._unet_config("lumina2", 1)
    assert {k: detected[k] for k in ("image_model", "dim", "cap_feat_dim", "n_layers", "in_channels", "patch_size", "qk_norm")} == {
        k: config[k] for k in ("image_model", "dim", "cap_feat_dim", "n_layers", "in_channels", "patch_size", "qk_norm")}
    assert type(comfy.model_detection.model_config_from_unet_config(detected, sd)) is comfy.supported_models.Lumina2
    dm = inner.diffusion_model
    assert type(dm).__name__ == "NextDiT" and dm.cap_embedder[1].in_features == 2304
    assert dm.layers[0].attention.n_local_heads == 3 and dm.layers[0].attention.n_local_kv_heads == 1
    assert dm.layers[0].adaLN_modulation[-1].in_features == 288  # Lumina 2's adaLN (min(dim, 1024)), not Z-Image's 256
    assert isinstance(inner.latent_format, comfy.latent_formats.Flux)
    ms = parts["model"].get_model_object("model_sampling")
    assert float(ms.shift) == SHIFT and float(ms.multiplier) == 1.0  # ModelSamplingAuraFlow's patch
    vae = parts["vae"].first_stage_model
    assert type(vae).__name__ == "AutoencodingEngine" and not hasattr(vae, "post_quant_conv")  # FLUX's ae
    assert parts["latent_image"]["samples"].shape == (1, 16, SIDE // 8, SIDE // 8)
    assert not torch.equal(parts["positive"][0][0], parts["negative"][0][0])  # a real negative prompt, not zeroed


def test_oracle_one_iteration_equals_the_templates_ksampler(l_engine, stack):
    engine = l_engine
    parts = build(engine)
    latent, image, history = reno(engine, parts, stack, iterations=1)
    ks = ksampler(engine, parts)
    (ks_image,) = engine.call_node("VAEDecode", inference=True, samples=ks, vae=parts["vae"])
    err_latent = float((latent["samples"].float() - ks["samples"].float()).abs().max())
    err_image = float((image.float() - ks_image.float()).abs().max())
    bound_latent = max(1e-5, 256 * EPS32 * float(ks["samples"].abs().max()))
    bound_image = max(1e-5, 256 * EPS32)
    print(f"\n[lumina2 oracle] {engine.info}: {STEPS} steps {SAMPLER}/{SCHEDULER} cfg {CFG}: max abs error latent "
          f"{err_latent:.3g} (bound {bound_latent:.3g}, max |latent| {float(ks['samples'].abs().max()):.3g}), image "
          f"{err_image:.3g} (bound {bound_image:.3g})")
    assert history.iterations == 1
    assert err_latent <= bound_latent and err_image <= bound_image


def test_the_weighted_reward_rises_over_six_iterations(l_engine, stack):
    engine = l_engine
    parts = build(engine)
    _, _, history = reno(engine, parts, stack, iterations=6)
    first = history.records[0]
    assert first["grad_norm"][0] is not None and first["grad_norm"][0] > 0, "no gradient reached the noise"
    initial, best = first["loss"][0], history.best_loss[0]
    total = history.chart()["series"][0]["weighted_total"]  # sum of weight x score, the paper's mix
    print(f"\n[lumina2 reward] {engine.info}: weighted reward per iteration {[round(v, 4) for v in total]} (gain "
          f"{total[-1] - total[0]:.4f}); loss {initial:.4f} -> best {best:.4f} at iteration {history.best_iteration[0]}")
    assert history.best_iteration[0] > 0 and best < initial
    assert total[-1] > total[0] and total[history.best_iteration[0]] > total[0]


def test_a_run_leaves_nothing_on_comfyuis_objects(l_engine, stack):
    """As test_z_image's test of the same name, on the Lumina 2 chain (30 steps of res_multistep at cfg 4): per module
    of the NextDiT, the ae and the rewards, the same attributes and per tensor the same object, values and flags."""
    engine = l_engine
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
