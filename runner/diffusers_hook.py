"""The diffusers backend (``--diffusers <folder>``, ``backends.DiffusersSource``): items run on a diffusers one-step
pipeline (``generators.run_diffusers_item``) instead of a ComfyUI workflow; same items, layouts, results and summary,
in this process or in Ray actors (each loads its own pipeline and rewards).

The pipeline and the rewards (``--reward NAME:WEIGHT``) are loaded once, before the first item. Reward folders
(``reno_rewards`` layout) are searched in this order: ``--rewards-dir``, ``<--models-dir>/reno_rewards``,
``$RENO_REWARDS_DIR``, then the ``models/reno_rewards`` folder of the ComfyUI the workflow runner would use (when
there is one; it is only looked at, never imported). The device is ``--device``, else CUDA when torch sees it
(unless ``--cpu``), else the CPU; the rewards go to the same device. ``--threads`` sets torch's threads for the run.
A pipeline or reward that cannot load stops the run before any item, with one line saying what to do (exit 2).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Protocol

from .items import Item, ItemResult, Outcome, restore_threads, set_threads, timed
from .worker import png_bytes


class DiffusersSource(Protocol):
    """What this backend reads of its source (``backends.DiffusersSource``, which builds it)."""

    folder: Path
    rewards: list[tuple[str, float]]
    options: dict
    save_initial: bool

EXIT_BAD_INPUT = 2


def _refuse(message: str):
    """Bad input found before any item ran: one clear message, exit status 2 (as the CLI's other input errors)."""
    print(f"reno-batch: {message}", file=sys.stderr, flush=True)
    raise SystemExit(EXIT_BAD_INPUT)


def check_source(source: DiffusersSource) -> None:
    if not source.rewards:
        _refuse("--diffusers needs at least one --reward NAME:WEIGHT (e.g. --reward hpsv2.1:5)")


def reward_roots(source: DiffusersSource, options: dict, folder_name: str = "reno_rewards") -> list[str]:
    """The reward folders to search besides ``$RENO_REWARDS_DIR`` (which ``reward_loaders`` reads itself)."""
    roots: list[Path] = []
    rewards_dir = source.options.get("rewards_dir")
    if rewards_dir:
        roots.append(Path(rewards_dir).expanduser())
    models_dir = (options or {}).get("models_dir")
    if models_dir:
        roots.append(Path(models_dir).expanduser() / folder_name)
    tail: list[Path] = []
    try:
        from .host import HostError, find_host  # looks at folders only; ComfyUI is not imported

        host = find_host()
    except (HostError, OSError, ImportError):
        host = None
    if host is not None and not models_dir:
        tail.append(Path(host.root) / "models" / folder_name)
    return [str(p) for p in roots] + [str(p) for p in tail if p.is_dir()]


def _device(opts: dict, options: dict) -> str:
    if opts.get("device"):
        return str(opts["device"])
    import torch

    if not (options or {}).get("cpu") and torch.cuda.is_available():
        return "cuda"
    return "cpu"


def _load(source: DiffusersSource, options: dict, opts: dict):
    """The pipeline and the weighted rewards, or a clear refusal."""
    from .. import generators as gen
    from .. import reward_loaders as rl

    try:
        pipe = gen.load_pipeline(source.folder, opts.get("kind"), dtype=opts.get("dtype"), device=opts["device"])
    except gen.PipelineLoadError as e:
        _refuse(f"--diffusers {source.folder}: {e}")
    except ImportError as e:  # diffusers (an optional extra) is not installed
        _refuse(f"--diffusers: {e}")
    roots = reward_roots(source, options, rl.FOLDER_NAME)
    rewards = []
    for name, weight in source.rewards:
        try:
            model = rl.load_reward(name, roots).to(opts["device"])
        except (rl.RewardLoadError, ValueError, OSError) as e:
            hint = ""
            if not rl.paths.search_dirs(roots):
                hint = ("\nFor the batch runner: pass --rewards-dir FOLDER (a reno_rewards folder) or --models-dir "
                        "FOLDER (its reno_rewards/ subfolder).")
            _refuse(f"--reward {name}: {e}{hint}")
        rewards.append(rl.WeightedReward(name, float(weight), model))
    return pipe, rewards


class DiffusersBackend:
    """The diffusers backend: the pipeline and the rewards loaded once (a clear refusal, exit 2, when they cannot
    be), then one ``run_diffusers_item`` per item."""

    def __init__(self, source: DiffusersSource, options: dict | None = None):
        from .. import reward_loaders as rl

        check_source(source)
        options = dict(options or {})
        self.source = source
        self.opts = dict(source.options)
        self.opts.pop("rewards_dir", None)
        self.opts["device"] = _device(self.opts, options)
        self._threads_before = set_threads(options.get("threads"))
        try:
            self.pipe, self.rewards = _load(source, options, self.opts)
        except BaseException:
            self.close()
            raise
        self.labels = rl.unique_labels([name for name, _ in source.rewards])
        self.weights = dict(zip(self.labels, (float(w) for _, w in source.rewards)))
        self.described = [{"label": k, "name": n, "weight": float(w)}
                          for k, (n, w) in zip(self.labels, source.rewards)]

    def _scores(self, d: dict) -> dict:
        s = {k: float(d[k]) for k in self.labels}
        s["total"] = float(sum(w * s[k] for k, w in self.weights.items()))
        return s

    def run(self, item: Item) -> Outcome:
        return timed(self._run, item)

    def _run(self, item: Item) -> ItemResult:
        from .. import generators as gen

        res = gen.run_diffusers_item(self.pipe, item.prompt, int(item.seed), self.rewards, self.opts)
        images = {"best": png_bytes(res.best_image[0].permute(1, 2, 0))}
        if self.source.save_initial:
            images["initial"] = png_bytes(res.initial_image[0].permute(1, 2, 0))
        return ItemResult(rewards=self.described, initial=self._scores(res.initial_scores),
                          best=self._scores(res.best_scores), best_iteration=int(res.best_iteration),
                          iterations=int(res.result.iterations_run), stop_reason=res.result.stop_reason,
                          images=images, node_seconds=float(res.seconds))

    def interrupt(self) -> None:  # from run_batch's SIGINT handler: stops the item in flight where it is
        raise KeyboardInterrupt

    def reset_interrupt(self) -> None:
        pass

    def close(self) -> None:
        restore_threads(self._threads_before)
        self._threads_before = None
