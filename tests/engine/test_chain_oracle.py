"""The differentiable sampling chain (optimizer/chain.py) against ComfyUI's own multi-step samplers.

For every family of the fixture pack (``ReNOTestTinyFamily``) and every sampler of the chain: the chain with
no update (a plain forward pass) run as a ``comfy.samplers.Sampler`` through ``comfy.sample.sample_custom``
equals ComfyUI's ``KSampler`` node with the same sampler, scheduler, steps, seed and cfg 1.0, on the latent to
float32 rounding at the noised latent's magnitude (tests/tolerances.py). The Sampler drives the model as ComfyUI's KSAMPLER does: start ``noise_scaling(sigmas[0], noise,
latent, max_denoise)``, x0 from ``model_wrap(x, sigma * s_in, model_options=..., seed=...)``, result through
``inverse_noise_scaling(sigmas[-1], x)``; the ancestral noises are ``draw_step_noises`` drawn with the host's own
``default_noise_sampler(x, extra_args["seed"])`` (0.33 seeds it with ``seed + 1`` on the CPU). The max errors are printed as a table (pytest -s).
"""

from __future__ import annotations

import pytest
import torch
from engine_support import fixture_families
from reno_pack.optimizer.chain import SAMPLERS, ChainSpec, GradientPolicy, draw_step_noises, run_chain
from tolerances import ORACLE_LATENT_K, rounding_tol

FAMILIES = ["sd15", "sd21v", "sdxl", "pixart", "sd3", "flux", "flux_schnell"]
SIDE = {"pixart": 512}  # PixArt derives its position-embedding base size from the latent size
STEPS = 4
SEED = 5
#: every (family, sampler) with ComfyUI's "simple" schedule, plus one EPS family with "karras" and one flow
#: family with "sgm_uniform" for every sampler, and one batch of two (the ancestral noise is drawn per batch)
CASES = ([(f, s, "simple", 1) for f in FAMILIES for s in SAMPLERS]
         + [("sd15", s, "karras", 1) for s in SAMPLERS] + [("sd3", s, "sgm_uniform", 1) for s in SAMPLERS]
         + [("sd15", "euler_ancestral", "simple", 2), ("flux", "euler_ancestral", "simple", 2)])
ERRORS: dict = {}
_PARTS: dict = {}


@pytest.fixture(scope="module", autouse=True)
def error_table():
    yield
    _PARTS.clear()  # free the models while the engine's modules are alive
    if ERRORS:
        samplers = list(SAMPLERS)
        rows = sorted({(f, sch, b) for f, _, sch, b in ERRORS}, key=lambda r: (FAMILIES.index(r[0]), r[1], r[2]))
        lines = ["", "[chain oracle] max abs error on the latent vs KSampler (steps 4, cfg 1.0, seed 5)",
                 f"{'family':<13}{'scheduler':<12}{'batch':<6}" + "".join(f"{s:>17}" for s in samplers)]
        for f, sch, b in rows:
            cells = [ERRORS.get((f, s, sch, b)) for s in samplers]
            lines.append(f"{f:<13}{sch:<12}{b:<6}" + "".join(f"{'-' if e is None else f'{e:.3g}':>17}" for e in cells))
        print("\n".join(lines))


class ChainSampler:
    """Made lazily (comfy is importable only once the engine booted): a Sampler running ``run_chain``."""

    @staticmethod
    def make(sampler_name: str, policy: GradientPolicy, seen: dict):
        import comfy.k_diffusion.sampling
        import comfy.model_sampling
        import comfy.samplers

        class _ChainSampler(comfy.samplers.Sampler):
            def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
                       disable_pbar=False):
                assert denoise_mask is None
                ms = model_wrap.inner_model.model_sampling
                flow = isinstance(ms, comfy.model_sampling.CONST)
                x = ms.noise_scaling(sigmas[0], noise, latent_image, self.max_denoise(model_wrap, sigmas))
                seed = extra_args.get("seed")
                noises = draw_step_noises(x, sampler_name, sigmas, seed, flow=flow,
                                          noise_sampler=comfy.k_diffusion.sampling.default_noise_sampler(x, seed=seed))
                spec = ChainSpec(sampler_name, sigmas, noises, flow=flow)
                options, seed = extra_args.get("model_options", {}), extra_args.get("seed")

                def denoise(x, sigma):
                    return model_wrap(x, sigma, model_options=options, seed=seed)

                out, x0 = run_chain(denoise, x, spec, policy)
                seen.update(flow=flow, sigmas=sigmas.clone(), noises=sum(n is not None for n in noises))
                return ms.inverse_noise_scaling(sigmas[-1], out)

        return _ChainSampler()


