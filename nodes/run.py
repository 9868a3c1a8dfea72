"""What the ReNO Sampler node does, outside its class body."""

from __future__ import annotations

import logging

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils
import torch
from PIL import Image

from ..optimizer import IterationRecord, ReNOConfig
from ..reward_loaders import RewardEnsemble
from . import host_sampling
from .bridge import ReNOComfySampler
from .events import send_iteration
from .history import ReNOHistory
from .lifecycle import ChainSettings, ReNOBody, ReNORun, RunResult
from .memory import check_mode
from .search import check_search, search_candidates
from .settings import compile_rewards

log = logging.getLogger(__name__)

PREVIEW_SIZE = 256


def progress_bar(total: int, node_id=None):
    return comfy.utils.ProgressBar(total, node_id=node_id)


def model_sampling_of(model):
    return model.get_model_object("model_sampling")


def start_noise(samples: torch.Tensor, seed: int, batch_index=None, continue_from: ReNOHistory | None = None):
    """ComfyUI's noise for ``seed`` (per batch element as its samplers make it), or a history's best noise."""
    noise = comfy.sample.prepare_noise(samples, seed, batch_index)
    if continue_from is None:
        return noise
    best = continue_from.best_noise
    if best is None or tuple(best.shape) != tuple(noise.shape):
        raise ValueError(
            f"ReNO Sampler: continue_from holds noise of shape {None if best is None else tuple(best.shape)}, but this "
            f"latent needs {tuple(noise.shape)}: continue with the same width, height, batch size and model family."
        )
    return best.to(noise.dtype).clone()


def reward_info_of(ensemble: RewardEnsemble) -> list[dict]:
    return [{"label": label, "name": r.name, "weight": r.weight, "offset": r.model.offset}
            for label, r in zip(ensemble.labels, ensemble.rewards)]


def make_ensemble(rewards, prompt, node_name: str = "ReNO Sampler") -> RewardEnsemble:
    if not rewards:
        raise ValueError(f"{node_name}: connect at least one 'ReNO Load Reward' node to 'rewards'.")
    return RewardEnsemble(list(rewards), prompt, compile=compile_rewards())


def iteration_reporter(iterations: int, reward_info: list[dict], event_node_id=None, progress_node_id=None):
    """The per-iteration hook: progress bar with a preview, a ``reno.iteration`` event, the cancel check.

    ``progress_node_id`` None lets ComfyUI attribute the progress to the node that is executing.
    """
    pbar = progress_bar(iterations, progress_node_id)

    def on_iteration(record: IterationRecord, image: torch.Tensor, preview: torch.Tensor):
        pbar.update_absolute(record.iteration + 1, iterations,
                             ("JPEG", Image.fromarray(preview[0].numpy()), PREVIEW_SIZE))
        send_iteration(event_node_id, record, iterations, reward_info, record.best_iteration, preview)
        comfy.model_management.throw_exception_if_processing_interrupted()

    return on_iteration


def model_family(model) -> str | None:
    """The model's family as ComfyUI detected it: its ``supported_models`` class name (SD15, SDXL, Flux, ZImage...)."""
    config = getattr(getattr(model, "model", None), "model_config", None)
    return type(config).__name__ if config is not None else None


def chain_record(run: RunResult, chain: ChainSettings, scheduler: str | None) -> dict:
    """What the history keeps about the sampling chain (shown by ReNO Iteration Preview)."""
    return {"steps": len(run.sigmas) - 1, "sampler": chain.sampler, "scheduler": scheduler,
            "gradient": chain.gradient, "gradient_steps": chain.k, "sigmas": run.sigmas}


def check_result(result, node_name: str = "ReNO Sampler") -> None:
    if not all(result.finite):
        bad = [b for b, ok in enumerate(result.finite) if not ok]
        raise RuntimeError(
            f"{node_name}: the reward was NaN/Inf from the first iteration for image(s) {bad} of the batch, so there "
            "is no valid result. Check the VAE (try a float32 VAE, e.g. ComfyUI's --fp32-vae) and the reward files."
        )
    if result.stop_reason:
        log.warning("%s: %s", node_name, result.stop_reason)


