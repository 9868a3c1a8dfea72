"""The artist's preference picks: an append-only dataset of "preferred" / "rejected" marks on images.

Pure Python (standard library only; never imports ComfyUI), so a trainer or a script can read a dataset on its
own. ``root`` is a user's folder (ComfyUI's per-user directory); a dataset lives in
``<root>/reno_preferences/<dataset>/``:

* ``records.jsonl``: one JSON object per line, appended, never rewritten::

    {"id": "<uuid4 hex>", "time": <unix float>, "prompt": str, "image": "images/<sha256 prefix>.png",
     "mark": "preferred" | "rejected", "source": {"node": str, "filename": str, "subfolder": str, "type": str}}

  and tombstones ``{"id": ..., "deleted": true, "time": ...}``: readers drop the records they name. A record
  stores its mark only: the (preferred, rejected) pairs are derived from the marks when they are needed
  (``pairs``), so a record's size does not grow with the marks before it. (Records written before this held a
  ``compared_with`` list of ids; it is ignored, and left out of what ``read_records`` returns.)
* ``images/<sha256 prefix>.png``: the marked image (a copy: records outlive ComfyUI's temp folder), named by its
  content, written to a temporary file and renamed into place before the record that names it is appended.

A record's ``image`` is trusted only through ``image_resolver``: ``images/<file name>.png``, a plain name, whose
file (after symlinks) is in the dataset's own ``images/`` folder. Anyone can write a ``records.jsonl`` (ComfyUI's
``/userdata`` route writes any file of a user's folder); a record naming anything else (an absolute path,
``..``, a link out of the folder) is not a record: listing, export, delete and training all leave it out, with
the same words whatever exists outside.

Pairs per prompt are bounded (``PAIRS_PER_PROMPT``): past it a seeded sample is taken that still uses every
mark where it can (see ``pairs``). Images larger than ``MAX_PIXELS`` (8192 × 8192) are refused where they are
decoded (the routes' conversion to PNG and the trainer's ``read_image``): a small file can hold a huge image.

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
import random
import re
import tempfile
import threading
import time
import uuid
import zipfile
from collections.abc import Callable, Iterable
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
MAX_PIXELS = 8192 * 8192  # 67,108,864 pixels (67.1 megapixels): above it an image is refused, not decoded
PAIRS_PER_PROMPT = 256  # at most this many (preferred, rejected) pairs per prompt; a seeded sample past it

_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]*")
_IMAGE_NAME = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,200}\.png")
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


def check_pixels(width: int, height: int, what: str = "the image") -> None:
    """PreferenceError when a ``width`` x ``height`` image is over ``MAX_PIXELS`` (checked from the header, before
    any decoding: a few MB of JPEG or PNG can hold gigabytes of pixels)."""
    if int(width) * int(height) > MAX_PIXELS:
        raise PreferenceError(
            f"{what} is {width} x {height} pixels ({width * height / 1e6:.1f} megapixels); at most "
            f"{MAX_PIXELS / 1e6:.1f} megapixels (8192 x 8192) are read: scale it down first")


def image_resolver(folder) -> Callable[[object], str]:
    """A function giving the file a record's ``image`` field names in the dataset ``folder``: the value must be
    ``images/<name>.png`` with a plain name (letters, digits, ``-``, ``_``, ``.``), and the file, after symlinks,
    must lie in ``folder``'s own ``images/`` folder. Anything else raises PreferenceError with the same words
    whatever exists outside (never revealing whether an outside file exists). The file itself may be missing."""
    folder = os.fspath(folder)
    base = os.path.realpath(os.path.join(folder, IMAGES))
    base_ok = base == os.path.join(os.path.realpath(folder), IMAGES)  # images/ itself is no link elsewhere

    def resolve(image) -> str:
        name = image[len(IMAGES) + 1:] if isinstance(image, str) and image.startswith(IMAGES + "/") else ""
        if base_ok and _IMAGE_NAME.fullmatch(name):
            path = os.path.realpath(os.path.join(base, name))
            if os.path.dirname(path) == base:
                return path
        shown = image[:80] if isinstance(image, str) else type(image).__name__
        raise PreferenceError(f"the record's image {shown!r} is not a file of the dataset's {IMAGES}/ folder "
                              f"(records name their image as {IMAGES}/<name>.png)")

    return resolve


def image_file(folder, image) -> str:
    """The file of one record's ``image`` in the dataset ``folder`` (see ``image_resolver``)."""
    return image_resolver(folder)(image)


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


