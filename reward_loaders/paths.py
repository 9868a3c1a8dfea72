"""Where reward checkpoints live: ``models/reno_rewards/<reward>/``.

Inside ComfyUI the node layer registers a provider that returns ``folder_paths``' list for the
``reno_rewards`` folder (so ``extra_model_paths.yaml`` works). Used on its own, the library looks in
the directories given by the ``RENO_REWARDS_DIR`` environment variable (``os.pathsep``-separated),
or in directories passed explicitly.

The CLIP BPE vocabulary is the same for every CLIP model, so a reward that needs only the tokenizer
can borrow it from the host: ``host_clip_tokenizer_dirs`` finds ComfyUI's bundled
``comfy/sd1_tokenizer/`` through an already imported ``comfy`` package (never importing ComfyUI).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Iterable
from pathlib import Path

FOLDER_NAME = "reno_rewards"
ENV_VAR = "RENO_REWARDS_DIR"

_provider: Callable[[], Iterable[str]] | None = None


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


def host_clip_tokenizer_dirs() -> list[Path]:
    """Folders of the host's bundled CLIP tokenizer that exist: ComfyUI's ``comfy/sd1_tokenizer/`` when a ``comfy``
    package is already imported (it is not imported here)."""
    dirs: list[Path] = []
    comfy = sys.modules.get("comfy")
    try:
        locations = list(getattr(comfy, "__path__", None) or [])
    except TypeError:
        locations = []
    dirs += [Path(location) / "sd1_tokenizer" for location in locations]
    return [d for d in dirs if d.is_dir()]
