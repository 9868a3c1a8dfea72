"""TEST-ONLY REPLICA of how city96/ComfyUI-GGUF puts a quantized ``.gguf`` diffusion model into ComfyUI.

Not the real loader, and not its code: a small re-implementation of the same *mechanism*, so that CI (where
the real pack, which is not on PyPI, is absent) exercises what matters to ReNO. Run the engine tests with
``COMFYUI_GGUF_PATH=<ComfyUI-GGUF checkout>`` to use the real pack as well (tests/engine/test_gguf.py).

The mechanism, as the real pack has it:

* every weight read from the file is a ``torch.Tensor`` *subclass* (``ReplicaGGMLTensor`` here, ``GGMLTensor``
  there) whose storage is the file's raw bytes (uint8 blocks for quantized types) and whose attributes carry
  the quantization type (``tensor_type``), the logical shape (``tensor_shape``, also returned by ``.shape``
  so ComfyUI's model detection sees the real shapes) and LoRA ``patches``; ``clone()`` and ``detach()`` return
  the tensor itself (so ``nn.Parameter(t)`` keeps the object);
* custom ``comfy.ops`` layers (``model_options["custom_operations"]``, a subclass of ``comfy.ops.manual_cast``)
  assign those tensors as their parameters when the state dict is loaded and dequantize them on every
  forward, to the input's dtype; small F32/F16 tensors stay torch-compatible and take ComfyUI's own
  manual-cast path;
* the model is built by ComfyUI's ``comfy.sd.load_diffusion_model_state_dict`` from the state dict.

Node: ``ReNOTestUnetLoaderGGUFReplica(unet_name) -> (MODEL,)`` reads ``models/diffusion_models`` (or ``unet``)
``*.gguf`` with the PyPI package ``gguf``. Dequantizes Q8_0 (and F32/F16) in torch; other types through
``gguf.quants.dequantize``.
"""

from __future__ import annotations

import os
import warnings

import torch

ORIG_SHAPE_PREFIX = "comfy.gguf.orig_shape."


def _qtypes():
    import gguf

    return gguf.GGMLQuantizationType


def is_torch_compatible(t) -> bool:
    """True for no tensor, a plain tensor, or an F32/F16 replica tensor (no dequantization needed)."""
    if t is None:
        return True
    q = getattr(t, "tensor_type", None)
    if q is None:
        return True
    Q = _qtypes()
    return q in (Q.F32, Q.F16)


class ReplicaGGMLTensor(torch.Tensor):
    """Raw GGUF data with its quantization type and logical shape (the replica of ``GGMLTensor``)."""

    def __new__(cls, data: torch.Tensor, *, tensor_type, tensor_shape, patches=None):
        return data.as_subclass(cls)

    def __init__(self, data: torch.Tensor, *, tensor_type, tensor_shape, patches=None):
        self.tensor_type = tensor_type
        self.tensor_shape = torch.Size(tensor_shape)
        self.patches = list(patches or [])

    def _carry(self, new):
        if isinstance(new, ReplicaGGMLTensor):
            new.tensor_type = getattr(self, "tensor_type", None)
            new.tensor_shape = getattr(self, "tensor_shape", torch.Tensor.size(new))
            new.patches = list(getattr(self, "patches", []))
        return new

    def to(self, *args, **kwargs):
        return self._carry(super().to(*args, **kwargs))

    def clone(self, *args, **kwargs):
        return self

    def detach(self, *args, **kwargs):
        return self

    @property
    def shape(self):
        if "tensor_shape" not in self.__dict__:
            return torch.Tensor.size(self)
        return self.tensor_shape


def _plain(t: torch.Tensor) -> torch.Tensor:
    return t.as_subclass(torch.Tensor) if isinstance(t, ReplicaGGMLTensor) else t


def dequantize(t, dtype=None) -> torch.Tensor | None:
    """A plain tensor of ``t``'s logical shape and values, in ``dtype``."""
    if t is None:
        return None
    Q = _qtypes()
    qtype = getattr(t, "tensor_type", None)
    raw = _plain(t)
    if qtype in (None, Q.F32, Q.F16):
        return raw.to(dtype) if dtype is not None else raw
    shape = getattr(t, "tensor_shape", raw.shape)
    if qtype == Q.Q8_0:  # blocks of (float16 scale, 32 int8)
        blocks = raw.reshape(-1, 34)
        scale = blocks[:, :2].contiguous().view(torch.float16).to(torch.float32)
        values = blocks[:, 2:].contiguous().view(torch.int8).to(torch.float32)
        out = (values * scale).reshape(shape)
    else:
        import gguf

        out = torch.from_numpy(gguf.quants.dequantize(raw.cpu().numpy(), qtype)).to(raw.device).reshape(shape)
    return out.to(dtype if dtype is not None else torch.float32)


