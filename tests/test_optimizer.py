"""The ReNO loop against the paper's definitions and the official code's behaviour."""

import math
import warnings

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reno_pack.optimizer import ReNOConfig, chi_norm_nll, optimize_noise
from tolerances import EPS32, EPS64, assert_rounding_close, eps

# -- a small differentiable "generator" and "reward" ---------------------------------------------

W = torch.tensor([[0.5, -0.3, 0.2, 0.1], [0.1, 0.4, -0.2, 0.3], [-0.2, 0.1, 0.3, 0.5]])


def generate(z):
    image = torch.sigmoid(torch.einsum("ck,bkhw->bchw", W.to(z.dtype), z))
    return image, z * 2.0


def objective(image):
    score = -(image - 0.8).pow(2).mean(dim=(1, 2, 3))
    return 1.0 - score, {"toy": score}


def noise(batch=1, seed=0, shape=(4, 6, 6)):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, *shape, generator=g)


# -- regularizer ----------------------------------------------------------------------------------

@settings(max_examples=40, deadline=None)
@given(
    batch=st.integers(1, 3),
    shape=st.lists(st.integers(1, 5), min_size=1, max_size=3),
    scale=st.floats(0.1, 10.0),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16, torch.float64]),
)
def test_chi_regularizer_value_and_gradient_match_float64_reference(batch, shape, scale, dtype):
    z64 = (torch.randn(batch, *shape, dtype=torch.float64) * scale).requires_grad_(True)
    d = math.prod(shape)
    norm = z64.reshape(batch, -1).norm(dim=1)
    ref = 0.5 * norm**2 - (d - 1) * torch.log(norm)
    (ref_grad,) = torch.autograd.grad(ref.sum(), z64)

    z = z64.detach().to(dtype).requires_grad_(True)
    val = chi_norm_nll(z)
    assert val.dtype == torch.float32 and val.shape == (batch,)
    (grad,) = torch.autograd.grad(val.sum(), z)
    # compare against the reference evaluated at the same (rounded) input
    z_rounded = z.detach().double().requires_grad_(True)
    n = z_rounded.reshape(batch, -1).norm(dim=1)
    ref_r = 0.5 * n**2 - (d - 1) * torch.log(n)
    (ref_r_grad,) = torch.autograd.grad(ref_r.sum(), z_rounded)
    sq = n.detach() ** 2
    # the value is computed in float32: ||z||^2 (a sum of d squares, <= d + 1 roundings) and its log, so its error
    # is at most (d + 2) roundings of 0.5 ||z||^2 + 0.5 (d - 1) (1 + |log ||z||^2|)
    value_scale = float((0.5 * sq + 0.5 * (d - 1) * (1 + sq.log().abs())).max())
    torch.testing.assert_close(val.double(), ref_r, rtol=0, atol=(d + 2) * EPS32 * value_scale)
    # the gradient z - (d - 1) z / ||z||^2 in float32 (<= d + 4 roundings of |z| (1 + (d - 1) / ||z||^2)), then
    # rounded to the input's dtype (half a rounding of that dtype)
    grad_scale = float(z_rounded.detach().abs().max() * (1 + (d - 1) / sq.min()))
    grad_tol = ((d + 4) * EPS32 + eps(dtype) / 2) * grad_scale
    torch.testing.assert_close(grad.double(), ref_r_grad, rtol=0, atol=grad_tol)
    # against the gradient at the unrounded input: add what rounding the input moved it by, at most the gradient's
    # Lipschitz bound 1 + (d - 1) / ||z||^2 (the spectral norm of its Jacobian, at the smaller of the two norms)
    # times ||z_rounded - z||_2, plus float64's own rounding of the reference
    moved = float((z_rounded.detach() - z64.detach()).norm())
    lipschitz = float(1 + (d - 1) / torch.minimum(sq, norm.detach() ** 2).min())
    torch.testing.assert_close(grad.double(), ref_grad, rtol=0,
                               atol=grad_tol + lipschitz * moved + (d + 4) * EPS64 * grad_scale)


