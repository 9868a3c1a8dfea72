"""Tiny diffusers pipelines of every one-step kind, built from configs (diffusers' test style), nothing downloaded.

Every pipeline is diffusers' own class with tiny random components (UNet2DConditionModel, FluxTransformer2DModel,
PixArtTransformer2DModel, AutoencoderKL, CLIPTextModel(WithProjection), T5EncoderModel). The CLIP tokenizer is the
real byte-level BPE format of testing/tiny_rewards.py, the T5 tokenizer a real (tokenizers-backed) T5Tokenizer over a
small Unigram vocabulary written here. Used by tests/test_diffusers_generators.py and tests/test_runner_diffusers.py;
import it after ``pytest.importorskip("diffusers")``.
"""

from __future__ import annotations

import string
from pathlib import Path

import diffusers
import pytest
import torch
from tiny_rewards import write_clip_tokenizer
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
    T5Config,
    T5EncoderModel,
    T5Tokenizer,
)

SIZE = 32  # pixels; the tiny VAEs halve it (scale factor 2)
KINDS = ("sd-turbo", "sdxl-turbo", "hyper-sdxl", "pixart-dmd", "flux-schnell")
BETAS = dict(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")


# -- tiny components --------------------------------------------------------------------------------------------------

def clip_tokenizer(tmp):
    vocab = write_clip_tokenizer(tmp / "clip_tok")
    return CLIPTokenizer.from_pretrained(str(tmp / "clip_tok")), vocab


def clip_text(vocab, hidden=16, projection=None):
    cfg = CLIPTextConfig(vocab_size=vocab, hidden_size=hidden, intermediate_size=2 * hidden, num_hidden_layers=2,
                         num_attention_heads=2, max_position_embeddings=77, bos_token_id=vocab - 2,
                         eos_token_id=vocab - 1, pad_token_id=vocab - 1,
                         **({} if projection is None else {"projection_dim": projection}))
    return CLIPTextModel(cfg) if projection is None else CLIPTextModelWithProjection(cfg)


def t5_pair(d_model=16):
    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -2.0)]
    pieces += [(c, -3.0) for c in string.ascii_lowercase] + [("▁" + c, -3.5) for c in string.ascii_lowercase]
    pieces += [(w, -1.0) for w in ("▁a", "▁red", "▁cat", "▁on", "▁the", "▁mat", "▁blue", "▁dog")]
    tok = T5Tokenizer(vocab=pieces, extra_ids=0)
    enc = T5EncoderModel(T5Config(vocab_size=len(pieces), d_model=d_model, d_ff=2 * d_model, d_kv=8, num_layers=1,
                                  num_heads=2, relative_attention_num_buckets=8, pad_token_id=0, eos_token_id=1,
                                  decoder_start_token_id=0))
    return tok, enc


def vae(latent_channels=4, **kw):
    return diffusers.AutoencoderKL(block_out_channels=(8, 16), in_channels=3, out_channels=3,
                                   down_block_types=("DownEncoderBlock2D",) * 2,
                                   up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=latent_channels,
                                   norm_num_groups=4, layers_per_block=1, sample_size=SIZE, **kw)


def unet(cross, **kw):
    return diffusers.UNet2DConditionModel(
        sample_size=SIZE // 2, in_channels=4, out_channels=4, block_out_channels=(8, 16), layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=cross, attention_head_dim=2, norm_num_groups=4, **kw)


def tiny_pipeline(kind, tmp):
    torch.manual_seed(0)
    if kind == "sd-turbo":
        tok, v = clip_tokenizer(tmp)
        return diffusers.StableDiffusionPipeline(
            vae=vae(scaling_factor=0.18215), text_encoder=clip_text(v), tokenizer=tok, unet=unet(16),
            scheduler=diffusers.EulerDiscreteScheduler(**BETAS, timestep_spacing="trailing", steps_offset=1),
            safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    if kind in ("sdxl-turbo", "hyper-sdxl"):
        tok, v = clip_tokenizer(tmp)
        sched = (diffusers.EulerAncestralDiscreteScheduler(**BETAS, timestep_spacing="trailing", steps_offset=1)
                 if kind == "sdxl-turbo" else diffusers.LCMScheduler(**BETAS, steps_offset=1))
        return diffusers.StableDiffusionXLPipeline(
            vae=vae(scaling_factor=0.13025), text_encoder=clip_text(v), text_encoder_2=clip_text(v, projection=8),
            tokenizer=tok, tokenizer_2=tok,
            unet=unet(32, addition_embed_type="text_time", addition_time_embed_dim=4,
                      projection_class_embeddings_input_dim=6 * 4 + 8, use_linear_projection=True),
            scheduler=sched, add_watermarker=False)
    if kind == "pixart-dmd":
        tok, enc = t5_pair(16)
        tr = diffusers.PixArtTransformer2DModel(
            sample_size=SIZE // 2, num_layers=1, patch_size=2, attention_head_dim=4, num_attention_heads=2,
            caption_channels=16, in_channels=4, cross_attention_dim=8, out_channels=8, attention_bias=True,
            activation_fn="gelu-approximate", num_embeds_ada_norm=1000, norm_type="ada_norm_single",
            norm_elementwise_affine=False, norm_eps=1e-6)
        return diffusers.PixArtAlphaPipeline(
            tokenizer=tok, text_encoder=enc, vae=vae(), transformer=tr,
            scheduler=diffusers.DDPMScheduler(beta_start=0.0001, beta_end=0.02, beta_schedule="linear",
                                              clip_sample=False))
    if kind == "flux-schnell":
        tok, v = clip_tokenizer(tmp)
        tok2, enc2 = t5_pair(16)
        tr = diffusers.FluxTransformer2DModel(patch_size=1, in_channels=16, num_layers=1, num_single_layers=1,
                                              attention_head_dim=16, num_attention_heads=2, joint_attention_dim=16,
                                              pooled_projection_dim=16, axes_dims_rope=[4, 4, 8])
        return diffusers.FluxPipeline(
            scheduler=diffusers.FlowMatchEulerDiscreteScheduler(shift=1.0, use_dynamic_shifting=False),
            vae=vae(scaling_factor=0.3611, shift_factor=0.1159, use_quant_conv=False, use_post_quant_conv=False),
            text_encoder=clip_text(v), tokenizer=tok, text_encoder_2=enc2, tokenizer_2=tok2, transformer=tr)
    raise ValueError(kind)


def save_tiny_pipeline(kind: str, tmp: Path) -> Path:
    """``kind``'s tiny pipeline saved with ``save_pretrained`` as ``<tmp>/pipe``; returns that folder."""
    tmp = Path(tmp)
    tiny_pipeline(kind, tmp).save_pretrained(str(tmp / "pipe"))
    return tmp / "pipe"


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run faster on one thread (two threads on two shared cores mostly wait for each other); test
    modules import it and make it autouse with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
