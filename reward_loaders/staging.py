"""Staging for files put in place atomically (reward downloads, trained custom rewards), and its cleanup.

A writer stages in its own ``<staging>/<token>/`` beside a ``<token>.lock`` that names its process (host, pid,
boot), and renames what it wrote into place only when it is complete (``claim`` ... ``release``). A writer
killed outright (``kill -9``, a power cut) leaves both behind; ``clean_stale`` removes them once their process
is gone (or nothing in them has changed for ``STALE_AFTER_S``), and never touches a live writer's. Whether a
process lives is asked in a way that is safe on every platform (``pid_alive``: on Windows ``os.kill(pid, 0)``
would terminate the process, so it is never called there; a zombie counts as gone).

Standard library only; never imports ComfyUI.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import socket
import time
from pathlib import Path

log = logging.getLogger(__name__)

# staging whose process cannot be checked (another host, a reused pid) is stale after this long unchanged
STALE_AFTER_S = 24 * 3600
# staging that no lock owns (a kill between two steps, an older version of the pack) after this long
ORPHAN_AFTER_S = 3600


def boot_id() -> str | None:
    """This machine's boot id (Linux), or None where there is none."""
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip() or None
    except OSError:
        return None


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` of this host is running (a zombie counts as gone). Unsure means alive."""
    if pid <= 0:
        return False
    if pid == os.getpid():
        return True
    if os.name == "nt":
        return _pid_alive_windows(pid)
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # PermissionError: someone else's live process
        return True
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rpartition(")")[2].split()[:1] != ["Z"]


def _pid_alive_windows(pid: int) -> bool:  # pragma: no cover - exercised on Windows only
    import ctypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    handle = kernel32.OpenProcess(0x1000, False, pid)  # PROCESS_QUERY_LIMITED_INFORMATION
    if not handle:
        return ctypes.get_last_error() == 5  # ERROR_ACCESS_DENIED: it exists
    try:
        code = ctypes.c_ulong()
        if not kernel32.GetExitCodeProcess(handle, ctypes.byref(code)):
            return True
        return code.value == 259  # STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)


def newest_mtime(path: Path) -> float:
    """The latest modification time of ``path`` and everything under it (a live writer keeps it fresh)."""
    try:
        newest = path.lstat().st_mtime
    except OSError:
        return 0.0
    if path.is_dir() and not path.is_symlink():
        for sub in path.rglob("*"):
            try:
                newest = max(newest, sub.lstat().st_mtime)
            except OSError:
                pass
    return newest


def write_lock(lock: Path) -> None:
    """Create ``lock`` (it must not exist) naming this process."""
    owner = {"pid": os.getpid(), "host": socket.gethostname(), "boot": boot_id(), "started": time.time()}
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        json.dump(owner, f)


def lock_is_stale(lock: Path, work: Path, now: float) -> str | None:
    """Why the writer that owns ``lock`` is over (a reason for the log), or None while it may be live."""
    idle = now - max(newest_mtime(lock), newest_mtime(work))
    if idle > STALE_AFTER_S:
        return f"nothing changed for {idle / 3600:.0f} h"
    try:
        owner = json.loads(lock.read_text(encoding="utf-8"))
        pid, host, boot = int(owner["pid"]), str(owner["host"]), owner.get("boot")
    except (OSError, ValueError, KeyError, TypeError):
        # being written this very moment, or garbage: give it the orphan grace
        return "an unreadable lock" if idle > ORPHAN_AFTER_S else None
    if host != socket.gethostname():
        return None  # another machine's writer (a shared folder): only the age tells
    if boot and boot_id() and boot != boot_id():
        return "its machine has restarted since"
    if not pid_alive(pid):
        return f"its process {pid} is gone"
    return None


def claim(staging: Path) -> tuple[Path, Path]:
    """Make ``staging`` (if needed), this writer's lock in it and its empty work folder; returns (lock, work).
    Pair with ``release`` in a ``finally``."""
    staging.mkdir(exist_ok=True)
    token = f"{os.getpid()}-{secrets.token_hex(4)}"
    lock, work = staging / f"{token}.lock", staging / token
    write_lock(lock)
    work.mkdir()
    return lock, work


def release(staging: Path, lock: Path, work: Path) -> None:
    """Remove what ``claim`` made (the work folder with whatever is left in it, the lock) and ``staging`` itself
    when nothing (live) is left in it. Never raises."""
    shutil.rmtree(work, ignore_errors=True)
    with contextlib.suppress(OSError):
        lock.unlink()
    with contextlib.suppress(OSError):
        staging.rmdir()


def clean_stale(staging: Path, what: str) -> list[Path]:
    """Remove what killed writers left in the folder ``staging``; returns what was removed. ``what`` names the
    writer in the log ("download", "training").

    A lock whose process is gone (or that has not changed for ``STALE_AFTER_S``) goes with its work folder;
    entries no lock owns go after ``ORPHAN_AFTER_S``. A live writer's lock and files are left alone. Never
    raises: cleaning is a courtesy.
    """
    staging = Path(staging)
    if not staging.is_dir() or staging.is_symlink():
        return []
    now, removed, owned = time.time(), [], set()
    try:
        entries = sorted(staging.iterdir())
    except OSError:
        return []
    for lock in (e for e in entries if e.name.endswith(".lock") and e.is_file()):
        work = staging / lock.name[: -len(".lock")]
        owned.update((lock.name, work.name))
        why = lock_is_stale(lock, work, now)
        if why is None:
            continue
        log.info("ReNO: removing the staging of an unfinished %s in %s (%s)", what, staging, why)
        shutil.rmtree(work, ignore_errors=True)
        with contextlib.suppress(OSError):
            lock.unlink()
        removed += [lock, work]
    for entry in entries:
        if entry.name in owned or now - newest_mtime(entry) <= ORPHAN_AFTER_S:
            continue
        log.info("ReNO: removing %s, left by an unfinished %s", entry, what)
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    with contextlib.suppress(OSError):
        staging.rmdir()  # only when nothing (live) is left in it
    return removed
