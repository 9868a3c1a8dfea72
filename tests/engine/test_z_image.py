"""Z-Image-Turbo (ComfyUI's most used template, ``image_z_image_turbo``) through ReNO Sampler, as the template runs it.

The model: a tiny random-weight ``comfy.supported_models.ZImage`` (Lumina2 / NextDiT with Z-Image modulation) from the
fixture pack (``ReNOTestTinyFamily`` family ``z_image``), FLUX's ``ae`` VAE (tiny), caption features of Qwen3-4B's
width. The template's chain: ModelSamplingAuraFlow shift 3, ConditioningZeroOut negative, EmptySD3LatentImage, KSampler
8 steps, cfg 1, ``res_multistep`` / ``simple``. (a) Oracle: ReNO Sampler at one iteration (no update) equals that
KSampler, latent and decoded image. (b) The weighted reward (the paper's mix) rises over 6 iterations. (c) The run
leaves nothing on ComfyUI's objects. The numbers are printed (pytest -s).
"""

from __future__ import annotations

import family_support as fam
import pytest

STEPS, SAMPLER, SCHEDULER, SHIFT, SIDE, SEED = 8, "res_multistep", "simple", 3.0, 64, 3
CHAIN = fam.Chain(STEPS, SAMPLER, SCHEDULER, cfg=1.0, seed=SEED)
WORKFLOW = "ReNO 01 Z-Image-Turbo, 8 steps (start here).json"
#: the same graph with its ReNO part in one subgraph node (its API ids "<subgraph node>:<inner id>")
SUBGRAPH_WORKFLOW = "ReNO 02 Z-Image-Turbo as a subgraph.json"


#: the engine with ModelSamplingAuraFlow (comfy_extras/nodes_model_advanced.py), as test_workflows boots it
z_engine, stack = fam.family_fixtures("z_engine", "z_image", extra_nodes="nodes_model_advanced.py")


def build(engine):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, _ = fam.tiny_family(engine, "z_image")
    model = fam.aura_flow(engine, model, SHIFT)
    return dict(model=model, vae=vae, positive=pos, negative=fam.zero_out(engine, pos),
                latent_image=fam.empty_latent(engine, "EmptySD3LatentImage", SIDE))


def test_the_tiny_model_is_z_image_as_the_template_loads_it(z_engine):
    import comfy.latent_formats
    import comfy.supported_models

    parts = build(z_engine)
    inner = parts["model"].model
    assert type(inner.model_config) is comfy.supported_models.ZImage
    assert type(inner.diffusion_model).__name__ == "NextDiT" and inner.diffusion_model.cap_embedder[1].in_features == 2560
    assert isinstance(inner.latent_format, comfy.latent_formats.Flux)
    fam.assert_aura_flow_shift(parts["model"], SHIFT)
    fam.assert_flux_ae(parts["vae"])
    assert parts["latent_image"]["samples"].shape == (1, 16, SIDE // 8, SIDE // 8)


def test_oracle_one_iteration_equals_the_templates_ksampler(z_engine, stack):
    fam.check_ksampler_oracle(z_engine, build(z_engine), stack, CHAIN, "z-image",
                              f"{STEPS} steps {SAMPLER}/{SCHEDULER}")


def test_the_weighted_reward_rises_over_six_iterations(z_engine, stack):
    fam.check_reward_rises(z_engine, build(z_engine), stack, CHAIN, "z-image")


@pytest.mark.parametrize("memory", ["auto", "checkpoint all"])
def test_a_run_leaves_nothing_on_comfyuis_objects(z_engine, stack, memory):
    """As test_reliability's test of the same name, on the Z-Image chain (8 steps of res_multistep): per module of
    the NextDiT, the ae and the rewards, the same attributes and per tensor the same object, values and flags."""
    fam.check_ksampler_run_leaves_nothing(z_engine, build(z_engine), stack, CHAIN, memory=memory)


@pytest.mark.parametrize("workflow", [WORKFLOW, SUBGRAPH_WORKFLOW])
def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(z_engine, stack, workflow):
    """The shipped workflow (``WORKFLOW``; ``SUBGRAPH_WORKFLOW``, expanded) as Queue sends it (the frontend's graphToPrompt), with its three loaders
    swapped for the tiny family (diffusion model and VAE) and the tiny text encoder, at 64 px and 2 iterations: it
    executes, and ReNO Sampler ran the template's chain (8 steps of res_multistep, AuraFlow shift 3)."""
    engine = z_engine
    prompt, ids = fam.workflow_prompt(engine, workflow)
    # the template's graph (image_z_image_turbo), the prompt typed once for CLIP Text Encode and ReNO
    fam.assert_template_loaders(prompt, ids, unet="z_image_turbo_bf16.safetensors", clip="qwen_3_4b.safetensors",
                                clip_type="lumina2", vae="ae.safetensors")
    assert prompt[ids["ModelSamplingAuraFlow"]]["inputs"]["shift"] == SHIFT
    fam.run_ksampler_workflow_on_tiny(engine, prompt, ids, "z_image", CHAIN, template_side=1024)
