"""Lumina-Image 2.0 (ComfyUI's template ``image_netayume_lumina_t2i``, NetaYume Lumina, a Lumina 2 finetune) through
ReNO Sampler, as the template runs it.

The model: a tiny random-weight ``comfy.supported_models.Lumina2`` (NextDiT as "Original Lumina 2": GQA heads of 96,
RoPE axes [32, 32, 32], theta 10000; Z-Image shares this code with its own modulation) from the fixture pack
(``ReNOTestTinyFamily`` family ``lumina2``), caption features of Gemma-2-2B's width, FLUX's ``ae`` VAE (tiny). The
template's chain: ModelSamplingAuraFlow shift 4, a real negative prompt (CLIP Text Encode of the template's negative
after its system prompt), EmptySD3LatentImage, KSampler 30 steps, cfg 4, ``res_multistep`` / ``simple``. (a) Oracle:
ReNO Sampler at one iteration (no update) equals that KSampler, latent and decoded image. (b) The weighted reward (the
paper's mix) rises over 6 iterations. (c) The run leaves nothing on ComfyUI's objects. (d) The shipped workflow
(``WORKFLOW``) runs on the tiny weights. The numbers are printed (pytest -s).
"""

from __future__ import annotations

import family_support as fam
import torch
from engine_support import PROMPT_TEXT

STEPS, SAMPLER, SCHEDULER, SHIFT, CFG, SIDE, SEED = 30, "res_multistep", "simple", 4.0, 4.0, 64, 3
CHAIN = fam.Chain(STEPS, SAMPLER, SCHEDULER, cfg=CFG, seed=SEED)
#: the template's system prompts, put before the prompts it encodes (StringConcatenate)
POSITIVE_SYSTEM = "You are an assistant designed to generate high quality anime images based on textual prompts. <Prompt Start> "
NEGATIVE_SYSTEM = "You are an assistant designed to generate low-quality images based on textual prompts <Prompt Start> "
NEGATIVE_TEXT = "blurry, worst quality, low quality, jpeg artifacts, signature, watermark"
WORKFLOW = "ReNO 20 Lumina 2 (NetaYume), 30 steps.json"


#: the engine with ModelSamplingAuraFlow (comfy_extras/nodes_model_advanced.py), as test_workflows boots it
l_engine, stack = fam.family_fixtures("l_engine", "lumina2", extra_nodes="nodes_model_advanced.py")


def build(engine):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, neg = fam.tiny_family(engine, "lumina2", text=POSITIVE_SYSTEM + PROMPT_TEXT,
                                           negative_text=NEGATIVE_SYSTEM + NEGATIVE_TEXT)
    model = fam.aura_flow(engine, model, SHIFT)
    return dict(model=model, vae=vae, positive=pos, negative=neg,
                latent_image=fam.empty_latent(engine, "EmptySD3LatentImage", SIDE))


