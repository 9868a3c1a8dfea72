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
from .custom import CustomSource, is_custom
from .download import (
    STAGING,
    DownloadError,
    DownloadProgress,
    Source,
    clean_stale_staging,
    downloads_enabled,
    fetch,
)
from .errors import RewardFilesMissing
from .imagereward import (
    ITERCOMP_CHECKPOINTS,
    ITERCOMP_REPO,
    find_bert_tokenizer,
    find_itercomp_checkpoint,
    find_med_config,
    itercomp_hint,
)
from .source import RewardSource
from .stamps import digest, file_stamps

log = logging.getLogger(__name__)

LAION_CLIP_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
PICKSCORE = "yuvalkirstain/PickScore_v1"
IMAGEREWARD = "THUDM/ImageReward"
BERT_BASE = "google-bert/bert-base-uncased"
HPS = "xswu/HPSv2"
HPSV3 = "MizzenAI/HPSv3"
QWEN2_VL_7B = "Qwen/Qwen2-VL-7B-Instruct"
OPENAI_CLIP_L = "openai/clip-vit-large-patch14"
AESTHETIC_URL = (
    "https://github.com/christophschuhmann/improved-aesthetic-predictor/raw/main/sac%2Blogos%2Bava1-l14-linearMSE.pth"
)
# The file's Git LFS object (the repository stores the .pth with Git LFS). Hugging Face shows the same LFS
# pointer for its mirrors of the file, e.g. huggingface.co/haor/aesthetics (commit 60617cc, "oid sha256:21dd59...,
# size 3714759"), hbyang/Hi3D metric_models/ and spaces/xinglilu/Vadhwid assets/ ("Git LFS Details: SHA256
# 21dd59..."); projects that pin the GitHub file publish the same digest and 3,714,759 bytes.
AESTHETIC_SHA256 = "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
AESTHETIC_SIZE = 3_714_759


@dataclass(frozen=True)
class FileNeed:
    """One file a reward needs: any of ``names`` will do; ``source`` is where ``names[0]`` comes from.

    ``local(folder, roots)``, when given, finds a local copy elsewhere (the same CLIP tokenizer that the
    host or another reward has): then the file is neither required in the folder nor downloaded.
    ``fetchable=False``: never downloaded (its exact public name is not known); ``hint`` then says in the
    missing-file message where to get it by hand.
    """

    names: tuple[str, ...]
    source: Source
    local: Callable[[Path, list[Path]], object] | None = None
    fetchable: bool = True
    hint: str | None = None

    def present(self, folder: Path) -> bool:
        return any((folder / n).is_file() for n in self.names)

    def satisfied(self, folder: Path, roots: list[Path]) -> bool:
        return self.present(folder) or (self.local is not None and bool(self.local(folder, roots)))


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
    offset: float  # c in the loss c - score (the official ReNO constants); the one place it is set for a built-in
    paper_weight: float  # the official default weight, for documentation and tooltips
    description: str
    files: tuple[FileNeed, ...]
    builder: Callable[..., RewardModel]  # builder(folder, roots, name, offset): roots are the reno_rewards folders

    def build(self, folder: Path, roots: list[Path] | None = None) -> RewardModel:
        """The reward model from ``folder``, named ``name`` and with this spec's ``offset``."""
        return self.builder(folder, roots, self.name, self.offset)


# builder(folder, roots, name, offset): each loads one format; the name and the offset come from the spec
def _clip(folder: Path, roots: list[Path] | None, name: str, offset: float) -> RewardModel:
    from .clip_rewards import load_clip_folder

    return load_clip_folder(folder, name, offset)


def _imagereward(folder: Path, roots: list[Path] | None, name: str, offset: float) -> RewardModel:
    from .imagereward import load_imagereward_folder

    return load_imagereward_folder(folder, name, offset)


def _hps(folder: Path, roots: list[Path] | None, name: str, offset: float) -> RewardModel:
    from .hps import load_hps_folder

    return load_hps_folder(folder, name, offset, roots)


