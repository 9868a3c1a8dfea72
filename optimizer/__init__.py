"""The ReNO algorithm in plain PyTorch (no ComfyUI imports): see ``reno.py``; the
differentiable multi-step sampling chain: ``chain.py``."""

from .chain import GRADIENT_MODES, SAMPLERS, ChainSpec, GradientPolicy, draw_step_noises, run_chain
from .config import ReNOConfig
from .regularizers import chi_norm_nll, regularizer_fn
from .reno import IterationRecord, ReNOResult, optimize_noise

__all__ = ["ReNOConfig", "IterationRecord", "ReNOResult", "optimize_noise", "chi_norm_nll", "regularizer_fn",
           "ChainSpec", "GradientPolicy", "run_chain", "draw_step_noises", "SAMPLERS", "GRADIENT_MODES"]
