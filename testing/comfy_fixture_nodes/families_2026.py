"""Tiny random models of three ComfyUI 0.33 families (their classes do not exist on 0.3.75), built from the engine's
own classes: Lens, Mage-Flow and ERNIE-Image. ``families.py`` lists them in ``FAMILIES`` and hands them here
(``unet_config``, ``conditioning``; the VAEs: ``families._flux2_vae`` for Lens and ERNIE-Image, ``mage_vae`` here).

| family | ComfyUI class | what the templates load | tiny here |
|---|---|---|---|
| ``lens`` | ``supported_models.Lens`` (dual-stream MMDiT of ``comfy/ldm/lens``, ``ModelType.FLUX``, Flux2 latent) | GPT-OSS-20B, 4 layers (5, 11, 17, 23) of 2880 side by side + mask; ``flux2-vae`` | 2 heads of 64, one block, the real text width (4 x 2880) |
| ``mage_flow`` | ``supported_models.MageFlow`` (Qwen-Image blocks, patch 1 over 128 channels, shift 6) | Qwen3-VL-4B's last hidden state (2560), mask dropped when all ones; the Mage VAE | 2 heads of 128, one block, text 2560 (detection needs it) |
| ``ernie_image`` | ``supported_models.ErnieImage`` (shared-adaLN single-stream DiT, multiplier 1000, shift 3) | Ministral-3-3B hidden states (3072, layer -2) + mask; ``flux2-vae`` | 2 heads of 128, one layer, text 3072 |

ComfyUI's detection (``model_detection.detect_unet_config``) reads the tiny weights as each family: Lens's detected
config carries every field set here; Mage-Flow's detection reads image_model, in_channels and num_layers (the rest
are ``MageFlowTransformer2DModel``'s defaults: 24 heads), ERNIE-Image's only image_model (all sizes are defaults), so
the widths here are the tiny model's own, as the Qwen-Image fixture's heads are.

The Mage VAE (``mage_flow_vae_bf16.safetensors``) is the engine's ``MageVAE`` (a one-step diffusion codec:
``DConvEncoder``; ``DConvDenoiser`` with its CoD decoder), which ``comfy.sd.VAE`` detects from
``student.dconv_encoder.proj_out.weight`` and builds at its one fixed size; here built the same way from a tiny
state dict in the file's layout (``student.dconv_encoder.*``, ``pipeline.*``) with the two parts at width 64 (the
real one: 384, 21 and 24 blocks), one block each.
"""

from __future__ import annotations

import torch

from . import _init_module_weights, text_to_context

#: the families this module builds (families.FAMILIES holds their classes and latent channels)
NAMES = ("lens", "mage_flow", "ernie_image")
#: Lens's text features: 4 GPT-OSS-20B layers (LENS_SELECTED_LAYERS) of 2880 side by side (LensGptOssClipModel)
LENS_TXT_LAYERS, GPT_OSS_20B_DIM = 4, 2880
#: Mage-Flow's text features: Qwen3-VL-4B's last hidden state (model_detection requires txt_norm of 2560)
QWEN3VL_4B_DIM = 2560
#: ERNIE-Image's text features: Ministral-3-3B's hidden states (ErnieImageModel text_in_dim)
MINISTRAL3_3B_DIM = 3072
#: the tiny Mage VAE's width (GroupNorm's 32 groups divide it)
MAGE_VAE_WIDTH = 64


def unet_config(family: str, depth: int) -> dict:
    depth = max(1, int(depth))
    if family == "lens":
        # model_detection's Lens config (in 128 = Flux2's 128 channels, out 32 x patch 2x2, heads = img_in rows // 64,
        # the text width from txt_norm.0, one text layer index per txt_norm) at 2 heads of 64 (the real: 24), one block
        return {"image_model": "lens", "in_channels": 128, "out_channels": 32, "num_layers": depth,
                "num_attention_heads": 2, "enc_hidden_dim": GPT_OSS_20B_DIM, "multi_layer_encoder_feature": True,
                "selected_layer_index": tuple(range(LENS_TXT_LAYERS))}
    if family == "mage_flow":
        # detected: in_channels 128 (patch 1), num_layers; here 2 heads of 128 (the real: 24), one block
        return {"image_model": "mage_flow", "in_channels": 128, "num_layers": depth, "num_attention_heads": 2}
    if family == "ernie_image":
        # ErnieImageModel at hidden 256: 2 heads of 128 (RoPE axes 32 + 48 + 48), ffn 3x as the real 4096 -> 12288
        return {"image_model": "ernie", "hidden_size": 256, "num_attention_heads": 2, "num_layers": depth,
                "ffn_hidden_size": 768, "text_in_dim": MINISTRAL3_3B_DIM}
    raise ValueError(f"unknown family {family!r}")


