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

from pathlib import Path

import comfy_host
import pytest
import torch
from engine_support import PROMPT_TEXT, first_iteration, fixture_families, pack_module, reward_stack

STEPS, SAMPLER, SIDE, SEED = 4, "euler", 64, 3
PAPER_MIX = (("imagereward", 1.0), ("hpsv2.1", 5.0), ("pickscore", 0.05), ("clipscore", 0.01))
EPS32 = torch.finfo(torch.float32).eps
WORKFLOW = "ReNO 04 FLUX.2 Klein, 4 steps.json"


@pytest.fixture(scope="module")
def f_engine(engine):
    """The engine with Flux2Scheduler and EmptyFlux2LatentImage (comfy_extras/nodes_flux.py), as test_workflows boots
    it."""
    if (engine.host.root / "comfy_extras" / "nodes_flux.py").is_file():
        comfy_host.boot_engine(engine.host, (), extra_nodes=["nodes_flux.py"])
    reason = fixture_families(engine).family_unavailable("flux2")
    if reason:
        pytest.skip(reason)
    missing = [c for c in ("Flux2Scheduler", "EmptyFlux2LatentImage", "SamplerCustomAdvanced", "CFGGuider")
               if c not in engine.nodes.NODE_CLASS_MAPPINGS]
    if missing:
        pytest.skip(f"{engine.info} has no {', '.join(missing)}")
    return engine


@pytest.fixture(scope="module")
def stack(f_engine):
    return reward_stack(f_engine, PAPER_MIX)


def build(engine):
    """The template's graph up to the sampler, on the tiny family."""
    model, vae, pos, _ = engine.call_node("ReNOTestTinyFamily", inference=True, family="flux2", transformer_depth=1,
                                          seed=0, text=PROMPT_TEXT, negative_text="")
    (neg,) = engine.call_node("ConditioningZeroOut", inference=True, conditioning=pos)
    (guider,) = engine.call_node("CFGGuider", inference=True, model=model, positive=pos, negative=neg, cfg=1.0)
    (sigmas,) = engine.call_node("Flux2Scheduler", inference=True, steps=STEPS, width=SIDE, height=SIDE)
    (latent,) = engine.call_node("EmptyFlux2LatentImage", inference=True, width=SIDE, height=SIDE, batch_size=1)
    (noise,) = engine.call_node("RandomNoise", inference=True, noise_seed=SEED)
    return dict(model=model, vae=vae, positive=pos, negative=neg, guider=guider, sigmas=sigmas, latent=latent,
                noise=noise)


def sample(engine, parts, sampler):
    out = engine.call_node("SamplerCustomAdvanced", inference=True, noise=parts["noise"], guider=parts["guider"],
                           sampler=sampler, sigmas=parts["sigmas"], latent_image=parts["latent"])
    return out[0]


