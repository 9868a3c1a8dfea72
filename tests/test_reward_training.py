"""Reward fine-tuning rollouts (AlignProp, DRTune, ReFL) on a toy chain: which steps and parameters get gradient."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reno_pack.optimizer.chain import ChainSpec, run_chain
from reno_pack.training.reward_finetuning import (
    METHODS,
    RewardTerm,
    Rollout,
    RolloutOutcome,
    TrainConfig,
    draw_rollout,
    reward_loss,
    run_rollout,
    train,
)
from tolerances import assert_rounding_close

# float64 toy: the gradient-identity tests compare two computation orders of the same gradient, and latents of
# 15-45 make float32's rounding (eps32 * 45 = 5e-6) as large as a real difference would be
SIGMAS = torch.tensor([14.6, 6.0, 2.5, 0.9, 0.0], dtype=torch.float64)
STEPS = 4


class ToyNet(torch.nn.Module):
    """eps = tanh(W_i x / sqrt(1 + sigma^2) + b_i), with separate parameters per step (found from sigma)."""

    def __init__(self, dim=3, steps=STEPS, seed=0):
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.w = torch.nn.Parameter(torch.randn(steps, dim, dim, generator=g, dtype=torch.float64) * 0.5)
        self.b = torch.nn.Parameter(torch.randn(steps, dim, generator=g, dtype=torch.float64) * 0.1)

    def step_of(self, sigma):
        return int(torch.argmin((SIGMAS[:-1] - float(sigma[0])).abs()))

    def eps(self, x, sigma):
        i = self.step_of(sigma)
        return torch.tanh(x / math.sqrt(1 + float(sigma[0]) ** 2) @ self.w[i].T + self.b[i])

    def denoise(self, x, sigma):  # ComfyUI's x0 = x - sigma * eps
        return x - sigma[:, None] * self.eps(x, sigma)


def start(seed=1):
    return torch.randn(2, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) * SIGMAS[0]


def score(x):
    return -(x - 0.5).pow(2).sum(dim=1)


def grads_after(net, latent):
    net.zero_grad()
    (-score(latent)).sum().backward()
    gw = net.w.grad if net.w.grad is not None else torch.zeros_like(net.w)
    return [bool(gw[i].abs().sum() > 0) for i in range(STEPS)], gw.clone()


def rollout_of(method, stop, attached, target):
    return Rollout(method, STEPS, stop, frozenset(attached), method != "alignprop", target)


def reference(net, x, rollout, skip=True):
    """DRTune/AlignProp/ReFL written out by hand for euler in sigma space: x_{i+1} = x_i + eps_i (s_{i+1} - s_i)."""
    for i in range(rollout.stop):
        s, s_next = SIGMAS[i], SIGMAS[i + 1]
        sig = s.expand(x.shape[0])
        inp = x.detach() if rollout.detach_input else x
        if i in rollout.attached:
            eps = net.eps(inp, sig)
        else:
            with torch.no_grad():
                eps = net.eps(inp, sig)
        x0 = x - s * eps  # the skip term on the (attached) latent, the network's output as computed
        if i == rollout.stop - 1 and rollout.target == "x0":
            return x0
        x = x + eps * (s_next - s)
    return x


SPEC = ChainSpec("euler", SIGMAS)
ONE = lambda sigma: torch.ones_like(sigma)  # noqa: E731 - the skip coefficient of an eps model


@pytest.mark.parametrize("rollout", [
    rollout_of("alignprop", 4, {3}, "final"),
    rollout_of("alignprop", 4, {1, 2, 3}, "final"),
    rollout_of("drtune", 4, {0, 2}, "x0"),
    rollout_of("drtune", 3, {1}, "x0"),
    rollout_of("refl", 4, {3}, "x0"),
    rollout_of("refl", 3, {2}, "x0"),
])
def test_only_the_attached_steps_train_and_gradients_equal_the_hand_written_method(rollout):
    net = ToyNet()
    x = start()
    latent = run_rollout(net.denoise, x, SPEC, rollout, recompute=True, skip=ONE)
    got_steps, got = grads_after(net, latent)
    assert got_steps == [i in rollout.attached for i in range(STEPS)]
    want_steps, want = grads_after(net, reference(net, x, rollout))
    assert want_steps == got_steps
    # float64, two orders of the same ~40 roundings (4 steps of matmul, tanh, update); measured <= 5 at |grad| <= 264
    assert_rounding_close(got, want, 64)


def test_drtune_holds_the_network_output_fixed_not_the_x0_prediction():
    """With the skip coefficient the detached steps pass gradient as eps = net(x.detach()) does (DRTune); without
    it the whole x0 prediction of a detached step would be held fixed."""
    rollout = rollout_of("drtune", 4, {1}, "x0")
    net = ToyNet()
    x = start()
    _, with_skip = grads_after(net, run_rollout(net.denoise, x, SPEC, rollout, skip=ONE))
    _, want = grads_after(net, reference(net, x, rollout))
    assert_rounding_close(with_skip, want, 64)  # float64, the same gradient in two orders (see above)
    # without it, the x0 scored at the stop (an untrained step, its input detached) would carry no gradient at all
    assert not run_rollout(net.denoise, x, SPEC, rollout, skip=None).requires_grad


def test_alignprop_latents_stay_attached_through_the_truncated_steps():
    """AlignProp detaches the outputs before the truncation, not the latents: the start noise still gets gradient."""
    net = ToyNet()
    x = start().requires_grad_(True)
    latent = run_rollout(net.denoise, x, SPEC, rollout_of("alignprop", 4, {3}, "final"))
    (-score(latent)).sum().backward()
    assert x.grad is not None and float(x.grad.abs().sum()) > 0


def test_rollout_forward_equals_the_plain_chain():
    net = ToyNet()
    x = start()
    with torch.no_grad():
        full, x0 = run_chain(net.denoise, x, SPEC)
    # the same arithmetic in the same order (detaching changes no value): bit-identical
    torch.testing.assert_close(run_rollout(net.denoise, x, SPEC, rollout_of("alignprop", 4, {3}, "final")), full,
                               rtol=0, atol=0)
    torch.testing.assert_close(run_rollout(net.denoise, x, SPEC, rollout_of("drtune", 4, {0}, "x0"), skip=ONE), x0,
                               rtol=0, atol=0)


@settings(max_examples=200, deadline=None)
@given(method=st.sampled_from(METHODS), steps=st.integers(1, 60), k=st.integers(1, 60), seed=st.integers(0, 2**31))
def test_drawn_rollouts_follow_each_method(method, steps, k, seed):
    r = draw_rollout(method, steps, k, torch.Generator().manual_seed(seed))
    assert 1 <= r.stop <= steps and r.attached and all(0 <= i < r.stop for i in r.attached)
    if method == "alignprop":
        assert r.stop == steps and r.target == "final" and not r.detach_input
        assert sorted(r.attached) == list(range(steps - len(r.attached), steps)) and len(r.attached) <= k
    elif method == "drtune":
        assert r.detach_input and r.target == "x0"
        assert r.stop >= steps - math.ceil(0.4 * steps) + 1
        a = sorted(r.attached)
        assert len(a) == min(k, r.stop)
        assert len({b - a_ for a_, b in zip(a, a[1:])}) <= 1  # equally spaced
    else:
        assert r.attached == frozenset({r.stop - 1}) and r.target == "x0"
        assert r.stop - 1 >= steps - max(1, math.ceil(steps / 4))


def test_refl_loss_has_no_gradient_from_a_reward_above_its_offset():
    scores = {"a": torch.tensor([1.0, 3.0], requires_grad=True)}
    terms = [RewardTerm("a", 2.0, 2.0)]
    loss = reward_loss("refl", scores, terms)
    # small integers times weight 2: every value is exact in float32
    torch.testing.assert_close(loss.detach(), torch.tensor([2.0, 0.0]), rtol=0, atol=0)
    loss.sum().backward()
    torch.testing.assert_close(scores["a"].grad, torch.tensor([-2.0, 0.0]), rtol=0, atol=0)
    torch.testing.assert_close(reward_loss("alignprop", {"a": torch.tensor([1.0, 3.0])}, terms), torch.tensor([2.0, -2.0]),
                               rtol=0, atol=0)


def toy_training(config, evaluate=True):
    """A bias that a rollout pushes toward a target: the loop's plumbing on a problem with a known answer."""
    torch.manual_seed(0)
    bias = torch.nn.Parameter(torch.zeros(3))
    target = torch.tensor([1.0, -2.0, 0.5])

    def rollout(req):
        noise = torch.randn(3, generator=torch.Generator().manual_seed(req.noise_seed)) * 0.01
        r = -(bias + noise - target).pow(2).sum()
        (-r * req.loss_scale).backward()
        return RolloutOutcome(float(-r), {"toy": float(r)})

    def held(step):
        return float(-(bias.detach() - target).pow(2).sum())

    result = train([bias], rollout, config, prompt_count=3, evaluate=held if evaluate else None)
    return bias.detach().clone(), result


