"""The model formats and core-node combinations people use, through ReNO on the tiny SD1.5-family model.

Each case builds real files (tests/tiny_formats.py) in the engine's own model folders and loads them with
ComfyUI's core nodes (UNETLoader with fp8 weights, LoraLoaderModelOnly, ModelSamplingDiscrete + FreeU_V2,
ControlNetLoader + ControlNetApplyAdvanced, SetLatentNoiseMask, VAEEncodeForInpaint, split schedules with
SamplerCustomAdvanced), then checks (a) the oracle: ReNO with one iteration (no update) returns what ComfyUI's
own sampler returns on the same inputs, and (b) with a few iterations the weighted reward rises and nothing
is NaN. The measured numbers are printed (``pytest -s``).
"""

from __future__ import annotations

import math
from pathlib import Path

import comfy_host
import pytest
import torch
from engine_support import PROMPT_TEXT, depth_for, reward_stack
from tolerances import ORACLE_IMAGE_K, ORACLE_LATENT_K, assert_rounding_close, rounding_tol

SEED = 3
ITERATIONS = 6
REWARDS = (("pickscore", 1.0), ("clipscore", 0.5))
#: ComfyUI node modules these cases need besides the conftest's (FreeU_V2, ModelSamplingDiscrete)
EXTRA_NODES = ("nodes_freelunch.py", "nodes_model_advanced.py")


# -- fixtures ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def eng(engine):
    missing = [f for f in EXTRA_NODES if not (engine.host.root / "comfy_extras" / f).is_file()]
    comfy_host.boot_engine(engine.host, (), extra_nodes=[f for f in EXTRA_NODES if f not in missing])
    return engine


@pytest.fixture(scope="module")
def stack(eng):
    from tiny_rewards import ALL_REWARDS

    return reward_stack(eng, REWARDS, ALL_REWARDS)


@pytest.fixture(scope="module")
def detection(eng):
    """ComfyUI's model detection recognises the tiny UNet while this module runs."""
    from tiny_formats import tiny_sd15_detection

    with tiny_sd15_detection(32) as cls:
        yield cls


@pytest.fixture(scope="module")
def base(eng):
    model, vae = eng.call_node("ReNOTestTinySD", inference=True, transformer_depth=depth_for(eng), context_dim=32,
                               seed=0)
    (pos,) = eng.call_node("ReNOTestConditioning", inference=True, text=PROMPT_TEXT, context_dim=32)
    (neg,) = eng.call_node("ReNOTestConditioning", inference=True, text="", context_dim=32)
    (latent,) = eng.call_node("EmptyLatentImage", inference=True, width=64, height=64, batch_size=1)
    return dict(model=model, vae=vae, pos=pos, neg=neg, latent=latent)


def need(eng, *class_types):
    missing = [c for c in class_types if c not in eng.nodes.NODE_CLASS_MAPPINGS]
    if missing:
        pytest.skip(f"{eng.info} has no {', '.join(missing)}")


def model_folder(eng, *names) -> Path:
    for name in names:
        if name in eng.folder_paths.folder_names_and_paths:
            folder = Path(eng.folder_paths.get_folder_paths(name)[0])
            assert eng.workdir in folder.parents, f"{name} folder {folder} is outside the test workdir"
            folder.mkdir(parents=True, exist_ok=True)
            return folder
    pytest.skip(f"{eng.info} registers none of the model folders {names}")


# -- helpers -------------------------------------------------------------------------------------------------

def reno(eng, b, stack, *, iterations, model=None, pos=None, neg=None, latent=None, seed=SEED, cfg=1.0):
    out = eng.call_node("ReNOSampler", inference=True, model=model or b["model"], positive=pos or b["pos"],
                        negative=neg or b["neg"], vae=b["vae"], latent_image=latent or b["latent"], rewards=stack,
                        prompt=PROMPT_TEXT, seed=seed, iterations=iterations, learning_rate=5.0, cfg=cfg,
                        regularization=0.01, grad_clip=0.1)
    return out["result"]


def ksampler(eng, b, *, model=None, pos=None, neg=None, latent=None, seed=SEED, cfg=1.0):
    (out,) = eng.call_node("KSampler", inference=True, model=model or b["model"], seed=seed, steps=1, cfg=cfg,
                           sampler_name="euler", scheduler="simple", positive=pos or b["pos"],
                           negative=neg or b["neg"], latent_image=latent or b["latent"], denoise=1.0)
    return out


