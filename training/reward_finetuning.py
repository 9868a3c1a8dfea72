"""Reward fine-tuning of a denoiser's parameters (a LoRA) through the sampling chain: AlignProp, DRTune, ReFL.

Plain PyTorch over ``optimizer.chain``: what a rollout backpropagates through is data (a ``Rollout`` drawn per
rollout), the sampler's update rules are the chain's, and the loop (``train``) knows nothing about ComfyUI.

Methods (``METHODS``), each a rule for drawing one rollout (``draw_rollout``):

* ``alignprop`` (Prabhudesai et al.): a full rollout to the final image; a truncation ``K_r`` drawn uniformly
  in ``1..k`` per rollout; the denoiser's output is detached before the last ``K_r`` steps (those calls run
  without autograd), the latents stay attached; every attached step recomputes its activations in backward
  (per-step gradient checkpointing). Loss: ``sum_i w_i (c_i - r_i)`` on the decoded final image.
* ``drtune`` (Wu et al.): the denoiser's input is detached at every step; ``k`` equally spaced steps with a
  random offset carry gradient into the parameters (the others run without autograd); the rollout stops at a
  random late step (within the last 40% of the schedule) and the reward is taken on the decoded x̂0 predicted
  there. Loss as AlignProp's.
* ``refl`` (ReFL / IterComp's feedback learning): sampling without gradients to a random step in the last
  quarter of the schedule, one step with gradients, its x̂0 decoded and scored; loss
  ``sum_i w_i relu(c_i - r_i)`` (no gradient from a reward already above its offset).

``train(parameters, rollout, config, evaluate)`` is the loop: per optimizer step ``batch_size x
grad_accumulation`` rollouts (each ``rollout(request)`` runs the forward pass and the backward of its scaled
loss), gradient-norm clipping, AdamW; ``evaluate()`` (the held-out prompts' reward, no gradients) before
training, every ``eval_every`` steps and at the end; early stopping after ``patience`` evaluations without
improvement restores the best evaluated parameters.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch

from ..optimizer.chain import ChainSpec, Denoiser, StepGradients, run_chain
from ..optimizer.objective import reward_loss as weighted_reward_loss

METHODS = ("alignprop", "drtune", "refl")
#: DRTune stops within the last 40% of the schedule
DRTUNE_STOP_FRACTION = 0.4
#: ReFL's gradient step is in the last quarter (IterComp: steps 30-39 of 40)
REFL_FRACTION = 0.25


def check_method(method: str) -> str:
    m = str(method).strip().lower()
    if m not in METHODS:
        raise ValueError(f"unknown reward fine-tuning method {method!r}; use one of {', '.join(METHODS)}")
    return m


@dataclass(frozen=True)
class Rollout:
    """What one rollout runs and backpropagates through.

    ``stop``: steps run (1..steps); ``attached``: steps whose denoiser call carries gradient to the parameters;
    ``detach_input``: every call's input detached (DRTune); ``target``: ``"final"`` (the chain's result) or
    ``"x0"`` (the prediction of step ``stop - 1``) is decoded and scored.
    """

    method: str
    steps: int
    stop: int
    attached: frozenset[int]
    detach_input: bool
    target: str

    def gradients(self, recompute: bool = True, copy_saved: bool = False, skip=None) -> StepGradients:
        return StepGradients(self.attached, self.detach_input, recompute=recompute, copy_saved=copy_saved, skip=skip)


def _randint(lo: int, hi: int, generator: torch.Generator) -> int:
    """Uniform in lo..hi (inclusive), from ``generator``."""
    return lo + int(torch.randint(0, hi - lo + 1, (1,), generator=generator))


def draw_rollout(method: str, steps: int, k: int, generator: torch.Generator) -> Rollout:
    """Draw one rollout of ``method`` over a ``steps``-step schedule (``k``: the method's K)."""
    method = check_method(method)
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"draw_rollout: steps must be >= 1, got {steps!r}")
    if isinstance(k, bool) or not isinstance(k, int) or k < 1:
        raise ValueError(f"draw_rollout: k must be >= 1, got {k!r}")
    if method == "alignprop":
        truncation = _randint(1, min(k, steps), generator)
        return Rollout(method, steps, steps, frozenset(range(steps - truncation, steps)), False, "final")
    if method == "drtune":
        lo = max(1, steps - math.ceil(DRTUNE_STOP_FRACTION * steps) + 1)
        stop = _randint(lo, steps, generator)
        kk = min(k, stop)
        interval = stop // kk
        offset = _randint(0, interval - 1, generator)
        return Rollout(method, steps, stop, frozenset(offset + j * interval for j in range(kk)), True, "x0")
    lo = steps - max(1, math.ceil(REFL_FRACTION * steps))
    t = _randint(lo, steps - 1, generator)
    return Rollout(method, steps, t + 1, frozenset({t}), True, "x0")