def reno_sample(model, positive, negative, vae, latent_image, rewards, prompt, seed, config: ReNOConfig, cfg,
                node_id=None, continue_from: ReNOHistory | None = None, memory: str = "auto", steps: int = 1,
                scheduler: str = "simple", chain: ChainSettings = ChainSettings(), candidates: int = 1, keep: int = 1):
    """Run ReNO with ComfyUI's own sampling machinery; returns (LATENT, IMAGE, RENO_HISTORY).

    ``continue_from`` starts from a previous run's best noise instead of the seed's (change the weights
    or the prompt and keep refining). The sigmas are KSampler's for ``scheduler`` and ``steps``: one step of
    ``simple`` is the model's ``sigma_max`` (t=999 for ε/v/x0 models, 1.0 for flow models such as FLUX and SD3,
    whatever their shift).

    ``candidates`` > 1: that many seeds' noises are generated and scored first, and the ``keep`` best start the run
    (``nodes/search.py``); the images come out as a batch of ``keep``, best candidate first.
    """
    ensemble = make_ensemble(rewards, prompt)
    reward_info = reward_info_of(ensemble)

    samples = comfy.sample.fix_empty_latent_channels(model, latent_image["samples"])
    candidates, keep = check_search(candidates, keep, samples.shape[0], continue_from)
    noise = start_noise(samples, seed, latent_image.get("batch_index"), continue_from)
    if scheduler not in comfy.samplers.KSampler.SCHEDULERS:
        raise ValueError(f"ReNO Sampler: scheduler {scheduler!r} is not one of this ComfyUI's schedulers "
                         f"({', '.join(comfy.samplers.KSampler.SCHEDULERS)})")
    sigmas = host_sampling.ksampler_sigmas(model, scheduler, int(steps), chain.sampler)
    check_mode(memory)  # an unknown memory mode fails here, before sampling
    search = None
    if candidates > 1:  # search, then gradient: the keep best of the candidates' noises start the run
        pbar = progress_bar(candidates, node_id)
        noise, search = search_candidates(
            model, positive, negative, vae, samples, latent_image.get("noise_mask"), ensemble, seed, candidates, keep,
            cfg, sigmas, chain, memory, on_batch=lambda done, total: pbar.update_absolute(done, total))
        samples = samples.expand(keep, *samples.shape[1:]).contiguous()

    on_iteration = iteration_reporter(config.iterations, reward_info, node_id, node_id)
    runs: list[RunResult] = []
    sampler = ReNOComfySampler(
        lambda: ReNORun(ensemble, vae, ReNOBody(config, on_iteration, PREVIEW_SIZE), memory_mode=memory,
                        model_patcher=model, chain=chain),
        on_result=runs.append,
    )
    out_samples = comfy.sample.sample_custom(
        model, noise, cfg, sampler, sigmas, positive, negative, samples,
        noise_mask=latent_image.get("noise_mask"), disable_pbar=True, seed=seed,
    )
    run = runs[-1]
    result = run.result
    check_result(result)

    latent_out = dict(latent_image)
    latent_out["samples"] = out_samples
    if search is not None:  # the keep best candidates: a batch of their own
        latent_out.pop("batch_index", None)
    image = result.best_image.float().movedim(1, -1).cpu()
    history = ReNOHistory(
        prompt=prompt,
        seed=int(seed),
        rewards=reward_info,
        config={**config.to_dict(), "cfg": cfg, "family": model_family(model), "memory": run.memory,
                "vae_layout": run.layout,
                "attention": run.attention, **chain_record(run, chain, scheduler)},
        sigma=run.sigma,
        records=[r.to_dict() for r in result.records],
        previews=run.previews,
        best_iteration=result.best_iteration,
        best_loss=result.best_loss,
        best_noise=result.best_noise.cpu(),
        stop_reason=result.stop_reason,
        search=search,
    )
    return latent_out, image, history