def _aesthetic(folder: Path, roots: list[Path] | None, name: str, offset: float) -> RewardModel:
    from .aesthetic import load_aesthetic_folder

    return load_aesthetic_folder(folder, name, offset)


def _itercomp(folder: Path, roots: list[Path] | None, name: str, offset: float) -> RewardModel:
    from .imagereward import load_itercomp_folder

    return load_itercomp_folder(folder, name, offset, roots)


def _hpsv3(folder: Path, roots: list[Path] | None, name: str, offset: float) -> RewardModel:
    from .hpsv3 import load_hpsv3_folder

    return load_hpsv3_folder(folder, name, offset)


def _itercomp_files(name: str) -> tuple[FileNeed, ...]:
    # the checkpoint by hand (its published name is not verified: any accepted name, or the folder's only .pt);
    # med_config.json, the BERT tokenizer and vision_config.json are ImageReward's: borrowed from the imagereward
    # folder when it has them
    return (
        FileNeed(ITERCOMP_CHECKPOINTS[name], Source(ITERCOMP_REPO), local=lambda f, r: find_itercomp_checkpoint(f, name),
                 fetchable=False, hint=itercomp_hint(name)),
        FileNeed(("med_config.json",), Source(IMAGEREWARD), local=find_med_config,
                 hint=f"from {Source(IMAGEREWARD).page}, or the imagereward folder's copy is used"),
        FileNeed(("tokenizer/vocab.txt",), Source(BERT_BASE, "vocab.txt"), local=find_bert_tokenizer,
                 hint=f"from {Source(BERT_BASE).page}, or the imagereward folder's tokenizer/ is used"),
        FileNeed(("tokenizer/tokenizer_config.json",), Source(BERT_BASE, "tokenizer_config.json"),
                 local=find_bert_tokenizer, hint=f"from {Source(BERT_BASE).page}, or the imagereward folder's "
                 "tokenizer/ is used"),
    )


def _local_clip_tokenizer(folder: Path, roots: list[Path]):
    """A local copy of the CLIP tokenizer (the host's, another reward's, open_clip's), or None."""
    from .hps import find_clip_tokenizer

    return find_clip_tokenizer(folder, roots)


