"""The rewards this pack can load, their files, their public sources, and a cache of loaded models."""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import paths
from .base import RewardModel
from .download import Source, downloads_enabled, fetch
from .errors import RewardFilesMissing

log = logging.getLogger(__name__)

LAION_CLIP_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PICKSCORE = "yuvalkirstain/PickScore_v1"
IMAGEREWARD = "THUDM/ImageReward"
BERT_BASE = "google-bert/bert-base-uncased"
HPS = "xswu/HPSv2"
OPENAI_CLIP_L = "openai/clip-vit-large-patch14"
AESTHETIC_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
)


@dataclass(frozen=True)
class FileNeed:
    """One file a reward needs: any of ``names`` will do; ``source`` is where ``names[0]`` comes from."""

    names: tuple[str, ...]
    source: Source

    def present(self, folder: Path) -> bool:
        return any((folder / n).is_file() for n in self.names)


def clip_folder_files(weights_repo: str, tokenizer_repo: str) -> tuple[FileNeed, ...]:
    """A transformers CLIPModel folder: config + weights, and the CLIP tokenizer files."""
    return (
        FileNeed(("config.json",), Source(weights_repo)),
        FileNeed(("model.safetensors", "pytorch_model.bin"), Source(weights_repo)),
        FileNeed(("vocab.json", "tokenizer.json"), Source(tokenizer_repo)),
        FileNeed(("merges.txt", "tokenizer.json"), Source(tokenizer_repo)),
        FileNeed(("tokenizer_config.json",), Source(tokenizer_repo)),
    )


@dataclass(frozen=True)
class RewardSpec:
    name: str
    offset: float  # c in the loss c - score (the official ReNO constants)
    paper_weight: float  # the official default weight, for documentation and tooltips
    description: str
    files: tuple[FileNeed, ...]
    build: Callable[[Path], RewardModel]


def _clip(name: str, offset: float) -> Callable[[Path], RewardModel]:
    def build(folder: Path) -> RewardModel:
        from .clip_rewards import load_clip_folder

        return load_clip_folder(folder, name, offset)

    return build


def _imagereward(folder: Path) -> RewardModel:
    from .imagereward import load_imagereward_folder

    return load_imagereward_folder(folder, "imagereward", 2.0)


def _hps(name: str) -> Callable[[Path], RewardModel]:
    def build(folder: Path) -> RewardModel:
        from .hps import load_hps_folder

        return load_hps_folder(folder, name, 1.0)

    return build


def _aesthetic(folder: Path) -> RewardModel:
    from .aesthetic import load_aesthetic_folder

    return load_aesthetic_folder(folder, "aesthetic", 10.0)


def _hps_files(checkpoint: str) -> tuple[FileNeed, ...]:
    # the CLIP BPE tokenizer files ship beside the checkpoint: the pack does not depend on open_clip
    return (
        FileNeed((checkpoint,), Source(HPS)),
        FileNeed(("vocab.json", "tokenizer.json"), Source(LAION_CLIP_H)),
        FileNeed(("merges.txt", "tokenizer.json"), Source(LAION_CLIP_H)),
    )


REWARDS: dict[str, RewardSpec] = {
    "imagereward": RewardSpec(
        name="imagereward",
        offset=2.0,
        paper_weight=1.0,
        description="ImageReward (BLIP ViT-L + BERT trained on human rankings): normalized reward, about -2..2",
        files=(
            FileNeed(("ImageReward.pt",), Source(IMAGEREWARD)),
            FileNeed(("med_config.json",), Source(IMAGEREWARD)),
            FileNeed(("tokenizer/vocab.txt",), Source(BERT_BASE, "vocab.txt")),
            FileNeed(("tokenizer/tokenizer_config.json",), Source(BERT_BASE, "tokenizer_config.json")),
        ),
        build=_imagereward,
    ),
    "hpsv2.1": RewardSpec(
        name="hpsv2.1",
        offset=1.0,
        paper_weight=5.0,
        description="HPS v2.1 (human preference score, CLIP ViT-H-14): cosine of image and text, about 0.2-0.35",
        files=_hps_files("HPS_v2.1_compressed.pt"),
        build=_hps("hpsv2.1"),
    ),
    "hpsv2": RewardSpec(
        name="hpsv2",
        offset=1.0,
        paper_weight=5.0,
        description="HPS v2 (human preference score, CLIP ViT-H-14): cosine of image and text, about 0.2-0.3",
        files=_hps_files("HPS_v2_compressed.pt"),
        build=_hps("hpsv2"),
    ),
    "pickscore": RewardSpec(
        name="pickscore",
        offset=30.0,
        paper_weight=0.05,
        description="PickScore (CLIP-H fine-tuned on Pick-a-Pic preferences): exp(logit_scale)*cos, about 18-24",
        files=clip_folder_files(PICKSCORE, LAION_CLIP_H),
        build=_clip("pickscore", 30.0),
    ),
    "clipscore": RewardSpec(
        name="clipscore",
        offset=100.0,
        paper_weight=0.01,
        description="CLIPScore with LAION CLIP ViT-H-14: exp(logit_scale)*cos, about 20-40",
        files=clip_folder_files(LAION_CLIP_H, LAION_CLIP_H),
        build=_clip("clipscore", 100.0),
    ),
    "aesthetic": RewardSpec(
        name="aesthetic",
        offset=10.0,
        paper_weight=0.0,
        description="LAION aesthetic predictor (MLP on OpenAI CLIP ViT-L/14): about 1-10, ignores the prompt",
        files=(
            FileNeed(("sac+logos+ava1-l14-linearMSE.pth",), Source(url=AESTHETIC_URL)),
            FileNeed(("clip/config.json",), Source(OPENAI_CLIP_L, "config.json")),
            FileNeed(("clip/model.safetensors", "clip/pytorch_model.bin"), Source(OPENAI_CLIP_L, "model.safetensors")),
        ),
        build=_aesthetic,
    ),
}

