"""Qwen-Image with a 2-step LoRA (ComfyUI's template ``image_qwen_image_2512_with_2steps_lora``) through ReNO Sampler.

The model: a tiny random-weight ``comfy.supported_models.QwenImage`` (the MMDiT of ``comfy/ldm/qwen_image``) from the
fixture pack (``ReNOTestTinyFamily`` family ``qwen_image``), text features of Qwen2.5-VL-7B's width, the Qwen-Image
VAE (Wan 2.1's causal 3-D ``WanVAE`` with its feature cache, detected by ``comfy.sd.VAE``), a tiny LoRA in the
Qwen-Image Lightning layout loaded by core LoraLoaderModelOnly. The template's chain: LoRA at strength 1,
ModelSamplingAuraFlow shift 3, ConditioningZeroOut negative, EmptySD3LatentImage, KSampler 2 steps, cfg 1, ``euler`` /
``simple``. (a) Oracle: ReNO Sampler at one iteration (no update) equals that KSampler, latent and decoded image.
(b) The VAE decode carries the gradient to the latent (autograd against a central difference). (c) The weighted
reward (the paper's mix) rises over 6 iterations. (d) The run leaves nothing on ComfyUI's objects. The numbers are
printed (pytest -s).
"""

from __future__ import annotations

from pathlib import Path

import family_support as fam
import pytest
from engine_support import fixture_families, pack_module

STEPS, SAMPLER, SCHEDULER, SHIFT, SIDE, SEED = 2, "euler", "simple", 3.0, 64, 3
CHAIN = fam.Chain(STEPS, SAMPLER, SCHEDULER, cfg=1.0, seed=SEED)
WORKFLOW = "ReNO 03 Qwen-Image, Lightning 2 steps.json"
#: the template's LoRA file name: the tiny LoRA is written under it, so the shipped workflow loads it unchanged
LORA = "Wuli-Qwen-Image-2512-Turbo-LoRA-2steps-V1.0-bf16.safetensors"


#: the engine with ModelSamplingAuraFlow (comfy_extras/nodes_model_advanced.py), as test_workflows boots it
q_engine, stack = fam.family_fixtures("q_engine", "qwen_image", extra_nodes="nodes_model_advanced.py")


@pytest.fixture(scope="module")
def lora_file(q_engine):
    """The tiny LoRA in the engine's loras folder (under the template's file name) and its state dict."""
    engine = q_engine
    (model, *_) = fam.tiny_family(engine, "qwen_image", text="")
    folder = Path(engine.folder_paths.get_folder_paths("loras")[0])
    assert engine.workdir in folder.parents, f"loras folder {folder} is outside the test workdir"
    return fixture_families(engine).write_qwen_lightning_lora(model, folder / LORA)


def build(engine, lora_file):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, _ = fam.tiny_family(engine, "qwen_image")
    (model,) = engine.call_node("LoraLoaderModelOnly", inference=True, model=model, lora_name=lora_file[0].name,
                                strength_model=1.0)
    model = fam.aura_flow(engine, model, SHIFT)
    return dict(model=model, vae=vae, positive=pos, negative=fam.zero_out(engine, pos),
                latent_image=fam.empty_latent(engine, "EmptySD3LatentImage", SIDE))


