"""Cheap fingerprints of a reward's files: what ComfyUI's cache (the loader's ``IS_CHANGED``) and the loader's own
model cache compare, so a replaced, added or deleted file is noticed without reading or hashing any checkpoint.

``registry.reward_fingerprint`` and ``registry.load_reward`` use them through the reward's ``RewardSource``."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path


def file_stamps(folder: Path) -> tuple[tuple, ...]:
    """(relative path, size, mtime_ns, inode, ctime_ns) of every file in a reward folder, sorted.

    One ``stat`` per file, nothing read (reward checkpoints are GBs). Every file the registry lists for the
    reward is among them, and the optional sidecars too (``open_clip_config.json``, ``vision_config.json``,
    tokenizer extras); hidden entries (the download staging ``.reno-download/``, a ``.git``) are left out.
    The inode and ctime catch a file replaced by one of the same size and modification time (a copy that
    keeps the original's time, ``os.replace`` of a prepared file).
    """
    stamps, seen = [], set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):  # clip/ may be a link to a shared copy
        real = os.path.realpath(dirpath)
        if real in seen:  # a link loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for f in filenames:
            if f.startswith("."):
                continue
            path = Path(dirpath) / f
            try:
                st = path.stat()
            except OSError:  # removed while we looked, or a dangling link
                continue
            if stat.S_ISREG(st.st_mode):
                stamps.append((path.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns, st.st_ino,
                               st.st_ctime_ns))
    return tuple(sorted(stamps))


def digest(text: str) -> str:
    """The SHA-256 hex digest of ``text`` (a fingerprint's ``repr`` of folder and stamps)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()
