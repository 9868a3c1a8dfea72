"""Shared parts of the model-family engine tests (tests/engine/test_z_image.py, test_qwen_image.py, test_flux2.py,
test_chroma.py, test_krea2.py, test_lumina2.py, test_lens.py, test_mage_flow.py, test_ernie_image.py): each builds its
template's graph on the tiny fixture family and checks the same things (importable: tests/ is on sys.path). What
differs per family is passed in: the chain's settings (``Chain``), the label its numbers are printed under, the shapes
it expects.

Two kinds of chain: a KSampler template (ReNO Sampler in place of KSampler: ``reno``, ``ksampler``) and a
SamplerCustomAdvanced or SamplerCustom template (ReNO Sampler (custom) as its SAMPLER: ``reno_sampler``, ``sample``).
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path

import comfy_host
import pytest
import torch
from engine_support import PROMPT_TEXT, first_iteration, fixture_families, pack_module, reward_stack

#: the paper's reward mix, every family test's stack
PAPER_MIX = (("imagereward", 1.0), ("hpsv2.1", 5.0), ("pickscore", 0.05), ("clipscore", 0.01))
EPS32 = torch.finfo(torch.float32).eps
WORKFLOWS = Path(__file__).resolve().parents[1] / "workflows"
MEMORY_MODES = ("no checkpointing", "checkpoint all")


@dataclass(frozen=True)
class Chain:
    """The template's sampling settings (cfg 1 unless the template says otherwise)."""

    steps: int
    sampler: str
    scheduler: str | None = None  # None: the template's scheduler is not a KSampler scheduler (Flux2Scheduler)
    cfg: float = 1.0
    seed: int = 3


def family_engine(engine, family, *, extra_nodes=None, needs=()):
    """The engine for ``family``'s tests: booted with ``extra_nodes`` (a comfy_extras file, or a tuple of them, as
    test_workflows boots it) where the host has that file; the test skips with the reason where the family or a node
    of ``needs`` is missing."""
    for name in (extra_nodes,) if isinstance(extra_nodes, str) else (extra_nodes or ()):
        if (engine.host.root / "comfy_extras" / name).is_file():
            comfy_host.boot_engine(engine.host, (), extra_nodes=[name])
    reason = fixture_families(engine).family_unavailable(family)
    if reason:
        pytest.skip(f"{engine.info}: {reason}")
    missing = [c for c in needs if c not in engine.nodes.NODE_CLASS_MAPPINGS]
    if missing:
        pytest.skip(f"{engine.info} has no {', '.join(missing)}")
    return engine


def family_fixtures(name, family, *, extra_nodes=None, needs=()):
    """A family test module's two module-scoped fixtures: ``name`` (``family_engine``'s engine) and ``stack`` (the
    paper's mix on it). Use as ``x_engine, stack = family_fixtures("x_engine", "x", ...)``."""

    @pytest.fixture(scope="module", name=name)
    def engine_fixture(engine):
        return family_engine(engine, family, extra_nodes=extra_nodes, needs=needs)

    @pytest.fixture(scope="module", name="stack")
    def stack_fixture(request):
        return reward_stack(request.getfixturevalue(name), PAPER_MIX)

    return engine_fixture, stack_fixture


def tiny_family(engine, family, *, text=PROMPT_TEXT, negative_text=""):
    """The tiny family's (model, vae, positive, negative) (ReNO's test node ``ReNOTestTinyFamily``, depth 1)."""
    return engine.call_node("ReNOTestTinyFamily", inference=True, family=family, transformer_depth=1, seed=0, text=text,
                            negative_text=negative_text)


def aura_flow(engine, model, shift):
    (model,) = engine.call_node("ModelSamplingAuraFlow", inference=True, model=model, shift=shift)
    return model


def zero_out(engine, positive):
    (neg,) = engine.call_node("ConditioningZeroOut", inference=True, conditioning=positive)
    return neg


def empty_latent(engine, node, side):
    (latent,) = engine.call_node(node, inference=True, width=side, height=side, batch_size=1)
    return latent


def assert_aura_flow_shift(patcher, shift):
    ms = patcher.get_model_object("model_sampling")
    assert float(ms.shift) == shift and float(ms.multiplier) == 1.0  # ModelSamplingAuraFlow's patch