def decode(eng, b, latent):
    (image,) = eng.call_node("VAEDecode", inference=True, samples=latent, vae=b["vae"])
    return image


def max_err(a, b) -> float:
    return float((a.float() - b.float()).abs().max())


def oracle(eng, b, stack, case, **inputs) -> dict:
    """ReNO with one iteration == KSampler (euler, one step from sigma_max) + VAE Decode on the same inputs."""
    latent, image, history = reno(eng, b, stack, iterations=1, **inputs)
    ks = ksampler(eng, b, **inputs)
    ks_image = decode(eng, b, ks)
    errs = {"latent": max_err(latent["samples"], ks["samples"]), "image": max_err(image, ks_image)}
    print(f"\n[{case}] oracle (iterations=1 vs KSampler) max abs error: latent {errs['latent']:.3g}, "
          f"image {errs['image']:.3g}")
    assert_rounding_close(latent["samples"].float(), ks["samples"].float(), ORACLE_LATENT_K,
                          scale=max(noised_scale(history, inputs.get("latent") or b["latent"]),
                                    float(ks["samples"].abs().max())), msg=f"{case} latent")
    assert_rounding_close(image.float(), ks_image.float(), ORACLE_IMAGE_K, msg=f"{case} image")
    return {"latent": latent, "image": image, "history": history, "ksampler": ks}


def noised_scale(history, latent) -> float:
    """max |x| of the noised latent x = latent + sigma * noise the step starts from: the step rebuilds its output
    from x by cancellation, so its rounding is relative to |x|, not to the (smaller) result."""
    return history.sigma * float(history.best_noise.abs().max()) + float(latent["samples"].abs().max())


def weighted(records, weights: dict, i: int) -> float:
    rec = records[i]
    scores = rec["scores"] if isinstance(rec, dict) else rec.scores
    return sum(w * scores[label][0] for label, w in weights.items())


def check_gain(case, records, weights, best_iteration, loss_of) -> tuple[float, float]:
    first, best = weighted(records, weights, 0), weighted(records, weights, best_iteration)
    losses = [loss_of(r) for r in records]
    print(f"\n[{case}] weighted reward iteration 0 {first:.5f} -> best {best:.5f} (iteration {best_iteration} of "
          f"{len(records)})")
    assert all(math.isfinite(v) for v in losses), f"{case}: non-finite loss {losses}"
    assert best_iteration > 0 and best > first, f"{case}: the reward did not rise ({first} -> {best})"
    return first, best


def reward_gain(eng, b, stack, case, **inputs):
    latent, image, history = reno(eng, b, stack, iterations=ITERATIONS, **inputs)
    assert torch.isfinite(latent["samples"]).all() and torch.isfinite(image).all()
    weights = {r["label"]: r["weight"] for r in history.rewards}
    check_gain(case, history.records, weights, history.best_iteration[0], lambda r: r["loss"][0])
    return latent, image, history


# -- 1. fp8 weights (UNETLoader, ComfyUI's manual-cast ops) ------------------------------------------------------

@pytest.fixture(scope="module")
def unet_file(eng, base, detection):
    from tiny_formats import write_diffusion_model

    folder = model_folder(eng, "diffusion_models", "unet")
    return write_diffusion_model(base["model"], folder / "reno_tiny_unet.safetensors")


@pytest.mark.parametrize("weight_dtype", ["fp8_e4m3fn", "fp8_e5m2"])
def test_fp8_unet_from_unet_loader(eng, base, stack, unet_file, weight_dtype):
    dtype = {"fp8_e4m3fn": torch.float8_e4m3fn, "fp8_e5m2": torch.float8_e5m2}[weight_dtype]
    case = f"fp8 {weight_dtype}"
    (default,) = eng.call_node("UNETLoader", inference=True, unet_name=unet_file.name, weight_dtype="default")
    (model,) = eng.call_node("UNETLoader", inference=True, unet_name=unet_file.name, weight_dtype=weight_dtype)
    weights = [p for p in model.model.diffusion_model.parameters() if p.dim() > 1]
    assert weights and all(p.dtype == dtype for p in weights), {p.dtype for p in weights}
    # the file is the fixture's UNet: loaded at full precision it samples as the fixture does (the same float32
    # weights through the same ops, but another model object whose ops may pick other kernels: a few roundings of
    # the latent, as the oracle); in fp8 it differs
    assert_rounding_close(ksampler(eng, base, model=default)["samples"], ksampler(eng, base)["samples"],
                          ORACLE_LATENT_K)
    assert max_err(ksampler(eng, base, model=model)["samples"], ksampler(eng, base)["samples"]) > 1e-3
    oracle(eng, base, stack, case, model=model)
    reward_gain(eng, base, stack, case, model=model)


