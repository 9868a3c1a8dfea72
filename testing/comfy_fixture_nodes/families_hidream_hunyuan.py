"""Tiny HiDream-I1 and HunyuanImage 2.1 models for ``families.py`` (its ``hidream`` and ``hunyuan_image21``
families): their configs, their text conditioning and the HunyuanImage 2.1 VAE, built from the engine's own classes.

* ``hidream``: ``comfy.supported_models.HiDream`` (``comfy/ldm/hidream``: 16 channels, patch 2, MoE feed-forward,
  double- then single-stream blocks; each block reads one layer of Llama-3.1-8B's hidden states, the T5-XXL features
  join every block). Conditioning as ``comfy/text_encoders/hidream.py`` gives it: the context is T5-XXL's hidden
  states (4096 wide), ``pooled_output`` CLIP-L's and CLIP-G's pooled outputs side by side (768 + 1280), and
  ``conditioning_llama3`` Llama-3.1-8B's hidden states of all 32 layers, (batch, 32, tokens, 4096).
* ``hunyuan_image21``: ``comfy.supported_models.HunyuanImage21`` (``comfy/ldm/hunyuan_video`` with a 2-D patch
  embed of 1x1 over 64 channels, no vector input, the ByT5 glyph mapper). Conditioning: Qwen2.5-VL-7B's hidden states
  (3584 wide) and their attention mask (all ones, which ``model_base`` drops); ByT5 features only come for quoted
  text, so none here. Its VAE: the 32x, 64-channel HunyuanImage 2.1 VAE as ``comfy.sd.VAE`` detects it.
"""

from __future__ import annotations

import dataclasses

import torch

from . import _init_module_weights, text_to_context

#: HiDream's text features: T5-XXL and Llama-3.1-8B are both 4096 wide (model_detection's caption_channels)
HIDREAM_CAPTION_DIM = 4096
#: Llama-3.1-8B's hidden layers: the text encoder hands all 32 to the model, each block picks one (llama_layers)
HIDREAM_LLAMA_LAYERS = 32
#: CLIP-L's pooled output (768) and CLIP-G's (1280) side by side (model_detection's text_emb_dim)
HIDREAM_POOLED_DIM = 768 + 1280
#: HunyuanImage 2.1's text features: Qwen2.5-VL-7B's hidden width
QWEN25_VL_7B_DIM = 3584


def hidream_unet_config(depth: int) -> dict:
    """model_detection's HiDream config (fixed there, only ``caption_projection.0.linear.weight`` is read: heads of 128,
    RoPE axes [64, 32, 32], captions 4096 wide, pooled 2048, 4 routed experts of which 2 are active, patch 2 over 16
    channels, 16 double and 32 single blocks reading Llama layers 0..31 then 31 repeated) at 2 heads (inner dim 256),
    ``depth`` double block(s) and one single block; the blocks read the first Llama layers and the last, as the real
    list ends."""
    n_double = max(1, int(depth))
    return {"image_model": "hidream", "patch_size": 2, "in_channels": 16, "out_channels": 16,
            "num_layers": n_double, "num_single_layers": 1, "attention_head_dim": 128, "num_attention_heads": 2,
            "caption_channels": [HIDREAM_CAPTION_DIM, HIDREAM_CAPTION_DIM], "text_emb_dim": HIDREAM_POOLED_DIM,
            "num_routed_experts": 4, "num_activated_experts": 2, "axes_dims_rope": [64, 32, 32],
            "max_resolution": [128, 128], "llama_layers": list(range(n_double)) + [HIDREAM_LLAMA_LAYERS - 1]}


def hunyuan_image21_unet_config(depth: int) -> dict:
    """model_detection's HunyuanImage 2.1 config (``hunyuan_video``: in/out channels and the 2-D patch [1, 1] from
    ``img_in``, heads = hidden // 128, axes [64, 64], theta 256, mlp 4, qkv bias, text width from ``txt_in``, ByT5
    mapper, no vector input, no guidance embed (the base model; the distilled one has one), no meanflow) at hidden 256:
    2 heads of 128, one double and one single block."""
    config = {"image_model": "hunyuan_video", "in_channels": 64, "out_channels": 64, "patch_size": [1, 1],
              "vec_in_dim": None, "axes_dim": [64, 64], "meanflow": False, "context_in_dim": QWEN25_VL_7B_DIM,
              "hidden_size": 256, "mlp_ratio": 4.0, "num_heads": 2, "depth": max(1, int(depth)),
              "depth_single_blocks": 1, "theta": 256, "qkv_bias": True, "byt5": True, "guidance_embed": False,
              "use_cond_type_embedding": False, "vision_in_dim": None}
    import comfy.ldm.hunyuan_video.model

    fields = {f.name for f in dataclasses.fields(comfy.ldm.hunyuan_video.model.HunyuanVideoParams)}
    if "meanflow_sum" in fields:  # 0.33 (HunyuanVideo 1.5); detection gives False without vision_in
        config["meanflow_sum"] = False
    return config


