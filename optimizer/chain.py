"""The differentiable sampling chain: a multi-step sampler whose output can be backpropagated to its start.

``run_chain(denoise, x, spec, policy)`` runs the update rules of ComfyUI's k-diffusion samplers
(``comfy/k_diffusion/sampling.py``) as plain, differentiable PyTorch: no ``torch.no_grad``, no in-place
update of a tensor that carries gradient. ``denoise(x, sigma) -> x0`` is any denoiser (a ComfyUI model
wrapper, a diffusers pipeline's, a toy MLP); ``sigma`` is passed as a ``(B,)`` tensor, as ComfyUI's samplers
pass ``sigma * s_in``. ``x`` is the start latent already noise-scaled (ComfyUI's
``model_sampling.noise_scaling(sigmas[0], noise, latent, max_denoise)``); the result is the chain's latent
before ``inverse_noise_scaling``. With the same sigmas (and, for the stochastic samplers, the per-step noises
ComfyUI draws for the seed: ``draw_step_noises``) the forward pass is ComfyUI's own sampler, operation by
operation.

Samplers (``SAMPLERS``), each as its ComfyUI namesake with default options:

* ``euler``: ``sample_euler`` (``s_churn`` 0).
* ``euler_ancestral``: ``sample_euler_ancestral`` (``eta``, ``s_noise`` 1 by default); for flow models
  (``model_sampling`` of type CONST: SD3, FLUX, ``flow=True``) ComfyUI switches to
  ``sample_euler_ancestral_RF``, a different step (re-noising by ``alpha_{i+1}/alpha_down``), and so does this.
* ``lcm``: ``sample_lcm``: x0, then re-noised to the next sigma by the model's ``noise_scaling`` (EPS/V:
  ``x0 + sigma*n``; CONST: ``sigma*n + (1-sigma)*x0``; or the caller's ``noise_scaling``), not at the last step.
* ``dpmpp_2m``: ``sample_dpmpp_2m`` (first and last step first order, as ComfyUI's).
* ``ddpm``: ``sample_ddpm``: the ancestral DDPM step written with ``alphas_cumprod = 1/(1+sigma^2)`` on the
  VP-scaled latent ``x/sqrt(1+sigma^2)``. ComfyUI applies that formula to flow models as well (their sigmas
  read as VP sigmas, no CONST variant), so this does too: ``flow`` does not change ``ddpm``.

Gradient policies (``GradientPolicy``), defined by which paths carry gradient:

* ``exact``: every path; each step's denoiser call recomputes its activations in the backward pass
  (``optimizer.memory.recompute_in_backward``), so the activations kept across steps are one latent per
  step, not a model's activations per step.
* ``drtune`` (DRTune): the denoiser's *input* is detached at every step but the last ``k``; the gradient
  reaches the start through the sampler's linear updates, plus the Jacobians of the last ``k`` steps. The
  detached steps' outputs still depend on the denoiser's parameters (a LoRA still learns from every step).
* ``last_k`` (AlignProp's truncation): the denoiser's *output* is detached before the last ``k`` steps (those
  calls run without autograd: no gradient to the parameters either); the latents stay attached.

Without a ``skip`` coefficient (``GradientPolicy.skip``) a detached ``drtune`` step holds its whole x0 prediction
fixed, so for a start-noise gradient ``drtune`` and ``last_k`` agree; with the denoiser's skip coefficient (what the
ReNO nodes pass: ComfyUI's x0 is ``c_skip * x + c_out * network``) the skip term stays attached and the network's
output is what is held fixed, DRTune's ``eps = net(x.detach())``. They always differ for the parameters' gradients.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum

import torch

from .memory import recompute_in_backward

Tensor = torch.Tensor
Denoiser = Callable[[Tensor, Tensor], Tensor]
#: ``noise_scaling(sigma, noise, latent) -> x``: the model's forward noising (ComfyUI's
#: ``model_sampling.noise_scaling`` with ``max_denoise`` False), used by ``lcm`` to re-noise
NoiseScaling = Callable[[Tensor, Tensor, Tensor], Tensor]

SAMPLERS = ("euler", "euler_ancestral", "lcm", "dpmpp_2m", "ddpm")
#: samplers that add fresh noise at every step that does not end at sigma 0
STOCHASTIC_SAMPLERS = frozenset({"euler_ancestral", "lcm", "ddpm"})


class GradientMode(str, Enum):
    """The gradient modes (see the module docstring), one place for their names and spellings.

    The value is the library's name (``GradientPolicy.mode``); ``label`` is the ReNO Sampler node's combo option
    (a public contract: workflows store it); ``parse`` also accepts the other spellings (``SPELLINGS``).
    """

    EXACT = "exact"
    DRTUNE = "drtune"
    LAST_K = "last_k"

    @property
    def label(self) -> str:
        return _LABELS.get(self.value, self.value)

    @classmethod
    def parse(cls, name) -> GradientMode | None:
        """The mode ``name`` spells (any case, surrounding blanks ignored), or None."""
        if isinstance(name, cls):
            return name
        key = str(name).strip().lower()
        key = SPELLINGS.get(key, key)
        return cls(key) if key in GRADIENT_MODES else None


_LABELS = {"last_k": "last k"}
GRADIENT_MODES = tuple(m.value for m in GradientMode)  # ("exact", "drtune", "last_k")
#: the node's combo options, in this order: ("exact", "drtune", "last k")
GRADIENT_LABELS = tuple(m.label for m in GradientMode)
#: other spellings of a mode -> its value
SPELLINGS = {"last k": "last_k", "last-k": "last_k", "lastk": "last_k", "alignprop": "last_k"}


# -- what to run ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class GradientPolicy:
    """Which paths of the chain carry gradient (see the module docstring).

    ``mode``: ``"exact"``, ``"drtune"`` or ``"last_k"`` (also spelt ``"last k"``). ``k``: the number of final
    steps that keep the denoiser's Jacobian (``drtune``) or output (``last_k``); 0 keeps none, ``k`` at least
    the step count is ``exact``. ``recompute``: each denoiser call that builds a graph recomputes its
    activations in the backward pass (keep it on unless the caller checkpoints inside the denoiser itself).
    ``copy_saved``: for denoisers that update activations in place (see ``recompute_in_backward``). ``skip``: the
    denoiser's skip coefficient, for ``drtune``: with it a detached step holds the *network's* output fixed (DRTune's
    ``eps = net(x.detach())``; see ``StepGradients``), without it the step's whole x0 prediction.
    """

    mode: str = "exact"
    k: int = 1
    recompute: bool = True
    copy_saved: bool = False
    skip: Callable[[Tensor], Tensor] | None = None  # the denoiser's skip coefficient (see StepGradients)

    def __post_init__(self):
        mode = GradientMode.parse(self.mode)
        if mode is None:
            raise ValueError(f"GradientPolicy: unknown gradient mode {self.mode!r}; use one of "
                             f"{', '.join(repr(m) for m in GRADIENT_MODES)}")
        if isinstance(self.k, bool) or not isinstance(self.k, int) or self.k < 0:
            raise ValueError(f"GradientPolicy: k must be a whole number of steps >= 0, got {self.k!r}")
        object.__setattr__(self, "mode", mode.value)

    def input_attached(self, step: int, steps: int) -> bool:
        """Whether the denoiser's input at ``step`` (of ``steps``) carries gradient back to the latent."""
        return self.mode != "drtune" or step >= steps - self.k

    def output_attached(self, step: int, steps: int) -> bool:
        """Whether the denoiser's output at ``step`` carries gradient (to its input and parameters)."""
        return self.mode != "last_k" or step >= steps - self.k