# -- 2. LoRA (kohya format), then ModelSamplingDiscrete and FreeU_V2 on top ------------------------------------

@pytest.fixture(scope="module")
def lora_model(eng, base):
    import comfy.lora
    from tiny_formats import write_kohya_lora

    need(eng, "LoraLoaderModelOnly")
    path, sd = write_kohya_lora(base["model"], model_folder(eng, "loras") / "reno_tiny_lora.safetensors")
    # every module of the file maps onto the tiny UNet (so no part of the LoRA is silently dropped)
    key_map = comfy.lora.model_lora_keys_unet(base["model"].model, {})
    patches = comfy.lora.load_lora(sd, key_map)
    modules = {k[: -len(".lora_up.weight")] for k in sd if k.endswith(".lora_up.weight")}
    assert len(modules) >= 8 and len(patches) == len(modules), (len(patches), len(modules))
    (model,) = eng.call_node("LoraLoaderModelOnly", inference=True, model=base["model"], lora_name=path.name,
                             strength_model=1.0)
    return model


def test_lora_from_lora_loader(eng, base, stack, lora_model):
    before = ksampler(eng, base)["samples"].clone()
    changed = max_err(ksampler(eng, base, model=lora_model)["samples"], before)
    print(f"\n[lora] KSampler output changed by the LoRA: max abs {changed:.3g}")
    assert changed > 1e-3, "the LoRA does not change KSampler's output"
    oracle(eng, base, stack, "lora", model=lora_model)
    reward_gain(eng, base, stack, "lora", model=lora_model)
    # the LoRA'd run left the base model as it was: the same model on the same inputs, bit-identical to before
    torch.testing.assert_close(ksampler(eng, base)["samples"], before, rtol=0, atol=0)


@pytest.mark.parametrize("sampling,zsnr", [("v_prediction", False), ("eps", True)])
def test_lora_with_model_sampling_discrete_and_freeu(eng, base, stack, lora_model, sampling, zsnr):
    need(eng, "ModelSamplingDiscrete", "FreeU_V2")
    case = f"lora + ModelSamplingDiscrete({sampling}, zsnr={zsnr}) + FreeU_V2"
    (sampled,) = eng.call_node("ModelSamplingDiscrete", inference=True, model=lora_model, sampling=sampling,
                               zsnr=zsnr)
    (model,) = eng.call_node("FreeU_V2", inference=True, model=sampled, b1=1.3, b2=1.4, s1=0.9, s2=0.2)
    assert max_err(ksampler(eng, base, model=model)["samples"], ksampler(eng, base, model=sampled)["samples"]) > 1e-4, \
        "FreeU_V2 does not change the output of the tiny model"
    got = oracle(eng, base, stack, case, model=model)
    ms = model.get_model_object("model_sampling")
    assert got["history"].sigma == float(ms.sigma_max)  # one "simple" step starts at sigma_max itself
    if zsnr:
        assert got["history"].sigma > 100  # zero terminal SNR: a very large sigma_max


# -- 3. ControlNet ---------------------------------------------------------------------------------------------

def hint_image(side=64) -> torch.Tensor:
    """A LoadImage-like IMAGE (B, H, W, 3) in [0, 1]: a few bright squares on a dark background."""
    img = torch.full((1, side, side, 3), 0.1)
    img[:, 8:24, 8:24] = 0.9
    img[:, 36:56, 30:60, 0] = 1.0
    img[:, 40:48, :, 1] = 0.7
    return img


@pytest.fixture(scope="module")
def controlnet(eng, base, detection):
    from tiny_formats import write_controlnet

    need(eng, "ControlNetLoader", "ControlNetApplyAdvanced")
    path, _ = write_controlnet(base["model"], model_folder(eng, "controlnet") / "reno_tiny_controlnet.safetensors")
    (net,) = eng.call_node("ControlNetLoader", inference=True, control_net_name=path.name)
    return net


