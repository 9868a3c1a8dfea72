"""Z-Image-Turbo (ComfyUI's most used template, ``image_z_image_turbo``) through ReNO Sampler, as the template runs it.

The model: a tiny random-weight ``comfy.supported_models.ZImage`` (Lumina2 / NextDiT with Z-Image modulation) from the
fixture pack (``ReNOTestTinyFamily`` family ``z_image``), FLUX's ``ae`` VAE (tiny), caption features of Qwen3-4B's
width. The template's chain: ModelSamplingAuraFlow shift 3, ConditioningZeroOut negative, EmptySD3LatentImage, KSampler
8 steps, cfg 1, ``res_multistep`` / ``simple``. (a) Oracle: ReNO Sampler at one iteration (no update) equals that
KSampler, latent and decoded image. (b) The weighted reward (the paper's mix) rises over 6 iterations. (c) The run
leaves nothing on ComfyUI's objects. The numbers are printed (pytest -s).
"""

from __future__ import annotations

import comfy_host
import pytest
import torch
from engine_support import PROMPT_TEXT, fixture_families, reward_stack

STEPS, SAMPLER, SCHEDULER, SHIFT, SIDE, SEED = 8, "res_multistep", "simple", 3.0, 64, 3
PAPER_MIX = (("imagereward", 1.0), ("hpsv2.1", 5.0), ("pickscore", 0.05), ("clipscore", 0.01))
EPS32 = torch.finfo(torch.float32).eps
WORKFLOW = "ReNO 01 Z-Image-Turbo, 8 steps (start here).json"
#: the same graph with its ReNO part in one subgraph node (its API ids "<subgraph node>:<inner id>")
SUBGRAPH_WORKFLOW = "ReNO 02 Z-Image-Turbo as a subgraph.json"


@pytest.fixture(scope="module")
def z_engine(engine):
    """The engine with ModelSamplingAuraFlow (comfy_extras/nodes_model_advanced.py), as test_workflows boots it."""
    if (engine.host.root / "comfy_extras" / "nodes_model_advanced.py").is_file():
        comfy_host.boot_engine(engine.host, (), extra_nodes=["nodes_model_advanced.py"])
    reason = fixture_families(engine).family_unavailable("z_image")
    if reason:
        pytest.skip(reason)
    return engine


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


def reno(engine, parts, stack, *, iterations, lr=5.0, memory=None):
    extra = {"memory": memory} if memory else {}
    return engine.call_node("ReNOSampler", inference=True, **parts, rewards=stack, prompt=PROMPT_TEXT, seed=SEED,
                            iterations=iterations, learning_rate=lr, cfg=1.0, regularization=0.01, grad_clip=0.1,
                            steps=STEPS, sampler_name=SAMPLER, scheduler=SCHEDULER, **extra)["result"]


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
    engine = z_engine
    parts = build(engine)
    latent, image, history = reno(engine, parts, stack, iterations=1)
    (ks,) = engine.call_node("KSampler", inference=True, model=parts["model"], seed=SEED, steps=STEPS, cfg=1.0,
                             sampler_name=SAMPLER, scheduler=SCHEDULER, positive=parts["positive"],
                             negative=parts["negative"], latent_image=parts["latent_image"], denoise=1.0)
    (ks_image,) = engine.call_node("VAEDecode", inference=True, samples=ks, vae=parts["vae"])
    err_latent = float((latent["samples"].float() - ks["samples"].float()).abs().max())
    err_image = float((image.float() - ks_image.float()).abs().max())
    # float32 rounding of the same host functions through 8 steps (0.33: ReNO runs the RoPE in plain torch under
    # in_training, KSampler may use comfy-kitchen's fused rms_rope): a few hundred eps of the latents' magnitude; the
    # image is in [0, 1] after a VAE that only scales such errors by its small random weights
    bound_latent = max(1e-5, 256 * EPS32 * float(ks["samples"].abs().max()))
    bound_image = max(1e-5, 256 * EPS32)
    print(f"\n[z-image oracle] {engine.info}: {STEPS} steps {SAMPLER}/{SCHEDULER}: max abs error latent {err_latent:.3g}"
          f" (bound {bound_latent:.3g}, max |latent| {float(ks['samples'].abs().max()):.3g}), image {err_image:.3g}"
          f" (bound {bound_image:.3g})")
    assert history.iterations == 1
    assert err_latent <= bound_latent and err_image <= bound_image