def test_chi_regularizer_minimum_is_at_sqrt_d_minus_1():
    d = 64
    direction = torch.randn(1, d)
    direction /= direction.norm()
    radii = torch.linspace(4.0, 12.0, 801)
    values = torch.stack([chi_norm_nll(direction * r)[0] for r in radii])
    # f(r) - f_min = (r - r*)^2 (1 + O(r - r*)) near r* = sqrt(63): one grid step (0.01) changes f by 1e-4, far more
    # than float32's rounding of |f| ~ 99 (1.2e-5), so the grid's argmin is the nearest grid point or its neighbour
    step = float(radii[1] - radii[0])
    assert abs(radii[values.argmin()].item() - math.sqrt(d - 1)) <= 1.5 * step


def test_regularizer_does_not_overflow_in_half_precision():
    z = torch.randn(1, 4, 128, 128).half() * 3
    assert torch.isfinite(chi_norm_nll(z)).all()


# -- the update rule ------------------------------------------------------------------------------

def reference_run(z0, config, steps):
    """The official code's loop for one element: torch.optim.SGD + clip_grad_norm_."""
    z = z0.clone().requires_grad_(True)
    opt = torch.optim.SGD([z], lr=config.learning_rate, momentum=config.momentum, nesterov=config.nesterov)
    trajectory = [z.detach().clone()]
    for _ in range(steps):
        image, _ = generate(z)
        loss, _ = objective(image)
        total = loss.sum() + config.regularization * chi_norm_nll(z).sum()
        opt.zero_grad()
        total.backward()
        torch.nn.utils.clip_grad_norm_([z], config.grad_clip)
        opt.step()
        trajectory.append(z.detach().clone())
    return trajectory


@pytest.mark.parametrize("nesterov", [True, False])
@pytest.mark.parametrize("grad_clip", [0.1, 1e6])
def test_updates_match_torch_sgd_with_clipping(nesterov, grad_clip):
    config = ReNOConfig(iterations=6, learning_rate=5.0, nesterov=nesterov, grad_clip=grad_clip)
    z0 = noise()
    seen = []
    optimize_noise(lambda z: (seen.append(z.detach().clone()), generate(z))[1], objective, z0, config)
    expected = reference_run(z0, config, steps=config.iterations - 1)
    assert len(seen) == config.iterations
    for got, want in zip(seen, expected):
        # float32, 5 steps of clip + SGD computed in two orders (a few roundings each); measured <= 0.6 at |z| ~ 3.4
        assert_rounding_close(got, want, 16)


def test_clipping_bounds_each_elements_step():
    config = ReNOConfig(iterations=2, learning_rate=1.0, momentum=0.0, grad_clip=0.1, regularization=0.0)
    z0 = noise(batch=3, seed=1) * torch.tensor([1.0, 10.0, 0.1]).view(3, 1, 1, 1)

    def big_gradient_objective(image):
        score = 50.0 * image.mean(dim=(1, 2, 3))
        return -score, {"big": score}

    seen = []
    res = optimize_noise(lambda z: (seen.append(z.detach().clone()), generate(z))[1], big_gradient_objective, z0, config)
    step = (seen[1] - seen[0]).reshape(3, -1).norm(dim=1)
    # clip coefficient 0.1 / (|g| + 1e-6) <= 0.1 / |g| (a few float32 roundings of 0.1), plus the rounding of
    # z1 = z0 - step stored in float32 (eps * |z| per entry, sqrt(entries) of them in the norm)
    entries = seen[0][0].numel()
    bound = 0.1 * (1 + 4 * EPS32) + math.sqrt(entries) * EPS32 * seen[0].abs().reshape(3, -1).amax(dim=1)
    assert torch.all(step <= bound), (step, bound)
    assert all(g > 0.1 for g in res.records[0].grad_norm)  # they were clipped, not already small


