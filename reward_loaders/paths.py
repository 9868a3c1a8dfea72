"""Where reward checkpoints live: ``models/reno_rewards/<reward>/``.

Inside ComfyUI the node layer registers a provider that returns ``folder_paths``' list for the
``reno_rewards`` folder (so ``extra_model_paths.yaml`` works). Used on its own, the library looks in
the directories given by the ``RENO_REWARDS_DIR`` environment variable (``os.pathsep``-separated),
or in directories passed explicitly.

The CLIP BPE vocabulary is the same for every CLIP model, so a reward that needs only the tokenizer
can borrow it from the host: ``host_clip_tokenizer_dirs`` finds ComfyUI's bundled
``comfy/sd1_tokenizer/`` through an already imported ``comfy`` package (never importing ComfyUI), and
the node layer may add folders with ``set_clip_tokenizer_dirs_provider``.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

FOLDER_NAME = "reno_rewards"
ENV_VAR = "RENO_REWARDS_DIR"

_provider: Callable[[], Iterable[str]] | None = None
_tokenizer_provider: Callable[[], Iterable[str | os.PathLike]] | None = None


def set_search_path_provider(provider: Callable[[], Iterable[str]] | None) -> None:
    """Install the function that lists the ``reno_rewards`` directories (ComfyUI's folder_paths)."""
    global _provider
    _provider = provider


def search_dirs(extra: Iterable[str | os.PathLike] = ()) -> list[Path]:
    dirs: list[Path] = [Path(d) for d in extra]
    env = os.environ.get(ENV_VAR)
    if env:
        dirs += [Path(p) for p in env.split(os.pathsep) if p]
    if _provider is not None:
        dirs += [Path(p) for p in _provider()]
    seen, unique = set(), []
    for d in dirs:
        key = os.path.normcase(os.path.abspath(d))
        if key not in seen:
            seen.add(key)
            unique.append(d)
    return unique


def find_reward_dir(reward: str, required: Iterable[str], extra: Iterable[str | os.PathLike] = ()) -> Path | None:
    """The first ``<root>/<reward>`` folder that holds every file in ``required``, else None."""
    for root in search_dirs(extra):
        folder = root / reward
        if all((folder / name).is_file() for name in required):
            return folder
    return None


def set_clip_tokenizer_dirs_provider(provider: Callable[[], Iterable[str | os.PathLike]] | None) -> None:
    """Install a function that lists extra folders holding a CLIP ``vocab.json`` + ``merges.txt``."""
    global _tokenizer_provider
    _tokenizer_provider = provider


def host_clip_tokenizer_dirs() -> list[Path]:
    """Folders of the host's bundled CLIP tokenizer that exist: the provider's, then ComfyUI's
    ``comfy/sd1_tokenizer/`` when a ``comfy`` package is already imported (it is not imported here)."""
    dirs: list[Path] = [Path(d) for d in _tokenizer_provider()] if _tokenizer_provider is not None else []
    comfy = sys.modules.get("comfy")
    try:
        locations = list(getattr(comfy, "__path__", None) or [])
    except TypeError:
        locations = []
    dirs += [Path(location) / "sd1_tokenizer" for location in locations]
    return [d for d in dirs if d.is_dir()]
