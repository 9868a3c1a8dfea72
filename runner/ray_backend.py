"""Fan-out with Ray: one actor per GPU (or ``--workers N`` CPU actors), each with its own engine, models loaded
once; items handed out one at a time to whichever actor is free (a ``ray.wait`` loop over one in-flight task per
actor); an actor that dies (``RayActorError``) is replaced and its item run again on another one. The driver writes
every file, so the output folder is the driver's, on one machine or a cluster.

Ray is an optional extra: ``pip install "ray[default]"`` (or ``pip install <pack>[batch]``).
"""

from __future__ import annotations

import os
import sys
from collections import deque

from . import ray_actor

INSTALL_HINT = 'the --ray option needs Ray: pip install "ray[default]" (or pip install -e "<pack>[batch]")'


def import_ray():
    try:
        import ray
    except ImportError:
        raise SystemExit(f"reno-batch: {INSTALL_HINT}") from None
    return ray


def dispatch_ray(cfg, todo: list[dict], on_outcome, stop) -> None:
    if not todo:
        return
    ray = import_ray()
    from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

    started = False
    if not ray.is_initialized():
        address = cfg.ray_address or None
        kwargs = {"address": address} if address else {}
        if address in (None, "local") and cfg.workers and not _has_gpu_torch():
            kwargs = {"num_cpus": max(int(cfg.workers), os.cpu_count() or 1)}
        ray.init(include_dashboard=False, log_to_driver=True, **kwargs)
        started = True
    resources = ray.cluster_resources()
    gpus = int(resources.get("GPU", 0))
    cpus = int(resources.get("CPU", 1))
    from .worker import DEFAULT_OPTIONS

    opts = {**DEFAULT_OPTIONS, **cfg.worker_options}
    if gpus and not opts.get("cpu"):
        n = int(cfg.workers or gpus)
        actor_options = {"num_gpus": 1, "num_cpus": 1}
        opts["cpu"] = False
    else:
        n = int(cfg.workers or 1)
        per = max(1, cpus // n)
        actor_options = {"num_cpus": per}
        opts["cpu"] = True
        opts.setdefault("threads", None)
        opts["threads"] = opts["threads"] or per
    each = "1 GPU" if "num_gpus" in actor_options else f"{actor_options['num_cpus']} CPU"
    print(f"reno-batch: Ray with {n} worker(s) ({each} each) for {len(todo)} items", file=sys.stderr)

    import ray.cloudpickle as cloudpickle

    cloudpickle.register_pickle_by_value(ray_actor)
    Actor = ray.remote(**actor_options)(ray_actor.RenoActor)
    crash = os.environ.get(ray_actor.CRASH_ENV) or None
    job = cfg.job.to_dict()
    pack_dir = opts.get("pack_dir")
    counter = iter(range(10 ** 9))
    max_replacements = 2 * n + 2
    replaced = 0

    def new_actor():
        number = next(counter)
        return number, Actor.remote(number, pack_dir, job, opts, crash)

    actors = dict(new_actor() for _ in range(n))
    queue = deque(todo)
    inflight: dict = {}  # ObjectRef -> (actor number, item)

    def submit(number):
        if queue and not stop.stop:
            item = queue.popleft()
            inflight[actors[number].run.remote({k: item[k] for k in ("index", "line", "prompt", "seed")})] = (
                number, item)

    for number in list(actors):
        submit(number)
    try:
        while inflight:
            if stop.abort:  # a second Ctrl-C: drop the items in flight (the actors are killed below)
                break
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=1.0)
            if not ready:
                continue
            ref = ready[0]
            number, item = inflight.pop(ref)
            try:
                outcome = ray.get(ref)
            except RayActorError as e:
                actors.pop(number, None)
                if "creation task" in str(e):  # the worker could not start (its engine): no point in retrying
                    on_outcome(item, {"ok": False, "error": f"Ray worker {number} could not start: {e}"})
                    raise SystemExit(f"reno-batch: a Ray worker could not start its engine:\n{e}") from None
                replaced += 1
                if replaced > max_replacements:
                    on_outcome(item, {"ok": False, "error": f"Ray workers keep dying ({replaced} replaced): {e}"})
                    raise SystemExit(f"reno-batch: giving up: Ray workers keep dying; last error: {e}") from None
                print(f"reno-batch: Ray worker {number} died; rerunning index {item['index']} seed {item['seed']} "
                      "on a new worker", file=sys.stderr)
                queue.appendleft(item)
                new_number, handle = new_actor()
                actors[new_number] = handle
                submit(new_number)
                continue
            except (RayTaskError, GetTimeoutError) as e:
                outcome = {"ok": False, "error": f"Ray task failed: {e}"}
            on_outcome(item, outcome)
            submit(number)
    finally:
        for handle in actors.values():
            try:
                ray.kill(handle)
            except Exception:  # already dead
                pass
        if started:
            ray.shutdown()


def _has_gpu_torch() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:
        return False
