"""The reward objective, in one place (plain PyTorch).

``reward_loss``: ``sum_i w_i (c_i - r_i)``, ReNO's loss on the noise and AlignProp's and DRTune's on a LoRA, or
``sum_i w_i relu(c_i - r_i)`` (ReFL); ``weighted_total``: ``sum_i w_i r_i``, the weighted reward that ReNO
maximizes and that the nodes report. ``reward_loaders.RewardEnsemble``, ``training.reward_finetuning.reward_loss``
and the nodes' charts, live events and reports all compute them here.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch


def weighted_total(terms: Iterable[tuple[float, Any]]) -> Any:
    """``sum_i w_i s_i`` over ``(weight, score)`` pairs (tensors or plain floats)."""
    return sum(weight * score for weight, score in terms)


def reward_loss(terms: Iterable[tuple[float, float, torch.Tensor]], relu: bool = False) -> torch.Tensor:
    """(B,) ``sum_i w_i (c_i - r_i)`` over ``(weight, offset, score)`` terms, in their order; ``relu=True``:
    ``sum_i w_i relu(c_i - r_i)`` (no gradient from a reward already above its offset)."""
    loss = None
    for weight, offset, score in terms:
        gap = offset - score
        term = weight * (torch.relu(gap) if relu else gap)
        loss = term if loss is None else loss + term
    if loss is None:
        raise ValueError("reward_loss: no reward")
    return loss