def reno_sampler(engine, parts, stack, *, iterations, lr=5.0, memory=None):
    extra = {"memory": memory} if memory else {}
    (s,) = engine.call_node("ReNOSamplerCustom", inference=True, vae=parts["vae"], rewards=stack, prompt=PROMPT_TEXT,
                            iterations=iterations, learning_rate=lr, regularization=0.01, grad_clip=0.1,
                            sampler_name=SAMPLER, **extra)
    return s


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
    engine = f_engine
    parts = build(engine)
    (core,) = engine.call_node("KSamplerSelect", inference=True, sampler_name=SAMPLER)
    with first_iteration(engine) as first:
        got = sample(engine, parts, reno_sampler(engine, parts, stack, iterations=1))
    want = sample(engine, parts, core)
    (want_image,) = engine.call_node("VAEDecode", inference=True, samples=want, vae=parts["vae"])
    (got_image,) = engine.call_node("VAEDecode", inference=True, samples=got, vae=parts["vae"])
    err_latent = float((got["samples"].float() - want["samples"].float()).abs().max())
    # ReNO's own decoded image (iteration 0, decoded with gradients) against VAE Decode of the core sampler's latent
    reno_image = first["image"].movedim(1, -1)
    err_image = float((reno_image - want_image.float()).abs().max())
    err_decoded = float((got_image.float() - want_image.float()).abs().max())
    bound_latent = max(1e-5, 256 * EPS32 * float(want["samples"].abs().max()))
    bound_image = max(1e-5, 256 * EPS32)
    print(f"\n[flux2 oracle] {engine.info}: {STEPS} steps {SAMPLER}, Flux2Scheduler: max abs error latent {err_latent:.3g} "
          f"(bound {bound_latent:.3g}, max |latent| {float(want['samples'].abs().max()):.3g}), ReNO's image "
          f"{err_image:.3g}, VAE Decode of its latent {err_decoded:.3g} (bound {bound_image:.3g})")
    assert got["samples"].shape == want["samples"].shape == (1, 128, SIDE // 16, SIDE // 16)
    assert err_latent <= bound_latent and err_image <= bound_image and err_decoded <= bound_image


def test_the_flux2_vae_decode_carries_the_gradient_to_the_latent(f_engine):
    """The pack's decode (``decode_with_grad``) through the BatchNorm de-normalization and 2x2 un-patching of the
    FLUX.2 VAE: the autograd directional derivative equals a central difference of the decode (float32), and the
    image is VAE Decode's."""
    engine = f_engine
    parts = build(engine)
    pack = pack_module(engine)
    vae = parts["vae"]
    gen = torch.Generator().manual_seed(11)
    z = torch.randn(1, 128, SIDE // 16, SIDE // 16, generator=gen)
    direction = torch.randn(z.shape, generator=gen)
    weight = torch.rand(1, 3, SIDE, SIDE, generator=gen)
    decode = pack.nodes.lifecycle.decode_with_grad
    # the VAE's weights were made under the executor's inference mode: swapped for normal views, as a run does
    with torch.inference_mode(False), torch.enable_grad(), pack.nodes.autograd.normal_tensors([vae.first_stage_model]):
        with torch.no_grad():  # pixels away from the clamp to [0, 1] only: its kink would spoil the central difference
            weight = weight * ((decode(vae, z) - 0.5).abs() < 0.4)
        x = z.clone().requires_grad_(True)
        image = decode(vae, x)
        (image * weight).sum().backward()
        analytic = float((x.grad * direction).sum())
        with torch.no_grad():
            h = 1e-2
            plus = float((decode(vae, z + h * direction) * weight).sum())
            minus = float((decode(vae, z - h * direction) * weight).sum())
    numeric = (plus - minus) / (2 * h)
    (host_image,) = engine.call_node("VAEDecode", inference=True, samples={"samples": z}, vae=vae)
    err_host = float((image.detach().movedim(1, -1) - host_image.float()).abs().max())
    kept = float((weight > 0).float().mean())
    print(f"\n[flux2 vae] {engine.info}: d(decode)/dz along a direction ({kept:.1%} of the pixels): autograd "
          f"{analytic:.6g}, central difference {numeric:.6g}; image vs VAE Decode {err_host:.3g}")
    assert image.shape == (1, 3, SIDE, SIDE) and float(x.grad.abs().max()) > 0 and kept > 0.5
    assert abs(analytic - numeric) <= 1e-2 * max(1.0, abs(numeric))
    assert err_host <= 1e-5


def test_the_weighted_reward_rises_over_six_iterations(f_engine, stack):
    engine = f_engine
    parts = build(engine)
    sampler = reno_sampler(engine, parts, stack, iterations=6)
    runs = []
    sampler.on_result = runs.append  # what the run returned (the bridge's hook; ReNO Sampler builds its history so)
    sample(engine, parts, sampler)
    (run,) = runs
    result = run.result
    ensemble = sampler.ensemble
    weights = {label: r.weight for label, r in zip(ensemble.labels, ensemble.rewards)}
    total = [sum(w * rec.scores[label][0] for label, w in weights.items()) for rec in result.records]
    first = result.records[0]
    assert first.grad_norm[0] is not None and first.grad_norm[0] > 0, "no gradient reached the noise"
    initial, best, at = first.loss[0], result.best_loss[0], result.best_iteration[0]
    print(f"\n[flux2 reward] {engine.info}: weighted reward per iteration {[round(v, 4) for v in total]} (gain "
          f"{total[-1] - total[0]:.4f}); loss {initial:.4f} -> best {best:.4f} at iteration {at}")
    assert run.sigmas == pytest.approx([float(s) for s in parts["sigmas"]])  # the chain ran Flux2Scheduler's sigmas
    assert at > 0 and best < initial
    assert total[-1] > total[0] and total[at] > total[0]


def test_recomputing_every_part_gives_the_same_run(f_engine, stack):
    """memory 'checkpoint all' (the transformer's steps, the FLUX.2 decoder's blocks and the rewards recompute in the
    backward pass) runs the same optimization as 'no checkpointing': the same losses and gradient norms at both
    iterations, up to float32 rounding (the second's loss follows from the first's gradient)."""
    engine = f_engine
    parts = build(engine)
    results = {}
    for memory in ("no checkpointing", "checkpoint all"):
        sampler = reno_sampler(engine, parts, stack, iterations=2, memory=memory)
        runs = []
        sampler.on_result = runs.append
        sample(engine, parts, sampler)
        results[memory] = runs[0].result
    plain, recomputed = results["no checkpointing"], results["checkpoint all"]
    for a, b in zip(plain.records, recomputed.records):
        assert a.loss[0] == pytest.approx(b.loss[0], rel=1e-5, abs=1e-6), (a.iteration, a.loss, b.loss)
        if a.grad_norm:
            assert a.grad_norm[0] == pytest.approx(b.grad_norm[0], rel=1e-4), (a.grad_norm, b.grad_norm)
    blocks = pack_module(engine).nodes.memory.vae_blocks(parts["vae"])
    print(f"\n[flux2 memory] {engine.info}: {len(blocks)} decoder blocks; losses {[r.loss[0] for r in plain.records]} "
          f"(no checkpointing) vs {[r.loss[0] for r in recomputed.records]} (checkpoint all)")
    assert blocks


def test_a_run_leaves_nothing_on_comfyuis_objects(f_engine, stack):
    """As test_z_image's test of the same name, on the FLUX.2 chain (SamplerCustomAdvanced, Flux2Scheduler's 4 sigmas):
    per module of the FLUX.2 transformer, the VAE (its BatchNorm statistics included) and the rewards, the same
    attributes and per tensor the same object, values and flags."""
    engine = f_engine
    parts = build(engine)
    sample(engine, parts, reno_sampler(engine, parts, stack, iterations=1))  # ComfyUI's first-load bookkeeping
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
    (core,) = engine.call_node("KSamplerSelect", inference=True, sampler_name=SAMPLER)
    sample(engine, parts, core)  # what ComfyUI's own sampling rewrites at every call is the baseline
    host_rewrites = {(k, name, n) for (k, name), (keys, values) in attributes.items()
                     for mod in [modules[k].get_submodule(name) if name else modules[k]]
                     for n, v in mod.__dict__.items() if not n.startswith("_") and values.get(n, id(v)) != id(v)}
    sample(engine, parts, reno_sampler(engine, parts, stack, iterations=2))
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


def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(f_engine, stack):
    """The shipped workflow (``WORKFLOW``) as Queue sends it (the frontend's graphToPrompt), with its three loaders
    swapped for the tiny family (diffusion model and VAE) and the tiny text encoder, at 64 px (the Width / Height
    primitives feed both the latent and Flux2Scheduler) and 2 iterations: it executes the template's chain with ReNO
    Sampler (custom) as SamplerCustomAdvanced's SAMPLER."""
    import importlib.util
    import json

    spec = importlib.util.spec_from_file_location("_reno_test_workflows", Path(__file__).with_name("test_workflows.py"))
    test_workflows = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_workflows)
    engine = f_engine
    wf = json.loads((Path(__file__).resolve().parents[2] / "workflows" / WORKFLOW).read_text())
    prompt = test_workflows.to_api(wf, engine)
    ids = {node["class_type"]: i for i, node in prompt.items() if node["class_type"] != "PrimitiveInt"}
    # the template's graph (image_flux2_klein_text_to_image, the distilled 4B subgraph), the prompt typed once
    assert prompt[ids["UNETLoader"]]["inputs"]["unet_name"] == "flux-2-klein-4b.safetensors"
    assert {k: prompt[ids["CLIPLoader"]]["inputs"][k] for k in ("clip_name", "type")} == {
        "clip_name": "qwen_3_4b.safetensors", "type": "flux2"}
    assert prompt[ids["VAELoader"]]["inputs"]["vae_name"] == "flux2-vae.safetensors"
    text = [ids["PrimitiveStringMultiline"], 0]
    assert prompt[ids["CLIPTextEncode"]]["inputs"]["text"] == prompt[ids["ReNOSamplerCustom"]]["inputs"]["prompt"] == text
    assert prompt[ids["ConditioningZeroOut"]]["inputs"]["conditioning"] == [ids["CLIPTextEncode"], 0]
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
    unet, clip, vae = ids.pop("UNETLoader"), ids.pop("CLIPLoader"), ids.pop("VAELoader")
    prompt[unet] = {"class_type": "ReNOTestTinyFamily", "inputs": {"family": "flux2", "transformer_depth": 1,
                                                                   "seed": 0, "text": "", "negative_text": ""}}
    prompt[clip] = {"class_type": "ReNOTestTinyCLIP", "inputs": {"family": "flux2"}}
    del prompt[vae]
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] == vae:
                node["inputs"][name] = [unet, 1]
    for key in ("width", "height"):
        prompt[sched[key][0]]["inputs"]["value"] = SIDE
    reno_inputs["iterations"] = 2
    res = engine.execute(prompt)
    res.raise_for_error()
    assert res.success and res.image_paths(ids["SaveImage"])
