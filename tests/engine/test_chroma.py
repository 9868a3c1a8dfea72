"""Chroma (ComfyUI's template ``image_chroma_text_to_image``) through ReNO Sampler (custom), as the template runs it.

The model: a tiny random-weight ``comfy.supported_models.Chroma`` (FLUX-schnell-derived: no vector input, every
block's modulation from the distilled guidance approximator) from the fixture pack (``ReNOTestTinyFamily`` family
``chroma``), text features of T5-XXL's width, FLUX's ``ae`` VAE (tiny). The template's chain: SamplerCustomAdvanced
with RandomNoise, CFGGuider at cfg 3.5 with the template's negative prompt, KSamplerSelect ``euler``, BasicScheduler
``beta`` 26 steps, both on ModelSamplingAuraFlow shift 1, EmptySD3LatentImage; ReNO Sampler (custom) is the SAMPLER
in place of KSamplerSelect. (a) Oracle: at one iteration (no update) SamplerCustomAdvanced with ReNO equals it with
KSamplerSelect euler, latent and decoded image. (b) The weighted reward (the paper's mix) rises over 6 iterations.
(c) The run leaves nothing on ComfyUI's objects. (d) The shipped workflow (``WORKFLOW``) runs on the tiny weights. The
numbers are printed (pytest -s).
"""

from __future__ import annotations

import family_support as fam
import torch

STEPS, SAMPLER, SCHEDULER, SHIFT, CFG, SIDE, SEED = 26, "euler", "beta", 1.0, 3.5, 64, 3
CHAIN = fam.Chain(STEPS, SAMPLER, SCHEDULER, cfg=CFG, seed=SEED)
NEGATIVE_TEXT = ("This low quality greyscale unfinished sketch is inaccurate and flawed. The image is very blurred and "
                 "lacks detail with excessive chromatic aberrations and artifacts.")
WORKFLOW = "ReNO 19 Chroma, 26 steps.json"


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


def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(c_engine, stack):
    """The shipped workflow (``WORKFLOW``) as Queue sends it (the frontend's graphToPrompt), with its three loaders
    swapped for the tiny family (diffusion model and VAE) and the tiny text encoder (which has no tokenizer: the
    template's T5TokenizerOptions, checked first, is left out), at 64 px and 2 iterations: it executes the template's
    chain with ReNO Sampler (custom) as SamplerCustomAdvanced's SAMPLER."""
    engine = fam.family_engine(c_engine, "chroma", extra_nodes="nodes_cond.py", needs=("T5TokenizerOptions",))
    prompt, ids = fam.workflow_prompt(engine, WORKFLOW, ignore=("CLIPTextEncode",))
    # the template's graph (image_chroma_text_to_image), the prompt typed once
    fam.assert_template_loaders(prompt, ids, unet="Chroma1-HD-fp8mixed.safetensors",
                                clip="t5xxl_fp8_e4m3fn_scaled.safetensors", clip_type="chroma", vae="ae.safetensors")
    t5 = ids.pop("T5TokenizerOptions")
    assert prompt[t5]["inputs"] == {"clip": [ids["CLIPLoader"], 0], "min_padding": 0, "min_length": 0}
    shift = prompt[ids["ModelSamplingAuraFlow"]]["inputs"]
    assert shift == {"model": [ids["UNETLoader"], 0], "shift": SHIFT}
    guider = prompt[ids["CFGGuider"]]["inputs"]
    assert guider["cfg"] == CFG and guider["model"] == [ids["ModelSamplingAuraFlow"], 0]
    pos, neg = prompt[guider["positive"][0]]["inputs"], prompt[guider["negative"][0]]["inputs"]
    text = [ids["PrimitiveStringMultiline"], 0]
    assert pos["text"] == prompt[ids["ReNOSamplerCustom"]]["inputs"]["prompt"] == text
    assert neg["text"].startswith(NEGATIVE_TEXT) and pos["clip"] == neg["clip"] == [t5, 0]
    host = prompt[ids["SamplerCustomAdvanced"]]["inputs"]
    assert host["sampler"] == [ids["ReNOSamplerCustom"], 0] and host["guider"] == [ids["CFGGuider"], 0]
    assert host["sigmas"] == [ids["BasicScheduler"], 0] and host["latent_image"] == [ids["EmptySD3LatentImage"], 0]
    assert host["noise"] == [ids["RandomNoise"], 0]
    assert prompt[ids["BasicScheduler"]]["inputs"] == {"model": [ids["ModelSamplingAuraFlow"], 0], "scheduler": SCHEDULER,
                                                       "steps": STEPS, "denoise": 1.0}
    latent = prompt[ids["EmptySD3LatentImage"]]["inputs"]
    assert (latent["width"], latent["height"]) == (1024, 1024)
    reno_inputs = prompt[ids["ReNOSamplerCustom"]]["inputs"]
    assert reno_inputs["sampler_name"] == SAMPLER and reno_inputs["vae"] == [ids["VAELoader"], 0]
    assert prompt[ids["VAEDecode"]]["inputs"] == {"samples": [ids["SamplerCustomAdvanced"], 0],
                                                  "vae": [ids["VAELoader"], 0]}
    clip = ids["CLIPLoader"]
    fam.swap_loaders_for_tiny(prompt, ids, "chroma")
    del prompt[t5]  # the tiny text encoder has no tokenizer options: the encoders read it directly
    pos["clip"] = neg["clip"] = [clip, 0]
    latent.update(width=SIDE, height=SIDE)
    reno_inputs["iterations"] = 2
    fam.execute_and_check(engine, prompt, ids)
