"""HiDream-I1 Fast (ComfyUI's template ``hidream_i1_fast``) through ReNO Sampler, as the template runs it.

The model: a tiny random-weight ``comfy.supported_models.HiDream`` (``comfy/ldm/hidream``: MoE feed-forward, one
double-stream and one single-stream block, each reading one Llama-3.1-8B layer) from the fixture pack
(``ReNOTestTinyFamily`` family ``hidream``); conditioning as HiDream's four text encoders give it: T5-XXL's hidden
states as the context, CLIP-L's and CLIP-G's pooled outputs as ``pooled_output``, Llama-3.1-8B's 32 hidden layers as
``conditioning_llama3``; FLUX's ``ae`` VAE (tiny). The template's chain: ModelSamplingSD3 shift 3, CLIP Text Encode of
its negative ("bad ugly jpeg artifacts"), EmptySD3LatentImage, KSampler 16 steps, cfg 1, ``lcm`` / ``normal``. (a)
Oracle: ReNO Sampler at one iteration (no update) equals that KSampler, latent and decoded image. (b) The weighted
reward cannot rise on this chain with tiny random weights, and why: each ``lcm`` step on a flow model keeps
(1 - sigma_next) of the denoised latent and adds ComfyUI's fresh step noise, so the start noise reaches the image
scaled by their product (2.9e-10 over these 16 steps) times the model's Jacobians, which a tiny random model does not
amplify (how much a trained distilled HiDream's do is not measured here): the rewards' start-noise gradient is
measured against the same chain with ``euler``. (c) HiDream Full's chain (the template's note; ComfyUI's template ``hidream_i1_full``: 50 steps of
``uni_pc`` / ``simple``, cfg 5 with the negative, shift 3): the oracle, and the weighted reward (the paper's mix) rises
over 6 iterations (slow: RENO_SLOW=1). (d) A run leaves nothing on ComfyUI's objects. (e) The shipped workflow
(``WORKFLOW``: the Fast template's graph with ``euler`` in ReNO, for (b)'s reason) runs on the tiny weights. The numbers
are printed (pytest -s).
"""

from __future__ import annotations

import family_support as fam
import pytest
import torch
from engine_support import PROMPT_TEXT, first_iteration

STEPS, SAMPLER, SCHEDULER, SHIFT, CFG, SIDE, SEED = 16, "lcm", "normal", 3.0, 1.0, 64, 3
CHAIN = fam.Chain(STEPS, SAMPLER, SCHEDULER, cfg=CFG, seed=SEED)
NEGATIVE_TEXT = "bad ugly jpeg artifacts"
#: HiDream Full's settings, as the template's note and the template ``hidream_i1_full`` give them (same shift, negative)
FULL = fam.Chain(50, "uni_pc", "simple", cfg=5.0, seed=SEED)
WORKFLOW = "ReNO 24 HiDream-I1 Fast, 16 steps.json"


#: the engine with ModelSamplingSD3 (comfy_extras/nodes_model_advanced.py), as test_workflows boots it
h_engine, stack = fam.family_fixtures("h_engine", "hidream", extra_nodes="nodes_model_advanced.py",
                                      needs=("ModelSamplingSD3",))


def build(engine):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, neg = fam.tiny_family(engine, "hidream", negative_text=NEGATIVE_TEXT)
    (model,) = engine.call_node("ModelSamplingSD3", inference=True, model=model, shift=SHIFT)
    return dict(model=model, vae=vae, positive=pos, negative=neg,
                latent_image=fam.empty_latent(engine, "EmptySD3LatentImage", SIDE))


