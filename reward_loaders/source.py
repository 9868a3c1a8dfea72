"""Where one reward comes from: the interface that a built-in reward (``registry.BuiltinSource``, a spec in
``registry.REWARDS``) and a custom folder (``custom.CustomSource``, ``custom/<name>``) both implement.

``registry.source(name)`` picks the one for a name once; ``locate``, ``ensure_files``, ``load_reward`` and
``reward_fingerprint`` then ask it, so nothing else branches on the kind of reward.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from .base import RewardModel
from .download import DownloadProgress


class RewardSource(ABC):
    """One reward's files and model. ``roots`` are the ``reno_rewards`` folders searched, in order."""

    name: str

    @abstractmethod
    def locate(self, roots: list[Path]) -> Path:
        """The folder holding every file of the reward, or a ``RewardFilesMissing`` naming what to do."""

    def ensure(self, roots: list[Path], download: bool | None = None,
               progress: Callable[[DownloadProgress], None] | None = None) -> Path:
        """``locate``, downloading the missing files first where the source can (by default it cannot)."""
        return self.locate(roots)

    @abstractmethod
    def stamps(self, folder: Path, roots: list[Path]) -> tuple:
        """The stamps of the files the loaded model depends on (``stamps.file_stamps`` and what it borrows)."""

    @abstractmethod
    def load(self, folder: Path, roots: list[Path]) -> RewardModel:
        """Build the reward model from ``folder`` (float32, on the CPU)."""

    @abstractmethod
    def fingerprint(self, roots: list[Path]) -> str:
        """A short digest that changes when the reward's files are replaced, added, deleted or moved."""
