"""open_clip's CLIP (ViT image tower + causal text transformer) in plain PyTorch, and its BPE tokenizer.

Rewards built on open_clip checkpoints (HPSv2 / HPSv2.1) load here without the ``open_clip_torch``
package, which pulls ``timm`` and ``torchvision`` and fights other ComfyUI packs over their versions.

* ``OpenCLIP``: its ``state_dict()`` keys and shapes are open_clip's ``CLIP`` ones exactly (ViT-H-14:
  686 keys, 986,109,441 parameters; like open_clip, the causal mask is not part of the state dict).
  The architecture is read from the checkpoint's tensor shapes; the head counts, which no tensor
  shows, come from an optional open_clip model config (``open_clip_config.json``) and otherwise
  default to ViT-H-14's.
* ``CLIPBPETokenizer``: open_clip's ``SimpleTokenizer`` (the OpenAI CLIP tokenizer): same cleaning,
  same byte-level BPE, same ids, context 77, truncation keeping the end token last, zero padding.
"""

from __future__ import annotations

import gzip
import html
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import RewardLoadError

log = logging.getLogger(__name__)

CONFIG_SIDECAR = "open_clip_config.json"
LAION_CLIP_H = "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K"

# open_clip's model config of ViT-H-14 (open_clip/model_configs/ViT-H-14.json), the HPS architecture
VIT_H_14 = {
    "embed_dim": 1024,
    "vision_cfg": {"image_size": 224, "layers": 32, "width": 1280, "head_width": 80, "patch_size": 14},
    "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 1024, "heads": 16, "layers": 24},
}
# open_clip's dataclass defaults, used when a config file leaves a head count out
_OPEN_CLIP_VISION_HEAD_WIDTH = 64
_OPEN_CLIP_TEXT_HEADS = 8

# open_clip options this implementation does not have, with the value it assumes. Options that change
# the state dict's keys (layer scale, attentional pooling, HF or timm towers, ...) are caught by the
# strict key check instead; these ones would silently change the computation.
_UNSUPPORTED_VISION = {
    "pool_type": "tok", "final_ln_after_pool": False, "pos_embed_type": "learnable", "act_kwargs": None,
    "norm_kwargs": None, "attentional_pool": False, "timm_model_name": None, "block_type": None,
    "qk_norm": False, "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False,
    "scale_attn": False, "scale_fc": False, "no_ln_pre": False,
}
_UNSUPPORTED_TEXT = {
    "pool_type": "argmax", "final_ln_after_pool": False, "no_causal_mask": False, "act_kwargs": None,
    "norm_kwargs": None, "hf_model_name": None, "hf_tokenizer_name": None, "embed_cls": False,
    "proj_type": "linear", "proj_bias": False, "block_type": None, "qk_norm": False,
    "scaled_cosine_attn": False, "scale_heads": False, "scale_attn_inner": False, "scale_attn": False,
    "scale_fc": False, "tokenizer_mode": None,
}
_UNSUPPORTED_TOP = {"custom_text": False, "init_logit_bias": None}


# -- architecture ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class OpenCLIPConfig:
    """The sizes of an open_clip ViT CLIP (everything ``OpenCLIP`` needs)."""

    embed_dim: int
    image_size: int
    patch_size: int
    grid: int
    vision_width: int
    vision_layers: int
    vision_heads: int
    vision_mlp: int
    context_length: int
    vocab_size: int
    text_width: int
    text_layers: int
    text_heads: int
    text_mlp: int
    quick_gelu: bool = False


class LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 and cast back (safe when the towers run in fp16/bf16)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = None if self.weight is None else self.weight.float()
        b = None if self.bias is None else self.bias.float()
        return F.layer_norm(x.float(), self.normalized_shape, w, b, self.eps).to(x.dtype)