def test_the_tiny_model_is_qwen_image_as_the_template_loads_it(q_engine, lora_file):
    import comfy.latent_formats
    import comfy.ldm.wan.vae
    import comfy.lora
    import comfy.supported_models

    parts = build(q_engine, lora_file)
    patcher = parts["model"]
    inner = patcher.model
    assert type(inner.model_config) is comfy.supported_models.QwenImage
    dm = inner.diffusion_model
    assert type(dm).__name__ == "QwenImageTransformer2DModel" and dm.txt_in.in_features == 3584
    assert isinstance(inner.latent_format, comfy.latent_formats.Wan21)
    fam.assert_aura_flow_shift(patcher, SHIFT)
    # every module of the LoRA file maps onto the model (nothing silently dropped) and LoraLoaderModelOnly patched them
    path, sd = lora_file
    modules = {k[: -len(".lora_up.weight")] for k in sd if k.endswith(".lora_up.weight")}
    patches = comfy.lora.load_lora(sd, comfy.lora.model_lora_keys_unet(inner, {}))
    # per block: q, k, v, out of both streams (8), both modulations (2), both MLPs (4)
    assert len(modules) == 14 and len(patches) == len(modules), (len(patches), len(modules))
    assert len(patcher.patches) == len(modules)
    vae = parts["vae"]
    assert type(vae.first_stage_model) is comfy.ldm.wan.vae.WanVAE and vae.latent_dim == 3  # detected, Wan 2.1
    assert parts["latent_image"]["samples"].shape == (1, 16, SIDE // 8, SIDE // 8)


def test_oracle_one_iteration_equals_the_templates_ksampler(q_engine, stack, lora_file):
    # ComfyUI samples Qwen-Image in 5-D (one frame: fix_empty_latent_channels) and VAE Decode folds frames into the batch
    fam.check_ksampler_oracle(q_engine, build(q_engine, lora_file), stack, CHAIN, "qwen-image",
                              f"{STEPS} steps {SAMPLER}/{SCHEDULER} with the LoRA",
                              latent_shape=(1, 16, 1, SIDE // 8, SIDE // 8), image_shape=(1, SIDE, SIDE, 3))


def test_the_qwen_image_vae_decode_carries_the_gradient_to_the_latent(q_engine, lora_file):
    """The pack's decode (``decode_with_grad``) through the causal 3-D VAE and its feature cache (one frame): the
    autograd directional derivative equals a central difference of the decode (float32), and the image is VAE
    Decode's."""
    parts = build(q_engine, lora_file)
    fam.check_vae_gradient(q_engine, parts["vae"], (1, 16, 1, SIDE // 8, SIDE // 8), SIDE, "qwen-image")


def test_the_weighted_reward_rises_over_six_iterations(q_engine, stack, lora_file):
    fam.check_reward_rises(q_engine, build(q_engine, lora_file), stack, CHAIN, "qwen-image")


def test_recomputing_every_part_gives_the_same_run(q_engine, stack, lora_file):
    """memory 'checkpoint all' (the MMDiT's steps, the rewards and what the pack finds as the Wan 2.1 decoder's blocks
    recompute in the backward pass) runs the same optimization as 'no checkpointing': the same losses and gradient
    norms at both iterations, up to float32 rounding (the second's loss follows from the first's gradient). (Today the decoder's blocks found are only its three
    parameter-free ``Upsample`` modules, printed: its causal ``ResidualBlock``s, which read and write the feature cache
    as they run, are not recomputed, so the Qwen-Image VAE's activations are kept whatever the memory mode.)"""
    engine = q_engine
    parts = build(engine, lora_file)
    plain, recomputed = fam.checkpointed_runs(engine, parts, stack, CHAIN)
    blocks = pack_module(engine).nodes.memory.vae_blocks(parts["vae"])
    print(f"\n[qwen-image memory] {engine.info}: {len(blocks)} decoder blocks ({sorted({type(b).__name__ for b in blocks})}); losses {[r['loss'][0] for r in plain]} (no checkpointing) vs "
          f"{[r['loss'][0] for r in recomputed]} (checkpoint all)")


def test_a_run_leaves_nothing_on_comfyuis_objects(q_engine, stack, lora_file):
    """As test_z_image's test of the same name, on the Qwen-Image chain (the LoRA patched in, the 3-D VAE): per module
    of the MMDiT, the VAE and the rewards, the same attributes and per tensor the same object, values and flags."""
    # the first run: ComfyUI's own first-load bookkeeping (LoRA patching) happens there
    fam.check_ksampler_run_leaves_nothing(q_engine, build(q_engine, lora_file), stack, CHAIN, latent_statistics=True)


def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(q_engine, stack, lora_file):
    """The shipped workflow (``WORKFLOW``) as Queue sends it (the frontend's graphToPrompt), with its three loaders
    swapped for the tiny family (diffusion model and VAE) and the tiny text encoder, the tiny LoRA under the
    template's LoRA name, at 64 px and 2 iterations: it executes, and ReNO Sampler ran the template's chain."""
    engine = q_engine
    prompt, ids = fam.workflow_prompt(engine, WORKFLOW)
    # the template's graph (image_qwen_image_2512_with_2steps_lora), the prompt typed once for CLIP Text Encode and ReNO
    fam.assert_template_loaders(prompt, ids, unet="qwen_image_2512_fp8_e4m3fn.safetensors",
                                clip="qwen_2.5_vl_7b_fp8_scaled.safetensors", clip_type="qwen_image",
                                vae="qwen_image_vae.safetensors")
    lora = prompt[ids["LoraLoaderModelOnly"]]["inputs"]
    assert lora["lora_name"] == LORA and lora["strength_model"] == 1.0 and lora["model"] == [ids["UNETLoader"], 0]
    sampling = prompt[ids["ModelSamplingAuraFlow"]]["inputs"]
    assert sampling["shift"] == SHIFT and sampling["model"] == [ids["LoraLoaderModelOnly"], 0]
    fam.run_ksampler_workflow_on_tiny(engine, prompt, ids, "qwen_image", CHAIN, template_side=1328)
