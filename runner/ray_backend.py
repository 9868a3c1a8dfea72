"""Fan-out with Ray (``RayDispatch``): one actor per GPU (or ``--workers N`` CPU actors), each building its own
backend from the run's source (a ComfyUI engine for a workflow, a diffusers pipeline for ``--diffusers``), models
loaded once; items handed out one at a time to whichever actor is free (a ``ray.wait`` loop over one in-flight task per
actor); an actor that dies (``RayActorError``) is replaced and its item run again on another one. The driver writes
every file, so the output folder is the driver's, on one machine or a cluster.

Ray is an optional extra: ``pip install "ray[default]"`` (or ``pip install <pack>[batch]``).
"""

from __future__ import annotations

import os
import sys
from collections import deque
from dataclasses import dataclass

from . import ray_actor
from .items import Item, ItemFailure, outcome_from_wire

INSTALL_HINT = 'the --ray option needs Ray: pip install "ray[default]" (or pip install -e "<pack>[batch]")'


def import_ray():
    try:
        import ray
    except ImportError:
        raise SystemExit(f"reno-batch: {INSTALL_HINT}") from None
    return ray


@dataclass(frozen=True)
class RayDispatch:
    """``--ray [ADDRESS]``: ``address`` None for a local cluster (or the one ``ray.init`` already joined), 'auto' or
    ray://HOST:PORT to join one; ``workers`` actors (default: one per GPU; 1 on CPU)."""

    address: str | None = None
    workers: int | None = None

    def __call__(self, cfg, todo: list[Item], on_outcome, stop) -> None:
        if not todo:
            return
        ray = import_ray()
        started = _init_ray(ray, self)
        try:
            pool = _ActorPool(ray, self, cfg, stop, len(todo))
            try:
                pool.run(todo, on_outcome)
            finally:
                pool.kill()
        finally:
            if started:
                ray.shutdown()


def _init_ray(ray, dispatch: RayDispatch) -> bool:
    """``ray.init`` unless this process already joined a cluster; True when it started one."""
    if ray.is_initialized():
        return False
    address = dispatch.address or None
    kwargs = {"address": address} if address else {}
    if address in (None, "local") and dispatch.workers and not _has_gpu_torch():
        kwargs = {"num_cpus": max(int(dispatch.workers), os.cpu_count() or 1)}
    ray.init(include_dashboard=False, log_to_driver=True, **kwargs)
    return True


def actor_plan(resources: dict, workers: int | None, worker_options: dict) -> tuple[int, dict, dict]:
    """``(actors, Ray actor options, worker options)``: one GPU each when the cluster has GPUs (and not ``cpu``),
    else CPU actors sharing the cluster's CPUs, each with that many torch threads (unless ``threads`` says)."""
    from .worker import DEFAULT_OPTIONS

    opts = {**DEFAULT_OPTIONS, **worker_options}
    gpus = int(resources.get("GPU", 0))
    if gpus and not opts.get("cpu"):
        opts["cpu"] = False
        return int(workers or gpus), {"num_gpus": 1, "num_cpus": 1}, opts
    n = int(workers or 1)
    per = max(1, int(resources.get("CPU", 1)) // n)
    opts["cpu"] = True
    opts["threads"] = opts.get("threads") or per
    return n, {"num_cpus": per}, opts


class _ActorPool:
    """The actors and the items in flight (one per actor): a ``ray.wait`` loop; a dead actor is replaced and its item
    queued again, up to ``2 n + 2`` replacements; an actor that cannot start stops the run."""

    def __init__(self, ray, dispatch: RayDispatch, cfg, stop, n_items: int):
        cfg.source.check()
        self.ray, self.stop = ray, stop
        n, actor_options, opts = actor_plan(ray.cluster_resources(), dispatch.workers, cfg.worker_options)
        each = "1 GPU" if "num_gpus" in actor_options else f"{actor_options['num_cpus']} CPU"
        print(f"reno-batch: Ray with {n} {cfg.source.kind} worker(s) ({each} each) for {n_items} items", file=sys.stderr)
        import ray.cloudpickle as cloudpickle

        cloudpickle.register_pickle_by_value(ray_actor)
        self._actor_class = ray.remote(**actor_options)(ray_actor.RenoActor)
        self._args = (opts.get("pack_dir"), cfg.source.to_wire(), opts, os.environ.get(ray_actor.CRASH_ENV) or None)
        self._numbers = iter(range(10 ** 9))
        self.max_replacements, self.replaced = 2 * n + 2, 0
        self.actors = dict(self._new_actor() for _ in range(n))
        self.queue: deque[Item] = deque()
        self.inflight: dict = {}  # ObjectRef -> (actor number, item)

    def _new_actor(self):
        number = next(self._numbers)
        return number, self._actor_class.remote(number, *self._args)

    def _submit(self, number: int) -> None:
        if self.queue and not self.stop.stop:
            item = self.queue.popleft()
            self.inflight[self.actors[number].run.remote(item.to_wire())] = (number, item)

    def run(self, todo: list[Item], on_outcome) -> None:
        from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

        self.queue.extend(todo)
        for number in list(self.actors):
            self._submit(number)
        while self.inflight and not self.stop.abort:  # a second Ctrl-C drops the items in flight (actors killed)
            ready, _ = self.ray.wait(list(self.inflight), num_returns=1, timeout=1.0)
            if not ready:
                continue
            number, item = self.inflight.pop(ready[0])
            try:
                outcome = outcome_from_wire(self.ray.get(ready[0]))
            except RayActorError as e:
                self._replace(number, item, e, on_outcome)
                continue
            except (RayTaskError, GetTimeoutError) as e:
                outcome = ItemFailure(f"Ray task failed: {e}")
            on_outcome(item, outcome)
            self._submit(number)

    def _replace(self, number: int, item: Item, error, on_outcome) -> None:
        self.actors.pop(number, None)
        if "creation task" in str(error):  # the worker could not start (its engine or pipeline): no point in retrying
            on_outcome(item, ItemFailure(f"Ray worker {number} could not start: {error}"))
            raise SystemExit(f"reno-batch: a Ray worker could not start its backend:\n{error}") from None
        self.replaced += 1
        if self.replaced > self.max_replacements:
            on_outcome(item, ItemFailure(f"Ray workers keep dying ({self.replaced} replaced): {error}"))
            raise SystemExit(f"reno-batch: giving up: Ray workers keep dying; last error: {error}") from None
        print(f"reno-batch: Ray worker {number} died; rerunning index {item.index} seed {item.seed} on a new worker",
              file=sys.stderr)
        self.queue.appendleft(item)
        new_number, handle = self._new_actor()
        self.actors[new_number] = handle
        self._submit(new_number)

    def kill(self) -> None:
        for handle in self.actors.values():
            try:
                self.ray.kill(handle)
            except Exception:  # already dead
                pass


def _has_gpu_torch() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
