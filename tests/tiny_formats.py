"""Tiny model files in the formats ComfyUI's core loaders read (random weights, SD1.5-family).

Only usable inside a booted ComfyUI engine (imports ``comfy`` lazily). Used by
``tests/engine/test_model_formats.py``:

* ``write_diffusion_model``: the tiny UNet as a diffusion-model safetensors file (bare ``input_blocks...``
  keys, as in ``models/diffusion_models``), for core ``UNETLoader``;
* ``write_kohya_lora``: a kohya-style LoRA (``lora_unet_<diffusers name>.lora_down.weight`` /
  ``.lora_up.weight`` / ``.alpha``) over every attention-block layer of the tiny UNet, for ``LoraLoader``;
* ``write_controlnet``: an SD1.5-style ControlNet state dict (``input_blocks``, ``zero_convs``,
  ``input_hint_block``, ``middle_block``, ``middle_block_out``) whose encoder starts as a copy of the UNet's,
  as real ControlNets are trained, with non-zero zero-convs so that it has an effect;
* ``tiny_sd15_detection``: a ``comfy.supported_models`` entry that matches the tiny UNet's detected config
  (the real SD15 entry asks for 320 channels and a 768-wide context), so ComfyUI's model detection turns
  these files back into the same architecture as the fixture node's.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

import torch

#: what the fixture pack's ``tiny_unet_config`` fixes (testing/comfy_fixture_nodes/__init__.py)
TINY_CHANNELS = 32
TINY_HEADS = 4


def _save(sd: dict, path: Path) -> Path:
    import safetensors.torch

    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file({k: v.detach().to("cpu").contiguous().clone() for k, v in sd.items()}, str(path))
    return path


@contextlib.contextmanager
def tiny_sd15_detection(context_dim: int = 32):
    """Let ComfyUI's model detection recognise the tiny SD1.5 UNet for the duration (first in the list)."""
    import comfy.supported_models as sm

    class ReNOTestTinySD15(sm.SD15):
        unet_config = {
            "context_dim": int(context_dim),
            "model_channels": TINY_CHANNELS,
            "use_linear_in_transformer": False,
            "adm_in_channels": None,
            "use_temporal_attention": False,
        }
        unet_extra_config = {"num_heads": TINY_HEADS, "num_head_channels": -1}

    sm.models.insert(0, ReNOTestTinySD15)
    try:
        yield ReNOTestTinySD15
    finally:
        sm.models.remove(ReNOTestTinySD15)


def write_diffusion_model(model_patcher, path: Path) -> Path:
    """The UNet of a MODEL as a bare diffusion-model file (keys as in the model: ``input_blocks.0.0.weight``...)."""
    return _save(model_patcher.model.diffusion_model.state_dict(), path)


def kohya_lora_state_dict(model_patcher, rank: int = 4, scale: float = 0.5, seed: int = 0) -> dict:
    """A kohya LoRA for every Linear / 1x1 conv inside the UNet's attention blocks.

    Keys use the diffusers module names, as kohya's sd-scripts write them for SD1.5
    (``lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn1_to_q``); ComfyUI maps them with
    ``comfy.utils.unet_to_diffusers``. ``scale`` sets the size of the update relative to the weights."""
    import comfy.utils

    unet = model_patcher.model.diffusion_model
    weights = dict(unet.state_dict())
    gen = torch.Generator().manual_seed(seed)
    out = {}
    mapping = comfy.utils.unet_to_diffusers(model_patcher.model.model_config.unet_config)
    for diffusers_key, comfy_key in sorted(mapping.items()):  # sorted: the map's order varies between processes
        if not diffusers_key.endswith(".weight") or "attentions" not in diffusers_key or comfy_key not in weights:
            continue
        w = weights[comfy_key]
        if w.dim() == 4 and w.shape[-2:] != (1, 1) or w.dim() not in (2, 4):
            continue
        out_f, in_f = w.shape[0], w.shape[1]
        r = min(rank, out_f, in_f)
        down = torch.randn((r, in_f), generator=gen)
        # alpha = rank: the update is up @ down, its entries' std about `scale` times the weight's
        up = torch.randn((out_f, r), generator=gen) * (scale * float(w.float().std()) / r ** 0.5)
        if w.dim() == 4:
            down, up = down[:, :, None, None], up[:, :, None, None]
        name = "lora_unet_" + diffusers_key[: -len(".weight")].replace(".", "_")
        out[f"{name}.lora_down.weight"] = down
        out[f"{name}.lora_up.weight"] = up
        out[f"{name}.alpha"] = torch.tensor(float(r))
    return out


def write_kohya_lora(model_patcher, path: Path, **kwargs) -> tuple[Path, dict]:
    sd = kohya_lora_state_dict(model_patcher, **kwargs)
    return _save(sd, path), sd


def controlnet_state_dict(model_patcher, seed: int = 0, zero_conv_std: float = 0.05) -> dict:
    """An SD1.5-layout ControlNet for the tiny UNet: encoder copied from the UNet, hint block and zero convs
    drawn from ``seed`` (non-zero, so that the control changes the output)."""
    import comfy.cldm.cldm
    import comfy.ops

    unet_config = dict(model_patcher.model.model_config.unet_config)
    for k in ("out_channels", "transformer_depth_output"):
        unet_config.pop(k, None)
    unet_config.update(hint_channels=3, dtype=torch.float32, device="cpu", operations=comfy.ops.disable_weight_init)
    control = comfy.cldm.cldm.ControlNet(**unet_config)
    gen = torch.Generator().manual_seed(seed)
    unet_sd = model_patcher.model.diffusion_model.state_dict()
    sd = {}
    for k, v in control.state_dict().items():
        if k in unet_sd and unet_sd[k].shape == v.shape:
            sd[k] = unet_sd[k].detach().float().clone()
        elif k.endswith(".bias") or v.dim() == 1:
            sd[k] = torch.zeros(v.shape) if k.endswith(".bias") else torch.ones(v.shape)
        else:
            fan_in = v[0].numel()
            std = zero_conv_std if k.startswith(("zero_convs", "middle_block_out")) else fan_in ** -0.5
            sd[k] = torch.randn(v.shape, generator=gen) * std
    return sd


def write_controlnet(model_patcher, path: Path, **kwargs) -> tuple[Path, dict]:
    sd = controlnet_state_dict(model_patcher, **kwargs)
    return _save(sd, path), sd