class QuickGELU(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(1.702 * x)


class SelfAttention(nn.Module):
    """Multi-head self-attention with ``nn.MultiheadAttention``'s parameter names (packed q/k/v)."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        if heads < 1 or width % heads:
            raise ValueError(f"{heads} attention heads do not divide the width {width}")
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.empty(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)
        nn.init.zeros_(self.in_proj_bias)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        b, n, d = x.shape
        qkv = F.linear(x, self.in_proj_weight, self.in_proj_bias)
        q, k, v = qkv.view(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, n, d))


class MLP(nn.Module):
    def __init__(self, width: int, hidden: int, quick_gelu: bool):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.gelu = QuickGELU() if quick_gelu else nn.GELU()
        self.c_proj = nn.Linear(hidden, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.c_proj(self.gelu(self.c_fc(x)))


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, mlp_width: int, quick_gelu: bool, causal: bool):
        super().__init__()
        self.causal = causal
        self.ln_1 = LayerNorm(width)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = LayerNorm(width)
        self.mlp = MLP(width, mlp_width, quick_gelu)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln_1(x), self.causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    """A stack of residual blocks."""

    def __init__(self, width: int, layers: int, heads: int, mlp_width: int, quick_gelu: bool, causal: bool):
        super().__init__()
        self.resblocks = nn.ModuleList(
            [ResidualAttentionBlock(width, heads, mlp_width, quick_gelu, causal) for _ in range(layers)]
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.resblocks:
            x = block(x)
        return x


class VisionTransformer(nn.Module):
    """open_clip's ``VisionTransformer`` with its default options (class-token pooling, LayerNorm
    before the blocks and over all tokens after them, linear projection)."""

    def __init__(self, cfg: OpenCLIPConfig):
        super().__init__()
        w = cfg.vision_width
        scale = w**-0.5
        self.conv1 = nn.Conv2d(3, w, kernel_size=cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(scale * torch.randn(w))
        self.positional_embedding = nn.Parameter(scale * torch.randn(cfg.grid * cfg.grid + 1, w))
        self.ln_pre = LayerNorm(w)
        self.transformer = Transformer(w, cfg.vision_layers, cfg.vision_heads, cfg.vision_mlp, cfg.quick_gelu, False)
        self.ln_post = LayerNorm(w)
        self.proj = nn.Parameter(scale * torch.randn(w, cfg.embed_dim))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        x = self.conv1(pixel_values.to(self.conv1.weight.dtype))  # (B, width, grid, grid)
        x = x.flatten(2).transpose(1, 2)  # (B, grid*grid, width)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat([cls, x], dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        x = self.ln_post(x)[:, 0]
        return x @ self.proj


class OpenCLIP(nn.Module):
    """open_clip's ``CLIP`` (ViT image tower, causal text transformer) with the same state-dict keys.

    ``encode_image``/``encode_text`` return float32 features, L2-normalized by default. The towers
    run in the module's dtype (the caller may cast it to fp16/bf16 on a GPU).
    """

    def __init__(self, cfg: OpenCLIPConfig):
        super().__init__()
        self.config = cfg
        w = cfg.text_width
        # registered in open_clip's order, so that even the state dict's key order is the same
        self.visual = VisionTransformer(cfg)
        self.transformer = Transformer(w, cfg.text_layers, cfg.text_heads, cfg.text_mlp, cfg.quick_gelu, True)
        self.token_embedding = nn.Embedding(cfg.vocab_size, w)
        self.positional_embedding = nn.Parameter(torch.empty(cfg.context_length, w))
        self.ln_final = LayerNorm(w)
        self.text_projection = nn.Parameter(torch.empty(w, cfg.embed_dim))
        self.logit_scale = nn.Parameter(torch.tensor(2.6592))  # log(1 / 0.07), as open_clip
        nn.init.normal_(self.token_embedding.weight, std=0.02)
        nn.init.normal_(self.positional_embedding, std=0.01)
        nn.init.normal_(self.text_projection, std=w**-0.5)

    @property
    def image_size(self) -> int:
        return self.config.image_size

    @property
    def context_length(self) -> int:
        return self.config.context_length

    def encode_image(self, pixel_values: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        feats = self.visual(pixel_values).float()
        return F.normalize(feats, dim=-1) if normalize else feats

    def encode_text(self, input_ids: torch.Tensor, normalize: bool = True) -> torch.Tensor:
        pos = self.positional_embedding[: input_ids.shape[1]]
        x = self.token_embedding(input_ids) + pos.to(self.token_embedding.weight.dtype)
        x = self.ln_final(self.transformer(x))
        # pool at the end token: the highest id of each sequence (open_clip's "argmax" pooling)
        x = x[torch.arange(x.shape[0], device=x.device), input_ids.argmax(dim=-1)]
        feats = (x @ self.text_projection).float()
        return F.normalize(feats, dim=-1) if normalize else feats


# -- architecture from a checkpoint --------------------------------------------------------------

_REQUIRED_KEYS = (
    "visual.conv1.weight", "visual.positional_embedding", "visual.proj", "visual.class_embedding",
    "token_embedding.weight", "positional_embedding", "text_projection", "ln_final.weight",
    "visual.transformer.resblocks.0.mlp.c_fc.weight", "transformer.resblocks.0.mlp.c_fc.weight",
)


def _count_blocks(keys, prefix: str) -> int:
    indices = set()
    for k in keys:
        if k.startswith(prefix):
            head = k[len(prefix):].split(".", 1)[0]
            if head.isdigit():
                indices.add(int(head))
    return max(indices) + 1 if indices else 0


def _heads(section: dict, width: int, kind: str, source: str, default: bool) -> int:
    origin = "ViT-H-14's (the default without an open_clip_config.json)" if default else "the model config's"
    if kind == "vision":
        if section.get("head_width") is None and section.get("heads") is not None:
            heads = int(section["heads"])  # not an open_clip field, accepted for convenience
            what = f"{origin} {heads} heads"
        else:
            head_width = int(section.get("head_width") or _OPEN_CLIP_VISION_HEAD_WIDTH)
            heads = width // head_width if head_width > 0 else 0  # as open_clip computes it
            what = f"{origin} head width {head_width}"
    else:
        heads = int(section.get("heads", _OPEN_CLIP_TEXT_HEADS))
        what = f"{origin} {heads} heads"
    if heads < 1 or width % heads:
        raise RewardLoadError(
            f"{source}: the {kind} tower's width {width} does not fit {what}. "
            f"Head counts are not stored in the checkpoint: put an {CONFIG_SIDECAR} (open_clip's model-config "
            "format: embed_dim, vision_cfg {width, layers, head_width, patch_size, image_size}, "
            "text_cfg {width, layers, heads, context_length, vocab_size}) beside it."
        )
    return heads


def _check_supported(section: dict, unsupported: dict, where: str, source: str) -> None:
    for key, default in unsupported.items():
        value = section.get(key, default)
        if value != default and not (default is None and value in ({}, "")):
            raise RewardLoadError(
                f"{source}: {where}{key}={value!r} is an open_clip option this pack does not implement "
                f"(it supports {key}={default!r})."
            )


def _check_equal(cfg_value, actual: int, what: str, source: str) -> None:
    if cfg_value is not None and int(cfg_value) != actual:
        raise RewardLoadError(f"{source}: the model config says {what}={cfg_value} but the checkpoint has {actual}.")


def read_model_config(path: Path) -> dict:
    """An open_clip model config: a bare one, or a Hub ``open_clip_config.json`` (``{"model_cfg": ...}``)."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RewardLoadError(f"could not read {path}: {type(e).__name__}: {e}") from e
    if isinstance(data, dict) and isinstance(data.get("model_cfg"), dict):
        data = data["model_cfg"]
    if not isinstance(data, dict) or not isinstance(data.get("vision_cfg", {}), dict) \
            or not isinstance(data.get("text_cfg", {}), dict):
        raise RewardLoadError(
            f"{path} is not an open_clip model config (a JSON object with embed_dim, vision_cfg, text_cfg)."
        )
    return data


