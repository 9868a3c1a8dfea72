"""The host's own samplers, run with gradients: ReNO's contact with ``comfy.samplers`` and
``comfy.k_diffusion.sampling`` (the rest of the host contact is ``nodes/host.py``).

ReNO samples with the host's sampler functions (``comfy.samplers.KSAMPLER``: every name of ``KSampler.SAMPLERS``,
and any KSAMPLER a core node makes: KSamplerSelect, SamplerDPMPP_2M_SDE, SamplerER_SDE, SamplerLCM...), run under
autograd: their update rules are plain torch; the ``@torch.no_grad()`` they are decorated with is bypassed for the
run, and each model call goes through ``PolicyModel``, which applies the gradient policy per *model call* (heun and
the 2s/3m samplers call the model more than once per step) and recomputes the call's activations in the backward
pass. Stochastic samplers draw their noise inside the sampler function exactly as KSampler does (default noise
sampler, Brownian tree for the SDE samplers) from the seed, so it is the same at every iteration: fixed for the run.
``optimizer/chain.py`` stays the host-free reference (diffusers, the library, the trainer) and the oracle for the
samplers both have.

What "exact" means is the host's code: ``ipndm_v`` and ``deis`` keep their multistep history detached in ComfyUI's own
implementation (``buffer_model.append(d_cur.detach())``), so through them the gradient reaches the noise through each
step's current term and not through the history terms; every other sampler's gradient is its whole chain's.

Checked on ComfyUI 0.3.75 (``KSAMPLER.sample(model_wrap, sigmas, extra_args, callback, noise, latent_image,
denoise_mask, disable_pbar)``, 38 sampler names) and 0.33.0 (the same signature, 44 names); 0.38's text read.
"""

from __future__ import annotations

import contextlib
import importlib

import comfy.samplers
import torch

#: the modules whose no-grad sampler functions the run swaps (UniPC's lives apart)
_SAMPLER_MODULES = ("comfy.k_diffusion.sampling", "comfy.extra_samplers.uni_pc")


class SamplerRefused(ValueError):
    """A sampler ReNO cannot differentiate through, with the reason."""


def sampler_names() -> list[str]:
    """Every sampler name of the running host (``comfy.samplers.KSampler.SAMPLERS``)."""
    return list(comfy.samplers.KSampler.SAMPLERS)


def ksampler_sigmas(model_patcher, scheduler: str, steps: int, sampler_name: str) -> torch.Tensor:
    """KSampler's sigmas for ``scheduler``, ``steps`` and ``sampler_name``, computed by the host's ``KSampler`` itself
    (it drops the next-to-last sigma for dpm_2, dpm_2_ancestral, uni_pc and uni_pc_bh2), on the CPU."""
    return comfy.samplers.KSampler(model_patcher, int(steps), "cpu", sampler_name, scheduler).sigmas.cpu()


def sampler_object(name: str):
    """The host's sampler object for ``name`` (``comfy.samplers.sampler_object``: ddim and the UniPC pair too)."""
    return comfy.samplers.sampler_object(name)


def _no_grad_wrapper(fn) -> bool:
    """Whether ``fn`` is torch's ``@torch.no_grad()`` decorator wrapper around ``fn.__wrapped__``."""
    code = getattr(fn, "__code__", None)
    return (getattr(fn, "__wrapped__", None) is not None and code is not None
            and code.co_filename.replace("\\", "/").endswith("torch/utils/_contextlib.py"))


def _without_no_grad(fn):
    while _no_grad_wrapper(fn):
        fn = fn.__wrapped__
    return fn


@contextlib.contextmanager
def samplers_with_gradients():
    """For the run: every ``@torch.no_grad()`` function of the host's sampler modules replaced by the function it
    wraps, so sampler functions that call each other (dpm_fast's wrapper calls ``sample_dpm_fast``) build a graph;
    restored after, in reverse. ComfyUI runs one prompt at a time, so nothing samples through them without gradients
    meanwhile."""
    swapped = []
    try:
        for module_name in _SAMPLER_MODULES:
            try:
                module = importlib.import_module(module_name)
            except ImportError:
                continue
            for name, value in list(vars(module).items()):
                if callable(value) and _no_grad_wrapper(value):
                    swapped.append((module, name, value))
                    setattr(module, name, _without_no_grad(value))
        yield
    finally:
        for module, name, value in reversed(swapped):
            setattr(module, name, value)


