"""The ReNO algorithm in plain PyTorch (no ComfyUI imports): see ``reno.py``."""

from .config import ReNOConfig
from .regularizers import chi_norm_nll, regularizer_fn
from .reno import IterationRecord, ReNOResult, optimize_noise

__all__ = ["ReNOConfig", "IterationRecord", "ReNOResult", "optimize_noise", "chi_norm_nll", "regularizer_fn"]
