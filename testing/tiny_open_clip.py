"""Tiny HPS and aesthetic reward checkpoints in the real file formats and folder layouts (random weights).

* ``write_tiny_hps``: ``{"state_dict": ...}`` in open_clip's CLIP layout (the HPSv2 files' layout), saved
  with ``torch.save``, plus an ``open_clip_config.json`` sidecar with the tiny head counts, plus the CLIP
  tokenizer files ``vocab.json``/``merges.txt``. Those are generated from open_clip's own BPE file when
  the package is installed (the real 49,408-token vocabulary: ids equal open_clip's tokenizer), else
  they are ``tiny_rewards``' small byte-level vocabulary.
* ``write_tiny_aesthetic``: the LAION predictor's bare ``layers.{0,2,4,6,7}`` state dict sized for a tiny
  transformers CLIP, and that CLIP in ``clip/`` (``tiny_rewards.write_tiny_clip_folder``).

Nothing here imports the pack or open_clip (its BPE file is found with ``importlib.util.find_spec``).
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import math
from pathlib import Path

import torch

HPS_FILE = "HPS_v2.1_compressed.pt"
AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
SOS, EOS = "<|startoftext|>", "<|endoftext|>"


# -- tokenizer files ----------------------------------------------------------------------------------

def open_clip_bpe_path() -> Path | None:
    """open_clip's ``bpe_simple_vocab_16e6.txt.gz`` if the package is installed (not imported)."""
    spec = importlib.util.find_spec("open_clip")
    for location in (spec.submodule_search_locations or []) if spec else []:
        path = Path(location) / "bpe_simple_vocab_16e6.txt.gz"
        if path.is_file():
            return path
    return None


def _byte_chars() -> list[str]:
    """The 256 byte characters of byte-level BPE in vocabulary order (printable bytes first)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    others = [b for b in range(256) if b not in keep]
    return [chr(b) for b in keep] + [chr(256 + k) for k in range(len(others))]


def write_open_clip_tokenizer_files(folder: Path, bpe_gz: Path) -> int:
    """``vocab.json`` + ``merges.txt`` (the format of HF laion/CLIP-ViT-H-14-laion2B-s32B-b79K) built from
    OpenAI CLIP's BPE file; returns the vocabulary size (49,408)."""
    lines = gzip.open(bpe_gz).read().decode("utf-8").split("\n")
    merges = lines[1 : 49152 - 256 - 2 + 1]
    chars = _byte_chars()
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in merges] + [SOS, EOS]
    vocab = {t: i for i, t in enumerate(tokens)}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(merges) + "\n", encoding="utf-8")
    return len(vocab)


# -- HPS ----------------------------------------------------------------------------------------------

