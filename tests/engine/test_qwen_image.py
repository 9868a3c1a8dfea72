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

import comfy_host
import pytest
import torch
from engine_support import PROMPT_TEXT, fixture_families, pack_module, reward_stack

STEPS, SAMPLER, SCHEDULER, SHIFT, SIDE, SEED = 2, "euler", "simple", 3.0, 64, 3
PAPER_MIX = (("imagereward", 1.0), ("hpsv2.1", 5.0), ("pickscore", 0.05), ("clipscore", 0.01))
EPS32 = torch.finfo(torch.float32).eps
WORKFLOW = "ReNO 03 Qwen-Image, Lightning 2 steps.json"
#: the template's LoRA file name: the tiny LoRA is written under it, so the shipped workflow loads it unchanged
LORA = "Wuli-Qwen-Image-2512-Turbo-LoRA-2steps-V1.0-bf16.safetensors"


@pytest.fixture(scope="module")
def q_engine(engine):
    """The engine with ModelSamplingAuraFlow (comfy_extras/nodes_model_advanced.py), as test_workflows boots it."""
    if (engine.host.root / "comfy_extras" / "nodes_model_advanced.py").is_file():
        comfy_host.boot_engine(engine.host, (), extra_nodes=["nodes_model_advanced.py"])
    reason = fixture_families(engine).family_unavailable("qwen_image")
    if reason:
        pytest.skip(reason)
    return engine


@pytest.fixture(scope="module")
def stack(q_engine):
    return reward_stack(q_engine, PAPER_MIX)


@pytest.fixture(scope="module")
def lora_file(q_engine):
    """The tiny LoRA in the engine's loras folder (under the template's file name) and its state dict."""
    engine = q_engine
    (model, *_) = engine.call_node("ReNOTestTinyFamily", inference=True, family="qwen_image", transformer_depth=1,
                                   seed=0, text="", negative_text="")
    folder = Path(engine.folder_paths.get_folder_paths("loras")[0])
    assert engine.workdir in folder.parents, f"loras folder {folder} is outside the test workdir"
    return fixture_families(engine).write_qwen_lightning_lora(model, folder / LORA)


def build(engine, lora_file):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, _ = engine.call_node("ReNOTestTinyFamily", inference=True, family="qwen_image",
                                          transformer_depth=1, seed=0, text=PROMPT_TEXT, negative_text="")
    (model,) = engine.call_node("LoraLoaderModelOnly", inference=True, model=model, lora_name=lora_file[0].name,
                                strength_model=1.0)
    (model,) = engine.call_node("ModelSamplingAuraFlow", inference=True, model=model, shift=SHIFT)
    (neg,) = engine.call_node("ConditioningZeroOut", inference=True, conditioning=pos)
    (latent,) = engine.call_node("EmptySD3LatentImage", inference=True, width=SIDE, height=SIDE, batch_size=1)
    return dict(model=model, vae=vae, positive=pos, negative=neg, latent_image=latent)


def reno(engine, parts, stack, *, iterations, lr=5.0, memory=None):
    extra = {"memory": memory} if memory else {}
    return engine.call_node("ReNOSampler", inference=True, **parts, rewards=stack, prompt=PROMPT_TEXT, seed=SEED,
                            iterations=iterations, learning_rate=lr, cfg=1.0, regularization=0.01, grad_clip=0.1,
                            steps=STEPS, sampler_name=SAMPLER, scheduler=SCHEDULER, **extra)["result"]


