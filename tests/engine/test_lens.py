"""Lens Turbo (ComfyUI's template ``image_lens_turbo_t2i``, ComfyUI 0.33+) through ReNO Sampler (custom), as the
template runs it.

The model: a tiny random-weight ``comfy.supported_models.Lens`` (the dual-stream MMDiT of ``comfy/ldm/lens``: fused
QKV per stream, SwiGLU MLPs, centred 3-axis RoPE, ``ModelType.FLUX``, FLUX.2's 128-channel latent) from the fixture
pack (``ReNOTestTinyFamily`` family ``lens``), text features as GPT-OSS-20B gives them (4 tapped layers of 2880 side by
side with their mask; an empty prompt gives zero-length features), the FLUX.2 VAE (``flux2-vae``, tiny). The template's
chain: ModelSamplingFlux (max_shift 1.15, base_shift 0.5, at the image size) then CFGNorm (strength 1, post-CFG),
CLIP Text Encode for the prompt and for an empty negative, EmptyLatentImage, BasicScheduler ``simple`` 4 steps,
KSamplerSelect ``euler``, SamplerCustom (add_noise, cfg 1); ReNO Sampler (custom) is the SAMPLER in place of
KSamplerSelect. (a) Oracle: at one iteration (no update) SamplerCustom with ReNO equals it with KSamplerSelect euler,
latent and decoded image. (b) The weighted reward (the paper's mix) rises over 6 iterations. (c) The run leaves
nothing on ComfyUI's objects. (d) The shipped workflow (``WORKFLOW``) runs on the tiny weights. On an engine without ``Lens`` (0.3.75) every test skips with the reason. The numbers
are printed (pytest -s).
"""

from __future__ import annotations

import family_support as fam
import pytest

STEPS, SAMPLER, SCHEDULER, SIDE, SEED = 4, "euler", "simple", 64, 3
MAX_SHIFT, BASE_SHIFT, CFG_NORM = 1.15, 0.5, 1.0
CHAIN = fam.Chain(STEPS, SAMPLER, SCHEDULER, cfg=1.0, seed=SEED)
WORKFLOW = "ReNO 21 Lens Turbo, 4 steps.json"


#: the engine with CFGNorm (comfy_extras/nodes_cfg.py) and ModelSamplingFlux (nodes_model_advanced.py)
l_engine, stack = fam.family_fixtures("l_engine", "lens", extra_nodes=("nodes_cfg.py", "nodes_model_advanced.py"),
                                      needs=("CFGNorm", "ModelSamplingFlux", "SamplerCustom", "BasicScheduler"))


def build(engine):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, neg = fam.tiny_family(engine, "lens", negative_text="")
    (shifted,) = engine.call_node("ModelSamplingFlux", inference=True, model=model, max_shift=MAX_SHIFT,
                                  base_shift=BASE_SHIFT, width=SIDE, height=SIDE)
    (normed,) = engine.call_node("CFGNorm", inference=True, model=shifted, strength=CFG_NORM, pre_cfg=False)
    return fam.samplercustom_parts(engine, normed, vae, pos, neg, CHAIN, latent_node="EmptyLatentImage", side=SIDE,
                                   schedule=lambda: engine.call_node("BasicScheduler", inference=True, model=shifted,
                                                                     scheduler=SCHEDULER, steps=STEPS,
                                                                     denoise=1.0)[0])


