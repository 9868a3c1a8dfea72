"""The zero-copy swap of inference-mode weights for normal tensors (nodes/autograd.py), without an engine.

ComfyUI loads weights under ``torch.inference_mode()``; ReNO swaps them for normal views of the same storage
for the duration of a run. Quantized weights such as ComfyUI-GGUF's ``GGMLTensor`` are a ``torch.Tensor``
subclass whose attributes (quantization type, logical shape) the layers read on every forward: the swap must
keep the class and the attributes, keep them parameters, and put the very same objects back afterwards.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch
from tolerances import assert_rounding_close
from torch import nn

_PATH = Path(__file__).resolve().parents[1] / "nodes" / "autograd.py"
_spec = importlib.util.spec_from_file_location("reno_autograd_under_test", _PATH)
autograd = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(autograd)  # only torch: importable without ComfyUI (nodes/__init__ is not)


class Tagged(torch.Tensor):
    """A subclass whose constructor needs keyword arguments (no constructor may run when it is re-wrapped)."""

    def __new__(cls, data, *, tag):
        return data.as_subclass(cls)

    def __init__(self, data, *, tag):
        self.tag = tag


class Blocks(torch.Tensor):
    """Like GGMLTensor: raw int8 blocks + scale, a logical ``shape`` different from the storage's size, and
    ``detach``/``clone`` that return the tensor itself."""

    def __new__(cls, raw, *, scale, logical_shape):
        return raw.as_subclass(cls)

    def __init__(self, raw, *, scale, logical_shape):
        self.scale = scale
        self.logical_shape = torch.Size(logical_shape)
        self.patches = []

    def detach(self, *args, **kwargs):
        return self

    def clone(self, *args, **kwargs):
        return self

    @property
    def shape(self):
        return self.__dict__.get("logical_shape") or torch.Tensor.size(self)


def dequantize(t: Blocks) -> torch.Tensor:
    raw = t.as_subclass(torch.Tensor)
    return (raw.to(torch.float32) * t.scale).reshape(t.logical_shape)


class QuantLinear(nn.Module):
    """A layer that dequantizes its ``Blocks`` weight on every forward, as ComfyUI-GGUF's ops do, and uses its
    small plain tensor as it is (GGUF keeps those F32): backward must save that one."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor):
        super().__init__()
        scale = float(weight.abs().max()) / 127
        raw = torch.round(weight / scale).to(torch.int8).reshape(-1, 4)  # storage shape != logical shape
        self.weight = nn.Parameter(Blocks(raw, scale=scale, logical_shape=weight.shape), requires_grad=False)
        self.bias = nn.Parameter(bias, requires_grad=False)

    def forward(self, x):
        return nn.functional.linear(x, dequantize(self.weight)) * self.bias


def test_a_plain_inference_tensor_becomes_a_normal_view_of_the_same_storage():
    with torch.inference_mode():
        t = torch.arange(6.0).reshape(2, 3)
    out = autograd.as_normal(t)
    assert type(out) is torch.Tensor and not out.is_inference()
    assert out.data_ptr() == t.data_ptr() and out.shape == t.shape and out.stride() == t.stride()
    normal = torch.ones(2)
    assert autograd.as_normal(normal) is normal


def test_a_subclass_keeps_its_class_and_attributes():
    with torch.inference_mode():
        t = Tagged(torch.arange(8.0)[2:6], tag={"kind": "Q8_0"})
    assert t.is_inference()
    out = autograd.as_normal(t)
    assert type(out) is Tagged and not out.is_inference()
    assert out.tag == {"kind": "Q8_0"}
    assert out.data_ptr() == t.data_ptr() and out.storage_offset() == t.storage_offset() == 2
    assert torch.equal(out.as_subclass(torch.Tensor), torch.arange(2.0, 6.0))


def test_a_logical_shape_is_kept_and_the_storage_is_viewed_by_its_real_size():
    with torch.inference_mode():
        t = Blocks(torch.arange(12, dtype=torch.int8).reshape(3, 4), scale=0.5, logical_shape=(2, 6))
    out = autograd.as_normal(t)
    assert type(out) is Blocks and not out.is_inference()
    assert torch.Tensor.size(out) == (3, 4) and out.shape == (2, 6)  # storage (raw blocks) vs logical
    assert out.scale == 0.5 and out.patches == [] and out.data_ptr() == t.data_ptr()
    assert torch.equal(dequantize(out), dequantize(t))


def _make_layer():
    gen = torch.Generator().manual_seed(0)
    w, b = torch.randn(6, 4, generator=gen), torch.randn(6, generator=gen)
    with torch.inference_mode():  # as ComfyUI's loaders run: every tensor made there is an inference tensor
        layer = QuantLinear(w.clone(), b.clone())
    return layer


def test_swapped_subclass_parameters_stay_subclass_parameters_and_carry_the_gradient():
    layer = _make_layer()
    weight, bias = layer.weight, layer.bias
    assert weight.is_inference() and isinstance(weight, nn.Parameter) and type(weight) is Blocks
    assert bias.is_inference() and type(bias) is nn.Parameter
    x = torch.randn(3, 4, generator=torch.Generator().manual_seed(1))
    expected_grad = (bias.as_subclass(torch.Tensor) @ dequantize(weight)).expand(3, 4)

    with pytest.raises(RuntimeError, match="[Ii]nference tensors"):  # what the swap is for
        xi = x.clone().requires_grad_()
        layer(xi).sum().backward()
    with torch.enable_grad(), autograd.normal_tensors([layer]) as n:
        assert n == 2
        w = layer.weight
        assert w is not weight and type(w) is Blocks and isinstance(w, nn.Parameter) and not w.requires_grad
        assert not w.is_inference() and w.shape == (6, 4) and w.scale == weight.scale
        assert w.data_ptr() == weight.data_ptr()  # zero-copy
        assert type(layer.bias) is nn.Parameter and not layer.bias.is_inference()
        xg = x.clone().requires_grad_()
        layer(xg).sum().backward()
    assert_rounding_close(xg.grad, expected_grad, 8)  # float32: a 6-term dot product per entry, in another order
    assert layer.weight is weight and layer.bias is bias  # the very same objects are back
    assert weight.is_inference() and weight.shape == (6, 4)