# the loader node's combo lists these, in this order
AVAILABLE_REWARDS = tuple(REWARDS)


def _candidate_folder(name: str, roots: list[Path]) -> Path:
    """The folder that holds the most of the reward's files (else the first root's)."""
    spec = _spec(name)
    return max((root / name for root in roots), key=lambda f: sum(n.present(f) for n in spec.files))


def locate(name: str, extra_dirs: Iterable[str | os.PathLike] = ()) -> Path:
    """The folder holding every file of reward ``name``, or a RewardFilesMissing naming what to do."""
    spec = _spec(name)
    roots = paths.search_dirs(extra_dirs)
    for root in roots:
        folder = root / name
        if all(need.present(folder) for need in spec.files):
            return folder
    if not roots:
        raise RewardFilesMissing(
            f"reward '{name}': no '{paths.FOLDER_NAME}' folder is configured. Inside ComfyUI it is "
            f"ComfyUI/models/{paths.FOLDER_NAME}/; outside, set {paths.ENV_VAR}."
        )
    folder = _candidate_folder(name, roots)
    lines = [
        f"reward '{name}' is missing files in {folder}:",
        *(f"  - {' or '.join(n.names)}  (from {n.source.page})" for n in spec.files if not n.present(folder)),
        f"Put them in that folder ({paths.FOLDER_NAME} folders searched: {', '.join(str(r) for r in roots)}).",
    ]
    raise RewardFilesMissing("\n".join(lines))


def ensure_files(name: str, extra_dirs: Iterable[str | os.PathLike] = (), download: bool | None = None) -> Path:
    """``locate``, downloading the missing files first when downloads are allowed.

    ``download=None`` follows the environment (``RENO_DOWNLOADS``, ``HF_HUB_OFFLINE``).
    """
    try:
        return locate(name, extra_dirs)
    except RewardFilesMissing as missing:
        roots = paths.search_dirs(extra_dirs)
        allowed = downloads_enabled() if download is None else download
        if not roots:
            raise
        if not allowed:
            raise RewardFilesMissing(
                f"{missing}\nAutomatic downloads are turned off (environment variable RENO_DOWNLOADS, "
                "HF_HUB_OFFLINE, or the ReNO setting in ComfyUI)."
            ) from None
        folder = _candidate_folder(name, roots)
        for need in _spec(name).files:
            if not need.present(folder):
                fetch(need.source, folder, need.names[0])
        return locate(name, extra_dirs)


_cache: dict[tuple, RewardModel] = {}
_lock = threading.Lock()


def load_reward(name: str, extra_dirs: Iterable[str | os.PathLike] = (), download: bool | None = None) -> RewardModel:
    """Load (or return the cached) reward model ``name``, float32 on the CPU.

    Missing files are downloaded first when allowed (see ``ensure_files``). Cached by folder and
    file modification times, so re-running a workflow does not reload it and replacing a file does.
    Built outside inference mode, so its weights can take part in autograd.
    """
    spec = _spec(name)
    folder = ensure_files(name, extra_dirs, download)
    stamp = tuple(sorted((str(p.relative_to(folder)), p.stat().st_mtime_ns, p.stat().st_size)
                         for p in folder.rglob("*") if p.is_file()))
    key = (name, str(folder.resolve()), stamp)
    with _lock:
        model = _cache.get(key)
        if model is None:
            log.info("ReNO: loading reward '%s' from %s", name, folder)
            for k in [k for k in _cache if k[0] == name and k[1] == key[1]]:
                del _cache[k]  # an older version of the same files
            with torch.inference_mode(False):
                model = spec.build(folder).eval().requires_grad_(False)
            _cache[key] = model
    return model


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def _spec(name: str) -> RewardSpec:
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(f"unknown reward '{name}': choose one of {', '.join(REWARDS)}") from None
