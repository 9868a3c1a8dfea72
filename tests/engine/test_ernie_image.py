"""ERNIE-Image Turbo (ComfyUI's template ``image_ernie_image_turbo``, ComfyUI 0.33+) through ReNO Sampler, as the
template runs it.

The model: a tiny random-weight ``comfy.supported_models.ErnieImage`` (the shared-adaLN single-stream DiT of
``comfy/ldm/ernie``: one modulation for every layer, 3-axis RoPE with text first, ``ModelType.FLOW`` with multiplier
1000 and shift 3) from the fixture pack (``ReNOTestTinyFamily`` family ``ernie_image``), text features of
Ministral-3-3B's width (3072, the template's ``ministral-3-3b`` through CLIPLoader type ``flux2``), the FLUX.2 VAE
(``flux2-vae``, tiny: 32 channels patched 2x2 to 128). The template's chain (its prompt enhancer left out: the
template's switch is on, TextGenerate rewriting the prompt): the model as loaded (no ModelSampling patch), CLIP Text Encode with a ConditioningZeroOut negative,
EmptyFlux2LatentImage, KSampler 8 steps, cfg 1, ``euler`` / ``simple``. (a) Oracle: ReNO Sampler at one iteration
(no update) equals that KSampler, latent and decoded image. (b) The weighted reward (the paper's mix) rises over 6
iterations. (c) The run leaves nothing on ComfyUI's objects. (d) The split-half RoPE kernel ERNIE-Image calls in its
``in_training`` path has a backward for the run (the pack gives it one: without it the backward failed). (e) The shipped workflow
(``WORKFLOW``) runs on the tiny weights. On an engine
without ``ErnieImage`` (0.3.75) every test skips with the reason. The numbers are printed (pytest -s).
"""

from __future__ import annotations

import family_support as fam
import pytest

STEPS, SAMPLER, SCHEDULER, SHIFT, SIDE, SEED = 8, "euler", "simple", 3.0, 64, 3
CHAIN = fam.Chain(STEPS, SAMPLER, SCHEDULER, cfg=1.0, seed=SEED)
WORKFLOW = "ReNO 23 ERNIE-Image Turbo, 8 steps.json"


#: the engine with EmptyFlux2LatentImage (comfy_extras/nodes_flux.py), as test_workflows boots it
e_engine, stack = fam.family_fixtures("e_engine", "ernie_image", extra_nodes="nodes_flux.py",
                                      needs=("EmptyFlux2LatentImage",))


def build(engine):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, _ = fam.tiny_family(engine, "ernie_image")
    return dict(model=model, vae=vae, positive=pos, negative=fam.zero_out(engine, pos),
                latent_image=fam.empty_latent(engine, "EmptyFlux2LatentImage", SIDE))