def test_gradient_norm_record_is_pre_clipping_and_latent_norm_is_of_the_evaluated_noise():
    config = ReNOConfig(iterations=3)
    z0 = noise(batch=2)
    res = optimize_noise(generate, objective, z0, config)
    # the record's norm is this norm of the same float32 tensor: bit-identical
    assert res.records[0].latent_norm == z0.reshape(2, -1).norm(dim=1).tolist()
    z = z0.clone().requires_grad_(True)
    image, _ = generate(z)
    loss, _ = objective(image)
    (g,) = torch.autograd.grad((loss + 0.01 * chi_norm_nll(z)).sum(), z)
    # the loop's autograd.grad sums the same two terms (under a where that keeps both): <= a few float32
    # roundings of the norm (a sum of 144 squares: at most ~150 roundings relative, measured 0)
    assert res.records[0].grad_norm == pytest.approx(g.reshape(2, -1).norm(dim=1).tolist(), rel=160 * EPS32, abs=0)
    assert res.records[-1].grad_norm is None  # no backward after the last evaluation


# -- best-of selection ------------------------------------------------------------------------------

def test_best_iteration_can_be_iteration_zero():
    # an objective whose gradient points uphill: every update makes the reported loss worse,
    # so the initial image must stay the best
    def uphill(image):
        loss, scores = objective(image)
        return loss.detach() - (loss - loss.detach()), scores

    config = ReNOConfig(iterations=5, regularization=0.0)
    z0 = noise()
    res = optimize_noise(generate, uphill, z0, config)
    losses = [r.loss[0] for r in res.records]
    assert res.best_iteration == [0] and losses[0] == min(losses) and losses[-1] > losses[0]
    image0, extra0 = generate(z0)
    # the kept iteration-0 outputs are generate(z0) itself, computed the same way: bit-identical
    torch.testing.assert_close(res.best_image, image0, rtol=0, atol=0)
    torch.testing.assert_close(res.best_extra, extra0, rtol=0, atol=0)
    torch.testing.assert_close(res.best_noise, z0, rtol=0, atol=0)


def test_best_is_the_lowest_reward_loss_and_excludes_the_regularizer():
    config = ReNOConfig(iterations=12, regularization=5.0)
    res = optimize_noise(generate, objective, noise(), config)
    losses = [r.loss[0] for r in res.records]
    assert res.best_iteration[0] == losses.index(min(losses))
    assert res.best_loss[0] == min(losses)  # the same float32 value, kept
    best_image, _ = generate(res.best_noise)
    torch.testing.assert_close(res.best_image, best_image, rtol=0, atol=0)  # the same z through the same code


def test_reward_improves_on_the_toy_problem():
    res = optimize_noise(generate, objective, noise(), ReNOConfig(iterations=20))
    assert res.records[-1].scores["toy"][0] > res.records[0].scores["toy"][0]
    assert res.best_loss[0] < res.records[0].loss[0]


def test_one_iteration_is_the_plain_image():
    z0 = noise()
    res = optimize_noise(generate, objective, z0, ReNOConfig(iterations=1))
    assert res.iterations_run == 1 and res.best_iteration == [0]
    torch.testing.assert_close(res.best_noise, z0, rtol=0, atol=0)  # never updated: z0 itself


# -- batches ----------------------------------------------------------------------------------------

def test_batch_elements_are_independent_optimizations():
    config = ReNOConfig(iterations=8)
    a, b = noise(seed=3), noise(seed=4) * 3.0
    both = optimize_noise(generate, objective, torch.cat([a, b]), config)
    for k, single in enumerate((a, b)):
        alone = optimize_noise(generate, objective, single, config)
        assert both.best_iteration[k] == alone.best_iteration[0]
        # float32; a batch of 2 may take another kernel than one element: 7 steps of a few roundings (measured 0)
        assert_rounding_close(both.best_noise[k : k + 1], alone.best_noise, 16)
        # the losses: a mean of 144 squares each, a few roundings of their ~1 magnitude per step (measured 0)
        assert [r.loss[k] for r in both.records] == pytest.approx([r.loss[0] for r in alone.records],
                                                                  rel=16 * EPS32, abs=0)


def test_deterministic_on_cpu():
    config = ReNOConfig(iterations=5)
    r1 = optimize_noise(generate, objective, noise(batch=2, seed=7), config)
    r2 = optimize_noise(generate, objective, noise(batch=2, seed=7), config)
    assert torch.equal(r1.best_noise, r2.best_noise)
    assert [r.loss for r in r1.records] == [r.loss for r in r2.records]


