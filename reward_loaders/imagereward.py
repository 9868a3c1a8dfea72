"""ImageReward (THUDM): BLIP ViT + BERT text encoder with cross-attention + an MLP head, in plain torch.

The score is ImageReward's normalized reward, as its authors compute it: the prompt's tokens go through
BLIP's BERT encoder, which cross-attends to every image token of BLIP's ViT; the hidden state of the
first token ([CLS]) goes through a 5-layer MLP (no activations) and ``(r - mean) / std`` is returned.

Written from the architecture of the original code (THUDM/ImageReward, BLIP by Salesforce) without
depending on it: the ``image-reward`` wheel pins old timm/fairscale and does not import on current
transformers. Module names are chosen so that ``state_dict()`` keys are exactly those of the released
``ImageReward.pt`` (625 keys, 446,665,953 parameters for the real ViT-L/16 + BERT-base model).

Sizes come from the files, never from constants: the ViT from tensor shapes (its head count, which no
tensor shows, from an optional ``vision_config.json``), BERT from ``med_config.json`` checked against
the tensors, the MLP head from its weights. Dropout is omitted from the towers (the model only runs
in eval mode); the head keeps its Dropout modules so its indices match the checkpoint.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import re
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import RewardModel, float32_stack
from .errors import RewardLoadError

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "ImageReward.pt"
MED_CONFIG_FILE = "med_config.json"
VISION_CONFIG_FILE = "vision_config.json"
TOKENIZER_DIR = "tokenizer"
MAX_LENGTH = 35  # ImageReward tokenizes with max_length=35, padding to it, truncating
# the statistics ImageReward normalizes its raw MLP output with
REWARD_MEAN = 0.16717362830052426
REWARD_STD = 1.0333394966054072
HEAD_DROPOUT = (0.2, 0.2, 0.1)  # Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear
SELF_MASK_VALUE = -10000.0  # BERT's additive mask for padding tokens, as in the original code

VISION_PREFIX = "blip.visual_encoder."
TEXT_PREFIX = "blip.text_encoder."
EXPECTED_LAYOUT = (
    "a plain state dict (torch.save of a dict of tensors) with ImageReward's keys "
    "blip.visual_encoder.*, blip.text_encoder.*, blip.vision_proj.*, blip.text_proj.*, mlp.layers.*"
)
SOURCE_HINT = "https://huggingface.co/THUDM/ImageReward (ImageReward.pt, med_config.json)"
DDP_PREFIX = "module."  # torch.save(ddp_model.state_dict()) puts it before every key
# parts of BLIP that the score never runs: a training checkpoint (IterComp's) may carry them; they are left out
UNUSED_PREFIXES = (
    "blip.vision_proj.", "blip.text_proj.", "blip.itm_head.", "blip.visual_encoder_m.", "blip.text_encoder_m.",
    "blip.vision_proj_m.", "blip.text_proj_m.", "blip.text_decoder.", "blip.temp", "blip.image_queue",
    "blip.text_queue", "blip.idx_queue", "blip.ptr_queue", "blip.queue_ptr",
)
# where a reward in ImageReward's format may borrow med_config.json and the BERT tokenizer (they are the same
# files for every such model): its own folder first, then these folders of every reno_rewards root
SUPPORT_FOLDERS = ("imagereward", "itercomp_attribute", "itercomp_spatial", "itercomp_nonspatial")


@dataclass(frozen=True)
class VisionConfig:
    """BLIP's ViT (timm layout): pre-norm blocks, LayerNorm eps 1e-6, GELU MLP, qkv with bias."""

    image_size: int = 224
    patch_size: int = 16
    width: int = 1024
    layers: int = 24
    heads: int = 16
    mlp_dim: int = 4096
    eps: float = 1e-6

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size


@dataclass(frozen=True)
class TextConfig:
    """BLIP's BERT encoder (``med_config.json``) with cross-attention to ``encoder_width``-wide image tokens."""

    vocab_size: int = 30524
    hidden_size: int = 768
    layers: int = 12
    heads: int = 12
    intermediate_size: int = 3072
    max_positions: int = 512
    encoder_width: int = 1024
    eps: float = 1e-12
    hidden_act: str = "gelu"
    pad_token_id: int = 0


DEFAULT_VISION = VisionConfig()  # ViT-L/16 at 224 px: what ImageReward uses
DEFAULT_TEXT = TextConfig()  # BERT-base, vocab 30522 + [DEC] + [ENC]
DEFAULT_HEAD = (768, 1024, 128, 64, 16, 1)
PROJ_DIM = 256  # BLIP's contrastive projections (kept for strict loading, unused by the score)

_ACTIVATIONS = {
    "gelu": lambda x: F.gelu(x),
    "gelu_new": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_pytorch_tanh": lambda x: F.gelu(x, approximate="tanh"),
    "gelu_fast": lambda x: F.gelu(x, approximate="tanh"),
    "relu": F.relu,
    "silu": F.silu,
    "swish": F.silu,
}


def _heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    """(B, N, H*D) -> (B, H, N, D)"""
    b, n, _ = x.shape
    return x.view(b, n, heads, -1).transpose(1, 2)


