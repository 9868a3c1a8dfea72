"""The diffusers generators run optimizer/chain.py (generators/diffusers_pipelines.py): a denoiser in the chain's
convention, the scheduler's sigmas, the start noise scale, then ``run_chain`` and the VAE; nothing of their own between
the denoiser and the chain. Tiny pipelines of every kind (tests/tiny_diffusers.py), in float64 where values and
gradients are compared.

* one step: the chain path equals the previous one-step path (the closed-form steps the generators were written with
  before they ran the chain, kept here as the oracle), image and noise gradient;
* four steps: the generator equals ``run_chain`` on a denoiser written here from the same weights and the scheduler
  (as the node wraps ComfyUI's model), for every kind's own sampler and every gradient mode; and, with the scheduler's
  own sampler, the pipeline's own four-step call (the stochastic samplers' noise drawn from the same CPU generator).
"""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

diffusers = pytest.importorskip("diffusers", reason="diffusers is an optional extra: pip install 'diffusers>=0.30'")

from reno_pack.generators import build_generator, load_pipeline  # noqa: E402
from reno_pack.optimizer.chain import ChainSpec, GradientPolicy, draw_step_noises, run_chain  # noqa: E402
from tiny_diffusers import KINDS, SIZE, one_thread, save_tiny_pipeline  # noqa: E402, F401 (one_thread: a fixture)
from tolerances import GRAD_K, ORACLE_IMAGE_K, assert_rounding_close, rounding_tol  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")

PROMPT = "a red cat on the mat"
F64 = torch.float64


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    return {kind: save_tiny_pipeline(kind, tmp_path_factory.mktemp(kind)) for kind in KINDS}


def pipe64(folders, kind):
    pipe = load_pipeline(folders[kind])
    pipe.to(F64)
    pipe.set_progress_bar_config(disable=True)
    return pipe


# -- the model pieces, written here from the pipeline (the oracle's and the reference denoiser's) ---------------------

