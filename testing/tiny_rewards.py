"""Tiny reward checkpoints written in the real formats and folder layout (random weights).

Used by the tests, the headless demo and the CPU benchmarks. Nothing is downloaded: the CLIP tokenizer files are a
real byte-level BPE vocabulary (every byte, with and without the end-of-word mark, a few merges and
CLIP's two special tokens) in the same ``vocab.json``/``merges.txt`` format as the real one.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

MERGES = ["t h", "th e</w>", "o n", "r e", "c a", "a t</w>", "d o", "i n", "in g</w>", "o g</w>"]
SOS, EOS = "<|startoftext|>", "<|endoftext|>"


def _bytes_to_unicode() -> dict[int, str]:
    """The reversible byte -> printable character table of byte-level BPE tokenizers."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    printable += list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def write_clip_tokenizer(folder: Path) -> int:
    """Write vocab.json, merges.txt, tokenizer_config.json, special_tokens_map.json; return vocab size."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = chars + [c + "</w>" for c in chars] + ["".join(m.split()) for m in MERGES] + [SOS, EOS]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    special = {"bos_token": SOS, "eos_token": EOS, "unk_token": EOS, "pad_token": EOS}
    (folder / "special_tokens_map.json").write_text(json.dumps(special), encoding="utf-8")
    config = {"tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "do_lower_case": True, **special}
    (folder / "tokenizer_config.json").write_text(json.dumps(config), encoding="utf-8")
    return len(vocab)


def tiny_clip_config(vocab_size: int, width: int = 32, layers: int = 2, projection: int = 16, image_size: int = 224,
                     patch: int = 32, logit_scale: float = 2.6592):
    from transformers import CLIPConfig

    eos, sos = vocab_size - 1, vocab_size - 2
    return CLIPConfig(
        text_config=dict(
            vocab_size=vocab_size, hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers,
            num_attention_heads=2, max_position_embeddings=77, bos_token_id=sos, eos_token_id=eos, pad_token_id=eos,
        ),
        vision_config=dict(
            hidden_size=width, intermediate_size=2 * width, num_hidden_layers=layers, num_attention_heads=2,
            image_size=image_size, patch_size=patch,
        ),
        projection_dim=projection,
        logit_scale_init_value=logit_scale,
    )


def write_tiny_clip_folder(folder: Path, seed: int = 0, **config_kwargs) -> Path:
    """A transformers CLIPModel folder (config.json + model.safetensors) with its tokenizer files."""
    from transformers import CLIPModel

    folder = Path(folder)
    vocab_size = write_clip_tokenizer(folder)
    torch.manual_seed(seed)
    with torch.inference_mode(False):
        model = CLIPModel(tiny_clip_config(vocab_size, **config_kwargs)).float()
        with torch.no_grad():  # a random head with the default init scores almost constantly
            for p in model.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.15)
        model.save_pretrained(str(folder), safe_serialization=True)
    return folder


ALL_REWARDS = ("imagereward", "hpsv2.1", "hpsv2", "pickscore", "clipscore", "aesthetic")


def write_reward_root(root: Path, rewards=("clipscore", "pickscore")) -> Path:
    """A ``reno_rewards`` folder with tiny checkpoints for each reward in ``rewards`` (real formats)."""
    root = Path(root)
    for seed, name in enumerate(rewards):
        folder = root / name
        if name in ("clipscore", "pickscore"):
            write_tiny_clip_folder(folder, seed=seed + 1)
        elif name == "imagereward":
            from .tiny_imagereward import write_tiny_imagereward

            write_tiny_imagereward(folder, seed=seed + 1)
        elif name in ("hpsv2.1", "hpsv2"):
            from .tiny_open_clip import write_tiny_hps

            write_tiny_hps(folder, filename="HPS_v2.1_compressed.pt" if name == "hpsv2.1" else "HPS_v2_compressed.pt",
                           seed=seed + 1)
        elif name == "aesthetic":
            from .tiny_open_clip import write_tiny_aesthetic

            write_tiny_aesthetic(folder, seed=seed + 1)
        else:
            raise ValueError(f"no tiny fixture for reward {name!r}")
    return root