@dataclass(frozen=True)
class StepGradients:
    """A per-step gradient choice, for training rollouts (``training.reward_finetuning``) that pick their steps.

    ``attached``: the steps whose denoiser call builds a graph (output attached: gradient to the parameters);
    every other step runs without autograd. ``detach_input``: every call's input is detached (DRTune), so the
    gradient reaches earlier latents only through the sampler's linear updates. ``skip(sigma)``: the denoiser's
    skip coefficient (x0 = skip(sigma) * x + c_out * network; ComfyUI's ``model_sampling.calculate_denoised(sigma,
    0, 1)``: 1 for ε and flow models, ``sigma_data² / (sigma² + sigma_data²)`` for v-prediction): with it a
    detached call keeps its skip term attached, so what is held fixed is the *network's* output (DRTune's
    ``eps = net(x_t.detach())``), not the whole x0 prediction. ``recompute``/``copy_saved`` as in
    ``GradientPolicy``.
    """

    attached: frozenset[int]
    detach_input: bool = False
    recompute: bool = True
    copy_saved: bool = False
    skip: Callable[[Tensor], Tensor] | None = None

    def input_attached(self, step: int, steps: int) -> bool:
        return not self.detach_input

    def output_attached(self, step: int, steps: int) -> bool:
        return step in self.attached


