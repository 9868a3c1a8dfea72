"""Every sampler of the running host, through ReNO Sampler: the host's own sampler functions run with gradients
(``nodes/host_sampling.py``).

(a) Oracle: at one iteration (no update) ReNO Sampler equals KSampler with the same sampler, scheduler, steps and seed,
for every name in the host's ``KSampler.SAMPLERS``, on SD1.5 and on a flow model (tiny fp32), and the noise gradient
of the first iteration is finite and non-zero. (b) For the samplers the pack's own chain (``optimizer/chain.py``) has,
the host path's noise gradient equals the chain's, the host-free reference. (c) A sampler object that is not a
KSAMPLER is refused by name with the reason, and so is a policy that needs a call count the sampler cannot promise.
The error table is printed (pytest -s).
"""

from __future__ import annotations

import math

import pytest
import torch
from engine_support import PROMPT_TEXT, fixture_families, pack_module, reward_stack

STEPS = 3
FAMILIES = ("sd15", "flux_schnell")
#: float32 results of one code path compared with another run of it: rounding of the activations' magnitudes only
EPS32 = torch.finfo(torch.float32).eps


@pytest.fixture(scope="module")
def stack(engine):
    return reward_stack(engine, (("pickscore", 1.0),))


def build(engine, family):
    reason = fixture_families(engine).family_unavailable(family)
    if reason:
        pytest.skip(reason)
    model, vae, pos, neg = engine.call_node("ReNOTestTinyFamily", inference=True, family=family, transformer_depth=1,
                                            seed=0, text=PROMPT_TEXT, negative_text="")
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=64, height=64, batch_size=1)
    import comfy.sample

    latent = {"samples": comfy.sample.fix_empty_latent_channels(model, latent["samples"])}
    return dict(model=model, vae=vae, pos=pos, neg=neg, latent=latent)


def reno(engine, p, stack, sampler, *, iterations=1, scheduler="simple", gradient="exact", k=1, seed=3, lr=5.0):
    out = engine.call_node("ReNOSampler", inference=True, model=p["model"], positive=p["pos"], negative=p["neg"],
                           vae=p["vae"], latent_image=p["latent"], rewards=stack, prompt=PROMPT_TEXT, seed=seed,
                           iterations=iterations, learning_rate=lr, cfg=1.0, regularization=0.01, grad_clip=0.1,
                           steps=STEPS, sampler_name=sampler, scheduler=scheduler, gradient=gradient, gradient_steps=k)
    return out["result"]


def ksampler(engine, p, sampler, *, scheduler="simple", seed=3):
    (out,) = engine.call_node("KSampler", inference=True, model=p["model"], seed=seed, steps=STEPS, cfg=1.0,
                              sampler_name=sampler, scheduler=scheduler, positive=p["pos"], negative=p["neg"],
                              latent_image=p["latent"], denoise=1.0)
    return out["samples"]


@pytest.mark.parametrize("family", FAMILIES)
def test_every_host_sampler_equals_ksampler_at_one_iteration_and_reaches_the_noise(engine, stack, family):
    import comfy.samplers

    p = build(engine, family)
    names = list(comfy.samplers.KSampler.SAMPLERS)
    assert {"euler", "euler_ancestral", "dpmpp_2m", "lcm", "ddpm", "res_multistep"} <= set(names)
    errors, failures = {}, []
    for name in names:
        try:  # two iterations at learning rate 0: the first computes the noise gradient, neither moves the noise
            latent, _, history = reno(engine, p, stack, name, iterations=2, lr=0.0)
        except Exception as exc:  # noqa: BLE001 - every sampler is tried; the failures are listed together
            failures.append(f"{name}: {type(exc).__name__}: {exc}")
            continue
        want = ksampler(engine, p, name)
        grad = history.records[0]["grad_norm"][0]
        ok_grad = grad is not None and math.isfinite(grad) and grad > 0
        err = float((latent["samples"].float() - want.float()).abs().max())
        # the same host function on the same inputs: only float32 rounding of the latents' magnitudes may differ (the
        # run decodes and scores as well, which does not feed back into the sample)
        bound = max(1e-5, 64 * EPS32 * float(want.abs().max()))
        errors[name] = err
        if err > bound or not ok_grad:
            failures.append(f"{name}: max abs error {err:.3g} (bound {bound:.3g}), first noise gradient norm {grad}")
    print(f"\n[host samplers] {family}, {STEPS} steps, simple: max abs error vs KSampler at one iteration")
    for name, err in errors.items():
        print(f"  {name:<32}{err:.3g}")
    assert not failures, "\n".join(failures)


