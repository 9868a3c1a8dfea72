"""Reward fine-tuning of a LoRA inside ComfyUI: ComfyUI's adapters and sampling calls, the pack's rollouts and loss.

* Adapters are ComfyUI's own (``comfy.weight_adapter``, attached with ``ModelPatcher.add_weight_wrapper``), made
  exactly as core ``TrainLoraNode`` makes them: a LoRA (``create_train(weight, rank, alpha=1)``) on every weight
  of two or more dimensions, a ``diff`` on the other weights and a ``diff_b`` on every bias, keyed
  ``<module>.lora_up.weight`` / ``.lora_down.weight`` / ``.alpha`` / ``.diff`` / ``.diff_b``; ``LORA_MODEL`` is
  that name -> tensor dict, so core "Save LoRA Weights" writes it and "Load LoRA Model" / "Load LoRA" apply it.
* Every rollout is one ComfyUI sampling call (``comfy.sample.sample_custom``: ComfyUI loads the model, encodes
  the conditioning, applies CFG) whose sampler is the pack's one bridge (``ReNOComfySampler``) running a
  ``ReNORun`` (``nodes/lifecycle.py``: normal tensors, recomputation, Cancel per block, the in-place retry) whose
  body is a ``RolloutBody``: the rollout drawn by ``training.reward_finetuning`` in place of ReNO's loop, and the
  backward of its loss into the LoRA.
* The held-out reward is measured with ComfyUI's own ``comfy.sample.sample`` (what a KSampler with the trained
  LoRA gives) and a plain VAE decode, without gradients.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass

import comfy.model_management
import comfy.sample
import comfy.samplers
import torch

from ..reward_loaders import RewardEnsemble
from ..training.reward_finetuning import (
    RewardTerm,
    Rollout,
    RolloutOutcome,
    RolloutRequest,
    TrainConfig,
    TrainResult,
    reward_loss,
    rollout_chain,
    train,
)
from . import memory
from .bridge import ReNOComfySampler
from .lifecycle import ChainSettings, ReNORun, RunBody, RunPlan, RunResult, preview_image
from .run import PREVIEW_SIZE, model_sampling_of

log = logging.getLogger(__name__)

NEEDS = ("ReNO Train Reward LoRA needs ComfyUI 0.3.41 or newer (its comfy.weight_adapter LoRA trainer): update "
         "ComfyUI")


def weight_adapter_api():
    """ComfyUI's adapter classes: (adapter_maps, adapters, BiasDiff); a clear error on hosts without them."""
    try:
        from comfy.weight_adapter import adapter_maps, adapters
        from comfy_extras.nodes_train import BiasDiff
    except ImportError as e:
        raise RuntimeError(f"{NEEDS} ({e})") from e
    return adapter_maps, adapters, BiasDiff


@dataclass
class Adapters:
    """The trainable adapters attached to a model clone: the LORA_MODEL dict (its tensors are the parameters)."""

    patcher: object  # the ModelPatcher clone that carries them
    lora: dict[str, torch.Tensor]
    modules: list

    def parameters(self) -> list[torch.nn.Parameter]:
        return [p for p in self.lora.values() if isinstance(p, torch.nn.Parameter) and p.requires_grad]

    def freeze(self) -> None:
        for m in self.modules:
            m.requires_grad_(False)

    def state(self) -> dict[str, torch.Tensor]:
        """A detached CPU copy, in the core LORA_MODEL format (what Save LoRA Weights writes; Load LoRA Model moves
        the patches to the model's device itself)."""
        return {k: v.detach().to("cpu", copy=True).contiguous() for k, v in self.lora.items()}


class AdapterSwitch:
    """A shared on/off flag for switched adapters (``attach_adapters(..., switch=...)``): one model load computes
    both the base model (off) and the adapted one (on). ``with switch.turned(True): ...`` sets it for a block."""

    def __init__(self, on: bool = False):
        self.on = on

    @contextlib.contextmanager
    def turned(self, on: bool):
        before, self.on = self.on, on
        try:
            yield
        finally:
            self.on = before


class SwitchedAdapter(torch.nn.Module):
    """A weight wrapper that applies ``adapter`` while ``switch.on``, and returns the weight unchanged otherwise."""

    def __init__(self, adapter: torch.nn.Module, switch: AdapterSwitch):
        super().__init__()
        self.adapter = adapter
        self.switch = switch

    def forward(self, weight):
        return self.adapter(weight) if self.switch.on else weight

    def passive_memory_usage(self):
        return self.adapter.passive_memory_usage()

    def move_to(self, device):
        return self.adapter.move_to(device=device)


