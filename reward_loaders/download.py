"""Fetching missing reward files from their fixed public sources, safely.

Every file lands in ``<reno_rewards>/<reward>/`` under a name from the fixed table in
``registry.py`` (never a name from a server or a workflow). It is first downloaded into a staging
folder inside the reward folder, checked against the size and hash the source publishes (the
Hugging Face Hub's ETag is the SHA-256 of LFS files and the git blob SHA-1 of small ones; plain
URLs carry a SHA-256 in the table when one is known), and only then renamed into place, so a
partial or corrupted transfer never looks like a complete file.

Downloads are on unless ``RENO_DOWNLOADS`` is ``0``/``false``/``off`` or ``HF_HUB_OFFLINE`` is set
(the ComfyUI layer adds its own setting).
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .errors import RewardLoadError

log = logging.getLogger(__name__)

ENV_VAR = "RENO_DOWNLOADS"
STAGING = ".reno-download"
HUB = "https://huggingface.co"


class DownloadError(RewardLoadError):
    """A download failed or did not verify; nothing was put in place."""


@dataclass(frozen=True)
class Source:
    """Where one file comes from: a Hub repository file, or a plain URL."""

    repo: str | None = None  # Hugging Face repo id
    filename: str | None = None  # file in that repo (defaults to the target's base name)
    revision: str = "main"
    url: str | None = None  # plain HTTPS URL (non-Hub source)
    sha256: str | None = None  # expected SHA-256 for plain URLs, when published
    size: int | None = None

    @property
    def page(self) -> str:
        return f"{HUB}/{self.repo}" if self.repo else str(self.url)


def downloads_enabled() -> bool:
    value = os.environ.get(ENV_VAR, "1").strip().lower()
    if value in ("0", "false", "off", "no"):
        return False
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("", "0", "false", "off", "no")


def _hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", HUB).rstrip("/")


def _safe_target(folder: Path, name: str) -> Path:
    target = (folder / name).resolve()
    if folder.resolve() not in target.parents:
        raise DownloadError(f"refusing to write {name!r} outside {folder}")
    return target


def _file_hash(path: Path, algo: str, git_blob: bool = False) -> str:
    h = hashlib.new(algo)
    if git_blob:
        h.update(f"blob {path.stat().st_size}\0".encode())
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, what: str, size: int | None, etag: str | None = None, sha256: str | None = None) -> None:
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DownloadError(f"{what}: downloaded {actual} bytes, the source says {size}; the transfer was incomplete")
    etag = (etag or "").strip('"').lower()
    if sha256 is None and re.fullmatch(r"[0-9a-f]{64}", etag):
        sha256 = etag
    if sha256 is not None:
        got = _file_hash(path, "sha256")
        if got != sha256.lower():
            raise DownloadError(f"{what}: SHA-256 {got} does not match the published {sha256}; the file is corrupted")
    elif re.fullmatch(r"[0-9a-f]{40}", etag):
        got = _file_hash(path, "sha1", git_blob=True)
        if got != etag:
            raise DownloadError(f"{what}: git hash {got} does not match the published {etag}; the file is corrupted")


def _fetch_hub(src: Source, name: str, staging: Path) -> Path:
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    endpoint = _hub_endpoint()
    filename = src.filename or Path(name).name
    what = f"{src.repo}/{filename}"
    meta = get_hf_file_metadata(hf_hub_url(src.repo, filename, revision=src.revision, endpoint=endpoint),
                                endpoint=endpoint)
    log.info("ReNO: downloading %s (%s bytes) from %s", what, meta.size, endpoint)
    path = Path(hf_hub_download(src.repo, filename, revision=meta.commit_hash or src.revision, local_dir=staging,
                                endpoint=endpoint, force_download=True))
    _verify(path, what, meta.size, etag=meta.etag)
    return path


def _fetch_url(src: Source, name: str, staging: Path) -> Path:
    if not str(src.url).startswith(("https://", "http://127.0.0.1", "http://localhost")):
        raise DownloadError(f"refusing a non-HTTPS source {src.url}")
    part = staging / (Path(name).name + ".part")
    log.info("ReNO: downloading %s", src.url)
    with urllib.request.urlopen(src.url, timeout=60) as response, open(part, "wb") as out:  # noqa: S310 - fixed table
        expected = response.headers.get("Content-Length")
        shutil.copyfileobj(response, out, 1 << 20)
    size = src.size if src.size is not None else (int(expected) if expected else None)
    _verify(part, str(src.url), size, sha256=src.sha256)
    return part


def fetch(src: Source, folder: Path, name: str) -> Path:
    """Download ``src`` to ``folder/name`` atomically; returns the final path."""
    folder.mkdir(parents=True, exist_ok=True)
    target = _safe_target(folder, name)
    staging = folder / STAGING
    staging.mkdir(exist_ok=True)
    try:
        path = _fetch_hub(src, name, staging) if src.repo else _fetch_url(src, name, staging)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    except DownloadError:
        raise
    except Exception as e:  # noqa: BLE001 - network, HTTP and disk errors become one clear message
        raise DownloadError(f"downloading {name} from {src.page} failed: {type(e).__name__}: {e}") from e
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target