def test_the_tiny_model_is_hidream_as_the_template_loads_it(h_engine):
    import comfy.latent_formats
    import comfy.model_detection
    import comfy.supported_models

    parts = build(h_engine)
    inner = parts["model"].model
    assert type(inner.model_config) is comfy.supported_models.HiDream
    # real key names: ComfyUI's own detection reads the tiny weights as HiDream (its config is fixed there, read from no
    # weight but the caption projection's presence: the keys below are the ones the tiny model shares with it)
    fam.assert_detected_as(h_engine, inner, "hidream", comfy.supported_models.HiDream,
                           ("image_model", "in_channels", "out_channels", "patch_size", "attention_head_dim",
                            "axes_dims_rope", "caption_channels", "text_emb_dim", "num_routed_experts",
                            "num_activated_experts"))
    sd = inner.diffusion_model.state_dict()
    assert set(comfy.model_detection.detect_unet_config(sd, "")) >= set(fam.fixture_families(h_engine)._unet_config(
        "hidream", 1)) - {"image_model"}  # the tiny config has no key detection lacks
    dm = inner.diffusion_model
    assert type(dm).__name__ == "HiDreamImageTransformer2DModel" and dm.inner_dim == 256
    assert [p.linear.in_features for p in dm.caption_projection] == [4096, 4096, 4096]  # 2 Llama layers + T5
    assert dm.double_stream_blocks[0].block.ff_i.gate.weight.shape == (4, 256)  # 4 routed experts
    assert dm.p_embedder.pooled_embedder.linear_1.in_features == 2048
    assert isinstance(inner.latent_format, comfy.latent_formats.Flux)
    ms = parts["model"].get_model_object("model_sampling")
    assert float(ms.shift) == SHIFT and float(ms.multiplier) == 1000.0  # ModelSamplingSD3's patch
    fam.assert_flux_ae(parts["vae"])
    assert parts["latent_image"]["samples"].shape == (1, 16, SIDE // 8, SIDE // 8)
    (positive, extra), = parts["positive"]
    assert positive.shape[-1] == 4096 and extra["pooled_output"].shape == (1, 2048)
    assert extra["conditioning_llama3"].shape[:2] == (1, 32) and extra["conditioning_llama3"].shape[-1] == 4096
    assert not torch.equal(positive, parts["negative"][0][0])  # the template's negative prompt, not zeroed


def test_oracle_one_iteration_equals_the_templates_ksampler(h_engine, stack):
    fam.check_ksampler_oracle(h_engine, build(h_engine), stack, CHAIN, "hidream",
                              f"{STEPS} steps {SAMPLER}/{SCHEDULER} cfg {CFG}, shift {SHIFT}")


def start_noise_gradient(engine, parts, stack, chain):
    """The gradient of the rewards' loss alone (regularization 0) with respect to the start noise at iteration 0, as
    ReNO Sampler computes it on ``chain`` (a two-iteration run: iteration 0 is differentiated)."""
    with first_iteration(engine) as first:
        engine.call_node("ReNOSampler", inference=True, **parts, rewards=stack, prompt=PROMPT_TEXT, seed=chain.seed,
                         iterations=2, learning_rate=5.0, cfg=chain.cfg, regularization=0.0, grad_clip=0.1,
                         steps=chain.steps, sampler_name=chain.sampler, scheduler=chain.scheduler)
    return first["grad"]


def test_the_fast_chains_lcm_steps_leave_the_start_noise_almost_no_say(h_engine, stack):
    """Why the Fast chain's reward cannot rise on tiny random weights: an ``lcm`` step on a flow model keeps
    (1 - sigma_next) of the denoised latent and adds ComfyUI's fresh step noise, so the start noise reaches the image
    through the product of those factors and of the model's Jacobians, which a tiny random model does not amplify.
    Measured: the rewards' gradient with respect to the start noise
    under the template's ``lcm`` chain against the same chain with ``euler`` (deterministic: the start noise carries
    through)."""
    import comfy.samplers

    parts = build(h_engine)
    sigmas = comfy.samplers.calculate_sigmas(parts["model"].get_model_object("model_sampling"), SCHEDULER, STEPS)
    carry = float(torch.prod(1 - sigmas[1:-1].double()))
    lcm = float(start_noise_gradient(h_engine, parts, stack, CHAIN).norm())
    euler = float(start_noise_gradient(h_engine, parts, stack, fam.Chain(STEPS, "euler", SCHEDULER, cfg=CFG,
                                                                           seed=SEED)).norm())
    print(f"\n[hidream fast] {h_engine.info}: product of (1 - sigma_next) over the {STEPS} lcm steps {carry:.3g}; "
          f"the rewards' start-noise gradient norm: lcm {lcm:.3g}, euler {euler:.3g}")
    assert euler > 0 and carry < 1e-6
    assert lcm <= 1e-3 * euler  # the lcm steps' product, not the model or the pack, decides


def test_oracle_one_iteration_equals_the_full_templates_ksampler(h_engine, stack):
    """The template's note gives HiDream Full's settings (ComfyUI's template ``hidream_i1_full``: the same graph, 50
    steps of ``uni_pc`` / ``simple``, cfg 5 with the negative prompt, shift 3): the same oracle on that chain."""
    fam.check_ksampler_oracle(h_engine, build(h_engine), stack, FULL, "hidream full",
                              f"{FULL.steps} steps {FULL.sampler}/{FULL.scheduler} cfg {FULL.cfg}, shift {SHIFT}")


@pytest.mark.slow
def test_the_weighted_reward_rises_over_six_iterations_on_the_full_chain(h_engine, stack):
    """On HiDream Full's chain (deterministic ``uni_pc``) the start noise carries through: the weighted reward rises
    over 6 iterations (300 steps with backward at cfg 5: slow on a CPU)."""
    fam.check_reward_rises(h_engine, build(h_engine), stack, FULL, "hidream full")


def test_a_run_leaves_nothing_on_comfyuis_objects(h_engine, stack):
    """As test_z_image's test of the same name, on the HiDream chain (16 steps of lcm at cfg 1): per module of the
    HiDream transformer, the ae and the rewards, the same attributes and per tensor the same object, values and
    flags."""
    fam.check_ksampler_run_leaves_nothing(h_engine, build(h_engine), stack, CHAIN)





def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(h_engine, stack):
    """The shipped workflow (``WORKFLOW``) as Queue sends it (the frontend's graphToPrompt), with its loaders swapped
    for the tiny family (diffusion model and VAE) and the tiny text encoder (for QuadrupleCLIPLoader's four), at 64 px
    and 2 iterations: it executes, and ReNO Sampler ran the template's chain (16 steps, ``normal``, cfg 1 on
    ModelSamplingSD3 shift 3, the template's negative prompt, EmptySD3LatentImage) with ``euler``, not the template's
    ``lcm`` (the reason: test_the_fast_chains_lcm_steps_leave_the_start_noise_almost_no_say)."""
    engine = fam.family_engine(h_engine, "hidream", extra_nodes="nodes_hidream.py", needs=("QuadrupleCLIPLoader",))
    prompt, ids = fam.workflow_prompt(engine, WORKFLOW, ignore=("CLIPTextEncode",))
    # the template's graph (hidream_i1_fast), the prompt typed once
    assert prompt[ids["UNETLoader"]]["inputs"]["unet_name"] == "hidream_i1_fast_fp8.safetensors"
    assert [prompt[ids["QuadrupleCLIPLoader"]]["inputs"][f"clip_name{i}"] for i in range(1, 5)] == [
        "clip_l_hidream.safetensors", "clip_g_hidream.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors",
        "llama_3.1_8b_instruct_fp8_scaled.safetensors"]
    assert prompt[ids["VAELoader"]]["inputs"]["vae_name"] == "ae.safetensors"
    assert prompt[ids["ModelSamplingSD3"]]["inputs"] == {"model": [ids["UNETLoader"], 0], "shift": SHIFT}
    reno_inputs = prompt[ids["ReNOSampler"]]["inputs"]
    assert {k: reno_inputs[k] for k in ("steps", "sampler_name", "scheduler", "cfg")} == {
        "steps": STEPS, "sampler_name": "euler", "scheduler": SCHEDULER, "cfg": CFG}
    assert reno_inputs["model"] == [ids["ModelSamplingSD3"], 0]
    pos, neg = prompt[reno_inputs["positive"][0]]["inputs"], prompt[reno_inputs["negative"][0]]["inputs"]
    assert pos["text"] == reno_inputs["prompt"] == [ids["PrimitiveStringMultiline"], 0]
    assert neg["text"] == NEGATIVE_TEXT and pos["clip"] == neg["clip"] == [ids["QuadrupleCLIPLoader"], 0]
    latent = prompt[ids["EmptySD3LatentImage"]]["inputs"]
    assert reno_inputs["latent_image"] == [ids["EmptySD3LatentImage"], 0]
    assert {k: latent[k] for k in ("width", "height")} == {"width": 1024, "height": 1024}
    # QuadrupleCLIPLoader's place taken by a CLIPLoader id for the swap: the tiny encoder gives all four's features
    ids["CLIPLoader"] = ids.pop("QuadrupleCLIPLoader")
    fam.swap_loaders_for_tiny(prompt, ids, "hidream")
    latent.update(width=SIDE, height=SIDE)
    reno_inputs["iterations"] = 2
    fam.execute_and_check(engine, prompt, ids)