@pytest.mark.slow
def test_every_sampler_with_every_scheduler_equals_ksampler(engine, stack):
    """The oracle table: every sampler x every scheduler of the host x both families, at one iteration (no update),
    max abs error against KSampler. RENO_ORACLE_TABLE=PATH writes it as Markdown (the README's table)."""
    import os

    import comfy.samplers

    samplers, schedulers = list(comfy.samplers.KSampler.SAMPLERS), list(comfy.samplers.KSampler.SCHEDULERS)
    table: dict[tuple[str, str], dict[str, float]] = {}
    failures = []
    for family in FAMILIES:
        p = build(engine, family)
        for scheduler in schedulers:
            for name in samplers:
                try:
                    latent, _, _ = reno(engine, p, stack, name, iterations=1, scheduler=scheduler)
                except Exception as exc:  # noqa: BLE001 - every pair is tried; the failures are listed together
                    failures.append(f"{family} {name} {scheduler}: {type(exc).__name__}: {exc}")
                    continue
                want = ksampler(engine, p, name, scheduler=scheduler)
                err = float((latent["samples"].float() - want.float()).abs().max())
                table.setdefault((name, scheduler), {})[family] = err
                if err > max(1e-5, 64 * EPS32 * float(want.abs().max())):
                    failures.append(f"{family} {name} {scheduler}: max abs error {err:.3g}")
    lines = [f"| sampler | {' | '.join(schedulers)} |", "|---|" + "---|" * len(schedulers)]
    for name in samplers:
        cells = []
        for scheduler in schedulers:
            errs = table.get((name, scheduler), {})
            cells.append(" / ".join(f"{errs[f]:.1g}" if f in errs else "fail" for f in FAMILIES))
        lines.append(f"| `{name}` | {' | '.join(cells)} |")
    text = "\n".join(lines) + "\n"
    print(f"\n[oracle table] max abs error vs KSampler, {STEPS} steps, one iteration ({' / '.join(FAMILIES)})\n{text}")
    if os.environ.get("RENO_ORACLE_TABLE"):
        with open(os.environ["RENO_ORACLE_TABLE"], "w", encoding="utf-8") as f:
            f.write(text)
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral", "lcm", "dpmpp_2m", "ddpm"])
def test_the_host_path_gradient_equals_the_chains(engine, stack, sampler, monkeypatch):
    """One update through the host's sampler function and through ``optimizer/chain.py`` (the host-free reference,
    oracle-equal to KSampler on its five samplers): the same first noise gradient and the same second iteration."""
    pack = pack_module(engine)
    p = build(engine, "sd15")
    _, _, host_history = reno(engine, p, stack, sampler, iterations=2)
    # the chain path: the run without the host sampler (what the trainer's rollouts use)
    monkeypatch.setattr(pack.nodes.lifecycle.ReNORun, "_prepare_sampler", lambda self: None)
    _, _, chain_history = reno(engine, p, stack, sampler, iterations=2)
    for key in ("grad_norm", "latent_norm", "loss"):
        for i in (0, 1):
            a_list, b_list = host_history.records[i][key], chain_history.records[i][key]
            if a_list is None or b_list is None:  # the last iteration computes no gradient
                assert a_list is None and b_list is None, (sampler, key, i)
                continue
            for a, b in zip(a_list, b_list):
                # the chain re-implements the same update rules op for op: float32 rounding through a few steps'
                # backward
                assert abs(a - b) <= 256 * EPS32 * max(abs(a), abs(b)), (sampler, key, i, a, b)