def config_from_state_dict(state_dict: dict, model_cfg: dict | None = None, source: str = "checkpoint") -> OpenCLIPConfig:
    """Read an open_clip ViT CLIP's sizes from its tensors; head counts (and QuickGELU) from ``model_cfg``
    (open_clip's model-config format) or, without one, ViT-H-14's."""
    missing = [k for k in _REQUIRED_KEYS if k not in state_dict]
    if missing:
        prefixes = sorted({k.split(".", 1)[0] for k in state_dict})
        shown = ", ".join(prefixes[:10]) + (" ..." if len(prefixes) > 10 else "")
        raise RewardLoadError(
            f"{source} is not an open_clip ViT CLIP checkpoint (no {', '.join(missing[:4])}"
            f"{' ...' if len(missing) > 4 else ''}); its keys start with: {shown or 'nothing (empty)'}. "
            "It is probably the checkpoint of another model."
        )
    cfg = VIT_H_14 if model_cfg is None else model_cfg
    vcfg, tcfg = dict(cfg.get("vision_cfg") or {}), dict(cfg.get("text_cfg") or {})
    if model_cfg is not None:
        _check_supported(cfg, _UNSUPPORTED_TOP, "", source)
        _check_supported(vcfg, _UNSUPPORTED_VISION, "vision_cfg.", source)
        _check_supported(tcfg, _UNSUPPORTED_TEXT, "text_cfg.", source)
        if isinstance(vcfg.get("layers"), (list, tuple)):
            raise RewardLoadError(f"{source}: ResNet image towers are not supported (vision_cfg.layers is a list).")

    def shape(key):
        return tuple(state_dict[key].shape)

    conv = shape("visual.conv1.weight")
    if len(conv) != 4 or conv[1] != 3 or conv[2] != conv[3]:
        raise RewardLoadError(f"{source}: visual.conv1.weight has shape {conv}, not (width, 3, patch, patch).")
    vision_width, patch = conv[0], conv[2]
    n_pos = shape("visual.positional_embedding")[0]
    grid = int(round((n_pos - 1) ** 0.5))
    if grid * grid + 1 != n_pos:
        raise RewardLoadError(f"{source}: visual.positional_embedding has {n_pos} rows, not 1 + a square grid.")
    image_size = grid * patch
    if vcfg.get("image_size") is not None:
        size = vcfg["image_size"]
        size = int(size[0] if isinstance(size, (list, tuple)) else size)
        if size // patch != grid:
            raise RewardLoadError(
                f"{source}: the model config says image_size={size} but the checkpoint's {grid}x{grid} patch grid "
                f"of {patch}-pixel patches needs {image_size}."
            )
        image_size = size
    proj = shape("visual.proj")
    text_width = shape("ln_final.weight")[0]
    context_length, _ = shape("positional_embedding")
    vocab_size = shape("token_embedding.weight")[0]
    config = OpenCLIPConfig(
        embed_dim=proj[-1],
        image_size=image_size,
        patch_size=patch,
        grid=grid,
        vision_width=vision_width,
        vision_layers=_count_blocks(state_dict, "visual.transformer.resblocks."),
        vision_heads=_heads(vcfg, vision_width, "vision", source, model_cfg is None),
        vision_mlp=shape("visual.transformer.resblocks.0.mlp.c_fc.weight")[0],
        context_length=context_length,
        vocab_size=vocab_size,
        text_width=text_width,
        text_layers=_count_blocks(state_dict, "transformer.resblocks."),
        text_heads=_heads(tcfg, text_width, "text", source, model_cfg is None),
        text_mlp=shape("transformer.resblocks.0.mlp.c_fc.weight")[0],
        quick_gelu=bool(cfg.get("quick_gelu", False)),
    )
    if model_cfg is not None:
        _check_equal(cfg.get("embed_dim"), config.embed_dim, "embed_dim", source)
        for section, prefix, pairs in (
            (vcfg, "vision_cfg.", (("width", vision_width), ("layers", config.vision_layers), ("patch_size", patch))),
            (tcfg, "text_cfg.", (("width", text_width), ("layers", config.text_layers),
                                 ("context_length", context_length), ("vocab_size", vocab_size))),
        ):
            for key, actual in pairs:
                _check_equal(section.get(key), actual, prefix + key, source)
    return config