def attach_adapters(model, rank: int, existing: dict | None = None, algorithm: str = "LoRA", seed: int = 0,
                    switch: AdapterSwitch | None = None) -> Adapters:
    """A clone of ``model`` with trainable adapters on every weight and bias of its diffusion model (as core
    ``TrainLoraNode``); ``existing`` (a LORA_MODEL) initializes the adapters it has (training continues). The new
    adapters' random initialization is drawn from ``seed`` (the global random state is left as it was). With a
    ``switch``, each adapter is attached inside a ``SwitchedAdapter`` (those are the ``modules``): the adapters act
    only while the switch is on."""
    adapter_maps, adapters, BiasDiff = weight_adapter_api()
    existing = existing or {}
    if not isinstance(existing, dict):
        raise ValueError("ReNO Train Reward LoRA: existing_lora must be a LORA_MODEL (from a trainer or Load LoRA "
                         f"Model's source), got {type(existing).__name__}")
    mp = model.clone()
    lora: dict[str, torch.Tensor] = {}
    modules = []
    used: set[str] = set()
    device = next((p.device for p in mp.model.parameters()), torch.device("cpu"))
    devices = [device] if device.type == "cuda" else []
    with torch.inference_mode(False), torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        for n, m in mp.model.named_modules():
            if not hasattr(m, "weight_function"):
                continue
            if getattr(m, "weight", None) is not None:
                key = f"{n}.weight"
                if m.weight.dim() >= 2:
                    alpha = float(existing[f"{key}.alpha"]) if f"{key}.alpha" in existing else \
                        float(existing.get(f"{n}.alpha", 1.0))
                    adapter = None
                    for cls in adapters:
                        loaded = cls.load(n, existing, alpha, existing.get(f"{n}.dora_scale"))
                        if loaded is not None:
                            adapter = loaded.to_train().to(torch.float32)
                            used.update(loaded.loaded_keys)
                            break
                    if adapter is None:
                        adapter = adapter_maps[algorithm].create_train(m.weight, rank=rank, alpha=1.0).to(torch.float32)
                    for name, p in adapter.named_parameters():
                        lora[f"{n}.{name}"] = p
                    if switch is not None:
                        adapter = SwitchedAdapter(adapter, switch)
                    mp.add_weight_wrapper(key, adapter)
                    modules.append(adapter)
                else:
                    modules.append(_diff(mp, key, f"{n}.diff", m.weight, existing, lora, used, BiasDiff, switch))
            if getattr(m, "bias", None) is not None:
                modules.append(_diff(mp, f"{n}.bias", f"{n}.diff_b", m.bias, existing, lora, used, BiasDiff, switch))
    unknown = sorted(set(existing) - used - {k for k in existing if k.endswith(".alpha")})
    if unknown:
        raise ValueError(f"ReNO Train Reward LoRA: existing_lora has {len(unknown)} tensor(s) this model has no "
                         f"place for (e.g. {unknown[:3]}): it was trained on another model family")
    if not lora:
        raise RuntimeError("ReNO Train Reward LoRA: this model has no layer ComfyUI can attach an adapter to")
    return Adapters(mp, lora, modules)


def _diff(mp, key: str, name: str, like: torch.Tensor, existing: dict, lora: dict, used: set, BiasDiff,
          switch: AdapterSwitch | None = None):
    start = existing.get(name)
    if start is not None:
        if tuple(start.shape) != tuple(like.shape):
            raise ValueError(f"ReNO Train Reward LoRA: existing_lora's {name} has shape {tuple(start.shape)}, the "
                             f"model's is {tuple(like.shape)}: it was trained on another model")
        used.add(name)
        value = start.detach().to(torch.float32).clone()
    else:
        value = torch.zeros(like.shape, dtype=torch.float32)
    p = torch.nn.Parameter(value.to(like.device), requires_grad=True)
    module = BiasDiff(p)
    if switch is not None:
        module = SwitchedAdapter(module, switch)
    lora[name] = p
    mp.add_weight_wrapper(key, module)
    return module