def run_rollout(denoise: Denoiser, x: torch.Tensor, spec: ChainSpec, rollout: Rollout, recompute: bool = True,
                copy_saved: bool = False, skip=None) -> torch.Tensor:
    """The latent to decode and score for ``rollout``: the chain's result (``final``) or the x̂0 at its stop.

    ``skip(sigma)``: the denoiser's skip coefficient (``StepGradients.skip``), so that a detached input holds the
    network's output fixed, as DRTune does; without it the whole x0 prediction of a detached step is fixed.
    """
    x_final, x0 = rollout_chain(denoise, x, spec, rollout, recompute, copy_saved, skip)
    return x_final if rollout.target == "final" else x0


def rollout_chain(denoise: Denoiser, x: torch.Tensor, spec: ChainSpec, rollout: Rollout, recompute: bool = True,
                  copy_saved: bool = False, skip=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(the chain's result, the x̂0 at the rollout's stop) under the rollout's gradients: what ``run_rollout``
    chooses from (``rollout.target``)."""
    if rollout.steps != spec.steps:
        raise ValueError(f"run_rollout: the rollout was drawn for {rollout.steps} steps, the schedule has {spec.steps}")
    return run_chain(denoise, x, spec, rollout.gradients(recompute, copy_saved, skip), stop=rollout.stop)


@dataclass(frozen=True)
class RewardTerm:
    label: str
    weight: float
    offset: float


def reward_loss(method: str, scores: dict[str, torch.Tensor], terms: Sequence[RewardTerm]) -> torch.Tensor:
    """(B,) loss: ``sum_i w_i (c_i - r_i)`` (AlignProp, DRTune) or ``sum_i w_i relu(c_i - r_i)`` (ReFL)."""
    method = check_method(method)
    return weighted_reward_loss(((t.weight, t.offset, scores[t.label]) for t in terms), relu=method == "refl")


@dataclass(frozen=True)
class TrainConfig:
    method: str
    steps: int = 200  # optimizer steps
    learning_rate: float = 1e-4
    batch_size: int = 1
    grad_accumulation: int = 1
    sampler_steps: int = 4
    k: int = 1
    grad_clip: float = 1.0  # AlignProp's
    eval_every: int = 10
    patience: int = 0  # evaluations without improvement before stopping; 0: never stop early
    seed: int = 0

    def __post_init__(self):
        object.__setattr__(self, "method", check_method(self.method))
        for name in ("steps", "batch_size", "grad_accumulation", "sampler_steps", "k", "eval_every"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a whole number >= 1, got {v!r}")
        if isinstance(self.patience, bool) or not isinstance(self.patience, int) or self.patience < 0:
            raise ValueError(f"TrainConfig.patience must be >= 0, got {self.patience!r}")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"TrainConfig.learning_rate must be > 0, got {self.learning_rate!r}")
        if not (math.isfinite(self.grad_clip) and self.grad_clip >= 0):
            raise ValueError(f"TrainConfig.grad_clip must be >= 0 (0: no clipping), got {self.grad_clip!r}")


@dataclass(frozen=True)
class RolloutRequest:
    """One rollout of a training step: which prompt, which noise seed, what to backpropagate, the loss scale."""

    step: int
    prompt_index: int
    noise_seed: int
    rollout: Rollout
    loss_scale: float
    preview: bool = True  # the step shows this rollout's image (only its first rollout's is kept)


@dataclass
class RolloutOutcome:
    """What a rollout reports: its (unscaled) mean loss and each reward's mean score."""

    loss: float
    scores: dict[str, float]
    preview: object = None  # whatever the caller shows for it (an image)


@dataclass
class StepRecord:
    step: int  # 1-based optimizer step
    loss: float
    scores: dict[str, float]
    grad_norm: float
    held_out: float | None  # the evaluation at this step, if any
    preview: object = None
    held_out_last: float | None = None  # the latest evaluation so far (step 0's before training included)

    def to_dict(self) -> dict:
        return {"step": self.step, "loss": self.loss, "scores": dict(self.scores), "grad_norm": self.grad_norm,
                "held_out": self.held_out}


@dataclass
class TrainResult:
    records: list[StepRecord] = field(default_factory=list)
    evaluations: list[tuple[int, float]] = field(default_factory=list)  # (step, held-out reward); step 0 = before
    best_step: int | None = None  # the evaluated step whose parameters were kept (early stopping)
    stop_reason: str | None = None

    @property
    def held_out_before(self) -> float | None:
        return self.evaluations[0][1] if self.evaluations else None

    @property
    def held_out_after(self) -> float | None:
        if not self.evaluations:
            return None
        if self.best_step is not None:
            return dict(self.evaluations)[self.best_step]
        return self.evaluations[-1][1]


def prompt_order(count: int, steps: int, per_step: int, generator: torch.Generator) -> list[int]:
    """Prompt indices for ``steps * per_step`` rollouts: epochs of random permutations."""
    out: list[int] = []
    need = steps * per_step
    while len(out) < need:
        out.extend(int(i) for i in torch.randperm(count, generator=generator))
    return out[:need]


def train(parameters: Sequence[torch.nn.Parameter], rollout: Callable[[RolloutRequest], RolloutOutcome],
          config: TrainConfig, prompt_count: int, evaluate: Callable[[int], float] | None = None,
          on_step: Callable[[StepRecord], None] | None = None) -> TrainResult:
    """Fine-tune ``parameters`` against the rewards (see the module docstring).

    ``rollout(request)`` runs one rollout's forward pass and ``backward()`` of its loss times
    ``request.loss_scale`` (gradients accumulate here); ``evaluate(step)`` returns the held-out reward (higher is
    better) for the current parameters. ``on_step`` sees each step's record (progress, previews, cancel: an
    exception raised there stops training, with the parameters as they are).
    """
    params = [p for p in parameters if p.requires_grad]
    if not params:
        raise ValueError("train: no trainable parameter")
    if prompt_count < 1:
        raise ValueError("train: no prompt to train on")
    generator = torch.Generator().manual_seed(int(config.seed))
    per_step = config.batch_size * config.grad_accumulation
    order = prompt_order(prompt_count, config.steps, per_step, generator)
    optimizer = torch.optim.AdamW(params, lr=config.learning_rate)
    result = TrainResult()
    best: tuple[float, int, list[torch.Tensor]] | None = None
    since_best = 0

    def evaluation(step: int) -> float | None:
        nonlocal best, since_best
        if evaluate is None:
            return None
        value = float(evaluate(step))
        result.evaluations.append((step, value))
        if best is None or value > best[0]:
            best = (value, step, [p.detach().clone() for p in params] if config.patience else [])
            since_best = 0
        else:
            since_best += 1
        return value

    evaluation(0)
    for step in range(1, config.steps + 1):
        optimizer.zero_grad(set_to_none=True)
        losses: list[float] = []
        sums: dict[str, float] = {}
        preview = None
        for j in range(per_step):
            request = RolloutRequest(step, order[(step - 1) * per_step + j],
                                     int(torch.randint(0, 2**31 - 1, (1,), generator=generator)),
                                     draw_rollout(config.method, config.sampler_steps, config.k, generator),
                                     1.0 / per_step, preview=j == 0)
            outcome = rollout(request)
            losses.append(outcome.loss)
            for label, v in outcome.scores.items():
                sums[label] = sums.get(label, 0.0) + v
            if preview is None:
                preview = outcome.preview
        # one pass over the gradients: the pre-clipping norm (recorded) and the clipping itself
        grad_norm = float(torch.nn.utils.clip_grad_norm_(
            params, config.grad_clip if config.grad_clip > 0 else float("inf")))
        optimizer.step()
        held = evaluation(step) if (step % config.eval_every == 0 or step == config.steps) else None
        record = StepRecord(step, sum(losses) / len(losses), {k: v / per_step for k, v in sums.items()}, grad_norm,
                            held, preview, result.evaluations[-1][1] if result.evaluations else None)
        result.records.append(record)
        if on_step is not None:
            on_step(record)
        if config.patience and held is not None and since_best >= config.patience and step < config.steps:
            result.stop_reason = (f"early stop at step {step}: the held-out reward has not improved for "
                                  f"{config.patience} evaluation(s) since step {best[1]}")
            break
    if config.patience and best is not None:
        with torch.no_grad():
            for p, v in zip(params, best[2]):
                p.copy_(v)
        result.best_step = best[1]
    return result