def test_the_tiny_model_is_lumina2_as_the_template_loads_it(l_engine):
    import comfy.latent_formats
    import comfy.supported_models

    parts = build(l_engine)
    inner = parts["model"].model
    assert type(inner.model_config) is comfy.supported_models.Lumina2
    # real key names: ComfyUI's own detection reads the tiny weights as Lumina2 with the fixture's weight-derived config
    fam.assert_detected_as(l_engine, inner, "lumina2", comfy.supported_models.Lumina2,
                           ("image_model", "dim", "cap_feat_dim", "n_layers", "in_channels", "patch_size", "qk_norm"))
    dm = inner.diffusion_model
    assert type(dm).__name__ == "NextDiT" and dm.cap_embedder[1].in_features == 2304
    assert dm.layers[0].attention.n_local_heads == 3 and dm.layers[0].attention.n_local_kv_heads == 1
    assert dm.layers[0].adaLN_modulation[-1].in_features == 288  # Lumina 2's adaLN (min(dim, 1024)), not Z-Image's 256
    assert isinstance(inner.latent_format, comfy.latent_formats.Flux)
    fam.assert_aura_flow_shift(parts["model"], SHIFT)
    fam.assert_flux_ae(parts["vae"])
    assert parts["latent_image"]["samples"].shape == (1, 16, SIDE // 8, SIDE // 8)
    assert not torch.equal(parts["positive"][0][0], parts["negative"][0][0])  # a real negative prompt, not zeroed


def test_oracle_one_iteration_equals_the_templates_ksampler(l_engine, stack):
    fam.check_ksampler_oracle(l_engine, build(l_engine), stack, CHAIN, "lumina2",
                              f"{STEPS} steps {SAMPLER}/{SCHEDULER} cfg {CFG}")


def test_the_weighted_reward_rises_over_six_iterations(l_engine, stack):
    fam.check_reward_rises(l_engine, build(l_engine), stack, CHAIN, "lumina2")


def test_a_run_leaves_nothing_on_comfyuis_objects(l_engine, stack):
    """As test_z_image's test of the same name, on the Lumina 2 chain (30 steps of res_multistep at cfg 4): per module
    of the NextDiT, the ae and the rewards, the same attributes and per tensor the same object, values and flags."""
    fam.check_ksampler_run_leaves_nothing(l_engine, build(l_engine), stack, CHAIN)


def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(l_engine, stack):
    """The shipped workflow (``WORKFLOW``) as Queue sends it (the frontend's graphToPrompt), with its checkpoint
    loader swapped for the tiny family (model and VAE) and the tiny text encoder, at 64 px and 2 iterations: it
    executes, and ReNO Sampler ran the template's chain (30 steps of res_multistep at cfg 4, AuraFlow shift 4), the
    positive prompt encoded after the system prompt, the rewards reading the prompt alone."""
    engine = fam.family_engine(l_engine, "lumina2", extra_nodes="nodes_string.py", needs=("StringConcatenate",))
    prompt, ids = fam.workflow_prompt(engine, WORKFLOW, ignore=("CLIPTextEncode", "PrimitiveStringMultiline"))
    ckpt = ids.pop("CheckpointLoaderSimple")
    assert prompt[ckpt]["inputs"] == {"ckpt_name": "NetaYumev35_pretrained_all_in_one.safetensors"}
    assert prompt[ids["ModelSamplingAuraFlow"]]["inputs"] == {"model": [ckpt, 0], "shift": SHIFT}
    reno_inputs = prompt[ids["ReNOSampler"]]["inputs"]
    assert {k: reno_inputs[k] for k in ("steps", "sampler_name", "scheduler", "cfg")} == {
        "steps": STEPS, "sampler_name": SAMPLER, "scheduler": SCHEDULER, "cfg": CFG}
    assert reno_inputs["model"] == [ids["ModelSamplingAuraFlow"], 0] and reno_inputs["vae"] == [ckpt, 2]
    pos, neg = prompt[reno_inputs["positive"][0]]["inputs"], prompt[reno_inputs["negative"][0]]["inputs"]
    assert pos["clip"] == neg["clip"] == [ckpt, 1]
    # the positive: the system prompt, then the prompt typed once (ReNO's prompt: the prompt alone)
    concat = prompt[ids["StringConcatenate"]]["inputs"]
    assert pos["text"] == [ids["StringConcatenate"], 0] and concat["delimiter"] == ""
    assert prompt[concat["string_a"][0]]["inputs"]["value"] == POSITIVE_SYSTEM
    assert reno_inputs["prompt"] == concat["string_b"]
    assert prompt[concat["string_b"][0]]["class_type"] == "PrimitiveStringMultiline"
    assert neg["text"].startswith(NEGATIVE_SYSTEM + NEGATIVE_TEXT)
    latent = prompt[ids["EmptySD3LatentImage"]]["inputs"]
    assert (latent["width"], latent["height"]) == (1024, 1024) and reno_inputs["latent_image"] == [
        ids["EmptySD3LatentImage"], 0]
    # the checkpoint's model and VAE from the tiny family, its CLIP the tiny text encoder
    clip = f"{ckpt}:clip"
    prompt[ckpt] = {"class_type": "ReNOTestTinyFamily", "inputs": {"family": "lumina2", "transformer_depth": 1,
                                                                   "seed": 0, "text": "", "negative_text": ""}}
    prompt[clip] = {"class_type": "ReNOTestTinyCLIP", "inputs": {"family": "lumina2"}}
    pos["clip"] = neg["clip"] = [clip, 0]
    reno_inputs["vae"] = [ckpt, 1]
    latent.update(width=SIDE, height=SIDE)
    reno_inputs["iterations"] = 2
    fam.execute_and_check(engine, prompt, ids)