def assert_flux_ae(vae):
    first = vae.first_stage_model
    assert type(first).__name__ == "AutoencodingEngine" and not hasattr(first, "post_quant_conv")  # FLUX's ae


def oracle_bounds(reference):
    """The oracle's tolerances at ``reference`` (the host sampler's latent tensor): float32 rounding of the same host
    functions through the steps (0.33: ReNO runs the RoPE in plain torch under in_training, KSampler may use
    comfy-kitchen's fused rms_rope), a few hundred eps of the latents' magnitude; the image is in [0, 1] after a VAE
    that only scales such errors by its small random weights. (bound_latent, bound_image)."""
    return max(1e-5, 256 * EPS32 * float(reference.abs().max())), max(1e-5, 256 * EPS32)


def assert_detected_as(engine, inner, family, config_class, keys):
    """Real key names: ComfyUI's own detection reads the tiny weights of ``inner`` as ``config_class`` with the
    fixture's weight-derived config (the fields ``keys``)."""
    import comfy.model_detection

    sd = inner.diffusion_model.state_dict()
    detected = comfy.model_detection.detect_unet_config(sd, "")
    config = fixture_families(engine)._unet_config(family, 1)
    assert {k: detected[k] for k in keys} == {k: config[k] for k in keys}
    assert type(comfy.model_detection.model_config_from_unet_config(detected, sd)) is config_class


# -- KSampler templates: ReNO Sampler in place of KSampler ------------------------------------------------------------


def reno(engine, parts, stack, chain, *, iterations, lr=5.0, memory=None):
    """ReNO Sampler on ``parts`` (model, vae, positive, negative, latent_image) with the chain's settings: its
    (latent, image, history)."""
    extra = {"memory": memory} if memory else {}
    return engine.call_node("ReNOSampler", inference=True, **parts, rewards=stack, prompt=PROMPT_TEXT, seed=chain.seed,
                            iterations=iterations, learning_rate=lr, cfg=chain.cfg, regularization=0.01, grad_clip=0.1,
                            steps=chain.steps, sampler_name=chain.sampler, scheduler=chain.scheduler,
                            **extra)["result"]


def ksampler(engine, parts, chain, seed=None):
    (ks,) = engine.call_node("KSampler", inference=True, model=parts["model"],
                             seed=chain.seed if seed is None else seed, steps=chain.steps, cfg=chain.cfg,
                             sampler_name=chain.sampler, scheduler=chain.scheduler, positive=parts["positive"],
                             negative=parts["negative"], latent_image=parts["latent_image"], denoise=1.0)
    return ks


def check_ksampler_oracle(engine, parts, stack, chain, label, setting, *, latent_shape=None, image_shape=None):
    """Oracle: ReNO Sampler at one iteration (no update) equals the template's KSampler, latent and decoded image
    (``latent_shape`` / ``image_shape``: what both must be, where given). ``setting`` describes the chain in the
    printed line."""
    latent, image, history = reno(engine, parts, stack, chain, iterations=1)
    ks = ksampler(engine, parts, chain)
    (ks_image,) = engine.call_node("VAEDecode", inference=True, samples=ks, vae=parts["vae"])
    if latent_shape is not None:
        assert latent["samples"].shape == ks["samples"].shape == latent_shape
    if image_shape is not None:
        assert image.shape == ks_image.shape == image_shape
    err_latent = float((latent["samples"].float() - ks["samples"].float()).abs().max())
    err_image = float((image.float() - ks_image.float()).abs().max())
    bound_latent, bound_image = oracle_bounds(ks["samples"])
    print(f"\n[{label} oracle] {engine.info}: {setting}: max abs error latent {err_latent:.3g} (bound "
          f"{bound_latent:.3g}, max |latent| {float(ks['samples'].abs().max()):.3g}), image {err_image:.3g} (bound "
          f"{bound_image:.3g})")
    assert history.iterations == 1
    assert err_latent <= bound_latent and err_image <= bound_image


def check_reward_rises(engine, parts, stack, chain, label):
    """The weighted reward (the paper's mix) rises over 6 iterations of ReNO Sampler."""
    _, _, history = reno(engine, parts, stack, chain, iterations=6)
    first = history.records[0]
    assert first["grad_norm"][0] is not None and first["grad_norm"][0] > 0, "no gradient reached the noise"
    initial, best = first["loss"][0], history.best_loss[0]
    total = history.chart()["series"][0]["weighted_total"]  # sum of weight x score, the paper's mix
    print(f"\n[{label} reward] {engine.info}: weighted reward per iteration {[round(v, 4) for v in total]} (gain "
          f"{total[-1] - total[0]:.4f}); loss {initial:.4f} -> best {best:.4f} at iteration {history.best_iteration[0]}")
    assert history.best_iteration[0] > 0 and best < initial
    assert total[-1] > total[0] and total[history.best_iteration[0]] > total[0]


