"""Where each item's images go, in the layouts the benchmarks' own evaluation scripts read.

* ``geneval``: ``images/<index:05>/metadata.jsonl`` (the prompt's metadata line) and
  ``images/<index:05>/samples/<seed:05>.png``; evaluate with GenEval's ``evaluation/evaluate_images.py <out>/images``.
  ``--save-initial`` writes the same tree under ``initial/`` (the plain one-step images: evaluate it too for the
  base-model score).
* ``t2i-compbench``: ``samples/<prompt>_<n:06>.png`` (``n`` counts images over the whole run: prompt index × seeds +
  seed position, as T2I-CompBench's samplers number them); initial images in ``initial/samples/``. The prompt is
  cut to its first 200 characters and then to what fits the file system's name limit in bytes (``NAME_MAX``,
  255 on most; a 100-character Chinese prompt is 300 bytes in UTF-8), on a character boundary: T2I-CompBench
  reads the prompt back from the name, so it is kept whole wherever it fits.
* ``plain``: ``images/<index:05>_<seed:05>.png``; initial images in ``initial/``.

The runner's own files (``results.jsonl``, ``failures.jsonl``, ``summary.json``, ``run.json``) sit in the output
folder's root, outside every image tree.
"""

from __future__ import annotations

import json
import os

LAYOUTS = ("geneval", "t2i-compbench", "plain")
NAME_MAX = 255  # bytes in one file name where the file system does not say (ext4, APFS, NTFS: 255)
PROMPT_CHARS = 200  # the earlier cut, kept so that names that fitted stay the same (resume finds them)


def name_max(folder) -> int:
    """The longest file name, in bytes, that ``folder``'s file system takes (``os.pathconf`` NAME_MAX where the
    platform has it, else 255)."""
    try:
        return int(os.pathconf(os.fspath(folder), "PC_NAME_MAX"))
    except (AttributeError, ValueError, OSError):  # no pathconf (Windows), unknown name, or an odd file system
        return NAME_MAX


def _safe_prompt(prompt: str, max_bytes: int) -> str:
    """The prompt as the stem of a file name: T2I-CompBench reads the prompt back from the name (the text before
    "_<n>.png"), so it is kept, only made a valid name (no separators, no NUL), cut to its first 200 characters
    and then to ``max_bytes`` bytes of UTF-8 on a character boundary (a lone surrogate, which no file name can
    hold, becomes "?")."""
    text = prompt.replace("/", " ").replace("\\", " ").replace("\0", "").strip()[:PROMPT_CHARS]
    data = text.encode("utf-8", "replace")  # a lone surrogate (no file name can hold it) becomes "?"
    if len(data) <= max_bytes:
        return data.decode("utf-8")  # the name as before wherever it fits: a resumed run finds its files
    # "ignore" drops a character cut in two at the end
    return data[:max(0, max_bytes)].decode("utf-8", "ignore").rstrip()


def image_path(layout: str, role: str, *, index: int, seed: int, prompt: str, position: int, n_seeds: int,
               max_name: int = NAME_MAX) -> str:
    """Relative path of an item's image. ``role``: "best" or "initial"; ``position``: the seed's position in the
    run's seed list; ``max_name``: the file system's name limit in bytes (``name_max``)."""
    if layout == "geneval":
        root = "images" if role == "best" else "initial"
        return f"{root}/{index:05d}/samples/{seed:05d}.png"
    if layout == "t2i-compbench":
        root = "samples" if role == "best" else "initial/samples"
        tail = f"_{index * n_seeds + position:06d}.png"
        return f"{root}/{_safe_prompt(prompt, max_name - len(tail))}{tail}"
    if layout == "plain":
        root = "images" if role == "best" else "initial"
        return f"{root}/{index:05d}_{seed:05d}.png"
    raise ValueError(f"unknown layout {layout!r}; choose one of {', '.join(LAYOUTS)}")


def side_files(layout: str, role: str, *, index: int, metadata: dict) -> dict[str, bytes]:
    """Files a layout wants beside an item's image (GenEval: the prompt folder's metadata.jsonl)."""
    if layout == "geneval":
        root = "images" if role == "best" else "initial"
        return {f"{root}/{index:05d}/metadata.jsonl": (json.dumps(metadata, ensure_ascii=False) + "\n").encode()}
    return {}