@dataclass(frozen=True)
class ChainSpec:
    """One sampling run: the sampler, its sigmas, its per-step noises and the model's kind.

    ``sigmas``: 1-D, positive except the last entry (0 for a full denoise, above 0 for a split schedule).
    ``step_noises``: for ``STOCHASTIC_SAMPLERS``, one entry per step (``len(sigmas) - 1``): the fresh noise that
    step adds, or None where it adds none; made once per run by ``draw_step_noises`` (ComfyUI's draws for a
    seed) and held fixed across optimization iterations. ``flow``: the model's ``model_sampling`` is CONST
    (rectified flow: SD3, FLUX, ...). ``noise_scaling``: overrides the re-noising ``lcm`` uses (default: from
    ``flow``). ``eta``/``s_noise``: ``euler_ancestral``'s options (ComfyUI's defaults 1.0).
    """

    sampler: str
    sigmas: Tensor
    step_noises: Sequence[Tensor | None] | None = None
    flow: bool = False
    noise_scaling: NoiseScaling | None = None
    eta: float = 1.0
    s_noise: float = 1.0

    def __post_init__(self):
        if self.sampler not in SAMPLERS:
            raise ValueError(f"ChainSpec: unknown sampler {self.sampler!r}; the differentiable chain has "
                             f"{', '.join(SAMPLERS)}")
        _check_sigmas(self.sigmas)
        # the sigmas on the host, once: every branch of a step is decided on them, so running the chain costs no
        # device-to-host synchronization per step (the arithmetic uses the device sigmas, as ComfyUI's samplers do)
        object.__setattr__(self, "host_sigmas", self.sigmas.detach().to("cpu"))
        if self.step_noises is not None:
            if len(self.step_noises) != self.steps:
                raise ValueError(f"ChainSpec.step_noises: {len(self.step_noises)} entries for {self.steps} steps; "
                                 "make them with optimizer.chain.draw_step_noises(x, sampler, sigmas, seed)")
        elif self.sampler in STOCHASTIC_SAMPLERS and any(self.noise_steps()):
            raise ValueError(f"ChainSpec: sampler {self.sampler!r} adds fresh noise at steps "
                             f"{[i for i, d in enumerate(self.noise_steps()) if d]}: pass step_noises, made once per "
                             "run with optimizer.chain.draw_step_noises(x, sampler, sigmas, seed, flow=...)")

    @property
    def steps(self) -> int:
        return int(self.sigmas.shape[0]) - 1

    def noise_steps(self) -> list[bool]:
        """For each step, whether it adds fresh noise (where ComfyUI's sampler calls its noise sampler)."""
        host = self.host_sigmas
        return [_draws_noise(self.sampler, host[i], host[i + 1], self.flow, self.eta) for i in range(self.steps)]


def _check_sigmas(sigmas) -> None:
    if not isinstance(sigmas, torch.Tensor) or sigmas.ndim != 1 or sigmas.shape[0] < 2:
        shape = tuple(sigmas.shape) if isinstance(sigmas, torch.Tensor) else type(sigmas).__name__
        raise ValueError(f"ChainSpec.sigmas: need a 1-D tensor of at least 2 sigmas (start ... end), got {shape}")
    if not bool(torch.isfinite(sigmas).all()):
        raise ValueError(f"ChainSpec.sigmas: not finite: {sigmas.tolist()}")
    if not bool((sigmas[:-1] > 0).all()) or float(sigmas[-1]) < 0:
        raise ValueError("ChainSpec.sigmas: every sigma but the last must be > 0 and the last >= 0, got "
                         f"{sigmas.tolist()}")


