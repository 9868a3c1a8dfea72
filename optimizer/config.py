"""ReNO hyper-parameters, with the defaults of the paper and its official code."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

REGULARIZERS = ("chi", "none")


@dataclass(frozen=True)
class ReNOConfig:
    """Everything that shapes one ReNO run.

    ``iterations`` counts evaluated images, the initial one included, as the official code does:
    50 iterations are 50 forward passes and 49 noise updates. ``iterations=1`` returns the plain
    one-step image.
    """

    iterations: int = 50
    learning_rate: float = 5.0
    momentum: float = 0.9
    nesterov: bool = True
    grad_clip: float = 0.1  # global L2 norm of each noise element's gradient; 0 turns clipping off
    regularization: float = 0.01  # weight of the regularizer in the backpropagated loss
    regularizer: str = "chi"

    def __post_init__(self):
        def bad(msg):
            raise ValueError(f"ReNO setting {msg}")

        if not isinstance(self.iterations, int) or self.iterations < 1:
            bad(f"iterations={self.iterations!r}: must be an integer >= 1 (1 = no optimization)")
        for name in ("learning_rate", "momentum", "grad_clip", "regularization"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
                bad(f"{name}={value!r}: must be a finite number >= 0")
        if self.momentum >= 1:
            bad(f"momentum={self.momentum!r}: must be < 1")
        if self.regularizer not in REGULARIZERS:
            bad(f"regularizer={self.regularizer!r}: choose one of {', '.join(REGULARIZERS)}")

    def to_dict(self) -> dict:
        return asdict(self)
