"""A tiny ImageReward checkpoint folder in the real format and layout (random weights).

``ImageReward.pt`` is written by hand from the key layout of the released file (``real_layout``
spells out every key and shape independently of the pack's modules), so strict loading checks the
pack's module names against it. ``med_config.json`` has the keys of BLIP's standard med config,
``vision_config.json`` gives the ViT head count, and ``tokenizer/`` is a real BERT WordPiece folder
(``vocab.txt`` + ``tokenizer_config.json`` as bert-base-uncased ships them) with enough word pieces
that ordinary English prompts tokenize without ``[UNK]``.
"""

from __future__ import annotations

import json
import math
import string
from pathlib import Path

import torch

SPECIAL = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
WORDS = """
a an the of on in at to and with by for from under over near behind above below beside between
is are was it its this that there their his her two three four one many some very
photo picture painting drawing image portrait illustration render sketch oil watercolor digital art
cat cats dog dogs horse bird birds fish cow sheep lion tiger bear fox rabbit mouse elephant
man woman men women person people child boy girl astronaut king queen robot wizard knight
car bus bike bicycle train boat ship plane truck rocket
house city street road tree trees forest mountain mountains river lake sea ocean beach sky cloud clouds
sun moon star stars night day morning evening sunset rain snow field garden park bridge castle tower
table chair mat bed window door wall floor room kitchen book cup bowl apple apples banana flower flowers
red green blue yellow black white orange purple pink brown gray grey golden silver
big small large little tall short old young new beautiful cute happy sad dark bright colorful
sitting standing running walking flying riding eating wearing holding playing sleeping
hat shirt dress coat glasses shoes
style detailed high quality realistic photorealistic cinematic lighting 4k 8k hd masterpiece
""".split()
SUFFIXES = ["s", "es", "ed", "ing", "er", "est", "ly", "y", "ion", "ful", "ness"]
BERT_MED_KEYS = dict(  # the keys of BLIP's med_config.json that are not sizes
    architectures=["BertModel"], attention_probs_dropout_prob=0.1, hidden_act="gelu", hidden_dropout_prob=0.1,
    initializer_range=0.02, layer_norm_eps=1e-12, model_type="bert", pad_token_id=0, type_vocab_size=2,
    add_cross_attention=True,
)


def tiny_vocab() -> list[str]:
    """A WordPiece vocabulary: specials, punctuation, digits, letters (word-initial and ##), words, ##suffixes."""
    chars = list(string.punctuation) + list(string.digits) + list(string.ascii_lowercase)
    pieces = SPECIAL + chars + ["##" + c for c in string.ascii_lowercase + string.digits]
    pieces += WORDS + ["##" + s for s in SUFFIXES]
    return list(dict.fromkeys(pieces))


def write_bert_tokenizer(folder: Path) -> int:
    """vocab.txt + tokenizer_config.json (as bert-base-uncased ships them); return the vocab size."""
    folder.mkdir(parents=True, exist_ok=True)
    vocab = tiny_vocab()
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    (folder / "tokenizer_config.json").write_text(json.dumps({"do_lower_case": True, "model_max_length": 512}))
    return len(vocab)