def _describe(keys: list[str], label: str) -> str:
    shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
    return f"{len(keys)} {label} key(s): {shown}"


def build_open_clip(state_dict: dict, model_cfg: dict | None = None, source: str = "checkpoint") -> OpenCLIP:
    """An ``OpenCLIP`` holding ``state_dict`` (strictly: every key, no extra, same shapes), float32,
    frozen, in eval mode. The tensors of ``state_dict`` are converted in place to float32."""
    try:
        config = config_from_state_dict(state_dict, model_cfg, source)
    except (TypeError, ValueError, AttributeError, IndexError) as e:  # e.g. "heads": "sixteen" in the config
        raise RewardLoadError(f"{source}: malformed model config or checkpoint: {type(e).__name__}: {e}") from e
    with torch.device("meta"):
        model = OpenCLIP(config)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items() if k in state_dict and tuple(state_dict[k].shape) != tuple(v.shape)
    ]
    if missing or unexpected or mismatched:
        parts = [_describe(keys, label) for label, keys in
                 (("missing", missing), ("unexpected", unexpected), ("mismatched", mismatched)) if keys]
        raise RewardLoadError(
            f"{source} does not match the open_clip architecture read from its own shapes "
            f"({config.vision_layers}+{config.text_layers} blocks): " + "; ".join(parts)
            + ". It is probably a checkpoint of another model, or an incomplete file."
        )
    for k in list(state_dict):
        state_dict[k] = state_dict[k].float()  # half-precision checkpoints load into a float32 model
    model.load_state_dict(state_dict, strict=True, assign=True)
    return model.eval().requires_grad_(False)


