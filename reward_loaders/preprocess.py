"""Differentiable image preprocessing for the reward towers, in plain torch on the image's device.

It reproduces what the reward authors' PIL/torchvision pipelines compute on a tensor:
``Resize(224, bicubic, antialias)`` of the short side (long side ``int(224 * long / short)``,
truncated, as torchvision does), ``CenterCrop(224)`` (offset ``int(round((size - 224) / 2))``,
Python rounding), then per-channel normalization.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def comfy_to_bchw(images: torch.Tensor) -> torch.Tensor:
    """ComfyUI IMAGE (B, H, W, C) -> (B, C, H, W); a single (H, W, C) image becomes a batch of one."""
    if images.dim() == 3:
        images = images.unsqueeze(0)
    if images.dim() != 4:
        raise ValueError(f"expected an IMAGE batch (B, H, W, C), got a tensor of shape {tuple(images.shape)}")
    return images.movedim(-1, 1)


def as_rgb(images: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) with C in {1, 3, 4} -> (B, 3, H, W): grey is repeated, alpha dropped."""
    c = images.shape[1]
    if c == 3:
        return images
    if c == 1:
        return images.expand(-1, 3, -1, -1)
    if c == 4:
        return images[:, :3]
    raise ValueError(f"expected images with 1, 3 or 4 channels, got {c} (shape {tuple(images.shape)})")


def resize_short_side(images: torch.Tensor, size: int) -> torch.Tensor:
    """Bicubic antialiased resize of (B, C, H, W) so the short side is ``size`` (torchvision rounding)."""
    h, w = images.shape[-2:]
    short, long = (h, w) if h <= w else (w, h)
    new_short, new_long = size, int(size * long / short)
    new_h, new_w = (new_short, new_long) if h <= w else (new_long, new_short)
    if (new_h, new_w) == (h, w):
        return images
    dtype = images.dtype
    if images.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
        images = images.float()  # the antialiased bicubic kernel has no half-precision CPU version
    out = F.interpolate(images, size=(new_h, new_w), mode="bicubic", antialias=True, align_corners=False)
    return out.to(dtype)


def center_crop(images: torch.Tensor, size: int) -> torch.Tensor:
    h, w = images.shape[-2:]
    if h < size or w < size:
        pad_h, pad_w = max(size - h, 0), max(size - w, 0)  # torchvision pads with zeros
        images = F.pad(images, (pad_w // 2, (pad_w + 1) // 2, pad_h // 2, (pad_h + 1) // 2))
        h, w = images.shape[-2:]
    top = int(round((h - size) / 2.0))
    left = int(round((w - size) / 2.0))
    return images[..., top : top + size, left : left + size]


def clip_preprocess(
    images: torch.Tensor,
    size: int = 224,
    mean: tuple[float, ...] = CLIP_MEAN,
    std: tuple[float, ...] = CLIP_STD,
) -> torch.Tensor:
    """(B, C, H, W) images in [0, 1] -> normalized (B, 3, size, size) pixel values, differentiably."""
    images = as_rgb(images)
    images = center_crop(resize_short_side(images, size), size)
    m = torch.tensor(mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
    return (images - m) / s