class Model:
    """The prompt's conditioning and the network call of ``kind``'s pipeline, and its VAE decode."""

    def __init__(self, pipe, kind):
        self.pipe, self.kind = pipe, kind
        with torch.no_grad():
            if kind == "sd-turbo":
                self.embeds = pipe.encode_prompt(PROMPT, "cpu", 1, False)[0]
            elif kind in ("sdxl-turbo", "hyper-sdxl"):
                self.embeds, _, pooled, _ = pipe.encode_prompt(prompt=PROMPT, device="cpu", num_images_per_prompt=1,
                                                               do_classifier_free_guidance=False)
                self.added = {"text_embeds": pooled,
                              "time_ids": torch.tensor([[SIZE, SIZE, 0, 0, SIZE, SIZE]], dtype=F64)}
            elif kind == "pixart-dmd":
                self.embeds, self.mask, _, _ = pipe.encode_prompt(PROMPT, do_classifier_free_guidance=False,
                                                                  negative_prompt="", num_images_per_prompt=1,
                                                                  device="cpu", clean_caption=False,
                                                                  max_sequence_length=120)
            else:
                self.embeds, self.pooled, self.text_ids = pipe.encode_prompt(
                    prompt=PROMPT, prompt_2=None, device="cpu", num_images_per_prompt=1, max_sequence_length=256)
                _, self.image_ids = pipe.prepare_latents(1, 4, SIZE, SIZE, F64, "cpu", torch.Generator().manual_seed(0),
                                                         None)

    def net(self, x, t):
        """The network's raw output (epsilon; flow: the velocity) at timestep ``t`` (a number)."""
        p, b = self.pipe, x.shape[0]
        if self.kind == "sd-turbo":
            return p.unet(x, torch.tensor(t), encoder_hidden_states=self.embeds).sample
        if self.kind in ("sdxl-turbo", "hyper-sdxl"):
            return p.unet(x, torch.tensor(t), encoder_hidden_states=self.embeds, added_cond_kwargs=self.added).sample
        if self.kind == "pixart-dmd":
            out = p.transformer(x, encoder_hidden_states=self.embeds, encoder_attention_mask=self.mask,
                                timestep=torch.tensor([t]).expand(b),
                                added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample
            return out.chunk(2, dim=1)[0]  # learned sigma: the epsilon half
        return p.transformer(hidden_states=x, timestep=torch.tensor([t / 1000], dtype=F64).expand(b), guidance=None,
                             pooled_projections=self.pooled, encoder_hidden_states=self.embeds, txt_ids=self.text_ids,
                             img_ids=self.image_ids).sample

    def decode(self, latents):
        vae = self.pipe.vae
        if self.kind == "flux-schnell":
            latents = self.pipe._unpack_latents(latents, SIZE, SIZE, self.pipe.vae_scale_factor)
            latents = latents / vae.config.scaling_factor + vae.config.shift_factor
        else:
            latents = latents / vae.config.scaling_factor
        return (vae.decode(latents).sample / 2 + 0.5).clamp(0, 1)


def previous_one_step(model: Model, noise):
    """The generators' one-step path before they ran the chain (the closed-form scheduler steps, epsilon models)."""
    pipe, kind = model.pipe, model.kind
    sched = copy.deepcopy(pipe.scheduler)
    if kind in ("sd-turbo", "sdxl-turbo"):
        sched.set_timesteps(1)
        sigma, sigma_next = float(sched.sigmas[0]), float(sched.sigmas[1])
        target = sigma_next  # the ancestral step's sigma_down: sigma_up is 0 when sigma_next is 0
        x = noise * float(sched.init_noise_sigma)
        x0 = x - sigma * model.net(x * (1.0 / (sigma**2 + 1) ** 0.5), float(sched.timesteps[0]))
        return model.decode(x + (x - x0) / sigma * (target - sigma))
    if kind in ("hyper-sdxl", "pixart-dmd"):
        t = 800 if kind == "hyper-sdxl" else 400
        sched.set_timesteps(timesteps=[t])
        alpha = float(sched.alphas_cumprod[t])
        x = noise * float(sched.init_noise_sigma)
        x0 = (x - (1 - alpha) ** 0.5 * model.net(x, t)) / alpha**0.5
        if kind == "hyper-sdxl":
            c_skip, c_out = (float(c) for c in sched.get_scalings_for_boundary_condition_discrete(sched.timesteps[0]))
            x0 = c_out * x0 + c_skip * x
        return model.decode(x0)
    sched.set_timesteps(sigmas=np.linspace(1.0, 1.0, 1))
    sigma, sigma_next = float(sched.sigmas[0]), float(sched.sigmas[1])
    x = noise
    return model.decode(x + (sigma_next - sigma) * model.net(x, float(sched.timesteps[0])))


def with_grad(fn, noise, weights):
    """fn(noise) and the gradient of <fn(noise), weights> to the noise."""
    z = noise.clone().requires_grad_(True)
    image = fn(z)
    (grad,) = torch.autograd.grad((image * weights).sum(), z)
    return image.detach(), grad


def noise_for(shape, seed=1, dtype=F64):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed)).to(dtype)


@pytest.mark.parametrize("kind", KINDS)
def test_one_step_chain_equals_the_previous_one_step_path(folders, kind):
    pipe = pipe64(folders, kind)
    gen, shape = build_generator(pipe, PROMPT, height=SIZE, width=SIZE, dtype=F64)
    pipe.vae.to(F64)  # Hyper-SDXL's build moves the VAE to float32 (the official code's choice): back to float64
    assert gen.steps == 1 and len(gen.sigmas) == 2 and float(gen.sigmas[-1]) == 0
    noise = noise_for(shape)
    weights = torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(5), dtype=F64)
    ours, ours_grad = with_grad(gen, noise, weights)
    theirs, theirs_grad = with_grad(lambda z: previous_one_step(Model(pipe, kind), z), noise, weights)
    assert ours.dtype == F64 and ours.std().item() > 0.02
    # the same step in another order (x - (x - x0) for x0, a start scale and its inverse for the VP latent): a few
    # roundings of the latent, carried through the VAE as the engine's image oracle: ORACLE_IMAGE_K roundings of
    # |image| <= 1 (measured <= 3.3 in float64); the noise gradient back through the same layers: GRAD_K roundings of
    # max |gradient| (measured <= 4.7)
    assert_rounding_close(ours, theirs, ORACLE_IMAGE_K, scale=1.0, msg=f"{kind} image")
    assert_rounding_close(ours_grad, theirs_grad, GRAD_K, msg=f"{kind} noise gradient")