def conditioning(family: str, text: str):
    """``[[context, {extra keys}]]`` as the family's text encoder and CLIP Text Encode make it."""
    if family == "lens":
        width = LENS_TXT_LAYERS * GPT_OSS_20B_DIM
        if not str(text).strip():  # Lens's tokenizer gives no tokens for an empty prompt: zero-length features
            return [[torch.zeros(1, 0, width), {"attention_mask": torch.zeros(1, 0, dtype=torch.long),
                                                 "num_layers_stacked": LENS_TXT_LAYERS, "pooled_output": None}]]
        ctx = text_to_context(text, width)
        return [[ctx, {"attention_mask": torch.ones(ctx.shape[:2], dtype=torch.long),
                       "num_layers_stacked": LENS_TXT_LAYERS, "pooled_output": None}]]
    if family == "mage_flow":  # the all-ones mask is dropped by MageFlowTEModel
        return [[text_to_context(text, QWEN3VL_4B_DIM), {"pooled_output": None}]]
    if family == "ernie_image":
        ctx = text_to_context(text, MINISTRAL3_3B_DIM)
        return [[ctx, {"attention_mask": torch.ones(ctx.shape[:2], dtype=torch.long), "pooled_output": None}]]
    raise ValueError(f"unknown family {family!r}")


def _tiny_mage_vae(cls):
    """A ``MageVAE`` (``cls``, the class itself) with its two parts at ``MAGE_VAE_WIDTH``, one block each: what
    ``comfy.sd.VAE`` builds when the fixture's state dict is loaded (``MageVAE()`` has no size arguments)."""
    from comfy.ldm.mage_flow import vae as mage

    width = MAGE_VAE_WIDTH
    model = cls.__new__(cls)
    torch.nn.Module.__init__(model)
    model.dconv_encoder = mage.DConvEncoder(z_ch=128, hidden_size=width, num_blocks=1, patch_size=16,
                                            head_size=width, num_head_blocks=1)
    model.decoder_model = mage.DConvDenoiser(patch_size=16, hidden_size=width, hidden_size_x=8, num_blocks=2,
                                             num_cond_blocks=1, bottleneck_dim=128)
    return model


def mage_vae(seed: int):
    """The Mage VAE as ``comfy.sd.VAE`` detects and loads ``mage_flow_vae_bf16.safetensors``, tiny."""
    from unittest import mock

    import comfy.sd
    from comfy.ldm.mage_flow import vae as mage

    proto = _tiny_mage_vae(mage.MageVAE)
    # std 1/sqrt(fan_in) (0.04 everywhere, as the SD-style VAEs get, leaves this deep one-step decoder's image flat
    # at 0.5); the last layer at a third of that, which keeps (x + 1) / 2 mostly inside (0, 1)
    stds = {n: 1.0 / p[0].numel() ** 0.5 for n, p in proto.named_parameters() if p.ndim > 1}
    stds["decoder_model.final_layer.linear.weight"] /= 3
    _init_module_weights(proto, seed + 1_000_003, 0.04, stds)
    sd = {}
    for k, v in proto.state_dict().items():  # the file's layout (sd.py maps it back)
        k = "student." + k if k.startswith("dconv_encoder.") else k.replace("decoder_model.", "pipeline.", 1)
        sd[k] = v.detach().clone()
    with mock.patch.object(mage, "MageVAE", lambda cls=mage.MageVAE: _tiny_mage_vae(cls)):
        return comfy.sd.VAE(sd=sd, dtype=torch.float32)
