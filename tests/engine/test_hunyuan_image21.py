"""HunyuanImage 2.1 through ReNO Sampler, with ComfyUI's settings for it.

No ComfyUI template for HunyuanImage 2.1 is in the index (ComfyUI_examples' ``hunyuan_image`` page has its workflow
only inside a PNG), so the chain is ComfyUI's own defaults for the model, with the guidance scale HunyuanImage 2.1 is
run at: no ModelSampling patch (``supported_models.HunyuanImage21``'s shift 5), ``EmptyHunyuanImageLatent`` (64
channels, 32x), CLIP Text Encode of an empty negative prompt, KSampler's defaults (20 steps, ``euler`` / ``simple``) at
cfg 3.5 (HunyuanImage 2.1's guidance scale).

The model: a tiny random-weight ``comfy.supported_models.HunyuanImage21`` (``comfy/ldm/hunyuan_video``'s DiT with a
2-D 1x1 patch embed over 64 channels, the ByT5 glyph mapper, 2 heads of 128, one double and one single block) from the
fixture pack (``ReNOTestTinyFamily`` family ``hunyuan_image21``), text features of Qwen2.5-VL-7B's width (3584), and
the HunyuanImage 2.1 VAE (32x, 64 latent channels) that ``comfy.sd.VAE`` detects from its weights, at tiny widths.
(a) Oracle: ReNO Sampler at one iteration (no update) equals that KSampler, latent and decoded image. (b) The VAE's
decode carries the gradient to the latent. (c) The weighted reward (the paper's mix) rises over 6 iterations. (d) The
run leaves nothing on ComfyUI's objects. (e) The shipped workflow (``WORKFLOW``) runs on the tiny weights. The numbers
are printed (pytest -s).
"""

from __future__ import annotations

import family_support as fam
import torch

