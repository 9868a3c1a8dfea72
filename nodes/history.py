"""RENO_HISTORY: everything a ReNO run recorded, for previews, charts and continuing a run."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from ..optimizer.objective import weighted_total


@dataclass
class ReNOHistory:
    prompt: str
    seed: int
    rewards: list[dict]  # {"label", "name", "weight", "offset"} in stack order
    config: dict
    sigma: float
    records: list[dict]  # IterationRecord.to_dict() per iteration
    previews: list[torch.Tensor] = field(repr=False)  # per iteration: (B, h, w, 3) uint8
    best_iteration: list[int] = field(default_factory=list)
    best_loss: list[float] = field(default_factory=list)
    best_noise: torch.Tensor | None = field(default=None, repr=False)  # (B, ...) float32, CPU
    stop_reason: str | None = None
    # search, then gradient (nodes/search.py): {"candidates", "keep", "seeds", "weighted_total", "scores", "kept"}
    search: dict | None = None

    @property
    def iterations(self) -> int:
        return len(self.records)

    def images(self) -> torch.Tensor:
        """Every iteration's preview as one ComfyUI IMAGE batch, iteration-major: (N*B, h, w, 3) float."""
        return torch.cat(self.previews, dim=0).float() / 255.0

    def chain(self) -> dict:
        """The sampling chain the run backpropagated through (from ``config``; a one-step run's defaults when
        the history predates the chain)."""
        c = self.config or {}
        return {"steps": int(c.get("steps", 1)), "sampler": str(c.get("sampler", "euler")),
                "scheduler": c.get("scheduler"), "gradient": str(c.get("gradient", "exact")),
                "gradient_steps": int(c.get("gradient_steps", 1))}

    def chart(self) -> dict:
        """Per batch element: each reward's score, the weighted total and the loss at every iteration."""
        series = []
        batch = len(self.records[0]["loss"]) if self.records else 0
        for b in range(batch):
            scores = {r["label"]: [rec["scores"][r["label"]][b] for rec in self.records] for r in self.rewards}
            total = [weighted_total((r["weight"], rec["scores"][r["label"]][b]) for r in self.rewards) for rec in self.records]
            series.append({
                "scores": scores,
                "weighted_total": total,
                "loss": [rec["loss"][b] for rec in self.records],
                "latent_norm": [rec["latent_norm"][b] for rec in self.records],
                "grad_norm": [rec["grad_norm"][b] if rec["grad_norm"] else None for rec in self.records],
                "best_iteration": self.best_iteration[b],
            })
        return {"iterations": self.iterations, "rewards": self.rewards, "series": series,
                "stop_reason": self.stop_reason, "chain": self.chain()}

    def summary(self) -> dict:
        """A small JSON-able digest for the front end."""
        first = self.records[0] if self.records else None
        return {
            "iterations": self.iterations,
            "best_iteration": self.best_iteration,
            "initial_loss": first["loss"] if first else [],
            "best_loss": self.best_loss,
            "rewards": self.rewards,
            "stop_reason": self.stop_reason,
            "chain": self.chain(),
            **({"search": self.search_summary()} if self.search else {}),
        }

    def search_summary(self) -> dict:
        """The search before the gradient: candidates, kept seeds and their weighted totals, the best and worst."""
        s = self.search
        totals = s["weighted_total"]
        return {"candidates": s["candidates"], "keep": s["keep"], "kept_seeds": [s["seeds"][i] for i in s["kept"]],
                "kept_totals": [totals[i] for i in s["kept"]], "best": max(totals), "worst": min(totals)}