def differentiable_sampler(sampler):
    """``sampler`` (a host ``Sampler``) as a KSAMPLER whose sampler function runs with gradients, or
    ``SamplerRefused`` naming why not (a sampler that is not a KSAMPLER samples with its own opaque code)."""
    if not isinstance(sampler, comfy.samplers.KSAMPLER):
        raise SamplerRefused(
            f"ReNO runs ComfyUI's KSAMPLER samplers (every sampler of KSamplerSelect and of the core sampler nodes); "
            f"{type(sampler).__name__} samples with its own code, which ReNO cannot run with gradients.")
    return comfy.samplers.KSAMPLER(_without_no_grad(sampler.sampler_function), dict(sampler.extra_options),
                                   dict(sampler.inpaint_options))


def sampler_label(sampler) -> str:
    """A name for a host sampler object (its function's name without ``sample_``), for the history."""
    fn = _without_no_grad(getattr(sampler, "sampler_function", None))
    name = getattr(fn, "__name__", type(sampler).__name__)
    return name.removeprefix("sample_").removesuffix("_function")


class PolicyModel:
    """The denoiser a host sampler function calls (``KSamplerX0Inpaint``: the host's inpaint masking included), with
    ``call(denoise, x, sigma, index)`` applied to each model call (the gradient policy); ``calls`` counts the calls;
    ``last`` is the last call's output (x0); every other attribute is the real one's (sampler functions read
    ``model.inner_model.inner_model.model_sampling`` and the like)."""

    def __init__(self, model_k, call):
        self._model_k = model_k
        self._call = call
        self.calls = 0
        self.last = None

    def __getattr__(self, name):
        return getattr(self._model_k, name)

    def __call__(self, x, sigma, **kwargs):
        index = self.calls
        self.calls += 1
        out = self._call(lambda x_, s_: self._model_k(x_, s_, **kwargs), x, sigma, index)
        self.last = out
        return out


def sample(sampler, model_wrap, sigmas, extra_args: dict, noise, latent_image, denoise_mask, call):
    """Run the host's ``sampler`` (from ``differentiable_sampler``) with ``call`` applied to each model call; returns
    ``(samples, x0 of the last call, number of model calls)``, ``samples`` being what KSampler returns (after
    ``inverse_noise_scaling``). Inside ``samplers_with_gradients``."""
    fn = sampler.sampler_function
    seen = {}

    def with_policy(model_k, *args, **kwargs):
        seen["model"] = wrapped = PolicyModel(model_k, call)
        return fn(wrapped, *args, **kwargs)

    run = comfy.samplers.KSAMPLER(with_policy, sampler.extra_options, sampler.inpaint_options)
    samples = run.sample(model_wrap, sigmas, dict(extra_args), None, noise, latent_image, denoise_mask, True)
    model = seen["model"]
    return samples, model.last, model.calls


def count_model_calls(sampler, model_wrap, sigmas, extra_args: dict, noise, latent_image, denoise_mask) -> int:
    """How many times ``sampler`` calls the model over ``sigmas``: one pass of the sampler's own arithmetic with a
    stand-in model that returns zeros (no model call), without gradients; for samplers that need what the real model
    call leaves behind (the cfg_pp samplers read the unconditional prediction a post-CFG hook captures), one pass with
    the real model, without gradients. Where the count depends on the model's values (dpm_adaptive's error control)
    the real run may call more often: the run refuses that for the policies that pick the last calls."""
    with torch.no_grad():
        try:
            _, _, calls = sample(sampler, model_wrap, sigmas, extra_args, noise, latent_image, denoise_mask,
                                 lambda denoise, x, sigma, index: torch.zeros_like(x))
        except Exception:  # noqa: BLE001 - the stand-in was not enough for this sampler: count with the model
            _, _, calls = sample(sampler, model_wrap, sigmas, extra_args, noise, latent_image, denoise_mask,
                                 lambda denoise, x, sigma, index: denoise(x, sigma))
    return calls
