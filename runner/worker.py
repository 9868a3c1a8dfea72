"""The workflow backend (``backends.Backend``): a headless engine (booted once, models cached by ComfyUI's executor
between items) that runs items and returns, per item, an ``ItemResult`` (scores and the PNG bytes of its images).
The same class runs in the runner's own process and inside each Ray actor, so both give the same files and scores.

An item's scores come from the ReNO Sampler's RENO_HISTORY output (read from the executor's output cache):
``initial`` is iteration 0, ``best`` the best iteration by the weighted reward (what the node returns).
"""

from __future__ import annotations

import contextlib
import io
import os
import shutil
from pathlib import Path

from ..optimizer.memory import CHANNELS_LAST_ENV
from ..optimizer.objective import weighted_total
from . import engine as engine_mod
from .host import locate_host
from .items import Item, ItemResult, Outcome, restore_threads, set_threads, timed
from .workflow import Job

#: Engine options a worker accepts (CLI → here; JSON-able, sent to Ray workers).
DEFAULT_OPTIONS = {
    "comfyui": None,  # a ComfyUI root; None: host.find_host()
    "pack_dir": str(engine_mod.PACK_DIR),
    "extra_packs": [],  # [[name, path]] node packs to load besides this one (e.g. the tests' fixture nodes)
    "comfy_extras": "all",  # "all" or a list of comfy_extras file names
    "models_dir": None,  # None: the engine's models folder
    "extra_model_paths": [],
    "cpu": None,  # None: CPU when torch sees no CUDA device
    "torchvision_standin": False,
    "threads": None,  # torch.set_num_threads for the run
    # the VAE decoder's memory layout, the same in every worker so that an item's images never depend on which
    # process ran it: "as-loaded" / "channels-last" pin it (RENO_CHANNELS_LAST for the item); "measured" lets each
    # process time both (faster on some machines, but two processes may choose differently: equal up to rounding)
    "vae_layout": "as-loaded",
    "workdir": None,
}