def _merge(x: torch.Tensor) -> torch.Tensor:
    """(B, H, N, D) -> (B, N, H*D)"""
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


# -- BLIP ViT --------------------------------------------------------------------------------------


class PatchEmbed(nn.Module):
    def __init__(self, cfg: VisionConfig, in_chans: int = 3):
        super().__init__()
        self.proj = nn.Conv2d(in_chans, cfg.width, kernel_size=cfg.patch_size, stride=cfg.patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class VitAttention(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)
        self.proj = nn.Linear(cfg.width, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, c = x.shape
        q, k, v = self.qkv(x).view(b, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        return self.proj(_merge(F.scaled_dot_product_attention(q, k, v)))


class VitMlp(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.fc1 = nn.Linear(cfg.width, cfg.mlp_dim)
        self.fc2 = nn.Linear(cfg.mlp_dim, cfg.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(F.gelu(self.fc1(x)))


class VitBlock(nn.Module):
    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.norm1 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.attn = VitAttention(cfg)
        self.norm2 = nn.LayerNorm(cfg.width, eps=cfg.eps)
        self.mlp = VitMlp(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class BlipVisionTransformer(nn.Module):
    """(B, 3, S, S) pixels -> (B, 1 + (S/patch)^2, width) image tokens (class token first), final norm applied."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        self.cfg = cfg
        self.patch_embed = PatchEmbed(cfg)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, cfg.width))
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.grid * cfg.grid + 1, cfg.width))
        self.blocks = nn.ModuleList(VitBlock(cfg) for _ in range(cfg.layers))
        self.norm = nn.LayerNorm(cfg.width, eps=cfg.eps)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.pos_embed, std=0.02)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        size = self.cfg.image_size
        if tuple(pixels.shape[-2:]) != (size, size):
            raise ValueError(f"ImageReward's ViT takes {size}x{size} pixels, got {tuple(pixels.shape)}")
        x = self.patch_embed(pixels.to(self.pos_embed.dtype))
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        for block in self.blocks:
            x = block(x)
        return self.norm(x)


# -- BLIP BERT (med.py layout) ---------------------------------------------------------------------


class BertEmbeddings(nn.Module):
    """Word + absolute position embeddings, LayerNorm (BLIP's BERT has no token-type embeddings)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_positions, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.eps)
        self.register_buffer("position_ids", torch.arange(cfg.max_positions).unsqueeze(0))

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        positions = self.position_ids[:, : input_ids.shape[1]]
        return self.LayerNorm(self.word_embeddings(input_ids) + self.position_embeddings(positions))


class BertSelfAttention(nn.Module):
    def __init__(self, cfg: TextConfig, kv_width: int):
        super().__init__()
        self.heads = cfg.heads
        self.query = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.key = nn.Linear(kv_width, cfg.hidden_size)
        self.value = nn.Linear(kv_width, cfg.hidden_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        q = _heads(self.query(x), self.heads)
        k = _heads(self.key(context), self.heads)
        v = _heads(self.value(context), self.heads)
        return _merge(F.scaled_dot_product_attention(q, k, v, attn_mask=mask))


class BertSelfOutput(nn.Module):
    """dense -> residual -> LayerNorm (post-norm); also the FFN output of a layer (``BertOutput``)."""

    def __init__(self, cfg: TextConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: TextConfig, kv_width: int):
        super().__init__()
        self.self = BertSelfAttention(cfg, kv_width)
        self.output = BertSelfOutput(cfg, cfg.hidden_size)

    def forward(self, x: torch.Tensor, context: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
        return self.output(self.self(x, context, mask), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)
        self.act = _ACTIVATIONS[cfg.hidden_act]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class BertLayer(nn.Module):
    """Bidirectional self-attention, cross-attention to the image tokens, feed-forward (all post-norm)."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.attention = BertAttention(cfg, cfg.hidden_size)
        self.crossattention = BertAttention(cfg, cfg.encoder_width)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertSelfOutput(cfg, cfg.intermediate_size)

    def forward(self, x: torch.Tensor, self_mask: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, x, self_mask)
        x = self.crossattention(x, image, None)  # the image attention mask is all ones
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.layer = nn.ModuleList(BertLayer(cfg) for _ in range(cfg.layers))


class BlipTextEncoder(nn.Module):
    """BLIP's ``BertModel(add_pooling_layer=False)`` run in its 'multimodal' mode."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """-> last hidden state (B, L, hidden)."""
        x = self.embeddings(input_ids)
        image = image_embeds.to(x.dtype)
        # additive padding mask over the keys, broadcast over heads and queries: 0 keep, -10000 drop
        self_mask = (1.0 - attention_mask[:, None, None, :].to(x.dtype)) * SELF_MASK_VALUE
        for layer in self.encoder.layer:
            x = layer(x, self_mask, image)
        return x


class BlipPretrain(nn.Module):
    """The ``blip`` part of ImageReward: ViT, BERT encoder and the two contrastive projections."""

    def __init__(self, vision: VisionConfig, text: TextConfig, proj_dim: int | None = PROJ_DIM):
        super().__init__()
        self.visual_encoder = BlipVisionTransformer(vision)
        self.text_encoder = BlipTextEncoder(text)
        if proj_dim:  # unused by the score; kept so that ImageReward.pt loads strictly (None: left out)
            self.vision_proj = nn.Linear(vision.width, proj_dim)
            self.text_proj = nn.Linear(text.hidden_size, proj_dim)


class RewardHead(nn.Module):
    """ImageReward's MLP: Linear, Dropout, Linear, Dropout, Linear, Dropout, Linear, Linear; no activations.

    Always computed in float32, whatever dtype the rest of the model runs in.
    """

    def __init__(self, dims: tuple[int, ...] = DEFAULT_HEAD):
        super().__init__()
        if len(dims) != 6:
            raise ValueError(f"ImageReward's head has 5 linear layers (6 sizes), got sizes {dims}")
        mods: list[nn.Module] = []
        for i in range(5):
            mods.append(nn.Linear(dims[i], dims[i + 1]))
            if i < 3:
                mods.append(nn.Dropout(HEAD_DROPOUT[i]))
        self.layers = nn.Sequential(*mods)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return float32_stack(self.layers, x)


# -- the reward ------------------------------------------------------------------------------------


class ImageRewardModel(RewardModel):
    """ImageReward's normalized score ``(mlp(bert_cls(prompt | image tokens)) - 0.16717) / 1.03334``.

    Its ``state_dict()`` keys are those of ``ImageReward.pt``. ``encode_text`` returns the prompt's
    tokenization (input ids and attention mask stacked into one (2, 35) long tensor); the text tower
    itself must run per image because it cross-attends to the image tokens.
    """

    fp32_modules = ("mlp",)  # the reward head keeps float32 weights when the towers run in half precision
    name = "imagereward"
    offset = 2.0

    def __init__(self, vision: VisionConfig = DEFAULT_VISION, text: TextConfig = DEFAULT_TEXT,
                 head_dims: tuple[int, ...] | None = None, tokenizer=None, name: str = "imagereward",
                 offset: float = 2.0, source: str = "", max_length: int = MAX_LENGTH, proj_dim: int | None = PROJ_DIM):
        super().__init__()
        if text.encoder_width != vision.width:
            text = replace(text, encoder_width=vision.width)  # as BLIP does: encoder_width = vision width
        head_dims = tuple(head_dims) if head_dims is not None else (text.hidden_size, *DEFAULT_HEAD[1:])
        if head_dims[0] != text.hidden_size:
            raise ValueError(f"the head's input size {head_dims[0]} must equal BERT's hidden size {text.hidden_size}")
        self.blip = BlipPretrain(vision, text, proj_dim)
        self.mlp = RewardHead(head_dims)
        self.vision_config, self.text_config, self.head_dims = vision, text, head_dims
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.name, self.offset, self.source = name, offset, source
        self.input_size = vision.image_size

    # -- text -----------------------------------------------------------------------------------
    def tokenize(self, prompt: str) -> torch.Tensor:
        """The prompt as ImageReward tokenizes it: (2, max_length) long tensor of input ids and attention mask."""
        if self.tokenizer is None:
            raise RuntimeError(f"{self.name}: no tokenizer attached (load it with load_imagereward_folder)")
        self.warn_if_truncated(len(self.tokenizer(prompt, truncation=False)["input_ids"]), self.max_length,
                               "ImageReward's")
        tok = self.tokenizer(
            prompt, padding="max_length", truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        return torch.stack([tok["input_ids"][0], tok["attention_mask"][0]]).long()

    def encode_text(self, prompt: str) -> torch.Tensor:
        return self.tokenize(prompt).to(self.param_device())

    # -- score ----------------------------------------------------------------------------------
    def image_embeds(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.blip.visual_encoder(pixel_values)

    def raw_reward(self, pixel_values: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """The MLP output before normalization, (B,) float32."""
        image = self.image_embeds(pixel_values)
        tokens = text_features.to(image.device).long()
        if tokens.dim() != 2 or tokens.shape[0] != 2:
            raise ValueError(f"expected the (2, L) tokenization from encode_text, got shape {tuple(tokens.shape)}")
        batch = image.shape[0]
        ids = tokens[0].unsqueeze(0).expand(batch, -1)
        mask = tokens[1].unsqueeze(0).expand(batch, -1)
        hidden = self.blip.text_encoder(ids, mask, image)
        return self.mlp(hidden[:, 0, :].float())[:, 0]

    def score(self, pixel_values: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return (self.raw_reward(pixel_values, text_features) - REWARD_MEAN) / REWARD_STD


# -- loading ---------------------------------------------------------------------------------------


def _show(keys, n: int = 6) -> str:
    keys = list(keys)
    shown = ", ".join(map(str, keys[:n]))
    return shown + (f" (+{len(keys) - n} more)" if len(keys) > n else "")


def _read_state_dict(path: Path, name: str, source_hint: str = SOURCE_HINT,
                     strip_ddp: bool = False) -> dict[str, torch.Tensor]:
    """The checkpoint's tensors (``torch.load(weights_only=True)``); with ``strip_ddp``, keys saved from a
    DistributedDataParallel-wrapped model lose their leading ``module.``."""
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        raise RewardLoadError(
            f"{name}: refused to load {path}: it is not plain tensor data and would need to run code to "
            f"unpickle ({str(e).splitlines()[0] if str(e) else type(e).__name__}). Expected {EXPECTED_LAYOUT}. "
            f"Get the original file from {source_hint}."
        ) from e
    except Exception as e:  # noqa: BLE001 - truncated zip, EOF, not a torch file: one actionable message
        raise RewardLoadError(
            f"{name}: could not read {path} ({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            f"The file is truncated, corrupt or not a torch checkpoint; re-download it from {source_hint}."
        ) from e
    if not isinstance(obj, dict):
        raise RewardLoadError(f"{name}: {path} holds a {type(obj).__name__}; expected {EXPECTED_LAYOUT}.")
    non_tensor = [k for k, v in obj.items() if not torch.is_tensor(v)]
    if non_tensor:
        nested = [k for k in non_tensor if isinstance(obj[k], dict) and any(torch.is_tensor(v) for v in obj[k].values())]
        hint = (
            f" It wraps a state dict under {_show(nested, 3)}: it looks like a checkpoint of another model "
            "(e.g. an HPS / open_clip file), not ImageReward.pt."
            if nested else ""
        )
        raise RewardLoadError(
            f"{name}: {path} is not a dict of tensors (non-tensor entries: {_show(non_tensor)}).{hint} "
            f"Expected {EXPECTED_LAYOUT}."
        )
    if strip_ddp:
        obj = _strip_ddp_prefix(obj, path, name)
    if not any(str(k).startswith("blip.") for k in obj):
        raise RewardLoadError(
            f"{name}: {path} has none of ImageReward's keys (its {len(obj)} keys start with {_show(sorted(obj), 4)}); "
            f"it is a checkpoint of another model (e.g. HPS / open_clip or an aesthetic head). Expected {EXPECTED_LAYOUT}."
        )
    return obj


def _strip_ddp_prefix(state: dict, path: Path, name: str) -> dict:
    """``module.blip.x`` -> ``blip.x`` (a state dict of a DDP-wrapped model); keys without the prefix stay."""
    out: dict = {}
    for key, value in state.items():
        short = key[len(DDP_PREFIX):] if str(key).startswith(DDP_PREFIX) else key
        if short in out:
            raise RewardLoadError(
                f"{name}: {path} holds both {short!r} and {DDP_PREFIX + short!r}: two copies of the same weight, "
                "with and without the DistributedDataParallel prefix. Re-save the checkpoint with one of them."
            )
        out[short] = value
    return out


def unused_by_score(key: str) -> bool:
    """Whether ``key`` belongs to a part of BLIP that ImageReward's score never runs (its contrastive
    projections, momentum encoders, queues, ITM head, decoder), which a training checkpoint may carry."""
    return key.startswith(UNUSED_PREFIXES)


def _need(state: dict, keys: list[str], path: Path, name: str, what: str) -> None:
    missing = [k for k in keys if k not in state]
    if missing:
        raise RewardLoadError(
            f"{name}: {path} lacks {len(missing)} key(s) needed to read the {what}: {_show(missing)}. "
            f"Expected {EXPECTED_LAYOUT}; the file is incomplete or another model's."
        )


def _read_json(path: Path, name: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RewardLoadError(f"{name}: could not read {path}: {type(e).__name__}: {e}") from e
    if not isinstance(data, dict):
        raise RewardLoadError(f"{name}: {path} must hold a JSON object, got {type(data).__name__}")
    return data


def _block_count(state: dict, prefix: str) -> int:
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    found = {int(m.group(1)) for k in state if (m := pattern.match(k))}
    return max(found) + 1 if found else 0


def vision_config_from_state(state: dict, path: Path, sidecar: Path | None, name: str,
                             source_hint: str = SOURCE_HINT, borrowed: tuple[Path, ...] = ()) -> VisionConfig:
    """ViT sizes from tensor shapes; head count from ``vision_config.json`` (default: ViT-L/16's 16).

    ``sidecar`` is the checkpoint's own ``vision_config.json``: a size in it that the tensors contradict is an
    error. When it is absent, the first of ``borrowed`` (another folder's, e.g. the ``imagereward`` folder's for a
    fine-tune of ImageReward) whose sizes agree with the tensors gives the head count; one that disagrees
    describes another ViT and is passed over.
    """
    p = VISION_PREFIX
    _need(state, [p + "cls_token", p + "pos_embed", p + "patch_embed.proj.weight", p + "blocks.0.mlp.fc1.weight"],
          path, name, "ViT sizes")
    proj = state[p + "patch_embed.proj.weight"]
    pos = state[p + "pos_embed"]
    fc1 = state[p + "blocks.0.mlp.fc1.weight"]
    if proj.dim() != 4 or proj.shape[1] != 3 or proj.shape[2] != proj.shape[3] or pos.dim() != 3:
        raise RewardLoadError(
            f"{name}: {path}: unexpected ViT patch embedding {p}patch_embed.proj.weight {tuple(proj.shape)} "
            f"or {p}pos_embed {tuple(pos.shape)} (expected (width, 3, patch, patch) and (1, 1 + grid^2, width))"
        )
    width, patch = int(proj.shape[0]), int(proj.shape[-1])
    grid = math.isqrt(int(pos.shape[1]) - 1)
    if grid * grid + 1 != pos.shape[1]:
        raise RewardLoadError(
            f"{name}: {path}: {p}pos_embed has {pos.shape[1]} positions, not 1 + a square number of patches"
        )
    inferred = dict(image_size=grid * patch, patch_size=patch, width=width, layers=_block_count(state, p + "blocks."))
    heads = None
    if sidecar is not None and sidecar.is_file():
        side = _read_json(sidecar, name)
        for key, value in inferred.items():
            if key in side and int(side[key]) != value:
                raise RewardLoadError(
                    f"{name}: {sidecar} says {key}={side[key]} but the ViT in {path} has {key}={value} "
                    f"(from {p}pos_embed {tuple(pos.shape)}, {p}patch_embed.proj.weight {tuple(proj.shape)} and "
                    f"its blocks.N keys); fix or remove {sidecar.name}."
                )
        if "heads" in side:
            heads = int(side["heads"])
    else:
        for other in borrowed:
            if not Path(other).is_file():
                continue
            side = _read_json(Path(other), name)
            differ = {k: side[k] for k, v in inferred.items() if k in side and int(side[k]) != v}
            if differ:
                log.info("ReNO: %s: %s describes another ViT (%s; %s has %s); not used", name, other, differ, path,
                         inferred)
                continue
            if "heads" in side:
                heads = int(side["heads"])
                log.info("ReNO: %s: no %s beside %s; using %s (%d heads)", name, VISION_CONFIG_FILE, path, other,
                         heads)
                break
    if heads is None:
        if width == DEFAULT_VISION.width:
            default = {k: getattr(DEFAULT_VISION, k) for k in inferred}
            if inferred != default:  # e.g. a state dict that lost its last blocks
                raise RewardLoadError(
                    f"{name}: the ViT in {path} has {inferred}, not ImageReward's ViT-L/16 {default}, and there is no "
                    f"{VISION_CONFIG_FILE} beside it to say so. The file is incomplete or another model's; re-download "
                    f"it from {source_hint} (or describe the ViT in {VISION_CONFIG_FILE})."
                )
            heads = DEFAULT_VISION.heads
        else:
            heads = max(width // 64, 1)
            log.warning(
                "%s: the ViT in %s has width %d but there is no %s to give its head count; assuming %d heads "
                "(64 channels each)", name, path, width, VISION_CONFIG_FILE, heads,
            )
    if heads <= 0 or width % heads:
        raise RewardLoadError(f"{name}: the ViT width {width} of {path} is not divisible by {heads} heads")
    return VisionConfig(heads=heads, mlp_dim=int(fc1.shape[0]), **inferred)


def text_config_from_med(med: dict, med_path: Path, vision_width: int, name: str) -> TextConfig:
    try:
        cfg = TextConfig(
            vocab_size=int(med["vocab_size"]),
            hidden_size=int(med["hidden_size"]),
            layers=int(med["num_hidden_layers"]),
            heads=int(med["num_attention_heads"]),
            intermediate_size=int(med["intermediate_size"]),
            max_positions=int(med.get("max_position_embeddings", 512)),
            encoder_width=vision_width,  # BLIP overrides med_config's encoder_width with the ViT's width
            eps=float(med.get("layer_norm_eps", 1e-12)),
            hidden_act=str(med.get("hidden_act", "gelu")),
            pad_token_id=int(med.get("pad_token_id", 0)),
        )
    except (KeyError, TypeError, ValueError) as e:
        raise RewardLoadError(
            f"{name}: {med_path} is not a BLIP med config (missing or bad {e}); it needs vocab_size, hidden_size, "
            "num_hidden_layers, num_attention_heads, intermediate_size (the standard BLIP med_config.json)."
        ) from e
    if med.get("position_embedding_type", "absolute") != "absolute":
        raise RewardLoadError(f"{name}: {med_path}: only absolute position embeddings are supported")
    if not med.get("add_cross_attention", True):
        raise RewardLoadError(f"{name}: {med_path} has add_cross_attention false; ImageReward's BERT cross-attends")
    if cfg.hidden_act not in _ACTIVATIONS:
        raise RewardLoadError(f"{name}: {med_path}: unsupported hidden_act {cfg.hidden_act!r}")
    if cfg.hidden_size % cfg.heads:
        raise RewardLoadError(f"{name}: {med_path}: hidden_size {cfg.hidden_size} not divisible by {cfg.heads} heads")
    return cfg


def _check_text_against_state(cfg: TextConfig, state: dict, path: Path, med_path: Path, name: str) -> None:
    p = TEXT_PREFIX
    checks = [
        ("vocab_size, hidden_size", p + "embeddings.word_embeddings.weight", (cfg.vocab_size, cfg.hidden_size)),
        ("max_position_embeddings", p + "embeddings.position_embeddings.weight", (cfg.max_positions, cfg.hidden_size)),
        ("intermediate_size", p + "encoder.layer.0.intermediate.dense.weight", (cfg.intermediate_size, cfg.hidden_size)),
    ]
    _need(state, [key for _, key, _ in checks], path, name, "BERT sizes")
    for field, key, shape in checks:
        if tuple(state[key].shape) != shape:
            raise RewardLoadError(
                f"{name}: {path} does not match {med_path} ({field}): {key} has shape {tuple(state[key].shape)}, "
                f"the config gives {shape}. Use the med_config.json that came with this checkpoint."
            )
    layers = _block_count(state, p + "encoder.layer.")
    if layers != cfg.layers:
        raise RewardLoadError(
            f"{name}: {med_path} says num_hidden_layers={cfg.layers} but {path} has {layers} BERT layers "
            f"({p}encoder.layer.N keys). Use the med_config.json that came with this checkpoint."
        )


def head_dims_from_state(state: dict, path: Path, name: str) -> tuple[int, ...]:
    keys = [f"mlp.layers.{i}.weight" for i in (0, 2, 4, 6, 7)]
    _need(state, keys, path, name, "MLP head sizes")
    dims = [int(state[keys[0]].shape[1])]
    for key in keys:
        w = state[key]
        if w.dim() != 2 or w.shape[1] != dims[-1]:
            raise RewardLoadError(f"{name}: {path}: {key} has shape {tuple(w.shape)}; its input should be {dims[-1]}")
        dims.append(int(w.shape[0]))
    if dims[-1] != 1:
        raise RewardLoadError(f"{name}: {path}: the MLP head ends in {dims[-1]} outputs, expected 1 ({keys[-1]})")
    return tuple(dims)


def _load_tokenizer(tok_dir: Path, name: str):
    from transformers import BertTokenizer

    tok_dir = Path(tok_dir)
    try:
        tokenizer = BertTokenizer.from_pretrained(str(tok_dir), local_files_only=True, do_lower_case=True)
    except Exception as e:  # noqa: BLE001 - turned into an actionable message
        raise RewardLoadError(
            f"{name}: could not load the BERT tokenizer from {tok_dir}: {type(e).__name__}: {e}. The folder needs "
            "vocab.txt and tokenizer_config.json of bert-base-uncased (https://huggingface.co/bert-base-uncased)."
        ) from e
    # exactly BLIP's init_tokenizer: [DEC] as bos token, [ENC] as an additional special token (vocab + 2)
    tokenizer.add_special_tokens({"bos_token": "[DEC]"})
    tokenizer.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tokenizer


# -- med_config.json and the tokenizer, from the reward's folder or a sibling one -----------------------------

TOKENIZER_FILES = ("vocab.txt", "tokenizer_config.json")


def support_folders(folder: Path, roots=None) -> list[Path]:
    """``folder``, then ``<root>/<f>`` for each of SUPPORT_FOLDERS in every root (existing ones, no repeats)."""
    out: list[Path] = []
    for candidate in [Path(folder)] + [Path(root) / f for root in (roots or ()) for f in SUPPORT_FOLDERS]:
        if candidate.is_dir() and all(candidate.resolve() != c.resolve() for c in out):
            out.append(candidate)
    return out


def find_med_config(folder: Path, roots=None) -> Path | None:
    """The ``med_config.json`` for the reward in ``folder``: its own, else that of the ``imagereward`` (or an
    IterComp) folder of a reno_rewards root; None when there is none."""
    return next((f / MED_CONFIG_FILE for f in support_folders(folder, roots) if (f / MED_CONFIG_FILE).is_file()), None)


def find_bert_tokenizer(folder: Path, roots=None) -> Path | None:
    """The BERT tokenizer folder (``tokenizer/`` with vocab.txt and tokenizer_config.json) for the reward in
    ``folder``: its own, else that of the ``imagereward`` (or an IterComp) folder; None when there is none."""
    for f in support_folders(folder, roots):
        if all((f / TOKENIZER_DIR / n).is_file() for n in TOKENIZER_FILES):
            return f / TOKENIZER_DIR
    return None


def find_borrowed_vision_configs(folder: Path, roots=None) -> list[Path]:
    """The ``vision_config.json`` files of the ``imagereward`` (or IterComp) folders that a reward in ``folder``
    without its own may take its ViT head count from (the first whose sizes fit the checkpoint is used)."""
    own = Path(folder).resolve()
    return [f / VISION_CONFIG_FILE for f in support_folders(folder, roots)
            if f.resolve() != own and (f / VISION_CONFIG_FILE).is_file()]


def _borrowed(folder: Path, found: Path | None, what: str, name: str) -> None:
    if found is not None and Path(folder).resolve() not in found.resolve().parents:
        log.info("ReNO: %s: no %s in %s; using %s", name, what, folder, found)


# -- building -------------------------------------------------------------------------------------------

def load_imagereward(checkpoint: Path, med_config: Path, tokenizer_dir: Path, *, name: str = "imagereward",
                     offset: float = 2.0, source: str = "", vision_config: Path | None = None,
                     training_checkpoint: bool = False, source_hint: str = SOURCE_HINT,
                     borrowed_vision_configs: tuple[Path, ...] = ()) -> ImageRewardModel:
    """Build ImageReward from its checkpoint, ``med_config.json``, BERT tokenizer folder and optional
    ``vision_config.json`` (or, without one, a fitting one of ``borrowed_vision_configs``).

    Strict: every weight the score uses must be in the checkpoint, with the shapes the configs give, and
    every key of the checkpoint must be used. ``training_checkpoint=True`` reads the state dict of a model
    trained with ImageReward's code (IterComp's reward models, a custom reward): the ``module.`` prefix of
    a DDP-wrapped model is stripped, and keys of BLIP parts the score never runs (``blip.vision_proj``,
    ``blip.text_proj``, momentum encoders, ...) are left out, named in one log line; any other extra key
    is still an error. Float32 on the CPU, frozen, in eval mode.
    """
    path, med_path = Path(checkpoint), Path(med_config)
    for needed in (path, med_path):
        if not needed.is_file():
            raise RewardLoadError(f"{name}: {needed} is missing (get it from {source_hint})")
    with torch.inference_mode(False):
        state = _read_state_dict(path, name, source_hint, strip_ddp=training_checkpoint)
        unused: list[str] = []
        if training_checkpoint:
            unused = [k for k in state if unused_by_score(str(k))]
            state = {k: v for k, v in state.items() if k not in set(unused)}
        vision = vision_config_from_state(state, path, vision_config, name, source_hint,
                                          tuple(borrowed_vision_configs))
        text = text_config_from_med(_read_json(med_path, name), med_path, vision.width, name)
        _check_text_against_state(text, state, path, med_path, name)
        head = head_dims_from_state(state, path, name)
        if training_checkpoint:
            proj_dim = None
        else:
            _need(state, ["blip.vision_proj.weight"], path, name, "projection size")
            proj_dim = int(state["blip.vision_proj.weight"].shape[0])
        tokenizer = _load_tokenizer(tokenizer_dir, name)
        if len(tokenizer) != text.vocab_size:
            raise RewardLoadError(
                f"{name}: the tokenizer in {tokenizer_dir} has {len(tokenizer)} tokens with BLIP's [DEC] and "
                f"[ENC] added, but {path} embeds {text.vocab_size} "
                f"({TEXT_PREFIX}embeddings.word_embeddings.weight). Use bert-base-uncased's vocab.txt."
            )

        def build():
            return ImageRewardModel(vision, text, head, tokenizer=tokenizer, name=name, offset=offset,
                                    source=source or str(path.parent), proj_dim=proj_dim)

        with torch.device("meta"):  # no random init of weights that are overwritten right away
            model = build()
        expected = model.state_dict()
        position_ids = TEXT_PREFIX + "embeddings.position_ids"
        if training_checkpoint and position_ids not in state and position_ids in expected:
            # a buffer newer BERT code no longer saves: it is always 0..max_positions-1
            state[position_ids] = torch.arange(expected[position_ids].shape[-1]).unsqueeze(0)
        missing = [k for k in expected if k not in state]
        unexpected = [k for k in state if k not in expected]
        wrong = [f"{k}: file {tuple(state[k].shape)}, model {tuple(v.shape)}"
                 for k, v in expected.items() if k in state and state[k].shape != v.shape]
        if missing or unexpected or wrong:
            parts = [f"{len(keys)} {label}: {_show(keys)}"
                     for label, keys in (("missing key(s)", missing), ("unexpected key(s)", unexpected),
                                         ("tensor(s) of another shape", wrong)) if keys]
            raise RewardLoadError(
                f"{name}: {path} does not match ImageReward's architecture "
                f"(ViT {vision.width}x{vision.layers}, BERT {text.hidden_size}x{text.layers} from {med_path.name}): "
                + "; ".join(parts) + ". It is incomplete or a checkpoint of another model; re-download it from "
                + source_hint + "."
            )
        if unused:
            log.info("ReNO: %s: %d key(s) of %s are not used by the score and were left out: %s",
                     name, len(unused), path, ", ".join(map(str, unused)))
        converted = {
            k: (v.long() if not expected[k].is_floating_point() else v.float()).contiguous() for k, v in state.items()
        }
        del state
        try:
            model.load_state_dict(converted, strict=True, assign=True)
        except TypeError:  # torch < 2.1 has no assign=: build the weights on the CPU and copy into them
            model = build()
            model.load_state_dict(converted, strict=True)
    return model.eval().requires_grad_(False)


def load_imagereward_folder(folder: Path, name: str = "imagereward", offset: float = 2.0) -> ImageRewardModel:
    """Build ImageReward from ``folder`` (ImageReward.pt, med_config.json, tokenizer/, optional vision_config.json).

    Strict: every key of the checkpoint must be used and every weight present, with the shapes the
    configs give. Float32 on the CPU, frozen, in eval mode.
    """
    folder = Path(folder)
    return load_imagereward(folder / CHECKPOINT_FILE, folder / MED_CONFIG_FILE, folder / TOKENIZER_DIR, name=name,
                            offset=offset, source=str(folder), vision_config=folder / VISION_CONFIG_FILE)


def load_imagereward_format(folder: Path, checkpoint: Path, roots=None, *, name: str, offset: float,
                            source_hint: str) -> ImageRewardModel:
    """A reward trained with ImageReward's code (IterComp's, a custom one): ``checkpoint`` (plain or
    DDP-prefixed state dict) with ``med_config.json``, the BERT tokenizer and ``vision_config.json`` (the ViT's
    head count) from ``folder`` or, when it has none, from the ``imagereward`` (or an IterComp) folder of a
    reno_rewards root (a borrowed ``vision_config.json`` only where its sizes fit the checkpoint)."""
    folder = Path(folder)
    med, tok = find_med_config(folder, roots), find_bert_tokenizer(folder, roots)
    if med is None or tok is None:
        lacks = " and ".join(w for w, f in ((MED_CONFIG_FILE, med), (f"{TOKENIZER_DIR}/ (vocab.txt, "
                             "tokenizer_config.json)", tok)) if f is None)
        raise RewardLoadError(
            f"{name}: {lacks} missing: put {'them' if med is None and tok is None else 'it'} in {folder}, or install "
            f"the imagereward reward (its folder's {MED_CONFIG_FILE} and {TOKENIZER_DIR}/ are used). "
            f"{MED_CONFIG_FILE} comes from https://huggingface.co/THUDM/ImageReward, the tokenizer files "
            "from https://huggingface.co/bert-base-uncased."
        )
    _borrowed(folder, med, MED_CONFIG_FILE, name)
    _borrowed(folder, tok, "BERT tokenizer", name)
    return load_imagereward(checkpoint, med, tok, name=name, offset=offset, source=str(folder),
                            vision_config=folder / VISION_CONFIG_FILE, training_checkpoint=True,
                            source_hint=source_hint,
                            borrowed_vision_configs=tuple(find_borrowed_vision_configs(folder, roots)))


# -- IterComp's three composition-aware reward models --------------------------------------------------------

ITERCOMP_REPO = "comin/IterComp"
ITERCOMP_PAGE = "https://huggingface.co/comin/IterComp/tree/main/reward_models"
# Accepted file names per reward (the published names could not be verified here): the first that exists in
# the folder is used; failing all, a folder holding exactly one .pt/.pth file uses that one (IterComp's training
# script saves 'best_lr=<lr>.pt').
ITERCOMP_CHECKPOINTS = {
    "itercomp_attribute": ("attribute.pt", "attribute_binding.pt", "reward_attribute.pt", "attribute_reward.pt",
                           "itercomp_attribute.pt", "ImageReward.pt"),
    "itercomp_spatial": ("spatial.pt", "spatial_relationship.pt", "reward_spatial.pt", "spatial_reward.pt",
                         "itercomp_spatial.pt", "ImageReward.pt"),
    "itercomp_nonspatial": ("nonspatial.pt", "non_spatial.pt", "non_spatial_relationship.pt", "reward_nonspatial.pt",
                            "nonspatial_reward.pt", "itercomp_nonspatial.pt", "ImageReward.pt"),
}
ITERCOMP_ROLES = {
    "itercomp_attribute": "attribute-binding (color, shape, texture)",
    "itercomp_spatial": "spatial-relationship",
    "itercomp_nonspatial": "non-spatial-relationship",
}
CHECKPOINT_SUFFIXES = (".pt", ".pth")


def find_itercomp_checkpoint(folder: Path, reward: str) -> Path | None:
    """IterComp reward ``reward``'s checkpoint in ``folder``: the first of its accepted names, else the only
    .pt/.pth file there; None when there is none (or several, none with an accepted name)."""
    folder = Path(folder)
    for n in ITERCOMP_CHECKPOINTS[reward]:
        if (folder / n).is_file():
            return folder / n
    candidates = _checkpoint_files(folder)
    return candidates[0] if len(candidates) == 1 else None


def _checkpoint_files(folder: Path) -> list[Path]:
    try:
        return sorted(p for p in Path(folder).iterdir()
                      if p.suffix.lower() in CHECKPOINT_SUFFIXES and p.is_file() and not p.name.startswith("."))
    except OSError:
        return []


def itercomp_hint(reward: str) -> str:
    """Where IterComp reward ``reward``'s checkpoint comes from and under which names it is accepted."""
    return (f"IterComp's {ITERCOMP_ROLES[reward]} reward model: download it by hand from the reward_models folder of "
            f"https://huggingface.co/{ITERCOMP_REPO} ({ITERCOMP_PAGE}); it is not downloaded automatically. Any one "
            f".pt file in the folder is used, whatever its name (or name it {ITERCOMP_CHECKPOINTS[reward][0]})")


def load_itercomp_folder(folder: Path, reward: str, offset: float = 2.0, roots=None) -> ImageRewardModel:
    """IterComp's reward ``reward`` (itercomp_attribute / itercomp_spatial / itercomp_nonspatial) from ``folder``:
    an exact ImageReward clone saved from a DDP-wrapped model (see ``load_imagereward_format``)."""
    folder = Path(folder)
    checkpoint = find_itercomp_checkpoint(folder, reward)
    if checkpoint is None:
        several = _checkpoint_files(folder)
        what = (f"several .pt files ({', '.join(p.name for p in several)}) and none named "
                f"{' or '.join(ITERCOMP_CHECKPOINTS[reward])}; keep only the right one" if several
                else "no checkpoint")
        raise RewardLoadError(f"{reward}: {folder} has {what}. It needs {itercomp_hint(reward)}.")
    return load_imagereward_format(folder, checkpoint, roots, name=reward, offset=offset,
                                   source_hint=f"{ITERCOMP_PAGE} (the {ITERCOMP_ROLES[reward]} model)")
