"""Tiny random models of every one-step model family, built from the engine's own classes.

``ReNOTestTinyFamily(family, transformer_depth, seed, text, negative_text)`` returns
``(MODEL, VAE, positive CONDITIONING, negative CONDITIONING)``:

| family | ComfyUI class | prediction | latent | conditioning keys |
|---|---|---|---|---|
| ``sd15`` | ``supported_models.SD15`` | ε | SD15, 4 ch | cross-attn |
| ``sd21v`` | ``supported_models.SD20`` (forced v-prediction, as SD2.1-768) | v | SD15, 4 ch | cross-attn |
| ``sdxl`` | ``supported_models.SDXL`` (ADM ``y`` from ``pooled_output`` + sizes) | ε | SDXL, 4 ch | cross-attn, ``pooled_output`` |
| ``pixart`` | ``supported_models.PixArtAlpha`` (micro-conditioning) | ε | SD15, 4 ch | cross-attn, ``width``/``height`` |
| ``sd3`` | ``supported_models.SD3`` (MMDiT, shift 3) | flow | SD3, 16 ch | cross-attn, ``pooled_output`` |
| ``flux`` | ``supported_models.Flux`` (guidance-distilled, like FLUX.1-dev) | flow | Flux, 16 ch | cross-attn, ``pooled_output``, ``guidance`` |
| ``flux_schnell`` | ``supported_models.FluxSchnell`` (no guidance embed) | flow | Flux, 16 ch | cross-attn, ``pooled_output`` |
| ``z_image`` | ``supported_models.ZImage`` (Lumina2 / NextDiT, Z-Image modulation, shift 3) | flow | Flux, 16 ch | cross-attn of Qwen3-4B's width (2560), ``attention_mask`` |

The VAE is a tiny SD-style ``AutoencoderKL`` (8x) with the family's latent channels, inside
``comfy.sd.VAE``; for ``z_image`` it is FLUX's ``ae`` as ``comfy.sd.VAE`` builds it (an ``AutoencodingEngine``
with the SD ``Encoder``/``Decoder``, no quant convs), tiny. Everything is float32 on the CPU, initialised deterministically from ``seed``.
``family_unavailable(family)`` says why the running engine cannot build a family (None when it can).
"""

from __future__ import annotations

import torch

from . import _init_module_weights, build_tiny_model, text_to_context, tiny_unet_config

CONTEXT_DIM = 32
#: Z-Image's caption features: Qwen3-4B's hidden width (comfy/text_encoders/z_image.py, embedding_size=2560)
QWEN3_4B_DIM = 2560
POOLED_DIM = 32
FLUX_GUIDANCE = 3.5

#: family -> (supported_models class name, latent channels)
FAMILIES = {
    "sd15": ("SD15", 4),
    "sd21v": ("SD20", 4),
    "sdxl": ("SDXL", 4),
    "pixart": ("PixArtAlpha", 4),
    "sd3": ("SD3", 16),
    "flux": ("Flux", 16),
    "flux_schnell": ("FluxSchnell", 16),
    "z_image": ("ZImage", 16),
}


def family_unavailable(family: str) -> str | None:
    """Why this engine cannot build ``family`` (its ComfyUI lacks the class), or None."""
    import comfy.supported_models

    name, _ = FAMILIES[family]
    if not hasattr(comfy.supported_models, name):
        return f"this ComfyUI has no comfy.supported_models.{name} (the {family} family is newer than the engine)"
    return None


def _unet(base: dict, depth: int, context_dim: int, **extra) -> dict:
    """The tiny SD UNet config of the fixture pack, with the family's own keys on top."""
    cfg = tiny_unet_config(depth, context_dim)
    cfg.update(base)
    cfg.update(extra)
    return cfg