# -- tokenizer -------------------------------------------------------------------------------------

_SOT, _EOT = "<start_of_text>", "<end_of_text>"  # open_clip's names (and what its pattern matches)
_HF_SOT, _HF_EOT = "<|startoftext|>", "<|endoftext|>"  # their names in vocab.json / tokenizer.json
_BPE_GZ = "bpe_simple_vocab_16e6.txt.gz"
_N_MERGES = 49152 - 256 - 2  # the merges open_clip (and OpenAI CLIP) use from the gz file


def _bytes_to_unicode() -> dict[int, str]:
    """Byte -> printable character table of byte-level BPE: printable bytes map to themselves, the others
    to chr(256 + k). The order matters: the vocabulary starts with these characters in this order."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {b: chr(b) for b in keep}
    others = [b for b in range(256) if b not in table]
    table.update({b: chr(256 + k) for k, b in enumerate(others)})
    return table


def _clean(text: str) -> str:
    """open_clip's "lower" cleaning: ftfy (when installed), HTML unescape twice, whitespace, lower case."""
    try:
        import ftfy
    except ImportError:  # optional, as in transformers' CLIP tokenizer
        pass
    else:
        text = ftfy.fix_text(text)
    text = html.unescape(html.unescape(text)).strip()
    return " ".join(text.split()).strip().lower()


