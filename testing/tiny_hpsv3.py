"""A tiny HPSv3 reward folder in the real format and layout (random weights, nothing downloaded).

The real folder ``models/reno_rewards/hpsv3/`` holds ``HPSv3.safetensors`` (HF MizzenAI/HPSv3: the state dict of
the authors' ``Qwen2VLRewardModelBT``, saved with transformers 4.45: ``visual.*``, ``model.*`` (the Qwen2 decoder),
``lm_head.weight``, ``rm_head.{0,3,5}.*``; the token embedding resized to the tokenizer plus ``<|Reward|>``) and the
Qwen/Qwen2-VL-7B-Instruct ``config.json`` (flat, pre-transformers-5 layout), tokenizer files (``vocab.json``,
``merges.txt``, ``tokenizer_config.json``), ``preprocessor_config.json`` and ``chat_template.json``. This writes the
same files with tiny sizes: a byte-level BPE vocabulary with Qwen2-VL's special tokens, a 2-layer decoder of width 32
and a 2-block vision tower of width 32, so the same loading code builds it (and the authors' own code can, for the
oracle test).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from .tiny_rewards import _bytes_to_unicode

CHECKPOINT = "HPSv3.safetensors"
# Qwen2's special tokens in the order (and so the id order) of the real tokenizer, after the BPE vocabulary
SPECIAL_TOKENS = ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|object_ref_start|>", "<|object_ref_end|>",
                  "<|box_start|>", "<|box_end|>", "<|quad_start|>", "<|quad_end|>", "<|vision_start|>",
                  "<|vision_end|>", "<|vision_pad|>", "<|image_pad|>", "<|video_pad|>")
MERGES = ["Ġ t", "h e", "Ġt he", "Ġ a", "i n", "o n", "a t", "e r", "Ġ i", "r e"]
# Qwen2-VL-7B-Instruct's chat template (chat_template.json / tokenizer_config.json of the HF repository)
QWEN2VL_CHAT_TEMPLATE = (
    "{% set image_count = namespace(value=0) %}{% set video_count = namespace(value=0) %}{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n{% if message['content'] is string %}{{ message['content'] }}"
    "<|im_end|>\n{% else %}{% for content in message['content'] %}{% if content['type'] == 'image' or 'image' in "
    "content or 'image_url' in content %}{% set image_count.value = image_count.value + 1 %}{% if add_vision_id %}"
    "Picture {{ image_count.value }}: {% endif %}<|vision_start|><|image_pad|><|vision_end|>{% elif content['type'] "
    "== 'video' or 'video' in content %}{% set video_count.value = video_count.value + 1 %}{% if add_vision_id %}"
    "Video {{ video_count.value }}: {% endif %}<|vision_start|><|video_pad|><|vision_end|>{% elif 'text' in content %}"
    "{{ content['text'] }}{% endif %}{% endfor %}<|im_end|>\n{% endif %}{% endfor %}{% if add_generation_prompt %}"
    "<|im_start|>assistant\n{% endif %}"
)
CLIP_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_STD = [0.26862954, 0.26130258, 0.27577711]


def write_qwen2vl_tokenizer(folder: Path) -> dict[str, int]:
    """vocab.json, merges.txt, tokenizer_config.json, chat_template.json; returns the special tokens' ids."""
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(_bytes_to_unicode().values())
    tokens = list(dict.fromkeys(chars + ["".join(m.split()) for m in MERGES]))
    vocab = {t: i for i, t in enumerate(tokens)}
    (folder / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (folder / "merges.txt").write_text("#version: 0.2\n" + "\n".join(MERGES) + "\n", encoding="utf-8")
    ids = {t: len(vocab) + i for i, t in enumerate(SPECIAL_TOKENS)}
    added = {str(i): {"content": t, "lstrip": False, "normalized": False, "rstrip": False, "single_word": False,
                      "special": True} for t, i in ids.items()}
    config = {
        "add_prefix_space": False, "added_tokens_decoder": added, "additional_special_tokens": list(SPECIAL_TOKENS[1:]),
        "bos_token": None, "chat_template": QWEN2VL_CHAT_TEMPLATE, "clean_up_tokenization_spaces": False,
        "eos_token": "<|im_end|>", "errors": "replace", "model_max_length": 32768, "pad_token": "<|endoftext|>",
        "split_special_tokens": False, "tokenizer_class": "Qwen2Tokenizer", "unk_token": None,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, ensure_ascii=False, indent=1), encoding="utf-8")
    (folder / "chat_template.json").write_text(json.dumps({"chat_template": QWEN2VL_CHAT_TEMPLATE}), encoding="utf-8")
    return ids