def checkpointed_runs(engine, parts, stack, chain):
    """Two iterations of ReNO Sampler with memory 'no checkpointing' and 'checkpoint all': their histories' records,
    checked to be the same optimization (``assert_same_optimization``)."""
    runs = {m: reno(engine, parts, stack, chain, iterations=2, memory=m)[2] for m in MEMORY_MODES}
    plain, recomputed = runs["no checkpointing"].records, runs["checkpoint all"].records
    assert_same_optimization(plain, recomputed)
    return plain, recomputed


# -- SamplerCustomAdvanced templates: ReNO Sampler (custom) as the SAMPLER --------------------------------------------


def sample(engine, parts, sampler):
    """SamplerCustomAdvanced on ``parts`` (noise, guider, sigmas, latent) with ``sampler``: its latent. Parts of a
    SamplerCustom template (``samplercustom_parts``: no guider) run SamplerCustom (add_noise on, the chain's seed and
    cfg) instead."""
    if "guider" not in parts:
        out = engine.call_node("SamplerCustom", inference=True, model=parts["model"], add_noise=True,
                               noise_seed=parts["seed"], cfg=parts["cfg"], positive=parts["positive"],
                               negative=parts["negative"], sampler=sampler, sigmas=parts["sigmas"],
                               latent_image=parts["latent"])
        return out[0]
    out = engine.call_node("SamplerCustomAdvanced", inference=True, noise=parts["noise"], guider=parts["guider"],
                           sampler=sampler, sigmas=parts["sigmas"], latent_image=parts["latent"])
    return out[0]


def reno_sampler(engine, parts, stack, chain, *, iterations, lr=5.0, memory=None):
    extra = {"memory": memory} if memory else {}
    (s,) = engine.call_node("ReNOSamplerCustom", inference=True, vae=parts["vae"], rewards=stack, prompt=PROMPT_TEXT,
                            iterations=iterations, learning_rate=lr, regularization=0.01, grad_clip=0.1,
                            sampler_name=chain.sampler, **extra)
    return s


def custom_parts(engine, model, vae, positive, negative, chain, *, schedule, latent_node, side):
    """The SamplerCustomAdvanced template's inputs: CFGGuider at the chain's cfg, the sigmas ``schedule()`` makes, an
    empty ``latent_node`` latent of ``side`` px, RandomNoise at the chain's seed (in the templates' order)."""
    (guider,) = engine.call_node("CFGGuider", inference=True, model=model, positive=positive, negative=negative,
                                 cfg=chain.cfg)
    sigmas = schedule()
    latent = empty_latent(engine, latent_node, side)
    (noise,) = engine.call_node("RandomNoise", inference=True, noise_seed=chain.seed)
    return dict(model=model, vae=vae, positive=positive, negative=negative, guider=guider, sigmas=sigmas,
                latent=latent, noise=noise)


def samplercustom_parts(engine, model, vae, positive, negative, chain, *, schedule, latent_node, side):
    """The SamplerCustom template's inputs (``sample`` runs SamplerCustom on them): the sigmas ``schedule()`` makes, an
    empty ``latent_node`` latent of ``side`` px, the chain's seed and cfg."""
    sigmas = schedule()
    latent = empty_latent(engine, latent_node, side)
    return dict(model=model, vae=vae, positive=positive, negative=negative, sigmas=sigmas, latent=latent,
                seed=chain.seed, cfg=chain.cfg)


def core_sampler(engine, chain):
    (core,) = engine.call_node("KSamplerSelect", inference=True, sampler_name=chain.sampler)
    return core


def custom_run(engine, parts, stack, chain, *, iterations, memory=None):
    """SamplerCustomAdvanced with ReNO Sampler (custom): the sampler and what its runs returned (the bridge's
    ``on_result`` hook; ReNO Sampler builds its history so)."""
    sampler = reno_sampler(engine, parts, stack, chain, iterations=iterations, memory=memory)
    runs = []
    sampler.on_result = runs.append
    sample(engine, parts, sampler)
    return sampler, runs


