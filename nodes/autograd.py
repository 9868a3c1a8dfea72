"""Autograd inside ComfyUI's ``torch.inference_mode()``.

Weights loaded (or moved) under inference mode are *inference tensors*: they cannot be saved for
backward. For the duration of a ReNO run, every parameter and buffer of the models involved is
swapped for a normal tensor viewing the same storage (zero-copy), and the originals are put back
afterwards, whatever happens (error, cancel).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable

import torch
from torch import nn


def as_normal(t):
    """A normal (non-inference) tensor with the same data; ``t`` itself when it already is one.

    Zero-copy: it views the same storage. Must be called outside inference mode.
    """
    if not isinstance(t, torch.Tensor) or not t.is_inference():
        return t
    out = torch.empty(0, dtype=t.dtype, device=t.device)
    out.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
    return out


@contextlib.contextmanager
def normal_tensors(modules: Iterable[nn.Module | None]):
    """Swap inference parameters/buffers of ``modules`` for zero-copy normal ones; restore on exit."""
    swapped: list[tuple[dict, str, torch.Tensor]] = []
    seen: set[int] = set()
    try:
        for root in modules:
            if root is None:
                continue
            for module in root.modules():
                if id(module) in seen:
                    continue
                seen.add(id(module))
                for table in (module._parameters, module._buffers):
                    for name, t in table.items():
                        if t is None or not t.is_inference():
                            continue
                        view = as_normal(t)
                        if isinstance(t, nn.Parameter):
                            view = nn.Parameter(view, requires_grad=False)
                        swapped.append((table, name, t))
                        table[name] = view
        yield len(swapped)
    finally:
        for table, name, original in reversed(swapped):
            table[name] = original



@contextlib.contextmanager
def channels_last_weights(modules: Iterable[nn.Module | None]):
    """Swap every 4-D parameter of ``modules`` for a channels-last copy (convolutions then run, and hand on
    their outputs, in NHWC); the originals are put back on exit, whatever happens."""
    swapped: list[tuple[dict, str, torch.Tensor]] = []
    try:
        for root in modules:
            if root is None:
                continue
            for module in root.modules():
                table = module._parameters
                for name, t in table.items():
                    if t is None or t.dim() != 4 or t.is_contiguous(memory_format=torch.channels_last):
                        continue
                    copy = nn.Parameter(t.detach().contiguous(memory_format=torch.channels_last), requires_grad=False)
                    swapped.append((table, name, t))
                    table[name] = copy
        yield len(swapped)
    finally:
        for table, name, original in reversed(swapped):
            table[name] = original