def _ancestral_step(sigma_from: Tensor, sigma_to: Tensor, eta: float = 1.0):
    """``get_ancestral_step`` of k-diffusion: the sigma to step down to and the noise to add back."""
    if not eta:
        return sigma_to, 0.0
    up = eta * (sigma_to ** 2 * (sigma_from ** 2 - sigma_to ** 2) / sigma_from ** 2) ** 0.5
    # k-diffusion's min(), without a host synchronization for device tensors (the same value)
    sigma_up = torch.minimum(sigma_to, up) if isinstance(up, torch.Tensor) else min(sigma_to, up)
    sigma_down = (sigma_to ** 2 - sigma_up ** 2) ** 0.5
    return sigma_down, sigma_up


def _draws_noise(sampler: str, sigma: Tensor, sigma_next: Tensor, flow: bool, eta: float) -> bool:
    if sampler == "euler_ancestral":
        if flow:
            return bool(sigma_next != 0) and eta > 0
        sigma_down, _ = _ancestral_step(sigma, sigma_next, eta)
        return bool(sigma_down != 0)
    if sampler in ("lcm", "ddpm"):
        return bool(sigma_next > 0)
    return False


def draw_step_noises(x: Tensor, sampler: str, sigmas: Tensor, seed: int | None, *, flow: bool = False,
                     eta: float = 1.0, noise_sampler: Callable[[Tensor, Tensor], Tensor] | None = None
                     ) -> list[Tensor | None]:
    """The fresh noise of each step, drawn exactly as ComfyUI's sampler draws it for ``seed``.

    ComfyUI's ``KSampler``/``SamplerCustom*`` put the seed in ``extra_args["seed"]``; the stochastic samplers
    then make ``default_noise_sampler(x, seed)``: one ``torch.Generator`` on ``x``'s device seeded with it, and
    one ``randn`` of ``x``'s size, dtype and layout per step that adds noise, in step order (``x`` is the
    noise-scaled start latent; the whole batch shares the generator). Without a seed the global RNG is used,
    as ComfyUI does. Returns one entry per step (None where the step adds none); deterministic samplers get
    all None.

    ``noise_sampler``: a ``(sigma, sigma_next) -> noise`` callable to draw with instead (``seed`` is then unused): the
    host's own ``default_noise_sampler(x, seed)``, which the ReNO nodes pass, so the draws stay KSampler's whatever the
    host version does (ComfyUI 0.33 seeds it with ``seed + 1`` on the CPU). Without it this function is the host-free
    reference draw (ComfyUI 0.3.75's).
    """
    if sampler not in SAMPLERS:
        raise ValueError(f"draw_step_noises: unknown sampler {sampler!r}; the differentiable chain has "
                         f"{', '.join(SAMPLERS)}")
    _check_sigmas(sigmas)
    if noise_sampler is None:
        generator = None
        if seed is not None:
            generator = torch.Generator(device=x.device)
            generator.manual_seed(int(seed))

        def noise_sampler(sigma, sigma_next):
            return torch.randn(x.size(), dtype=x.dtype, layout=x.layout, device=x.device, generator=generator)
    out: list[Tensor | None] = []
    for i in range(int(sigmas.shape[0]) - 1):
        if sampler in STOCHASTIC_SAMPLERS and _draws_noise(sampler, sigmas[i], sigmas[i + 1], flow, eta):
            out.append(noise_sampler(sigmas[i], sigmas[i + 1]))
        else:
            out.append(None)
    return out


# -- running it ----------------------------------------------------------------------------------------

def _append_dims(t: Tensor, ndim: int) -> Tensor:
    return t[(...,) + (None,) * (ndim - t.ndim)]


def _to_d(x: Tensor, sigma: Tensor, denoised: Tensor) -> Tensor:
    return (x - denoised) / _append_dims(sigma, x.ndim)


def _default_noise_scaling(flow: bool) -> NoiseScaling:
    if flow:  # comfy.model_sampling.CONST.noise_scaling
        return lambda sigma, noise, latent: sigma * noise + (1.0 - sigma) * latent
    return lambda sigma, noise, latent: noise * sigma + latent  # EPS / V_PREDICTION, max_denoise False