# -- four steps: the node's chain on the same weights ------------------------------------------------------------------

OWN_SAMPLER = {"sd-turbo": "euler", "sdxl-turbo": "euler_ancestral", "hyper-sdxl": "lcm", "pixart-dmd": "ddpm",
               "flux-schnell": "euler"}


def reference_chain(model: Model, steps: int):
    """The node's view of ``model``: ``(denoise, sigmas, start scale, flow, skip)`` in optimizer/chain.py's convention,
    written from the pipeline's scheduler (its ``set_timesteps(steps)``; FLUX: FluxPipeline's sigmas). The chain calls
    the denoiser at the schedule's sigmas only, so each sigma's timestep is looked up in a dict."""
    kind = model.kind
    sched = copy.deepcopy(model.pipe.scheduler)
    one = torch.ones(())
    if kind in ("sd-turbo", "sdxl-turbo", "flux-schnell"):
        if kind == "flux-schnell":
            sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps))
        else:
            sched.set_timesteps(steps)
        sigmas = sched.sigmas.to(F64)
        ts = {float(s): float(t) for s, t in zip(sigmas[:-1], sched.timesteps)}
        flow = kind == "flux-schnell"

        def denoise(x, sigma):
            s = sigma[0]
            if flow:  # the velocity
                return x - s * model.net(x, ts[float(s)])
            return x - s * model.net(x / (s**2 + 1) ** 0.5, ts[float(s)])  # epsilon, on the sigma scale

        start = 1.0 if flow else float(sched.init_noise_sigma)
        return denoise, sigmas, start, flow, lambda sigma: one.expand(sigma.shape).to(sigma)
    sched.set_timesteps(steps)
    acp = sched.alphas_cumprod.to(F64)
    timesteps = [int(t) for t in sched.timesteps]
    sigmas = torch.tensor([float(((1 - acp[t]) / acp[t]) ** 0.5) for t in timesteps] + [0.0], dtype=F64)
    ts = {float(s): t for s, t in zip(sigmas[:-1], timesteps)}

    def scalings(t):
        return (float(c) for c in sched.get_scalings_for_boundary_condition_discrete(torch.tensor(t)))

    def denoise(x, sigma):
        s = sigma[0]
        t = ts[float(s)]
        a = acp[t]
        x_vp = x / (1 + s**2) ** 0.5  # the scheduler's sample: variance preserving
        x0 = (x_vp - (1 - a) ** 0.5 * model.net(x_vp, t)) / a**0.5
        if kind == "hyper-sdxl":
            c_skip, c_out = scalings(t)
            return c_out * x0 + c_skip * x_vp
        return x0

    def skip(sigma):  # d x0 / d x with the network's output held fixed
        if kind != "hyper-sdxl":
            return one.expand(sigma.shape).to(sigma)
        c_skip, c_out = scalings(ts[float(sigma[0])])
        return c_out + c_skip / (1 + sigma**2) ** 0.5

    return denoise, sigmas, float((1 + sigmas[0] ** 2) ** 0.5), False, skip


