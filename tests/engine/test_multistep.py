"""ReNO beyond one step: the sampling chain through the ReNO nodes, against ComfyUI's own samplers.

(a) Oracle: ReNO Sampler with ``steps`` = 4 and any sampler of the chain equals KSampler with the same sampler,
scheduler, steps and seed at one iteration; ReNO Sampler (custom) runs through all the sigmas it is given and equals
SamplerCustomAdvanced with ComfyUI's sampler of the same name. (b) Every gradient mode reaches the noise and raises the
reward. (c) ReNO Noise renders the optimized noise with SamplerCustomAdvanced and, with the run's own sampler and
steps, reproduces ReNO's latent exactly. (d) The history records the chain.
"""

from __future__ import annotations

import pytest
import torch
from engine_support import PROMPT_TEXT, fixture_families, pack_module, reward_stack
from tolerances import GRAD_K, ORACLE_IMAGE_K, ORACLE_LATENT_K, assert_rounding_close, eps

SAMPLERS = ["euler", "euler_ancestral", "lcm", "dpmpp_2m", "ddpm"]
STEPS = 4
ERRORS: dict = {}


@pytest.fixture(scope="module")
def stack(engine):
    return reward_stack(engine, (("pickscore", 1.0), ("clipscore", 0.5)))


def build(engine, family):
    fam = fixture_families(engine)
    reason = fam.family_unavailable(family)
    if reason:
        pytest.skip(reason)
    model, vae, pos, neg = engine.call_node("ReNOTestTinyFamily", inference=True, family=family, transformer_depth=1,
                                            seed=0, text=PROMPT_TEXT, negative_text="")
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=64, height=64, batch_size=1)
    if family in ("sd3", "flux", "flux_schnell"):
        import comfy.sample

        latent = {"samples": comfy.sample.fix_empty_latent_channels(model, latent["samples"])}
    return dict(model=model, vae=vae, pos=pos, neg=neg, latent=latent)


@pytest.fixture(scope="module")
def sd(engine):
    return build(engine, "sd15")


def reno(engine, p, stack, *, iterations=1, steps=STEPS, sampler="euler", scheduler="simple", gradient="exact", k=1,
         seed=3, lr=5.0):
    out = engine.call_node("ReNOSampler", inference=True, model=p["model"], positive=p["pos"], negative=p["neg"],
                           vae=p["vae"], latent_image=p["latent"], rewards=stack, prompt=PROMPT_TEXT, seed=seed,
                           iterations=iterations, learning_rate=lr, cfg=1.0, regularization=0.01, grad_clip=0.1,
                           steps=steps, sampler_name=sampler, scheduler=scheduler, gradient=gradient, gradient_steps=k)
    return out["result"]


def ksampler(engine, p, *, steps=STEPS, sampler="euler", scheduler="simple", seed=3):
    (out,) = engine.call_node("KSampler", inference=True, model=p["model"], seed=seed, steps=steps, cfg=1.0,
                              sampler_name=sampler, scheduler=scheduler, positive=p["pos"], negative=p["neg"],
                              latent_image=p["latent"], denoise=1.0)
    return out


def max_err(a, b):
    return float((a.float() - b.float()).abs().max())


def assert_chain_close(got, want, sigma: float, noise, latent, what: str):
    """Two runs of the same sampler chain (the pack's under autograd, ComfyUI's own): each of the ``STEPS`` steps
    may round as a one-step oracle does, at the noised latent's magnitude |latent| + sigma_max |noise| (each step's
    output comes from its input by cancellation) or the result's, whichever is larger."""
    scale = max(sigma * float(noise.abs().max()) + float(latent["samples"].abs().max()),
                float(want.abs().max()), float(got.abs().max()))
    assert_rounding_close(got.float(), want.float(), STEPS * ORACLE_LATENT_K, scale=scale, msg=what)


def comfy_noise(noise_node, latent):
    """The noise a NOISE input (RandomNoise, ReNO Noise) gives for ``latent``."""
    return noise_node.generate_noise(latent)