def call_denoiser(denoise: Denoiser, x: Tensor, sigma: Tensor, policy: GradientPolicy | StepGradients, step: int,
                   steps: int) -> Tensor:
    """One denoiser call under ``policy``, as call ``step`` of ``steps``: the input detached where the policy says
    (drtune, keeping the skip term attached), no graph where the output is detached (last k), otherwise recomputed in
    the backward pass. The chain calls it once per step; the ReNO nodes once per model call of the host's sampler."""
    inp = x if policy.input_attached(step, steps) else x.detach()
    if not policy.output_attached(step, steps):
        with torch.no_grad():  # the output is detached: nothing of this call is needed for backward
            out = denoise(inp, sigma)
    elif policy.recompute and torch.is_grad_enabled():
        out = recompute_in_backward(denoise, inp, sigma, copy_saved=policy.copy_saved)
    else:
        out = denoise(inp, sigma)
    skip = getattr(policy, "skip", None)
    if skip is not None and inp is not x and x.requires_grad:  # the network's output fixed, its skip term attached
        out = out + _append_dims(skip(sigma).to(x.dtype), x.ndim) * (x - inp)
    return out


def run_chain(denoise: Denoiser, x: Tensor, spec: ChainSpec, policy: GradientPolicy | StepGradients | None = None,
              callback: Callable[[int, Tensor, Tensor], None] | None = None, stop: int | None = None
              ) -> tuple[Tensor, Tensor]:
    """Run ``spec``'s sampler from the noise-scaled latent ``x``; returns ``(x_final, x0_last)``.

    ``x_final`` is the sampler's result (before ``inverse_noise_scaling``); ``x0_last`` the denoiser's
    prediction at the last step (what a reward can score when the chain stops above sigma 0).
    ``callback(step, x, denoised)``, if given, sees each step's input latent and prediction, as ComfyUI's
    sampler callbacks do. Gradients follow ``policy`` (default ``GradientPolicy()``: exact, recomputed).
    ``stop`` (1 .. steps) runs only the first ``stop`` steps (an early-stopped rollout: ``x0_last`` is the
    prediction of step ``stop - 1``); the steps' arithmetic is that of the full schedule.
    """
    policy = GradientPolicy() if policy is None else policy
    if not isinstance(x, torch.Tensor) or x.ndim < 1:
        raise ValueError("run_chain: x must be a batched latent tensor (B, ...), the noise-scaled start")
    sigmas = spec.sigmas.to(x.device)
    steps = spec.steps
    if stop is not None and (isinstance(stop, bool) or not isinstance(stop, int) or not 1 <= stop <= steps):
        raise ValueError(f"run_chain: stop must be a step count in 1..{steps}, got {stop!r}")
    noises = _checked_noises(spec, x)
    scaling = spec.noise_scaling or _default_noise_scaling(spec.flow)
    s_in = x.new_ones([x.shape[0]])
    host = spec.host_sigmas
    old_denoised = None
    denoised = x
    for i in range(steps if stop is None else stop):
        sigma, sigma_next = sigmas[i], sigmas[i + 1]
        last_zero = bool(host[i + 1] == 0)  # decided on the host copy: no synchronization
        denoised = call_denoiser(denoise, x, sigma * s_in, policy, i, steps)
        if callback is not None:
            callback(i, x, denoised)
        noise = noises[i]
        if spec.sampler == "euler":
            x = x + _to_d(x, sigma, denoised) * (sigma_next - sigma)
        elif spec.sampler == "euler_ancestral":
            x = _euler_ancestral_rf(x, denoised, sigma, sigma_next, noise, spec, last_zero) if spec.flow else \
                _euler_ancestral(x, denoised, sigma, sigma_next, noise, spec,
                                 bool(_ancestral_step(host[i], host[i + 1], spec.eta)[0] == 0))
        elif spec.sampler == "lcm":
            x = denoised
            if not last_zero:
                x = scaling(sigma_next, noise, x)
        elif spec.sampler == "dpmpp_2m":
            x = _dpmpp_2m(x, denoised, old_denoised, sigmas, i, last_zero)
            old_denoised = denoised
        else:  # ddpm
            x = _ddpm(x, denoised, sigma, sigma_next, noise, last_zero)
    return x, denoised


