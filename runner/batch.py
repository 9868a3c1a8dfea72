"""The batch driver: items (prompt × seed), resume, output files, progress, Ctrl-C, summary.

Files in the output folder:
* images in the chosen layout (``layouts.py``);
* ``results.jsonl``: one JSON line per finished item (prompt, index, line, seed, initial and best score per reward
  and weighted total, best iteration, seconds of the item and of the ReNO Sampler node);
* ``failures.jsonl``: this run's bad prompt-file lines and failed items, each with its line number;
* ``summary.json``: per reward (and the weighted total): mean initial, mean best, mean gain, share improved;
* ``run.json``: the workflow's hash, the layout and seeds, so a resumed run refuses a different workflow.

An item is finished when its JSON line and its image(s) both exist; re-running the same command skips those.
Each file is written to a temporary name, flushed to disk (``fsync``) and renamed into place, and the folder is
flushed after the rename; a result line is flushed before it counts: an item that says done survives a power cut.
An item whose files cannot be written (a full disk, a name the file system refuses) is a failed item in
``failures.jsonl``; the run goes on.

One run at a time per output folder: a run holds an exclusive lock on ``<out>/.reno-batch.lock`` (``flock``;
the file holds its PID) and a second run on the same folder stops at once, naming that PID.
"""

from __future__ import annotations

import contextlib
import errno
import json
import math
import os
import secrets
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from .backends import Source
from .items import Item, ItemFailure, ItemResult, Outcome
from .layouts import image_path, name_max, side_files
from .prompts import read_prompt_file

EXIT_OK, EXIT_FAILURES, EXIT_INTERRUPTED = 0, 1, 130
LOCK_FILE = ".reno-batch.lock"
VOLATILE_KEYS = ("seconds", "node_seconds", "worker")  # differ between runs of the same item


class Dispatch(Protocol):
    """Where the items run: ``LocalDispatch`` (this process) or ``ray_backend.RayDispatch`` (Ray actors). Builds the
    backend(s) from ``cfg.source``, hands each outcome to ``on_outcome`` (in the driver's thread) and honours ``stop``.
    """

    def __call__(self, cfg: BatchConfig, todo: list[Item], on_outcome: Callable[[Item, Outcome], None],
                 stop: StopFlag) -> None: ...


@dataclass(frozen=True)
class LocalDispatch:
    """The items one after another in this process, on one backend built once."""

    def __call__(self, cfg: BatchConfig, todo: list[Item], on_outcome, stop: StopFlag) -> None:
        if not todo:
            return
        backend = cfg.source.build(cfg.worker_options)
        stop.on_abort = backend.interrupt
        try:
            for item in todo:
                if stop.stop:
                    break
                try:
                    outcome = backend.run(item)
                except KeyboardInterrupt:  # a second Ctrl-C interrupted the item: nothing of it is written
                    backend.reset_interrupt()
                    stop.stop = True
                    break
                on_outcome(item, outcome)
        finally:
            stop.on_abort = None
            backend.close()


@dataclass
class BatchConfig:
    source: Source  # what makes the images: backends.WorkflowSource or backends.DiffusersSource
    prompt_file: Path
    out: Path
    seeds: list[int]
    layout: str = "geneval"
    prompt_format: str = "auto"
    limit: int | None = None  # only the first N prompts
    progress: bool = True
    worker_options: dict = field(default_factory=dict)  # the worker processes' options (worker.DEFAULT_OPTIONS)
    dispatch: Dispatch = field(default_factory=LocalDispatch)  # where the items run
    save_initial: bool = False  # also write iteration 0 (the plain one-step image)


class StopFlag:
    """Set by the first Ctrl-C (finish the current items, then stop); ``abort`` by a second one."""

    def __init__(self):
        self.stop = False
        self.abort = False
        self.on_abort: Callable[[], None] | None = None

    def request(self, *_):
        if self.stop:
            self.abort = True
            if self.on_abort is not None:
                self.on_abort()
            return
        self.stop = True
        print("\nreno-batch: stopping after the current item(s) (Ctrl-C again to abort them)", file=sys.stderr,
              flush=True)