@pytest.mark.parametrize("family", ["sd15", "flux"])
@pytest.mark.parametrize("sampler", SAMPLERS)
def test_reno_sampler_at_one_iteration_is_ksampler_with_the_same_sampler_and_steps(engine, stack, family, sampler):
    p = build(engine, family)
    latent, image, history = reno(engine, p, stack, sampler=sampler)
    want = ksampler(engine, p, sampler=sampler)
    err = max_err(latent["samples"], want["samples"])
    ERRORS[(family, sampler)] = err
    print(f"\n[multistep oracle] {family} {sampler} {STEPS} steps: max abs error {err:.3g}")
    assert_chain_close(latent["samples"], want["samples"], history.sigma, history.best_noise, p["latent"],
                       f"{family} {sampler}")
    (decoded,) = engine.call_node("VAEDecode", inference=True, samples=want, vae=p["vae"])
    # the decoder on (nearly) the same latent, in another layout: as the one-step oracle's image (|image| <= 1)
    assert_rounding_close(image.float(), decoded.float(), ORACLE_IMAGE_K, scale=1.0, msg=f"{family} {sampler} image")
    # the history records the chain
    cfg = history.config
    assert (cfg["steps"], cfg["sampler"], cfg["scheduler"], cfg["gradient"]) == (STEPS, sampler, "simple", "exact")
    assert len(cfg["sigmas"]) == STEPS + 1 and cfg["sigmas"][-1] == 0.0 and cfg["sigmas"][0] == history.sigma


def test_the_defaults_are_todays_one_step_reno(engine, sd, stack):
    """steps 1 / euler / simple: the sigmas are [sigma_max, 0], as before the chain existed."""
    _, _, history = reno(engine, sd, stack, steps=1)
    ms = sd["model"].model.model_sampling
    assert history.config["sigmas"] == [float(ms.sigma_max), 0.0]  # the scheduler's own floats
    assert history.config["steps"] == 1


def test_a_scheduler_other_than_simple(engine, sd, stack):
    latent, _, history = reno(engine, sd, stack, sampler="dpmpp_2m", scheduler="karras")
    want = ksampler(engine, sd, sampler="dpmpp_2m", scheduler="karras")
    assert_chain_close(latent["samples"], want["samples"], history.sigma, history.best_noise, sd["latent"],
                       "dpmpp_2m karras")
    assert history.config["scheduler"] == "karras"


@pytest.mark.parametrize("gradient,k", [("exact", 1), ("drtune", 1), ("last k", 1), ("drtune", 0)])
def test_every_gradient_mode_reaches_the_noise_and_raises_the_reward(engine, sd, stack, gradient, k):
    _, _, history = reno(engine, sd, stack, iterations=6, gradient=gradient, k=k, sampler="euler_ancestral")
    grads = [r["grad_norm"][0] for r in history.records[:-1]]
    assert all(g > 0 for g in grads), grads
    assert history.best_iteration[0] > 0 and history.best_loss[0] < history.records[0]["loss"][0]
    assert history.config["gradient"] == gradient and history.config["gradient_steps"] == k


def test_exact_drtune_and_last_k_give_three_different_noise_gradients(engine, sd, stack):
    """drtune holds the network's output fixed before the last k steps (DRTune's eps = net(x.detach()): the skip
    term of ComfyUI's x0 stays attached), last k the whole x0 prediction, exact nothing."""
    first = {mode: reno(engine, sd, stack, iterations=2, gradient=mode)[2].records[0]["grad_norm"][0]
             for mode in ("exact", "drtune", "last k")}
    for a, b in (("exact", "drtune"), ("exact", "last k"), ("drtune", "last k")):
        # farther apart than two computations of one gradient can be (GRAD_K roundings of its size)
        assert abs(first[a] - first[b]) > GRAD_K * eps(torch.float32) * first[a], (a, b, first)