class CLIPBPETokenizer:
    """The CLIP tokenizer with open_clip's ``SimpleTokenizer`` behaviour (identical ids).

    ``tokenizer(texts)`` -> (N, context_length) int64 ids: start token, BPE ids, end token, zeros;
    a text that does not fit is cut and its last kept id replaced by the end token.
    """

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]], sot_id: int, eot_id: int,
                 context_length: int = 77, source: str = ""):
        import regex  # a transformers dependency; stdlib re lacks \p{L}

        self.encoder = encoder
        self.ranks = {m: i for i, m in enumerate(merges)}
        self.sot_id, self.eot_id = sot_id, eot_id
        self.context_length = context_length
        self.source = source
        self.byte_encoder = _bytes_to_unicode()
        self._special = {_SOT: sot_id, _EOT: eot_id}
        self._pattern = regex.compile(
            rf"{_SOT}|{_EOT}|'s|'t|'re|'ve|'m|'ll|'d|[\p{{L}}]+|[\p{{N}}]|[^\s\p{{L}}\p{{N}}]+", regex.IGNORECASE
        )
        self._cache: dict[str, list[int]] = {}
        missing = [c + suffix for c in self.byte_encoder.values() for suffix in ("", "</w>") if c + suffix not in encoder]
        if missing:
            raise RewardLoadError(
                f"{source}: not a CLIP byte-level BPE vocabulary ({len(missing)} byte tokens missing, e.g. {missing[0]!r})"
            )

    @property
    def max_id(self) -> int:
        return max(max(self.encoder.values()), self.sot_id, self.eot_id)

    # -- construction --
    @classmethod
    def from_vocab_merges(cls, vocab_path: Path, merges_path: Path, context_length: int = 77) -> CLIPBPETokenizer:
        """From the ``vocab.json`` + ``merges.txt`` of a transformers CLIP tokenizer."""
        source = f"{vocab_path} + {merges_path.name}"
        try:
            vocab = json.loads(Path(vocab_path).read_text(encoding="utf-8"))
            lines = Path(merges_path).read_text(encoding="utf-8").splitlines()
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RewardLoadError(f"could not read the CLIP tokenizer files {source}: {type(e).__name__}: {e}") from e
        merges = [tuple(line.split()) for line in lines if line.strip() and not line.startswith("#version")]
        return cls._from_tables(vocab, merges, context_length, source)

    @classmethod
    def from_tokenizer_json(cls, path: Path, context_length: int = 77) -> CLIPBPETokenizer:
        """From a ``tokenizer.json`` (a fast CLIP tokenizer: its BPE model holds the vocab and merges)."""
        try:
            model = json.loads(Path(path).read_text(encoding="utf-8"))["model"]
            vocab, raw = model["vocab"], model["merges"]
        except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError) as e:
            raise RewardLoadError(f"could not read the CLIP tokenizer file {path}: {type(e).__name__}: {e}") from e
        merges = [tuple(m.split()) if isinstance(m, str) else tuple(m) for m in raw]
        return cls._from_tables(vocab, merges, context_length, str(path))

    @classmethod
    def from_bpe_gz(cls, path: Path, context_length: int = 77) -> CLIPBPETokenizer:
        """From OpenAI CLIP's ``bpe_simple_vocab_16e6.txt.gz`` (the file open_clip ships), as open_clip builds it."""
        try:
            lines = gzip.open(path).read().decode("utf-8").split("\n")
        except (OSError, EOFError, UnicodeDecodeError) as e:
            raise RewardLoadError(f"could not read the CLIP BPE file {path}: {type(e).__name__}: {e}") from e
        merges = [tuple(line.split()) for line in lines[1:_N_MERGES + 1]]
        chars = list(_bytes_to_unicode().values())
        tokens = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [_SOT, _EOT]
        encoder = {t: i for i, t in enumerate(tokens)}
        return cls(encoder, merges, encoder[_SOT], encoder[_EOT], context_length, str(path))

    @classmethod
    def _from_tables(cls, vocab, merges, context_length, source) -> CLIPBPETokenizer:
        if not isinstance(vocab, dict) or any(len(m) != 2 for m in merges):
            raise RewardLoadError(f"{source}: not a CLIP BPE tokenizer (a token -> id map and 'a b' merge lines)")
        ids = {}
        for name, alias in ((_HF_SOT, _SOT), (_HF_EOT, _EOT)):
            found = vocab.get(name, vocab.get(alias))
            if found is None:
                raise RewardLoadError(f"{source}: the vocabulary has no {name} token: not a CLIP tokenizer")
            ids[alias] = int(found)
        return cls({str(k): int(v) for k, v in vocab.items()}, [tuple(m) for m in merges],
                   ids[_SOT], ids[_EOT], context_length, source)

    # -- encoding --
    def _bpe(self, word: str) -> list[int]:
        cached = self._cache.get(word)
        if cached is not None:
            return cached
        parts = [*word[:-1], word[-1] + "</w>"]
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        try:
            ids = [self.encoder[p] for p in parts]
        except KeyError as e:
            raise RewardLoadError(f"{self.source}: the BPE merges produce {e.args[0]!r}, which is not in the vocabulary") from None
        if len(self._cache) < 50_000:
            self._cache[word] = ids
        return ids

    def encode(self, text: str) -> list[int]:
        """BPE ids of ``text``, without the start and end tokens."""
        ids: list[int] = []
        for piece in self._pattern.findall(_clean(text)):
            special = self._special.get(piece)
            if special is not None:
                ids.append(special)
            else:
                ids.extend(self._bpe("".join(self.byte_encoder[b] for b in piece.encode("utf-8"))))
        return ids

    def token_count(self, text: str) -> int:
        """Length of ``text``'s sequence with the start and end tokens, before truncation."""
        return len(self.encode(text)) + 2

    def __call__(self, texts: str | list[str], context_length: int | None = None) -> torch.Tensor:
        texts = [texts] if isinstance(texts, str) else list(texts)
        n = context_length or self.context_length
        out = torch.zeros(len(texts), n, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot_id, *self.encode(text), self.eot_id]
            if len(ids) > n:
                ids = ids[:n]
                ids[-1] = self.eot_id
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def bundled_bpe_path() -> Path | None:
    """open_clip's ``bpe_simple_vocab_16e6.txt.gz`` if the package is installed (it is not imported)."""
    try:
        spec = importlib.util.find_spec("open_clip")
    except (ImportError, ValueError):
        return None
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / _BPE_GZ
        if path.is_file():
            return path
    return None