def tiny_qwen2vl_config(ids: dict[str, int], vocab_size: int, hidden: int = 32, layers: int = 2, heads: int = 2,
                        vision_width: int = 32, vision_depth: int = 2) -> dict:
    """Qwen2-VL-7B-Instruct's config.json (its flat, transformers-4 layout) with tiny sizes."""
    head_dim = hidden // heads
    return {
        "architectures": ["Qwen2VLForConditionalGeneration"], "attention_dropout": 0.0,
        "bos_token_id": ids["<|endoftext|>"], "eos_token_id": ids["<|im_end|>"],
        "vision_start_token_id": ids["<|vision_start|>"], "vision_end_token_id": ids["<|vision_end|>"],
        "vision_token_id": ids["<|vision_pad|>"], "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"], "hidden_act": "silu", "hidden_size": hidden,
        "initializer_range": 0.02, "intermediate_size": 2 * hidden, "max_position_embeddings": 32768,
        "max_window_layers": layers, "model_type": "qwen2_vl", "num_attention_heads": heads,
        "num_hidden_layers": layers, "num_key_value_heads": 1, "rms_norm_eps": 1e-06, "rope_theta": 1000000.0,
        "sliding_window": 32768, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
        "transformers_version": "4.41.2", "use_cache": True, "use_sliding_window": False,
        "vision_config": {"depth": vision_depth, "embed_dim": vision_width, "mlp_ratio": 2, "num_heads": 2,
                          "in_chans": 3, "hidden_size": hidden, "patch_size": 14, "spatial_merge_size": 2,
                          "spatial_patch_size": 14, "temporal_patch_size": 2},
        "rope_scaling": {"type": "mrope", "mrope_section": _mrope_sections(head_dim)},
        "vocab_size": vocab_size,
    }


def _mrope_sections(head_dim: int) -> list[int]:
    """Qwen2-VL's 16/24/24 split of head_dim/2 = 64, scaled: [2, 3, 3] for head_dim 16."""
    half = head_dim // 2
    t = half // 4
    return [t, (half - t) // 2, half - t - (half - t) // 2]


def write_preprocessor_config(folder: Path) -> None:
    config = {"min_pixels": 3136, "max_pixels": 12845056, "patch_size": 14, "temporal_patch_size": 2,
              "merge_size": 2, "image_mean": CLIP_MEAN, "image_std": CLIP_STD,
              "image_processor_type": "Qwen2VLImageProcessor", "processor_class": "Qwen2VLProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")


def tiny_hpsv3_state_dict(config: dict, rows: int, seed: int = 0, head_std: float = 0.5,
                          dtype: torch.dtype = torch.float32) -> dict[str, torch.Tensor]:
    """Random weights in the checkpoint's key layout (transformers 4.45 names), built with transformers'
    Qwen2VLForConditionalGeneration (whatever its version's names) and renamed; ``rows`` token embeddings."""
    from transformers import Qwen2VLConfig, Qwen2VLForConditionalGeneration

    cfg = Qwen2VLConfig(**{**config, "vocab_size": rows})
    torch.manual_seed(seed)
    model = Qwen2VLForConditionalGeneration(cfg).float()
    out = {}
    for key, value in model.state_dict().items():
        for new, old in (("model.language_model.", "model."), ("model.visual.", "visual."), ("visual.", "visual."),
                         ("model.", "model."), ("lm_head.", "lm_head.")):
            if key.startswith(new):
                key = old + key[len(new):]
                break
        out[key] = value
    g = torch.Generator().manual_seed(seed + 1)
    for k in list(out):  # larger random weights than the init, so images and prompts score apart
        if out[k].dim() >= 1 and "norm" not in k and not k.startswith("visual.merger.ln_q"):
            out[k] = torch.randn(out[k].shape, generator=g) * (0.2 if out[k].dim() > 1 else 0.05)
    hidden = config["hidden_size"]
    # the authors' "ranknet" head without rm_head_kwargs: Linear(hidden, 1024), ReLU, Dropout(0.05), Linear(1024, 16),
    # ReLU, Linear(16, output_dim=2): keys 0, 3, 5
    for index, (i, o) in zip((0, 3, 5), ((hidden, 1024), (1024, 16), (16, 2))):
        out[f"rm_head.{index}.weight"] = torch.randn(o, i, generator=g) * head_std / i ** 0.5 * 2
        out[f"rm_head.{index}.bias"] = torch.randn(o, generator=g) * 0.1
    return {k: v.to(dtype).contiguous() for k, v in out.items()}


def write_tiny_hpsv3(folder: Path, seed: int = 0, dtype: torch.dtype = torch.float32) -> Path:
    """The reward folder: HPSv3.safetensors + the Qwen2-VL config, tokenizer and preprocessor files."""
    from safetensors.torch import save_file

    folder = Path(folder)
    ids = write_qwen2vl_tokenizer(folder)
    n_tokens = max(ids.values()) + 1
    config = tiny_qwen2vl_config(ids, vocab_size=n_tokens + 7)  # the config's vocabulary is padded, as 152064 is
    (folder / "config.json").write_text(json.dumps(config, indent=1), encoding="utf-8")
    write_preprocessor_config(folder)
    # the authors add <|Reward|> to the tokenizer and resize the embedding to the tokenizer's length
    save_file(tiny_hpsv3_state_dict(config, n_tokens + 1, seed, dtype=dtype), str(folder / CHECKPOINT))
    return folder
