"""One ReNO run inside a ComfyUI sampling call: prepare, install, optimize, restore, return.

``ReNORun.execute`` is the whole lifecycle, in this order:

1. **prepare**, outside any tensor swap: ComfyUI loads the model, the VAE and the rewards; the inputs are
   checked and copied as normal tensors; text features are computed once; a large latent is first sized from
   three small probes and refused when it cannot fit even with everything recomputed; the memory plan is
   measured (inside its own short swap) and chosen, and only then, with every swap undone, ComfyUI is asked to
   unload other models or to load this one partially (a module moved inside a swap would be moved back
   at its exit, and ComfyUI's records would no longer match where the weights are).
2. **install** (``ReNORun.installed``): the one place that changes objects the run does not own, each
   change restored in reverse order on exit, whatever happens (error, cancel, OOM):

   a. every inference-mode parameter and buffer of the diffusion model, the models ComfyUI loaded with it
      (ControlNets, GLIGEN, model patches), the VAE and the rewards is swapped for a zero-copy normal
      tensor (autograd cannot save inference tensors for backward);
   b. the VAE decoder's 4-D weights are swapped for channels-last copies where the plan measured that it pays
      (both layouts timed at the run's own shapes: ``_vae_layout``; ``RENO_CHANNELS_LAST=1/0`` forces one), and its
      attention blocks that run the host's unfused split attention run the host's PyTorch SDPA in float32
      (``host.vae_sdpa``; the diffusion model's attention likewise through the model options:
      ``host.gradient_attention_options``; ``RENO_PYTORCH_ATTENTION=0`` keeps the host's);
   c. the blocks of each part the plan recomputes (diffusion model, VAE decoder, each reward) get a
      ``forward`` that recomputes their activations in the backward pass (``optimizer.memory``: the one
      gradient-checkpointing mechanism of the pack), with activation copies for models found to update
      activations in place.
   d. every block of every part checks ComfyUI's Cancel before it runs, and again when its gradient arrives
      in the backward pass, so a long pass stops at the next block.
   e. every layer whose weights ComfyUI's memory manager streams (partially loaded, dynamic VRAM) recomputes
      in the backward pass with its cast, on the run's own copy of the weight (``host.streamed_weights``);
      the host's model compiler and CUDA graphs are off (``host.compiler_off``).

   The plan is passed in (``RunPlan``), never left as flags on shared models.
3. **body**: what runs inside is a ``RunBody``: ReNO's (``ReNOBody``: ``optimize_noise`` over ``ReNORun.forward``
   with one reporter; the record carries the running best) or a training rollout's (``nodes/training.py``:
   ``RolloutBody``: one forward through ``ReNORun.forward`` and the backward of its loss into the adapters). A body
   that finds the model updating activations in place is run once more with copies (``ReNORun._retry_in_place``,
   the one retry of both).
4. **return**: a ``RunResult`` (the samples for ComfyUI, the body's result, previews, the memory plan).

Afterwards nothing of the run is left on ComfyUI's objects (tests check attributes, ``forward``
wrappers, tensor identities, ``requires_grad`` and inference flags). What the pack learns about a
model (that it updates activations in place) is kept here, in a weak table keyed by the model.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field

import comfy.model_management
import comfy.model_sampling
import torch
import torch.nn.functional as F

from ..optimizer import IterationRecord, ReNOConfig, ReNOResult, optimize_noise
from ..optimizer.chain import SAMPLERS, ChainSpec, GradientPolicy, call_denoiser, draw_step_noises, run_chain
from ..optimizer.memory import (
    INPLACE_MESSAGE,
    PROBE_MESSAGE,
    ActivationProbe,
    ComponentProfile,
    LayoutChoice,
    choose_layout,
    recompute_wrapper,
    time_layouts,
    wrap_blocks,
)
from ..reward_loaders import RewardEnsemble
from . import host, host_sampling, memory
from .autograd import as_normal, channels_last_weights, normal_attributes, normal_tensors
from .foreign import control_modules
from .inpaint import denoise_with_mask
from .inputs import ChainSettings
from .memory import reward_patcher
from .settings import channels_last_forced, model_pytorch_attention, pytorch_attention

log = logging.getLogger(__name__)

# reporter(record, image, preview): progress, events, cancel; image (B, 3, H, W) in [0, 1], preview (B, h, w, 3) uint8
Reporter = Callable[[IterationRecord, torch.Tensor, torch.Tensor], None]

# diffusion models found to update activations in place (their backward needs copies): the pack's own record
_IN_PLACE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# latents larger than this (elements per channel; 64 x 64 = 512 px for 8x VAEs) are sized from probes at reduced
# sizes before any full-size pass, and refused when even recomputing everything cannot fit
PREFLIGHT_AREA = 64 * 64
PROBE_SIDES = (32, 24, 16)  # latent sides of the probes
LAYOUT_SIDE = 32  # the VAE layouts are timed on at most this latent crop (256 px for 8x VAEs), batch 1
# VAE decoders whose layouts were timed: decoder -> {(crop shape, dtype, device, plan): LayoutChoice}
_LAYOUTS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


class ReNOMemoryError(RuntimeError):
    """The run cannot fit in the free memory even with everything recomputed (refused before it starts)."""


def interruptible(forward: Callable) -> Callable:
    """``make_forward`` for ``wrap_blocks``: ComfyUI's Cancel is honoured before every block, in the forward pass,
    and (through a hook on the block's output) between blocks of the backward pass."""
    check = comfy.model_management.throw_exception_if_processing_interrupted

    def on_grad(grad):
        check()

    def checked(*args, **kwargs):
        check()
        out = forward(*args, **kwargs)
        first = out[0] if isinstance(out, (tuple, list)) and out else out
        if isinstance(first, torch.Tensor) and first.requires_grad:
            first.register_hook(on_grad)
        return out

    return checked


def decode_with_grad(vae, latent: torch.Tensor) -> torch.Tensor:
    """VAE decode that keeps gradients: (B, C, h, w) latent -> (B, 3, H, W) image in [0, 1].

    ``VAE.decode`` copies to the CPU every call and may fall back to a tiled decode that runs under
    ``inference_mode`` (silently dropping gradients); this calls the decoder on its device. A 3-D (video) VAE
    decoding one frame, as ComfyUI samples Qwen-Image's Wan 2.1 latent ((B, C, 1, h, w)), gives (B, 3, 1, H, W):
    the frame axis is dropped, as VAE Decode folds frames into the batch.
    """
    model = vae.first_stage_model
    device = getattr(vae, "device", None) or next(model.parameters()).device
    dtype = getattr(vae, "vae_dtype", None) or next(model.parameters()).dtype
    out = model.decode(latent.to(device=device, dtype=dtype)).float()
    if out.dim() == 5 and out.shape[2] == 1:
        out = out[:, :, 0]
    if out.dim() != 4:
        raise ValueError(
            f"ReNO works on images; this VAE decodes to a tensor of shape {tuple(out.shape)} (video or audio VAE?)"
        )
    process = getattr(vae, "process_output", None)
    return process(out) if process is not None else torch.clamp((out + 1.0) / 2.0, 0.0, 1.0)


def preview_image(images: torch.Tensor, max_side: int) -> torch.Tensor:
    """(B, 3, H, W) in [0, 1] -> (B, h, w, 3) uint8 on the CPU, longest side at most ``max_side``."""
    h, w = images.shape[-2:]
    scale = min(1.0, max_side / max(h, w))
    if scale < 1.0:
        size = (max(1, round(h * scale)), max(1, round(w * scale)))
        images = F.interpolate(images.float(), size=size, mode="bilinear", antialias=True, align_corners=False)
    return (images.clamp(0, 1) * 255).round().to(torch.uint8).movedim(1, -1).cpu()


def skip_coefficient(model_sampling, sigma: torch.Tensor) -> torch.Tensor:
    """c_skip(sigma) of ComfyUI's denoiser, x0 = c_skip * x + c_out * network: ``calculate_denoised(sigma, 0, 1)``
    (1 for ε and flow models, sigma_data² / (sigma² + sigma_data²) for v-prediction, 0 for x0 models)."""
    ones = torch.ones(sigma.shape[0], 1, 1, 1, dtype=torch.float32, device=sigma.device)
    return model_sampling.calculate_denoised(sigma.float(), torch.zeros_like(ones), ones).reshape(sigma.shape[0])


def saved_activations_copied():
    """Autograd saves a copy of each activation the model's backward needs (only for models found to need it).

    Diffusion models written for inference update activations in place after another op saved them
    for backward (FLUX's blocks: ``txt += ...``, ``x += ...``), which makes backward fail ("modified by an
    inplace operation"). Copying saved non-leaf tensors at save time (each tensor once per version) makes
    any such model differentiable; weights (leaves) are never copied, and the originals are freed as the
    forward moves on, so peak memory barely changes. Autograd checks no version once saved-tensor hooks are
    installed, so these hooks check the leaves' themselves: a weight the host overwrote after its layer ran (a
    shared cast buffer) raises "modified by an inplace operation" instead of giving another gradient.
    """
    copies: dict = {}  # id(tensor) -> (weak reference, version, copy): each tensor copied once per version

    def pack(t: torch.Tensor):
        if t.grad_fn is None:
            return _Leaf(t, t._version)
        entry = copies.get(id(t))
        if entry is not None and entry[0]() is t and entry[1] == t._version:
            return entry[2]
        copy = t.clone()
        copies[id(t)] = (weakref.ref(t), t._version, copy)
        return copy

    def unpack(packed):
        if isinstance(packed, _Leaf):
            if packed.tensor._version != packed.version:
                raise RuntimeError(f"ReNO: a weight that the backward pass needs was {INPLACE_MESSAGE} after its layer "
                                   "ran (ComfyUI reused the memory it was cast into)")
            return packed.tensor
        return packed

    return torch.autograd.graph.saved_tensors_hooks(pack, unpack)


@dataclass(frozen=True)
class _Leaf:
    """A tensor without gradient history saved for backward (a weight), with its version when saved."""

    tensor: torch.Tensor
    version: int


@dataclass(frozen=True)
class RunPlan:
    """What a run installs: which parts recompute in backward, and how."""

    recompute: frozenset[str] = frozenset()  # memory.MODEL, memory.VAE and reward labels
    copy_saved: bool = False  # the diffusion model updates activations in place: copy what backward needs
    channels_last: bool = False  # the VAE decoder's convolutions run in NHWC
    summary: str = ""
    sdpa: bool = False  # the VAE's unfused attention blocks run PyTorch SDPA (host.vae_sdpa)
    layout: str = ""  # the VAE layout and why (measured times, or forced)


@dataclass
class RunResult:
    """What one run returns (``result``: ReNO's optimizer result; None for a training rollout)."""

    result: ReNOResult | None
    samples: torch.Tensor  # what the Sampler hands back to ComfyUI (x0, or one Euler step to the last sigma)
    x0: torch.Tensor  # the best iteration's denoised latent (the last step's prediction)
    sigma: float
    sigmas: list[float] = field(default_factory=list)  # every sigma of the schedule the chain ran
    previews: list[torch.Tensor] = field(default_factory=list)  # per iteration: (B, h, w, 3) uint8
    memory: str = ""  # the plan's summary (what recomputed, the estimate when measured)
    layout: str = ""  # the VAE decoder's layout and why (measured times, or forced)
    attention: str = ""  # the attention the gradient passes run


@dataclass
class _Inputs:
    """The run's own normal-tensor copies of what ComfyUI handed the sampler."""

    sigmas: torch.Tensor
    sigma: torch.Tensor
    sigma_last: torch.Tensor
    latent: torch.Tensor
    mask: torch.Tensor | None
    start: torch.Tensor
    args: dict
    spec: ChainSpec


class RunBody:
    """What runs inside a run's lifecycle, between install and restore. ``ReNORun.execute`` calls, in order:
    ``prepare(run)`` once the inputs are taken, ``plan(run, patchers)``, ``attempt(run, plan)`` (again with
    ``plan.copy_saved`` after ``before_retry(run)`` when the model turns out to update activations in place) and
    ``finish(run, value, plan)``, whose ``RunResult`` goes back to the sampler. A body uses only the run's public
    members: ``forward``, ``installed``, ``plan_memory``, ``use_host_sampler``, ``inputs``, ``steps``, ``copying``."""

    def prepare(self, run: ReNORun) -> None:
        pass

    def plan(self, run: ReNORun, patchers: list) -> RunPlan:
        return run.plan_memory(patchers)

    def attempt(self, run: ReNORun, plan: RunPlan):
        raise NotImplementedError

    def before_retry(self, run: ReNORun) -> None:
        pass

    def finish(self, run: ReNORun, value, plan: RunPlan) -> RunResult:
        raise NotImplementedError


class ReNOBody(RunBody):
    """ReNO: gradient ascent on the initial noise (``optimize_noise``) over the host's own sampler function."""

    def __init__(self, config: ReNOConfig, reporter: Reporter | None = None, preview_size: int = 256):
        self.config = config
        self.reporter = reporter
        self.preview_size = preview_size
        self.previews: list[torch.Tensor] = []

    def prepare(self, run: ReNORun) -> None:
        run.use_host_sampler()

    def attempt(self, run: ReNORun, plan: RunPlan) -> ReNOResult:
        def on_iteration(record: IterationRecord, image: torch.Tensor):
            preview = preview_image(image, self.preview_size)
            self.previews.append(preview)
            if self.reporter is not None:
                self.reporter(record, image, preview)

        with run.installed(plan):
            return optimize_noise(run.forward, run.ensemble, run.inputs.start, self.config, on_iteration)

    def before_retry(self, run: ReNORun) -> None:
        self.previews.clear()

    def finish(self, run: ReNORun, result: ReNOResult, plan: RunPlan) -> RunResult:
        with torch.no_grad():
            best = result.best_extra.detach()  # (B, 2, ...): what KSampler returns and the last call's x0
            samples, x0 = best[:, 0], best[:, 1]
            result.best_extra = x0
        return run.result(samples, x0, plan, result=result, previews=self.previews)


@contextlib.contextmanager
def _attribute(obj, name: str, value):
    """``obj.name = value`` inside the block, the previous value restored after."""
    before = getattr(obj, name)
    setattr(obj, name, value)
    try:
        yield
    finally:
        setattr(obj, name, before)


class ReNORun:
    """One run inside a ComfyUI sampling call: ``execute`` is the whole lifecycle (see the module docstring); what
    runs inside it is its ``body`` (``ReNOBody``, or a training rollout's)."""

    def __init__(self, ensemble: RewardEnsemble, vae, body: RunBody, memory_mode: str = memory.AUTO,
                 model_patcher=None, chain: ChainSettings = ChainSettings()):
        self.memory_mode = memory.check_mode(memory_mode)
        self.chain = chain
        GradientPolicy(chain.gradient, chain.k)  # an unknown gradient mode fails here, before any work
        self.ensemble = ensemble
        self.vae = vae
        self.body = body
        self.model_patcher = model_patcher
        self._whole_steps = True  # several steps: each recomputes as a whole (False: the plan recomputes the blocks)

    # -- what a body reads ---------------------------------------------------------------------------
    @property
    def inputs(self) -> _Inputs:
        """The run's own normal-tensor copies of the sampling call's inputs."""
        return self._inputs

    @property
    def steps(self) -> int:
        """The model calls of one pass (the unit of exact / drtune / last k and of recomputation)."""
        return self._steps

    @property
    def copying(self) -> bool:
        """The model updates activations in place: what backward needs is copied."""
        return self._copying

    def skip(self, sigma: torch.Tensor) -> torch.Tensor:
        """The model's c_skip(sigma) (drtune holds the network's output fixed: DRTune's definition)."""
        return skip_coefficient(self.model_sampling, sigma)

    def plan_memory(self, patchers: list) -> RunPlan:
        """What recomputes in backward for this run (measured, or the fixed choice of its memory mode)."""
        return self._plan(patchers)

    def plain_plan(self) -> RunPlan:
        """The plan of a pass without gradient (nothing recomputes): the VAE layout and attention of a gradient run,
        so its images are the gradient run's iteration 0 (up to float rounding)."""
        layout = self._vae_layout(frozenset())
        return RunPlan(copy_saved=self._copying, channels_last=layout.channels_last, summary="no gradient",
                       sdpa=self._sdpa, layout=layout.describe())

    def use_host_sampler(self) -> None:
        """Sample with the host's own sampler function (ReNO's runs); without it the pack's chain runs."""
        self._prepare_sampler()

    def result(self, samples: torch.Tensor, x0: torch.Tensor, plan: RunPlan, result: ReNOResult | None = None,
               previews: list | None = None) -> RunResult:
        return RunResult(result=result, samples=samples, x0=x0, sigma=float(self._inputs.sigma),
                         sigmas=[float(v) for v in self._inputs.sigmas], previews=list(previews or []),
                         memory=plan.summary, layout=plan.layout, attention=self._attention)

    # -- 1. prepare --------------------------------------------------------------------------------
    def _load(self, model_wrap) -> list:
        patcher = self.model_patcher or getattr(model_wrap, "model_patcher", None)
        rewards = [reward_patcher(r.model) for r in self.ensemble.rewards]
        self._patcher = patcher
        patchers = ([patcher] if patcher is not None else []) + [self.vae.patcher] + rewards
        comfy.model_management.load_models_gpu(patchers)
        self.device = getattr(patcher, "load_device", None) or comfy.model_management.get_torch_device()
        return patchers

    def _foreign_modules(self) -> list:
        """Every module whose tensors the run swaps: the diffusion model, what ComfyUI loaded with it for this
        sampling call (ControlNets, GLIGEN, model patches), the VAE, the rewards."""
        modules = [self.inner, self.vae.first_stage_model]
        loaded = [getattr(p, "model", None) for p in getattr(self.model_wrap, "loaded_models", None) or []]
        for module in [*control_modules(self.model_wrap), *loaded]:
            if isinstance(module, torch.nn.Module) and all(module is not m for m in modules):
                modules.append(module)
        return modules + [r.model for r in self.ensemble.rewards]

    def _blocks(self) -> dict[str, list]:
        """The blocks each part recomputes when the plan says so (also what the measuring pass measures). With
        several steps the diffusion model's unit is the step (the chain recomputes whole steps), and its own blocks
        are the second level, ``memory.inner(memory.MODEL)``: recomputed in every step instead of whole steps when the
        plan says so (less memory when a step's activations outweigh every step's block inputs: a large model at a
        large size with few steps)."""
        model_blocks = memory.model_blocks(self.inner)
        blocks = {memory.MODEL: model_blocks if self._steps == 1 else [], memory.VAE: memory.vae_blocks(self.vae)}
        if self._steps > 1:
            blocks[memory.inner(memory.MODEL)] = model_blocks
        for label, r in zip(self.ensemble.labels, self.ensemble.rewards):
            blocks[label] = memory.reward_blocks(r.model)
        return blocks

    def _recomputable(self, blocks: dict, name: str) -> bool:
        """Whether the plan can recompute part ``name``: it has blocks, or it is the model's steps."""
        return bool(blocks.get(name)) or (name == memory.MODEL and self._steps > 1)

    # -- 2. install --------------------------------------------------------------------------------
    @contextlib.contextmanager
    def installed(self, plan: RunPlan, block_wrapper: Callable | None = None, inner_wrapper: Callable | None = None):
        """Everything the run changes on objects it does not own, installed in order and restored in reverse.

        ``block_wrapper`` (the measuring pass) wraps every block instead of the plan's recomputation, and
        ``inner_wrapper`` the model's blocks inside each step of a multi-step chain.
        """
        with contextlib.ExitStack() as stack:
            stack.enter_context(host.training_mode())  # the host's differentiable paths (in_training)
            stack.enter_context(host_sampling.samplers_with_gradients())  # the host's sampler functions build a graph
            stack.enter_context(host.compiler_off())  # e. no model compiler, no CUDA graphs
            stack.enter_context(normal_tensors(self._foreign_modules()))  # a. zero-copy normal tensors
            stack.enter_context(normal_attributes([getattr(self.inner, "latent_format", None)]))  # a'. its statistics
            if plan.channels_last:  # b. the decoder's convolutions in NHWC
                stack.enter_context(channels_last_weights([self.vae.first_stage_model]))
            if plan.sdpa:  # the decoder's unfused attention as PyTorch SDPA
                stack.enter_context(host.vae_sdpa(self.vae.first_stage_model, self._vae_dtype()))
            blocks = self._blocks()
            model_level = blocks.pop(memory.inner(memory.MODEL), [])  # several steps: the model's blocks in a step
            every_block = [b for part in blocks.values() for b in part]
            if block_wrapper is not None:
                stack.enter_context(wrap_blocks(every_block, block_wrapper))
                if inner_wrapper is not None:
                    stack.enter_context(wrap_blocks(model_level, inner_wrapper))
            else:  # c. the one gradient-checkpointing mechanism, per part
                recompute = recompute_wrapper(plan.copy_saved)
                for part, part_blocks in blocks.items():
                    if part in plan.recompute:
                        stack.enter_context(wrap_blocks(part_blocks, recompute))
                if memory.inner(memory.MODEL) in plan.recompute:  # the model's blocks in every step, not whole steps
                    stack.enter_context(wrap_blocks(model_level, recompute))
                    stack.enter_context(_attribute(self, "_whole_steps", False))
            if self._steps > 1:  # d. Cancel between blocks, outermost (several steps: the model's blocks too)
                every_block = every_block + memory.model_blocks(self.inner)
            stack.enter_context(wrap_blocks(every_block, interruptible))
            # e. streamed weights: each such layer recomputes with its cast (not while measuring: nothing is kept)
            stack.enter_context(host.streamed_weights(self._foreign_modules(), recompute=block_wrapper is None))
            yield

    # -- the differentiable generator ------------------------------------------------------------------
    def forward(self, z: torch.Tensor, around=None, step_probe=None, chain: Callable | None = None,
                decode_final: bool | None = None):
        """noise -> (image in [0, 1], (the chain's result, the last step's x0)): the sampling chain from the first
        sigma to the last, each step's x0 as ComfyUI's samplers get it, then the VAE decode of what KSampler returns
        (a schedule ending at 0) or of the last x0 (a split schedule); ``decode_final`` says which instead.

        The one forward pass of every body: the denoiser (with the mask, as KSamplerX0Inpaint), the noise scaling,
        the saved-activation copies and the decode are here. ``chain(denoise, x) -> (x_final, x0)`` replaces the
        run's sampler (a training rollout's chain); otherwise the host's sampler function runs when
        ``use_host_sampler`` chose it, else the pack's chain, each under the run's gradient policy."""
        inp = self._inputs
        part = around or (lambda name: contextlib.nullcontext())
        measuring = around is not None
        copying = self._copying and not measuring  # never while measuring
        noise = z.to(inp.latent.dtype)

        def denoise(x, sigma):  # with a mask, as KSamplerX0Inpaint: the kept part noised at sigma, of x0 the latent
            return denoise_with_mask(self.model_wrap, x, sigma, noise, inp.latent, inp.mask, inp.args, inp.sigmas)

        if step_probe is not None:  # the measuring pass with several steps: each step is one block
            plain = denoise

            def denoise(x, sigma):
                with step_probe([x]):
                    return plain(x, sigma)

        ms = self.model_sampling
        policy = self.chain.policy(self._steps, copying, measuring, skip=lambda sigma: skip_coefficient(ms, sigma))
        if not self._whole_steps:  # the plan recomputes the model's blocks instead
            policy = dataclasses.replace(policy, recompute=False)
        sampler = getattr(self, "_host_sampler", None)
        with part(memory.MODEL), saved_activations_copied() if copying else contextlib.nullcontext():
            if sampler is not None and chain is None:  # the host's own sampler function, each call under the policy
                samples, x0 = self._host_sample(sampler, noise, policy, step_probe)
            else:  # the pack's chain, or the one a body passed (a training rollout's)
                x = self.model_sampling.noise_scaling(inp.sigma, noise, inp.latent, self.max_denoise)
                x_final, x0 = chain(denoise, x) if chain is not None else run_chain(denoise, x, inp.spec, policy)
                samples = self.model_sampling.inverse_noise_scaling(inp.sigma_last, x_final)
        final = self._to_zero if decode_final is None else decode_final
        with part(memory.VAE):  # ending at sigma 0: what KSampler returns; a split schedule: the last call's x0
            image = decode_with_grad(self.vae, self.inner.process_latent_out(samples if final else x0))
        return image, torch.stack([samples, x0], dim=1)

    _forward = forward  # the measuring pass's name for it

    def _host_sample(self, sampler, noise: torch.Tensor, policy: GradientPolicy, step_probe=None):
        """(KSampler's samples, the last model call's x0) from the host's sampler function, with ``policy`` applied
        per model call (``_calls`` of them: what exact / drtune / last k count)."""
        inp = self._inputs
        calls = self._calls

        def call(denoise, x, sigma, index):
            if index >= calls and policy.mode != "exact":  # a count that depends on the model's output (dpm_adaptive)
                raise host_sampling.SamplerRefused(
                    f"ReNO: sampler {self.chain.sampler!r} called the model more often than its schedule says "
                    f"({index + 1} > {calls}): its number of model calls depends on the model's output, so "
                    f"gradient = {self.chain.gradient!r} cannot pick its last {self.chain.k}; use gradient = exact.")
            if step_probe is not None:  # the measuring pass: each model call is one block
                with step_probe([x]):
                    return call_denoiser(denoise, x, sigma, policy, index, calls)
            return call_denoiser(denoise, x, sigma, policy, index, calls)

        samples, x0, _ = host_sampling.sample(sampler, self.model_wrap, inp.sigmas, inp.args, noise, inp.latent, inp.mask,
                                     call)
        return samples, x0

    # -- memory ----------------------------------------------------------------------------------------
    def _plan(self, patchers: list) -> RunPlan:
        """Choose what recomputes in backward; measure inside a short swap, ask ComfyUI for room outside it."""
        labels = self.ensemble.labels
        forced, allowed = memory.forced_components(self.memory_mode, labels,
                                                   [r.gradient_checkpointing for r in self.ensemble.rewards])
        names = {memory.MODEL: "diffusion model", memory.inner(memory.MODEL): "the diffusion model's blocks in every "
                 "step (not whole steps)", memory.VAE: "VAE decoder"}
        order = [memory.MODEL, memory.inner(memory.MODEL), memory.VAE, *labels]
        blocks = self._blocks()
        if self._steps > 1:  # the chain recomputes each step in backward: the model's unit is the step
            forced = forced | {memory.MODEL}
        elif allowed is not None:  # one step: the model has no second level to choose
            allowed = allowed - {memory.inner(memory.MODEL)}
        self._preflight(forced, patchers)
        profiles = None
        if allowed is None or allowed:  # auto, or checkpoint all choosing the model's unit: measure
            try:
                profiles = self._measure()
            except RuntimeError as e:  # the sampler runs its own backward inside its forward (DEIS): not measurable
                if PROBE_MESSAGE not in str(e):
                    raise
        if profiles is None:  # a fixed choice, or not measurable: then every part the mode allows recomputes
            chosen = forced if allowed is not None else set(order) - {memory.inner(memory.MODEL)}
            recompute = frozenset(n for n in chosen if self._recomputable(blocks, n))
            summary = f"{self.memory_mode}: recompute " + (", ".join(
                names.get(n, n) for n in order if n in recompute) or "nothing")
            if allowed is None or allowed:
                summary += (" (this sampler cannot be measured: it runs a backward pass of its own inside the "
                            "forward pass)")
        else:
            device = self.device
            budget = memory.free_bytes(device, self._patcher)
            plan = memory.plan_checkpointing(profiles, budget, forced, allowed)
            if (allowed is None and plan.recompute - forced) or not plan.fits:
                # recomputing costs time on every iteration: first let ComfyUI unload the other models it caches
                if memory.unload_other_models(patchers, memory.estimate_peak(profiles, forced), device):
                    budget = memory.free_bytes(device, self._patcher)
                    plan = memory.plan_checkpointing(profiles, budget, forced, allowed)
            if not plan.fits:
                memory.make_room(patchers, [r.model for r in self.ensemble.rewards], plan.estimated_peak, device)
                budget = memory.free_bytes(device, self._patcher)
                plan = memory.plan_checkpointing(profiles, budget, forced, allowed)
            recompute = plan.recompute
            summary = f"{self.memory_mode}: " + memory.summarize(plan, profiles, budget)
        log.info("ReNO memory: %s", summary)
        layout = self._vae_layout(frozenset(recompute))
        log.info("ReNO VAE decoder layout: %s; attention: %s", layout.describe(), self._attention)
        return RunPlan(recompute=recompute, copy_saved=self._copying, channels_last=layout.channels_last,
                       summary=summary, sdpa=self._sdpa, layout=layout.describe())

    def _vae_dtype(self) -> torch.dtype:
        return getattr(self.vae, "vae_dtype", None) or next(self.vae.first_stage_model.parameters()).dtype

    def _vae_layout(self, recompute: frozenset) -> LayoutChoice:
        """The VAE decoder's memory layout for this run: ``RENO_CHANNELS_LAST`` when set; else both layouts timed
        (forward + backward of the decoder, as the run installs it: attention, recomputation) on the run's latent,
        cropped to ``LAYOUT_SIDE`` and batch 1, on the run's device and dtype, and the faster taken
        (``optimizer.memory.choose_layout``: channels-last only when clearly faster). Remembered per decoder and shape.

        Channels-last is not always faster: on CPUs its convolutions gain at 256-512 channels, but GroupNorm's
        backward in NHWC is slower, by more than the convolutions gain at small channel counts; GPUs differ again."""
        forced = channels_last_forced()
        if forced is not None:
            return LayoutChoice(forced, reason="RENO_CHANNELS_LAST=" + ("1" if forced else "0"))
        decoder = self.vae.first_stage_model
        start = self._inputs.start
        if start.dim() != 4 or not any(p.dim() == 4 for p in decoder.parameters()):
            return LayoutChoice(False, reason="no 2-D convolutions to lay out")
        crop = start[:1, :, :LAYOUT_SIDE, :LAYOUT_SIDE]
        key = (tuple(crop.shape), self._vae_dtype(), str(self.device), recompute, self._sdpa)
        known = _LAYOUTS.setdefault(decoder, {})
        if key in known:
            return known[key]
        latent = self.inner.process_latent_out(crop.detach().to(self._inputs.latent.dtype))
        device = self.device
        sync = (lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None
        # on a CPU the process's CPU time (other programs on the machine cannot inflate it); elsewhere the wall clock
        clock = time.process_time if device.type == "cpu" else time.perf_counter

        def prepare(layout: str):
            return self.installed(RunPlan(recompute, self._copying, layout == "channels-last", sdpa=self._sdpa))

        def step():
            v = latent.detach().clone().requires_grad_(True)
            image = decode_with_grad(self.vae, v)
            torch.autograd.grad(image, v, torch.ones_like(image))

        seconds = time_layouts(prepare, step, sync=sync, clock=clock)
        where = f"at a {crop.shape[-1]}x{crop.shape[-2]} latent" + (", CPU time" if device.type == "cpu" else "")
        known[key] = choice = LayoutChoice(choose_layout(seconds), seconds, where=where)
        return choice

    def _preflight(self, forced: set, patchers: list) -> None:
        """For a large latent: estimate the run's activations from three probes at reduced sizes (cheap: the probes
        keep nothing) and refuse before any full-size pass when even recomputing everything cannot fit."""
        inp = self._inputs
        h, w = inp.start.shape[-2:]
        if inp.start.dim() < 4 or h * w <= PREFLIGHT_AREA:
            return
        measured = []
        for side in PROBE_SIDES:
            ph, pw = min(h, side), min(w, max(1, round(side * w / h)))
            measured.append((ph * pw, self._measure(crop=(ph, pw))))
        profiles = memory.extrapolate_profiles(measured, h * w)
        device = self.device
        budget = memory.free_bytes(device, self._patcher)
        leanest = memory.plan_checkpointing(profiles, budget, forced, allowed=None)
        if not leanest.fits and memory.unload_other_models(patchers, leanest.estimated_peak, device):
            budget = memory.free_bytes(device, self._patcher)
            leanest = memory.plan_checkpointing(profiles, budget, forced, allowed=None)
        log.info("ReNO memory preflight (%dx%d latent): %s", w, h, memory.summarize(leanest, profiles, budget))
        if not leanest.fits:
            need = memory.activation_request(leanest.estimated_peak)
            raise ReNOMemoryError(
                f"ReNO: a {w}x{h} latent (about {8 * w}x{8 * h} px for an 8x VAE) with a batch of "
                f"{inp.start.shape[0]} needs about {need / 2**30:.1f} GiB for ReNO's backward pass even with "
                f"everything recomputed (memory: checkpoint all), but only {budget / 2**30:.1f} GiB are free on "
                f"{device}. Nothing was run. Generate smaller (each halving of width and height needs about a quarter "
                "of the memory) or with a smaller batch, connect fewer rewards, or close other programs and models."
            )

    def _measure(self, crop: tuple[int, int] | None = None) -> list[ComponentProfile]:
        """One forward pass that measures what each part keeps for backward (and keeps none of it)."""
        device = self.device
        probe = ActivationProbe((lambda: torch.cuda.synchronize(device)) if device.type == "cuda" else None)
        full = self._inputs
        if crop is not None:  # a probe at a reduced size: the top-left crop of the noise, the latent and the mask
            def cut(t):
                return t[..., :crop[0], :crop[1]] if t is not None and t.dim() >= 4 else t
            spec = full.spec
            if spec is not None and spec.step_noises is not None:
                spec = dataclasses.replace(spec, step_noises=[cut(n) for n in spec.step_noises])
            self._inputs = _Inputs(full.sigmas, full.sigma, full.sigma_last, cut(full.latent), cut(full.mask),
                                   cut(full.start), full.args, spec)
        try:
            z = self._inputs.start.detach().float().clone().requires_grad_(True)
            with self.installed(RunPlan(sdpa=self._sdpa), block_wrapper=probe.block_wrapper,
                                inner_wrapper=probe.inner_block_wrapper), probe:
                image, _ = self._forward(z, probe.component, probe.block if self._steps > 1 else None)
                self.ensemble(image, around=probe.component)
        finally:
            self._inputs = full
        return [probe.profiles.get(name) or ComponentProfile(name)
                for name in [memory.MODEL, memory.VAE, *self.ensemble.labels]]

    # -- the whole run -----------------------------------------------------------------------------------
    def execute(self, model_wrap, sigmas, extra_args, noise, latent_image=None, denoise_mask=None,
                max_denoise: bool = True) -> RunResult:
        """One run for one sampling call of ComfyUI (``Sampler.sample``'s arguments): prepare, plan, the body
        (installed and restored inside it), return."""
        if not torch.any(noise != 0):
            raise ValueError("ReNO optimizes the initial noise, but the noise is all zeros: turn add_noise on "
                             "(SamplerCustom) or use RandomNoise, not DisableNoise (SamplerCustomAdvanced).")
        patchers = self._begin(model_wrap, sigmas, max_denoise)
        with torch.inference_mode(False), torch.enable_grad():
            self._take_inputs(sigmas, extra_args, noise, latent_image, denoise_mask)
            self.body.prepare(self)
            plan = self.body.plan(self, patchers)
            value, plan = self._retry_in_place(plan)
            return self.body.finish(self, value, plan)

    def _retry_in_place(self, plan: RunPlan):
        """(the body's value, the plan it ran with): ``body.attempt``, and once more with the saved activations
        copied when the first backward finds that the model updates activations in place (remembered per model).
        A kernel without a gradient on this host is refused with what to do (``host.kernel_error``)."""
        retry = False
        try:
            value = self.body.attempt(self, plan)
        except RuntimeError as e:
            refusal = host.kernel_error(e)
            if refusal is not None:
                raise refusal from None
            if plan.copy_saved or self._copying or INPLACE_MESSAGE not in str(e):
                raise
            retry = True  # outside the except block, so the failed attempt's traceback and tensors are gone
        if retry:
            log.info("ReNO: this model updates activations in place during its forward pass; "
                     "copying the activations backward needs (slightly slower)")
            _IN_PLACE[self.inner] = self._copying = True
            plan = dataclasses.replace(plan, copy_saved=True)
            self.body.before_retry(self)
            value = self.body.attempt(self, plan)
        return value, plan

    def _begin(self, model_wrap, sigmas, max_denoise: bool) -> list:
        """The start of step 1: what the sampling call runs on; ComfyUI loads the model, the VAE and the rewards."""
        self._steps = len(sigmas) - 1
        self.model_wrap = model_wrap
        self.inner = model_wrap.inner_model
        self.model_sampling = self.inner.model_sampling
        self.max_denoise = max_denoise
        self._copying = _IN_PLACE.get(self.inner, False)
        refusal = host.quantized_error(self.inner)  # a quantized format without a backward: refused before any work
        if refusal is not None:
            raise refusal
        return self._load(model_wrap)

    def _take_inputs(self, sigmas, extra_args, noise, latent_image, denoise_mask) -> None:
        """The run's own normal-tensor copies of the call's inputs, the chain's spec and the text features (under
        ``inference_mode(False)``)."""
        schedule = as_normal(sigmas).clone()
        latent = as_normal(latent_image).clone() if latent_image is not None else torch.zeros_like(noise)
        start = as_normal(noise).clone()
        self._to_zero = bool(schedule[-1] == 0)  # a full denoise (not a split schedule): decode what KSampler returns
        args = _with_normal_conds(extra_args)
        self._sdpa = pytorch_attention()  # the VAE decoder's unfused attention as PyTorch SDPA (installed)
        if model_pytorch_attention():  # the diffusion model's too: only when asked, since KSampler runs the host's
            options, self._attention = host.gradient_attention_options(args["model_options"])
            args = {**args, "model_options": options}
        else:  # iteration 0 stays KSampler's sample exactly (the oracle), whatever attention the host picked
            self._attention = "the host's, as KSampler (RENO_PYTORCH_ATTENTION=all for PyTorch SDPA)"
        self._inputs = _Inputs(
            sigmas=schedule,
            sigma=schedule[0],
            sigma_last=schedule[-1],
            latent=latent,
            mask=as_normal(denoise_mask).clone() if denoise_mask is not None else None,
            start=start,
            args=args,
            spec=self._chain_spec(schedule, start, latent, extra_args.get("seed")),
        )
        self.ensemble.prepare()  # text features once per prompt (no gradients: inference weights are fine)

    def _prepare_sampler(self) -> None:
        """ReNO's run samples with the host's own sampler function (``host_sampling.sample``): the chosen KSAMPLER with its
        ``@torch.no_grad()`` bypassed, and the number of model calls it makes over the run's sigmas, counted once
        without the model (the unit of exact / drtune / last k, and of recomputation)."""
        chosen = self.chain.sampler_object or host_sampling.sampler_object(self.chain.sampler)
        sampler = host_sampling.differentiable_sampler(chosen)
        inp = self._inputs
        with host_sampling.samplers_with_gradients():
            self._calls = host_sampling.count_model_calls(sampler, self.model_wrap, inp.sigmas, inp.args,
                                                 inp.start.to(inp.latent.dtype), inp.latent, inp.mask)
        self._host_sampler = sampler
        self._steps = self._calls

    def _chain_spec(self, sigmas: torch.Tensor, start: torch.Tensor, latent: torch.Tensor, seed) -> ChainSpec | None:
        """The pack's chain over ``sigmas`` (the trainer's rollouts; None for a sampler it does not have); a
        stochastic sampler's per-step noises are drawn once, for the seed, with the host's own noise sampler, exactly
        as ComfyUI's sampler draws them, and held fixed across the iterations."""
        if self.chain.sampler not in SAMPLERS:
            return None
        flow = isinstance(self.model_sampling, comfy.model_sampling.CONST)
        noises = None
        if self.chain.sampler in ("euler_ancestral", "lcm", "ddpm"):
            x = self.model_sampling.noise_scaling(sigmas[0], start.to(latent.dtype), latent, self.max_denoise)
            noises = draw_step_noises(x, self.chain.sampler, sigmas, seed, flow=flow,
                                      noise_sampler=host.step_noise_sampler(x, seed))
        ms = self.model_sampling
        return ChainSpec(self.chain.sampler, sigmas, noises, flow=flow,
                         noise_scaling=lambda sigma, n, x: ms.noise_scaling(sigma, n, x))


def _with_normal_conds(extra_args: dict) -> dict:
    """extra_args whose model call sees normal tensors for every conditioning input.

    Conditioning tensors were made under inference mode by ComfyUI; wrapping the model function makes
    each one a zero-copy normal tensor at call time. ``model_options`` is copied, never mutated.
    """
    options = dict(extra_args.get("model_options") or {})
    previous = options.get("model_function_wrapper")

    def wrapper(apply_model, args):
        args = dict(args)
        args["c"] = {k: as_normal(v) for k, v in args["c"].items()}
        args["input"], args["timestep"] = as_normal(args["input"]), as_normal(args["timestep"])
        if previous is not None:
            return previous(apply_model, args)
        return apply_model(args["input"], args["timestep"], **args["c"])

    options["model_function_wrapper"] = wrapper
    return {**extra_args, "model_options": options}
