"""What the runner passes around: an ``Item`` to make (a prompt-file entry with one seed), and what a backend made of
it: an ``ItemResult`` (scores, PNG images) or an ``ItemFailure``. The result line of ``results.jsonl`` is built here,
once (``ItemResult.record``), whichever backend made the item and whichever process ran it.

Across a process boundary (Ray) they travel as plain dicts (``to_wire`` / ``from_wire``): the receiving process may
have imported the pack under another package name, so no class of the pack is pickled by reference.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Union

#: The fields of an item a backend needs (what is sent to a worker process).
WIRE_FIELDS = ("index", "line", "prompt", "seed")


@dataclass
class Item:
    """One image to make: a prompt-file entry (``index`` its entry number, ``line`` its line in the file) with one
    seed; ``position`` is the seed's place in ``--seeds`` and ``metadata`` the entry's benchmark metadata (both for
    the output layout, on the driver only)."""

    index: int
    line: int
    prompt: str
    seed: int
    position: int = 0
    metadata: dict = field(default_factory=dict)

    @property
    def key(self) -> tuple[int, int]:
        return (self.index, self.seed)

    def to_wire(self) -> dict:
        return {k: getattr(self, k) for k in WIRE_FIELDS}

    @classmethod
    def from_wire(cls, d: dict) -> Item:
        return cls(index=int(d["index"]), line=int(d["line"]), prompt=str(d["prompt"]), seed=int(d["seed"]))


@dataclass
class ItemResult:
    """A made item: each reward's score (and the weighted ``total``) at iteration 0 and at the best iteration, the
    PNG bytes per image role ("best", "initial"), and timings. ``extra``: record fields only one backend has (the
    workflow backend's ``vae_layout``), placed before the timings."""

    rewards: list[dict]  # [{"label", "name", "weight"}]
    initial: dict[str, float]
    best: dict[str, float]
    best_iteration: int
    iterations: int
    stop_reason: str | None
    images: dict[str, bytes]
    node_seconds: float = math.nan  # the generation itself (the ReNO Sampler node; the diffusers ReNO loop)
    seconds: float = 0.0  # the whole item in its worker
    extra: dict = field(default_factory=dict)
    worker: int | None = None  # the Ray actor's number

    ok = True

    def record(self, item: Item) -> dict:
        """The item's line in ``results.jsonl`` (the driver adds the image paths and the worker)."""
        return {"index": item.index, "line": item.line, "prompt": item.prompt, "seed": int(item.seed),
                "rewards": self.rewards, "initial": self.initial, "best": self.best,
                "best_iteration": int(self.best_iteration), "iterations": int(self.iterations),
                "stop_reason": self.stop_reason, **self.extra,
                "node_seconds": round(float(self.node_seconds), 4), "seconds": round(float(self.seconds), 4)}

    def to_wire(self) -> dict:
        return {"ok": True, **asdict(self)}


@dataclass
class ItemFailure:
    """An item that could not be made; the run goes on (``failures.jsonl``)."""

    error: str
    traceback: str | None = None
    seconds: float = 0.0
    worker: int | None = None

    ok = False

    @classmethod
    def from_exception(cls, e: BaseException, seconds: float = 0.0) -> ItemFailure:
        return cls(f"{type(e).__name__}: {e}", traceback.format_exc(limit=6), seconds)

    def to_wire(self) -> dict:
        return {"ok": False, **asdict(self)}


Outcome = Union[ItemResult, ItemFailure]


def outcome_from_wire(d: dict) -> Outcome:
    fields_ = {k: v for k, v in d.items() if k != "ok"}
    return ItemResult(**fields_) if d.get("ok") else ItemFailure(**fields_)


def timed(make: Callable[[Item], ItemResult], item: Item) -> Outcome:
    """``make(item)`` with its wall time in ``seconds``; an exception is this item's failure (one bad item never stops
    the batch). ``KeyboardInterrupt`` (a second Ctrl-C) passes through."""
    t0 = time.perf_counter()
    try:
        result = make(item)
    except Exception as e:
        return ItemFailure.from_exception(e, time.perf_counter() - t0)
    result.seconds = time.perf_counter() - t0
    return result


def set_threads(threads) -> int | None:
    """``torch.set_num_threads(threads)`` when ``threads`` is given; the count before (to restore), else None."""
    if not threads:
        return None
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(int(threads))
    return before


def restore_threads(before: int | None) -> None:
    if before is not None:
        import torch

        torch.set_num_threads(before)