def test_controlnet_apply_advanced(eng, base, stack, controlnet):
    with torch.inference_mode():
        image = hint_image()
    pos, neg = eng.call_node("ControlNetApplyAdvanced", inference=True, positive=base["pos"], negative=base["neg"],
                             control_net=controlnet, image=image, strength=1.0, start_percent=0.0, end_percent=1.0)
    changed = max_err(ksampler(eng, base, pos=pos, neg=neg)["samples"], ksampler(eng, base)["samples"])
    print(f"\n[controlnet] KSampler output changed by the control: max abs {changed:.3g}")
    assert changed > 1e-3, "the ControlNet does not change KSampler's output"
    oracle(eng, base, stack, "controlnet", pos=pos, neg=neg)
    _, _, history = reward_gain(eng, base, stack, "controlnet", pos=pos, neg=neg)
    assert history.records[0]["grad_norm"][0] > 0
    # with CFG both conditionings carry the control
    oracle(eng, base, stack, "controlnet cfg 2", pos=pos, neg=neg, cfg=2.0)


# -- 4. Inpainting ---------------------------------------------------------------------------------------------

def source_image(side=64) -> torch.Tensor:
    y, x = torch.meshgrid(torch.linspace(0, 1, side), torch.linspace(0, 1, side), indexing="ij")
    return torch.stack([x, y, 0.5 + 0.4 * torch.sin(6 * x) * torch.cos(5 * y)], dim=-1)[None].clamp(0, 1)


