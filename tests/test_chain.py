"""The differentiable sampling chain (optimizer/chain.py): forward values, gradient policies, memory, noises.

References are written here, independently of the module: each sampler's step in closed form (python-float
coefficients), and each gradient policy as the same graph built with explicit ``.detach()`` calls and plain
autograd (no recomputation), on a tiny float64 MLP denoiser with parameters. ComfyUI itself is the oracle in
tests/engine/test_chain_oracle.py.
"""

from __future__ import annotations

import math
import weakref

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reno_pack.optimizer import chain as chain_mod
from reno_pack.optimizer.chain import SAMPLERS, ChainSpec, GradientPolicy, draw_step_noises, run_chain
from tolerances import assert_rounding_close, rounding_tol
from torch import nn

SHAPE = (2, 2, 2)  # C, H, W of the toy latent


class ToyDenoiser(nn.Module):
    """x0 = c(s)·x + W2·tanh(W1·x + b·log s): per element of the batch, sigma-dependent, with parameters.
    Every hidden activation it makes is recorded (weakly) so tests can count the ones still alive."""

    def __init__(self, hidden=16, seed=0):
        super().__init__()
        gen = torch.Generator().manual_seed(seed)
        n = math.prod(SHAPE)
        self.w1 = nn.Parameter(torch.randn(hidden, n, generator=gen, dtype=torch.float64) * 0.4)
        self.b = nn.Parameter(torch.randn(hidden, generator=gen, dtype=torch.float64) * 0.3)
        self.w2 = nn.Parameter(torch.randn(n, hidden, generator=gen, dtype=torch.float64) * 0.4)
        self.activations: list[weakref.ref] = []
        self.calls = 0
        self.peak_alive = 0

    def alive(self) -> int:
        return sum(r() is not None for r in self.activations)

    def forward(self, x, sigma):
        self.calls += 1
        assert sigma.shape == (x.shape[0],)
        flat = x.reshape(x.shape[0], -1)
        h = torch.tanh(flat @ self.w1.T + sigma.log()[:, None] * self.b)
        self.activations.append(weakref.ref(h))
        out = flat / (1.0 + sigma[:, None] ** 2) ** 0.5 + h @ self.w2.T
        self.peak_alive = max(self.peak_alive, self.alive())
        return out.reshape(x.shape)


def schedule(steps: int, end: float, flow: bool) -> torch.Tensor:
    """Decreasing sigmas: flow models in (0, 1], others up to ~14.6 (ComfyUI's range); the last is ``end``."""
    top, low = (1.0, 0.05) if flow else (14.6, 0.03)
    body = torch.logspace(math.log10(top), math.log10(low), steps, dtype=torch.float64)
    return torch.cat([body, torch.tensor([end], dtype=torch.float64)])


# -- the independent reference --------------------------------------------------------------------------

def ref_step(sampler, x, d, old, s, sn, s_prev, noise, flow):
    """One step in closed form (k-diffusion's formulas re-derived, python-float coefficients)."""
    if sampler == "euler":
        return (sn / s) * x + (1 - sn / s) * d
    if sampler == "euler_ancestral":
        if sn == 0:
            return d
        if flow:  # rectified flow, eta 1: sigma_down = sn^2/s, re-noised by alpha_{i+1}/alpha_down
            sd = sn * sn / s
            a = (1 - sn) / (1 - sd)
            return a * ((sd / s) * x + (1 - sd / s) * d) + math.sqrt(sn**2 - (sd * a) ** 2) * noise
        su = min(sn, math.sqrt(sn**2 * (s**2 - sn**2) / s**2))
        sd = math.sqrt(sn**2 - su**2)
        return (sd / s) * x + (1 - sd / s) * d + su * noise
    if sampler == "lcm":
        if sn == 0:
            return d
        return sn * noise + (1 - sn) * d if flow else d + sn * noise
    if sampler == "dpmpp_2m":  # x' = (sn/s) x + (1 - sn/s) D, D second order in lambda = -log sigma
        if old is None or sn == 0:
            return (sn / s) * x + (1 - sn / s) * d
        r = math.log(s_prev / s) / math.log(s / sn)
        return (sn / s) * x + (1 - sn / s) * ((1 + 1 / (2 * r)) * d - (1 / (2 * r)) * old)
    if sampler == "ddpm":  # VP: abar = 1/(1+sigma^2) on x/sqrt(1+sigma^2), whatever the model (ComfyUI's)
        abar, abar_next = 1 / (1 + s * s), 1 / (1 + sn * sn)
        alpha = abar / abar_next
        eps = (x - d) / s
        mu = (x / math.sqrt(1 + s * s) - (1 - alpha) / math.sqrt(1 - abar) * eps) / math.sqrt(alpha)
        if sn > 0:
            mu = mu + math.sqrt((1 - alpha) * (1 - abar_next) / (1 - abar)) * noise
            mu = mu * math.sqrt(1 + sn * sn)
        return mu
    raise AssertionError(sampler)


