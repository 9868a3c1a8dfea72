"""What makes the images (a backend) apart from where items run (a dispatch: this process, or Ray actors).

A *source* says which backend a run uses and carries what it needs; it is small and JSON-able, so a Ray actor
builds the same backend from it (``source_from_wire``):

* ``WorkflowSource``: a ReNO workflow (``workflow.Job``) run by a headless ComfyUI engine (``worker.ItemWorker``);
* ``DiffusersSource``: a diffusers one-step pipeline folder and weighted rewards (``diffusers_hook.DiffusersBackend``).

``options`` (``BatchConfig.worker_options``) are the process's: threads, CPU or GPU, models folder, VAE layout, the
ComfyUI to boot (``worker.DEFAULT_OPTIONS``); each backend reads the ones that apply to it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, Union

from .items import Item, Outcome, restore_threads, set_threads  # noqa: F401 (their home is items.py)
from .workflow import Job, workflow_sha256


class Backend(Protocol):
    """Makes items, one at a time, in the process that built it (models loaded once, at construction)."""

    def run(self, item: Item) -> Outcome:
        """The item's result, or its failure; raises only ``KeyboardInterrupt`` (after ``interrupt``)."""

    def interrupt(self) -> None:
        """Stop the item in flight (a second Ctrl-C; called from the SIGINT handler)."""

    def reset_interrupt(self) -> None:
        """Ready for another item after an interrupted one."""

    def close(self) -> None:
        """Give back what the backend changed in the process (torch's thread count)."""


@dataclass
class WorkflowSource:
    job: Job

    kind = "workflow"

    def identity(self) -> dict:
        """What ``run.json`` records so that a resumed run refuses another source."""
        return {"workflow_sha256": workflow_sha256(self.job.workflow), "diffusers": None}

    def build(self, options: dict) -> Backend:
        from .worker import ItemWorker

        return ItemWorker(self.job, options)

    def check(self) -> None:
        pass

    def to_wire(self) -> dict:
        return {"kind": self.kind, "job": self.job.to_dict()}


@dataclass
class DiffusersSource:
    folder: Path
    rewards: list[tuple[str, float]] = field(default_factory=list)  # (name, weight)
    options: dict = field(default_factory=dict)  # iterations, learning_rate, device, rewards_dir, ...
    save_initial: bool = False

    kind = "diffusers"

    #: the options that change what an item makes (not where it runs: device, rewards_dir)
    GENERATION_OPTIONS = ("iterations", "learning_rate", "steps", "sampler", "gradient", "gradient_steps")

    def identity(self) -> dict:
        """The pipeline folder, and the rewards and options that change the images: a resumed run with another
        --steps, --sampler, --gradient, --reward... is refused instead of mixing two runs."""
        return {"workflow_sha256": None, "diffusers": str(self.folder),
                "diffusers_generation": {"rewards": [[str(n), float(w)] for n, w in self.rewards],
                                         **{k: self.options[k] for k in self.GENERATION_OPTIONS if k in self.options}}}

    def build(self, options: dict) -> Backend:
        from .diffusers_hook import DiffusersBackend

        return DiffusersBackend(self, options)

    def check(self) -> None:
        """Refuse, before any worker starts, what no backend could run."""
        from .diffusers_hook import check_source

        check_source(self)

    def to_wire(self) -> dict:
        return {"kind": self.kind, "folder": str(self.folder), "rewards": [[n, float(w)] for n, w in self.rewards],
                "options": dict(self.options), "save_initial": bool(self.save_initial)}


Source = Union[WorkflowSource, DiffusersSource]


def source_from_wire(d: dict) -> Source:
    if d["kind"] == WorkflowSource.kind:
        return WorkflowSource(Job.from_dict(d["job"]))
    if d["kind"] == DiffusersSource.kind:
        return DiffusersSource(Path(d["folder"]), [(str(n), float(w)) for n, w in d["rewards"]], dict(d["options"]),
                               bool(d["save_initial"]))
    raise ValueError(f"unknown backend kind {d['kind']!r}")
