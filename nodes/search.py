"""Search, then gradient: ReNO Sampler's ``candidates`` and ``keep``.

``candidates`` N initial noises (the seed's, then seeds ``seed + 1`` … ``seed + N - 1``, each as ComfyUI's samplers
make it for that seed) are generated and scored once, without gradient, in batches of ``SEARCH_BATCH``: one
sampling call each, whose run has a ``SearchBody`` (the same lifecycle and forward pass as ReNO's iteration 0:
the host's sampler, the VAE layout and attention a gradient run takes, the same rewards). The ``keep`` best by
weighted total (ties: the lower seed) then start the ReNO run, as one batch. With N = 1 nothing of this runs.

A kept candidate's iteration 0 is its search image again, up to float rounding, with a deterministic sampler
(euler, dpmpp_2m, res_multistep, ...). A stochastic sampler (ancestral, SDE, lcm, ddpm) draws its step noise for the
whole batch, as in ComfyUI, so its images depend on their place in the batch: with ``keep`` > 1 a kept
candidate's iteration 0 can differ from its search image.
"""

from __future__ import annotations

import comfy.sample
import torch

from ..reward_loaders import RewardEnsemble
from .bridge import ReNOComfySampler
from .lifecycle import ChainSettings, ReNORun, RunBody, RunPlan, RunResult

SEARCH_BATCH = 4  # candidates generated and scored per sampling call
MAX_CANDIDATES = 256


class SearchBody(RunBody):
    """Scores the run's noises (a batch of candidates) at iteration 0, without gradient."""

    def __init__(self):
        self.totals: torch.Tensor | None = None
        self.scores: dict[str, torch.Tensor] = {}

    def prepare(self, run: ReNORun) -> None:
        run.use_host_sampler()

    def plan(self, run: ReNORun, patchers: list) -> RunPlan:
        return run.plain_plan()

    def attempt(self, run: ReNORun, plan: RunPlan) -> torch.Tensor:
        with torch.no_grad(), run.installed(plan):
            image, both = run.forward(run.inputs.start.detach().float())
            scores = run.ensemble.scores(image)
            self.totals = run.ensemble.weighted_total(scores).float().cpu()
        self.scores = {label: v.detach().float().cpu() for label, v in scores.items()}
        return both

    def finish(self, run: ReNORun, both: torch.Tensor, plan: RunPlan) -> RunResult:
        return run.result(both[:, 0], both[:, 1], plan)


def check_search(candidates: int, keep: int, batch: int, continue_from) -> tuple[int, int]:
    """(candidates, keep) as ints, or a clear refusal."""
    candidates, keep = int(candidates), int(keep)
    if not 1 <= candidates <= MAX_CANDIDATES:
        raise ValueError(f"ReNO Sampler: candidates must be 1 to {MAX_CANDIDATES}, got {candidates}.")
    if not 1 <= keep <= candidates:
        raise ValueError(f"ReNO Sampler: keep must be 1 to candidates ({candidates}), got {keep}: the best 'keep' of "
                         "the candidates continue with ReNO.")
    if candidates > 1 and batch != 1:
        raise ValueError(f"ReNO Sampler: candidates > 1 needs a latent with batch_size 1 (this one has {batch}): the "
                         "candidates are the batch; 'keep' sets how many images come out.")
    if candidates > 1 and continue_from is not None:
        raise ValueError("ReNO Sampler: continue_from starts from one given noise, so there is nothing to search: set "
                         "candidates to 1, or disconnect continue_from.")
    return candidates, keep


def search_candidates(model, positive, negative, vae, samples: torch.Tensor, noise_mask, ensemble: RewardEnsemble,
                      seed: int, candidates: int, keep: int, cfg: float, sigmas: torch.Tensor, chain: ChainSettings,
                      memory: str, on_batch=None) -> tuple[torch.Tensor, dict]:
    """(the ``keep`` best noises, (keep, ...) in score order; a record of the search for the history).

    ``samples``: the latent, batch 1. ``on_batch(done, total)``: after each sampling call (progress)."""
    noises = [comfy.sample.prepare_noise(samples, seed + i) for i in range(candidates)]
    totals: list[float] = []
    scores: dict[str, list[float]] = {label: [] for label in ensemble.labels}
    for start in range(0, candidates, SEARCH_BATCH):
        chunk = noises[start:start + SEARCH_BATCH]
        batch = torch.cat(chunk, dim=0)
        latent = samples.expand(len(chunk), *samples.shape[1:]).contiguous()
        body = SearchBody()
        sampler = ReNOComfySampler(lambda body=body: ReNORun(ensemble, vae, body, memory_mode=memory,
                                                             model_patcher=model, chain=chain))
        # the ReNO run's seed: a stochastic sampler's step noise is drawn as the run will draw it
        comfy.sample.sample_custom(model, batch, cfg, sampler, sigmas, positive, negative, latent,
                                   noise_mask=noise_mask, disable_pbar=True, seed=seed)
        totals += body.totals.tolist()
        for label in ensemble.labels:
            scores[label] += body.scores[label].tolist()
        if on_batch is not None:
            on_batch(len(totals), candidates)
    order = sorted(range(candidates), key=lambda i: (-totals[i], i))[:keep]
    record = {"candidates": candidates, "keep": keep, "seeds": [seed + i for i in range(candidates)],
              "weighted_total": totals, "scores": scores, "kept": order}
    return torch.cat([noises[i] for i in order], dim=0), record