def test_training_loop_raises_the_held_out_reward_and_is_deterministic():
    config = TrainConfig("alignprop", steps=30, learning_rate=0.1, eval_every=10, grad_clip=0.0, seed=3)
    b1, r1 = toy_training(config)
    b2, r2 = toy_training(config)
    assert r1.held_out_after > r1.held_out_before
    assert [s for s, _ in r1.evaluations] == [0, 10, 20, 30]
    torch.testing.assert_close(b1, b2, rtol=0, atol=0)
    assert [rec.loss for rec in r1.records] == [rec.loss for rec in r2.records]


def test_early_stopping_keeps_the_best_evaluated_parameters():
    # a learning rate far too large: the held-out reward gets worse after the first evaluations
    config = TrainConfig("drtune", steps=40, learning_rate=5.0, eval_every=2, patience=2, grad_clip=0.0, seed=0)
    bias, result = toy_training(config)
    assert result.stop_reason and "early stop" in result.stop_reason
    assert len(result.records) < 40
    best_step, best_value = max(result.evaluations, key=lambda e: e[1])
    assert result.best_step == best_step
    # the kept parameters are the evaluated ones, scored by the same expression: exactly the recorded value
    assert float(-(bias - torch.tensor([1.0, -2.0, 0.5])).pow(2).sum()) == best_value