def test_a_subclass_whose_detach_drops_attributes_is_not_rewrapped_by_nn_parameter():
    with torch.inference_mode():
        p = nn.Parameter(Tagged(torch.ones(3), tag="t"), requires_grad=False)
        p.tag = "F32"  # nn.Parameter(subclass) detach()es: set the attribute on the parameter itself
        module = nn.Module()
        module.w = p
    with autograd.normal_tensors([module]):
        w = module.w
        assert type(w) is Tagged and isinstance(w, nn.Parameter) and w.tag == "F32" and not w.is_inference()
    assert module.w is p


def test_the_originals_come_back_after_an_error():
    layer = _make_layer()
    weight = layer.weight
    with pytest.raises(KeyError), autograd.normal_tensors([layer]):
        assert layer.weight is not weight
        raise KeyError("cancelled")
    assert layer.weight is weight and type(layer.weight) is Blocks


class Wrapper(torch.Tensor):
    """A wrapper subclass (no storage of its own: int8 data + scale inside, like ComfyUI's own
    ``comfy.quant_ops.QuantizedTensor``) with the flatten/unflatten protocol; every op sees the dequantized
    values."""

    @staticmethod
    def __new__(cls, qdata, scale):
        return torch.Tensor._make_wrapper_subclass(cls, qdata.shape, dtype=torch.float32, device=qdata.device,
                                                   requires_grad=False)

    def __init__(self, qdata, scale):
        self.qdata, self.scale = qdata, scale

    def __tensor_flatten__(self):
        return ["qdata", "scale"], {}

    @staticmethod
    def __tensor_unflatten__(inner, ctx, outer_size, outer_stride):
        return Wrapper(inner["qdata"], inner["scale"])

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        if func is torch.ops.aten.detach.default:  # what nn.Parameter() needs
            return Wrapper(args[0].qdata.detach(), args[0].scale.detach())

        def plain(a):
            return a.qdata.to(torch.float32) * a.scale if isinstance(a, Wrapper) else a

        return func(*torch.utils._pytree.tree_map(plain, args), **torch.utils._pytree.tree_map(plain, kwargs or {}))


def test_a_wrapper_subclass_is_rebuilt_around_normal_inner_tensors():
    gen = torch.Generator().manual_seed(2)
    with torch.inference_mode():
        qdata = torch.randint(-127, 128, (5, 4), generator=gen).to(torch.int8)
        p = nn.Parameter(Wrapper(qdata, torch.tensor(0.01)), requires_grad=False)
        module = nn.Module()
        module.w = p
    assert p.is_inference() and p.qdata.is_inference()
    x = torch.randn(3, 4, generator=gen)
    with torch.enable_grad(), autograd.normal_tensors([module]):
        cls = type(module.w)  # (never print a tensor that views a wrapper's empty storage: it would crash)
        assert cls is Wrapper
        w = module.w
        assert isinstance(w, nn.Parameter) and not w.is_inference()
        assert not w.qdata.is_inference() and not w.scale.is_inference()
        assert w.qdata.data_ptr() == qdata.data_ptr()  # zero-copy
        xg = x.clone().requires_grad_()
        (nn.functional.linear(xg, w) * w.sum()).sum().backward()
    dense = qdata.to(torch.float32) * 0.01
    # float32: column sums of the 6 x 4 weight times its total (24 terms), in other orders (measured 0.5)
    assert_rounding_close(xg.grad, (dense.sum(0) * dense.sum()).expand(3, 4), 32)
    assert module.w is p


def test_a_latent_formats_inference_statistics_are_swapped_for_the_run_and_put_back():
    """A latent format holding its statistics as tensors made under inference mode (ComfyUI's Wan21, Qwen-Image's):
    inside ``normal_attributes`` they are normal views of the same storage, so ``latent * std + mean`` can be saved
    for backward and carries the gradient; afterwards the very same objects are back, after an error too."""

    class LatentFormat:
        scale_factor = 1.0

        def __init__(self):
            self.latents_mean = torch.tensor([0.5, -0.25]).view(1, 2, 1, 1)
            self.latents_std = torch.tensor([2.0, 3.0]).view(1, 2, 1, 1)
            self.name = "wan21"

    with torch.inference_mode():
        fmt = LatentFormat()
    mean, std = fmt.latents_mean, fmt.latents_std
    assert mean.is_inference() and std.is_inference()
    x = torch.ones(1, 2, 2, 2, requires_grad=True)
    with pytest.raises(RuntimeError, match="Inference tensors cannot be saved for backward"):
        x * fmt.latents_std  # noqa: B018 (what process_out does, without the swap)
    with autograd.normal_attributes([fmt, None]) as n:
        assert n == 2 and not fmt.latents_mean.is_inference() and not fmt.latents_std.is_inference()
        assert fmt.latents_std.data_ptr() == std.data_ptr() and fmt.name == "wan21"
        (x * fmt.latents_std / fmt.scale_factor + fmt.latents_mean).sum().backward()
    assert fmt.latents_mean is mean and fmt.latents_std is std
    assert torch.equal(x.grad, std.expand(1, 2, 2, 2))
    with pytest.raises(ValueError), autograd.normal_attributes([fmt]):
        raise ValueError("boom")
    assert fmt.latents_mean is mean and fmt.latents_std is std