class RolloutBody(RunBody):
    """One training rollout as the body of a run (``nodes/lifecycle.py``: load, normal tensors, recomputation,
    Cancel, the in-place retry): the rollout's forward pass through ``ReNORun.forward`` with the rollout's chain,
    and the backward of its scaled loss into the adapters."""

    def __init__(self, request: RolloutRequest, method: str, params: list, plans: dict):
        self.request = request
        self.method = method
        self.params = params  # the adapters' parameters (their gradients are kept across an in-place retry)
        self.plans = plans  # the memory plan, measured once per latent shape and reused by every rollout
        self.outcome: RolloutOutcome | None = None
        self._grads: list | None = None

    @staticmethod
    def _key(run: ReNORun) -> tuple:
        return tuple(run.inputs.start.shape), run.steps

    def prepare(self, run: ReNORun) -> None:
        if not run.copying:  # the gradients accumulated so far, restored if this rollout runs again with copies
            self._grads = [None if p.grad is None else p.grad.clone() for p in self.params]

    def plan(self, run: ReNORun, patchers: list) -> RunPlan:
        key = self._key(run)
        if key not in self.plans:
            self.plans[key] = run.plan_memory(patchers)
        return self.plans[key]

    def before_retry(self, run: ReNORun) -> None:
        for p, g in zip(self.params, self._grads):
            p.grad = g

    def attempt(self, run: ReNORun, plan: RunPlan) -> torch.Tensor:
        inp = run.inputs
        rollout: Rollout = self.request.rollout
        ensemble = run.ensemble

        def chain(denoise, x):
            return rollout_chain(denoise, x, inp.spec, rollout, recompute=run.steps > 1, copy_saved=run.copying,
                                 skip=run.skip)

        with run.installed(plan):
            image, both = run.forward(inp.start, chain=chain, decode_final=rollout.target == "final")
            scores = ensemble.scores(image)
            terms = [RewardTerm(label, r.weight, r.model.offset) for label, r in zip(ensemble.labels, ensemble.rewards)]
            loss = reward_loss(self.method, {k: v.to(image.device) for k, v in scores.items()}, terms).mean()
            if loss.requires_grad:
                (loss * self.request.loss_scale).backward()
            else:  # e.g. an x0-predicting model whose trained steps all came after the stop: nothing to learn here
                log.debug("ReNO Train Reward LoRA: rollout %s carries no gradient", rollout)
        self.outcome = RolloutOutcome(float(loss.detach()), {k: float(v.detach().mean()) for k, v in scores.items()},
                                      preview_image(image.detach(), PREVIEW_SIZE) if self.request.preview else None)
        return both.detach()

    def finish(self, run: ReNORun, both: torch.Tensor, plan: RunPlan) -> RunResult:
        self.plans[self._key(run)] = plan  # with copies, when this rollout found the model updating in place
        samples, x0 = both[:, 0], both[:, 1]
        if self.request.rollout.target != "final":  # the sampling call returns the rollout's latent (unused)
            samples = run.model_sampling.inverse_noise_scaling(run.inputs.sigma_last, x0)
        return run.result(samples, x0, plan)


@dataclass
class PromptSet:
    """Prompts encoded once each, as CLIPTextEncode encodes them."""

    texts: list[str]
    conds: list


def parse_prompts(text: str) -> list[str]:
    """One prompt per line; blank lines ignored."""
    return [line.strip() for line in (text or "").splitlines() if line.strip()]


def encode_prompts(clip, texts: list[str]) -> PromptSet:
    if clip is None:
        raise RuntimeError("ReNO Train Reward LoRA: the clip input is None (a checkpoint without a text encoder?): "
                           "connect a CLIP loader")
    conds = []
    for t in texts:
        conds.append(clip.encode_from_tokens_scheduled(clip.tokenize(t)))
    return PromptSet(texts, conds)


@dataclass(frozen=True)
class Sampling:
    steps: int
    sampler: str
    scheduler: str
    cfg: float
    width: int
    height: int


