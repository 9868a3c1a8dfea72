"""HPSv2 / HPSv2.1: open_clip ViT-H-14 fine-tuned on human preferences; score = cos(image, text).

``hpsv2.1/HPS_v2.1_compressed.pt`` and ``hpsv2/HPS_v2_compressed.pt`` (HF xswu/HPSv2) hold
``{"state_dict": ...}`` in open_clip's ViT-H-14 layout. They load into this pack's own open_clip
implementation (``open_clip_model``), never through the ``open_clip_torch``/``hpsv2`` packages, and
only with ``torch.load(weights_only=True)``: a file that needs code to unpickle is refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch

from .base import RewardModel
from .errors import RewardLoadError
from .open_clip_model import (
    CONFIG_SIDECAR,
    CLIPBPETokenizer,
    OpenCLIP,
    build_open_clip,
    load_clip_tokenizer,
    read_model_config,
)

HPS_FILES = {"hpsv2.1": "HPS_v2.1_compressed.pt", "hpsv2": "HPS_v2_compressed.pt"}
HPS_SOURCE = "https://huggingface.co/xswu/HPSv2"


def load_torch_file(path: Path, name: str):
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that say what is wrong."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - refused, truncated, corrupt or not a PyTorch file
        text = str(e)
        needs_code = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if needs_code:
            raise RewardLoadError(
                f"{name}: {path} needs code to be unpickled (it refers to {needs_code.group(1)}, not only to tensors). "
                "For safety this pack only loads plain tensor checkpoints (torch.load weights_only=True), and this "
                "is not the official file: download it again from its source."
            ) from e
        reason = text.split("WeightsUnpickler error:", 1)[-1].strip() if "WeightsUnpickler error:" in text else text
        reason = next((line.strip() for line in reason.splitlines() if line.strip()), "").rstrip(".") or "no details"
        size = path.stat().st_size if path.exists() else 0
        raise RewardLoadError(
            f"{name}: could not read {path} ({size:,} bytes): {type(e).__name__}: {reason}. "
            "The file is truncated, corrupt or not a PyTorch checkpoint: download it again."
        ) from e


def unwrap_state_dict(obj, path: Path, name: str, wrapper_key: str | None = "state_dict") -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint: ``obj[wrapper_key]`` or ``obj`` itself, with a
    ``module.`` prefix (saved from DistributedDataParallel) removed."""
    if isinstance(obj, dict) and wrapper_key is not None and isinstance(obj.get(wrapper_key), dict):
        obj = obj[wrapper_key]
    if not isinstance(obj, dict) or not obj:
        raise RewardLoadError(
            f"{name}: {path} does not hold a state dict (a mapping of parameter names to tensors) but "
            f"{'an empty dict' if isinstance(obj, dict) else type(obj).__name__}. It is not this reward's checkpoint."
        )
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if not_tensors:
        shown = ", ".join(not_tensors[:5]) + (" ..." if len(not_tensors) > 5 else "")
        raise RewardLoadError(
            f"{name}: {path} is not a plain state dict: {len(not_tensors)} entries are not tensors ({shown}). "
            "It is not this reward's checkpoint."
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


class HPSReward(RewardModel):
    """``score = cos(image_features, text_features)`` of an HPS open_clip model (the loss is ``1 - score``)."""

    text_modules = ("clip.transformer", "clip.token_embedding", "clip.ln_final")

    def __init__(self, clip: OpenCLIP, tokenizer: CLIPBPETokenizer, name: str, offset: float, source: str = ""):
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name, self.offset, self.source = name, offset, source
        self.input_size = clip.image_size
        self.eval()

    def encode_text(self, prompt: str) -> torch.Tensor:
        self.warn_if_truncated(self.tokenizer.token_count(prompt), self.clip.context_length)
        ids = self.tokenizer([prompt], context_length=self.clip.context_length).to(self.param_device())
        return self.clip.encode_text(ids)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixel_values)

    def score(self, pixel_values: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        image = self.image_features(pixel_values)
        return (image * text_features.to(image.device, torch.float32)).sum(dim=-1)


def load_hps_folder(folder: Path, name: str, offset: float = 1.0) -> HPSReward:
    """Build an HPS reward from ``folder``: the checkpoint of ``name`` ("hpsv2.1" or "hpsv2"), the optional
    ``open_clip_config.json`` (head counts of a non-ViT-H-14 checkpoint) and the CLIP tokenizer."""
    folder = Path(folder)
    if name not in HPS_FILES:
        raise ValueError(f"unknown HPS version {name!r}: expected one of {', '.join(HPS_FILES)}")
    path = folder / HPS_FILES[name]
    if not path.is_file():
        raise RewardLoadError(f"{name}: {path} does not exist: download {HPS_FILES[name]} from {HPS_SOURCE}")
    state_dict = unwrap_state_dict(load_torch_file(path, name), path, name)
    sidecar = folder / CONFIG_SIDECAR
    model_cfg = read_model_config(sidecar) if sidecar.is_file() else None
    source = f"{name}: {path}" + (f" (with {sidecar.name})" if model_cfg is not None else "")
    clip = build_open_clip(state_dict, model_cfg, source)
    del state_dict
    tokenizer = load_clip_tokenizer(folder, clip.context_length, name)
    if tokenizer.max_id >= clip.config.vocab_size:
        raise RewardLoadError(
            f"{name}: the tokenizer in {folder} ({tokenizer.source}) has ids up to {tokenizer.max_id} but the model's "
            f"vocabulary has {clip.config.vocab_size} entries: the tokenizer files do not belong to this checkpoint."
        )
    return HPSReward(clip, tokenizer, name=name, offset=offset, source=str(folder))