def check_custom_oracle(engine, parts, stack, chain, label, setting, *, latent_shape):
    """Oracle: at one iteration (no update) SamplerCustomAdvanced with ReNO equals it with KSamplerSelect, latent and
    decoded image (ReNO's own, and VAE Decode of its latent); both latents are ``latent_shape``."""
    core = core_sampler(engine, chain)
    with first_iteration(engine) as first:
        got = sample(engine, parts, reno_sampler(engine, parts, stack, chain, iterations=1))
    want = sample(engine, parts, core)
    (want_image,) = engine.call_node("VAEDecode", inference=True, samples=want, vae=parts["vae"])
    (got_image,) = engine.call_node("VAEDecode", inference=True, samples=got, vae=parts["vae"])
    err_latent = float((got["samples"].float() - want["samples"].float()).abs().max())
    # ReNO's own decoded image (iteration 0, decoded with gradients) against VAE Decode of the core sampler's latent
    reno_image = first["image"].movedim(1, -1)
    err_image = float((reno_image - want_image.float()).abs().max())
    err_decoded = float((got_image.float() - want_image.float()).abs().max())
    bound_latent, bound_image = oracle_bounds(want["samples"])
    print(f"\n[{label} oracle] {engine.info}: {setting}: max abs error latent {err_latent:.3g} (bound "
          f"{bound_latent:.3g}, max |latent| {float(want['samples'].abs().max()):.3g}), ReNO's image {err_image:.3g}, "
          f"VAE Decode of its latent {err_decoded:.3g} (bound {bound_image:.3g})")
    assert got["samples"].shape == want["samples"].shape == latent_shape
    assert err_latent <= bound_latent and err_image <= bound_image and err_decoded <= bound_image


def check_custom_reward_rises(engine, parts, stack, chain, label):
    """The weighted reward (the paper's mix) rises over 6 iterations, and the chain ran the template's sigmas."""
    sampler, runs = custom_run(engine, parts, stack, chain, iterations=6)
    (run,) = runs
    result = run.result
    ensemble = sampler.ensemble
    weights = {name: r.weight for name, r in zip(ensemble.labels, ensemble.rewards)}
    total = [sum(w * rec.scores[name][0] for name, w in weights.items()) for rec in result.records]
    first = result.records[0]
    assert first.grad_norm[0] is not None and first.grad_norm[0] > 0, "no gradient reached the noise"
    initial, best, at = first.loss[0], result.best_loss[0], result.best_iteration[0]
    print(f"\n[{label} reward] {engine.info}: weighted reward per iteration {[round(v, 4) for v in total]} (gain "
          f"{total[-1] - total[0]:.4f}); loss {initial:.4f} -> best {best:.4f} at iteration {at}")
    assert run.sigmas == pytest.approx([float(s) for s in parts["sigmas"]])  # the chain ran the template's sigmas
    assert at > 0 and best < initial
    assert total[-1] > total[0] and total[at] > total[0]


# -- both kinds ---------------------------------------------------------------------------------------------------------


def _field(record, name):
    return record[name] if isinstance(record, dict) else getattr(record, name)


def assert_same_optimization(plain, recomputed):
    """The records of a run with 'checkpoint all' equal those of 'no checkpointing': the same losses and gradient norms
    at every iteration, up to float32 rounding (a history's records are dicts, a run result's are objects)."""
    for a, b in zip(plain, recomputed):
        a_loss, b_loss = _field(a, "loss"), _field(b, "loss")
        assert a_loss[0] == pytest.approx(b_loss[0], rel=1e-5, abs=1e-6), (_field(a, "iteration"), a_loss, b_loss)
        a_grad = _field(a, "grad_norm")
        if a_grad:
            b_grad = _field(b, "grad_norm")
            assert a_grad[0] == pytest.approx(b_grad[0], rel=1e-4), (a_grad, b_grad)