def _unet_config(family: str, depth: int) -> dict:
    if family == "sd21v":
        return _unet({}, depth, CONTEXT_DIM, use_linear_in_transformer=True)
    if family == "sdxl":
        # ADM input: pooled text embedding + 6 size embeddings of 256 (model_base.SDXL.encode_adm)
        return _unet({}, depth, CONTEXT_DIM, use_linear_in_transformer=True, adm_in_channels=POOLED_DIM + 6 * 256,
                     num_classes="sequential")
    if family == "pixart":
        return {"image_model": "pixart_alpha", "input_size": 64, "patch_size": 2, "in_channels": 4,
                "hidden_size": 48, "depth": max(1, int(depth)), "num_heads": 2, "caption_channels": CONTEXT_DIM,
                "model_max_length": 8, "micro_condition": True, "pe_interpolation": 1.0}
    if family == "sd3":
        return {"in_channels": 16, "out_channels": 16, "patch_size": 2, "depth": 1, "input_size": None,
                "adm_in_channels": POOLED_DIM, "num_patches": 64, "pos_embed_max_size": 8,
                "context_embedder_config": {"target": "torch.nn.Linear",
                                            "params": {"in_features": CONTEXT_DIM, "out_features": 64}},
                "pos_embed_scaling_factor": None, "x_block_self_attn_layers": []}
    if family in ("flux", "flux_schnell"):
        config = {"image_model": "flux", "guidance_embed": family == "flux", "in_channels": 16, "out_channels": 16,
                  "patch_size": 2, "vec_in_dim": POOLED_DIM, "context_in_dim": CONTEXT_DIM, "hidden_size": 32,
                  "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1, "axes_dim": [4, 6, 6],
                  "theta": 10000, "qkv_bias": True}
        if _flux_param("txt_ids_dims"):  # required since #11030 (0.33: FLUX.1's detection gives [])
            config["txt_ids_dims"] = []
        return config
    if family == "z_image":
        # Z-Image-Turbo's detected config (model_detection: dim 3840 -> 30 heads of 128, axes [32, 48, 48], theta
        # 256, ffn 8/3, z_image_modulation, time_scale 1000, cap_pad_token -> pad to 32) at dim 256 (the adaLN
        # input is min(dim, 256), so no smaller): 2 heads of 128, one layer and one refiner layer each
        return {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 256, "cap_feat_dim": QWEN3_4B_DIM,
                "n_layers": max(1, int(depth)), "n_refiner_layers": 1, "n_heads": 2, "n_kv_heads": 2, "qk_norm": True,
                "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512], "rope_theta": 256.0,
                "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0,
                "pad_tokens_multiple": 32}
    raise ValueError(f"unknown family {family!r}")


def _flux_param(name: str) -> bool:
    """Whether the host's ``FluxParams`` has the field ``name`` (the engine's config schema, read, not guessed)."""
    import dataclasses

    from comfy.ldm.flux.model import FluxParams

    return any(f.name == name for f in dataclasses.fields(FluxParams))


def build_family_model(family: str, transformer_depth: int = 1, seed: int = 0):
    import comfy.model_base
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.supported_models

    reason = family_unavailable(family)
    if reason:
        raise RuntimeError(reason)
    if family == "sd15":
        return build_tiny_model(transformer_depth, CONTEXT_DIM, seed)
    cls = getattr(comfy.supported_models, FAMILIES[family][0])
    model_config = cls(_unet_config(family, transformer_depth))
    if "num_head_channels" in model_config.unet_config:  # UNet families: 4 heads at 32 channels
        model_config.unet_config["num_heads"] = 4
        model_config.unet_config["num_head_channels"] = -1
    if family == "sd21v":  # SD2.1-768 is v-prediction (ComfyUI detects it from the weights)
        model_config.model_type = lambda state_dict, prefix="": comfy.model_base.ModelType.V_PREDICTION
    offload = mm.unet_offload_device()
    model = model_config.get_model({}, device=offload)
    _init_module_weights(model.diffusion_model, seed + 17 * len(family), 0.04)
    gen = torch.Generator().manual_seed(seed + 99)
    with torch.no_grad():  # buffers made with torch.empty (SD3's pos_embed): real checkpoints load them
        for buf in model.diffusion_model.buffers():
            if buf.is_floating_point():
                buf.copy_(torch.randn(buf.shape, generator=gen).to(buf.dtype) * 0.04)
    model.to(torch.float32)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=offload)


def _flux_ae(ddconfig: dict, embed_dim=None):
    """FLUX's ``ae`` as ``comfy.sd.VAE`` builds it from its weights (no ``post_quant_conv``): the engine's own
    ``AutoencodingEngine`` with the SD ``Encoder``/``Decoder`` and the diagonal Gaussian regularizer."""
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    module = "comfy.ldm.modules.diffusionmodules.model"
    return AutoencodingEngine(regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
                              encoder_config={"target": f"{module}.Encoder", "params": dict(ddconfig)},
                              decoder_config={"target": f"{module}.Decoder", "params": dict(ddconfig)})