def _hps_files(checkpoint: str) -> tuple[FileNeed, ...]:
    # the CLIP BPE tokenizer files go beside the checkpoint, unless a local copy of the same vocabulary exists
    # (the pack does not depend on open_clip, but uses its BPE file when it is installed)
    return (
        FileNeed((checkpoint,), Source(HPS)),
        FileNeed(("vocab.json", "tokenizer.json"), Source(LAION_CLIP_H), local=_local_clip_tokenizer),
        FileNeed(("merges.txt", "tokenizer.json"), Source(LAION_CLIP_H), local=_local_clip_tokenizer),
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
        builder=_imagereward,
    ),
    "hpsv2.1": RewardSpec(
        name="hpsv2.1",
        offset=1.0,
        paper_weight=5.0,
        description="HPS v2.1 (human preference score, CLIP ViT-H-14): cosine of image and text, about 0.2-0.35",
        files=_hps_files("HPS_v2.1_compressed.pt"),
        builder=_hps,
    ),
    "hpsv2": RewardSpec(
        name="hpsv2",
        offset=1.0,
        paper_weight=5.0,
        description="HPS v2 (human preference score, CLIP ViT-H-14): cosine of image and text, about 0.2-0.3",
        files=_hps_files("HPS_v2_compressed.pt"),
        builder=_hps,
    ),
    "pickscore": RewardSpec(
        name="pickscore",
        offset=30.0,
        paper_weight=0.05,
        description="PickScore (CLIP-H fine-tuned on Pick-a-Pic preferences): exp(logit_scale)*cos, about 18-24",
        files=clip_folder_files(PICKSCORE, LAION_CLIP_H),
        builder=_clip,
    ),
    "clipscore": RewardSpec(
        name="clipscore",
        offset=100.0,
        paper_weight=0.01,
        description="CLIPScore with LAION CLIP ViT-H-14: exp(logit_scale)*cos, about 20-40",
        files=clip_folder_files(LAION_CLIP_H, LAION_CLIP_H),
        builder=_clip,
    ),
    "aesthetic": RewardSpec(
        name="aesthetic",
        offset=10.0,
        paper_weight=0.0,
        description="LAION aesthetic predictor (MLP on OpenAI CLIP ViT-L/14): about 1-10, ignores the prompt",
        files=(
            FileNeed(("sac+logos+ava1-l14-linearMSE.pth",),
                     Source(url=AESTHETIC_URL, sha256=AESTHETIC_SHA256, size=AESTHETIC_SIZE)),
            FileNeed(("clip/config.json",), Source(OPENAI_CLIP_L, "config.json")),
            FileNeed(("clip/model.safetensors", "clip/pytorch_model.bin"), Source(OPENAI_CLIP_L, "model.safetensors")),
        ),
        builder=_aesthetic,
    ),
    "itercomp_attribute": RewardSpec(
        name="itercomp_attribute",
        offset=2.0,
        paper_weight=1.0,
        description="IterComp attribute-binding reward (ImageReward architecture trained on composition rankings "
                    "of color, shape, texture): normalized reward",
        files=_itercomp_files("itercomp_attribute"),
        builder=_itercomp,
    ),
    "itercomp_spatial": RewardSpec(
        name="itercomp_spatial",
        offset=2.0,
        paper_weight=1.0,
        description="IterComp spatial-relationship reward (ImageReward architecture): normalized reward",
        files=_itercomp_files("itercomp_spatial"),
        builder=_itercomp,
    ),
    "itercomp_nonspatial": RewardSpec(
        name="itercomp_nonspatial",
        offset=2.0,
        paper_weight=1.0,
        description="IterComp non-spatial-relationship reward (ImageReward architecture): normalized reward",
        files=_itercomp_files("itercomp_nonspatial"),
        builder=_itercomp,
    ),
    "hpsv3": RewardSpec(
        name="hpsv3",
        offset=15.0,  # not in the ReNO paper (HPSv3 is later): above the best model averages of HPSv3's benchmark
        paper_weight=1.0,  # no official ReNO weight
        description="HPSv3 (Qwen2-VL-7B with a reward head trained on 1.08 M human preference pairs): the head's "
                    "mean mu, higher is better; a 7B model, about 16 GB in bfloat16",
        files=(
            FileNeed(("HPSv3.safetensors",), Source(HPSV3)),
            FileNeed(("config.json",), Source(QWEN2_VL_7B)),
            FileNeed(("vocab.json", "tokenizer.json"), Source(QWEN2_VL_7B)),
            FileNeed(("merges.txt", "tokenizer.json"), Source(QWEN2_VL_7B)),
            FileNeed(("tokenizer_config.json",), Source(QWEN2_VL_7B)),
            FileNeed(("preprocessor_config.json",), Source(QWEN2_VL_7B)),
        ),
        builder=_hpsv3,
    ),
}

# the loader node's combo lists these, in this order
AVAILABLE_REWARDS = tuple(REWARDS)