def ksampler(engine, parts, seed=SEED):
    (ks,) = engine.call_node("KSampler", inference=True, model=parts["model"], seed=seed, steps=STEPS, cfg=1.0,
                             sampler_name=SAMPLER, scheduler=SCHEDULER, positive=parts["positive"],
                             negative=parts["negative"], latent_image=parts["latent_image"], denoise=1.0)
    return ks


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
    ms = patcher.get_model_object("model_sampling")
    assert float(ms.shift) == SHIFT and float(ms.multiplier) == 1.0  # ModelSamplingAuraFlow's patch
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
    engine = q_engine
    parts = build(engine, lora_file)
    latent, image, history = reno(engine, parts, stack, iterations=1)
    ks = ksampler(engine, parts)
    (ks_image,) = engine.call_node("VAEDecode", inference=True, samples=ks, vae=parts["vae"])
    # ComfyUI samples Qwen-Image in 5-D (one frame: fix_empty_latent_channels) and VAE Decode folds frames into the batch
    assert latent["samples"].shape == ks["samples"].shape == (1, 16, 1, SIDE // 8, SIDE // 8)
    assert image.shape == ks_image.shape == (1, SIDE, SIDE, 3)
    err_latent = float((latent["samples"].float() - ks["samples"].float()).abs().max())
    err_image = float((image.float() - ks_image.float()).abs().max())
    bound_latent = max(1e-5, 256 * EPS32 * float(ks["samples"].abs().max()))
    bound_image = max(1e-5, 256 * EPS32)
    print(f"\n[qwen-image oracle] {engine.info}: {STEPS} steps {SAMPLER}/{SCHEDULER} with the LoRA: max abs error latent "
          f"{err_latent:.3g} (bound {bound_latent:.3g}, max |latent| {float(ks['samples'].abs().max()):.3g}), image "
          f"{err_image:.3g} (bound {bound_image:.3g})")
    assert history.iterations == 1
    assert err_latent <= bound_latent and err_image <= bound_image


def test_the_qwen_image_vae_decode_carries_the_gradient_to_the_latent(q_engine, lora_file):
    """The pack's decode (``decode_with_grad``) through the causal 3-D VAE and its feature cache (one frame): the
    autograd directional derivative equals a central difference of the decode (float32), and the image is VAE
    Decode's."""
    engine = q_engine
    parts = build(engine, lora_file)
    pack = pack_module(engine)
    decode_with_grad = pack.nodes.lifecycle.decode_with_grad
    vae = parts["vae"]
    gen = torch.Generator().manual_seed(11)
    z = torch.randn(1, 16, 1, SIDE // 8, SIDE // 8, generator=gen)
    direction = torch.randn(z.shape, generator=gen)
    weight = torch.rand(1, 3, SIDE, SIDE, generator=gen)
    # the VAE's weights were made under the executor's inference mode: swapped for normal views, as a run does
    with torch.inference_mode(False), torch.enable_grad(), pack.nodes.autograd.normal_tensors([vae.first_stage_model]):
        x = z.clone().requires_grad_(True)
        image = decode_with_grad(vae, x)
        (image * weight).sum().backward()
        analytic = float((x.grad * direction).sum())
        with torch.no_grad():
            h = 1e-2
            plus = float((decode_with_grad(vae, z + h * direction) * weight).sum())
            minus = float((decode_with_grad(vae, z - h * direction) * weight).sum())
    numeric = (plus - minus) / (2 * h)
    (host_image,) = engine.call_node("VAEDecode", inference=True, samples={"samples": z}, vae=vae)
    err_host = float((image.detach().movedim(1, -1) - host_image.float()).abs().max())
    print(f"\n[qwen-image vae] {engine.info}: d(decode)/dz along a direction: autograd {analytic:.6g}, central "
          f"difference {numeric:.6g}; image vs VAE Decode {err_host:.3g}")
    assert image.shape == (1, 3, SIDE, SIDE) and float(x.grad.abs().max()) > 0
    assert abs(analytic - numeric) <= 1e-2 * max(1.0, abs(numeric))
    assert err_host <= 1e-5


def test_the_weighted_reward_rises_over_six_iterations(q_engine, stack, lora_file):
    engine = q_engine
    parts = build(engine, lora_file)
    _, _, history = reno(engine, parts, stack, iterations=6)
    first = history.records[0]
    assert first["grad_norm"][0] is not None and first["grad_norm"][0] > 0, "no gradient reached the noise"
    initial, best = first["loss"][0], history.best_loss[0]
    total = history.chart()["series"][0]["weighted_total"]  # sum of weight x score, the paper's mix
    print(f"\n[qwen-image reward] {engine.info}: weighted reward per iteration {[round(v, 4) for v in total]} (gain "
          f"{total[-1] - total[0]:.4f}); loss {initial:.4f} -> best {best:.4f} at iteration {history.best_iteration[0]}")
    assert history.best_iteration[0] > 0 and best < initial
    assert total[-1] > total[0] and total[history.best_iteration[0]] > total[0]


def test_recomputing_every_part_gives_the_same_run(q_engine, stack, lora_file):
    """memory 'checkpoint all' (the MMDiT's steps, the rewards and what the pack finds as the Wan 2.1 decoder's blocks
    recompute in the backward pass) runs the same optimization as 'no checkpointing': the same losses and gradient
    norms at both iterations, up to float32 rounding (the second's loss follows from the first's gradient). (Today the decoder's blocks found are only its three
    parameter-free ``Upsample`` modules, printed: its causal ``ResidualBlock``s, which read and write the feature cache
    as they run, are not recomputed, so the Qwen-Image VAE's activations are kept whatever the memory mode.)"""
    engine = q_engine
    parts = build(engine, lora_file)
    runs = {m: reno(engine, parts, stack, iterations=2, memory=m)[2] for m in ("no checkpointing", "checkpoint all")}
    plain, recomputed = runs["no checkpointing"], runs["checkpoint all"]
    for a, b in zip(plain.records, recomputed.records):
        assert a["loss"][0] == pytest.approx(b["loss"][0], rel=1e-5, abs=1e-6), (a["iteration"], a["loss"], b["loss"])
        if a["grad_norm"]:
            assert a["grad_norm"][0] == pytest.approx(b["grad_norm"][0], rel=1e-4), (a["grad_norm"], b["grad_norm"])
    blocks = pack_module(engine).nodes.memory.vae_blocks(parts["vae"])
    print(f"\n[qwen-image memory] {engine.info}: {len(blocks)} decoder blocks ({sorted({type(b).__name__ for b in blocks})}); losses {[r['loss'][0] for r in plain.records]} (no checkpointing) vs "
          f"{[r['loss'][0] for r in recomputed.records]} (checkpoint all)")


def test_a_run_leaves_nothing_on_comfyuis_objects(q_engine, stack, lora_file):
    """As test_z_image's test of the same name, on the Qwen-Image chain (the LoRA patched in, the 3-D VAE): per module
    of the MMDiT, the VAE and the rewards, the same attributes and per tensor the same object, values and flags."""
    engine = q_engine
    parts = build(engine, lora_file)
    reno(engine, parts, stack, iterations=1)  # ComfyUI's own first-load bookkeeping (LoRA patching) happens here
    modules = {"unet": parts["model"].model, "vae": parts["vae"].first_stage_model,
               **{f"reward{k}": r.model for k, r in enumerate(stack)}}
    before = {(k, f"{mn}.{n}"): (t, t.is_inference(), t.detach().clone())
              for k, m in modules.items() for mn, mod in m.named_modules()
              for table in ("_parameters", "_buffers") for n, t in getattr(mod, table).items() if t is not None}
    attributes = {(k, name): (set(mod.__dict__), {n: id(v) for n, v in mod.__dict__.items() if not n.startswith("_")})
                  for k, m in modules.items() for name, mod in m.named_modules()}
    flags = {(k, n): (t.requires_grad, t.is_inference())
             for k, m in modules.items() for n, t in [*m.named_parameters(), *m.named_buffers()]}
    model_attrs = set(parts["model"].__dict__)
    # Wan 2.1's latent format holds its statistics as tensors made under inference mode: swapped during the run
    fmt = parts["model"].model.latent_format
    fmt_tensors = {n: (v, v.is_inference()) for n, v in vars(fmt).items() if isinstance(v, torch.Tensor)}
    assert {"latents_mean", "latents_std"} <= set(fmt_tensors)
    ksampler(engine, parts, seed=0)  # what ComfyUI's own sampling rewrites at every call is the baseline
    host_rewrites = {(k, name, n) for (k, name), (keys, values) in attributes.items()
                     for mod in [modules[k].get_submodule(name) if name else modules[k]]
                     for n, v in mod.__dict__.items() if not n.startswith("_") and values.get(n, id(v)) != id(v)}
    reno(engine, parts, stack, iterations=2)
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    for (k, name), (t, was_inference, values) in before.items():
        mod_name, _, attr = name.rpartition(".")
        now = getattr(modules[k].get_submodule(mod_name) if mod_name else modules[k], attr)
        assert now is t and now.is_inference() == was_inference, f"{k}:{name} not restored"
        assert torch.equal(now.detach(), values), f"{k}:{name} changed"
    for (k, name), (keys, values) in attributes.items():
        mod = modules[k].get_submodule(name) if name else modules[k]
        assert set(mod.__dict__) == keys, f"{k}:{name} gained or lost {set(mod.__dict__) ^ keys}"
        now = {n: id(v) for n, v in mod.__dict__.items() if not n.startswith("_") and (k, name, n) not in host_rewrites}
        assert now == {n: i for n, i in values.items() if (k, name, n) not in host_rewrites}, f"{k}:{name} changed"
    for k, m in modules.items():
        for n, t in [*m.named_parameters(), *m.named_buffers()]:
            assert (t.requires_grad, t.is_inference()) == flags[(k, n)], f"{k}:{n} flags changed"
    assert set(parts["model"].__dict__) == model_attrs
    assert {n: (v, v.is_inference()) for n, v in vars(fmt).items() if isinstance(v, torch.Tensor)} == fmt_tensors


def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(q_engine, stack, lora_file):
    """The shipped workflow (``WORKFLOW``) as Queue sends it (the frontend's graphToPrompt), with its three loaders
    swapped for the tiny family (diffusion model and VAE) and the tiny text encoder, the tiny LoRA under the
    template's LoRA name, at 64 px and 2 iterations: it executes, and ReNO Sampler ran the template's chain."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("_reno_test_workflows", Path(__file__).with_name("test_workflows.py"))
    test_workflows = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_workflows)
    engine = q_engine
    wf = json.loads((Path(__file__).resolve().parents[2] / "workflows" / WORKFLOW).read_text())
    prompt = test_workflows.to_api(wf, engine)
    ids = {node["class_type"]: i for i, node in prompt.items()}
    # the template's graph (image_qwen_image_2512_with_2steps_lora), the prompt typed once for CLIP Text Encode and ReNO
    assert prompt[ids["UNETLoader"]]["inputs"]["unet_name"] == "qwen_image_2512_fp8_e4m3fn.safetensors"
    assert {k: prompt[ids["CLIPLoader"]]["inputs"][k] for k in ("clip_name", "type")} == {
        "clip_name": "qwen_2.5_vl_7b_fp8_scaled.safetensors", "type": "qwen_image"}
    assert prompt[ids["VAELoader"]]["inputs"]["vae_name"] == "qwen_image_vae.safetensors"
    lora = prompt[ids["LoraLoaderModelOnly"]]["inputs"]
    assert lora["lora_name"] == LORA and lora["strength_model"] == 1.0 and lora["model"] == [ids["UNETLoader"], 0]
    sampling = prompt[ids["ModelSamplingAuraFlow"]]["inputs"]
    assert sampling["shift"] == SHIFT and sampling["model"] == [ids["LoraLoaderModelOnly"], 0]
    assert {k: prompt[ids["EmptySD3LatentImage"]]["inputs"][k] for k in ("width", "height")} == {
        "width": 1328, "height": 1328}
    text = [ids["PrimitiveStringMultiline"], 0]
    assert prompt[ids["CLIPTextEncode"]]["inputs"]["text"] == prompt[ids["ReNOSampler"]]["inputs"]["prompt"] == text
    assert prompt[ids["ConditioningZeroOut"]]["inputs"]["conditioning"] == [ids["CLIPTextEncode"], 0]
    unet, clip, vae = ids.pop("UNETLoader"), ids.pop("CLIPLoader"), ids.pop("VAELoader")
    prompt[unet] = {"class_type": "ReNOTestTinyFamily", "inputs": {"family": "qwen_image", "transformer_depth": 1,
                                                                   "seed": 0, "text": "", "negative_text": ""}}
    prompt[clip] = {"class_type": "ReNOTestTinyCLIP", "inputs": {"family": "qwen_image"}}
    del prompt[vae]
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] == vae:
                node["inputs"][name] = [unet, 1]
    prompt[ids["EmptySD3LatentImage"]]["inputs"].update(width=64, height=64)
    reno_inputs = prompt[ids["ReNOSampler"]]["inputs"]
    assert {k: reno_inputs[k] for k in ("steps", "sampler_name", "scheduler", "cfg")} == {
        "steps": STEPS, "sampler_name": SAMPLER, "scheduler": SCHEDULER, "cfg": 1.0}
    assert prompt[reno_inputs["model"][0]]["class_type"] == "ModelSamplingAuraFlow"
    assert prompt[reno_inputs["negative"][0]]["class_type"] == "ConditioningZeroOut"
    reno_inputs["iterations"] = 2
    res = engine.execute(prompt)
    res.raise_for_error()
    assert res.success and res.image_paths(ids["SaveImage"])