def build_family_vae(family: str, seed: int = 0):
    from unittest import mock

    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    channels = FAMILIES[family][1]
    ddconfig = {"double_z": True, "z_channels": channels, "resolution": 64, "in_channels": 3, "out_ch": 3,
                "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    params = {"ddconfig": ddconfig, "embed_dim": channels}
    if family == "z_image":  # the FLUX ae: comfy.sd.VAE's config path builds AutoencoderKL, so it is handed the ae
        proto = _flux_ae(ddconfig)
        _init_module_weights(proto, seed + 1_000_003, 0.04, {"decoder.conv_out.weight": 0.03})
        sd = {k: v.detach().clone() for k, v in proto.state_dict().items()}
        with mock.patch.object(comfy.sd, "AutoencoderKL", _flux_ae):
            vae = comfy.sd.VAE(sd=sd, config={"params": params}, dtype=torch.float32)
        vae.latent_channels = channels
        return vae
    proto = AutoencoderKL(ddconfig=dict(ddconfig), embed_dim=channels)
    _init_module_weights(proto, seed + 1_000_003, 0.04, {"decoder.conv_out.weight": 0.03})
    sd = {k: v.detach().clone() for k, v in proto.state_dict().items()}
    vae = comfy.sd.VAE(sd=sd, config={"params": params}, dtype=torch.float32)
    vae.latent_channels = channels
    return vae


def family_conditioning(family: str, text: str):
    """``[[context, {extra keys}]]`` as the family's text encoders would make it."""
    if family == "z_image":  # Qwen3-4B hidden states (layer -2) and their attention mask, no pooled output
        ctx = text_to_context(text, QWEN3_4B_DIM)
        return [[ctx, {"attention_mask": torch.ones(ctx.shape[:2], dtype=torch.long)}]]
    ctx = text_to_context(text, CONTEXT_DIM)
    pooled = text_to_context("pooled:" + str(text), POOLED_DIM, tokens=1)[:, 0]
    extra: dict = {}
    if family in ("sdxl", "sd3", "flux", "flux_schnell"):
        extra["pooled_output"] = pooled
    if family == "flux":
        extra["guidance"] = FLUX_GUIDANCE
    if family == "pixart":
        extra.update(width=64, height=64)
    return [[ctx, extra]]


class ReNOTestTinyFamily:
    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "family": (list(FAMILIES), {"default": "sd15"}),
                "transformer_depth": ("INT", {"default": 1, "min": 0, "max": 2}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFF}),
                "text": ("STRING", {"default": "a photo of a cat", "multiline": True}),
                "negative_text": ("STRING", {"default": "", "multiline": True}),
            }
        }

    RETURN_TYPES = ("MODEL", "VAE", "CONDITIONING", "CONDITIONING")
    RETURN_NAMES = ("model", "vae", "positive", "negative")
    FUNCTION = "build"
    CATEGORY = "ReNO/testing"
    DESCRIPTION = "Tiny randomly initialised MODEL, VAE and conditioning of one model family, for tests."

    def build(self, family="sd15", transformer_depth=1, seed=0, text="a photo of a cat", negative_text=""):
        return (build_family_model(family, transformer_depth, seed), build_family_vae(family, seed),
                family_conditioning(family, text), family_conditioning(family, negative_text))


class TinyTextEncoder:
    """A test stand-in for ComfyUI's CLIP object (the real one is a 123M-parameter CLIP-L at the least): the two
    methods CLIP Text Encode calls, giving the family's pseudo conditioning of ``family_conditioning``."""

    def __init__(self, family: str):
        self.family = family

    def tokenize(self, text: str):
        return {"text": str(text)}

    def encode_from_tokens_scheduled(self, tokens, unprojected=False, add_dict=None, show_pbar=True):
        return family_conditioning(self.family, tokens["text"])


class ReNOTestTinyCLIP:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"family": (list(FAMILIES), {"default": "sd15"})}}

    RETURN_TYPES = ("CLIP",)
    FUNCTION = "build"
    CATEGORY = "ReNO/testing"
    DESCRIPTION = "A tiny pseudo text encoder (CLIP Text Encode works with it) matching ReNO Test Tiny Family."

    def build(self, family="sd15"):
        return (TinyTextEncoder(family),)


NODE_CLASS_MAPPINGS = {"ReNOTestTinyFamily": ReNOTestTinyFamily, "ReNOTestTinyCLIP": ReNOTestTinyCLIP}
NODE_DISPLAY_NAME_MAPPINGS = {"ReNOTestTinyFamily": "ReNO Test Tiny Family (testing)",
                              "ReNOTestTinyCLIP": "ReNO Test Tiny CLIP (testing)"}
