"""Autograd inside ComfyUI's ``torch.inference_mode()``.

Weights loaded (or moved) under inference mode are *inference tensors*: they cannot be saved for
backward. For the duration of a ReNO run, every parameter and buffer of the models involved is
swapped for a normal tensor viewing the same storage (zero-copy), and the originals are put back
afterwards, whatever happens (error, cancel).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable

import torch
from torch import nn


def as_normal(t):
    """A normal (non-inference) tensor with the same data; ``t`` itself when it already is one.

    Zero-copy: it views the same storage. Must be called outside inference mode. A tensor subclass stays
    that subclass with the same attributes (``same_subclass``), so quantized weights such as ComfyUI-GGUF's
    ``GGMLTensor`` keep their quantization type and logical shape; a wrapper subclass without storage of its
    own (ComfyUI's ``comfy.quant_ops.QuantizedTensor``) is rebuilt around normal views of its inner tensors.
    """
    if not isinstance(t, torch.Tensor) or not t.is_inference():
        return t
    if hasattr(type(t), "__tensor_flatten__"):  # a wrapper subclass (ComfyUI's own comfy.quant_ops.QuantizedTensor)
        return _rebuilt_wrapper(t)
    out = torch.empty(0, dtype=t.dtype, device=t.device)
    out.set_(t.untyped_storage(), t.storage_offset(), t.size(), t.stride())
    return same_subclass(out, t)


def _rebuilt_wrapper(t):
    """A wrapper tensor subclass rebuilt by its own flatten/unflatten protocol around normal views of its inner
    tensors (zero-copy); instance attributes the constructor does not set (``_is_param``) are carried over."""
    names, ctx = t.__tensor_flatten__()
    inner = {name: as_normal(getattr(t, name)) for name in names}
    out = type(t).__tensor_unflatten__(inner, ctx, t.size(), t.stride())
    for key, value in t.__dict__.items():
        out.__dict__.setdefault(key, value)
    return out


def same_subclass(out: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """``out`` (a plain tensor) as ``like``'s tensor subclass, carrying a copy of ``like``'s instance attributes
    (ComfyUI-GGUF's ``GGMLTensor``: ``tensor_type``, ``tensor_shape``, ``patches``; ``_is_param`` where the subclass
    instance is a parameter); ``out`` itself for plain tensors and parameters. No constructor runs (some, like
    ``GGMLTensor``'s, need arguments), and no data is copied."""
    cls = type(like)
    if cls is torch.Tensor or cls is nn.Parameter:
        return out
    out = out.as_subclass(cls)
    out.__dict__.update(like.__dict__)
    return out


@contextlib.contextmanager
def swapped_tensors(modules: Iterable[nn.Module | None], replace: Callable[[torch.Tensor], torch.Tensor | None],
                    buffers: bool = True):
    """Swap each parameter (and buffer) ``t`` of ``modules`` for ``replace(t)`` where that is not None, for the
    duration; the originals are put back on exit, whatever happens (error, cancel). Parameters stay
    ``nn.Parameter``s without gradients."""
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
                for table in (module._parameters, module._buffers) if buffers else (module._parameters,):
                    for name, t in table.items():
                        new = None if t is None else replace(t)
                        if new is None:
                            continue
                        if isinstance(t, nn.Parameter) and not isinstance(new, nn.Parameter):
                            # (a subclass instance that already is one keeps its class: nn.Parameter() of it
                            # would detach() it, which drops its attributes for most subclasses)
                            new = nn.Parameter(new, requires_grad=False)
                        swapped.append((table, name, t))
                        table[name] = new
        yield len(swapped)
    finally:
        for table, name, original in reversed(swapped):
            table[name] = original


def normal_tensors(modules: Iterable[nn.Module | None]):
    """Swap inference parameters/buffers of ``modules`` for zero-copy normal ones; restore on exit."""
    return swapped_tensors(modules, lambda t: as_normal(t) if t.is_inference() else None)


@contextlib.contextmanager
def normal_attributes(objects: Iterable[object | None]):
    """Swap each inference tensor held as a plain attribute of ``objects`` (not a module's parameter or buffer: a
    latent format's ``latents_mean`` / ``latents_std``, made when the model was loaded under inference mode) for a
    zero-copy normal one, for the duration; the originals are put back on exit, whatever happens. Without it the
    first op of the gradient path that saves one (Wan 2.1 / Qwen-Image's ``process_out``: ``latent * latents_std``)
    fails with "Inference tensors cannot be saved for backward"."""
    swapped: list[tuple[object, str, torch.Tensor]] = []
    try:
        for obj in objects:
            for name, value in list(vars(obj).items()) if obj is not None and hasattr(obj, "__dict__") else ():
                if isinstance(value, torch.Tensor) and value.is_inference():
                    swapped.append((obj, name, value))
                    setattr(obj, name, as_normal(value))
        yield len(swapped)
    finally:
        for obj, name, original in reversed(swapped):
            setattr(obj, name, original)


def channels_last_weights(modules: Iterable[nn.Module | None]):
    """Swap every 4-D parameter of ``modules`` for a channels-last copy (convolutions then run, and hand on
    their outputs, in NHWC); the originals are put back on exit, whatever happens."""
    def to_nhwc(t: torch.Tensor) -> torch.Tensor | None:
        if t.dim() != 4 or t.is_contiguous(memory_format=torch.channels_last):
            return None
        return t.detach().contiguous(memory_format=torch.channels_last)

    return swapped_tensors(modules, to_nhwc, buffers=False)