#: each kind with its scheduler's own sampler (None: the default), and another sampler of the chain on it: dpmpp_2m on
#: an Euler model, euler_ancestral on the LCM model, lcm on DDPM's, euler_ancestral's RF variant on FLUX
SAMPLER_CASES = [*((kind, None) for kind in KINDS), ("sd-turbo", "dpmpp_2m"), ("hyper-sdxl", "euler_ancestral"),
                 ("pixart-dmd", "lcm"), ("flux-schnell", "euler_ancestral")]


@pytest.mark.parametrize("gradient", ["exact", "drtune", "last k"])
@pytest.mark.parametrize(("kind", "sampler"), SAMPLER_CASES)
def test_four_steps_are_the_nodes_chain_on_the_same_denoiser(folders, kind, sampler, gradient):
    """generate(noise) and its noise gradient = decode(run_chain(denoiser, x_T, the scheduler's 4 sigmas, policy)) with
    the denoiser, sigmas, start scale and drtune's skip coefficient written here from the pipeline; a stochastic
    sampler's step noises drawn from the same seed (a CPU generator, float32, in step order, after the start noise's
    draw)."""
    steps, seed = 4, 7
    pipe = pipe64(folders, kind)
    if gradient == "last k" and (sampler or OWN_SAMPLER[kind]) == "lcm":  # no path to the noise: refused up front
        with pytest.raises(ValueError, match="no gradient reaches the noise"):
            build_generator(pipe, PROMPT, height=SIZE, width=SIZE, steps=steps, sampler=sampler, gradient=gradient)
        return
    gen, shape = build_generator(pipe, PROMPT, height=SIZE, width=SIZE, dtype=F64, steps=steps, sampler=sampler,
                                 gradient=gradient, gradient_steps=1, noise_seed=seed)
    pipe.vae.to(F64)
    model = Model(pipe, kind)
    denoise, sigmas, start, flow, skip = reference_chain(model, steps)
    assert gen.sampler == (sampler or OWN_SAMPLER[kind]) and gen.flow == flow
    # the same scheduler values (diffusers' float32 sigmas, or sqrt((1 - a) / a) of its alphas_cumprod, in float64)
    assert_rounding_close(gen.sigmas, sigmas, 4, dtype=F64)
    assert gen.start_scale == pytest.approx(start, rel=4 * torch.finfo(F64).eps, abs=0)
    policy = GradientPolicy(gradient, 1, skip=skip)

    def chain(z):
        x = z * start
        noises = None
        if gen.sampler in ("euler_ancestral", "lcm", "ddpm"):
            g = torch.Generator().manual_seed(seed)
            torch.randn(x.shape, generator=g)  # the start noise's draw: the steps' noises continue its stream
            noises = draw_step_noises(x, gen.sampler, sigmas, None, flow=flow,
                                      noise_sampler=lambda s, sn: torch.randn(x.shape, generator=g).to(F64))
            assert sum(n is not None for n in noises) == steps - 1  # all but the last step
        return model.decode(run_chain(denoise, x, ChainSpec(gen.sampler, sigmas, noises, flow=flow), policy)[0])

    noise = noise_for(shape)
    weights = torch.rand((1, 3, SIZE, SIZE), generator=torch.Generator().manual_seed(5), dtype=F64)
    ours, ours_grad = with_grad(gen, noise, weights)
    theirs, theirs_grad = with_grad(chain, noise, weights)
    assert ours.std().item() > 0.02
    assert ours_grad.abs().sum() > 0
    # the gradients round at the scale of the exact one: last k through ddpm keeps only the sampler's linear path,
    # whose coefficient at the last step is 0 as a difference of O(1) terms (measured: max |gradient| 1.5e-7 of the
    # exact one's ~1), so what is left is those terms' rounding
    scale = with_grad(build_generator(pipe, PROMPT, height=SIZE, width=SIZE, dtype=F64, steps=steps, sampler=sampler,
                                      noise_seed=seed)[0], noise, weights)[1].abs().max().item()
    # the same chain; the denoisers differ in operation order (x / sqrt(1 + s^2) against x * sqrt(a), x0's formula), a
    # few roundings per step carried on by the later steps and the VAE: as the one-step oracle, ORACLE_IMAGE_K
    # roundings of |image| <= 1 and GRAD_K roundings of the exact gradient's max (measured <= 3 and <= 4.1)
    assert_rounding_close(ours, theirs, ORACLE_IMAGE_K, scale=1.0, msg=f"{kind} {gradient} image")
    assert_rounding_close(ours_grad, theirs_grad, GRAD_K, scale=scale, msg=f"{kind} {gradient} noise gradient")
    err = (ours - theirs).abs().max().item() / torch.finfo(F64).eps
    gerr = (ours_grad - theirs_grad).abs().max().item() / (torch.finfo(F64).eps * scale)
    print(f"{kind} {gen.sampler} {gradient}: image {err:.3g} roundings of 1, grad {gerr:.3g} roundings of the exact max|grad|")


