"""Write a diffusion-model state dict as a ``.gguf`` file in the layout ComfyUI-GGUF's UNet loader reads.

Test-only (needs the PyPI package ``gguf``, llama.cpp's reader/writer). The layout, as the real
quantized UNet files on the hubs have it (and as city96/ComfyUI-GGUF's loader expects):

* ``general.architecture`` names the model family (``sd1``, ``sdxl``, ``flux``, ...), plus
  ``general.quantization_version`` and ``general.file_type``;
* tensor names are the diffusion model's own state-dict keys, without ``model.diffusion_model.``;
* 1-D tensors and tensors of at most 1024 elements stay F32; every other tensor is quantized to ``qtype``
  (F16 where its rows do not split into whole quantization blocks);
* UNet families (``sd1``/``sdxl``) store a tensor of >= 512 elements whose element count divides by 256 but
  whose last dimension does not as ``(n // 256, 256)`` rows, with its real shape in the INT32 array
  ``comfy.gguf.orig_shape.<name>`` (convolution kernels would otherwise not quantize at all).

``read_tensor_types(path)`` gives back ``{name: (GGMLQuantizationType, torch shape)}`` for checks.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch

SMALL_TENSOR = 1024  # at most this many elements: kept F32
REFLOW_MIN = 512  # UNet tensors from this size are stored as 256-wide rows where needed
REFLOW_ROW = 256
RESHAPED_ARCHES = {"sd1", "sdxl"}


def _file_type(gguf, qtype):
    name = f"MOSTLY_{qtype.name}"
    return getattr(gguf.LlamaFileType, name, None)


def write_unet_gguf(path: str | os.PathLike, state_dict: Mapping[str, torch.Tensor], *, arch: str = "sd1",
                    qtype=None) -> dict:
    """Write ``state_dict`` (float tensors) to ``path``; returns ``{name: tensor type name}`` as written.

    ``qtype``: a ``gguf.GGMLQuantizationType`` (default Q8_0) for the large tensors."""
    import gguf

    Q = gguf.GGMLQuantizationType
    qtype = Q.Q8_0 if qtype is None else qtype
    writer = gguf.GGUFWriter(path=None, arch=arch)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    ftype = _file_type(gguf, qtype)
    if ftype is not None:
        writer.add_file_type(ftype)
    written: dict[str, str] = {}
    for name, tensor in state_dict.items():
        data = tensor.detach().to("cpu", torch.float32).contiguous().numpy()
        n = int(data.size)
        if data.ndim <= 1 or n <= SMALL_TENSOR:
            kind = Q.F32
        else:
            kind = qtype
            if (arch in RESHAPED_ARCHES and n >= REFLOW_MIN and n % REFLOW_ROW == 0
                    and data.shape[-1] % REFLOW_ROW != 0):
                writer.add_array(f"comfy.gguf.orig_shape.{name}", [int(d) for d in data.shape])
                data = data.reshape(n // REFLOW_ROW, REFLOW_ROW)
        try:
            raw = gguf.quants.quantize(data, kind)
        except (gguf.QuantError, AttributeError, ValueError):
            kind = Q.F16  # rows that are not whole blocks
            raw = gguf.quants.quantize(data, kind)
        writer.add_tensor(name, raw, raw_dtype=kind)
        written[name] = kind.name
    writer.write_header_to_file(path=str(path))
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return written


def read_tensor_types(path: str | os.PathLike) -> dict:
    """``{name: (GGMLQuantizationType, torch.Size)}`` of a ``.gguf`` file (the stored, possibly reflowed,
    shape in torch order)."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    return {t.name: (t.tensor_type, torch.Size(int(v) for v in reversed(t.shape.tolist()))) for t in reader.tensors}


def orig_shapes(path: str | os.PathLike) -> dict:
    """``{name: torch.Size}`` from the ``comfy.gguf.orig_shape.*`` fields."""
    import gguf

    reader = gguf.GGUFReader(str(path))
    prefix = "comfy.gguf.orig_shape."
    out = {}
    for key, field in reader.fields.items():
        if key.startswith(prefix):
            out[key[len(prefix):]] = torch.Size(int(field.parts[i][0]) for i in field.data)
    return out


__all__ = ["write_unet_gguf", "read_tensor_types", "orig_shapes"]