def _checked_noises(spec: ChainSpec, x: Tensor) -> list[Tensor | None]:
    needed = spec.noise_steps() if spec.sampler in STOCHASTIC_SAMPLERS else [False] * spec.steps
    given = list(spec.step_noises) if spec.step_noises is not None else [None] * spec.steps
    out = []
    for i, (need, noise) in enumerate(zip(needed, given)):
        if not need:
            out.append(None)
            continue
        if noise is None:
            raise ValueError(f"ChainSpec.step_noises[{i}] is None but step {i} of {spec.sampler!r} adds noise; make "
                             "the noises with optimizer.chain.draw_step_noises for these sigmas")
        if tuple(noise.shape) != tuple(x.shape):
            raise ValueError(f"ChainSpec.step_noises[{i}] has shape {tuple(noise.shape)} but the latent is "
                             f"{tuple(x.shape)}; draw the noises for this latent with draw_step_noises")
        out.append(noise.detach().to(device=x.device))
    return out


def _euler_ancestral(x, denoised, sigma, sigma_next, noise, spec: ChainSpec, down_zero: bool):
    if down_zero:
        return denoised
    sigma_down, sigma_up = _ancestral_step(sigma, sigma_next, spec.eta)
    x = x + _to_d(x, sigma, denoised) * (sigma_down - sigma)
    return x + noise * spec.s_noise * sigma_up


def _euler_ancestral_rf(x, denoised, sigma, sigma_next, noise, spec: ChainSpec, last_zero: bool):
    """``sample_euler_ancestral_RF``: the ancestral Euler step of rectified-flow (CONST) models."""
    if last_zero:
        return denoised
    eta = spec.eta
    downstep_ratio = 1 + (sigma_next / sigma - 1) * eta
    sigma_down = sigma_next * downstep_ratio
    alpha_ip1 = 1 - sigma_next
    alpha_down = 1 - sigma_down
    renoise_coeff = (sigma_next ** 2 - sigma_down ** 2 * alpha_ip1 ** 2 / alpha_down ** 2) ** 0.5
    ratio = sigma_down / sigma
    x = ratio * x + (1 - ratio) * denoised
    if eta > 0:
        x = (alpha_ip1 / alpha_down) * x + noise * spec.s_noise * renoise_coeff
    return x


def _dpmpp_2m(x, denoised, old_denoised, sigmas, i, last_zero: bool):
    """``sample_dpmpp_2m``: DPM-Solver++(2M), in log-sigma time ``t = -log(sigma)``."""
    t, t_next = sigmas[i].log().neg(), sigmas[i + 1].log().neg()
    h = t_next - t
    ratio = t_next.neg().exp() / t.neg().exp()
    if old_denoised is None or last_zero:
        return ratio * x - (-h).expm1() * denoised
    h_last = t - sigmas[i - 1].log().neg()
    r = h_last / h
    denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
    return ratio * x - (-h).expm1() * denoised_d


def _ddpm(x, denoised, sigma, sigma_next, noise, last_zero: bool):
    """``sample_ddpm`` (``generic_step_sampler`` + ``DDPMSampler_step``), out of place."""
    eps = (x - denoised) / sigma
    x_vp = x / torch.sqrt(1.0 + sigma ** 2.0)
    alpha_cumprod = 1 / ((sigma * sigma) + 1)
    alpha_cumprod_prev = 1 / ((sigma_next * sigma_next) + 1)
    alpha = alpha_cumprod / alpha_cumprod_prev
    mu = (1.0 / alpha).sqrt() * (x_vp - (1 - alpha) * eps / (1 - alpha_cumprod).sqrt())
    if not last_zero:  # sigmas are never negative: > 0 and != 0 are the same test
        mu = mu + ((1 - alpha) * (1. - alpha_cumprod_prev) / (1. - alpha_cumprod)).sqrt() * noise
        mu = mu * torch.sqrt(1.0 + sigma_next ** 2.0)
    return mu
