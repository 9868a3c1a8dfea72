"""Krea 2 Turbo (ComfyUI's template ``image_krea2_turbo_t2i``, ComfyUI 0.33+) through ReNO Sampler, as the template runs it.

The model: a tiny random-weight ``comfy.supported_models.Krea2`` (the single-stream DiT of ``comfy/ldm/krea2``: a
text-fusion adapter over 12 tapped text-encoder layers, GQA with sigmoid-gated attention, 3-axis RoPE) from the fixture
pack (``ReNOTestTinyFamily`` family ``krea2``), the Qwen-Image VAE (Wan 2.1's causal 3-D ``WanVAE``, detected by
``comfy.sd.VAE``; the VAE test_qwen_image checks against a central difference). The template's chain (its LoRA switch
off, as shipped): the model as loaded (no ModelSampling patch: Krea2's own shift 1.15), ConditioningZeroOut negative,
EmptyLatentImage, KSampler 8 steps, cfg 1, ``euler`` / ``simple``. (a) Oracle: ReNO Sampler at one iteration (no
update) equals that KSampler, latent and decoded image. (b) The weighted reward (the paper's mix) rises over 6
iterations. (c) The run leaves nothing on ComfyUI's objects. (d) The shipped workflow (``WORKFLOW``) runs on the tiny
weights. On an engine without ``Krea2`` (0.3.75) every test skips with the reason. The numbers are printed (pytest -s).
"""

from __future__ import annotations

import family_support as fam
import pytest

STEPS, SAMPLER, SCHEDULER, SHIFT, SIDE, SEED = 8, "euler", "simple", 1.15, 64, 3
CHAIN = fam.Chain(STEPS, SAMPLER, SCHEDULER, cfg=1.0, seed=SEED)
WORKFLOW = "ReNO 18 Krea 2 Turbo, 8 steps.json"


k_engine, stack = fam.family_fixtures("k_engine", "krea2")


def build(engine):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, _ = fam.tiny_family(engine, "krea2")
    return dict(model=model, vae=vae, positive=pos, negative=fam.zero_out(engine, pos),
                latent_image=fam.empty_latent(engine, "EmptyLatentImage", SIDE))


def test_the_tiny_model_is_krea2_as_the_template_loads_it(k_engine):
    import comfy.latent_formats
    import comfy.ldm.wan.vae
    import comfy.supported_models

    parts = build(k_engine)
    inner = parts["model"].model
    assert type(inner.model_config) is comfy.supported_models.Krea2
    # real key names: ComfyUI's own detection reads the tiny weights as Krea2 with the fixture's weight-derived config
    fam.assert_detected_as(k_engine, inner, "krea2", comfy.supported_models.Krea2,
                           ("image_model", "features", "channels", "patch", "layers", "heads", "kvheads", "txtlayers",
                        "txtdim"))
    dm = inner.diffusion_model
    assert type(dm).__name__ == "SingleStreamDiT" and dm.txtlayers == 12 and dm.first.in_features == 16 * 2 * 2
    assert dm.blocks[0].attn.heads == 2 and dm.blocks[0].attn.kvheads == 1 and dm.blocks[0].attn.headdim == 128
    assert isinstance(inner.latent_format, comfy.latent_formats.Wan21)
    ms = parts["model"].get_model_object("model_sampling")
    # Krea2's own (ModelType.FLUX: ComfyUI's ModelSamplingFlux, shift 1.15); the template patches nothing
    assert type(ms).__name__ == "ModelSampling" and float(ms.shift) == pytest.approx(SHIFT)
    vae = parts["vae"]
    assert type(vae.first_stage_model) is comfy.ldm.wan.vae.WanVAE and vae.latent_dim == 3  # detected, Wan 2.1
    # EmptyLatentImage's 4 channels: ComfyUI widens them to Wan 2.1's 16 (and one frame) at sampling
    assert parts["latent_image"]["samples"].shape == (1, 4, SIDE // 8, SIDE // 8)


def test_oracle_one_iteration_equals_the_templates_ksampler(k_engine, stack):
    fam.check_ksampler_oracle(k_engine, build(k_engine), stack, CHAIN, "krea2", f"{STEPS} steps {SAMPLER}/{SCHEDULER}",
                              latent_shape=(1, 16, 1, SIDE // 8, SIDE // 8), image_shape=(1, SIDE, SIDE, 3))


def test_the_weighted_reward_rises_over_six_iterations(k_engine, stack):
    fam.check_reward_rises(k_engine, build(k_engine), stack, CHAIN, "krea2")


def test_recomputing_every_part_gives_the_same_run(k_engine, stack):
    """memory 'checkpoint all' (the DiT's steps, the rewards and the decoder blocks the pack finds recompute in the
    backward pass) runs the same optimization as 'no checkpointing': the same losses and gradient norms at both
    iterations, up to float32 rounding."""
    engine = k_engine
    plain, recomputed = fam.checkpointed_runs(engine, build(engine), stack, CHAIN)
    print(f"\n[krea2 memory] {engine.info}: losses {[r['loss'][0] for r in plain]} (no checkpointing) vs "
          f"{[r['loss'][0] for r in recomputed]} (checkpoint all)")


def test_a_run_leaves_nothing_on_comfyuis_objects(k_engine, stack):
    """As test_qwen_image's test of the same name, on the Krea 2 chain: per module of the DiT, the VAE and the rewards,
    the same attributes and per tensor the same object, values and flags; Wan 2.1's latent statistics restored."""
    fam.check_ksampler_run_leaves_nothing(k_engine, build(k_engine), stack, CHAIN, latent_statistics=True)


def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(k_engine, stack):
    """The shipped workflow (``WORKFLOW``) as Queue sends it (the frontend's graphToPrompt), with its three loaders
    swapped for the tiny family (diffusion model and VAE) and the tiny text encoder, at 64 px and 2 iterations: it
    executes, and ReNO Sampler ran the template's chain (8 steps of euler / simple at cfg 1 on the model as loaded, a
    zeroed negative, EmptyLatentImage)."""
    engine = k_engine
    prompt, ids = fam.workflow_prompt(engine, WORKFLOW)
    # the template's graph (image_krea2_turbo_t2i's subgraph, its prompt enhancement and style LoRA left out)
    fam.assert_template_loaders(prompt, ids, unet="krea2_turbo_fp8_scaled.safetensors",
                                clip="qwen3vl_4b_fp8_scaled.safetensors", clip_type="krea2",
                                vae="qwen_image_vae.safetensors")
    fam.assert_prompt_typed_once(prompt, ids, "ReNOSampler")
    assert {k: prompt[ids["EmptyLatentImage"]]["inputs"][k] for k in ("width", "height")} == {"width": 1024,
                                                                                            "height": 1024}
    reno_inputs = prompt[ids["ReNOSampler"]]["inputs"]
    assert {k: reno_inputs[k] for k in ("steps", "sampler_name", "scheduler", "cfg")} == {
        "steps": STEPS, "sampler_name": SAMPLER, "scheduler": SCHEDULER, "cfg": CHAIN.cfg}
    assert reno_inputs["model"] == [ids["UNETLoader"], 0]  # no ModelSampling node: Krea2's own shift
    assert reno_inputs["negative"] == [ids["ConditioningZeroOut"], 0]
    assert reno_inputs["latent_image"] == [ids["EmptyLatentImage"], 0]
    fam.swap_loaders_for_tiny(prompt, ids, "krea2")
    prompt[ids["EmptyLatentImage"]]["inputs"].update(width=SIDE, height=SIDE)
    reno_inputs["iterations"] = 2
    fam.execute_and_check(engine, prompt, ids)
