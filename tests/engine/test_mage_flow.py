"""Mage-Flow Turbo (ComfyUI's template ``image_mage_flow_turbo_t2i_int8``, ComfyUI 0.33+) through ReNO Sampler, as the
template runs it.

The model: a tiny random-weight ``comfy.supported_models.MageFlow`` (Qwen-Image's double-stream blocks with patch 1
over FLUX.2's 128 latent channels, unrotated text tokens, a bf16-rounded timestep, ``ModelType.FLOW`` shift 6) from the
fixture pack (``ReNOTestTinyFamily`` family ``mage_flow``), text features of Qwen3-VL-4B's width (2560), and the Mage
VAE (``mage_flow_vae_bf16``: the engine's ``MageVAE``, a one-step diffusion decoder, detected by ``comfy.sd.VAE``),
tiny. The template's file is int8 (``mage_flow_turbo_int8_convrot``); here the tiny weights are float32: the int8 /
ConvRot path is tested by tests/engine/test_quantized.py. The template's chain: the model as loaded (no ModelSampling
patch), TextEncodeMageFlowEdit (the prompt, an empty negative, no reference images, the VAE; it makes the empty
128-channel latent at the output size), KSampler 4 steps, cfg 1, ``euler`` / ``simple``. (a) Oracle: ReNO Sampler at
one iteration (no update) equals that KSampler, latent and decoded image. (b) The Mage VAE decode carries the
gradient to the latent (autograd against a central difference). (c) The weighted reward (the paper's mix) rises over
6 iterations. (d) The run leaves nothing on ComfyUI's objects. (e) The shipped workflow (``WORKFLOW``) runs on
the tiny weights. On an engine without ``MageFlow`` (0.3.75) every test
skips with the reason. The numbers are printed (pytest -s).
"""

from __future__ import annotations

import family_support as fam
import pytest
from engine_support import PROMPT_TEXT

STEPS, SAMPLER, SCHEDULER, SHIFT, SIDE, SEED = 4, "euler", "simple", 6.0, 64, 3
CHAIN = fam.Chain(STEPS, SAMPLER, SCHEDULER, cfg=1.0, seed=SEED)
WORKFLOW = "ReNO 22 Mage-Flow Turbo, 4 steps.json"


#: the engine with TextEncodeMageFlowEdit (comfy_extras/nodes_mage.py)
m_engine, stack = fam.family_fixtures("m_engine", "mage_flow", extra_nodes="nodes_mage.py",
                                      needs=("TextEncodeMageFlowEdit",))


def build(engine):
    """The template's graph up to the sampler, on the tiny family (its text encoder: the fixture's tiny CLIP)."""
    model, vae, _, _ = fam.tiny_family(engine, "mage_flow")
    (clip,) = engine.call_node("ReNOTestTinyCLIP", inference=True, family="mage_flow")
    pos, neg, latent = engine.call_node("TextEncodeMageFlowEdit", inference=True, clip=clip, prompt=PROMPT_TEXT,
                                        negative_prompt="", vae=vae, width=SIDE, height=SIDE, batch_size=1)
    return dict(model=model, vae=vae, positive=pos, negative=neg, latent_image=latent)