def _live(lines: list[dict], folder: str, refused: list | None = None) -> list[dict]:
    """The live records (tombstoned ones dropped) whose image resolves inside ``folder`` (see ``image_resolver``);
    the ids of those whose image does not go into ``refused`` when a list is given."""
    dead = {o["id"] for o in lines if o.get("deleted") is True}
    resolve = image_resolver(folder)
    out = []
    for o in lines:
        if o.get("deleted") is True or o["id"] in dead or not _is_record(o):
            continue
        try:
            resolve(o["image"])
        except PreferenceError:
            if refused is not None:
                refused.append(o["id"])
            continue
        out.append(o)
    return out


def read_records(root, dataset: str, refused: list | None = None) -> list[dict]:
    """The live records of ``dataset`` (tombstoned ones dropped), oldest first; [] when there is no dataset.
    Records whose image is not a file of the dataset's ``images/`` folder are left out (their ids go into
    ``refused`` when a list is given); an old record's ``compared_with`` is left out."""
    folder = dataset_dir(root, dataset)
    return [{k: v for k, v in r.items() if k != "compared_with"}
            for r in _live(_read_lines(os.path.join(folder, RECORDS)), folder, refused)]


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
    subfolder, type} of the original image). A live record of the same image and prompt (an earlier mark of it)
    is tombstoned in the same write: an image has at most one live mark per prompt (their ids go into
    ``replaced`` when a list is given).
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
        live = _live(_read_lines(path), folder)
        now = time.time()
        tombstoned = [r["id"] for r in live if r["prompt"] == prompt and r["image"] == image]
        record = {
            "id": uuid.uuid4().hex,
            "time": now,
            "prompt": prompt,
            "image": image,
            "mark": mark,
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
        live = _live(_read_lines(path), folder)
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
    try:
        os.unlink(image_file(folder, image))
    except (PreferenceError, FileNotFoundError):
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
    resolve = image_resolver(folder)
    dest = os.fspath(dest_path)
    os.makedirs(os.path.dirname(os.path.abspath(dest)), exist_ok=True)
    with _replacing(dest, ".tmp-export-", ".zip") as tmp, zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr(f"{dataset}/{RECORDS}", "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in records))
        for image in sorted({r["image"] for r in records}):
            src = resolve(image)  # every record read resolves
            if os.path.isfile(src):
                z.write(src, f"{dataset}/{image}", compress_type=zipfile.ZIP_STORED)
    return dest


def _groups(records: list[dict]) -> dict[str, dict[str, list[dict]]]:
    by_prompt: dict[str, dict[str, list[dict]]] = {}
    for r in records:
        if r.get("mark") in MARKS and isinstance(r.get("prompt"), str):
            by_prompt.setdefault(r["prompt"], {"preferred": [], "rejected": []})[r["mark"]].append(r)
    return by_prompt


def pairs(records: list[dict], *, seed: int = 0, per_prompt: int | None = None) -> list[tuple[dict, dict]]:
    """(preferred, rejected) pairs of records with the same prompt, grouped by prompt in record order.

    A prompt with P preferred and R rejected marks gives every one of its P x R combinations while that is at most
    ``per_prompt`` (default ``PAIRS_PER_PROMPT``); past it, ``per_prompt`` of them, drawn with a generator seeded by ``seed`` and the prompt (the
    same records and seed give the same pairs on any machine): first max(P, R) pairs that use every mark (up to
    ``per_prompt``), then a uniform sample of the rest. Within a prompt the pairs keep record order."""
    per_prompt = PAIRS_PER_PROMPT if per_prompt is None else int(per_prompt)
    out: list[tuple[dict, dict]] = []
    for prompt, group in _groups(records).items():
        good, bad = group["preferred"], group["rejected"]
        n_good, n_bad = len(good), len(bad)
        total = n_good * n_bad
        if total <= per_prompt:
            out += [(p, q) for p in good for q in bad]
            continue
        rng = random.Random(f"reno-preference-pairs|{int(seed)}|{prompt}")  # str seeds hash with SHA-512
        order_good, order_bad = rng.sample(range(n_good), n_good), rng.sample(range(n_bad), n_bad)
        chosen: set[tuple[int, int]] = set()
        for k in range(min(per_prompt, max(n_good, n_bad))):  # every mark in at least one pair
            chosen.add((order_good[k % n_good], order_bad[k % n_bad]))
        for flat in rng.sample(range(total), min(total, per_prompt + len(chosen))):
            if len(chosen) >= per_prompt:
                break
            chosen.add(divmod(flat, n_bad))
        out += [(good[i], bad[j]) for i, j in sorted(chosen)]
    return out


def pair_count(records: list[dict], *, per_prompt: int | None = None) -> int:
    """How many pairs ``pairs`` gives (without making them)."""
    per_prompt = PAIRS_PER_PROMPT if per_prompt is None else int(per_prompt)
    return sum(min(len(g["preferred"]) * len(g["rejected"]), per_prompt) for g in _groups(records).values())