def test_the_tiny_model_is_lens_as_the_template_loads_it(l_engine):
    import math

    import comfy.latent_formats
    import comfy.ldm.models.autoencoder
    import comfy.supported_models

    parts = build(l_engine)
    inner = parts["model"].model
    assert type(inner.model_config) is comfy.supported_models.Lens
    # real key names: ComfyUI's own detection reads the tiny weights as Lens with the fixture's weight-derived config
    fam.assert_detected_as(l_engine, inner, "lens", comfy.supported_models.Lens,
                           ("image_model", "in_channels", "out_channels", "num_layers", "num_attention_heads",
                            "enc_hidden_dim", "multi_layer_encoder_feature", "selected_layer_index"))
    dm = inner.diffusion_model
    assert type(dm).__name__ == "LensTransformer2DModel" and dm.img_in.in_features == 128
    assert len(dm.txt_norm) == 4 and dm.txt_in.in_features == 4 * 2880 and dm.inner_dim == 2 * 64
    assert isinstance(inner.latent_format, comfy.latent_formats.Flux2)
    # ModelSamplingFlux at the image size: mu = base + (max - base) * (tokens - 256) / (4096 - 256), 16 tokens here
    ms = parts["model"].get_model_object("model_sampling")
    tokens = SIDE * SIDE / (8 * 8 * 2 * 2)
    mu = BASE_SHIFT + (MAX_SHIFT - BASE_SHIFT) * (tokens - 256) / (4096 - 256)
    assert type(ms).__name__ == "ModelSamplingAdvanced" and float(ms.shift) == pytest.approx(mu)
    assert "sampler_post_cfg_function" in parts["model"].model_options  # CFGNorm, post-CFG
    vae = parts["vae"]
    assert type(vae.first_stage_model) is comfy.ldm.models.autoencoder.AutoencoderKL
    assert vae.first_stage_model.bn is not None and vae.latent_channels == 128  # the FLUX.2 VAE
    # EmptyLatentImage's 4 channels at 8x: ComfyUI widens them to FLUX.2's 128 at 16x at sampling
    assert parts["latent"]["samples"].shape == (1, 4, SIDE // 8, SIDE // 8)
    assert parts["sigmas"].shape == (STEPS + 1,) and float(parts["sigmas"][-1]) == 0
    assert parts["sigmas"][0] == pytest.approx(1.0) and not math.isclose(float(parts["sigmas"][1]), 0.75)
    # the empty negative: zero-length GPT-OSS features, as Lens's tokenizer gives no tokens
    assert parts["negative"][0][0].shape == (1, 0, 4 * 2880) and parts["positive"][0][0].shape[1] > 0


def test_oracle_one_iteration_equals_the_templates_custom_sampler(l_engine, stack):
    fam.check_custom_oracle(l_engine, build(l_engine), stack, CHAIN, "lens",
                            f"{STEPS} steps {SAMPLER}/{SCHEDULER} cfg 1, CFGNorm, ModelSamplingFlux at {SIDE} px",
                            latent_shape=(1, 128, SIDE // 16, SIDE // 16))


def test_the_weighted_reward_rises_over_six_iterations(l_engine, stack):
    # the chain ran BasicScheduler's sigmas
    fam.check_custom_reward_rises(l_engine, build(l_engine), stack, CHAIN, "lens")


def test_a_run_leaves_nothing_on_comfyuis_objects(l_engine, stack):
    """As test_flux2's test of the same name, on the Lens chain (SamplerCustom, CFGNorm): per module of the Lens
    transformer, the FLUX.2 VAE and the rewards, the same attributes and per tensor the same object, values and
    flags."""
    fam.check_custom_run_leaves_nothing(l_engine, build(l_engine), stack, CHAIN)


def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(l_engine, stack):
    """The shipped workflow (``WORKFLOW``) as Queue sends it (the frontend's graphToPrompt), with its three loaders
    swapped for the tiny family (diffusion model and VAE) and the tiny text encoder, at 64 px (Width and Height) and 2
    iterations: it executes the template's chain with ReNO Sampler (custom) as SamplerCustom's SAMPLER."""
    engine = l_engine
    prompt, ids = fam.workflow_prompt(engine, WORKFLOW, ignore=("CLIPTextEncode", "PrimitiveInt"))
    # the template's graph (image_lens_turbo_t2i's subgraph), the prompt typed once, the negative empty
    fam.assert_template_loaders(prompt, ids, unet="lens_turbo_bf16.safetensors",
                                clip="gpt_oss_20b_nvfp4.safetensors", clip_type="lens", vae="flux2-vae.safetensors")
    host = prompt[ids["SamplerCustom"]]["inputs"]
    assert {k: host[k] for k in ("add_noise", "cfg")} == {"add_noise": True, "cfg": CHAIN.cfg}
    assert host["sampler"] == [ids["ReNOSamplerCustom"], 0] and host["model"] == [ids["CFGNorm"], 0]
    assert host["sigmas"] == [ids["BasicScheduler"], 0] and host["latent_image"] == [ids["EmptyLatentImage"], 0]
    pos, neg = prompt[host["positive"][0]]["inputs"], prompt[host["negative"][0]]["inputs"]
    text = [ids["PrimitiveStringMultiline"], 0]
    assert pos["text"] == prompt[ids["ReNOSamplerCustom"]]["inputs"]["prompt"] == text
    assert neg["text"] == "" and pos["clip"] == neg["clip"] == [ids["CLIPLoader"], 0]
    assert prompt[ids["CFGNorm"]]["inputs"] == {"model": [ids["ModelSamplingFlux"], 0], "strength": CFG_NORM,
                                                "pre_cfg": False}
    assert prompt[ids["BasicScheduler"]]["inputs"] == {"model": [ids["ModelSamplingFlux"], 0], "scheduler": SCHEDULER,
                                                       "steps": STEPS, "denoise": 1.0}
    shift = prompt[ids["ModelSamplingFlux"]]["inputs"]
    latent = prompt[ids["EmptyLatentImage"]]["inputs"]
    assert {k: shift[k] for k in ("model", "max_shift", "base_shift")} == {
        "model": [ids["UNETLoader"], 0], "max_shift": MAX_SHIFT, "base_shift": BASE_SHIFT}
    # one Width and one Height feed the latent and ModelSamplingFlux (the template's 1440 px)
    width, height = shift["width"], shift["height"]
    assert (latent["width"], latent["height"]) == (width, height)
    assert prompt[width[0]]["inputs"]["value"] == prompt[height[0]]["inputs"]["value"] == 1440
    reno_inputs = prompt[ids["ReNOSamplerCustom"]]["inputs"]
    assert reno_inputs["sampler_name"] == SAMPLER and reno_inputs["vae"] == [ids["VAELoader"], 0]
    assert prompt[ids["VAEDecode"]]["inputs"] == {"samples": [ids["SamplerCustom"], 0], "vae": [ids["VAELoader"], 0]}
    fam.swap_loaders_for_tiny(prompt, ids, "lens")
    prompt[width[0]]["inputs"]["value"] = prompt[height[0]]["inputs"]["value"] = SIDE
    reno_inputs["iterations"] = 2
    fam.execute_and_check(engine, prompt, ids)