@pytest.mark.parametrize("dtype", [torch.float64, torch.bfloat16])
def test_any_compute_dtype_keeps_float32_noise(dtype):
    res = optimize_noise(lambda z: generate(z.to(dtype)), objective, noise().to(dtype), ReNOConfig(iterations=3))
    assert res.best_noise.dtype == torch.float32
    assert all(math.isfinite(v) for v in res.best_loss)


# -- non-finite values --------------------------------------------------------------------------------

def nan_at(iteration, element, where="loss"):
    calls = {"n": 0}

    def gen(z):
        image, extra = generate(z)
        if calls["n"] == iteration and where == "image":
            image = image.clone()
            image[element] = float("nan")
        calls["n"] += 1
        return image, extra

    def obj(image):
        loss, scores = objective(image)
        if calls["n"] - 1 == iteration and where == "loss":
            loss = loss.clone()
            loss[element] = float("inf")
        return loss, scores

    return gen, obj


@pytest.mark.parametrize("where", ["loss", "image"])
def test_non_finite_element_stops_and_keeps_its_best_finite_iteration(where):
    gen, obj = nan_at(iteration=3, element=1, where=where)
    with pytest.warns(RuntimeWarning, match="NaN/Inf at iteration 3"):
        res = optimize_noise(gen, obj, noise(batch=2, seed=5), ReNOConfig(iterations=8))
    assert res.iterations_run == 8  # element 0 carries on
    assert res.best_iteration[1] < 3 and math.isfinite(res.best_loss[1])
    assert torch.isfinite(res.best_image).all()
    assert res.records[3].active == [True, False]
    # the stopped element's noise no longer moves
    assert res.records[4].latent_norm[1] == res.records[7].latent_norm[1]  # the same values, the same norm
    assert res.stop_reason is None


def test_non_finite_gradient_stops_the_element():
    def gen(z):
        image, extra = generate(z)
        return image, extra

    def obj(image):
        loss, scores = objective(image)
        # the value is finite but its gradient is not: sqrt at 0
        loss = loss + torch.sqrt((image[:, :1, :1, :1] * 0).reshape(-1))
        return loss, scores

    with pytest.warns(RuntimeWarning):
        res = optimize_noise(gen, obj, noise(batch=2), ReNOConfig(iterations=4))
    assert res.stop_reason is not None and res.iterations_run == 1
    assert res.best_iteration == [0, 0] and all(res.finite)


def test_everything_non_finite_from_the_start_is_reported():
    def obj(image):
        loss, scores = objective(image)
        return loss * float("nan"), scores

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = optimize_noise(generate, obj, noise(batch=2), ReNOConfig(iterations=5))
    assert res.finite == [False, False] and res.iterations_run == 1 and res.stop_reason


# -- callback, cancel, config -------------------------------------------------------------------------

def test_callback_once_per_iteration_and_cancel_propagates():
    calls = []

    class Cancelled(Exception):
        pass

    def callback(record, image):
        calls.append((record.iteration, tuple(image.shape)))
        if record.iteration == 2:
            raise Cancelled

    with pytest.raises(Cancelled):
        optimize_noise(generate, objective, noise(batch=2), ReNOConfig(iterations=10), callback)
    assert [c[0] for c in calls] == [0, 1, 2]
    assert calls[0][1] == (2, 3, 6, 6)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"iterations": 0}, "iterations"),
        ({"learning_rate": -1.0}, "learning_rate"),
        ({"learning_rate": float("nan")}, "learning_rate"),
        ({"momentum": 1.0}, "momentum"),
        ({"grad_clip": float("inf")}, "grad_clip"),
        ({"regularizer": "l2"}, "regularizer"),
    ],
)
def test_config_rejects_bad_values_with_a_clear_message(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ReNOConfig(**kwargs)


def test_paper_defaults():
    c = ReNOConfig()
    assert (c.iterations, c.learning_rate, c.momentum, c.nesterov, c.grad_clip, c.regularization, c.regularizer) == (
        50, 5.0, 0.9, True, 0.1, 0.01, "chi"
    )