def test_a_sampler_that_is_not_a_ksampler_is_refused_by_name(engine, stack):
    import comfy.samplers

    pack = pack_module(engine)

    class OwnSampler(comfy.samplers.Sampler):
        def sample(self, *args, **kwargs):
            raise AssertionError("never sampled")

    with pytest.raises(pack.nodes.host_sampling.SamplerRefused, match="OwnSampler samples with its own code"):
        pack.nodes.host_sampling.differentiable_sampler(OwnSampler())


def test_samplers_get_their_no_grad_back_after_the_run(engine, stack):
    import comfy.k_diffusion.sampling as kds

    pack = pack_module(engine)
    before = {name: fn for name, fn in vars(kds).items() if callable(fn) and name.startswith("sample_")}
    assert pack.nodes.host_sampling._no_grad_wrapper(before["sample_euler"])
    with pack.nodes.host_sampling.samplers_with_gradients():
        assert not pack.nodes.host_sampling._no_grad_wrapper(kds.sample_euler)
    assert {name: fn for name, fn in vars(kds).items() if callable(fn) and name.startswith("sample_")} == before
    p = build(engine, "sd15")
    reno(engine, p, stack, "heun")
    assert {name: fn for name, fn in vars(kds).items() if callable(fn) and name.startswith("sample_")} == before


@pytest.mark.parametrize("make", [
    ("KSamplerSelect", {"sampler_name": "res_multistep"}),
    ("SamplerDPMPP_2M_SDE", {"solver_type": "midpoint", "eta": 1.0, "s_noise": 1.0, "noise_device": "cpu"}),
    ("SamplerLCM", None),
    ("SamplerEulerAncestral", {"eta": 0.5, "s_noise": 1.0}),
], ids=lambda m: m[0])
def test_reno_sampler_custom_takes_a_core_nodes_sampler(engine, stack, make):
    """ReNO Sampler (custom)'s ``sampler`` input: a SAMPLER a core node makes (with its options: SDE samplers' Brownian
    tree, eta...) equals SamplerCustomAdvanced with that SAMPLER at one iteration."""
    node, options = make
    cls = engine.node_class(node) if node in engine.nodes.NODE_CLASS_MAPPINGS else None
    if cls is None:
        pytest.skip(f"{node} is not a node of this ComfyUI")
    if options is None:  # the node's own defaults
        spec = cls.INPUT_TYPES().get("required", {})
        options = {k: v[1]["default"] for k, v in spec.items() if len(v) > 1 and "default" in v[1]}
    p = build(engine, "sd15")
    (sigmas,) = engine.call_node("BasicScheduler", inference=True, model=p["model"], scheduler="simple", steps=STEPS,
                                 denoise=1.0)
    (noise,) = engine.call_node("RandomNoise", inference=True, noise_seed=3)
    (guider,) = engine.call_node("BasicGuider", inference=True, model=p["model"], conditioning=p["pos"])
    (core,) = engine.call_node(node, inference=True, **options)
    (reno_sampler,) = engine.call_node("ReNOSamplerCustom", inference=True, vae=p["vae"], rewards=stack,
                                       prompt=PROMPT_TEXT, iterations=1, learning_rate=5.0, regularization=0.01,
                                       grad_clip=0.1, sampler=core)
    got = engine.call_node("SamplerCustomAdvanced", inference=True, noise=noise, guider=guider, sampler=reno_sampler,
                           sigmas=sigmas, latent_image=p["latent"])[0]
    want = engine.call_node("SamplerCustomAdvanced", inference=True, noise=noise, guider=guider, sampler=core,
                            sigmas=sigmas, latent_image=p["latent"])[0]
    err = float((got["samples"].float() - want["samples"].float()).abs().max())
    assert err <= max(1e-5, 64 * EPS32 * float(want["samples"].abs().max())), (node, err)