def test_the_tiny_model_is_ernie_image_as_the_template_loads_it(e_engine):
    import comfy.latent_formats
    import comfy.ldm.models.autoencoder
    import comfy.supported_models

    parts = build(e_engine)
    inner = parts["model"].model
    assert type(inner.model_config) is comfy.supported_models.ErnieImage
    # real key names: ComfyUI's own detection reads the tiny weights as ErnieImage (its detection reads no sizes:
    # the real model's are ErnieImageModel's defaults)
    fam.assert_detected_as(e_engine, inner, "ernie_image", comfy.supported_models.ErnieImage, ("image_model",))
    dm = inner.diffusion_model
    assert type(dm).__name__ == "ErnieImageModel" and dm.text_proj.in_features == 3072
    assert dm.x_embedder.proj.in_channels == 128 and dm.patch_size == 1 and dm.head_dim == 128
    assert isinstance(inner.latent_format, comfy.latent_formats.Flux2)
    ms = parts["model"].get_model_object("model_sampling")
    # ErnieImage's own (ModelType.FLOW: multiplier 1000, shift 3); the template patches nothing
    assert float(ms.shift) == pytest.approx(SHIFT) and float(ms.multiplier) == 1000.0
    vae = parts["vae"]
    first = vae.first_stage_model
    assert type(first) is comfy.ldm.models.autoencoder.AutoencoderKL and first.bn is not None  # the FLUX.2 VAE
    assert vae.latent_channels == 128 and vae.downscale_ratio == vae.upscale_ratio == 16
    assert parts["latent_image"]["samples"].shape == (1, 128, SIDE // 16, SIDE // 16)
    assert parts["positive"][0][0].shape[-1] == 3072 and "attention_mask" in parts["positive"][0][1]


def test_oracle_one_iteration_equals_the_templates_ksampler(e_engine, stack):
    fam.check_ksampler_oracle(e_engine, build(e_engine), stack, CHAIN, "ernie_image",
                              f"{STEPS} steps {SAMPLER}/{SCHEDULER}", latent_shape=(1, 128, SIDE // 16, SIDE // 16),
                              image_shape=(1, SIDE, SIDE, 3))


def test_the_weighted_reward_rises_over_six_iterations(e_engine, stack):
    fam.check_reward_rises(e_engine, build(e_engine), stack, CHAIN, "ernie_image")


def test_a_run_leaves_nothing_on_comfyuis_objects(e_engine, stack):
    """As test_qwen_image's test of the same name, on the ERNIE-Image chain: per module of the DiT, the FLUX.2 VAE and
    the rewards, the same attributes and per tensor the same object, values and flags."""
    import comfy.quant_ops

    kitchen = getattr(comfy.quant_ops, "ck", None)
    fam.check_ksampler_run_leaves_nothing(e_engine, build(e_engine), stack, CHAIN)
    assert getattr(comfy.quant_ops, "ck", None) is kitchen  # the run's differentiable RoPE kernels are gone


def _split_half_formula(x, freqs):
    """comfy-kitchen's split-half RoPE as its docstring writes it, in plain torch: each pair (k, k + d/2) of x times the
    2x2 matrix freqs[..., k, :, :]."""
    t = x.reshape(*x.shape[:-1], 2, -1).movedim(-2, -1).unsqueeze(-2).to(freqs.dtype)
    out = freqs[..., 0] * t[..., 0] + freqs[..., 1] * t[..., 1]
    return out.movedim(-1, -2).reshape(*x.shape).type_as(x)


def test_the_split_half_rope_kernel_gets_a_backward_for_the_run(e_engine):
    """ERNIE-Image's in_training path calls comfy-kitchen's ``apply_rope_split_half`` kernel, which has no autograd
    formula (the control: its backward fails). During a run (``host.training_mode``) ``comfy.quant_ops.ck`` gives it a
    backward (``host.split_half_rope_with_backward``): the forward is the kernel's own, the gradient equals autograd
    through the kernel's documented formula for arbitrary (not only rotation) matrices, and ``ck`` is restored."""
    import comfy.quant_ops
    import torch
    from engine_support import pack_module

    host = pack_module(e_engine).nodes.host
    ck = comfy.quant_ops.ck
    gen = torch.Generator().manual_seed(5)
    q, k = (torch.randn(2, 6, 2, 128, generator=gen) for _ in range(2))
    freqs = torch.randn(2, 6, 1, 64, 2, 2, generator=gen)
    weights = [torch.randn(q.shape, generator=gen) for _ in range(2)]

    def gradients(rope):
        xq, xk = q.clone().requires_grad_(True), k.clone().requires_grad_(True)
        out = rope(xq, xk)
        sum((o * w).sum() for o, w in zip(out, weights)).backward()
        return [o.detach() for o in out], xq.grad, xk.grad

    with pytest.raises(RuntimeError, match="no autograd formula"):
        gradients(lambda a, b: ck.apply_rope_split_half(a, b, freqs))
    with host.training_mode():
        assert comfy.quant_ops.ck is not ck
        out, gq, gk = gradients(lambda a, b: comfy.quant_ops.ck.apply_rope_split_half(a, b, freqs))
    assert comfy.quant_ops.ck is ck
    with torch.no_grad():
        assert all(torch.equal(o, r) for o, r in zip(out, ck.apply_rope_split_half(q, k, freqs)))
    want_out, want_q, want_k = gradients(lambda a, b: (_split_half_formula(a, freqs), _split_half_formula(b, freqs)))
    for got, want in ((gq, want_q), (gk, want_k), *zip(out, want_out)):
        # the same products, summed in another order at most: float32 rounding of the values' scale
        assert torch.allclose(got, want, rtol=0, atol=64 * fam.EPS32 * float(want.abs().max()))


def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(e_engine, stack):
    """The shipped workflow (``WORKFLOW``) as Queue sends it (the frontend's graphToPrompt), with its three loaders
    swapped for the tiny family (diffusion model and VAE) and the tiny text encoder, at 64 px and 2 iterations: it
    executes, and ReNO Sampler ran the template's chain (8 steps of euler / simple at cfg 1 on the model as loaded, a
    zeroed negative, EmptyFlux2LatentImage)."""
    engine = e_engine
    prompt, ids = fam.workflow_prompt(engine, WORKFLOW)
    # the template's graph (image_ernie_image_turbo's subgraph, its prompt enhancer left out)
    fam.assert_template_loaders(prompt, ids, unet="ernie-image-turbo.safetensors", clip="ministral-3-3b.safetensors",
                                clip_type="flux2", vae="flux2-vae.safetensors")
    fam.assert_prompt_typed_once(prompt, ids, "ReNOSampler")
    latent = prompt[ids["EmptyFlux2LatentImage"]]["inputs"]
    assert {k: latent[k] for k in ("width", "height")} == {"width": 1024, "height": 1024}
    reno_inputs = prompt[ids["ReNOSampler"]]["inputs"]
    assert {k: reno_inputs[k] for k in ("steps", "sampler_name", "scheduler", "cfg")} == {
        "steps": STEPS, "sampler_name": SAMPLER, "scheduler": SCHEDULER, "cfg": CHAIN.cfg}
    assert reno_inputs["model"] == [ids["UNETLoader"], 0]  # no ModelSampling node: ERNIE-Image's own shift
    assert reno_inputs["negative"] == [ids["ConditioningZeroOut"], 0]
    assert reno_inputs["latent_image"] == [ids["EmptyFlux2LatentImage"], 0]
    fam.swap_loaders_for_tiny(prompt, ids, "ernie_image")
    latent.update(width=SIDE, height=SIDE)
    reno_inputs["iterations"] = 2
    fam.execute_and_check(engine, prompt, ids)