def empty_latent(model, width: int, height: int) -> torch.Tensor:
    return comfy.sample.fix_empty_latent_channels(model, torch.zeros([1, 4, height // 8, width // 8]))


def trainer_sigmas(model, sampling: Sampling) -> torch.Tensor:
    return comfy.samplers.calculate_sigmas(model_sampling_of(model), sampling.scheduler, sampling.steps).cpu()


def held_out_reward(patcher, vae, rewards, prompts: PromptSet, negative, sampling: Sampling, seed: int,
                    previews: list | None = None, noise_for: Callable | None = None) -> float:
    """The mean weighted reward of the held-out prompts (one image each, fixed seeds), as a KSampler makes them
    with ``patcher``; appends the first prompt's image (h, w, 3 uint8) to ``previews``. ``noise_for(noise, positive,
    latent)`` replaces each seed's noise (the noise model's hyper-noise)."""
    latent = empty_latent(patcher, sampling.width, sampling.height)
    totals = []
    with torch.inference_mode():
        for i, (text, positive) in enumerate(zip(prompts.texts, prompts.conds)):
            noise = comfy.sample.prepare_noise(latent, seed + i)
            if noise_for is not None:
                noise = noise_for(noise, positive, latent)
            samples = comfy.sample.sample(patcher, noise, sampling.steps, sampling.cfg, sampling.sampler,
                                          sampling.scheduler, positive, negative, latent, seed=seed + i,
                                          disable_pbar=True)
            images = vae.decode(samples).movedim(-1, 1).float()
            if images.dim() == 5:
                images = images.flatten(0, 1)
            ensemble = RewardEnsemble(list(rewards), text)
            totals.append(float(ensemble.weighted_total(ensemble.scores(images)).mean()))
            if previews is not None and i == 0:
                previews.append(preview_image(images, PREVIEW_SIZE)[0])
    return sum(totals) / len(totals)


def train_reward_lora(model, vae, rewards, train_prompts: PromptSet, held_out: PromptSet | None, negative,
                      sampling: Sampling, config: TrainConfig, rank: int, existing: dict | None = None,
                      memory_mode: str = memory.AUTO, on_step: Callable | None = None,
                      held_out_previews: list | None = None) -> tuple[Adapters, TrainResult]:
    """Train a LoRA on ``model`` against ``rewards`` over ``train_prompts`` (see the module docstring)."""
    adapters = attach_adapters(model, rank, existing, seed=config.seed)
    params, plans = adapters.parameters(), {}
    evaluate = None
    if held_out is not None and held_out.texts:
        def evaluate(step: int) -> float:
            return held_out_reward(adapters.patcher, vae, rewards, held_out, negative, sampling, config.seed,
                                   held_out_previews)

    result = train_adapters(adapters, model, vae, rewards, train_prompts, negative, sampling, config, memory_mode,
                            lambda request: RolloutBody(request, config.method, params, plans), evaluate, on_step)
    return adapters, result


def train_adapters(adapters: Adapters, model, vae, rewards, train_prompts: PromptSet, negative, sampling: Sampling,
                   config: TrainConfig, memory_mode: str, make_body: Callable, evaluate: Callable | None,
                   on_step: Callable | None) -> TrainResult:
    """The trainers' loop around the run lifecycle: each rollout is one ComfyUI sampling call (``sample_custom``)
    through the pack's bridge, whose run has the body ``make_body(request)`` makes (its ``outcome`` is the
    rollout's); the training loop is ``training.reward_finetuning.train``. Done, failed or cancelled, the adapters are
    frozen and taken off the shared model."""
    mp = adapters.patcher
    sigmas = trainer_sigmas(model, sampling)
    latent = empty_latent(model, sampling.width, sampling.height)
    ensembles = [RewardEnsemble(list(rewards), t) for t in train_prompts.texts]

    def rollout(request: RolloutRequest) -> RolloutOutcome:
        bodies: list = []

        def make_run():
            bodies.append(make_body(request))
            return ReNORun(ensembles[request.prompt_index], vae, bodies[-1], memory_mode=memory_mode, model_patcher=mp,
                           chain=ChainSettings(sampling.sampler))

        # the same bridge as ReNO's samplers (no preview callback: the trainer reports per training step)
        noise = comfy.sample.prepare_noise(latent, request.noise_seed)
        comfy.sample.sample_custom(mp, noise, sampling.cfg, ReNOComfySampler(make_run), sigmas,
                                   train_prompts.conds[request.prompt_index], negative, latent, disable_pbar=True,
                                   seed=request.noise_seed)
        return bodies[-1].outcome

    try:
        with torch.inference_mode(False):
            return train(adapters.parameters(), rollout, config, len(train_prompts.texts), evaluate, on_step)
    finally:
        adapters.freeze()
        unload_training_clone(adapters)  # done or cancelled: nothing of the adapters stays on the shared model


def apply_lora(model, lora: dict, strength: float = 1.0):
    """``model`` with ``lora`` applied as core "Load LoRA Model" applies it (patched weights, nothing trainable)."""
    import comfy.sd

    patched, _ = comfy.sd.load_lora_for_models(model, None, lora, strength, 0)
    return patched


def unload_training_clone(adapters: Adapters) -> None:
    """After training (done, failed or cancelled): ComfyUI unloads the clone that carried the adapters, and the
    adapters are taken off the shared diffusion model's layers (ComfyUI's unpatch of a fully loaded model leaves
    weight wrappers in place until the next load), so nothing of the training stays on the model or holds its
    parameters."""
    loaded_models = comfy.model_management.current_loaded_models
    try:
        for loaded in list(loaded_models):
            if loaded.model is adapters.patcher:
                try:
                    loaded.model_unload()
                finally:
                    loaded_models.remove(loaded)
    finally:
        ours = {id(m) for m in adapters.modules}
        for m in adapters.patcher.model.modules():
            for attr in ("weight_function", "bias_function"):
                functions = getattr(m, attr, None)
                if functions and any(id(f) in ours for f in functions):
                    setattr(m, attr, [f for f in functions if id(f) not in ours])
