"""The bridge from ComfyUI's sampling machinery to a ReNO run: a thin ``comfy.samplers.Sampler``.

Run by ``comfy.sample.sample_custom`` (ReNO Sampler) or by ``SamplerCustomAdvanced`` with any guider
(ReNO Sampler (custom)), ComfyUI loads the model, encodes the conditioning and applies CFG and the
latent format; ``sample`` hands its arguments to a fresh ``ReNORun`` (``nodes/lifecycle.py``), which owns
everything the run does, and returns the run's samples. The sampler keeps no state between calls.
"""

from __future__ import annotations

from collections.abc import Callable

import comfy.samplers

from .lifecycle import ReNORun, RunResult


class ReNOComfySampler(comfy.samplers.Sampler):
    """Sampling over the given sigmas (one step or several, with the run's sampler) whose initial noise is optimized
    by ReNO, or that a training rollout runs, before the result is returned.

    ``make_run()`` builds the ``ReNORun`` of one sampling call; ``on_result(RunResult)`` receives what it
    returned (the ReNO Sampler node builds its history from it).
    """

    def __init__(self, make_run: Callable[[], ReNORun], on_result: Callable[[RunResult], None] | None = None):
        self.make_run = make_run
        self.on_result = on_result

    def sample(self, model_wrap, sigmas, extra_args, callback, noise, latent_image=None, denoise_mask=None,
               disable_pbar=False):
        """One run over ``sigmas``: the sampling chain from ``sigmas[0]`` to ``sigmas[-1]``; returns the run's samples
        (ReNO's: the best iteration's, what KSampler returns for these sigmas) and gives ComfyUI's callback its x0."""
        run = self.make_run()
        out = run.execute(model_wrap, sigmas, extra_args, noise, latent_image, denoise_mask,
                          max_denoise=self.max_denoise(model_wrap, sigmas))
        self.finished(out)
        if callback is not None:  # ComfyUI's own preview / denoised_output hook, once, with the best x0
            callback(0, out.x0, out.samples, 1)
        return out.samples

    def finished(self, out: RunResult) -> None:
        """Called with each run's result before the samples go back to ComfyUI."""
        if self.on_result is not None:
            self.on_result(out)