def test_reno_sampler_custom_runs_through_every_sigma(engine, sd, stack):
    (sigmas,) = engine.call_node("BasicScheduler", inference=True, model=sd["model"], scheduler="simple", steps=STEPS,
                                 denoise=1.0)
    (noise,) = engine.call_node("RandomNoise", inference=True, noise_seed=3)
    (guider,) = engine.call_node("BasicGuider", inference=True, model=sd["model"], conditioning=sd["pos"])
    for sampler in ("euler", "euler_ancestral"):
        (reno_sampler,) = engine.call_node("ReNOSamplerCustom", inference=True, vae=sd["vae"], rewards=stack,
                                           prompt=PROMPT_TEXT, iterations=1, learning_rate=5.0, regularization=0.01,
                                           grad_clip=0.1, sampler_name=sampler)
        (comfy_sampler,) = engine.call_node("KSamplerSelect", inference=True, sampler_name=sampler)
        got = engine.call_node("SamplerCustomAdvanced", inference=True, noise=noise, guider=guider,
                               sampler=reno_sampler, sigmas=sigmas, latent_image=sd["latent"])[0]
        want = engine.call_node("SamplerCustomAdvanced", inference=True, noise=noise, guider=guider,
                                sampler=comfy_sampler, sigmas=sigmas, latent_image=sd["latent"])[0]
        assert_chain_close(got["samples"], want["samples"], float(sigmas[0]), comfy_noise(noise, sd["latent"]),
                           sd["latent"], f"custom {sampler}")


@pytest.mark.parametrize("sampler", ["euler", "euler_ancestral"])
def test_reno_noise_reproduces_the_run_with_its_own_sampler_and_renders_with_others(engine, sd, stack, sampler):
    latent, _, history = reno(engine, sd, stack, iterations=4, sampler=sampler, seed=5)
    assert history.best_iteration[0] > 0  # the noise really is optimized, not the seed's
    (noise,) = engine.call_node("ReNONoise", inference=True, history=history)
    (guider,) = engine.call_node("BasicGuider", inference=True, model=sd["model"], conditioning=sd["pos"])
    (sigmas,) = engine.call_node("BasicScheduler", inference=True, model=sd["model"], scheduler="simple", steps=STEPS,
                                 denoise=1.0)
    (comfy_sampler,) = engine.call_node("KSamplerSelect", inference=True, sampler_name=sampler)
    got = engine.call_node("SamplerCustomAdvanced", inference=True, noise=noise, guider=guider, sampler=comfy_sampler,
                           sigmas=sigmas, latent_image=sd["latent"])[0]
    err = max_err(got["samples"], latent["samples"])
    print(f"\n[ReNO Noise] {sampler}: SamplerCustomAdvanced vs ReNO's best latent, max abs error {err:.3g}")
    assert_chain_close(got["samples"], latent["samples"], float(sigmas[0]), history.best_noise, sd["latent"],
                       f"ReNO Noise {sampler}")
    # another step count renders too (optimize at 4 steps, render at 8)
    (sigmas8,) = engine.call_node("BasicScheduler", inference=True, model=sd["model"], scheduler="simple", steps=8,
                                  denoise=1.0)
    other = engine.call_node("SamplerCustomAdvanced", inference=True, noise=noise, guider=guider,
                             sampler=comfy_sampler, sigmas=sigmas8, latent_image=sd["latent"])[0]
    assert torch.isfinite(other["samples"]).all()


def test_reno_noise_refuses_another_latent_shape_clearly(engine, sd, stack):
    _, _, history = reno(engine, sd, stack, iterations=1, steps=1)
    (noise,) = engine.call_node("ReNONoise", inference=True, history=history)
    (bigger,) = engine.call_node("EmptyLatentImage", inference=True, width=128, height=64, batch_size=1)
    with pytest.raises(ValueError, match="same width, height and batch size"):
        noise.generate_noise(bigger)


def test_an_unknown_sampler_or_gradient_is_refused_before_any_work(engine, sd, stack):
    with pytest.raises(ValueError, match="sampler_name: 'heun_typo' is not a sampler of this ComfyUI"):
        reno(engine, sd, stack, sampler="heun_typo")  # every sampler of the host is offered (heun is one now)
    with pytest.raises(ValueError, match="gradient"):
        reno(engine, sd, stack, gradient="full")


def test_pack_is_loaded(engine):
    assert "ReNONoise" in pack_module(engine).NODE_CLASS_MAPPINGS