STEPS, SAMPLER, SCHEDULER, SHIFT, CFG, SIDE, SEED = 20, "euler", "simple", 5.0, 3.5, 64, 3
CHAIN = fam.Chain(STEPS, SAMPLER, SCHEDULER, cfg=CFG, seed=SEED)
LATENT_SHAPE = (1, 64, SIDE // 32, SIDE // 32)
WORKFLOW = "ReNO 25 HunyuanImage 2.1, 20 steps.json"


#: the engine with EmptyHunyuanImageLatent (comfy_extras/nodes_hunyuan.py)
y_engine, stack = fam.family_fixtures("y_engine", "hunyuan_image21", extra_nodes="nodes_hunyuan.py",
                                      needs=("EmptyHunyuanImageLatent",))


def build(engine):
    """The chain's graph up to the sampler, on the tiny family."""
    model, vae, pos, neg = fam.tiny_family(engine, "hunyuan_image21", negative_text="")
    return dict(model=model, vae=vae, positive=pos, negative=neg,
                latent_image=fam.empty_latent(engine, "EmptyHunyuanImageLatent", SIDE))


def test_the_tiny_model_is_hunyuan_image21_as_comfyui_loads_it(y_engine):
    import comfy.latent_formats
    import comfy.supported_models

    parts = build(y_engine)
    inner = parts["model"].model
    assert type(inner.model_config) is comfy.supported_models.HunyuanImage21
    # real key names: ComfyUI's own detection reads the tiny weights as HunyuanImage21 with the fixture's config
    fam.assert_detected_as(y_engine, inner, "hunyuan_image21", comfy.supported_models.HunyuanImage21,
                           ("image_model", "in_channels", "out_channels", "patch_size", "vec_in_dim", "axes_dim",
                            "context_in_dim", "hidden_size", "num_heads", "depth", "depth_single_blocks", "theta",
                            "byt5", "guidance_embed", "meanflow"))
    dm = inner.diffusion_model
    assert type(dm).__name__ == "HunyuanVideo" and dm.vector_in is None and dm.byt5_in is not None
    assert tuple(dm.img_in.proj.weight.shape) == (256, 64, 1, 1)  # the 2-D 1x1 patch embed over 64 channels
    assert isinstance(inner.latent_format, comfy.latent_formats.HunyuanImage21)
    assert float(parts["model"].get_model_object("model_sampling").shift) == SHIFT  # the model's own, no patch
    vae = parts["vae"]
    first = vae.first_stage_model
    assert type(first).__name__ == "AutoencodingEngine" and type(first.decoder).__module__ == (
        "comfy.ldm.hunyuan_video.vae")
    assert vae.latent_channels == 64 and vae.downscale_ratio == vae.upscale_ratio == 32
    assert parts["latent_image"]["samples"].shape == LATENT_SHAPE
    (positive, extra), = parts["positive"]
    assert positive.shape[-1] == 3584 and extra["attention_mask"].shape == positive.shape[:2]
    assert not torch.equal(positive, parts["negative"][0][0])  # the negative is CLIP Text Encode's, not zeroed


def test_oracle_one_iteration_equals_comfyuis_ksampler(y_engine, stack):
    fam.check_ksampler_oracle(y_engine, build(y_engine), stack, CHAIN, "hunyuan-image-2.1",
                              f"{STEPS} steps {SAMPLER}/{SCHEDULER} cfg {CFG}, shift {SHIFT}",
                              latent_shape=LATENT_SHAPE, image_shape=(1, SIDE, SIDE, 3))


def test_the_vae_decode_carries_the_gradient_to_the_latent(y_engine):
    parts = build(y_engine)
    fam.check_vae_gradient(y_engine, parts["vae"], LATENT_SHAPE, SIDE, "hunyuan-image-2.1", away_from_clamp=True)


def test_the_weighted_reward_rises_over_six_iterations(y_engine, stack):
    fam.check_reward_rises(y_engine, build(y_engine), stack, CHAIN, "hunyuan-image-2.1")


def test_a_run_leaves_nothing_on_comfyuis_objects(y_engine, stack):
    """As test_z_image's test of the same name, on this chain (20 steps of euler at cfg 3.5): per module of the
    HunyuanImage DiT, the VAE and the rewards, the same attributes and per tensor the same object, values and flags."""
    fam.check_ksampler_run_leaves_nothing(y_engine, build(y_engine), stack, CHAIN)


def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(y_engine, stack):
    """The shipped workflow (``WORKFLOW``) as Queue sends it (the frontend's graphToPrompt), with its loaders swapped
    for the tiny family (diffusion model and VAE) and the tiny text encoder (for DualCLIPLoader's Qwen2.5-VL-7B and
    byT5), at 64 px and 2 iterations: it executes, and ReNO Sampler ran this chain (20 steps of euler / simple at cfg
    3.5 on the model as loaded, CLIP Text Encode of an empty negative, EmptyHunyuanImageLatent)."""
    engine = y_engine
    prompt, ids = fam.workflow_prompt(engine, WORKFLOW, ignore=("CLIPTextEncode",))
    # ComfyUI's defaults for the model (no template): the repackaged files, the prompt typed once, the negative empty
    assert prompt[ids["UNETLoader"]]["inputs"]["unet_name"] == "hunyuanimage2.1_fp8_e4m3fn.safetensors"
    assert {k: prompt[ids["DualCLIPLoader"]]["inputs"][k] for k in ("clip_name1", "clip_name2", "type")} == {
        "clip_name1": "qwen_2.5_vl_7b_fp8_scaled.safetensors", "clip_name2": "byt5_small_glyphxl_fp16.safetensors",
        "type": "hunyuan_image"}
    assert prompt[ids["VAELoader"]]["inputs"]["vae_name"] == "hunyuan_image_2.1_vae_fp16.safetensors"
    reno_inputs = prompt[ids["ReNOSampler"]]["inputs"]
    assert {k: reno_inputs[k] for k in ("steps", "sampler_name", "scheduler", "cfg")} == {
        "steps": STEPS, "sampler_name": SAMPLER, "scheduler": SCHEDULER, "cfg": CFG}
    assert reno_inputs["model"] == [ids["UNETLoader"], 0]  # no ModelSampling node: the model's own shift
    pos, neg = prompt[reno_inputs["positive"][0]]["inputs"], prompt[reno_inputs["negative"][0]]["inputs"]
    assert pos["text"] == reno_inputs["prompt"] == [ids["PrimitiveStringMultiline"], 0]
    assert neg["text"] == "" and pos["clip"] == neg["clip"] == [ids["DualCLIPLoader"], 0]
    latent = prompt[ids["EmptyHunyuanImageLatent"]]["inputs"]
    assert reno_inputs["latent_image"] == [ids["EmptyHunyuanImageLatent"], 0]
    assert latent == {"width": 1024, "height": 1024, "batch_size": 1}  # not the 2048 default: ReNO at 2K needs ~118 GB
    # DualCLIPLoader's place taken by a CLIPLoader id for the swap: the tiny encoder gives both encoders' features
    ids["CLIPLoader"] = ids.pop("DualCLIPLoader")
    fam.swap_loaders_for_tiny(prompt, ids, "hunyuan_image21")
    latent.update(width=SIDE, height=SIDE)
    reno_inputs["iterations"] = 2
    fam.execute_and_check(engine, prompt, ids)
