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

import family_support as fam
import torch

STEPS, SAMPLER, SCHEDULER, SHIFT, CFG, SIDE, SEED = 26, "euler", "beta", 1.0, 3.5, 64, 3
CHAIN = fam.Chain(STEPS, SAMPLER, SCHEDULER, cfg=CFG, seed=SEED)
NEGATIVE_TEXT = ("This low quality greyscale unfinished sketch is inaccurate and flawed. The image is very blurred and "
                 "lacks detail with excessive chromatic aberrations and artifacts.")


#: the engine with ModelSamplingAuraFlow (comfy_extras/nodes_model_advanced.py), as test_workflows boots it
c_engine, stack = fam.family_fixtures("c_engine", "chroma", extra_nodes="nodes_model_advanced.py", needs=(
    "ModelSamplingAuraFlow", "BasicScheduler", "SamplerCustomAdvanced", "CFGGuider"))


def build(engine):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, neg = fam.tiny_family(engine, "chroma", negative_text=NEGATIVE_TEXT)
    model = fam.aura_flow(engine, model, SHIFT)
    return fam.custom_parts(engine, model, vae, pos, neg, CHAIN, latent_node="EmptySD3LatentImage", side=SIDE,
                            schedule=lambda: engine.call_node("BasicScheduler", inference=True, model=model,
                                                              scheduler=SCHEDULER, steps=STEPS, denoise=1.0)[0])


def test_the_tiny_model_is_chroma_as_the_template_loads_it(c_engine):
    import comfy.latent_formats
    import comfy.supported_models

    parts = build(c_engine)
    inner = parts["model"].model
    assert type(inner.model_config) is comfy.supported_models.Chroma
    # real key names: ComfyUI's own detection reads the tiny weights as Chroma with the fixture's weight-derived config
    fam.assert_detected_as(c_engine, inner, "chroma", comfy.supported_models.Chroma,
                           ("image_model", "hidden_size", "context_in_dim", "in_channels", "out_channels", "patch_size",
                        "depth", "depth_single_blocks", "axes_dim"))
    dm = inner.diffusion_model
    assert type(dm).__name__ == "Chroma" and dm.txt_in.in_features == 4096 and dm.img_in.in_features == 64
    assert dm.distilled_guidance_layer.out_proj.out_features == dm.hidden_size == 256
    assert isinstance(inner.latent_format, comfy.latent_formats.Flux)
    fam.assert_aura_flow_shift(parts["model"], SHIFT)
    fam.assert_flux_ae(parts["vae"])
    assert parts["latent"]["samples"].shape == (1, 16, SIDE // 8, SIDE // 8)
    assert parts["sigmas"].shape == (STEPS + 1,) and float(parts["sigmas"][0]) == 1.0 and float(parts["sigmas"][-1]) == 0
    assert not torch.equal(parts["positive"][0][0], parts["negative"][0][0])  # a real negative prompt, not zeroed


def test_oracle_one_iteration_equals_the_templates_custom_sampler(c_engine, stack):
    fam.check_custom_oracle(c_engine, build(c_engine), stack, CHAIN, "chroma",
                            f"{STEPS} steps {SAMPLER}/{SCHEDULER} cfg {CFG}", latent_shape=(1, 16, SIDE // 8, SIDE // 8))


def test_the_weighted_reward_rises_over_six_iterations(c_engine, stack):
    # the chain ran BasicScheduler's sigmas
    fam.check_custom_reward_rises(c_engine, build(c_engine), stack, CHAIN, "chroma")


def test_a_run_leaves_nothing_on_comfyuis_objects(c_engine, stack):
    """As test_flux2's test of the same name, on the Chroma chain (SamplerCustomAdvanced, 26 beta sigmas, cfg 3.5): per
    module of the Chroma transformer, the ae and the rewards, the same attributes and per tensor the same object,
    values and flags."""
    fam.check_custom_run_leaves_nothing(c_engine, build(c_engine), stack, CHAIN)