def test_grad_accumulation_and_batch_scale_the_loss():
    seen = []
    p = torch.nn.Parameter(torch.zeros(1))

    def rollout(req):
        seen.append((req.step, req.prompt_index, req.loss_scale))
        (p.sum() * req.loss_scale).backward()
        return RolloutOutcome(0.0, {})

    train([p], rollout, TrainConfig("refl", steps=3, batch_size=2, grad_accumulation=3, learning_rate=0.1),
          prompt_count=4)
    assert len(seen) == 18 and all(s == 1 / (2 * 3) for _, _, s in seen)  # 1 / (batch * accumulation), one division
    # epochs of permutations: every prompt is used before any is used again
    order = [i for _, i, _ in seen]
    assert sorted(order[:4]) == [0, 1, 2, 3] and sorted(order[4:8]) == [0, 1, 2, 3]


@pytest.mark.parametrize("bad", [dict(method="ppo"), dict(steps=0), dict(learning_rate=float("nan")),
                                 dict(patience=-1), dict(k=0)])
def test_bad_training_settings_are_named(bad):
    with pytest.raises(ValueError) as e:
        TrainConfig(**{"method": "alignprop", **bad})
    assert any(word in str(e.value) for word in ("method", *bad))


def test_reno_drtune_policy_with_the_skip_coefficient_is_the_papers_noise_gradient():
    """GradientPolicy("drtune", k, skip=...) (what ReNO Sampler runs): eps = net(x.detach()) before the last k steps
    and the full step after, so the start noise's gradient flows through the sampler's linear updates with the
    network's output held fixed."""
    from reno_pack.optimizer.chain import GradientPolicy

    net = ToyNet()
    x = start().requires_grad_(True)
    out, _ = run_chain(net.denoise, x, SPEC, GradientPolicy("drtune", 1, skip=ONE))
    (-score(out)).sum().backward()
    got = x.grad.clone()

    ref = start().requires_grad_(True)
    z = ref
    for i in range(STEPS):
        s, s_next = SIGMAS[i], SIGMAS[i + 1]
        eps = net.eps(z if i == STEPS - 1 else z.detach(), s.expand(z.shape[0]))
        z = z + eps * (s_next - s)
    (-score(z)).sum().backward()
    assert_rounding_close(got, ref.grad, 64)  # float64, the same gradient in two orders (measured ~1 rounding)
