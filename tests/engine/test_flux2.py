"""FLUX.2 Klein 4B distilled (ComfyUI's template ``image_flux2_klein_text_to_image``) through ReNO Sampler (custom).

The model: a tiny random-weight ``comfy.supported_models.Flux2`` (FLUX.2's detected config: patch 1 over 128 channels,
RoPE axes [32]*4, theta 2000, global modulation, no guidance embed, as the distilled Klein) from the fixture pack
(``ReNOTestTinyFamily`` family ``flux2``), text features of Klein 4B's width (7680: three Qwen3-4B layers side by
side), the FLUX.2 VAE (``AutoencoderKL`` with ``batch_norm_latent``: 32 channels patched 2x2 to 128 and normalized by
the BatchNorm's running statistics), tiny. The template's chain: SamplerCustomAdvanced with RandomNoise, CFGGuider at
cfg 1 with a ConditioningZeroOut negative, KSamplerSelect ``euler``, Flux2Scheduler 4 steps at the image size,
EmptyFlux2LatentImage; ReNO Sampler (custom) is the SAMPLER in place of KSamplerSelect. (a) Oracle: at one iteration
(no update) SamplerCustomAdvanced with ReNO equals it with KSamplerSelect euler, latent and decoded image. (b) The
FLUX.2 VAE decode carries the gradient to the latent (autograd against a central difference). (c) The weighted reward
(the paper's mix) rises over 6 iterations. (d) The run leaves nothing on ComfyUI's objects. The numbers are printed
(pytest -s).
"""

from __future__ import annotations

import family_support as fam
from engine_support import pack_module

STEPS, SAMPLER, SIDE, SEED = 4, "euler", 64, 3
CHAIN = fam.Chain(STEPS, SAMPLER, seed=SEED)
WORKFLOW = "ReNO 04 FLUX.2 Klein, 4 steps.json"


#: the engine with Flux2Scheduler and EmptyFlux2LatentImage (comfy_extras/nodes_flux.py), as test_workflows boots it
f_engine, stack = fam.family_fixtures("f_engine", "flux2", extra_nodes="nodes_flux.py", needs=(
    "Flux2Scheduler", "EmptyFlux2LatentImage", "SamplerCustomAdvanced", "CFGGuider"))


def build(engine):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, _ = fam.tiny_family(engine, "flux2")
    neg = fam.zero_out(engine, pos)
    return fam.custom_parts(engine, model, vae, pos, neg, CHAIN, latent_node="EmptyFlux2LatentImage", side=SIDE,
                            schedule=lambda: engine.call_node("Flux2Scheduler", inference=True, steps=STEPS, width=SIDE,
                                                              height=SIDE)[0])


