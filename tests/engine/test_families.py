"""Every one-step model family through ReNO, against ComfyUI's own samplers.

Per family (tiny random models built from the engine's own ``comfy.supported_models`` classes by the
fixture node ``ReNOTestTinyFamily``): (a) the oracle: ReNO with one iteration returns exactly the latent and
image of ComfyUI's own one-step euler sample (KSampler, and SamplerCustom/SamplerCustomAdvanced with the
same sigmas), through both ``ReNOSampler`` and ``ReNOSamplerCustom``; (b) with optimization on, gradients
reach the noise and the weighted reward improves; (c) a batch runs independent optimizations, each element
starting from the noise ComfyUI's samplers use for it (``batch_index`` included).
A family the engine's ComfyUI lacks is skipped with the reason.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from engine_support import first_iteration, fixture_families
from tolerances import EPS32, ORACLE_IMAGE_K, ORACLE_LATENT_K, assert_rounding_close

PROMPT = "a photo of a cat"
FAMILIES = ["sd15", "sd21v", "sdxl", "pixart", "sd3", "flux", "flux_schnell"]
FLOW = {"sd3", "flux", "flux_schnell"}
#: image side per family: PixArt derives its position-embedding base size from the latent size
#: (round(side/64)*64 latent pixels), so it needs a real 512 px latent
SIDE = {"pixart": 512}
REWARDS = (("pickscore", 1.0), ("clipscore", 0.5))


@pytest.fixture(scope="module")
def reward_dir(engine):
    from tiny_rewards import ALL_REWARDS, write_reward_root

    root = Path(engine.folder_paths.get_folder_paths("reno_rewards")[0])
    return write_reward_root(root, ALL_REWARDS)


@pytest.fixture(scope="module")
def families_module(engine):
    return fixture_families(engine)


@pytest.fixture(scope="module")
def stack(engine, reward_dir):
    out = None
    for name, weight in REWARDS:
        (out,) = engine.call_node("ReNORewardLoader", inference=True, reward=name, weight=weight, rewards=out)
    return out


_PARTS: dict = {}


@pytest.fixture(params=FAMILIES)
def parts(request, engine, families_module):
    family = request.param
    reason = families_module.family_unavailable(family)
    if reason:
        pytest.skip(f"{family}: {reason} ({engine.info})")
    if family not in _PARTS:
        depth = 1  # attention blocks: the 2024 UNet's in-place `x += n` backpropagates through the bridge too
        model, vae, pos, neg = engine.call_node("ReNOTestTinyFamily", inference=True, family=family,
                                                transformer_depth=depth, seed=0, text=PROMPT, negative_text="")
        channels = families_module.FAMILIES[family][1]
        _PARTS[family] = dict(family=family, model=model, vae=vae, pos=pos, neg=neg, channels=channels)
    return _PARTS[family]


def side(p):
    return SIDE.get(p["family"], 64)


def empty_latent(engine, p, batch=1):
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=side(p), height=side(p), batch_size=batch)
    return latent


def reno(engine, p, stack, latent, *, iterations, seed, cfg=1.0, lr=5.0):
    out = engine.call_node("ReNOSampler", inference=True, model=p["model"], positive=p["pos"], negative=p["neg"],
                           vae=p["vae"], latent_image=latent, rewards=stack, prompt=PROMPT, seed=seed,
                           iterations=iterations, learning_rate=lr, cfg=cfg, regularization=0.01, grad_clip=0.1)
    return out["result"]


def custom(engine, p, sampler, sigmas, latent, *, seed, cfg):
    """ComfyUI's custom sampling node with ``sampler``: SamplerCustomAdvanced + CFGGuider where the engine
    has it, else SamplerCustom (2024). Returns the output LATENT."""
    if "SamplerCustomAdvanced" in engine.nodes.NODE_CLASS_MAPPINGS:
        (noise,) = engine.call_node("RandomNoise", inference=True, noise_seed=seed)
        if cfg == 1.0:
            (guider,) = engine.call_node("BasicGuider", inference=True, model=p["model"], conditioning=p["pos"])
        else:
            (guider,) = engine.call_node("CFGGuider", inference=True, model=p["model"], positive=p["pos"],
                                         negative=p["neg"], cfg=cfg)
        out = engine.call_node("SamplerCustomAdvanced", inference=True, noise=noise, guider=guider, sampler=sampler,
                               sigmas=sigmas, latent_image=latent)
    else:
        out = engine.call_node("SamplerCustom", inference=True, model=p["model"], add_noise=True, noise_seed=seed,
                               cfg=cfg, positive=p["pos"], negative=p["neg"], sampler=sampler, sigmas=sigmas,
                               latent_image=latent)
    return out[0]


def decode(engine, p, latent):
    (image,) = engine.call_node("VAEDecode", inference=True, samples=latent, vae=p["vae"])
    return image


def max_err(a, b):
    return float((a.float() - b.float()).abs().max())


def noised_scale(sigma: float, noise, latent) -> float:
    """max |x| of the noised latent x = latent + sigma * noise a one-step sample starts from: its output comes
    from x by cancellation, so its rounding is relative to |x| as well as to the result's own size."""
    return sigma * float(noise.abs().max()) + float(latent["samples"].abs().max())


