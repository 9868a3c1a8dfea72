"""Where each item's images go, in the layouts the benchmarks' own evaluation scripts read.

* ``geneval``: ``images/<index:05>/metadata.jsonl`` (the prompt's metadata line) and
  ``images/<index:05>/samples/<seed:05>.png``; evaluate with GenEval's ``evaluation/evaluate_images.py <out>/images``.
  ``--save-initial`` writes the same tree under ``initial/`` (the plain one-step images: evaluate it too for the
  base-model score).
* ``t2i-compbench``: ``samples/<prompt>_<n:06>.png`` (``n`` counts images over the whole run: prompt index × seeds +
  seed position, as T2I-CompBench's samplers number them); initial images in ``initial/samples/``.
* ``plain``: ``images/<index:05>_<seed:05>.png``; initial images in ``initial/``.

The runner's own files (``results.jsonl``, ``failures.jsonl``, ``summary.json``, ``run.json``) sit in the output
folder's root, outside every image tree.
"""

from __future__ import annotations

import json

LAYOUTS = ("geneval", "t2i-compbench", "plain")


def _safe_prompt(prompt: str) -> str:
    # T2I-CompBench reads the prompt back from the file name (the text before "_<n>.png"): keep it, only make it
    # a valid file name
    return prompt.replace("/", " ").replace("\\", " ").replace("\0", "").strip()[:200]


def image_path(layout: str, role: str, *, index: int, seed: int, prompt: str, position: int, n_seeds: int) -> str:
    """Relative path of an item's image. ``role``: "best" or "initial"; ``position``: the seed's position in the
    run's seed list."""
    if layout == "geneval":
        root = "images" if role == "best" else "initial"
        return f"{root}/{index:05d}/samples/{seed:05d}.png"
    if layout == "t2i-compbench":
        root = "samples" if role == "best" else "initial/samples"
        return f"{root}/{_safe_prompt(prompt)}_{index * n_seeds + position:06d}.png"
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