def tiny_open_clip_config(vocab_size: int = 49408, embed_dim: int = 32, width: int = 64, layers: int = 2,
                          vision_heads: int = 2, text_heads: int = 2, patch_size: int = 32, image_size: int = 224,
                          context_length: int = 77) -> dict:
    """An open_clip model config (the ``open_clip_config.json`` sidecar format) of a tiny ViT CLIP."""
    return {
        "embed_dim": embed_dim,
        "vision_cfg": {"image_size": image_size, "layers": layers, "width": width,
                       "head_width": width // vision_heads, "patch_size": patch_size},
        "text_cfg": {"context_length": context_length, "vocab_size": vocab_size, "width": width,
                     "heads": text_heads, "layers": layers},
    }


def _block(sd: dict, prefix: str, width: int, gen: torch.Generator, std: float) -> None:
    def randn(*shape, scale=std):
        return torch.randn(*shape, generator=gen) * scale

    sd[prefix + "ln_1.weight"] = 1 + randn(width, scale=0.1)
    sd[prefix + "ln_1.bias"] = randn(width, scale=0.1)
    sd[prefix + "attn.in_proj_weight"] = randn(3 * width, width)
    sd[prefix + "attn.in_proj_bias"] = randn(3 * width, scale=0.05)
    sd[prefix + "attn.out_proj.weight"] = randn(width, width)
    sd[prefix + "attn.out_proj.bias"] = randn(width, scale=0.05)
    sd[prefix + "ln_2.weight"] = 1 + randn(width, scale=0.1)
    sd[prefix + "ln_2.bias"] = randn(width, scale=0.1)
    sd[prefix + "mlp.c_fc.weight"] = randn(4 * width, width)
    sd[prefix + "mlp.c_fc.bias"] = randn(4 * width, scale=0.05)
    sd[prefix + "mlp.c_proj.weight"] = randn(width, 4 * width)
    sd[prefix + "mlp.c_proj.bias"] = randn(width, scale=0.05)


def tiny_open_clip_state_dict(config: dict, seed: int = 0, std: float = 0.15) -> dict[str, torch.Tensor]:
    """Random weights in open_clip's ``CLIP`` state-dict layout (its key order too) for ``config``.

    ``std`` is larger than open_clip's init so that different images get clearly different scores."""
    gen = torch.Generator().manual_seed(seed)
    v, t, e = config["vision_cfg"], config["text_cfg"], config["embed_dim"]
    vw, tw, patch = v["width"], t["width"], v["patch_size"]
    grid = v["image_size"] // patch

    def randn(*shape, scale=std):
        return torch.randn(*shape, generator=gen) * scale

    sd: dict[str, torch.Tensor] = {
        "positional_embedding": randn(t["context_length"], tw, scale=0.1),
        "text_projection": randn(tw, e, scale=tw**-0.5),
        "logit_scale": torch.tensor(math.log(1 / 0.07)),
        "visual.class_embedding": randn(vw, scale=0.5),
        "visual.positional_embedding": randn(grid * grid + 1, vw, scale=0.1),
        "visual.proj": randn(vw, e, scale=vw**-0.5),
        "visual.conv1.weight": randn(vw, 3, patch, patch, scale=0.02),
        "visual.ln_pre.weight": 1 + randn(vw, scale=0.1),
        "visual.ln_pre.bias": randn(vw, scale=0.1),
    }
    for i in range(v["layers"]):
        _block(sd, f"visual.transformer.resblocks.{i}.", vw, gen, std)
    sd["visual.ln_post.weight"] = 1 + randn(vw, scale=0.1)
    sd["visual.ln_post.bias"] = randn(vw, scale=0.1)
    for i in range(t["layers"]):
        _block(sd, f"transformer.resblocks.{i}.", tw, gen, std)
    sd["token_embedding.weight"] = randn(t["vocab_size"], tw, scale=0.5)
    sd["ln_final.weight"] = 1 + randn(tw, scale=0.1)
    sd["ln_final.bias"] = randn(tw, scale=0.1)
    return sd


def write_tiny_hps(folder, filename: str = HPS_FILE, seed: int = 0, tokenizer: str = "auto", sidecar: bool = True,
                   dtype: torch.dtype = torch.float32, **config_kwargs) -> Path:
    """An HPS reward folder: ``filename`` (``{"state_dict": ...}``, open_clip layout), ``open_clip_config.json``
    (unless ``sidecar=False``) and tokenizer files.

    ``tokenizer``: "open_clip" (``vocab.json``/``merges.txt`` from open_clip's BPE file), "bundled" (no
    files: the loader falls back on open_clip's BPE file), "tiny" (``tiny_rewards``' small vocabulary),
    "auto" ("open_clip" when open_clip is installed, else "tiny").
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    bpe = open_clip_bpe_path()
    if tokenizer == "auto":
        tokenizer = "open_clip" if bpe is not None else "tiny"
    if tokenizer == "open_clip":
        if bpe is None:
            raise RuntimeError("open_clip is not installed: its BPE file is needed for tokenizer='open_clip'")
        vocab_size = write_open_clip_tokenizer_files(folder, bpe)
    elif tokenizer == "bundled":
        vocab_size = 49408
    elif tokenizer == "tiny":
        from .tiny_rewards import write_clip_tokenizer

        vocab_size = write_clip_tokenizer(folder)
    else:
        raise ValueError(f"unknown tokenizer option {tokenizer!r}")
    config = tiny_open_clip_config(vocab_size=vocab_size, **config_kwargs)
    with torch.inference_mode(False):
        sd = {k: v.to(dtype) for k, v in tiny_open_clip_state_dict(config, seed=seed).items()}
    torch.save({"state_dict": sd}, folder / filename)
    if sidecar:
        (folder / "open_clip_config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    return folder


# -- aesthetic ------------------------------------------------------------------------------------------

def tiny_aesthetic_state_dict(in_dim: int, hidden=(64, 32, 16, 8), seed: int = 0) -> dict[str, torch.Tensor]:
    """The LAION predictor's ``layers.{0,2,4,6,7}`` (Linear layers of an nn.Sequential with Dropouts at
    1, 3, 5), random. The real sizes are 768 -> 1024 -> 128 -> 64 -> 16 -> 1."""
    gen = torch.Generator().manual_seed(seed)
    dims = [in_dim, *hidden, 1]
    sd = {}
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), zip(dims, dims[1:])):
        # a gain above 1 per layer: with no activations the head is linear, and the default init makes it
        # nearly constant on unit-norm inputs
        sd[f"layers.{index}.weight"] = torch.randn(fan_out, fan_in, generator=gen) * (2.0 / fan_in**0.5)
        sd[f"layers.{index}.bias"] = torch.randn(fan_out, generator=gen) * 0.1
    return sd


def write_tiny_aesthetic(folder, seed: int = 0, dtype: torch.dtype = torch.float32, **clip_kwargs) -> Path:
    """An aesthetic reward folder: the predictor file + ``clip/`` (a tiny transformers CLIPModel folder)."""
    from .tiny_rewards import write_tiny_clip_folder

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    clip_dir = write_tiny_clip_folder(folder / "clip", seed=seed, **clip_kwargs)
    projection = json.loads((clip_dir / "config.json").read_text())["projection_dim"]
    with torch.inference_mode(False):
        sd = {k: v.to(dtype) for k, v in tiny_aesthetic_state_dict(projection, seed=seed).items()}
    torch.save(sd, folder / AESTHETIC_FILE)
    return folder