def assert_run_leaves_nothing(parts, stack, *, first_run, baseline, second_run, latent_statistics=False):
    """Per module of the diffusion model, the VAE and the rewards, the same attributes and per tensor the same object,
    values and flags after ``second_run()`` as before it. ``first_run()`` runs first (ComfyUI's own first-load
    bookkeeping happens there); what ComfyUI's own sampling rewrites on its objects at every call (0.33:
    ``latent_shapes``) is found by ``baseline()``, a plain sampler call. ``latent_statistics``: the latent format
    holds its statistics as tensors made under inference mode (Wan 2.1's: swapped during the run), restored too."""
    first_run()
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
    if latent_statistics:
        fmt = parts["model"].model.latent_format
        fmt_tensors = {n: (v, v.is_inference()) for n, v in vars(fmt).items() if isinstance(v, torch.Tensor)}
        assert {"latents_mean", "latents_std"} <= set(fmt_tensors)
    baseline()
    host_rewrites = {(k, name, n) for (k, name), (keys, values) in attributes.items()
                     for mod in [modules[k].get_submodule(name) if name else modules[k]]
                     for n, v in mod.__dict__.items() if not n.startswith("_") and values.get(n, id(v)) != id(v)}
    second_run()
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
    if latent_statistics:
        assert {n: (v, v.is_inference()) for n, v in vars(fmt).items() if isinstance(v, torch.Tensor)} == fmt_tensors


def check_ksampler_run_leaves_nothing(engine, parts, stack, chain, *, memory=None, latent_statistics=False):
    """``assert_run_leaves_nothing`` for a KSampler template: a one-iteration ReNO Sampler run first, a KSampler call
    (seed 0) as the baseline, then a two-iteration run (``memory``: its memory mode, where given)."""
    assert_run_leaves_nothing(parts, stack, first_run=lambda: reno(engine, parts, stack, chain, iterations=1),
                              baseline=lambda: ksampler(engine, parts, chain, seed=0),
                              second_run=lambda: reno(engine, parts, stack, chain, iterations=2, memory=memory),
                              latent_statistics=latent_statistics)


def check_custom_run_leaves_nothing(engine, parts, stack, chain):
    """``assert_run_leaves_nothing`` for a SamplerCustomAdvanced template: SamplerCustomAdvanced with a one-iteration
    ReNO Sampler (custom) first, with KSamplerSelect as the baseline, then with a two-iteration ReNO Sampler
    (custom)."""
    assert_run_leaves_nothing(parts, stack,
                              first_run=lambda: sample(engine, parts, reno_sampler(engine, parts, stack, chain,
                                                                                   iterations=1)),
                              baseline=lambda: sample(engine, parts, core_sampler(engine, chain)),
                              second_run=lambda: sample(engine, parts, reno_sampler(engine, parts, stack, chain,
                                                                                    iterations=2)))


def check_vae_gradient(engine, vae, latent_shape, side, label, *, away_from_clamp=False):
    """The pack's decode (``decode_with_grad``) of ``vae``: the autograd directional derivative at a random latent of
    ``latent_shape`` equals a central difference of the decode (float32), and the image (``side`` px) is VAE
    Decode's. ``away_from_clamp``: only pixels away from the clamp to [0, 1] are weighted (its kink would spoil the
    central difference), more than half of them."""
    pack = pack_module(engine)
    decode = pack.nodes.lifecycle.decode_with_grad
    gen = torch.Generator().manual_seed(11)
    z = torch.randn(*latent_shape, generator=gen)
    direction = torch.randn(z.shape, generator=gen)
    weight = torch.rand(1, 3, side, side, generator=gen)
    # the VAE's weights were made under the executor's inference mode: swapped for normal views, as a run does
    with torch.inference_mode(False), torch.enable_grad(), pack.nodes.autograd.normal_tensors([vae.first_stage_model]):
        if away_from_clamp:
            with torch.no_grad():
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
    kept = float((weight > 0).float().mean()) if away_from_clamp else None
    pixels = f" ({kept:.1%} of the pixels)" if away_from_clamp else ""
    print(f"\n[{label} vae] {engine.info}: d(decode)/dz along a direction{pixels}: autograd {analytic:.6g}, central "
          f"difference {numeric:.6g}; image vs VAE Decode {err_host:.3g}")
    assert image.shape == (1, 3, side, side) and float(x.grad.abs().max()) > 0 and (not away_from_clamp or kept > 0.5)
    assert abs(analytic - numeric) <= 1e-2 * max(1.0, abs(numeric))
    assert err_host <= 1e-5


# -- the shipped workflows ----------------------------------------------------------------------------------------------