def load_clip_tokenizer(folder: Path, context_length: int = 77, name: str = "reward") -> CLIPBPETokenizer:
    """The CLIP tokenizer for an open_clip reward in ``folder``.

    In order: ``vocab.json`` + ``merges.txt`` in the folder (the files of laion/CLIP-ViT-H-14-laion2B-s32B-b79K),
    ``tokenizer.json`` in the folder, then the BPE file inside an installed open_clip package.
    """
    folder = Path(folder)
    vocab, merges, tok_json = folder / "vocab.json", folder / "merges.txt", folder / "tokenizer.json"
    if vocab.is_file() and merges.is_file():
        return CLIPBPETokenizer.from_vocab_merges(vocab, merges, context_length)
    if tok_json.is_file():
        return CLIPBPETokenizer.from_tokenizer_json(tok_json, context_length)
    bundled = bundled_bpe_path()
    if bundled is not None:
        log.info("%s: no vocab.json/merges.txt in %s; using open_clip's BPE file %s", name, folder, bundled)
        return CLIPBPETokenizer.from_bpe_gz(bundled, context_length)
    present = [p.name for p in (vocab, merges) if p.is_file()]
    raise RewardLoadError(
        f"{name}: the CLIP tokenizer files are missing: put vocab.json and merges.txt in {folder} "
        f"(from {LAION_CLIP_H}/tree/main)" + (f"; only {present[0]} is there" if present else "") + "."
    )