class Output:
    """Writes an output folder; the driver's side of every backend."""

    def __init__(self, cfg: BatchConfig):
        self.cfg = cfg
        self.out = Path(cfg.out)
        self.out.mkdir(parents=True, exist_ok=True)
        self.results_path = self.out / "results.jsonl"
        self.failures_path = self.out / "failures.jsonl"
        self.failures: list[dict] = []
        self._lock = threading.Lock()
        self.max_name = name_max(self.out)

    # -- items --------------------------------------------------------------------------------
    def paths(self, item: Item, role: str) -> str:
        return image_path(self.cfg.layout, role, index=item.index, seed=item.seed, prompt=item.prompt,
                          position=item.position, n_seeds=len(self.cfg.seeds), max_name=self.max_name)

    def roles(self) -> list[str]:
        return ["best", "initial"] if self.cfg.save_initial else ["best"]

    def read_results(self) -> dict[tuple[int, int], dict]:
        done: dict[tuple[int, int], dict] = {}
        if not self.results_path.is_file():
            return done
        for k, line in enumerate(self.results_path.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                done[(int(rec["index"]), int(rec["seed"]))] = rec
            except (json.JSONDecodeError, KeyError, TypeError, ValueError):
                print(f"reno-batch: {self.results_path}:{k}: unreadable result line (an interrupted write?); its item "
                      "runs again", file=sys.stderr)
        return done

    def finished(self, item: Item, results: dict) -> bool:
        rec = results.get(item.key)
        if rec is None:
            return False
        try:
            return all((self.out / self.paths(item, role)).is_file() for role in self.roles())
        except (OSError, ValueError):  # a name this file system refuses: the item is not done, it runs (and fails)
            return False

    def write_item(self, item: Item, result: ItemResult) -> dict:
        rec = result.record(item)
        for role, data in result.images.items():
            rel = self.paths(item, role)
            _write_atomic(self.out / rel, data)
            rec["image" if role == "best" else f"{role}_image"] = rel
            for rel_side, content in side_files(self.cfg.layout, role, index=item.index,
                                                metadata=item.metadata).items():
                p = self.out / rel_side
                if not p.is_file() or p.read_bytes() != content:
                    _write_atomic(p, content)
        if result.worker is not None:
            rec["worker"] = result.worker
        with self._lock, self.results_path.open("a", encoding="utf-8") as f:  # the line last: it marks done
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return rec

    def fail(self, record: dict) -> None:
        with self._lock:
            self.failures.append(record)
            with self.failures_path.open("a", encoding="utf-8") as f:
                f.write(json.dumps(record, ensure_ascii=False) + "\n")
        where = f"line {record['line']}" if record.get("line") else "?"
        seed = f", seed {record['seed']}" if "seed" in record else ""
        print(f"reno-batch: {self.cfg.prompt_file.name} {where}{seed}: {record['error']}", file=sys.stderr)

    # -- run identity -------------------------------------------------------------------------
    def check_run(self) -> None:
        ident = {**self.cfg.source.identity(), "layout": self.cfg.layout, "save_initial": bool(self.cfg.save_initial)}
        path = self.out / "run.json"
        if path.is_file():
            try:
                old = json.loads(path.read_text(encoding="utf-8"))
            except json.JSONDecodeError:
                old = {}
            diff = [k for k in ident if k in old and old[k] != ident[k]]
            if diff:
                raise SystemExit(
                    f"reno-batch: {self.out} holds a run with a different {', '.join(diff)}; resuming would mix "
                    "them: use another --out folder (or delete its run.json to resume anyway)")
        _write_atomic(path, (json.dumps({**ident, "prompt_file": str(self.cfg.prompt_file),
                                         "seeds": self.cfg.seeds}, indent=1) + "\n").encode())


def _write_atomic(path: Path, data: bytes) -> None:
    """``path`` holds ``data`` or its old content, also after a power cut: a temporary file (a short name of its own,
    so a name at the file system's limit still works) written and ``fsync``ed, renamed onto ``path``, then the
    folder ``fsync``ed so that the rename itself is on disk."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".reno-{os.getpid()}-{secrets.token_hex(4)}.tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)


def _fsync_dir(folder: Path) -> None:
    if os.name == "nt":  # Windows cannot open a folder as a file; NTFS journals the rename itself
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# -- one run per output folder ------------------------------------------------------------------


try:  # POSIX
    import fcntl

    def _try_lock(fd: int) -> None:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # OSError (EWOULDBLOCK) when another run holds it

except ImportError:  # Windows
    import msvcrt

    def _try_lock(fd: int) -> None:
        os.lseek(fd, 1 << 20, os.SEEK_SET)  # a byte past the PID text, which others still read
        msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)


_HELD = {errno.EAGAIN, errno.EWOULDBLOCK, errno.EACCES, getattr(errno, "EDEADLK", errno.EAGAIN)}  # "someone holds it"


@contextlib.contextmanager
def lock_output(out: Path):
    """Hold the output folder's lock for the block (released when the process ends, however it ends). Another run
    holding it: SystemExit naming its PID, before anything in the folder is touched."""
    path = Path(out) / LOCK_FILE
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            _try_lock(fd)
        except OSError as e:
            if e.errno not in _HELD:  # a file system without locks (some network mounts): say so and go on
                print(f"reno-batch: could not lock {path} ({e}); make sure no other run uses {out}", file=sys.stderr)
                yield
                return
            try:
                holder = path.read_text(encoding="utf-8").strip() or "?"
            except OSError:
                holder = "?"
            raise SystemExit(
                f"reno-batch: {out} is in use by another reno-batch run (PID {holder}); wait for it to end (or stop "
                "it), or use another --out folder") from None
        os.ftruncate(fd, 0)
        os.lseek(fd, 0, os.SEEK_SET)
        os.write(fd, f"{os.getpid()}\n".encode())
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock


# -- summary ----------------------------------------------------------------------------------


def summarize(results: Iterable[dict]) -> dict:
    results = list(results)
    out = {"items": len(results), "rewards": {}}
    for label in _reward_labels(results) + ["total"]:
        stats = _reward_stats(results, label)
        if stats is not None:
            out["rewards"][label] = stats
    secs = [r["seconds"] for r in results if isinstance(r.get("seconds"), (int, float))]
    node = [r["node_seconds"] for r in results if isinstance(r.get("node_seconds"), (int, float))
            and math.isfinite(r["node_seconds"])]
    if secs:
        out["mean_seconds_per_item"] = sum(secs) / len(secs)
    if node:
        out["mean_node_seconds_per_item"] = sum(node) / len(node)
    for key, name in (("family", "families"), ("sampler", "samplers")):  # what generated the images
        seen = list(dict.fromkeys(r[key] for r in results if r.get(key)))
        if seen:
            out[name] = seen
    return out


def _reward_labels(results: list[dict]) -> list[str]:
    """Every reward label of the records' best scores, in first-seen order (without ``total``)."""
    labels: list[str] = []
    for rec in results:
        labels.extend(k for k in rec.get("best", {}) if k not in labels and k != "total")
    return labels


def _reward_stats(results: list[dict], label: str) -> dict | None:
    """Mean initial, best and gain and the share improved over the records with finite scores for ``label``."""
    pairs = [(r["initial"][label], r["best"][label]) for r in results
             if label in r.get("initial", {}) and label in r.get("best", {})]
    pairs = [(a, b) for a, b in pairs if math.isfinite(a) and math.isfinite(b)]
    if not pairs:
        return None
    n = len(pairs)
    return {
        "n": n,
        "mean_initial": sum(a for a, _ in pairs) / n,
        "mean_best": sum(b for _, b in pairs) / n,
        "mean_gain": sum(b - a for a, b in pairs) / n,
        "share_improved": sum(1 for a, b in pairs if b > a) / n,
    }


def format_summary(summary: dict) -> str:
    lines = [f"{'reward':<22}{'n':>6}{'initial':>12}{'best':>12}{'gain':>12}{'improved':>10}"]
    for label, s in summary["rewards"].items():
        name = "weighted total" if label == "total" else label
        lines.append(f"{name:<22}{s['n']:>6}{s['mean_initial']:>12.4f}{s['mean_best']:>12.4f}"
                     f"{s['mean_gain']:>+12.4f}{100 * s['share_improved']:>9.0f}%")
    if "mean_seconds_per_item" in summary:
        tail = f"{summary['items']} items, {summary['mean_seconds_per_item']:.2f} s/item"
        if "mean_node_seconds_per_item" in summary:
            tail += f" ({summary['mean_node_seconds_per_item']:.2f} s in the ReNO Sampler node)"
        lines.append(tail)
    return "\n".join(lines)


# -- progress ---------------------------------------------------------------------------------


class Progress:
    def __init__(self, total: int, enabled: bool):
        self.total, self.count, self.t0 = total, 0, time.perf_counter()
        self.bar = None
        self.enabled = enabled
        if enabled and total:
            try:
                from tqdm import tqdm

                self.bar = tqdm(total=total, unit="item", desc="reno-batch", dynamic_ncols=True, file=sys.stderr)
            except ImportError:
                self.bar = None

    def update(self, rec: dict | None):
        self.count += 1
        gain = None
        if rec is not None and "total" in rec.get("best", {}):
            gain = rec["best"]["total"] - rec["initial"]["total"]
        if self.bar is not None:
            if gain is not None:
                self.bar.set_postfix_str(f"gain {gain:+.4f}", refresh=False)
            self.bar.update(1)
        elif self.enabled:
            el = time.perf_counter() - self.t0
            eta = el / self.count * (self.total - self.count)
            g = f", gain {gain:+.4f}" if gain is not None else ""
            print(f"reno-batch: {self.count}/{self.total} items ({el:.0f} s, ETA {eta:.0f} s{g})", file=sys.stderr,
                  flush=True)

    def close(self):
        if self.bar is not None:
            self.bar.close()


# -- the run ----------------------------------------------------------------------------------


def build_items(cfg: BatchConfig, output: Output) -> tuple[list[Item], int]:
    entries, bad = read_prompt_file(cfg.prompt_file, cfg.prompt_format)
    if cfg.limit is not None:
        entries = [e for e in entries if e.index < cfg.limit]
        bad = [b for b in bad if b.index < cfg.limit]
    for b in bad:
        output.fail({"kind": "prompt_line", "index": b.index, "line": b.line, "error": b.error, "text": b.text})
    items = [Item(index=e.index, line=e.line, prompt=e.prompt, seed=int(s), position=k, metadata=e.metadata)
             for e in entries for k, s in enumerate(cfg.seeds)]
    return items, len(bad)


def run_batch(cfg: BatchConfig, *, dispatch=None) -> int:
    """Run a batch; returns the exit code (0 all done, 1 some lines/items failed, 130 stopped by Ctrl-C).
    ``dispatch(cfg, todo, on_outcome, stop)``: where the items run, instead of ``cfg.dispatch``."""
    output = Output(cfg)
    with lock_output(output.out):
        return _run_locked(cfg, output, dispatch)


def _run_locked(cfg: BatchConfig, output: Output, dispatch) -> int:
    output.check_run()
    if output.failures_path.exists():
        output.failures_path.unlink()  # failures.jsonl is this run's
    items, n_bad = build_items(cfg, output)
    results = output.read_results()
    todo = [it for it in items if not output.finished(it, results)]
    skipped = len(items) - len(todo)
    if skipped:
        print(f"reno-batch: {skipped} of {len(items)} items already done in {output.out}; running {len(todo)}",
              file=sys.stderr)
    stop = StopFlag()
    progress = Progress(len(todo), cfg.progress)
    failed = 0

    def on_outcome(item: Item, outcome: Outcome) -> None:
        nonlocal failed
        if outcome.ok:
            try:
                rec = output.write_item(item, outcome)
            except (OSError, ValueError) as e:  # a full disk, a name the file system refuses: this item fails
                outcome = ItemFailure(f"could not write its files in {output.out}: {type(e).__name__}: {e}")
            else:
                results[item.key] = rec
                progress.update(rec)
                return
        failed += 1
        output.fail({"kind": "item", "index": item.index, "line": item.line, "prompt": item.prompt,
                     "seed": item.seed, "error": outcome.error, "traceback": outcome.traceback})
        progress.update(None)

    if dispatch is None:
        dispatch = cfg.dispatch
    in_main = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGINT, stop.request) if in_main else None
    try:
        dispatch(cfg, todo, on_outcome, stop)
    finally:
        if in_main:
            signal.signal(signal.SIGINT, previous)
        progress.close()
    known = {it.key for it in items}
    summary = summarize(r for k, r in results.items() if k in known)
    summary.update({"prompt_file": str(cfg.prompt_file), "seeds": cfg.seeds, "layout": cfg.layout,
                    "items_total": len(items), "failed_items": failed, "bad_prompt_lines": n_bad,
                    "interrupted": bool(stop.stop)})
    _write_atomic(output.out / "summary.json", (json.dumps(summary, indent=1) + "\n").encode())
    print(format_summary(summary))
    if stop.stop:
        print(f"reno-batch: stopped by Ctrl-C after {summary['items']} of {len(items)} items; run the same command "
              "again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_FAILURES if failed or n_bad else EXIT_OK