def real_layout(
    vision_width: int = 1024, vision_layers: int = 24, patch: int = 16, image_size: int = 224, mlp_ratio: int = 4,
    hidden: int = 768, text_layers: int = 12, intermediate: int = 3072, vocab: int = 30524, max_positions: int = 512,
    head: tuple[int, ...] = (768, 1024, 128, 64, 16, 1), proj_dim: int = 256,
) -> dict[str, tuple[int, ...]]:
    """Every key of ImageReward.pt with its shape (defaults: the released ViT-L/16 + BERT-base model)."""
    shapes: dict[str, tuple[int, ...]] = {}
    v, w, m = "blip.visual_encoder.", vision_width, vision_width * mlp_ratio
    shapes[v + "cls_token"] = (1, 1, w)
    shapes[v + "pos_embed"] = (1, (image_size // patch) ** 2 + 1, w)
    shapes[v + "patch_embed.proj.weight"] = (w, 3, patch, patch)
    shapes[v + "patch_embed.proj.bias"] = (w,)
    for i in range(vision_layers):
        b = f"{v}blocks.{i}."
        for name, shape in [("norm1", (w,)), ("attn.qkv", (3 * w, w)), ("attn.proj", (w, w)), ("norm2", (w,)),
                            ("mlp.fc1", (m, w)), ("mlp.fc2", (w, m))]:
            shapes[f"{b}{name}.weight"] = shape
            shapes[f"{b}{name}.bias"] = (shape[0],)
    shapes[v + "norm.weight"] = shapes[v + "norm.bias"] = (w,)
    t, h = "blip.text_encoder.", hidden
    shapes[t + "embeddings.position_ids"] = (1, max_positions)
    shapes[t + "embeddings.word_embeddings.weight"] = (vocab, h)
    shapes[t + "embeddings.position_embeddings.weight"] = (max_positions, h)
    shapes[t + "embeddings.LayerNorm.weight"] = shapes[t + "embeddings.LayerNorm.bias"] = (h,)
    for i in range(text_layers):
        b = f"{t}encoder.layer.{i}."
        for att, kv in (("attention", h), ("crossattention", w)):
            linears = [("self.query", (h, h)), ("self.key", (h, kv)), ("self.value", (h, kv)), ("output.dense", (h, h))]
            for name, shape in linears:
                shapes[f"{b}{att}.{name}.weight"] = shape
                shapes[f"{b}{att}.{name}.bias"] = (h,)
            shapes[f"{b}{att}.output.LayerNorm.weight"] = shapes[f"{b}{att}.output.LayerNorm.bias"] = (h,)
        shapes[f"{b}intermediate.dense.weight"], shapes[f"{b}intermediate.dense.bias"] = (intermediate, h), (intermediate,)
        shapes[f"{b}output.dense.weight"], shapes[f"{b}output.dense.bias"] = (h, intermediate), (h,)
        shapes[f"{b}output.LayerNorm.weight"] = shapes[f"{b}output.LayerNorm.bias"] = (h,)
    shapes["blip.vision_proj.weight"], shapes["blip.vision_proj.bias"] = (proj_dim, w), (proj_dim,)
    shapes["blip.text_proj.weight"], shapes["blip.text_proj.bias"] = (proj_dim, h), (proj_dim,)
    for index, (fan_in, fan_out) in zip((0, 2, 4, 6, 7), zip(head[:-1], head[1:])):
        shapes[f"mlp.layers.{index}.weight"], shapes[f"mlp.layers.{index}.bias"] = (fan_out, fan_in), (fan_out,)
    return shapes


def random_state(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    """Weights scaled so activations stay O(1): the score varies with the image and gradients are not tiny."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for key, shape in shapes.items():
        if key.endswith("position_ids"):
            state[key] = torch.arange(shape[1]).unsqueeze(0)
        elif "norm" in key.lower() and key.endswith(".weight"):
            state[key] = 1.0 + 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(".bias"):
            state[key] = 0.1 * torch.randn(shape, generator=g)
        elif key.endswith(("cls_token", "pos_embed", "embeddings.weight")):
            state[key] = 0.5 * torch.randn(shape, generator=g)
        else:  # linear / conv weights: variance 1 / fan_in
            fan_in = math.prod(shape[1:])
            state[key] = torch.randn(shape, generator=g) / math.sqrt(fan_in)
    return state


def write_tiny_imagereward(
    folder: Path, seed: int = 0, vision_width: int = 64, vision_layers: int = 2, vision_heads: int = 4,
    patch: int = 32, image_size: int = 224, hidden: int = 32, text_layers: int = 2, text_heads: int = 2,
    head: tuple[int, ...] | None = None, dtype: torch.dtype = torch.float32, sidecar: bool = True,
) -> Path:
    """Write ImageReward.pt, med_config.json, vision_config.json and tokenizer/ into ``folder``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    vocab = write_bert_tokenizer(folder / "tokenizer") + 2  # BLIP adds [DEC] and [ENC]
    intermediate, max_positions = 2 * hidden, 64
    head = head or (hidden, 48, 16, 8, 4, 1)
    shapes = real_layout(vision_width, vision_layers, patch, image_size, 4, hidden, text_layers, intermediate, vocab,
                         max_positions, head, proj_dim=16)
    state = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in random_state(shapes, seed).items()}
    torch.save(state, folder / "ImageReward.pt")
    med = dict(BERT_MED_KEYS, hidden_size=hidden, intermediate_size=intermediate, max_position_embeddings=max_positions,
               num_attention_heads=text_heads, num_hidden_layers=text_layers, vocab_size=vocab,
               encoder_width=768)  # as in the real file: BLIP overrides it with the ViT width
    (folder / "med_config.json").write_text(json.dumps(med, indent=2))
    if sidecar:
        vision = dict(image_size=image_size, patch_size=patch, width=vision_width, layers=vision_layers,
                      heads=vision_heads)
        (folder / "vision_config.json").write_text(json.dumps(vision))
    return folder
