"""The artist's preference picks: an append-only dataset of "preferred" / "rejected" marks on images.

Pure Python (standard library only; never imports ComfyUI), so a trainer or a script can read a dataset on its
own. ``root`` is a user's folder (ComfyUI's per-user directory); a dataset lives in
``<root>/reno_preferences/<dataset>/``:

* ``records.jsonl``: one JSON object per line, appended, never rewritten::

    {"id": "<uuid4 hex>", "time": <unix float>, "prompt": str, "image": "images/<sha256 prefix>.png",
     "mark": "preferred" | "rejected", "compared_with": [ids of the live records of the same prompt with the
     opposite mark when this one was made], "source": {"node": str, "filename": str, "subfolder": str, "type": str}}

  and tombstones ``{"id": ..., "deleted": true, "time": ...}``: readers drop the records they name.
* ``images/<sha256 prefix>.png``: the marked image (a copy: records outlive ComfyUI's temp folder), named by its
  content, written to a temporary file and renamed into place before the record that names it is appended.

Crash safety: each line goes in with one ``os.write`` on an ``O_APPEND`` descriptor while an exclusive lock
(a thread lock plus ``fcntl.flock``/``msvcrt.locking`` on ``.lock``) is held, so concurrent writers (threads or
processes) never interleave and a crash can at worst leave a truncated last line, which readers skip and the
next append closes with a newline first. Earlier records are never touched.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Iterable
from contextlib import contextmanager

FOLDER = "reno_preferences"
RECORDS = "records.jsonl"
IMAGES = "images"
LOCK = ".lock"
MARKS = ("preferred", "rejected")
HASH_CHARS = 32  # of the sha256 hex digest: 128 bits names an image
MAX_NAME = 64
MAX_PROMPT = 10_000
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_ID = re.compile(r"[0-9a-f]{32}")
_WINDOWS_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}
_thread_lock = threading.Lock()


class PreferenceError(ValueError):
    """Bad input to the preference store (a bad dataset name, mark, id, image...): the message says what to do."""


def validate_dataset_name(name) -> str:
    """``name`` if it is a safe folder name (letters, digits, ``-``, ``_``, ``.``; 1 to 64 characters; no leading
    dot; not a Windows device name); raises PreferenceError otherwise."""
    if not isinstance(name, str) or not name:
        raise PreferenceError("preference dataset name is empty: set 'ReNO: preference dataset' to a name such as "
                              "'default' (letters, digits, - _ .)")
    if len(name) > MAX_NAME or not _NAME.fullmatch(name) or name.split(".")[0].lower() in _WINDOWS_RESERVED:
        raise PreferenceError(f"preference dataset name {name[:80]!r} is not allowed: use 1 to {MAX_NAME} letters, "
                              "digits, '-', '_' or '.', not starting with '.' (e.g. 'portraits-2025')")
    return name


def is_record_id(value) -> bool:
    return isinstance(value, str) and bool(_ID.fullmatch(value))


def dataset_dir(root, dataset: str) -> str:
    return os.path.join(os.fspath(root), FOLDER, validate_dataset_name(dataset))


@contextmanager
def _locked(folder: str):
    """Exclusive lock on ``folder`` across threads (of this process) and processes."""
    with _thread_lock:
        fd = os.open(os.path.join(folder, LOCK), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            _lock_fd(fd)
            try:
                yield
            finally:
                _unlock_fd(fd)
        finally:
            os.close(fd)


try:  # POSIX
    import fcntl

    def _lock_fd(fd):
        fcntl.flock(fd, fcntl.LOCK_EX)

    def _unlock_fd(fd):
        fcntl.flock(fd, fcntl.LOCK_UN)

except ImportError:  # Windows
    import msvcrt

    def _lock_fd(fd):
        os.lseek(fd, 0, os.SEEK_SET)
        while True:
            try:
                msvcrt.locking(fd, msvcrt.LK_LOCK, 1)
                return
            except OSError:  # LK_LOCK gives up after 10 s: keep waiting
                continue

    def _unlock_fd(fd):
        os.lseek(fd, 0, os.SEEK_SET)
        msvcrt.locking(fd, msvcrt.LK_UNLCK, 1)


def _append_lines(path: str, objects: Iterable[dict]) -> None:
    """Append JSON lines with one write (call with the lock held). A truncated last line (a crash mid-write) is
    closed with a newline first, so it never swallows the new line."""
    data = "".join(json.dumps(o, ensure_ascii=False, separators=(",", ":")) + "\n" for o in objects).encode("utf-8")
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        size = os.fstat(fd).st_size
        if size:
            with open(path, "rb") as f:
                f.seek(size - 1)
                if f.read(1) != b"\n":
                    data = b"\n" + data
        written = os.write(fd, data)
        while written < len(data):  # a regular file takes it all at once; finish a short write anyway
            written += os.write(fd, data[written:])
        os.fsync(fd)
    finally:
        os.close(fd)


def _read_lines(path: str) -> list[dict]:
    """Every whole JSON object line of ``path`` (lines that do not parse, e.g. a truncated last one, skipped)."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        return []
    out = []
    for line in raw.split(b"\n"):
        if not line.strip():
            continue
        try:
            obj = json.loads(line.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            continue
        if isinstance(obj, dict) and is_record_id(obj.get("id")):
            out.append(obj)
    return out


def _is_record(obj: dict) -> bool:
    return (obj.get("mark") in MARKS and isinstance(obj.get("prompt"), str) and isinstance(obj.get("image"), str)
            and isinstance(obj.get("source"), dict))


def _live(lines: list[dict]) -> list[dict]:
    dead = {o["id"] for o in lines if o.get("deleted") is True}
    return [o for o in lines if o.get("deleted") is not True and o["id"] not in dead and _is_record(o)]


def read_records(root, dataset: str) -> list[dict]:
    """The live records of ``dataset`` (tombstoned ones dropped), oldest first; [] when there is no dataset."""
    return _live(_read_lines(os.path.join(dataset_dir(root, dataset), RECORDS)))


def _write_image(images: str, image_bytes: bytes) -> str:
    """Store a PNG under its content's name (temp file + rename; an existing copy is kept). Returns the name."""
    name = hashlib.sha256(image_bytes).hexdigest()[:HASH_CHARS] + ".png"
    final = os.path.join(images, name)
    if os.path.isfile(final) and os.path.getsize(final) == len(image_bytes):
        return name
    with _replacing(final, ".tmp-", ".png") as tmp:
        with open(tmp, "wb") as f:
            f.write(image_bytes)
            f.flush()
            os.fsync(f.fileno())
    return name


@contextlib.contextmanager
def _replacing(final: str, prefix: str, suffix: str):
    """A temporary file beside ``final`` for the block to write; renamed onto ``final`` when the block ends, removed
    when it fails (``final`` is then untouched)."""
    fd, tmp = tempfile.mkstemp(prefix=prefix, suffix=suffix, dir=os.path.dirname(os.path.abspath(final)))
    os.close(fd)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def _clean_source(source) -> dict:
    source = source if isinstance(source, dict) else {}
    return {k: str(source.get(k, "")) for k in ("node", "filename", "subfolder", "type")}


def append_record(root, dataset: str, record_fields: dict, image_bytes: bytes, *, replaced: list | None = None) -> dict:
    """Mark an image: store ``image_bytes`` (PNG) and append one record; returns the record.

    ``record_fields``: ``prompt`` (str), ``mark`` ("preferred" or "rejected"), ``source`` ({node, filename,
    subfolder, type} of the original image). ``compared_with`` is filled in here (under the lock) from the
    dataset's live records. A live record of the same image and prompt (an earlier mark of it) is tombstoned
    in the same write: an image has at most one live mark per prompt (their ids go into ``replaced`` when a list
    is given).
    """
    mark = record_fields.get("mark")
    if mark not in MARKS:
        raise PreferenceError(f"mark must be 'preferred' or 'rejected', not {str(mark)[:40]!r}")
    prompt = record_fields.get("prompt")
    if not isinstance(prompt, str):
        raise PreferenceError("the record needs the prompt text (a string) the image was made for")
    if len(prompt) > MAX_PROMPT:
        raise PreferenceError(f"the prompt is {len(prompt)} characters long; at most {MAX_PROMPT} are stored")
    if not isinstance(image_bytes, (bytes, bytearray)) or not bytes(image_bytes).startswith(PNG_SIGNATURE):
        raise PreferenceError("the image must be PNG data")
    folder = dataset_dir(root, dataset)
    images = os.path.join(folder, IMAGES)
    os.makedirs(images, exist_ok=True)
    with _locked(folder):
        image = IMAGES + "/" + _write_image(images, bytes(image_bytes))
        path = os.path.join(folder, RECORDS)
        live = _live(_read_lines(path))
        now = time.time()
        same = [r for r in live if r["prompt"] == prompt]
        tombstoned = [r["id"] for r in same if r["image"] == image]
        opposite = "rejected" if mark == "preferred" else "preferred"
        record = {
            "id": uuid.uuid4().hex,
            "time": now,
            "prompt": prompt,
            "image": image,
            "mark": mark,
            "compared_with": [r["id"] for r in same if r["mark"] == opposite and r["id"] not in tombstoned],
            "source": _clean_source(record_fields.get("source")),
        }
        _append_lines(path, [*({"id": i, "deleted": True, "time": now} for i in tombstoned), record])
    if replaced is not None:
        replaced.extend(tombstoned)
    return record


def delete_records(root, dataset: str, ids) -> list[str]:
    """Tombstone the live records ``ids`` of ``dataset`` (one atomic append); returns the ids deleted (those not
    live are left out). Images no live record names any more are removed."""
    wanted = [i for i in dict.fromkeys(ids or []) if is_record_id(i)]
    folder = dataset_dir(root, dataset)
    path = os.path.join(folder, RECORDS)
    if not wanted or not os.path.isfile(path):
        return []
    with _locked(folder):
        live = _live(_read_lines(path))
        live_ids = {r["id"] for r in live}
        gone = [i for i in wanted if i in live_ids]
        if not gone:
            return []
        now = time.time()
        _append_lines(path, [{"id": i, "deleted": True, "time": now} for i in gone])
        kept = {r["image"] for r in live if r["id"] not in gone}
        for r in live:
            if r["id"] in gone and r["image"] not in kept:
                _remove_image(folder, r["image"])
    return gone


def _remove_image(folder: str, image: str) -> None:
    name = os.path.basename(image)
    if image == f"{IMAGES}/{name}" and name.endswith(".png"):
        try:
            os.unlink(os.path.join(folder, IMAGES, name))
        except FileNotFoundError:
            pass


def list_datasets(root) -> list[str]:
    """The names of the datasets under ``<root>/reno_preferences`` (folders with a records file), sorted."""
    base = os.path.join(os.fspath(root), FOLDER)
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return []
    out = []
    for name in names:
        try:
            validate_dataset_name(name)
        except PreferenceError:
            continue
        if os.path.isfile(os.path.join(base, name, RECORDS)):
            out.append(name)
    return sorted(out)


def export_dataset(root, dataset: str, dest_path) -> str:
    """Write ``dataset`` as one zip at ``dest_path``: ``<dataset>/records.jsonl`` (its live records, one per
    line) and ``<dataset>/images/*.png`` (the images they name). Written to a temporary file and renamed, so
    ``dest_path`` is either the old file or the whole new one. Returns ``dest_path``."""
    folder = dataset_dir(root, dataset)
    if not os.path.isfile(os.path.join(folder, RECORDS)):
        raise FileNotFoundError(f"no preference dataset {dataset!r} in {os.path.join(os.fspath(root), FOLDER)}")
    records = read_records(root, dataset)
    dest = os.fspath(dest_path)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    with _replacing(dest, ".tmp-export-", ".zip") as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{dataset}/{RECORDS}", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        for image in sorted({r["image"] for r in records}):
            name = os.path.basename(image)
            src = os.path.join(folder, IMAGES, name)
            if image == f"{IMAGES}/{name}" and os.path.isfile(src):
                z.write(src, f"{dataset}/{IMAGES}/{name}", compress_type=zipfile.ZIP_STORED)
    return dest


def pairs(records: list[dict]) -> list[tuple[dict, dict]]:
    """Every (preferred, rejected) combination of records with the same prompt, in record order."""
    by_prompt: dict[str, dict[str, list[dict]]] = {}
    for r in records:
        if r.get("mark") in MARKS and isinstance(r.get("prompt"), str):
            by_prompt.setdefault(r["prompt"], {"preferred": [], "rejected": []})[r["mark"]].append(r)
    return [(p, q) for group in by_prompt.values() for p in group["preferred"] for q in group["rejected"]]
