"""LAION aesthetic predictor: an MLP on the L2-normalized OpenAI CLIP ViT-L/14 image embedding.

Files (in the ``aesthetic`` reward folder):

* ``sac+logos+ava1-l14-linearMSE.pth`` (LAION improved-aesthetic-predictor): a bare state dict
  ``layers.{0,2,4,6,7}.{weight,bias}`` of Linear(768,1024), Dropout, Linear(1024,128), Dropout,
  Linear(128,64), Dropout, Linear(64,16), Linear(16,1) - no activations. Sizes are read from the file.
* ``clip/``: a transformers CLIPModel folder of openai/clip-vit-large-patch14 (``config.json`` +
  ``model.safetensors`` or ``pytorch_model.bin``). Only its vision tower and visual projection are
  loaded; its text tower and tokenizer are not needed.

The score is the predictor's output (roughly 1-10, higher is prettier); the prompt is ignored.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import RewardModel, float32_stack
from .clip_rewards import _TOLERATED_UNEXPECTED, WEIGHT_FILES
from .errors import RewardLoadError, compare_shapes, key_report
from .hps import load_torch_file, unwrap_state_dict

log = logging.getLogger(__name__)

AESTHETIC_FILE = "sac+logos+ava1-l14-linearMSE.pth"
CLIP_SUBFOLDER = "clip"
AESTHETIC_SOURCE = "https://github.com/christophschuhmann/improved-aesthetic-predictor"
OPENAI_CLIP_L14 = "https://huggingface.co/openai/clip-vit-large-patch14"

_LINEAR_INDICES = (0, 2, 4, 6, 7)  # nn.Sequential positions of the Linear layers (1, 3, 5 are Dropouts)
_DROPOUTS = {1: 0.2, 3: 0.2, 5: 0.1}
# CLIPModel weights the vision-only model does not use
_TEXT_PREFIXES = ("text_model.", "text_projection.", "logit_scale")


class AestheticMLP(nn.Module):
    """The LAION predictor head, ``layers`` as in the original (Linear/Dropout ``nn.Sequential``).

    Runs in float32 whatever the module's dtype (it is tiny); dropouts are inactive in eval mode.
    """

    def __init__(self, dims: list[int]):
        super().__init__()
        if len(dims) != len(_LINEAR_INDICES) + 1:
            raise ValueError(f"expected {len(_LINEAR_INDICES) + 1} sizes, got {dims}")
        modules: list[nn.Module] = []
        linear = iter(zip(dims, dims[1:]))
        for i in range(_LINEAR_INDICES[-1] + 1):
            if i in _LINEAR_INDICES:
                modules.append(nn.Linear(*next(linear)))
            else:
                modules.append(nn.Dropout(_DROPOUTS[i]))
        self.layers = nn.Sequential(*modules)

    @property
    def in_features(self) -> int:
        return self.layers[0].in_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return float32_stack(self.layers, x)


def mlp_from_state_dict(state_dict: dict[str, torch.Tensor], path: Path, name: str) -> AestheticMLP:
    """The predictor with the sizes of ``state_dict``, strictly (same keys, chained shapes, one output)."""
    expected = [f"layers.{i}.{p}" for i in _LINEAR_INDICES for p in ("weight", "bias")]
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    if missing or unexpected:
        parts = []
        for label, keys in (("missing", missing), ("unexpected", unexpected)):
            if keys:
                shown = ", ".join(keys[:8]) + (f" (+{len(keys) - 8} more)" if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {label} key(s): {shown}")
        raise RewardLoadError(
            f"{name}: {path} is not the LAION aesthetic predictor ({'; '.join(parts)}). "
            f"It is probably the checkpoint of another model: get {AESTHETIC_FILE} from {AESTHETIC_SOURCE}."
        )
    dims: list[int] = []
    problems = []
    for i in _LINEAR_INDICES:
        w, b = state_dict[f"layers.{i}.weight"], state_dict[f"layers.{i}.bias"]
        if w.dim() != 2 or b.shape != (w.shape[0],):
            problems.append(f"layers.{i}.weight {tuple(w.shape)} / bias {tuple(b.shape)}")
            continue
        if dims and w.shape[1] != dims[-1]:
            problems.append(f"layers.{i}.weight {tuple(w.shape)} takes {w.shape[1]} inputs, the layer before gives {dims[-1]}")
        if not dims:
            dims.append(w.shape[1])
        dims.append(w.shape[0])
    if not problems and dims[-1] != 1:
        problems.append(f"layers.{_LINEAR_INDICES[-1]}.weight has {dims[-1]} outputs, not 1")
    if problems:
        raise RewardLoadError(f"{name}: {path} has inconsistent shapes: " + "; ".join(problems) + ".")
    with torch.device("meta"):
        mlp = AestheticMLP(dims)
    mlp.load_state_dict({k: v.float() for k, v in state_dict.items()}, strict=True, assign=True)
    return mlp


def _read_clip_weights(clip_dir: Path, name: str) -> tuple[dict[str, torch.Tensor], Path]:
    weights = next((clip_dir / f for f in WEIGHT_FILES if (clip_dir / f).is_file()), None)
    if weights is None:
        raise RewardLoadError(
            f"{name}: no CLIP weights in {clip_dir}: expected {' or '.join(WEIGHT_FILES)} (with config.json) "
            f"of {OPENAI_CLIP_L14}"
        )
    if weights.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            return load_file(str(weights), device="cpu"), weights
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - truncated or not a safetensors file
            raise RewardLoadError(
                f"{name}: could not read {weights}: {type(e).__name__}: {e}. "
                "The file is truncated or corrupt: download it again."
            ) from e
    return unwrap_state_dict(load_torch_file(weights, name), weights, name), weights


def _clip_vision_config(clip_dir: Path, name: str):
    from transformers import CLIPConfig, CLIPVisionConfig

    config_path = clip_dir / "config.json"
    try:
        model_type = json.loads(config_path.read_text(encoding="utf-8")).get("model_type")
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, AttributeError) as e:
        raise RewardLoadError(f"{name}: could not read {config_path}: {type(e).__name__}: {e}") from e
    if model_type == "clip":
        config = CLIPConfig.from_pretrained(str(clip_dir), local_files_only=True)
        vision = config.vision_config
        vision.projection_dim = config.projection_dim  # it lives on the CLIPConfig, not on its vision part
        return vision
    if model_type == "clip_vision_model":
        return CLIPVisionConfig.from_pretrained(str(clip_dir), local_files_only=True)
    raise RewardLoadError(
        f"{name}: {config_path} describes a {model_type!r} model, not a CLIP model: {clip_dir} must hold "
        f"OpenAI CLIP ViT-L/14 ({OPENAI_CLIP_L14})."
    )


def load_clip_vision(clip_dir: Path, name: str):
    """The vision tower + visual projection (``CLIPVisionModelWithProjection``) of a CLIPModel folder,
    float32, frozen, in eval mode; strict about the vision keys."""
    from transformers import CLIPVisionModelWithProjection

    if not (clip_dir / "config.json").is_file():
        raise RewardLoadError(
            f"{name}: {clip_dir / 'config.json'} is missing: {clip_dir} must be a transformers CLIPModel folder "
            f"(config.json + model.safetensors) of {OPENAI_CLIP_L14}"
        )
    vision_config = _clip_vision_config(clip_dir, name)
    state_dict, weights = _read_clip_weights(clip_dir, name)
    vision_sd = {  # float32 copies: the model must not keep the (memory-mapped) weights file open
        k: v.to(torch.float32, copy=True) for k, v in state_dict.items()
        if not k.startswith(_TEXT_PREFIXES) and not k.endswith(_TOLERATED_UNEXPECTED)
    }
    del state_dict
    with torch.device("meta"):  # the expected keys and shapes, without allocating anything
        expected = {k: tuple(v.shape) for k, v in CLIPVisionModelWithProjection(vision_config).state_dict().items()
                    if not k.endswith(_TOLERATED_UNEXPECTED)}
    _refuse_if_any(name, clip_dir, weights, *compare_shapes(
        {k: tuple(v.shape) for k, v in vision_sd.items()}, expected, found_label="checkpoint", expected_label="config.json"))
    try:
        model, info = CLIPVisionModelWithProjection.from_pretrained(
            None, config=vision_config, state_dict=vision_sd, output_loading_info=True
        )
    except Exception as e:  # noqa: BLE001 - shapes that do not fit the config, among others
        raise RewardLoadError(
            f"{name}: {weights} does not fit {clip_dir / 'config.json'}: {type(e).__name__}: "
            f"{str(e).splitlines()[0] if str(e) else ''}. Put OpenAI CLIP ViT-L/14 ({OPENAI_CLIP_L14}) in that folder."
        ) from e
    _refuse_if_any(  # what transformers itself reports, in case its model differs from the meta one
        name, clip_dir, weights, sorted(info.get("missing_keys", [])),
        sorted(k for k in info.get("unexpected_keys", []) if not k.endswith(_TOLERATED_UNEXPECTED)),
        [str(k) for k in info.get("mismatched_keys", [])],
    )
    return model.float().eval().requires_grad_(False)


def _refuse_if_any(name: str, clip_dir: Path, weights: Path, missing, unexpected, mismatched) -> None:
    report = key_report(missing, unexpected, mismatched)
    if report:
        raise RewardLoadError(
            f"{name}: {weights} does not match {clip_dir / 'config.json'}: {report}. It is probably a checkpoint "
            f"of another model: put OpenAI CLIP ViT-L/14 ({OPENAI_CLIP_L14}) there."
        )


class AestheticReward(RewardModel):
    """``score = MLP(normalize(CLIP image embedding))``, the LAION aesthetic predictor (prompt ignored)."""

    fp32_modules = ("mlp",)  # the rating head stays float32 when the tower runs in half precision

    def __init__(self, vision, mlp: AestheticMLP, name: str, offset: float, source: str = ""):
        super().__init__()
        self.vision = vision.eval().requires_grad_(False)
        self.mlp = mlp.eval().requires_grad_(False)
        self.name, self.offset, self.source = name, offset, source
        self.input_size = int(vision.config.image_size)
        self.eval()

    def encode_text(self, prompt: str) -> torch.Tensor:
        return torch.empty(0, device=self.param_device())  # the aesthetic score does not read the prompt

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.vision(pixel_values=pixel_values)
        return F.normalize(out.image_embeds.float(), dim=-1)

    def score(self, pixel_values: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.image_features(pixel_values).to(self.mlp.layers[0].weight.dtype))[:, 0].float()


def load_aesthetic_folder(folder: Path, name: str = "aesthetic", offset: float = 10.0) -> AestheticReward:
    """Build the aesthetic reward from ``folder``: the predictor file and the CLIP folder ``clip/``."""
    folder = Path(folder)
    path = folder / AESTHETIC_FILE
    if not path.is_file():
        raise RewardLoadError(f"{name}: {path} does not exist: download {AESTHETIC_FILE} from {AESTHETIC_SOURCE}")
    mlp = mlp_from_state_dict(unwrap_state_dict(load_torch_file(path, name), path, name), path, name)
    clip_dir = folder / CLIP_SUBFOLDER
    vision = load_clip_vision(clip_dir, name)
    projection = int(vision.config.projection_dim)
    if projection != mlp.in_features:
        raise RewardLoadError(
            f"{name}: the predictor {path.name} takes {mlp.in_features}-d CLIP embeddings but the CLIP model in "
            f"{clip_dir} projects to {projection}-d: the LAION predictor needs OpenAI CLIP ViT-L/14 ({OPENAI_CLIP_L14})."
        )
    return AestheticReward(vision, mlp, name=name, offset=offset, source=str(folder))
