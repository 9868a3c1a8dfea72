"""Reward-based Noise Optimization (ReNO, Eyring et al., NeurIPS 2024) in plain PyTorch.

One iteration: ``z`` (the initial noise) -> ``generate(z)`` (the sampling chain, one step or several, and the
decode) -> image -> ``objective(image)`` -> per-element loss ``sum_i w_i (c_i - score_i)`` -> backward to ``z``
(plus the weighted regularizer) -> clip each element's gradient norm -> SGD step with Nesterov momentum.
The best iteration of each batch element by its reward loss (iteration 0 included, regularizer
excluded) is returned, so the result is never worse on the reward than the image of the unchanged noise.

Batch elements are independent optimizations run in one batched pass: each element has its own
gradient clipping, regularizer, momentum, best iteration, and its own stop on a non-finite value.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import torch

from .config import ReNOConfig
from .regularizers import regularizer_fn

log = logging.getLogger(__name__)

# generate(z) -> image or (image, extra); image (B, ...) float; extra: any (B, ...) tensor kept for the
# best iteration (the bridge keeps the denoised latent there).
GenerateFn = Callable[[torch.Tensor], "torch.Tensor | tuple[torch.Tensor, torch.Tensor | None]"]
# objective(image) -> (loss per element (B,), {reward name: score per element (B,)})
ObjectiveFn = Callable[[torch.Tensor], "tuple[torch.Tensor, Mapping[str, torch.Tensor]]"]


@dataclass
class IterationRecord:
    """What happened at one iteration, as plain Python numbers (one entry per batch element)."""

    iteration: int
    loss: list[float]
    scores: dict[str, list[float]]
    latent_norm: list[float]
    # pre-clipping L2 norm of the gradient computed from this iteration; None after the last one
    grad_norm: list[float] | None
    active: list[bool]  # still being optimized after this iteration
    best_iteration: list[int] = field(default_factory=list)  # each element's best iteration so far (this one included)

    def to_dict(self) -> dict:
        return {
            "iteration": self.iteration,
            "loss": self.loss,
            "scores": self.scores,
            "latent_norm": self.latent_norm,
            "grad_norm": self.grad_norm,
            "active": self.active,
            "best_iteration": self.best_iteration,
        }


@dataclass
class ReNOResult:
    best_image: torch.Tensor  # (B, ...) detached
    best_extra: torch.Tensor | None
    best_noise: torch.Tensor  # (B, ...) float32, the noise that produced best_image
    best_iteration: list[int]
    best_loss: list[float]
    finite: list[bool]  # False where no iteration of that element gave a finite loss
    records: list[IterationRecord] = field(default_factory=list)
    stop_reason: str | None = None  # set when the run ended before config.iterations

    @property
    def iterations_run(self) -> int:
        return len(self.records)


def _per_element(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    return mask.view(-1, *([1] * (like.dim() - 1)))


def optimize_noise(
    generate: GenerateFn,
    objective: ObjectiveFn,
    noise: torch.Tensor,
    config: ReNOConfig = ReNOConfig(),
    callback: Callable[[IterationRecord, torch.Tensor], None] | None = None,
) -> ReNOResult:
    """Run ReNO from ``noise`` (B, ...) and return each element's best iteration.

    ``callback(record, image)`` runs after every iteration (progress, previews); the record carries each
    element's best iteration so far, so a reporter never computes its own best-of. An exception the
    callback raises (e.g. a cancel) propagates. The noise is optimized in float32 whatever ``generate``
    computes in.
    """
    z = noise.detach().to(torch.float32).clone().requires_grad_(True)
    batch = z.shape[0]
    device = z.device
    regularize = regularizer_fn(config.regularizer)

    active = torch.ones(batch, dtype=torch.bool, device=device)
    best_loss = torch.full((batch,), math.inf, dtype=torch.float32, device=device)
    best_iter = torch.zeros(batch, dtype=torch.long, device=device)
    best_noise = z.detach().clone()
    best_image = best_extra = None
    momentum_buf = None
    records: list[IterationRecord] = []
    stop_reason = None
    prev_active = [True] * batch

    for it in range(config.iterations):
        last = it == config.iterations - 1
        latent_norm = z.detach().reshape(batch, -1).norm(dim=1)
        out = generate(z)
        image, extra = out if isinstance(out, tuple) else (out, None)
        loss, scores = objective(image)
        loss = loss.float().reshape(batch)
        finite = torch.isfinite(loss) & torch.isfinite(image.detach().reshape(batch, -1)).all(dim=1)

        # best-of selection on the reward loss alone
        improved = active & finite & (loss.detach() < best_loss)
        if best_image is None:
            best_image = image.detach().clone()
            best_extra = None if extra is None else extra.detach().clone()
        else:
            best_image = torch.where(_per_element(improved, image), image.detach(), best_image)
            if extra is not None:
                best_extra = torch.where(_per_element(improved, extra), extra.detach(), best_extra)
        best_noise = torch.where(_per_element(improved, z), z.detach(), best_noise)
        best_loss = torch.where(improved, loss.detach(), best_loss)
        best_iter = torch.where(improved, torch.full_like(best_iter, it), best_iter)
        active = active & finite

        grad_norm = None
        if not last:
            grad_norm, momentum_buf, active = _step(z, loss, active, momentum_buf, regularize, config)

        # one host transfer per iteration for everything the record needs
        names = list(scores)
        rows = [loss.detach(), latent_norm, active.float(), best_iter.float()]
        rows += [grad_norm if grad_norm is not None else torch.zeros_like(loss)]
        rows += [scores[n].detach().float().reshape(batch) for n in names]
        stats = torch.stack(rows).cpu().tolist()
        record = IterationRecord(
            iteration=it,
            loss=stats[0],
            scores={n: stats[5 + k] for k, n in enumerate(names)},
            latent_norm=stats[1],
            grad_norm=None if grad_norm is None else stats[4],
            active=[bool(a) for a in stats[2]],
            best_iteration=[int(i) for i in stats[3]],
        )
        records.append(record)
        if callback is not None:
            callback(record, image.detach())
        newly_stopped = [b for b in range(batch) if prev_active[b] and not record.active[b]]
        prev_active = record.active
        if newly_stopped:
            msg = (f"ReNO: the reward loss or its gradient is NaN/Inf at iteration {it} for batch "
                   f"element(s) {newly_stopped}; they keep their best finite iteration")
            warnings.warn(msg, RuntimeWarning, stacklevel=2)
            log.warning(msg)
        if not any(record.active) and not last:
            stop_reason = f"stopped after iteration {it} of {config.iterations}: no image left with a finite loss"
            break

    best_loss_cpu = best_loss.cpu().tolist()
    return ReNOResult(
        best_image=best_image,
        best_extra=best_extra,
        best_noise=best_noise,
        best_iteration=best_iter.cpu().tolist(),
        best_loss=best_loss_cpu,
        finite=[math.isfinite(v) for v in best_loss_cpu],
        records=records,
        stop_reason=stop_reason,
    )


def _step(z, loss, active, momentum_buf, regularize, config: ReNOConfig):
    """Backpropagate, clip and apply one SGD(-Nesterov) update to ``z`` in place.

    Returns the pre-clipping gradient norm per element, the momentum buffer and the updated mask of
    active elements (an element whose gradient is not finite stops, its noise left as it was).
    """
    batch = z.shape[0]
    reg = regularize(z) if config.regularization > 0 else torch.zeros_like(loss)
    total = torch.where(active, loss + config.regularization * reg, torch.zeros_like(loss)).sum()
    if total.requires_grad:
        (grad,) = torch.autograd.grad(total, z)
    else:  # nothing left that depends on z
        grad = torch.zeros_like(z)
    grad = grad.float()
    grad_norm = grad.reshape(batch, -1).norm(dim=1)
    active = active & torch.isfinite(grad_norm)
    keep = _per_element(active, grad)
    grad = torch.where(keep, grad, torch.zeros_like(grad))
    if config.grad_clip > 0:  # torch.nn.utils.clip_grad_norm_, applied to each element on its own
        coef = (config.grad_clip / (grad_norm + 1e-6)).clamp(max=1.0)
        grad = grad * _per_element(torch.where(active, coef, torch.zeros_like(coef)), grad)
    # torch.optim.SGD semantics (dampening 0); inactive elements keep their buffer and noise
    if config.momentum > 0:
        if momentum_buf is None:
            momentum_buf = grad.clone()
        else:
            momentum_buf = torch.where(keep, config.momentum * momentum_buf + grad, momentum_buf)
        step = grad + config.momentum * momentum_buf if config.nesterov else momentum_buf
    else:
        step = grad
    step = torch.where(keep, step, torch.zeros_like(step))
    with torch.no_grad():
        z.sub_(config.learning_rate * step)
    return grad_norm, momentum_buf, active