def assert_oracle(got_latent, want_latent, got_image, want_image, scale, what):
    assert_rounding_close(got_latent.float(), want_latent.float(), ORACLE_LATENT_K,
                          scale=max(scale, float(want_latent.abs().max())), msg=f"{what} latent")
    assert_rounding_close(got_image.float(), want_image.float(), ORACLE_IMAGE_K, scale=1.0, msg=f"{what} image")


def test_oracle_one_iteration_is_comfyuis_own_one_step_sample(engine, parts, stack):
    p, seed = parts, 3
    latent = empty_latent(engine, p)
    channels = p["channels"]
    ms = p["model"].model.model_sampling
    out_latent, image, history = reno(engine, p, stack, latent, iterations=1, seed=seed)
    # the sigma: sigma_max (t=999) for eps/v models, 1.0 for flow models; one "simple" step starts at the model
    # sampling's own sigma_max, the same float
    assert history.sigma == float(ms.sigma_max)
    if p["family"] in FLOW:
        assert history.sigma == 1.0
    assert out_latent["samples"].shape == (1, channels, side(p) // 8, side(p) // 8)  # a 4-channel empty latent is widened as ComfyUI does

    (ks,) = engine.call_node("KSampler", inference=True, model=p["model"], seed=seed, steps=1, cfg=1.0,
                             sampler_name="euler", scheduler="simple", positive=p["pos"], negative=p["neg"],
                             latent_image=latent, denoise=1.0)
    ks_image = decode(engine, p, ks)
    errs = {"ksampler_latent": max_err(out_latent["samples"], ks["samples"]), "ksampler_image": max_err(image, ks_image)}
    scale = noised_scale(history.sigma, history.best_noise, latent)
    print(f"\n[oracle] {p['family']}: |x| {scale:.3g}, KSampler latent {errs['ksampler_latent']:.3g}")
    assert_oracle(out_latent["samples"], ks["samples"], image, ks_image, scale, "KSampler")

    # ReNO Sampler (custom) inside ComfyUI's custom sampling, with CFG, against euler with the same sigmas
    (sigmas,) = engine.call_node("BasicScheduler", inference=True, model=p["model"], scheduler="simple", steps=1,
                                 denoise=1.0)
    assert float(sigmas[0]) == history.sigma  # the same scheduler on the same model sampling
    (euler,) = engine.call_node("KSamplerSelect", inference=True, sampler_name="euler")
    (reno_sampler,) = engine.call_node("ReNOSamplerCustom", inference=True, vae=p["vae"], rewards=stack,
                                       prompt=PROMPT, iterations=1, learning_rate=5.0, regularization=0.01,
                                       grad_clip=0.1)
    runs = []
    reno_sampler.on_result = runs.append
    for cfg in (1.0, 2.0):
        want = custom(engine, p, euler, sigmas, latent, seed=seed, cfg=cfg)
        got = custom(engine, p, reno_sampler, sigmas, latent, seed=seed, cfg=cfg)
        got_image = runs[-1].result.best_image.movedim(1, -1).cpu()
        errs[f"custom_cfg{cfg:g}_latent"] = max_err(got["samples"], want["samples"])
        errs[f"custom_cfg{cfg:g}_image"] = max_err(got_image, decode(engine, p, want))
        assert_oracle(got["samples"], want["samples"], got_image, decode(engine, p, want), scale, f"custom cfg {cfg:g}")
    print(f"\n[oracle] {p['family']}: sigma={history.sigma:.4f} max abs errors {errs}")


def test_optimization_reaches_the_noise_and_raises_the_reward(engine, parts, stack):
    _, _, history = reno(engine, parts, stack, empty_latent(engine, parts), iterations=4, seed=1)
    first = history.records[0]
    assert first["grad_norm"][0] > 0, "no gradient reached the noise"
    initial, best = first["loss"][0], history.best_loss[0]
    assert history.best_iteration[0] > 0 and best < initial
    print(f"\n[reward] {parts['family']}: iteration-0 loss {initial:.5f} -> best {best:.5f}")


def test_activation_copies_only_for_models_that_modify_activations_in_place(engine, parts, stack):
    """FLUX's blocks and the 2024 SD UNet add in place: ReNO notices at the first backward, restarts with
    copies and remembers it; the other models never pay for copies."""
    inner = parts["model"].model
    record = _pack_module(engine, "nodes/lifecycle.py")._IN_PLACE
    record.pop(inner, None)
    _, _, history = reno(engine, parts, stack, empty_latent(engine, parts), iterations=2, seed=2)
    assert history.iterations == 2 and history.records[0]["grad_norm"][0] > 0
    in_place = parts["family"].startswith("flux")
    assert record.get(inner, False) == in_place


def test_batch_elements_are_independent_and_use_comfyuis_noise(engine, parts, stack):
    import comfy.sample

    p, seed = parts, 7
    samples = empty_latent(engine, p, batch=2)["samples"]
    batch = {"samples": samples, "batch_index": [3, 5]}
    with first_iteration(engine) as first_batch:
        latent, image, history = reno(engine, p, stack, batch, iterations=3, seed=seed)
    channels = p["channels"]
    assert latent["samples"].shape == (2, channels, side(p) // 8, side(p) // 8) and image.shape == (2, side(p), side(p), 3)
    assert latent["batch_index"] == [3, 5]
    wide = samples
    if hasattr(comfy.sample, "fix_empty_latent_channels"):
        wide = comfy.sample.fix_empty_latent_channels(p["model"], samples)
    noise = comfy.sample.prepare_noise(wide, seed, [3, 5])
    # the run's start noise is this noise: the norm of the same float32 values, summed in one order or another
    # (<= 2 roundings of the norm per element summed: d eps relative at most)
    d = noise[0].numel()
    assert history.records[0]["latent_norm"] == pytest.approx(noise.reshape(2, -1).norm(dim=1).tolist(),
                                                              rel=d * EPS32, abs=0)
    # element 1 runs as the same element alone (batch_index 5): iteration 0 (latent, loss) equal up to the batch's
    # other kernels; after it, two lr-5 steps amplify those roundings, so the later iterations are compared by the
    # best iteration and the ranking of their losses. (The noise gradient is not compared: through these tiny random
    # models it is ill-conditioned; at PixArt's 512 px the batch's roundings move it by 0.2 %.)
    single = {"samples": samples[1:], "batch_index": [5]}
    with first_iteration(engine) as first_alone:
        alone = reno(engine, p, stack, single, iterations=3, seed=seed)[2]
    batch_losses = [r["loss"][1] for r in history.records]
    alone_losses = [r["loss"][0] for r in alone.records]
    print(f"\n[batch] {p['family']}: losses {batch_losses} vs {alone_losses}")
    # iteration 0's samples and x0, as the one-step oracle: rounding at the noised latent's magnitude
    scale = noised_scale(history.sigma, noise[1:], {"samples": samples[1:]})
    assert_rounding_close(first_batch["extra"][1:], first_alone["extra"], ORACLE_LATENT_K,
                          scale=max(scale, float(first_alone["extra"].abs().max())), msg="iteration 0's latent")
    # the loss (|loss| ~ 80) of the images decoded from them: the rewards see the image to ~ORACLE_IMAGE_K roundings
    assert batch_losses[0] == pytest.approx(alone_losses[0], rel=ORACLE_IMAGE_K * EPS32, abs=0)
    assert history.best_iteration[1] == alone.best_iteration[0]
    assert sorted(range(3), key=batch_losses.__getitem__) == sorted(range(3), key=alone_losses.__getitem__)
    assert torch.isfinite(image).all()


def _pack_module(engine, rel: str):
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None) or ""
        if f.endswith(rel) and str(engine.workdir) in f:
            return module
    raise AssertionError(f"{rel} is not loaded")


@pytest.mark.parametrize("family", ["sd15", "sd3"])
def test_copying_saved_activations_keeps_the_gradient(engine, families_module, family):
    """The bridge's saved-tensor copies (which make in-place models such as FLUX differentiable) change no
    gradient of a model that needs none."""
    reason = families_module.family_unavailable(family)
    if reason:
        pytest.skip(reason)
    lifecycle = _pack_module(engine, "nodes/lifecycle.py")
    autograd = _pack_module(engine, "nodes/autograd.py")
    model = families_module.build_family_model(family, 1, 0).model.double()  # float64: no rounding noise
    model.diffusion_model.dtype = torch.float64  # the dtype ComfyUI casts inputs to
    cond = [t.double() if torch.is_tensor(t) else {k: v.double() for k, v in t.items()}
            for t in families_module.family_conditioning(family, PROMPT)[0]]
    channels = families_module.FAMILIES[family][1]
    kwargs = {"c_crossattn": cond[0]}
    if "pooled_output" in cond[1]:
        kwargs["y"] = cond[1]["pooled_output"]
    with torch.inference_mode(False), torch.enable_grad(), autograd.normal_tensors([model]):
        grads = []
        for copied in (False, False, True):
            x = torch.randn(1, channels, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
            x.requires_grad_()
            sigma = torch.tensor([float(model.model_sampling.sigma_max)], dtype=torch.float64)
            ctx = lifecycle.saved_activations_copied() if copied else torch.autograd.graph.saved_tensors_hooks(
                lambda t: t, lambda t: t)
            with ctx:
                out = model.apply_model(x, sigma, **kwargs)
            (out.square().sum()).backward()
            grads.append(x.grad.clone())
    assert grads[0].abs().max() > 0
    noise_floor = float((grads[1] - grads[0]).abs().max())  # CPU kernels need not be bitwise deterministic
    print(f"\n[grad] {family}: plain vs plain {noise_floor:.3g}, copied vs plain {float((grads[2] - grads[0]).abs().max()):.3g}")
    # copies change no value: float64, the same ops; what differs is at most a kernel's nondeterministic sum order
    # (the noise floor just measured), bounded by 64 roundings of max |gradient| through a few blocks
    assert_rounding_close(grads[2], grads[0], 64, msg=f"{family}: copied vs plain (noise floor {noise_floor:.3g})")