def hidream_conditioning(text: str):
    """``[[T5-XXL hidden states, {pooled_output, conditioning_llama3}]]`` as HiDream's text encoders give them."""
    t5 = text_to_context("t5:" + str(text), HIDREAM_CAPTION_DIM)
    pooled = text_to_context("pooled:" + str(text), HIDREAM_POOLED_DIM, tokens=1)[:, 0]
    llama = torch.stack([text_to_context(f"llama{k}:{text}", HIDREAM_CAPTION_DIM)
                         for k in range(HIDREAM_LLAMA_LAYERS)], dim=1)
    return [[t5, {"pooled_output": pooled, "conditioning_llama3": llama}]]


def hunyuan_image21_conditioning(text: str):
    """Qwen2.5-VL-7B's hidden states and their attention mask; CLIP Text Encode sets pooled_output (None here)."""
    ctx = text_to_context(text, QWEN25_VL_7B_DIM)
    return [[ctx, {"pooled_output": None, "attention_mask": torch.ones(ctx.shape[:2], dtype=torch.long)}]]


#: the tiny VAE's widths (the real one: [128, 256, 512, 512, 1024, 1024], two res blocks per stage): 32 is the
#: GroupNorm's group count; the encoder's last width a multiple of 2 x 64 (its skip averages groups of channels down to
#: the 128 moments), the decoder's first a multiple of 64 (its skip repeats the latent's channels)
HUNYUAN_VAE_WIDTHS = [32, 32, 32, 64, 128, 128]


def hunyuan_image21_vae(seed: int):
    """The HunyuanImage 2.1 VAE (``hunyuan_image_2.1_vae``) as ``comfy.sd.VAE`` detects it from its weights
    (``decoder.conv_in.weight`` with 64 input channels -> ComfyUI's ``AutoencodingEngine`` with
    ``comfy.ldm.hunyuan_video.vae`` Encoder/Decoder, 32x, 64 latent channels), tiny: detection fixes the widths
    (``block_out_channels``), so while ``comfy.sd.VAE`` builds it the engine is handed the tiny widths and one res block
    per stage, the rest (ffactor 32, 64 channels, pixel-shuffle stages, mid attention) as detection set it."""
    from unittest import mock

    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencodingEngine

    def shrink(params):
        return dict(params, block_out_channels=list(HUNYUAN_VAE_WIDTHS), num_res_blocks=1)

    def tiny_engine(*args, encoder_config, decoder_config, **kwargs):
        assert encoder_config["target"] == "comfy.ldm.hunyuan_video.vae.Encoder", encoder_config["target"]
        encoder_config = dict(encoder_config, params=shrink(encoder_config["params"]))
        decoder_config = dict(decoder_config, params=shrink(decoder_config["params"]))
        return AutoencodingEngine(*args, encoder_config=encoder_config, decoder_config=decoder_config, **kwargs)

    module = "comfy.ldm.hunyuan_video.vae"
    params = {"in_channels": 3, "out_channels": 3, "z_channels": 64, "ffactor_spatial": 32,
              "downsample_match_channel": True, "upsample_match_channel": True, **shrink({})}
    proto = AutoencodingEngine(regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
                               encoder_config={"target": f"{module}.Encoder", "params": params},
                               decoder_config={"target": f"{module}.Decoder", "params": params})
    _init_module_weights(proto, seed + 1_000_003, 0.04, {"decoder.conv_out.weight": 0.03})
    sd = {k: v.detach().clone() for k, v in proto.state_dict().items()}
    with mock.patch.object(comfy.sd, "AutoencodingEngine", tiny_engine):
        return comfy.sd.VAE(sd=sd, dtype=torch.float32)