def png_bytes(image) -> bytes:
    """A ComfyUI IMAGE element (H, W, C float in [0, 1]) as PNG, quantized as SaveImage does."""
    import numpy as np
    from PIL import Image

    arr = np.clip(255.0 * image.detach().float().cpu().numpy(), 0, 255).astype(np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", compress_level=4)
    return buf.getvalue()


def history_scores(history) -> dict:
    """Initial and best score per reward (and the weighted total) of a single-image RENO_HISTORY."""
    rewards = [{"label": r["label"], "name": r.get("name"), "weight": float(r["weight"])} for r in history.rewards]
    records = history.records
    if not records:
        raise RuntimeError("the ReNO Sampler recorded no iteration")
    best = int(history.best_iteration[0])

    def at(i):
        s = {r["label"]: float(records[i]["scores"][r["label"]][0]) for r in rewards}
        s["total"] = float(weighted_total((r["weight"], s[r["label"]]) for r in rewards))
        return s

    return {"rewards": rewards, "initial": at(0), "best": at(best), "best_iteration": best,
            "iterations": len(records), "stop_reason": history.stop_reason,
            "vae_layout": (getattr(history, "config", None) or {}).get("vae_layout"),
            **{key: (getattr(history, "config", None) or {}).get(key) for key in GENERATION_KEYS},
            **({"search": history.search_summary()} if getattr(history, "search", None) else {})}


#: what an item's record says of its generation (from the history's config): the model family ComfyUI detected, the
#: sampler, scheduler and model calls the run backpropagated through
GENERATION_KEYS = ("family", "sampler", "scheduler", "steps")

VAE_LAYOUTS = {"as-loaded": "0", "channels-last": "1", "measured": None}


@contextlib.contextmanager
def pinned_vae_layout(layout: str | None):
    """``RENO_CHANNELS_LAST`` set for the block as ``layout`` asks (``VAE_LAYOUTS``), restored after; "measured" (or
    None) leaves the environment as it is."""
    if layout not in VAE_LAYOUTS:
        raise ValueError(f"vae_layout {layout!r}: use one of {', '.join(VAE_LAYOUTS)}")
    value = VAE_LAYOUTS[layout]
    if value is None:
        yield
        return
    before = os.environ.get(CHANNELS_LAST_ENV)
    os.environ[CHANNELS_LAST_ENV] = value
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(CHANNELS_LAST_ENV, None)
        else:
            os.environ[CHANNELS_LAST_ENV] = before


class ItemWorker:
    """The workflow backend."""

    def __init__(self, job: Job | dict, options: dict | None = None):
        self.job = job if isinstance(job, Job) else Job.from_dict(job)
        self.options = {**DEFAULT_OPTIONS, **(options or {})}
        self._own_engine = False
        self._threads_before = set_threads(self.options["threads"])
        self.engine = self._boot()
        self.items_done = 0

    def _boot(self):
        opts = self.options
        host = locate_host(opts["comfyui"])
        cpu = opts["cpu"]
        if cpu is None:
            import torch

            cpu = not torch.cuda.is_available()
        pack_dir = Path(os.environ.get("RENO_PACK_DIR") or opts["pack_dir"])
        packs = [(engine_mod.PACK_NAME, pack_dir)] + [(str(n), Path(p)) for n, p in opts["extra_packs"]]
        self._own_engine = engine_mod.current_engine() is None
        return engine_mod.boot_engine(
            host, packs, opts["workdir"], extra_nodes=opts["comfy_extras"], cpu=bool(cpu),
            models_dir=opts["models_dir"], extra_model_paths=opts["extra_model_paths"],
            torchvision_standin=bool(opts["torchvision_standin"]))

    def describe(self) -> dict:
        import torch

        return {"engine": self.engine.info, "pid": os.getpid(), "threads": torch.get_num_threads()}

    def run(self, item: Item) -> Outcome:
        """The item's ``ItemResult`` or ``ItemFailure``; never raises for a failing item (``KeyboardInterrupt``
        after ``interrupt``)."""
        out = timed(self._pinned_run, item)
        if out.ok:
            self.items_done += 1
        return out

    def _pinned_run(self, item: Item) -> ItemResult:
        with pinned_vae_layout(self.options.get("vae_layout")):
            return self._run(item)

    def interrupt(self) -> None:
        self.engine.interrupt()

    def reset_interrupt(self) -> None:
        self.engine.reset_interrupt()

    def close(self) -> None:
        restore_threads(self._threads_before)
        self._threads_before = None

    def _run(self, item: Item) -> ItemResult:
        job = self.job
        prompt = job.build(item.prompt, item.seed)
        res = self.engine.execute(prompt, f"reno-batch-{item.index}-{item.seed}", client_id="reno-batch",
                                  fresh_executor=False, targets=job.targets)
        if not res.success:
            err = res.error
            if err is not None:
                raise RuntimeError(f"node {err.get('node_id')} ({err.get('node_type')}) failed: "
                                   f"{err.get('exception_type')}: {err.get('exception_message')}")
            if res.interrupted:
                raise KeyboardInterrupt
            raise RuntimeError(f"execution failed: {res.messages!r}")
        outs = self.engine.cached_outputs(job.sampler)
        if outs is None or len(outs) < 3:
            raise RuntimeError(f"ReNO Sampler {job.sampler} left no outputs in the executor's cache")
        image, history = outs[1], outs[2]
        if image.shape[0] != 1:
            raise RuntimeError(f"the ReNO Sampler made {image.shape[0]} images; the runner makes one per seed: set the "
                               "latent's batch_size to 1 and use --seeds / --n-seeds")
        scores = history_scores(history)
        extra = {"vae_layout": scores.pop("vae_layout"), **{key: scores.pop(key) for key in GENERATION_KEYS}}
        if "search" in scores:  # search, then gradient: the candidates and the kept seed
            extra["search"] = scores.pop("search")
        images = {"best": png_bytes(image[0])}
        if job.save_initial:
            init = self.engine.cached_outputs(job.initial_node)
            if init is None:
                raise RuntimeError("the initial-image copy of the ReNO Sampler did not run")
            images["initial"] = png_bytes(init[1][0])
        spans = res.node_seconds()
        if self._own_engine:  # the sampler's gallery previews pile up in temp/: the runner never serves them
            tmp = self.engine.temp_dir
            for child in tmp.iterdir():
                if child.is_dir():
                    shutil.rmtree(child, ignore_errors=True)
                else:
                    child.unlink(missing_ok=True)
        return ItemResult(**scores, images=images, node_seconds=spans.get(job.sampler, float("nan")),
                          extra=extra)