def workflow_prompt(engine, workflow, *, ignore=()):
    """The shipped workflow ``workflow`` as Queue sends it (test_workflows' graphToPrompt; tests/engine is not a
    package: loaded by path) and its node ids by class (classes in ``ignore`` left out)."""
    path = Path(__file__).resolve().parent / "engine" / "test_workflows.py"
    spec = importlib.util.spec_from_file_location("_reno_test_workflows", path)
    test_workflows = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(test_workflows)
    prompt = test_workflows.to_api(json.loads((WORKFLOWS / workflow).read_text()), engine)
    ids = {node["class_type"]: i for i, node in prompt.items() if node["class_type"] not in ignore}
    return prompt, ids


def assert_template_loaders(prompt, ids, *, unet, clip, clip_type, vae):
    """The template's three loaders, with its file names."""
    assert prompt[ids["UNETLoader"]]["inputs"]["unet_name"] == unet
    assert {k: prompt[ids["CLIPLoader"]]["inputs"][k] for k in ("clip_name", "type")} == {
        "clip_name": clip, "type": clip_type}
    assert prompt[ids["VAELoader"]]["inputs"]["vae_name"] == vae


def assert_prompt_typed_once(prompt, ids, reno_class):
    """The prompt typed once for CLIP Text Encode and ReNO (``reno_class``); the negative is its ConditioningZeroOut."""
    text = [ids["PrimitiveStringMultiline"], 0]
    assert prompt[ids["CLIPTextEncode"]]["inputs"]["text"] == prompt[ids[reno_class]]["inputs"]["prompt"] == text
    assert prompt[ids["ConditioningZeroOut"]]["inputs"]["conditioning"] == [ids["CLIPTextEncode"], 0]


def assert_reno_sampler_runs_the_chain(prompt, ids, chain):
    """ReNO Sampler's settings are the template's KSampler's, on ModelSamplingAuraFlow and ConditioningZeroOut: its
    inputs."""
    reno_inputs = prompt[ids["ReNOSampler"]]["inputs"]
    assert {k: reno_inputs[k] for k in ("steps", "sampler_name", "scheduler", "cfg")} == {
        "steps": chain.steps, "sampler_name": chain.sampler, "scheduler": chain.scheduler, "cfg": chain.cfg}
    assert prompt[reno_inputs["model"][0]]["class_type"] == "ModelSamplingAuraFlow"
    assert prompt[reno_inputs["negative"][0]]["class_type"] == "ConditioningZeroOut"
    return reno_inputs


def swap_loaders_for_tiny(prompt, ids, family):
    """The three loaders swapped for the tiny family (diffusion model and VAE) and the tiny text encoder; every input
    the VAE loader fed reads the tiny family's VAE. Their ids leave ``ids``."""
    unet, clip, vae = ids.pop("UNETLoader"), ids.pop("CLIPLoader"), ids.pop("VAELoader")
    prompt[unet] = {"class_type": "ReNOTestTinyFamily", "inputs": {"family": family, "transformer_depth": 1,
                                                                   "seed": 0, "text": "", "negative_text": ""}}
    prompt[clip] = {"class_type": "ReNOTestTinyCLIP", "inputs": {"family": family}}
    del prompt[vae]
    for node in prompt.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and value[0] == vae:
                node["inputs"][name] = [unet, 1]


def run_ksampler_workflow_on_tiny(engine, prompt, ids, family, chain, *, template_side):
    """A KSampler template's workflow from its latent on: the EmptySD3LatentImage of ``template_side`` px, the prompt
    typed once, the loaders swapped for the tiny ``family``, the latent at 64 px, ReNO Sampler with the chain's
    settings at 2 iterations: it executes and saves."""
    assert {k: prompt[ids["EmptySD3LatentImage"]]["inputs"][k] for k in ("width", "height")} == {
        "width": template_side, "height": template_side}
    assert_prompt_typed_once(prompt, ids, "ReNOSampler")
    swap_loaders_for_tiny(prompt, ids, family)
    prompt[ids["EmptySD3LatentImage"]]["inputs"].update(width=64, height=64)
    reno_inputs = assert_reno_sampler_runs_the_chain(prompt, ids, chain)
    reno_inputs["iterations"] = 2
    execute_and_check(engine, prompt, ids)


def execute_and_check(engine, prompt, ids):
    """The prompt executes and its Save Image saved."""
    res = engine.execute(prompt)
    res.raise_for_error()
    assert res.success and res.image_paths(ids["SaveImage"])