def ref_chain(model, x, sampler, sigmas, noises, flow, mode="exact", k=1):
    """The chain with the policy written as explicit detaches, plain autograd (no recomputation)."""
    n = len(sigmas) - 1
    s_list = [float(v) for v in sigmas]
    old, d = None, x
    for i in range(n):
        inp = x.detach() if mode == "drtune" and i < n - k else x
        d = model(inp, torch.full((x.shape[0],), s_list[i], dtype=x.dtype))
        if mode == "last_k" and i < n - k:
            d = d.detach()
        x = ref_step(sampler, x, d, old, s_list[i], s_list[i + 1], s_list[i - 1] if i else None,
                     None if noises is None else noises[i], flow)
        old = d
    return x, d


def setup_case(sampler, flow, steps, batch, end=0.0, seed=0):
    sigmas = schedule(steps, end, flow)
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *SHAPE), generator=gen, dtype=torch.float64) * float(sigmas[0])
    noises = draw_step_noises(x, sampler, sigmas, seed + 1, flow=flow)
    return sigmas, x, noises, ChainSpec(sampler, sigmas, noises, flow=flow)


cases = st.tuples(st.sampled_from(SAMPLERS), st.booleans(), st.integers(1, 5), st.integers(1, 3),
                  st.sampled_from([0.0, 0.01]))


# -- forward ------------------------------------------------------------------------------------------

@settings(max_examples=60, deadline=None)
@given(case=cases)
def test_forward_is_each_samplers_closed_form(case):
    sampler, flow, steps, batch, end = case
    sigmas, x, noises, spec = setup_case(sampler, flow, steps, batch, end)
    model = ToyDenoiser()
    with torch.no_grad():
        got, x0 = run_chain(model, x, spec)
        want, want_x0 = ref_chain(model, x, sampler, sigmas, noises, flow)
    assert model.calls == 2 * steps  # one denoiser call per step
    # float64, the sampler's updates written two ways (exp/log coefficients, other orders) over <= 6 steps of a
    # small MLP: a few roundings per step at |x| <= 9 (measured <= 18): 256 roundings
    assert_rounding_close(got, want, 256, msg=f"{sampler}: final latent")
    assert_rounding_close(x0, want_x0, 256, msg=f"{sampler}: last x0")


def test_eps_ancestral_with_eta_zero_is_euler_and_lcm_uses_the_callers_noise_scaling():
    sigmas, x, _, _ = setup_case("euler", False, 4, 2)
    model = ToyDenoiser()
    noises = [torch.randn_like(x) for _ in range(4)]
    with torch.no_grad():
        euler, _ = run_chain(model, x, ChainSpec("euler", sigmas))
        anc0, _ = run_chain(model, x, ChainSpec("euler_ancestral", sigmas, noises, eta=0.0))
        # float64: eta 0 makes sigma_down the next sigma up to its own rounding (measured 0.1 roundings)
        assert_rounding_close(anc0, euler, 4)
        seen = []
        lcm, _ = run_chain(model, x, ChainSpec("lcm", sigmas, noises, noise_scaling=lambda s, n, x0: seen.append(
            float(s)) or x0 + 2 * s * n))
    assert seen == [float(s) for s in sigmas[1:-1]]  # re-noised to every next sigma but the final 0