def pipeline_steps(pipe, kind, steps, seed, latents=None):
    """The pipeline's own call for ``steps`` steps (no guidance, as the official code), its latents (unless given) and
    its scheduler's random draws from a CPU generator seeded with ``seed``."""
    kw = dict(latents=latents, num_inference_steps=steps, output_type="pt", height=SIZE, width=SIZE,
              generator=torch.Generator().manual_seed(seed))
    if kind == "sd-turbo":
        kw.update(guidance_scale=1.0)
    elif kind in ("sdxl-turbo", "hyper-sdxl"):
        kw.update(guidance_scale=0.0)
    elif kind == "pixart-dmd":
        kw.update(guidance_scale=1.0, use_resolution_binning=False, clean_caption=False, max_sequence_length=120)
    else:
        kw.update(guidance_scale=0.0, max_sequence_length=256)
    pipe.set_progress_bar_config(disable=True)
    return pipe(PROMPT, **kw).images


@pytest.mark.parametrize("kind", KINDS)
def test_four_steps_of_the_schedulers_own_sampler_are_the_pipelines_call(folders, kind):
    """With the scheduler's own sampler (the default), 4 steps of the generator from the seed's noise (run_diffusers_item's
    draw) equal the pipeline's own 4-step call with a generator of that seed: Euler, Euler ancestral, LCM, DDPM and
    flow Euler, the stochastic ones' fresh noise drawn as the scheduler draws it (a float32 randn per step that adds
    noise, continuing the generator that drew the latents). FLUX's pipeline draws its latents unpacked, so it is given
    ours (its Euler steps draw nothing)."""
    steps, seed = 4, 11
    pipe = load_pipeline(folders[kind])
    gen, shape = build_generator(pipe, PROMPT, height=SIZE, width=SIZE, steps=steps, noise_seed=seed)
    assert gen.sampler == OWN_SAMPLER[kind]
    noise = noise_for(shape, seed=seed, dtype=torch.float32)
    with torch.no_grad():
        ours = gen(noise)
        theirs = pipeline_steps(pipe, kind, steps, seed, latents=noise.clone() if kind == "flux-schnell" else None)
    assert ours.shape == theirs.shape and ours.std().item() > 0.02
    diff = (ours - theirs.float()).abs().max().item()
    print(f"{kind}: max |4 steps - pipe(num_inference_steps=4)| = {diff:.3e}")
    # the same steps in another operation order, 4 of them, then the VAE: as the one-step test against the pipeline,
    # ORACLE_IMAGE_K roundings of |image| <= 1
    assert diff <= rounding_tol(ORACLE_IMAGE_K, torch.float32, scale=1.0), f"{kind}: {diff}"


def test_the_batch_runners_sampler_choices_are_the_chains():
    """reno-batch writes the chain's samplers out (its --help does not import torch): the same list."""
    import importlib

    from reno_pack.optimizer.chain import SAMPLERS

    assert importlib.import_module("reno_pack.runner.cli").CHAIN_SAMPLERS == SAMPLERS
