"""Fetching missing reward files from their fixed public sources, safely.

Every file lands in ``<reno_rewards>/<reward>/`` under a name from the fixed table in
``registry.py`` (never a name from a server or a workflow). It is first downloaded into a staging
folder inside the reward folder, checked against the size and hash the source publishes (the
Hugging Face Hub's ETag is the SHA-256 of LFS files and the git blob SHA-1 of small ones; plain
URLs carry a SHA-256 in the table when one is known), and only then renamed into place, so a
partial or corrupted transfer never looks like a complete file.

Each download stages in its own ``.reno-download/<token>/`` beside a ``<token>.lock`` that names its
process (host, pid, boot). A download killed outright (``kill -9``, a power cut) leaves both behind;
``clean_stale_staging`` removes them when the reward is next loaded, once their process is gone (or
nothing in them has changed for a day), and never touches a live download's (``staging.py``, which the
preference-reward trainer's staging shares).

Progress and cancel: ``fetch`` calls a ``progress(phase, done, total)`` callback before the first byte,
after every chunk read (``read1``: as soon as bytes arrive, at most ``CHUNK``), before verifying and once
the file is in place. The callback may raise to stop the download (the ComfyUI layer raises the host's
interruption there when the user presses Cancel): the staging is removed, nothing is put under the final
name, and that very exception propagates (it is never wrapped in ``DownloadError``). This module never
imports ComfyUI; the callback is how the host's progress bar and cancel reach it.

Hub files are fetched here too (a metadata request through ``huggingface_hub``, then a plain streamed GET of
the resolve URL at the commit it names, following redirects only as ``check_url`` allows), so both kinds of
source report progress and stop the same way on every ``huggingface_hub`` version. A connection that drops
mid-file is resumed (``Range``) up to ``RESUMES`` times when the server answers with the missing part.

Downloads are on unless ``RENO_DOWNLOADS`` is ``0``/``false``/``off`` or ``HF_HUB_OFFLINE`` is set
(the ComfyUI layer adds its own setting).
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import re
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .errors import RewardLoadError
from .staging import claim, clean_stale, release

log = logging.getLogger(__name__)

ENV_VAR = "RENO_DOWNLOADS"
STAGING = ".reno-download"
HUB = "https://huggingface.co"
# plain http is allowed to exactly these hosts (the tests' loopback hub); everything else needs https
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
# the most bytes read (and reported) at a time; a slow connection reports each smaller piece as it arrives
CHUNK = 1 << 20
# a transfer that drops mid-file is resumed this many times (when the server honours Range)
RESUMES = 3
TIMEOUT_S = 60

#: ``progress(phase, done, total)``: phase "download" (before the first byte, then after every chunk), "verify"
#: (the size and hash check of the complete file), "done" (the file is in place). ``total`` is None while unknown.
Progress = Callable[[str, int, "int | None"], None]


@dataclass(frozen=True)
class DownloadProgress:
    """Where the downloads of one reward stand: what ``ensure_files`` tells its ``progress`` callback."""

    reward: str  # the reward's name, e.g. "pickscore"
    file: str  # the file's name in the reward folder
    index: int  # 1-based, among the files this call downloads
    count: int  # how many files this call downloads
    phase: str  # "download", "verify" or "done" (see ``Progress``)
    done: int  # bytes of this file received so far
    total: int | None  # bytes of this file (None while unknown)


class DownloadError(RewardLoadError):
    """A download failed or did not verify; nothing was put in place.

    ``reason`` is the one-line cause (without the file list that ``registry.ensure_files`` adds).
    """

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        self.reason = reason or message


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
        """The public page of the source (huggingface.co for Hub files, whatever HF_ENDPOINT says)."""
        return f"{HUB}/{self.repo}" if self.repo else str(self.url)

    def download_url(self, name: str) -> str:
        """The URL this file is fetched from now: on the Hub endpoint in use (``HF_ENDPOINT``) for Hub files."""
        if not self.repo:
            return str(self.url)
        filename = urllib.parse.quote(self.filename or Path(name).name)
        return f"{_hub_endpoint()}/{self.repo}/resolve/{urllib.parse.quote(self.revision, safe='')}/{filename}"

    def host(self) -> str:
        """Where the file comes from, for messages: the endpoint in use, saying so when HF_ENDPOINT chose it."""
        if self.repo:
            endpoint = _hub_endpoint()
            return f"{endpoint} (HF_ENDPOINT)" if os.environ.get("HF_ENDPOINT") else endpoint
        parts = urllib.parse.urlsplit(str(self.url))
        return f"{parts.scheme}://{parts.netloc}"


def downloads_enabled() -> bool:
    value = os.environ.get(ENV_VAR, "1").strip().lower()
    if value in ("0", "false", "off", "no"):
        return False
    return os.environ.get("HF_HUB_OFFLINE", "0").strip().lower() in ("", "0", "false", "off", "no")


def _hub_endpoint() -> str:
    return (os.environ.get("HF_ENDPOINT") or HUB).rstrip("/")


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


def _fetch_hub(src: Source, name: str, staging: Path, progress: Progress | None = None) -> Path:
    from huggingface_hub import get_hf_file_metadata, hf_hub_url

    endpoint = _hub_endpoint()
    filename = src.filename or Path(name).name
    what = f"{src.repo}/{filename}"
    meta = get_hf_file_metadata(hf_hub_url(src.repo, filename, revision=src.revision, endpoint=endpoint),
                                endpoint=endpoint)
    log.info("ReNO: downloading %s (%s bytes) from %s", what, meta.size, endpoint)
    url = hf_hub_url(src.repo, filename, revision=meta.commit_hash or src.revision, endpoint=endpoint)
    part = staging / (Path(name).name + ".incomplete")
    _stream(url, part, meta.size, what, progress, trusted=endpoint)
    _report(progress, "verify", part.stat().st_size, meta.size)
    _verify(part, what, meta.size, etag=meta.etag)
    return part


def check_url(url: str) -> None:
    """Refuse a plain-URL source that is not HTTPS, except plain http to exactly localhost/127.0.0.1/::1.

    The host is compared exactly after parsing, so ``http://localhost.evil.example/`` or
    ``http://127.0.0.1.nip.io/`` are refused; so is anything parsers may read differently (user info as in
    ``http://localhost@evil.example/``, ``http://[::1].evil/``, whitespace, control characters, backslashes).
    """
    text = str(url)
    if not text or any(c.isspace() or ord(c) < 32 or ord(c) == 127 or c == "\\" for c in text):
        raise DownloadError(f"refusing the source URL {text!r}: it holds spaces, control characters or backslashes")
    try:
        parts = urllib.parse.urlsplit(text)
        host = parts.hostname or ""
        parts.port  # noqa: B018 - raises ValueError on a malformed port
    except ValueError as e:
        raise DownloadError(f"refusing the source URL {text!r}: it does not parse ({e})") from None
    if not _NETLOC.fullmatch(parts.netloc):  # userinfo, brackets with a tail...: parsers disagree on the host
        raise DownloadError(f"refusing the source URL {text!r}: its host part {parts.netloc!r} is not a plain "
                            "host name or address with an optional port")
    scheme = parts.scheme.lower()
    if scheme == "https" and host:
        return
    if scheme == "http" and host in LOOPBACK_HOSTS:
        return
    raise DownloadError(
        f"refusing a non-HTTPS source {text!r} (host {host or 'missing'!r}): sources must be https:// URLs "
        f"(plain http only to {', '.join(sorted(LOOPBACK_HOSTS))})"
    )


# a host name, IPv4 address or bracketed IPv6 address, then an optional port: nothing else in the netloc
_NETLOC = re.compile(r"(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(:[0-9]{1,5})?")


class _CheckedRedirects(urllib.request.HTTPRedirectHandler):
    """Follow a redirect only to a URL that passes ``check_url`` (no downgrade from https to http), or to the
    ``trusted`` origin (scheme, host and port of the Hub endpoint the user chose: a plain-http mirror may
    redirect within itself)."""

    def __init__(self, trusted: str | None = None):
        super().__init__()
        self.trusted = _origin(trusted) if trusted else None

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        if self.trusted is None or _origin(newurl) != self.trusted:
            check_url(newurl)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urllib.parse.urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = -1
    return parts.scheme.lower(), (parts.hostname or "").lower(), port


class _Stopped(Exception):  # noqa: N818 - carries the exception a progress callback raised, to re-raise it as is
    def __init__(self, error: BaseException):
        super().__init__(repr(error))
        self.error = error


def _report(progress: Progress | None, phase: str, done: int, total: int | None) -> None:
    if progress is None:
        return
    try:
        progress(phase, done, total)
    except Exception as e:  # the caller stops the download: re-raised unchanged by fetch
        raise _Stopped(e) from e


def _content_range_start(value: str | None) -> int | None:
    m = re.fullmatch(r"\s*bytes\s+(\d+)-\d+/(\d+|\*)\s*", value or "")
    return int(m.group(1)) if m else None


def _stream(url: str, part: Path, size: int | None, what: str, progress: Progress | None,
            trusted: str | None = None) -> int | None:
    """GET ``url`` into ``part``, reporting each chunk; returns the size (known, or learned from
    ``Content-Length``). Never writes more than ``size`` bytes. A connection that drops mid-file is resumed
    with ``Range`` (up to ``RESUMES`` times) when the server answers 206 from the byte asked for; otherwise
    the transfer is incomplete."""
    opener = urllib.request.build_opener(_CheckedRedirects(trusted))
    received, resumes = 0, 0
    with open(part, "wb") as out:
        while True:
            request = urllib.request.Request(url)
            if received:
                request.add_header("Range", f"bytes={received}-")
            try:
                with opener.open(request, timeout=TIMEOUT_S) as response:
                    if received and (response.status != 206
                                     or _content_range_start(response.headers.get("Content-Range")) != received):
                        raise DownloadError(f"{what}: the connection dropped after {received} bytes and the server "
                                            "cannot resume it; the transfer was incomplete",
                                            f"the connection dropped after {received} bytes; the transfer was "
                                            "incomplete")
                    if not received:
                        if size is None:
                            length = response.headers.get("Content-Length")
                            size = int(length) if length and length.isdigit() else None
                        _report(progress, "download", 0, size)
                    read = getattr(response, "read1", response.read)
                    while chunk := read(CHUNK):
                        if size is not None and received + len(chunk) > size:  # never more than the source promised
                            raise DownloadError(f"{what}: the server sent more than the {size} bytes the source says",
                                                f"the server sent more than {size} bytes")
                        out.write(chunk)
                        received += len(chunk)
                        _report(progress, "download", received, size)
                    if size is not None and received < size:  # the server closed the connection early
                        raise http.client.IncompleteRead(b"", size - received)
                return size
            except (http.client.IncompleteRead, ConnectionError, TimeoutError) as e:
                if not received:
                    raise
                if resumes >= RESUMES:
                    raise DownloadError(f"{what}: the connection dropped after {received} of {size} bytes "
                                        f"({_one_line(e)}); the transfer was incomplete",
                                        f"the connection dropped after {received} of {size} bytes; the transfer "
                                        "was incomplete") from e
                resumes += 1
                log.warning("ReNO: %s: the connection dropped after %d bytes (%s); resuming (%d of %d)", what,
                            received, _one_line(e), resumes, RESUMES)
                out.flush()


def _fetch_url(src: Source, name: str, staging: Path, progress: Progress | None = None) -> Path:
    check_url(str(src.url))
    part = staging / (Path(name).name + ".incomplete")
    log.info("ReNO: downloading %s", src.url)
    size = _stream(str(src.url), part, src.size, str(src.url), progress)
    _report(progress, "verify", part.stat().st_size, size)
    _verify(part, str(src.url), size, sha256=src.sha256)
    return part


# -- staging ------------------------------------------------------------------------------------------

def clean_stale_staging(folder: Path) -> list[Path]:
    """Remove the staging that killed downloads left in ``folder/.reno-download``; returns what was removed.

    A lock whose process is gone (or that has not changed for ``staging.STALE_AFTER_S``) goes with its work
    folder (the ``.incomplete`` files); entries no lock owns go after ``staging.ORPHAN_AFTER_S``. A live
    download's lock and files are left alone. Never raises: cleaning is a courtesy (``staging.clean_stale``).
    """
    return clean_stale(Path(folder) / STAGING, "download")


def fetch(src: Source, folder: Path, name: str, progress: Progress | None = None) -> Path:
    """Download ``src`` to ``folder/name`` atomically; returns the final path.

    The transfer stages in ``folder/.reno-download/<token>/`` (owned by ``<token>.lock``), which is
    removed whatever happens, unless the process itself dies (see ``clean_stale_staging``).
    ``progress`` (see ``Progress``) is told every chunk; an exception it raises stops the download and is
    re-raised unchanged, with nothing left behind.
    """
    folder.mkdir(parents=True, exist_ok=True)
    target = _safe_target(folder, name)
    staging = folder / STAGING
    lock, work = claim(staging)
    try:
        path = _fetch_hub(src, name, work, progress) if src.repo else _fetch_url(src, name, work, progress)
        target.parent.mkdir(parents=True, exist_ok=True)
        os.replace(path, target)
    except _Stopped as stopped:
        log.info("ReNO: the download of %s was stopped (%s); nothing of it was kept", name,
                 _one_line(stopped.error))
        raise stopped.error from None
    except DownloadError:
        raise
    except Exception as e:  # noqa: BLE001 - network, HTTP and disk errors become one clear message
        reason = _one_line(e)
        raise DownloadError(f"downloading {name} from {src.download_url(name)} failed: {reason}", reason) from e
    finally:
        release(staging, lock, work)
    size = target.stat().st_size
    _report_done(progress, size)
    return target


def _report_done(progress: Progress | None, size: int) -> None:
    try:
        _report(progress, "done", size, size)
    except _Stopped as stopped:  # the file is complete and in place: a stop now only ends what follows
        raise stopped.error from None


def _one_line(e: BaseException) -> str:
    text = next((line.strip() for line in str(e).splitlines() if line.strip()), "")
    return f"{type(e).__name__}: {text}" if text else type(e).__name__