# -- gradients ----------------------------------------------------------------------------------------

def grads(fn, model, x, weight):
    """d<weight, fn(x)>/d(x, parameters)."""
    x = x.clone().requires_grad_()
    model.zero_grad(set_to_none=True)
    out, _ = fn(x)
    if out.requires_grad:  # not when every path is detached (last_k with k=0 ending at sigma 0)
        (out * weight).sum().backward()
    params = [torch.zeros_like(p) if p.grad is None else p.grad.clone() for p in model.parameters()]
    return torch.zeros_like(x) if x.grad is None else x.grad.clone(), params


@settings(max_examples=80, deadline=None)
@given(case=cases, mode=st.sampled_from(["exact", "drtune", "last_k"]), k=st.integers(0, 6))
def test_every_policy_equals_autograd_through_the_same_graph_with_explicit_detaches(case, mode, k):
    sampler, flow, steps, batch, end = case
    sigmas, x, noises, spec = setup_case(sampler, flow, steps, batch, end)
    model = ToyDenoiser()
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    got = grads(lambda v: run_chain(model, v, spec, GradientPolicy(mode, k)), model, x, weight)
    want = grads(lambda v: ref_chain(model, v, sampler, sigmas, noises, flow, mode, k), model, x, weight)
    # float64 gradients through <= 6 steps written two ways (measured <= 23 roundings); a noise gradient of terms of
    # size ~1 (|weight| |d out / d x|) may cancel to ~0, so its roundings are counted at least at 1
    assert_rounding_close(got[0], want[0], 256, at_least=1.0, msg=f"{sampler} {mode}: noise gradient")
    for g, w in zip(got[1], want[1]):
        assert_rounding_close(g, w, 256, at_least=1.0, msg=f"{sampler} {mode}: weight gradient")


@pytest.mark.parametrize("k", [0, 1, 2, 4])
def test_euler_gradients_are_products_of_step_jacobians(k):
    """Linear denoiser x0 = A_i·x: exact = prod((sn/s)·I + (1 - sn/s)·A_i); DRTune and last-k replace the steps
    before the last k by their linear coefficient (sn/s)·I."""
    steps = 4
    sigmas = schedule(steps, 0.0, False)
    n = math.prod(SHAPE)
    gen = torch.Generator().manual_seed(3)
    mats = {float(s): torch.eye(n, dtype=torch.float64) * 0.5 + 0.1 * torch.randn(n, n, generator=gen,
                                                                                    dtype=torch.float64)
            for s in sigmas[:-1]}

    def linear(x, sigma):
        return (x.reshape(x.shape[0], -1) @ mats[float(sigma[0])].T).reshape(x.shape)

    def jacobian(detached_before: int):
        total = torch.eye(n, dtype=torch.float64)
        for i in range(steps):
            s, sn = float(sigmas[i]), float(sigmas[i + 1])
            step = (sn / s) * torch.eye(n, dtype=torch.float64)
            if i >= detached_before:
                step = step + (1 - sn / s) * mats[s]
            total = step @ total
        return total

    x = torch.randn((1, *SHAPE), generator=gen, dtype=torch.float64)
    weight = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    spec = ChainSpec("euler", sigmas)
    for mode, detached_before in (("exact", 0), ("drtune", steps - k), ("last_k", steps - k)):
        v = x.clone().requires_grad_()
        out, _ = run_chain(linear, v, spec, GradientPolicy(mode, k))
        (out * weight).sum().backward()
        want = (jacobian(detached_before).T @ weight.reshape(-1)).reshape(x.shape)
        # float64: backward against the Jacobian (another summation order) of a few layers (measured 7.5)
        assert_rounding_close(v.grad, want, 64)


