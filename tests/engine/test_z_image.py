"""Z-Image-Turbo (ComfyUI's most used template, ``image_z_image_turbo``) through ReNO Sampler, as the template runs it.

The model: a tiny random-weight ``comfy.supported_models.ZImage`` (Lumina2 / NextDiT with Z-Image modulation) from the
fixture pack (``ReNOTestTinyFamily`` family ``z_image``), FLUX's ``ae`` VAE (tiny), caption features of Qwen3-4B's
width. The template's chain: ModelSamplingAuraFlow shift 3, ConditioningZeroOut negative, EmptySD3LatentImage, KSampler
8 steps, cfg 1, ``res_multistep`` / ``simple``. (a) Oracle: ReNO Sampler at one iteration (no update) equals that
KSampler, latent and decoded image. (b) The weighted reward (the paper's mix) rises over 6 iterations. (c) The run
leaves nothing on ComfyUI's objects. The numbers are printed (pytest -s).
"""

from __future__ import annotations

import pytest
from engine_support import PROMPT_TEXT, reward_stack
from family_support import (
    PAPER_MIX,
    Chain,
    assert_prompt_typed_once,
    assert_reno_sampler_runs_the_chain,
    assert_run_leaves_nothing,
    assert_template_loaders,
    check_ksampler_oracle,
    check_reward_rises,
    execute_and_check,
    family_engine,
    ksampler,
    reno,
    swap_loaders_for_tiny,
    workflow_prompt,
)

STEPS, SAMPLER, SCHEDULER, SHIFT, SIDE, SEED = 8, "res_multistep", "simple", 3.0, 64, 3
CHAIN = Chain(STEPS, SAMPLER, SCHEDULER, cfg=1.0, seed=SEED)
WORKFLOW = "ReNO 01 Z-Image-Turbo, 8 steps (start here).json"
#: the same graph with its ReNO part in one subgraph node (its API ids "<subgraph node>:<inner id>")
SUBGRAPH_WORKFLOW = "ReNO 02 Z-Image-Turbo as a subgraph.json"


@pytest.fixture(scope="module")
def z_engine(engine):
    """The engine with ModelSamplingAuraFlow (comfy_extras/nodes_model_advanced.py), as test_workflows boots it."""
    return family_engine(engine, "z_image", extra_nodes="nodes_model_advanced.py")


@pytest.fixture(scope="module")
def stack(z_engine):
    return reward_stack(z_engine, PAPER_MIX)


def build(engine):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, _ = engine.call_node("ReNOTestTinyFamily", inference=True, family="z_image", transformer_depth=1,
                                          seed=0, text=PROMPT_TEXT, negative_text="")
    (model,) = engine.call_node("ModelSamplingAuraFlow", inference=True, model=model, shift=SHIFT)
    (neg,) = engine.call_node("ConditioningZeroOut", inference=True, conditioning=pos)
    (latent,) = engine.call_node("EmptySD3LatentImage", inference=True, width=SIDE, height=SIDE, batch_size=1)
    return dict(model=model, vae=vae, positive=pos, negative=neg, latent_image=latent)


def test_the_tiny_model_is_z_image_as_the_template_loads_it(z_engine):
    import comfy.latent_formats
    import comfy.supported_models

    parts = build(z_engine)
    inner = parts["model"].model
    assert type(inner.model_config) is comfy.supported_models.ZImage
    assert type(inner.diffusion_model).__name__ == "NextDiT" and inner.diffusion_model.cap_embedder[1].in_features == 2560
    assert isinstance(inner.latent_format, comfy.latent_formats.Flux)
    ms = parts["model"].get_model_object("model_sampling")
    assert float(ms.shift) == SHIFT and float(ms.multiplier) == 1.0  # ModelSamplingAuraFlow's patch
    vae = parts["vae"].first_stage_model
    assert type(vae).__name__ == "AutoencodingEngine" and not hasattr(vae, "post_quant_conv")  # FLUX's ae
    assert parts["latent_image"]["samples"].shape == (1, 16, SIDE // 8, SIDE // 8)


def test_oracle_one_iteration_equals_the_templates_ksampler(z_engine, stack):
    check_ksampler_oracle(z_engine, build(z_engine), stack, CHAIN, "z-image", f"{STEPS} steps {SAMPLER}/{SCHEDULER}")


def test_the_weighted_reward_rises_over_six_iterations(z_engine, stack):
    check_reward_rises(z_engine, build(z_engine), stack, CHAIN, "z-image")


@pytest.mark.parametrize("memory", ["auto", "checkpoint all"])
def test_a_run_leaves_nothing_on_comfyuis_objects(z_engine, stack, memory):
    """As test_reliability's test of the same name, on the Z-Image chain (8 steps of res_multistep): per module of
    the NextDiT, the ae and the rewards, the same attributes and per tensor the same object, values and flags."""
    engine = z_engine
    parts = build(engine)
    assert_run_leaves_nothing(parts, stack, first_run=lambda: reno(engine, parts, stack, CHAIN, iterations=1),
                              baseline=lambda: ksampler(engine, parts, CHAIN, seed=0),
                              second_run=lambda: reno(engine, parts, stack, CHAIN, iterations=2, memory=memory))


@pytest.mark.parametrize("workflow", [WORKFLOW, SUBGRAPH_WORKFLOW])
def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(z_engine, stack, workflow):
    """The shipped workflow (``WORKFLOW``; ``SUBGRAPH_WORKFLOW``, expanded) as Queue sends it (the frontend's graphToPrompt), with its three loaders
    swapped for the tiny family (diffusion model and VAE) and the tiny text encoder, at 64 px and 2 iterations: it
    executes, and ReNO Sampler ran the template's chain (8 steps of res_multistep, AuraFlow shift 3)."""
    engine = z_engine
    prompt, ids = workflow_prompt(engine, workflow)
    # the template's graph (image_z_image_turbo), the prompt typed once for CLIP Text Encode and ReNO
    assert_template_loaders(prompt, ids, unet="z_image_turbo_bf16.safetensors", clip="qwen_3_4b.safetensors",
                            clip_type="lumina2", vae="ae.safetensors")
    assert prompt[ids["ModelSamplingAuraFlow"]]["inputs"]["shift"] == SHIFT
    assert {k: prompt[ids["EmptySD3LatentImage"]]["inputs"][k] for k in ("width", "height")} == {
        "width": 1024, "height": 1024}
    assert_prompt_typed_once(prompt, ids, "ReNOSampler")
    swap_loaders_for_tiny(prompt, ids, "z_image")
    prompt[ids["EmptySD3LatentImage"]]["inputs"].update(width=64, height=64)
    reno_inputs = assert_reno_sampler_runs_the_chain(prompt, ids, CHAIN)
    reno_inputs["iterations"] = 2
    execute_and_check(engine, prompt, ids)