def test_the_tiny_model_is_flux2_klein_as_the_template_loads_it(f_engine):
    import comfy.latent_formats
    import comfy.ldm.models.autoencoder
    import comfy.supported_models

    parts = build(f_engine)
    inner = parts["model"].model
    assert type(inner.model_config) is comfy.supported_models.Flux2
    dm = inner.diffusion_model
    assert type(dm).__name__ == "Flux" and dm.txt_in.in_features == 7680 and dm.img_in.in_features == 128
    assert dm.params.global_modulation and not dm.params.guidance_embed and dm.params.patch_size == 1
    assert isinstance(inner.latent_format, comfy.latent_formats.Flux2)
    vae = parts["vae"]
    first = vae.first_stage_model
    assert type(first) is comfy.ldm.models.autoencoder.AutoencoderKL and first.bn is not None and first.ps == [2, 2]
    assert vae.latent_channels == 128 and vae.downscale_ratio == vae.upscale_ratio == 16
    assert parts["latent"]["samples"].shape == (1, 128, SIDE // 16, SIDE // 16)
    # Flux2Scheduler's sigmas at the image's size: 4 steps from 1 to 0
    assert parts["sigmas"].shape == (STEPS + 1,) and float(parts["sigmas"][0]) == 1.0 and float(parts["sigmas"][-1]) == 0


def test_oracle_one_iteration_equals_the_templates_custom_sampler(f_engine, stack):
    fam.check_custom_oracle(f_engine, build(f_engine), stack, CHAIN, "flux2",
                            f"{STEPS} steps {SAMPLER}, Flux2Scheduler",
                            latent_shape=(1, 128, SIDE // 16, SIDE // 16))


def test_the_flux2_vae_decode_carries_the_gradient_to_the_latent(f_engine):
    """The pack's decode (``decode_with_grad``) through the BatchNorm de-normalization and 2x2 un-patching of the
    FLUX.2 VAE: the autograd directional derivative equals a central difference of the decode (float32), and the
    image is VAE Decode's."""
    parts = build(f_engine)
    fam.check_vae_gradient(f_engine, parts["vae"], (1, 128, SIDE // 16, SIDE // 16), SIDE, "flux2",
                           away_from_clamp=True)


def test_the_weighted_reward_rises_over_six_iterations(f_engine, stack):
    # the chain ran Flux2Scheduler's sigmas
    fam.check_custom_reward_rises(f_engine, build(f_engine), stack, CHAIN, "flux2")


def test_recomputing_every_part_gives_the_same_run(f_engine, stack):
    """memory 'checkpoint all' (the transformer's steps, the FLUX.2 decoder's blocks and the rewards recompute in the
    backward pass) runs the same optimization as 'no checkpointing': the same losses and gradient norms at both
    iterations, up to float32 rounding (the second's loss follows from the first's gradient)."""
    engine = f_engine
    parts = build(engine)
    results = {}
    for memory in fam.MEMORY_MODES:
        _, runs = fam.custom_run(engine, parts, stack, CHAIN, iterations=2, memory=memory)
        results[memory] = runs[0].result
    plain, recomputed = results["no checkpointing"], results["checkpoint all"]
    fam.assert_same_optimization(plain.records, recomputed.records)
    blocks = pack_module(engine).nodes.memory.vae_blocks(parts["vae"])
    print(f"\n[flux2 memory] {engine.info}: {len(blocks)} decoder blocks; losses {[r.loss[0] for r in plain.records]} "
          f"(no checkpointing) vs {[r.loss[0] for r in recomputed.records]} (checkpoint all)")
    assert blocks


def test_a_run_leaves_nothing_on_comfyuis_objects(f_engine, stack):
    """As test_z_image's test of the same name, on the FLUX.2 chain (SamplerCustomAdvanced, Flux2Scheduler's 4 sigmas):
    per module of the FLUX.2 transformer, the VAE (its BatchNorm statistics included) and the rewards, the same
    attributes and per tensor the same object, values and flags."""
    fam.check_custom_run_leaves_nothing(f_engine, build(f_engine), stack, CHAIN)


def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(f_engine, stack):
    """The shipped workflow (``WORKFLOW``) as Queue sends it (the frontend's graphToPrompt), with its three loaders
    swapped for the tiny family (diffusion model and VAE) and the tiny text encoder, at 64 px (the Width / Height
    primitives feed both the latent and Flux2Scheduler) and 2 iterations: it executes the template's chain with ReNO
    Sampler (custom) as SamplerCustomAdvanced's SAMPLER."""
    engine = f_engine
    prompt, ids = fam.workflow_prompt(engine, WORKFLOW, ignore=("PrimitiveInt",))
    # the template's graph (image_flux2_klein_text_to_image, the distilled 4B subgraph), the prompt typed once
    fam.assert_template_loaders(prompt, ids, unet="flux-2-klein-4b.safetensors", clip="qwen_3_4b.safetensors",
                                clip_type="flux2", vae="flux2-vae.safetensors")
    fam.assert_prompt_typed_once(prompt, ids, "ReNOSamplerCustom")
    guider = prompt[ids["CFGGuider"]]["inputs"]
    assert guider["cfg"] == 1.0 and guider["model"] == [ids["UNETLoader"], 0]
    assert guider["positive"] == [ids["CLIPTextEncode"], 0] and guider["negative"] == [ids["ConditioningZeroOut"], 0]
    host = prompt[ids["SamplerCustomAdvanced"]]["inputs"]
    assert host["sampler"] == [ids["ReNOSamplerCustom"], 0] and host["guider"] == [ids["CFGGuider"], 0]
    assert host["sigmas"] == [ids["Flux2Scheduler"], 0] and host["latent_image"] == [ids["EmptyFlux2LatentImage"], 0]
    assert host["noise"] == [ids["RandomNoise"], 0]
    sched, latent = prompt[ids["Flux2Scheduler"]]["inputs"], prompt[ids["EmptyFlux2LatentImage"]]["inputs"]
    assert sched["steps"] == STEPS
    # one Width and one Height primitive (1024) feed both the scheduler (its sigmas shift with the size) and the latent
    for key in ("width", "height"):
        assert sched[key] == latent[key] and prompt[sched[key][0]] == {"class_type": "PrimitiveInt",
                                                                       "inputs": {"value": 1024}}
    reno_inputs = prompt[ids["ReNOSamplerCustom"]]["inputs"]
    assert reno_inputs["sampler_name"] == SAMPLER and reno_inputs["vae"] == [ids["VAELoader"], 0]
    assert prompt[ids["VAEDecode"]]["inputs"] == {"samples": [ids["SamplerCustomAdvanced"], 0],
                                                  "vae": [ids["VAELoader"], 0]}
    fam.swap_loaders_for_tiny(prompt, ids, "flux2")
    for key in ("width", "height"):
        prompt[sched[key][0]]["inputs"]["value"] = SIDE
    reno_inputs["iterations"] = 2
    fam.execute_and_check(engine, prompt, ids)
