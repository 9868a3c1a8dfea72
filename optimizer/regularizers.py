"""Regularizers on the optimized noise, evaluated per batch element in float32."""

from __future__ import annotations

import torch


def chi_norm_nll(z: torch.Tensor) -> torch.Tensor:
    """Negative log-likelihood (up to a constant) of ``||z||`` under a chi distribution.

    A standard normal ``z`` with ``d`` entries has ``||z||`` chi-distributed with ``d`` degrees of
    freedom, whose density is proportional to ``r^(d-1) exp(-r^2/2)``. The penalty
    ``0.5*||z||^2 - (d-1)*log||z||`` is minimal at ``||z|| = sqrt(d-1)`` and keeps the optimized
    noise where the diffusion model was trained. Returns one value per batch element, in float32
    whatever the input dtype (in float16 the square overflows).
    """
    flat = z.reshape(z.shape[0], -1).float()
    d = flat.shape[1]
    sq = flat.pow(2).sum(dim=1)
    if d == 1:  # no log term (0 * log 0 would be NaN at z = 0)
        return 0.5 * sq
    return 0.5 * sq - (d - 1) * 0.5 * torch.log(sq)


def regularizer_fn(name: str):
    if name == "chi":
        return chi_norm_nll
    if name == "none":
        return lambda z: torch.zeros(z.shape[0], dtype=torch.float32, device=z.device)
    raise ValueError(f"unknown regularizer {name!r}")