class BuiltinSource(RewardSource):
    """A reward of ``REWARDS``: its folder ``<root>/<name>/`` holds the spec's files, downloaded when missing."""

    def __init__(self, spec: RewardSpec):
        self.spec, self.name = spec, spec.name

    def _candidate_folder(self, roots: list[Path]) -> Path:
        """The folder that holds the most of the reward's files (then: that has the most of them at hand, e.g. an
        IterComp checkpoint under another name; else the first root's)."""
        def held(f: Path) -> tuple[int, int]:
            return sum(n.present(f) for n in self.spec.files), sum(n.satisfied(f, roots) for n in self.spec.files)

        return max((root / self.name for root in roots), key=held)

    def _complete_folder(self, roots: list[Path]) -> Path | None:
        for root in roots:
            folder = root / self.name
            if all(need.satisfied(folder, roots) for need in self.spec.files):
                return folder
        return None

    def locate(self, roots: list[Path]) -> Path:
        name = self.name
        folder = self._complete_folder(roots)
        if folder is not None:
            return folder
        if not roots:
            raise RewardFilesMissing(
                f"reward '{name}': no '{paths.FOLDER_NAME}' folder is configured. Inside ComfyUI it is "
                f"ComfyUI/models/{paths.FOLDER_NAME}/; outside, set {paths.ENV_VAR}."
            )
        folder = self._candidate_folder(roots)
        lines = [
            f"reward '{name}' is missing files in {folder}:",
            *(f"  - {n.names[0]}  ({n.hint})" if n.hint else f"  - {' or '.join(n.names)}  (from {n.source.page})"
              for n in self.spec.files if not n.satisfied(folder, roots)),
            f"Put them in that folder ({paths.FOLDER_NAME} folders searched: {', '.join(str(r) for r in roots)}).",
        ]
        raise RewardFilesMissing("\n".join(lines))

    def _download_failed(self, folder: Path, roots: list[Path], need: FileNeed, error: DownloadError) -> DownloadError:
        """The error for a download that failed: its cause, every file still missing with the URL it is fetched
        from (on the host actually used), the folder, and what to do."""
        missing = [n for n in self.spec.files if not n.satisfied(folder, roots)]
        hosts = list(dict.fromkeys(n.source.host() for n in missing))
        lines = [
            f"reward '{self.name}': downloading {need.names[0]} from {need.source.host()} failed: {error.reason}",
            f"Still missing in {folder} ({len(missing)} file{'s' if len(missing) != 1 else ''}):",
            *(f"  - {' or '.join(n.names)}  ({n.source.download_url(n.names[0])})" for n in missing),
            f"What to do: check the connection to {' and '.join(hosts)} and run again, or download the files above "
            f"by hand (any one name of each line) and put them in {folder}; to stop automatic downloads, set "
            "RENO_DOWNLOADS=0 (or the ReNO setting in ComfyUI).",
        ]
        return DownloadError("\n".join(lines), error.reason)

    def _clean_staging(self, roots: list[Path]) -> None:
        for root in roots:
            folder = root / self.name
            if (folder / STAGING).is_dir():
                clean_stale_staging(folder)

    def ensure(self, roots: list[Path], download: bool | None = None,
               progress: Callable[[DownloadProgress], None] | None = None) -> Path:
        name = self.name
        self._clean_staging(roots)
        try:
            return self.locate(roots)
        except RewardFilesMissing as missing:
            allowed = downloads_enabled() if download is None else download
            if not roots:
                raise
            manual = [n for n in self.spec.files
                      if not n.fetchable and not n.satisfied(self._candidate_folder(roots), roots)]
            if manual:  # nothing is downloaded while a file that must come by hand is missing
                raise RewardFilesMissing(
                    f"{missing}\nNothing was downloaded: {' and '.join(n.names[0] for n in manual)} must be put in "
                    f"{self._candidate_folder(roots)} by hand first (the other files are then downloaded if missing)."
                ) from None
            if not allowed:
                raise RewardFilesMissing(
                    f"{missing}\nAutomatic downloads are turned off (environment variable RENO_DOWNLOADS, "
                    "HF_HUB_OFFLINE, or the ReNO setting in ComfyUI)."
                ) from None
            folder = self._candidate_folder(roots)
            todo = [need for need in self.spec.files if not need.satisfied(folder, roots)]
            for index, need in enumerate(todo, 1):
                if need.satisfied(folder, roots):
                    continue
                try:
                    fetch(need.source, folder, need.names[0],
                          _file_progress(progress, name, need.names[0], index, len(todo)))
                except DownloadError as e:
                    raise self._download_failed(folder, roots, need, e) from e
            return self.locate(roots)

    def stamps(self, folder: Path, roots: list[Path]) -> tuple:
        return file_stamps(folder)

    def load(self, folder: Path, roots: list[Path]) -> RewardModel:
        return self.spec.build(folder, roots)

    def fingerprint(self, roots: list[Path]) -> str:
        name, files = self.name, self.spec.files
        if not roots:
            return f"{name}: no {paths.FOLDER_NAME} folder"
        try:
            folder, state = self.locate(roots), "complete"
        except RewardFilesMissing:
            folder = max((root / name for root in roots), key=lambda f: sum(n.present(f) for n in files))
            state = "missing " + ", ".join(n.names[0] for n in files if not n.present(folder))
        return digest(repr((name, os.path.abspath(folder), state, file_stamps(folder))))