def half_mask(side=64) -> torch.Tensor:
    mask = torch.zeros(1, side, side)
    mask[:, :, : side // 2] = 1.0  # regenerate the left half
    return mask


def check_inpaint(eng, base, stack, case, latent):
    """ReNO keeps the unmasked part of the latent it was given, changes the masked part, equals KSampler."""
    inside = latent["noise_mask"].shape[-1] // 2 // 8  # latent columns of the masked (left) half
    got = oracle(eng, base, stack, case, latent=latent)
    out, _, history = reward_gain(eng, base, stack, case, latent=latent)
    for name, samples, hist in (("iterations=1", got["latent"]["samples"], got["history"]),
                                (f"iterations={ITERATIONS}", out["samples"], history)):
        keep = max_err(samples[..., inside:], latent["samples"][..., inside:])
        moved = max_err(samples[..., :inside], latent["samples"][..., :inside])
        # the Euler step to sigma 0 rebuilds the kept latent by cancellation, x - sigma * (x - x0) / sigma, from the
        # noised x = latent + sigma * noise: at most 8 float32 roundings (the noise scaling, the step, its inverse)
        # of |x|, not of the latent's own size
        noised = noised_scale(hist, latent)
        bound = rounding_tol(8, torch.float32, scale=noised)
        print(f"\n[{case}] {name}: unmasked region max abs change {keep:.3g} (bound {bound:.3g} at |x| "
              f"{noised:.3g}), masked region {moved:.3g}")
        assert keep <= bound, f"{case}: the unmasked region changed by {keep} > {bound}"
        assert moved > 1e-2, f"{case}: the masked region did not change"  # regenerated: changes of order |latent|
    assert out["noise_mask"] is latent["noise_mask"]
    # the optimization changed the masked part relative to the unoptimized result (check_gain asserted that a later
    # iteration was the best), by more than rounding
    assert history.best_iteration[0] > 0, f"{case}: no iteration improved on the first"
    changed = max_err(out["samples"][..., :inside], got["latent"]["samples"][..., :inside])
    assert changed > rounding_tol(ORACLE_LATENT_K, torch.float32, got["latent"]["samples"]), \
        f"{case}: the best iteration's masked region is the unoptimized one ({changed})"


def test_inpainting_with_set_latent_noise_mask(eng, base, stack):
    need(eng, "SetLatentNoiseMask", "VAEEncode")
    with torch.inference_mode():
        pixels, mask = source_image(), half_mask()
    (encoded,) = eng.call_node("VAEEncode", inference=True, pixels=pixels, vae=base["vae"])
    (latent,) = eng.call_node("SetLatentNoiseMask", inference=True, samples=encoded, mask=mask)
    check_inpaint(eng, base, stack, "inpaint SetLatentNoiseMask", latent)


def test_inpainting_with_vae_encode_for_inpaint(eng, base, stack):
    need(eng, "VAEEncodeForInpaint")
    with torch.inference_mode():
        pixels, mask = source_image(), half_mask()
    (latent,) = eng.call_node("VAEEncodeForInpaint", inference=True, pixels=pixels, vae=base["vae"], mask=mask,
                              grow_mask_by=0)
    check_inpaint(eng, base, stack, "inpaint VAEEncodeForInpaint", latent)


# -- 5. Split schedules through ReNO Sampler (custom) -------------------------------------------------------------

def advanced(eng, noise, guider, sampler, sigmas, latent):
    out, _ = eng.call_node("SamplerCustomAdvanced", inference=True, noise=noise, guider=guider, sampler=sampler,
                           sigmas=sigmas, latent_image=latent)
    return out


def test_split_schedule_high_half_runs_every_sigma_then_a_second_sampler_finishes(eng, base, stack):
    need(eng, "SamplerCustomAdvanced", "SplitSigmas", "BasicScheduler", "CFGGuider", "DisableNoise", "RandomNoise")
    (sigmas,) = eng.call_node("BasicScheduler", inference=True, model=base["model"], scheduler="simple", steps=4,
                              denoise=1.0)
    high, low = eng.call_node("SplitSigmas", inference=True, sigmas=sigmas, step=2)
    assert len(high) == 3 and len(low) == 3 and float(high[-1]) == float(low[0]) > 0
    (noise,) = eng.call_node("RandomNoise", inference=True, noise_seed=SEED)
    (no_noise,) = eng.call_node("DisableNoise", inference=True)
    (guider,) = eng.call_node("CFGGuider", inference=True, model=base["model"], positive=base["pos"],
                              negative=base["neg"], cfg=1.5)
    (euler,) = eng.call_node("KSamplerSelect", inference=True, sampler_name="euler")

    runs = []

    def reno_sampler(iterations):
        (s,) = eng.call_node("ReNOSamplerCustom", inference=True, vae=base["vae"], rewards=stack, prompt=PROMPT_TEXT,
                             iterations=iterations, learning_rate=5.0, regularization=0.01, grad_clip=0.1)
        s.on_result = runs.append  # each sampling call's RunResult
        return s

    sampler = reno_sampler(1)
    first = advanced(eng, noise, guider, sampler, high, base["latent"])
    # ReNO samples through every sigma of the high half, as ComfyUI's euler does
    reference = advanced(eng, noise, guider, euler, high, base["latent"])
    x0 = runs[-1].result.best_extra
    errs = {"first_stage": max_err(first["samples"], reference["samples"])}
    # the first stage is a partly denoised latent at sigma high[-1], not the denoised x0
    assert max_err(reference["samples"], base["model"].model.process_latent_out(x0.cpu())) > 0.1
    assert_rounding_close(first["samples"].float(), reference["samples"].float(), ORACLE_LATENT_K, msg="first stage")

    final = advanced(eng, no_noise, guider, euler, low, first)
    want = advanced(eng, no_noise, guider, euler, low, reference)
    errs["two_stage"] = max_err(final["samples"], want["samples"])
    print(f"\n[split schedule] oracle (iterations=1 vs euler on the same high half) max abs error: {errs}")
    # the second stage is ComfyUI's own euler on both: its input's difference carried through two more steps
    assert_rounding_close(final["samples"].float(), want["samples"].float(), 2 * ORACLE_LATENT_K, msg="two stages")
    # the low half does work on the first stage's output (it is not already final)
    assert max_err(final["samples"], first["samples"]) > 1e-2

    sampler = reno_sampler(ITERATIONS)
    out = advanced(eng, noise, guider, sampler, high, base["latent"])
    assert torch.isfinite(out["samples"]).all()
    result = runs[-1].result
    weights = dict(zip(sampler.ensemble.labels, [r.weight for r in sampler.ensemble.rewards]))
    check_gain("split schedule", result.records, weights, result.best_iteration[0], lambda r: r.loss[0])
    final = advanced(eng, no_noise, guider, euler, low, out)
    assert torch.isfinite(final["samples"]).all()