def test_the_weighted_reward_rises_over_six_iterations(z_engine, stack):
    engine = z_engine
    parts = build(engine)
    _, _, history = reno(engine, parts, stack, iterations=6)
    first = history.records[0]
    assert first["grad_norm"][0] is not None and first["grad_norm"][0] > 0, "no gradient reached the noise"
    initial, best = first["loss"][0], history.best_loss[0]
    total = history.chart()["series"][0]["weighted_total"]  # sum of weight x score, the paper's mix
    print(f"\n[z-image reward] {engine.info}: weighted reward per iteration {[round(v, 4) for v in total]} (gain "
          f"{total[-1] - total[0]:.4f}); loss {initial:.4f} -> best {best:.4f} at iteration {history.best_iteration[0]}")
    assert history.best_iteration[0] > 0 and best < initial
    assert total[-1] > total[0] and total[history.best_iteration[0]] > total[0]


@pytest.mark.parametrize("memory", ["auto", "checkpoint all"])
def test_a_run_leaves_nothing_on_comfyuis_objects(z_engine, stack, memory):
    """As test_reliability's test of the same name, on the Z-Image chain (8 steps of res_multistep): per module of
    the NextDiT, the ae and the rewards, the same attributes and per tensor the same object, values and flags."""
    engine = z_engine
    parts = build(engine)
    reno(engine, parts, stack, iterations=1)  # ComfyUI's own first-load bookkeeping happens here
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
    # what ComfyUI's own sampling rewrites on its objects at every call (0.33: ``latent_shapes``) is found by a plain
    # KSampler call, the baseline
    engine.call_node("KSampler", inference=True, model=parts["model"], seed=0, steps=STEPS, cfg=1.0,
                     sampler_name=SAMPLER, scheduler=SCHEDULER, positive=parts["positive"], negative=parts["negative"],
                     latent_image=parts["latent_image"], denoise=1.0)
    host_rewrites = {(k, name, n) for (k, name), (keys, values) in attributes.items()
                     for mod in [modules[k].get_submodule(name) if name else modules[k]]
                     for n, v in mod.__dict__.items() if not n.startswith("_") and values.get(n, id(v)) != id(v)}
    reno(engine, parts, stack, iterations=2, memory=memory)
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


@pytest.mark.parametrize("workflow", [WORKFLOW, SUBGRAPH_WORKFLOW])
def test_the_shipped_workflow_runs_through_the_engine_on_tiny_weights(z_engine, stack, workflow):
    """The shipped workflow (``WORKFLOW``; ``SUBGRAPH_WORKFLOW``, expanded) as Queue sends it (the frontend's graphToPrompt), with its three loaders
    swapped for the tiny family (diffusion model and VAE) and the tiny text encoder, at 64 px and 2 iterations: it
    executes, and ReNO Sampler ran the template's chain (8 steps of res_multistep, AuraFlow shift 3)."""
    import importlib.util
    import json
    from pathlib import Path

    # test_workflows' graphToPrompt (tests/engine is not a package: loaded by path)
    spec = importlib.util.spec_from_file_location("_reno_test_workflows", Path(__file__).with_name("test_workflows.py"))
    test_workflows = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_workflows)
    to_api = test_workflows.to_api
    engine = z_engine
    wf = json.loads((Path(__file__).resolve().parents[2] / "workflows" / workflow).read_text())
    prompt = to_api(wf, engine)
    ids = {node["class_type"]: i for i, node in prompt.items()}
    # the template's graph (image_z_image_turbo), the prompt typed once for CLIP Text Encode and ReNO
    assert prompt[ids["UNETLoader"]]["inputs"]["unet_name"] == "z_image_turbo_bf16.safetensors"
    assert {k: prompt[ids["CLIPLoader"]]["inputs"][k] for k in ("clip_name", "type")} == {
        "clip_name": "qwen_3_4b.safetensors", "type": "lumina2"}
    assert prompt[ids["VAELoader"]]["inputs"]["vae_name"] == "ae.safetensors"
    assert prompt[ids["ModelSamplingAuraFlow"]]["inputs"]["shift"] == SHIFT
    assert {k: prompt[ids["EmptySD3LatentImage"]]["inputs"][k] for k in ("width", "height")} == {
        "width": 1024, "height": 1024}
    text = [ids["PrimitiveStringMultiline"], 0]
    assert prompt[ids["CLIPTextEncode"]]["inputs"]["text"] == prompt[ids["ReNOSampler"]]["inputs"]["prompt"] == text
    assert prompt[ids["ConditioningZeroOut"]]["inputs"]["conditioning"] == [ids["CLIPTextEncode"], 0]
    unet, clip, vae = ids.pop("UNETLoader"), ids.pop("CLIPLoader"), ids.pop("VAELoader")
    prompt[unet] = {"class_type": "ReNOTestTinyFamily", "inputs": {"family": "z_image", "transformer_depth": 1,
                                                                   "seed": 0, "text": "", "negative_text": ""}}
    prompt[clip] = {"class_type": "ReNOTestTinyCLIP", "inputs": {"family": "z_image"}}
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
