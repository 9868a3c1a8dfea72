"""Float tolerances derived from the dtype and the magnitudes compared (one place for the whole suite).

Two computations of the same quantity in different orders (a batch against one item at a time, another kernel,
a recomputed pass against a stored one, channels-last against contiguous) differ only by rounding. Each rounding
is at most eps/2 relative to the value rounded, so the difference is bounded by ``k · eps(dtype) · M``: ``M`` the
largest magnitude that went into the result (not only the result's own: a difference of two large numbers keeps
their rounding), ``k`` the number of roundings that can pile up along the way (the depth of the computation and
the length of its sums). ``k`` is chosen per comparison, with a one-line reason beside it, from what the two paths
compute; it does not depend on the CPU's kernels (AVX2, AVX-512, AMX reorder sums but round the same way).

A comparison of one code path with itself (same inputs, same kernels) is exact: ``rtol=0, atol=0``.
"""

from __future__ import annotations

import torch

EPS32 = torch.finfo(torch.float32).eps  # 1.19e-7
EPS64 = torch.finfo(torch.float64).eps  # 2.22e-16


def eps(dtype: torch.dtype) -> float:
    """The machine epsilon of a floating dtype (the gap between 1 and the next representable number)."""
    return float(torch.finfo(dtype).eps)


def magnitude(*values) -> float:
    """max |x| over every tensor (or number) given, in float64."""
    out = 0.0
    for v in values:
        t = torch.as_tensor(v).detach()
        if t.numel():
            out = max(out, float(t.double().abs().max()))
    return out


def rounding_tol(k: float, dtype: torch.dtype, *values, scale: float | None = None, at_least: float = 0.0) -> float:
    """``k · eps(dtype) · M``: M is ``scale`` when given (the largest intermediate), else max |x| over ``values``;
    never below ``at_least`` (e.g. 1 for a cosine of unit vectors, whose rounding is relative to 1, not to cos)."""
    m = magnitude(*values) if scale is None else float(scale)
    return k * eps(dtype) * max(m, at_least)


def assert_rounding_close(actual, expected, k: float, *, dtype: torch.dtype | None = None, scale: float | None = None,
                          at_least: float = 0.0, msg: str | None = None) -> None:
    """``actual`` equals ``expected`` up to ``k`` roundings of ``dtype`` (default: the less precise of the two) at
    the magnitude ``scale`` (default: max |x| of both, at least ``at_least``); the message gives the error in
    those units."""
    actual, expected = torch.as_tensor(actual), torch.as_tensor(expected)
    if dtype is None:
        dtype = actual.dtype if eps(actual.dtype) >= eps(expected.dtype) else expected.dtype
    a, b = actual.detach().double().cpu(), expected.detach().double().cpu()
    assert a.shape == b.shape, f"{msg + ': ' if msg else ''}shapes differ: {tuple(a.shape)} vs {tuple(b.shape)}"
    assert bool(torch.isfinite(a).all()) and bool(torch.isfinite(b).all()), f"{msg + ': ' if msg else ''}non-finite"
    unit = rounding_tol(1, dtype, a, b, scale=scale, at_least=at_least)
    err = float((a - b).abs().max()) if a.numel() else 0.0
    if err > k * unit:
        raise AssertionError(
            f"{msg + ': ' if msg else ''}max |difference| {err:.3g} > {k:g} roundings of {unit / eps(dtype):.3g} in "
            f"{dtype} = {k * unit:.3g} (the error is {err / unit if unit else float('inf'):.3g} roundings)"
        )


def weighted_score_scale(stack) -> float:
    """The scale a stack's weighted total rounds at: sum of |w| times each reward's own scale (exp(logit_scale)
    for the CLIP-type scores, whose cosine rounds relative to 1; 1 for the others, LayerNorm'd features)."""
    return sum(abs(r.weight) * max(1.0, float(getattr(r.model, "logit_scale_exp", 1.0))) for r in stack)


# -- shared counts of roundings ------------------------------------------------------------------------------------

#: a tiny reward tower (a few transformer layers, a projection, a head) against an independent implementation of the
#: same model (open_clip, transformers' CLIPModel, BLIP written out): other modules and kernels round each layer's
#: sums differently, a few roundings per layer at the features' scale (LayerNorm'd, ~1); measured <= 6 at scale
#: max(1, |score|)
REFERENCE_K = 64
#: a batch against one item at a time through the same model: other GEMM blockings, a few roundings per layer;
#: measured <= 2.2 at scale max(1, |score|)
BATCH_K = 32
#: a reward tower run in float16/bfloat16 (its head and score in float32) against the float32 one: each layer's
#: output rounded to the half dtype, the errors partly cancelling; measured <= 0.25 half-dtype roundings of 1
HALF_TOWER_K = 2


# -- the engine oracles: ReNO with one iteration (no update) against ComfyUI's own nodes on the same inputs --------

#: the latent: the same model and sampler step, run under autograd (which may pick other kernels than inference
#: mode does) through the pack's denoiser wrapper; a few roundings of the noised latent the step starts from
#: (|latent| + sigma |noise|: the step's output comes from it by cancellation); measured <= 3.6
ORACLE_LATENT_K = 16
#: iteration 0's noise gradient runs back through the rewards, the VAE decoder and the diffusion model (~100
#: layers); two paths (recomputed blocks, another VAE layout, a batch, the rewards' gradients summed into the image
#: in another order) round each layer's sums differently: measured <= 46 roundings of max |gradient|
GRAD_K = 256
#: the image: ReNO decodes with the VAE's decoder module (channels-last on CPUs), VAE Decode through ComfyUI's
#: wrapper (contiguous): ~20 conv/norm layers summed in other orders; measured <= 26 roundings of |image| <= 1
ORACLE_IMAGE_K = 256