@pytest.fixture(scope="module")
def families_module(engine):
    return fixture_families(engine)


def _parts(engine, families_module, family):
    reason = families_module.family_unavailable(family)
    if reason:
        pytest.skip(f"{family}: {reason} ({engine.info})")
    if family not in _PARTS:
        model, vae, pos, neg = engine.call_node("ReNOTestTinyFamily", inference=True, family=family,
                                                transformer_depth=1, seed=0, text="a photo of a cat",
                                                negative_text="")
        _PARTS[family] = dict(model=model, pos=pos, neg=neg)
    return _PARTS[family]


@pytest.mark.parametrize(("family", "sampler", "scheduler", "batch"), CASES,
                         ids=[f"{f}-{s}-{sch}-b{b}" for f, s, sch, b in CASES])
def test_chain_forward_is_comfyuis_ksampler(engine, families_module, family, sampler, scheduler, batch):
    import comfy.sample
    import comfy.samplers

    p = _parts(engine, families_module, family)
    side = SIDE.get(family, 64)
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=side, height=side, batch_size=batch)
    (want,) = engine.call_node("KSampler", inference=True, model=p["model"], seed=SEED, steps=STEPS, cfg=1.0,
                               sampler_name=sampler, scheduler=scheduler, positive=p["pos"], negative=p["neg"],
                               latent_image=latent, denoise=1.0)
    seen: dict = {}
    policy = GradientPolicy("drtune", k=1) if sampler == "dpmpp_2m" else GradientPolicy("exact")
    with torch.inference_mode():
        samples = latent["samples"]
        if hasattr(comfy.sample, "fix_empty_latent_channels"):
            samples = comfy.sample.fix_empty_latent_channels(p["model"], samples)
        noise = comfy.sample.prepare_noise(samples, SEED)
        sigmas = comfy.samplers.calculate_sigmas(p["model"].get_model_object("model_sampling"), scheduler, STEPS)
        got = comfy.sample.sample_custom(p["model"], noise, 1.0, ChainSampler.make(sampler, policy, seen), sigmas,
                                         p["pos"], p["neg"], samples, seed=SEED)
    assert seen["flow"] == (family in ("sd3", "flux", "flux_schnell"))
    assert len(seen["sigmas"]) == STEPS + 1 and float(seen["sigmas"][-1]) == 0.0
    assert seen["noises"] == (STEPS - 1 if sampler in ("euler_ancestral", "lcm", "ddpm") else 0)
    assert got.shape == want["samples"].shape
    err = float((got.float() - want["samples"].float()).abs().max())
    ERRORS[(family, sampler, scheduler, batch)] = err
    assert torch.isfinite(want["samples"]).all()
    # two implementations of the same steps: each may round as a one-step oracle does, at the noised latent's
    # magnitude |latent| + sigma_max |noise| (each step's output comes from its input by cancellation)
    scale = max(float(sigmas[0]) * float(noise.abs().max()) + float(samples.abs().max()),
                float(want["samples"].abs().max()))
    tol = rounding_tol(STEPS * ORACLE_LATENT_K, torch.float32, scale=scale)
    assert err <= tol, f"{family}/{sampler}/{scheduler}: chain vs KSampler max abs error {err:.3g} > {tol:.3g}"