def source(name: str) -> RewardSource:
    """The ``RewardSource`` of reward ``name``: ``custom/<name>`` is a custom folder, any other a spec of
    ``REWARDS`` (a ValueError naming the choices for an unknown name)."""
    return CustomSource(name) if is_custom(name) else BuiltinSource(_spec(name))


def locate(name: str, extra_dirs: Iterable[str | os.PathLike] = ()) -> Path:
    """The folder holding every file of reward ``name``, or a RewardFilesMissing naming what to do."""
    return source(name).locate(paths.search_dirs(extra_dirs))


def _file_progress(progress, reward: str, file: str, index: int, count: int):
    """``fetch``'s ``progress(phase, done, total)`` for one file, as ``DownloadProgress`` for ``progress``."""
    if progress is None:
        return None
    return lambda phase, done, total: progress(DownloadProgress(reward, file, index, count, phase, done, total))


def ensure_files(name: str, extra_dirs: Iterable[str | os.PathLike] = (), download: bool | None = None,
                 progress: Callable[[DownloadProgress], None] | None = None) -> Path:
    """``locate``, downloading the missing files first when downloads are allowed (custom rewards never are).

    ``download=None`` follows the environment (``RENO_DOWNLOADS``, ``HF_HUB_OFFLINE``). First, in every
    folder of this reward, the staging that killed downloads left behind is removed. ``progress`` is told
    where each download stands (``DownloadProgress``) before its first byte, after every chunk, before the
    check and once the file is in place; an exception it raises stops the download, leaves nothing behind
    and propagates as it is (the files already complete stay).
    """
    return source(name).ensure(paths.search_dirs(extra_dirs), download, progress)


def reward_fingerprint(name: str, extra_dirs: Iterable[str | os.PathLike] = ()) -> str:
    """A short digest of where reward ``name``'s files are and of their stamps (``stamps.file_stamps``).

    It changes when a file is replaced, added or deleted, or when the files move to another folder; nothing is
    read or hashed but the stamps. The ComfyUI loader node returns it from ``IS_CHANGED``; ``load_reward`` keys
    its model cache on the same stamps.
    """
    return source(name).fingerprint(paths.search_dirs(extra_dirs))


_cache: dict[tuple, RewardModel] = {}
_lock = threading.Lock()


def load_reward(name: str, extra_dirs: Iterable[str | os.PathLike] = (), download: bool | None = None,
                progress: Callable[[DownloadProgress], None] | None = None) -> RewardModel:
    """Load (or return the cached) reward model ``name``, float32 on the CPU.

    Missing files are downloaded first when allowed (see ``ensure_files``, which gets ``progress``). Cached by folder and the
    stamps of its files (``file_stamps``: size, modification time, inode), so re-running a workflow does
    not reload it and replacing, adding or deleting a file does.
    Built outside inference mode, so its weights can take part in autograd.
    """
    src = source(name)
    roots = paths.search_dirs(extra_dirs)  # where the HPS rewards may borrow the CLIP tokenizer
    folder = src.ensure(roots, download, progress)
    key = (name, str(folder.resolve()), src.stamps(folder, roots))
    with _lock:
        model = _cache.get(key)
        if model is None:
            log.info("ReNO: loading reward '%s' from %s", name, folder)
            for k in [k for k in _cache if k[0] == name and k[1] == key[1]]:
                del _cache[k]  # an older version of the same files
            with torch.inference_mode(False):
                model = src.load(folder, roots).eval().requires_grad_(False)
            _cache[key] = model
    return model


def clear_cache() -> None:
    with _lock:
        _cache.clear()


def _spec(name: str) -> RewardSpec:
    try:
        return REWARDS[name]
    except KeyError:
        raise ValueError(
            f"unknown reward '{name}': choose one of {', '.join(REWARDS)}, or custom/<name> for a folder "
            f"{paths.FOLDER_NAME}/custom/<name>/ with a reward.json"
        ) from None
