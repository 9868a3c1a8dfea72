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
| ``qwen_image`` | ``supported_models.QwenImage`` (MMDiT of ``comfy/ldm/qwen_image``) | flow | Wan21, 16 ch, 5-D (one frame) | cross-attn of Qwen2.5-VL-7B's width (3584), ``attention_mask`` |
| ``flux2`` | ``supported_models.Flux2`` (FLUX.2 Klein's detected config, no guidance embed) | flow | Flux2, 128 ch (16x) | cross-attn of Klein 4B's Qwen3-4B three-layer tap (7680) |
| ``krea2`` | ``supported_models.Krea2`` (single-stream DiT of ``comfy/ldm/krea2``, shift 1.15; ComfyUI 0.33+) | flow | Wan21, 16 ch, 5-D (one frame) | cross-attn: a 12-layer tap side by side (12 x 256 here; Qwen3-VL-4B's is 12 x 2560) |
| ``chroma`` | ``supported_models.Chroma`` (FLUX-schnell-derived, distilled guidance approximator, no vector input) | flow | Flux, 16 ch | cross-attn of T5-XXL's width (4096), ``pooled_output`` None |
| ``lumina2`` | ``supported_models.Lumina2`` (NextDiT as Lumina-Image 2.0, shift 6) | flow | Flux, 16 ch | cross-attn of Gemma-2-2B's width (2304), ``attention_mask`` |
| ``lens`` | ``supported_models.Lens`` (dual-stream MMDiT of ``comfy/ldm/lens``; ComfyUI 0.33+; ``families_2026``) | flow | Flux2, 128 ch (16x) | cross-attn: 4 GPT-OSS-20B layers side by side (4 x 2880), ``attention_mask``; zero-length for an empty prompt |
| ``mage_flow`` | ``supported_models.MageFlow`` (Qwen-Image blocks, patch 1, shift 6; ComfyUI 0.33+; ``families_2026``) | flow | Flux2, 128 ch (16x) | cross-attn of Qwen3-VL-4B's width (2560) |
| ``ernie_image`` | ``supported_models.ErnieImage`` (shared-adaLN DiT, multiplier 1000, shift 3; ComfyUI 0.33+; ``families_2026``) | flow | Flux2, 128 ch (16x) | cross-attn of Ministral-3-3B's width (3072), ``attention_mask`` |
| ``hidream`` | ``supported_models.HiDream`` (HiDream-I1: MoE double/single blocks, a Llama layer per block; ``families_hidream_hunyuan``) | flow | Flux, 16 ch | cross-attn of T5-XXL (4096), ``pooled_output`` (CLIP-L + CLIP-G, 2048), ``conditioning_llama3`` (32 Llama-3.1-8B layers of 4096) |
| ``hunyuan_image21`` | ``supported_models.HunyuanImage21`` (HunyuanVideo DiT, 2-D 1x1 patches, ByT5 mapper, shift 5; ``families_hidream_hunyuan``) | flow | HunyuanImage21, 64 ch (32x) | cross-attn of Qwen2.5-VL-7B's width (3584), ``attention_mask`` |

The VAE is a tiny SD-style ``AutoencoderKL`` (8x) with the family's latent channels, inside
``comfy.sd.VAE``; for ``z_image``, ``chroma``, ``lumina2`` and ``hidream`` it is FLUX's ``ae`` as ``comfy.sd.VAE`` builds it (an ``AutoencodingEngine``
with the SD ``Encoder``/``Decoder``, no quant convs), tiny; for ``qwen_image`` and ``krea2`` the Qwen-Image VAE (Wan 2.1's causal 3-D
``WanVAE``, detected by ``comfy.sd.VAE`` from its state dict, ``dim`` read from the weights), tiny; for ``flux2`` the
FLUX.2 VAE (``AutoencoderKL`` with quant convs and ``batch_norm_latent``: 2x2 patching of 32 channels to 128,
normalized by the BatchNorm's running statistics), tiny (for ``lens`` and ``ernie_image`` too; for ``mage_flow``
the Mage VAE: ``families_2026.mage_vae``); for ``hunyuan_image21`` the HunyuanImage 2.1 VAE (32x, 64 channels,
detected by ``comfy.sd.VAE`` from its weights), tiny. ``write_qwen_lightning_lora`` writes a tiny LoRA in the
layout of the Qwen-Image Lightning LoRAs (bare ``transformer_blocks.*`` module names, ``lora_down``/``lora_up``/``alpha``)
for core ``LoraLoaderModelOnly``. Everything is float32 on the CPU, initialised deterministically from ``seed``.
``family_unavailable(family)`` says why the running engine cannot build a family (None when it can).
"""

from __future__ import annotations

import torch

from . import _init_module_weights, build_tiny_model, text_to_context, tiny_unet_config
from . import families_2026 as _f26
from . import families_hidream_hunyuan as _hh

CONTEXT_DIM = 32
#: Z-Image's caption features: Qwen3-4B's hidden width (comfy/text_encoders/z_image.py, embedding_size=2560)
QWEN3_4B_DIM = 2560
#: Qwen-Image's text features: Qwen2.5-VL-7B's hidden width (QwenImageTransformer2DModel joint_attention_dim)
QWEN25_VL_7B_DIM = 3584
#: FLUX.2 Klein 4B's text features: Qwen3-4B's hidden states of 3 layers side by side (comfy Flux2TEModel), 3 x 2560
KLEIN_4B_CONTEXT_DIM = 3 * QWEN3_4B_DIM
#: Krea 2's text features: hidden states of 12 Qwen3-VL-4B layers side by side (comfy/text_encoders/krea2.py), each
#: 2560 wide in the real model; the tiny model's text-fusion adapter reads them at 256 (its width is read from the weights)
KREA2_TXT_LAYERS, KREA2_TINY_TXT_DIM = 12, 256
#: Chroma's text features: T5-XXL's width
T5_XXL_DIM = 4096
#: Lumina-Image 2.0's caption features: Gemma-2-2B's hidden width
GEMMA2_2B_DIM = 2304
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
    "qwen_image": ("QwenImage", 16),
    "flux2": ("Flux2", 128),
    "krea2": ("Krea2", 16),
    "chroma": ("Chroma", 16),
    "lumina2": ("Lumina2", 16),
    "lens": ("Lens", 128),
    "mage_flow": ("MageFlow", 128),
    "ernie_image": ("ErnieImage", 128),
    "hidream": ("HiDream", 16),
    "hunyuan_image21": ("HunyuanImage21", 64),
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
    if family == "qwen_image":
        # model_detection reads image_model, in_channels (16 latent channels x 2x2 patch) and num_layers; the rest are
        # QwenImageTransformer2DModel's defaults (24 heads of 128, RoPE axes (16, 56, 56), text width 3584): here 2 heads
        # of 128 (the same RoPE), one block
        return {"image_model": "qwen_image", "in_channels": 64, "num_layers": max(1, int(depth)),
                "num_attention_heads": 2}
    if family == "flux2":
        # model_detection's FLUX.2 config (axes [32]*4, theta 2000, mlp 3, global modulation, SiLU MLP, no biases,
        # patch 1 over 128 channels, no vector input), Klein 4B's text width (7680) and no guidance embed (the distilled
        # Klein), at hidden 256: 2 heads of 128 (0.33 detects heads = hidden // sum(axes)), one double and one single block
        config = {"image_model": "flux2", "in_channels": 128, "out_channels": 128, "patch_size": 1, "vec_in_dim": None,
                  "context_in_dim": KLEIN_4B_CONTEXT_DIM, "hidden_size": 256, "mlp_ratio": 3.0, "num_heads": 2,
                  "depth": max(1, int(depth)), "depth_single_blocks": 1, "axes_dim": [32, 32, 32, 32], "theta": 2000,
                  "qkv_bias": False, "guidance_embed": False, "global_modulation": True, "mlp_silu_act": True,
                  "ops_bias": False, "default_ref_method": "index", "ref_index_scale": 10.0}
        if _flux_param("txt_ids_dims"):  # 0.33 detects FLUX.2 with txt_ids_dims [3]
            config["txt_ids_dims"] = [3]
        return config
    if family == "krea2":
        # model_detection's Krea 2 config (head width 128: heads = wq rows // 128; patch 2; 16 channels; txtlayers from
        # the projector, txtdim from the adapter's norm) at features 256: 2 heads of 128 sharing 1 key/value head (the
        # real model: 48 and 12), one block; the text-fusion adapter at 256 wide (2 heads of 128), 12 layers tapped
        return {"image_model": "krea2", "features": 256, "channels": 16, "patch": 2, "layers": max(1, int(depth)),
                "heads": 2, "kvheads": 1, "txtlayers": KREA2_TXT_LAYERS, "txtdim": KREA2_TINY_TXT_DIM, "txtheads": 2,
                "txtkvheads": 2}
    if family == "chroma":
        # model_detection's Chroma config (FLUX's: axes [16, 56, 56] -> heads of 128, theta 10000, mlp 4, qkv bias,
        # patch 2 over 16 channels = 64 in/out, T5-XXL text; the approximator: in 64, 5 layers of 5120 out to the
        # hidden size) at hidden 256: 2 heads, one double and one single block, the approximator 1 layer of 64 wide
        config = {"image_model": "chroma", "in_channels": 64, "out_channels": 64, "patch_size": 2,
                  "context_in_dim": T5_XXL_DIM, "hidden_size": 256, "mlp_ratio": 4.0, "num_heads": 2,
                  "depth": max(1, int(depth)), "depth_single_blocks": 1, "axes_dim": [16, 56, 56], "theta": 10000,
                  "qkv_bias": True, "in_dim": 64, "out_dim": 256, "hidden_dim": 64, "n_layers": 1}
        import dataclasses

        import comfy.ldm.chroma.model

        fields = {f.name for f in dataclasses.fields(comfy.ldm.chroma.model.ChromaParams)}
        if "txt_ids_dims" in fields:  # 0.33 (FLUX's detection gives [])
            config["txt_ids_dims"] = []
        if "vec_in_dim" in fields:  # 0.33: no vector_in in Chroma's weights -> None
            config["vec_in_dim"] = None
        return config
    if family == "lumina2":
        # model_detection's "Original Lumina 2" config (dim 2304: 24 heads of 96, 8 key/value heads, axes [32, 32, 32],
        # lens [300, 512, 512], theta 10000, ffn 4, qk norm, Gemma-2-2B captions) at dim 288: 3 heads of 96 sharing one
        # key/value head, one layer and one refiner layer each
        return {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 288, "cap_feat_dim": GEMMA2_2B_DIM,
                "n_layers": max(1, int(depth)), "n_refiner_layers": 1, "n_heads": 3, "n_kv_heads": 1, "qk_norm": True,
                "axes_dims": [32, 32, 32], "axes_lens": [300, 512, 512], "rope_theta": 10000.0,
                "ffn_dim_multiplier": 4.0}
    if family in _f26.NAMES:  # Lens, Mage-Flow, ERNIE-Image
        return _f26.unet_config(family, depth)
    if family in ("hidream", "hunyuan_image21"):
        return getattr(_hh, f"{family}_unet_config")(depth)
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
    if family in ("qwen_image", "flux2"):
        _unit_gains(model.diffusion_model)
    if family == "krea2":
        _krea2_gains(model.diffusion_model, seed)
    gen = torch.Generator().manual_seed(seed + 99)
    with torch.no_grad():  # buffers made with torch.empty (SD3's pos_embed): real checkpoints load them
        for buf in model.diffusion_model.buffers():
            if buf.is_floating_point():
                buf.copy_(torch.randn(buf.shape, generator=gen).to(buf.dtype) * 0.04)
    model.to(torch.float32)
    model.eval()
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(), offload_device=offload)


def _unit_gains(module: torch.nn.Module) -> None:
    """Norm gains that ``_init_module_weights`` takes for weights (RMS norms' ``gamma`` of shape (C, 1, 1[, 1]), the
    Qwen-Image blocks' RMSNorm ``weight``), set to one, as trained models roughly have them."""
    with torch.no_grad():
        for name, p in module.named_parameters():
            owner = module.get_submodule(name.rsplit(".", 1)[0]) if "." in name else module
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "gamma" or (leaf == "weight" and "norm" in type(owner).__name__.lower()):
                p.fill_(1.0)


def _krea2_gains(module: torch.nn.Module, seed: int) -> None:
    """Krea 2 stores its RMSNorm gains zero-centred (weight = 1 + scale) and its per-block modulation offsets as 1-D
    parameters, which ``_init_module_weights`` fills with one: gains set to zero (unit weight), offsets small random."""
    gen = torch.Generator().manual_seed(seed + 2026)
    with torch.no_grad():
        for name, p in module.named_parameters():
            leaf = name.rsplit(".", 1)[-1]
            if leaf == "scale":
                p.zero_()
            elif leaf == "lin":
                p.copy_(torch.randn(p.shape, generator=gen) * 0.04)


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
    if family in ("z_image", "chroma", "lumina2", "hidream"):  # the FLUX ae: comfy.sd.VAE's config path builds AutoencoderKL, so it is handed the ae
        proto = _flux_ae(ddconfig)
        _init_module_weights(proto, seed + 1_000_003, 0.04, {"decoder.conv_out.weight": 0.03})
        sd = {k: v.detach().clone() for k, v in proto.state_dict().items()}
        with mock.patch.object(comfy.sd, "AutoencoderKL", _flux_ae):
            vae = comfy.sd.VAE(sd=sd, config={"params": params}, dtype=torch.float32)
        vae.latent_channels = channels
        return vae
    if family in ("qwen_image", "krea2"):
        return _wan21_vae(seed)
    if family in ("flux2", "lens", "ernie_image"):  # flux2-vae.safetensors
        return _flux2_vae(ddconfig, seed)
    if family == "mage_flow":
        return _f26.mage_vae(seed)
    if family == "hunyuan_image21":
        return _hh.hunyuan_image21_vae(seed)
    proto = AutoencoderKL(ddconfig=dict(ddconfig), embed_dim=channels)
    _init_module_weights(proto, seed + 1_000_003, 0.04, {"decoder.conv_out.weight": 0.03})
    sd = {k: v.detach().clone() for k, v in proto.state_dict().items()}
    vae = comfy.sd.VAE(sd=sd, config={"params": params}, dtype=torch.float32)
    vae.latent_channels = channels
    return vae


def _wan21_vae(seed: int):
    """The Qwen-Image VAE (Wan 2.1's) at dim 8 (the real one: 96): a tiny ``WanVAE`` state dict that ``comfy.sd.VAE``
    detects as Wan 2.1 (``decoder.middle.0.residual.0.gamma``; ``dim`` from ``decoder.head.0.gamma``)."""
    import comfy.sd
    from comfy.ldm.wan.vae import WanVAE

    proto = WanVAE(dim=8, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                   temperal_downsample=[False, True, True], dropout=0.0)
    _init_module_weights(proto, seed + 1_000_003, 0.08, {"decoder.head.2.weight": 0.03})
    _unit_gains(proto)
    sd = {k: v.detach().clone() for k, v in proto.state_dict().items()}
    return comfy.sd.VAE(sd=sd, dtype=torch.float32)


def _flux2_vae(ddconfig: dict, seed: int):
    """The FLUX.2 VAE (``flux2-vae``) as ``comfy.sd.VAE`` detects it (``bn.running_mean`` -> ``batch_norm_latent``;
    ``post_quant_conv`` -> ``AutoencoderKL``; 32 channels patched 2x2 to 128, 16x down), at ch 32 (the real one: 128,
    which detection fixes): built through the config path, with what detection sets on the VAE."""
    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = dict(ddconfig, z_channels=32, batch_norm_latent=True)
    params = {"ddconfig": ddconfig, "embed_dim": 32}
    proto = AutoencoderKL(ddconfig=dict(ddconfig), embed_dim=32)
    _init_module_weights(proto, seed + 1_000_003, 0.04, {"decoder.conv_out.weight": 0.03})
    gen = torch.Generator().manual_seed(seed + 1_000_033)
    with torch.no_grad():  # the latent statistics a trained VAE keeps in its BatchNorm
        proto.bn.running_mean.copy_(torch.randn(proto.bn.running_mean.shape, generator=gen) * 0.1)
        proto.bn.running_var.copy_(0.5 + torch.rand(proto.bn.running_var.shape, generator=gen))
    sd = {k: v.detach().clone() for k, v in proto.state_dict().items()}
    vae = comfy.sd.VAE(sd=sd, config={"params": params}, dtype=torch.float32)
    vae.latent_channels = 4 * 32
    vae.downscale_ratio = vae.upscale_ratio = 16
    return vae


def write_qwen_lightning_lora(model, path, rank: int = 4, seed: int = 0):
    """A tiny LoRA for the ``qwen_image`` fixture model in the Qwen-Image Lightning LoRAs' layout: for every Linear of
    every transformer block (attention q/k/v/out of both streams, the MLPs, the modulations) the bare module name
    (``transformer_blocks.0.attn.to_q``) with ``.lora_down.weight``, ``.lora_up.weight`` and ``.alpha``, which
    ComfyUI's QwenImage key map reads directly. Returns (path, state dict)."""
    from pathlib import Path

    import safetensors.torch

    gen = torch.Generator().manual_seed(seed + 4242)
    sd = {}
    dm = model.model.diffusion_model
    for name, mod in dm.named_modules():
        if not name.startswith("transformer_blocks.") or not isinstance(mod, torch.nn.Linear):
            continue
        out_f, in_f = mod.weight.shape
        sd[f"{name}.lora_down.weight"] = torch.randn(rank, in_f, generator=gen) * 0.2
        sd[f"{name}.lora_up.weight"] = torch.randn(out_f, rank, generator=gen) * 0.2
        sd[f"{name}.alpha"] = torch.tensor(float(rank))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    safetensors.torch.save_file(sd, str(path))
    return path, sd


def family_conditioning(family: str, text: str):
    """``[[context, {extra keys}]]`` as the family's text encoders would make it."""
    if family in _f26.NAMES:
        return _f26.conditioning(family, text)
    if family == "z_image":  # Qwen3-4B hidden states (layer -2) and their attention mask, no pooled output
        ctx = text_to_context(text, QWEN3_4B_DIM)
        return [[ctx, {"attention_mask": torch.ones(ctx.shape[:2], dtype=torch.long)}]]
    if family == "qwen_image":  # Qwen2.5-VL-7B's last hidden states and their attention mask
        ctx = text_to_context(text, QWEN25_VL_7B_DIM)
        return [[ctx, {"attention_mask": torch.ones(ctx.shape[:2], dtype=torch.long)}]]
    if family in ("hidream", "hunyuan_image21"):
        return getattr(_hh, f"{family}_conditioning")(text)
    if family == "krea2":  # the 12 tapped layers flattened side by side (Krea2TEModel); its all-ones mask is dropped
        return [[text_to_context(text, KREA2_TXT_LAYERS * KREA2_TINY_TXT_DIM), {}]]
    if family == "chroma":  # T5-XXL's hidden states; CLIP Text Encode sets pooled_output (None for T5)
        return [[text_to_context(text, T5_XXL_DIM), {"pooled_output": None}]]
    if family == "lumina2":  # Gemma-2-2B hidden states (layer -2) and their attention mask
        ctx = text_to_context(text, GEMMA2_2B_DIM)
        return [[ctx, {"attention_mask": torch.ones(ctx.shape[:2], dtype=torch.long)}]]
    if family == "flux2":  # Klein's three Qwen3-4B layers side by side (Flux2 pads to 512 tokens); CLIP Text Encode
        # always sets pooled_output, None for this encoder (0.3.75's Flux.encode_adm reads the key)
        return [[text_to_context(text, KLEIN_4B_CONTEXT_DIM), {"pooled_output": None}]]
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

    def tokenize(self, text: str, **kwargs):  # TextEncodeMageFlowEdit passes images=[]
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