@pytest.mark.parametrize("sampler", SAMPLERS)
def test_drtune_and_last_k_share_the_noise_gradient_but_not_the_parameter_gradient(sampler):
    """For the start noise both drop the denoiser's Jacobian before the last k steps; DRTune still lets every
    step's output reach the parameters (its input is what is detached), last-k does not (its output is)."""
    sigmas, x, noises, spec = setup_case(sampler, False, 4, 2, 0.01)
    model = ToyDenoiser()
    weight = torch.randn(x.shape, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    dr = grads(lambda v: run_chain(model, v, spec, GradientPolicy("drtune", 1)), model, x, weight)
    lk = grads(lambda v: run_chain(model, v, spec, GradientPolicy("last_k", 1)), model, x, weight)
    ex = grads(lambda v: run_chain(model, v, spec, GradientPolicy("exact")), model, x, weight)
    assert_rounding_close(dr[0], lk[0], 16)  # float64, two policies, the same operations on the noise (measured 0)
    # the truncation is not the exact gradient, and the two policies differ in the weights: farther apart than the
    # 256 roundings two computations of one gradient may differ by
    assert (dr[0] - ex[0]).abs().max() > rounding_tol(256, torch.float64, dr[0], ex[0], at_least=1.0)
    assert (dr[1][0] - lk[1][0]).abs().max() > rounding_tol(256, torch.float64, dr[1][0], lk[1][0], at_least=1.0)
    # last_k with k=0 detaches every output: no parameter gets a gradient; DRTune's k=0 still trains them
    lk0 = grads(lambda v: run_chain(model, v, spec, GradientPolicy("last_k", 0)), model, x, weight)
    dr0 = grads(lambda v: run_chain(model, v, spec, GradientPolicy("drtune", 0)), model, x, weight)
    assert all(float(g.abs().max()) == 0 for g in lk0[1])
    assert all(float(g.abs().max()) > 0 for g in dr0[1])


class EpsToy(nn.Module):
    """An ε-prediction model as ComfyUI wraps one: x0 = x − σ·net(x, σ) (skip coefficient 1), net an MLP."""

    def __init__(self, hidden=16, seed=0):
        super().__init__()
        self.net = ToyDenoiser(hidden, seed)

    def forward(self, x, sigma):
        return x - sigma.reshape(-1, *[1] * (x.ndim - 1)) * self.net(x, sigma)


@pytest.mark.parametrize("k", [1, 2, 3])
@pytest.mark.parametrize("output", ["x_final", "x0_last"])
def test_euler_eps_last_k_noise_gradient_is_drtunes_scaled_by_the_sigma_ratio(k, output):
    """Euler on an ε-model: a `last k` step before the last k has Jacobian σ_{i+1}/σ_i (its x0 held fixed), a
    `drtune` step has Jacobian 1 (its ε held fixed, the skip term attached): the two noise gradients have the same
    direction and differ by the factor σ_{N−k}/σ_0 exactly (BENCHMARKS' lower `last k` gain is a smaller step)."""
    steps = 4
    sigmas = schedule(steps, 0.0, False)
    model = EpsToy()
    gen = torch.Generator().manual_seed(11)
    x = torch.randn((2, *SHAPE), generator=gen, dtype=torch.float64) * float(sigmas[0])
    weight = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    spec = ChainSpec("euler", sigmas)
    pick = 0 if output == "x_final" else 1

    def noise_grad(mode):
        v = x.clone().requires_grad_()
        policy = GradientPolicy(mode, k, skip=lambda s: torch.ones_like(s))  # ε-model: c_skip = 1
        (run_chain(model, v, spec, policy)[pick] * weight).sum().backward()
        return v.grad

    dr, lk = noise_grad("drtune"), noise_grad("last_k")
    ratio = float(sigmas[steps - k] / sigmas[0])
    cosine = float((dr * lk).sum() / (dr.norm() * lk.norm()))
    eps = torch.finfo(torch.float64).eps
    # float64 rounding through 4 steps of a 16-wide MLP: a few hundred eps relative, nothing near 1e-6
    assert abs(cosine - 1.0) <= 256 * eps
    assert float(lk.norm() / dr.norm()) == pytest.approx(ratio, rel=256 * eps)
    torch.testing.assert_close(lk, ratio * dr, rtol=0, atol=256 * eps * float(dr.abs().max()))
    assert ratio < 0.2  # σ from 14.6 down to 0.03 in 4 steps: a real factor (0.0094..0.13), not rounding
    ex = noise_grad("exact")
    # the truncation is not the exact gradient: farther apart than 256 roundings, as above
    assert float((ex - dr).abs().max()) > 256 * eps * float(dr.abs().max())


# -- memory -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m", "euler_ancestral"])
def test_exact_keeps_about_one_steps_activations(sampler):
    """Exact mode recomputes each step's denoiser call in the backward pass: after the forward pass no hidden
    activation of any step is alive, and during the backward pass at most one step's at a time; without the
    recomputation all of them are kept. The gradient is plain autograd's either way."""
    steps = 6
    sigmas, x, noises, spec = setup_case(sampler, False, steps, 2)
    weight = torch.randn(x.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    results = {}
    for recompute in (True, False):
        model = ToyDenoiser(hidden=256)
        v = x.clone().requires_grad_()
        out, _ = run_chain(model, v, spec, GradientPolicy("exact", recompute=recompute))
        alive_after_forward = model.alive()
        model.peak_alive = 0
        (out * weight).sum().backward()
        results[recompute] = (alive_after_forward, model.peak_alive, model.calls, v.grad.clone())
    alive, peak, calls, grad = results[True]
    assert alive == 0 and peak <= 1, f"recomputed: {alive} steps' activations kept, {peak} alive in backward"
    assert calls == 2 * steps  # each step once forward, once recomputed
    kept, _, plain_calls, plain_grad = results[False]
    assert kept == steps and plain_calls == steps
    torch.testing.assert_close(grad, plain_grad, rtol=0, atol=0)  # recomputed: the same ops on the same values


def test_exact_saved_bytes_do_not_grow_with_the_models_activations():
    """A saved_tensors_hooks counter around the whole chain: with recomputation, what autograd holds across steps
    is the chain's own small tensors (the same for a 16x wider model); without it, every step's activations."""
    steps, batch = 5, 2
    sigmas, x, _, spec = setup_case("dpmpp_2m", False, steps, batch)

    def saved_bytes(hidden, recompute):
        held = []

        def pack(t):
            held.append(t.untyped_storage().nbytes())
            return t

        v = x.clone().requires_grad_()
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            run_chain(ToyDenoiser(hidden=hidden), v, spec, GradientPolicy("exact", recompute=recompute))
        return sum(held)

    assert saved_bytes(64, True) == saved_bytes(1024, True)
    grown = saved_bytes(1024, False) - saved_bytes(64, False)
    assert grown >= steps * batch * (1024 - 64) * 8  # at least one float64 hidden activation per step


def test_the_chain_updates_nothing_in_place():
    sigmas, x, noises, spec = setup_case("ddpm", False, 4, 2, 0.01)
    model = ToyDenoiser()
    outputs = []

    def denoise(v, s):
        outputs.append(model(v, s))
        return outputs[-1]

    v = x.clone().requires_grad_()
    versions = [n._version for n in noises if n is not None]
    with torch.autograd.graph.saved_tensors_hooks(lambda t: t, lambda t: t):
        out, _ = run_chain(denoise, v, spec, GradientPolicy("exact", recompute=False))
    out.sum().backward()  # autograd checks the versions of everything it saved
    assert v._version == 0 and all(o._version == 0 for o in outputs)
    assert versions == [n._version for n in noises if n is not None]


# -- noises -------------------------------------------------------------------------------------------

@pytest.mark.parametrize(("sampler", "flow", "eta", "end", "drawn"), [
    ("euler_ancestral", False, 1.0, 0.0, [1, 1, 1, 0]),
    ("euler_ancestral", True, 1.0, 0.0, [1, 1, 1, 0]),
    ("euler_ancestral", True, 0.0, 0.0, [0, 0, 0, 0]),  # RF with eta 0 never calls its noise sampler
    ("euler_ancestral", False, 0.0, 0.0, [1, 1, 1, 0]),  # the EPS step still draws (and scales it by 0)
    ("lcm", False, 1.0, 0.0, [1, 1, 1, 0]),
    ("ddpm", True, 1.0, 0.0, [1, 1, 1, 0]),
    ("ddpm", False, 1.0, 0.02, [1, 1, 1, 1]),  # a split schedule ending above 0 re-noises at every step
    ("euler", False, 1.0, 0.0, [0, 0, 0, 0]),
    ("dpmpp_2m", True, 1.0, 0.0, [0, 0, 0, 0]),
])
def test_step_noises_are_comfyuis_draws_for_the_seed(sampler, flow, eta, end, drawn):
    """ComfyUI's default_noise_sampler: one generator on x's device seeded with the seed, one randn of x's size per
    step that adds noise, in order; the whole batch shares it."""
    sigmas = schedule(4, end, flow).float()
    x = torch.zeros(2, 3, 4, 4)
    noises = draw_step_noises(x, sampler, sigmas, 42, flow=flow, eta=eta)
    assert [int(n is not None) for n in noises] == drawn
    gen = torch.Generator().manual_seed(42)
    expected = [torch.randn(x.size(), generator=gen) for _ in range(sum(drawn))]
    got = [n for n in noises if n is not None]
    assert len(got) == len(expected) and all(torch.equal(a, b) for a, b in zip(got, expected))
    assert all(n.dtype == torch.float32 and n.shape == x.shape for n in got)
    assert ChainSpec(sampler, sigmas, noises, flow=flow, eta=eta).noise_steps() == [bool(d) for d in drawn]


# -- bad input ----------------------------------------------------------------------------------------

def test_bad_input_says_what_to_do():
    sigmas = schedule(3, 0.0, False)
    x = torch.zeros(1, *SHAPE, dtype=torch.float64)
    with pytest.raises(ValueError, match="unknown sampler 'heun'.*euler, euler_ancestral"):
        ChainSpec("heun", sigmas)
    with pytest.raises(ValueError, match="unknown gradient mode 'full'"):
        GradientPolicy("full")
    with pytest.raises(ValueError, match="k must be a whole number"):
        GradientPolicy("drtune", -1)
    with pytest.raises(ValueError, match="1-D tensor of at least 2 sigmas"):
        ChainSpec("euler", sigmas[None])
    with pytest.raises(ValueError, match="every sigma but the last must be > 0"):
        ChainSpec("euler", torch.tensor([1.0, 0.0, 0.0]))
    with pytest.raises(ValueError, match="adds fresh noise at steps \\[0, 1\\].*draw_step_noises"):
        ChainSpec("euler_ancestral", sigmas)
    with pytest.raises(ValueError, match="2 entries for 3 steps"):
        ChainSpec("lcm", sigmas, [None, None])
    spec = ChainSpec("lcm", sigmas, [torch.zeros(2, *SHAPE, dtype=torch.float64)] * 2 + [None])
    with pytest.raises(ValueError, match="step_noises\\[0\\] has shape \\(2, 2, 2, 2\\) but the latent is"):
        run_chain(ToyDenoiser(), x, spec)
    with pytest.raises(ValueError, match="step_noises\\[1\\] is None"):
        run_chain(ToyDenoiser(), x, ChainSpec("lcm", sigmas, [torch.zeros_like(x), None, None]))
    assert GradientPolicy("last k", 2).mode == "last_k"
    source = open(chain_mod.__file__, encoding="utf-8").read()
    assert "import comfy" not in source and "from comfy" not in source  # optimizer/ stays plain torch