def test_the_tiny_model_is_mage_flow_as_the_template_loads_it(m_engine):
    import comfy.latent_formats
    import comfy.ldm.mage_flow.vae
    import comfy.supported_models

    parts = build(m_engine)
    inner = parts["model"].model
    assert type(inner.model_config) is comfy.supported_models.MageFlow
    # real key names: ComfyUI's own detection reads the tiny weights as MageFlow (it reads in_channels and the block
    # count; the heads are MageFlowTransformer2DModel's default, 24, in the real model)
    fam.assert_detected_as(m_engine, inner, "mage_flow", comfy.supported_models.MageFlow,
                           ("image_model", "in_channels", "num_layers"))
    dm = inner.diffusion_model
    assert type(dm).__name__ == "MageFlowTransformer2DModel" and dm.patch_size == 1 and dm.in_channels == 128
    assert dm.txt_norm.weight.shape == (2560,) and dm.inner_dim == 2 * 128
    assert isinstance(inner.latent_format, comfy.latent_formats.Flux2)
    ms = parts["model"].get_model_object("model_sampling")
    assert float(ms.shift) == pytest.approx(SHIFT) and float(ms.multiplier) == 1.0  # MageFlow's own; nothing patched
    vae = parts["vae"]
    assert type(vae.first_stage_model) is comfy.ldm.mage_flow.vae.MageVAE  # detected from the file's keys
    assert vae.latent_channels == 128 and vae.downscale_ratio == vae.upscale_ratio == 16
    # TextEncodeMageFlowEdit's latent: 128 channels at 16x; its conditioning: the text features, no reference latents
    assert parts["latent_image"]["samples"].shape == (1, 128, SIDE // 16, SIDE // 16)
    assert parts["positive"][0][0].shape[-1] == 2560 and "reference_latents" not in parts["positive"][0][1]


def test_oracle_one_iteration_equals_the_templates_ksampler(m_engine, stack):
    fam.check_ksampler_oracle(m_engine, build(m_engine), stack, CHAIN, "mage_flow",
                              f"{STEPS} steps {SAMPLER}/{SCHEDULER}", latent_shape=(1, 128, SIDE // 16, SIDE // 16),
                              image_shape=(1, SIDE, SIDE, 3))


def test_the_mage_vae_decode_carries_the_gradient(m_engine):
    fam.check_vae_gradient(m_engine, build(m_engine)["vae"], (1, 128, SIDE // 16, SIDE // 16), SIDE, "mage_flow")


def test_the_weighted_reward_rises_over_six_iterations(m_engine, stack):
    fam.check_reward_rises(m_engine, build(m_engine), stack, CHAIN, "mage_flow")


def test_a_run_leaves_nothing_on_comfyuis_objects(m_engine, stack):
    """As test_qwen_image's test of the same name, on the Mage-Flow chain: per module of the DiT, the Mage VAE and the
    rewards, the same attributes and per tensor the same object, values and flags."""
    fam.check_ksampler_run_leaves_nothing(m_engine, build(m_engine), stack, CHAIN)


def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(m_engine, stack):
    """The shipped workflow (``WORKFLOW``) as Queue sends it (the frontend's graphToPrompt), with its three loaders
    swapped for the tiny family (diffusion model and VAE) and the tiny text encoder, at 64 px and 2 iterations: it
    executes, and ReNO Sampler ran the template's chain (4 steps of euler / simple at cfg 1 on the model as loaded,
    TextEncodeMageFlowEdit's conditioning and latent)."""
    engine = m_engine
    prompt, ids = fam.workflow_prompt(engine, WORKFLOW)
    # the template's graph (image_mage_flow_turbo_t2i_int8's subgraph: the int8 file, the Mage VAE)
    fam.assert_template_loaders(prompt, ids, unet="mage_flow_turbo_int8_convrot.safetensors",
                                clip="qwen3vl_4b_bf16.safetensors", clip_type="mage",
                                vae="mage_flow_vae_bf16.safetensors")
    enc = prompt[ids["TextEncodeMageFlowEdit"]]["inputs"]
    text = [ids["PrimitiveStringMultiline"], 0]
    assert enc == {"clip": [ids["CLIPLoader"], 0], "vae": [ids["VAELoader"], 0], "prompt": text,
                   "negative_prompt": "", "width": 1024, "height": 1024, "batch_size": 1}
    reno_inputs = prompt[ids["ReNOSampler"]]["inputs"]
    assert reno_inputs["prompt"] == text
    assert {k: reno_inputs[k] for k in ("steps", "sampler_name", "scheduler", "cfg")} == {
        "steps": STEPS, "sampler_name": SAMPLER, "scheduler": SCHEDULER, "cfg": CHAIN.cfg}
    assert reno_inputs["model"] == [ids["UNETLoader"], 0]  # no ModelSampling node: Mage-Flow's own shift
    node = ids["TextEncodeMageFlowEdit"]
    assert [reno_inputs[k] for k in ("positive", "negative", "latent_image")] == [[node, 0], [node, 1], [node, 2]]
    fam.swap_loaders_for_tiny(prompt, ids, "mage_flow")
    enc.update(width=SIDE, height=SIDE)
    reno_inputs["iterations"] = 2
    fam.execute_and_check(engine, prompt, ids)
