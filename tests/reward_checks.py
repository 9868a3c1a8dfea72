"""Checks every differentiable reward passes, shared by the per-reward test modules (test_aesthetic, test_hps)."""

from __future__ import annotations

import torch
from reno_pack.reward_loaders import comfy_to_bchw
from tolerances import BATCH_K, assert_rounding_close


def check_gradients_reach_the_image(model, prompt: str) -> None:
    """The score's gradient reaches the images, and none reaches the (frozen) weights."""
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    model(images, prompt).sum().backward()
    assert torch.isfinite(images.grad).all() and images.grad.abs().sum() > 0
    assert all(p.grad is None for p in model.parameters())


def check_comfy_images_score_per_image(model, prompt: str, h: int, w: int, batch: int) -> None:
    """ComfyUI images (B, H, W, 3) of any size get one finite score each, the batch's within float32 rounding of
    one by one (measured: aesthetic <= 1.3 of ``BATCH_K``'s unit; HPS' cosines likewise)."""
    comfy_images = torch.rand(batch, h, w, 3)
    scores = model(comfy_to_bchw(comfy_images), prompt)
    assert scores.shape == (batch,) and torch.isfinite(scores).all()
    one_by_one = torch.cat([model(comfy_to_bchw(comfy_images[i : i + 1]), prompt) for i in range(batch)])
    assert_rounding_close(scores, one_by_one, BATCH_K, at_least=1.0)