class ReplicaGGMLLayer(torch.nn.Module):
    """Loads replica tensors as its parameters and dequantizes them in forward."""

    comfy_cast_weights = True

    def is_quantized(self, weight=None, bias=None) -> bool:
        weight = self.weight if weight is None else weight
        bias = self.bias if bias is None else bias
        return not (is_torch_compatible(weight) and is_torch_compatible(bias))

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys, unexpected_keys,
                              error_msgs):
        weight, bias = state_dict.get(prefix + "weight"), state_dict.get(prefix + "bias")
        if not (self.is_quantized(weight, bias) or isinstance(self, torch.nn.Linear)):
            return super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                                 unexpected_keys, error_msgs)
        for key, value in state_dict.items():
            if not key.startswith(prefix) or "." in key[len(prefix):]:
                continue
            leaf = key[len(prefix):]
            if leaf in ("weight", "bias"):
                setattr(self, leaf, torch.nn.Parameter(value, requires_grad=False))
            else:
                unexpected_keys.append(key)
        if getattr(self, "weight", None) is None:
            missing_keys.append(prefix + "weight")

    def dequantized_weight_bias(self, input):
        dtype, device = input.dtype, input.device
        weight = dequantize(self.weight.to(device), dtype)
        bias = dequantize(self.bias.to(device), dtype) if self.bias is not None else None
        return weight, bias

    def forward_comfy_cast_weights(self, input, *args, **kwargs):
        if self.is_quantized():
            out = self.forward_dequantized(input, *args, **kwargs)
        else:
            out = super().forward_comfy_cast_weights(input, *args, **kwargs)
        return _plain(out)

    def forward_dequantized(self, input, *args, **kwargs):
        raise NotImplementedError


def replica_ops():
    """The ``custom_operations`` class (built lazily: ``comfy.ops`` exists only inside the engine)."""
    import comfy.ops

    base = comfy.ops.manual_cast

    class ReplicaGGMLOps(base):
        class Linear(ReplicaGGMLLayer, base.Linear):
            def __init__(self, in_features, out_features, bias=True, device=None, dtype=None):
                torch.nn.Module.__init__(self)  # no empty weights: loading assigns them
                self.in_features, self.out_features = in_features, out_features
                self.weight = None
                self.bias = None

            def forward_dequantized(self, input):
                weight, bias = self.dequantized_weight_bias(input)
                return torch.nn.functional.linear(input, weight, bias)

        class Conv2d(ReplicaGGMLLayer, base.Conv2d):
            def forward_dequantized(self, input):
                weight, bias = self.dequantized_weight_bias(input)
                return self._conv_forward(input, weight, bias)

        class GroupNorm(ReplicaGGMLLayer, base.GroupNorm):
            def forward_dequantized(self, input):
                weight, bias = self.dequantized_weight_bias(input)
                return torch.nn.functional.group_norm(input, self.num_groups, weight, bias, self.eps)

        class LayerNorm(ReplicaGGMLLayer, base.LayerNorm):
            def forward_dequantized(self, input):
                weight, bias = self.dequantized_weight_bias(input)
                return torch.nn.functional.layer_norm(input, self.normalized_shape, weight, bias, self.eps)

    return ReplicaGGMLOps


def _unet_folder() -> str:
    import folder_paths

    return "diffusion_models" if "diffusion_models" in folder_paths.folder_names_and_paths else "unet"


def _gguf_files() -> list[str]:
    import folder_paths

    out = []
    for base in folder_paths.get_folder_paths(_unet_folder()):
        if os.path.isdir(base):
            for root, _, files in os.walk(base):
                out += [os.path.relpath(os.path.join(root, f), base) for f in files if f.endswith(".gguf")]
    return sorted(out)


def read_gguf_state_dict(path: str) -> dict:
    """The file's tensors as replica tensors keyed by the diffusion model's own names."""
    import gguf

    Q = gguf.GGMLQuantizationType
    reader = gguf.GGUFReader(path)
    arch = reader.get_field("general.architecture")
    if arch is None:
        raise ValueError(f"{path}: no general.architecture")
    shapes = {}
    for key, field in reader.fields.items():
        if key.startswith(ORIG_SHAPE_PREFIX):
            shapes[key[len(ORIG_SHAPE_PREFIX):]] = torch.Size(int(field.parts[i][0]) for i in field.data)
    prefix = "model.diffusion_model."
    sd = {}
    for t in reader.tensors:
        name = t.name[len(prefix):] if t.name.startswith(prefix) else t.name
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            data = torch.from_numpy(t.data)
        shape = shapes.get(t.name, torch.Size(int(v) for v in reversed(t.shape.tolist())))
        if t.tensor_type in (Q.F32, Q.F16):
            data = data.view(*shape)
        sd[name] = ReplicaGGMLTensor(data, tensor_type=t.tensor_type, tensor_shape=shape)
    return sd


class ReNOTestUnetLoaderGGUFReplica:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"unet_name": (_gguf_files(),)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "load_unet"
    CATEGORY = "ReNO/testing"
    DESCRIPTION = ("TEST-ONLY replica of ComfyUI-GGUF's Unet Loader (GGUF): quantized weights as a tensor "
                   "subclass, dequantized by custom comfy.ops layers.")

    def load_unet(self, unet_name):
        import comfy.sd
        import folder_paths

        if not hasattr(comfy.sd, "load_diffusion_model_state_dict"):
            raise RuntimeError("this ComfyUI has no comfy.sd.load_diffusion_model_state_dict(model_options=...)")
        path = folder_paths.get_full_path(_unet_folder(), unet_name)
        if path is None:
            raise FileNotFoundError(unet_name)
        model = comfy.sd.load_diffusion_model_state_dict(read_gguf_state_dict(path),
                                                         model_options={"custom_operations": replica_ops()})
        if model is None:
            raise RuntimeError(f"ComfyUI could not detect the model type of {path}")
        return (model,)


NODE_CLASS_MAPPINGS = {"ReNOTestUnetLoaderGGUFReplica": ReNOTestUnetLoaderGGUFReplica}
NODE_DISPLAY_NAME_MAPPINGS = {"ReNOTestUnetLoaderGGUFReplica": "ReNO Test Unet Loader GGUF REPLICA (testing)"}
