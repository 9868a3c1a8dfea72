"""Where reward checkpoints live: ``models/reno_rewards/<reward>/``.

Inside ComfyUI the node layer registers a provider that returns ``folder_paths``' list for the
``reno_rewards`` folder (so ``extra_model_paths.yaml`` works). Used on its own, the library looks in
the directories given by the ``RENO_REWARDS_DIR`` environment variable (``os.pathsep``-separated),
or in directories passed explicitly.
"""

from __future__ import annotations

import os
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


def find_reward_dir(reward: str, required: Iterable[str], extra: Iterable[str | os.PathLike] = ()) -> Path | None:
    """The first ``<root>/<reward>`` folder that holds every file in ``required``, else None."""
    for root in search_dirs(extra):
        folder = root / reward
        if all((folder / name).is_file() for name in required):
            return folder
    return None
