"""CLIPScore and PickScore: transformers ``CLIPModel`` folders scored as ``exp(logit_scale) * cos``."""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F

from .base import RewardModel
from .errors import RewardLoadError, compare_shapes, key_report

WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
# keys that older transformers versions saved and newer ones rebuild (harmless when unexpected)
_TOLERATED_UNEXPECTED = ("position_ids",)


class CLIPModelReward(RewardModel):
    """``score = exp(logit_scale) * cos(image_features, text_features)`` of a CLIP model."""

    text_modules = ("clip.text_model", "clip.text_projection")

    def __init__(self, clip, tokenizer, name: str, offset: float, source: str = ""):
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name, self.offset, self.source = name, offset, source
        self.max_length = int(clip.config.text_config.max_position_embeddings)
        # exp(logit_scale) as a float64-exact constant: in bf16 the scale alone would be ~1% off
        self.logit_scale_exp = float(clip.logit_scale.detach().double().exp())
        self.input_size = int(clip.config.vision_config.image_size)

    def encode_text(self, prompt: str) -> torch.Tensor:
        self.warn_if_truncated(len(self.tokenizer(prompt, truncation=False)["input_ids"]), self.max_length)
        tok = self.tokenizer(
            [prompt], padding=True, truncation=True, max_length=self.max_length, return_tensors="pt"
        )
        out = self.clip.text_model(
            input_ids=tok["input_ids"].to(self.param_device()), attention_mask=tok["attention_mask"].to(self.param_device())
        )
        feats = self.clip.text_projection(out.pooler_output)
        return F.normalize(feats.float(), dim=-1)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.clip.vision_model(pixel_values=pixel_values)
        return F.normalize(self.clip.visual_projection(out.pooler_output).float(), dim=-1)

    def score(self, pixel_values: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        image = self.image_features(pixel_values)
        cos = (image * text_features.to(image.device)).sum(dim=-1)
        return self.logit_scale_exp * cos


def safetensors_shapes(path: Path) -> dict[str, tuple[int, ...]]:
    """Every tensor's shape from a ``.safetensors`` header (8-byte little-endian length, then JSON); no tensor read.

    Raises ValueError when the header cannot be read (a truncated or foreign file)."""
    size = path.stat().st_size
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) < 8:
            raise ValueError(f"{size} bytes, shorter than a safetensors header")
        length = int.from_bytes(head, "little")
        if length > size - 8 or length > 100_000_000:
            raise ValueError(f"its header claims {length:,} bytes but the file has {size:,}")
        header = json.loads(f.read(length).decode("utf-8"))
    if not isinstance(header, dict):
        raise ValueError("its header is not a JSON object")
    return {k: tuple(int(n) for n in v["shape"]) for k, v in header.items() if k != "__metadata__"}


def checkpoint_shapes(weights: Path, name: str) -> dict[str, tuple[int, ...]] | None:
    """Tensor shapes of a CLIP folder's weights file without loading it: the safetensors header, or a memory-mapped
    weights-only ``pytorch_model.bin``; None when they cannot be read this way (transformers' own loading says why)."""
    if weights.suffix == ".safetensors":
        try:
            return safetensors_shapes(weights)
        except (OSError, ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            raise RewardLoadError(
                f"{name}: could not read {weights}: {type(e).__name__}: {e}. "
                "The file is truncated, corrupt or not a safetensors file: download it again."
            ) from e
    try:
        state_dict = torch.load(str(weights), map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # noqa: BLE001 - a legacy (not zip) file or a refused pickle: the full load reports it
        return None
    if not isinstance(state_dict, dict):
        return None
    return {k: tuple(v.shape) for k, v in state_dict.items() if isinstance(v, torch.Tensor)}


def _refuse_mismatched_shapes(folder: Path, weights: Path, name: str) -> None:
    """Compare the weights file's shapes with the CLIPModel that config.json describes, before transformers loads
    it (its own message for a size mismatch names no key); refuse with every mismatched key and both shapes."""
    from transformers import CLIPConfig, CLIPModel

    found = checkpoint_shapes(weights, name)
    if found is None:
        return
    try:
        config = CLIPConfig.from_pretrained(str(folder), local_files_only=True)
        with torch.device("meta"):  # the expected keys and shapes, without allocating anything
            expected = {k: tuple(v.shape) for k, v in CLIPModel(config).state_dict().items()}
    except Exception as e:  # noqa: BLE001 - an unreadable or foreign config.json
        raise RewardLoadError(
            f"{name}: could not load the CLIP model in {folder}: {folder / 'config.json'} does not describe a "
            f"transformers CLIPModel: {type(e).__name__}: {e}. Put the reward's own config.json in that folder."
        ) from e
    missing, unexpected, mismatched = compare_shapes(found, expected, _TOLERATED_UNEXPECTED, "checkpoint", "config.json")
    if mismatched:
        raise RewardLoadError(
            f"{name}: {weights} does not match {folder / 'config.json'}: {key_report(missing, unexpected, mismatched)}. "
            "It is probably a checkpoint of another model (or another size of CLIP); put the reward's own "
            "config.json and weights in that folder."
        )


def load_clip_folder(folder: Path, name: str, offset: float) -> CLIPModelReward:
    """Build a CLIP reward from a transformers CLIPModel folder; sizes come from its config.json."""
    from transformers import CLIPModel, CLIPTokenizer

    weights = next((folder / f for f in WEIGHT_FILES if (folder / f).is_file()), None)
    if weights is None:
        raise RewardLoadError(f"{name}: no weights in {folder}: expected {' or '.join(WEIGHT_FILES)}")
    _refuse_mismatched_shapes(folder, weights, name)
    kwargs = dict(local_files_only=True, output_loading_info=True, use_safetensors=weights.suffix == ".safetensors")
    try:
        try:
            model, info = CLIPModel.from_pretrained(str(folder), dtype=torch.float32, **kwargs)
        except TypeError:  # transformers 4.x spells it torch_dtype
            model, info = CLIPModel.from_pretrained(str(folder), torch_dtype=torch.float32, **kwargs)
    except Exception as e:  # noqa: BLE001 - turned into an actionable message
        raise RewardLoadError(
            f"{name}: could not load the CLIP model in {folder} ({weights.name}): {type(e).__name__}: {e}. "
            "The folder must hold a transformers CLIPModel (config.json + weights) for this reward; "
            "re-download the files if they may be incomplete."
        ) from e
    missing = list(info.get("missing_keys", []))
    unexpected = [k for k in info.get("unexpected_keys", []) if not k.endswith(_TOLERATED_UNEXPECTED)]
    mismatched = list(info.get("mismatched_keys", []))
    report = key_report(missing, unexpected, mismatched)
    if report:
        raise RewardLoadError(
            f"{name}: {weights} does not match its config.json: {report}. "
            "It is probably a checkpoint of another model; put the right files in that folder."
        )
    try:
        tokenizer = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise RewardLoadError(
            f"{name}: could not load the CLIP tokenizer from {folder}: {type(e).__name__}: {e}. "
            "The folder needs vocab.json and merges.txt (or tokenizer.json) of the CLIP tokenizer."
        ) from e
    with torch.no_grad():  # own the memory: transformers may leave the weights file memory-mapped (locked on Windows)
        for t in list(model.parameters()) + list(model.buffers()):
            t.data = (t.data.float() if t.is_floating_point() else t.data).clone()
    return CLIPModelReward(model, tokenizer, name=name, offset=offset, source=str(folder))
