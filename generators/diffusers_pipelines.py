"""ReNO on diffusers pipelines: differentiable ``generate(noise) -> image`` for the paper's models, 1 to N steps.

Each builder supplies the pipeline's denoiser in the k-diffusion convention of ``optimizer/chain.py``
(``denoise(x, sigma) -> x0``: the network wrapped with its scheduler's parameterization), the scheduler's sigmas for
``steps`` steps and the scale that makes the noise the chain's start ``x_T``; ``generate`` is then
``decode(run_chain(...))``, the same chain (samplers euler, euler_ancestral, lcm, dpmpp_2m, ddpm; gradient exact /
drtune / last k) as the ComfyUI node's. No sampler step is written here. With one step and the scheduler's own
sampler (the default) it is the official ReNO code's single step (ExplainableML/ReNO, ``models/``):

| kind | pipeline | step | noise scaling | decode |
|---|---|---|---|---|
| ``sd-turbo`` | StableDiffusionPipeline | Euler, trailing, t = 999 (sigma_max) | x init_noise_sigma | latents / scaling_factor |
| ``sdxl-turbo`` | StableDiffusionXLPipeline | Euler ancestral, trailing, t = 999; added time ids + pooled embeds | x init_noise_sigma | (latents_mean/std aware) / scaling_factor |
| ``hyper-sdxl`` | StableDiffusionXLPipeline | LCM at t = 800 (c_skip, c_out boundary condition) | x 1 | VAE in float32, as the official code |
| ``pixart-dmd`` | PixArtAlphaPipeline | DDPM x0 prediction at t = 400 (DMD) | x 1 | latents / scaling_factor |
| ``flux-schnell`` | FluxPipeline | flow matching, sigma 1 (packed latents), no guidance | none | unpack, / scaling_factor + shift_factor |

The step column is the one-step call; the sampler that is each scheduler's own step (the default): euler (SD-Turbo,
FLUX), euler_ancestral (SDXL-Turbo), lcm (Hyper-SDXL), ddpm (PixArt DMD). With more steps the sigmas are the
scheduler's ``set_timesteps(steps)`` (FLUX: FluxPipeline's ``linspace(1, 1/steps)``); LCM and DDPM samples live on the
variance-preserving scale (``init_noise_sigma`` 1), so the chain's start is ``sqrt(1 + sigma_0^2) * noise`` and the
denoiser feeds the network ``x / sqrt(1 + sigma^2)``.

No classifier-free guidance anywhere (the official code runs cfg 1 / guidance 0). The prompt is encoded once, without
gradients (the official code re-encodes it every iteration); the pipeline's modules are frozen (``requires_grad``
False, ``eval``). The images are float32 NCHW in [0, 1], ``(x / 2 + 0.5).clamp(0, 1)`` as the official code and
``output_type="pt"`` compute them. The tests hold iteration 0 equal to ``pipe(..., latents=noise,
num_inference_steps=1, output_type="pt")`` for every kind, and several steps equal to ``optimizer.chain.run_chain`` on
the same denoiser.

Imports diffusers lazily: this module imports without it (``pip install diffusers``, the pack's ``diffusers`` extra).
"""

from __future__ import annotations

import copy
import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

import torch

from ..optimizer import ReNOConfig, ReNOResult, optimize_noise
from ..optimizer.chain import (
    SAMPLERS,
    STOCHASTIC_SAMPLERS,
    ChainSpec,
    GradientPolicy,
    draw_step_noises,
    run_chain,
)

log = logging.getLogger(__name__)


class PipelineLoadError(ValueError):
    """A diffusers folder or pipeline that cannot drive ReNO, with what to do about it."""


@dataclass(frozen=True)
class KindSpec:
    name: str
    title: str
    pipeline: str  # the diffusers pipeline class
    schedulers: tuple[str, ...]  # the scheduler classes whose parameterization and sigmas the denoiser takes
    guidance_scale: float  # what the official code passes (no classifier-free guidance either way)
    learning_rate: float  # the official default for this model (README: 10 for Hyper-SD / 1024 px)
    default_size: int | None  # None: the denoiser's sample_size x the VAE scale factor (the official choice)
    step: str


KINDS: dict[str, KindSpec] = {
    "sd-turbo": KindSpec("sd-turbo", "SD-Turbo", "StableDiffusionPipeline",
                         ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler"), 1.0, 5.0, None,
                         "one Euler step from t = 999 (sigma_max, trailing spacing)"),
    "sdxl-turbo": KindSpec("sdxl-turbo", "SDXL-Turbo", "StableDiffusionXLPipeline",
                           ("EulerAncestralDiscreteScheduler", "EulerDiscreteScheduler"), 0.0, 5.0, None,
                           "one Euler ancestral step from t = 999 (trailing spacing)"),
    "hyper-sdxl": KindSpec("hyper-sdxl", "Hyper-SDXL 1-step", "StableDiffusionXLPipeline", ("LCMScheduler",),
                           0.0, 10.0, None, "one LCM step at t = 800, VAE in float32"),
    "pixart-dmd": KindSpec("pixart-dmd", "PixArt-alpha DMD", "PixArtAlphaPipeline", ("DDPMScheduler",), 1.0, 5.0,
                           None, "x0 prediction of a DDPM step at t = 400"),
    "flux-schnell": KindSpec("flux-schnell", "FLUX.1-schnell", "FluxPipeline", ("FlowMatchEulerDiscreteScheduler",),
                             0.0, 5.0, 512, "one flow-matching Euler step from sigma 1 (packed latents)"),
}
EULER = ("EulerDiscreteScheduler", "EulerAncestralDiscreteScheduler")
HYPER_SCHEDULERS = ("LCMScheduler", "TCDScheduler")
TEXT_LENGTH = {"pixart-dmd": 120, "flux-schnell": 256}  # T5 max_sequence_length the official code uses


def _diffusers():
    try:
        import diffusers
    except ImportError as e:
        raise ImportError(
            "ReNO on diffusers pipelines needs the diffusers package: pip install 'diffusers>=0.30' "
            "(or install this pack with its 'diffusers' extra)"
        ) from e
    return diffusers


def _known() -> str:
    return ", ".join(f"{k} ({s.pipeline})" for k, s in KINDS.items())


def _check_kind(kind: str) -> KindSpec:
    spec = KINDS.get(kind)
    if spec is None:
        raise PipelineLoadError(f"unknown kind {kind!r}: choose one of {_known()}")
    return spec


# -- which model a folder or a pipeline holds ----------------------------------------------------------------------

def _read_json(path: Path, folder: Path) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise PipelineLoadError(
            f"{folder} is not a diffusers pipeline folder: {path.name} is missing there (save one with "
            "pipe.save_pretrained(folder), or download a full model repository such as stabilityai/sd-turbo)"
        ) from None
    except (OSError, ValueError) as e:
        raise PipelineLoadError(f"{path} cannot be read as JSON ({e}); re-download or re-save the pipeline") from None
    if not isinstance(data, dict):
        raise PipelineLoadError(f"{path} is not a JSON object; re-download or re-save the pipeline")
    return data


def _kind_from(pipeline_class: str, scheduler_class: str | None, where: str) -> str:
    if pipeline_class == "StableDiffusionXLPipeline":
        if scheduler_class in HYPER_SCHEDULERS:
            return "hyper-sdxl"
        if scheduler_class == "EulerAncestralDiscreteScheduler":
            return "sdxl-turbo"
        raise PipelineLoadError(
            f"{where}: an SDXL pipeline whose scheduler is {scheduler_class or 'missing'}: cannot tell SDXL-Turbo "
            "(Euler ancestral) from Hyper-SDXL 1-step (LCM). Pass kind='sdxl-turbo' or kind='hyper-sdxl'."
        )
    for kind, spec in KINDS.items():
        if spec.pipeline == pipeline_class:
            return kind
    raise PipelineLoadError(
        f"{where}: pipeline class {pipeline_class!r} is not a one-step model ReNO knows. Known kinds: {_known()}. "
        "Pass kind=... only if the folder holds one of those pipelines."
    )


def infer_kind(folder: str | Path) -> str:
    """The kind of one-step model a diffusers folder holds, from ``model_index.json`` (its ``_class_name``) and, for
    SDXL, ``scheduler/scheduler_config.json`` (LCM/TCD: Hyper-SDXL 1-step; Euler ancestral: SDXL-Turbo)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise PipelineLoadError(f"diffusers pipeline folder {folder} does not exist (or is not a folder)")
    index = _read_json(folder / "model_index.json", folder)
    pipeline_class = index.get("_class_name")
    if not isinstance(pipeline_class, str):
        raise PipelineLoadError(f"{folder / 'model_index.json'} has no '_class_name': re-save the pipeline")
    scheduler_class = None
    sched_file = folder / "scheduler" / "scheduler_config.json"
    if sched_file.is_file():
        scheduler_class = _read_json(sched_file, folder).get("_class_name")
    return _kind_from(pipeline_class, scheduler_class, str(folder))


def pipeline_kind(pipe) -> str:
    """The kind of a loaded pipeline (its class, and for SDXL its scheduler)."""
    return _kind_from(type(pipe).__name__, type(getattr(pipe, "scheduler", None)).__name__, type(pipe).__name__)


# -- loading --------------------------------------------------------------------------------------------------------

def _dtype(value) -> torch.dtype | None:
    if value is None or isinstance(value, torch.dtype):
        return value
    names = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
             "half": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}
    if str(value).lower() not in names:
        raise ValueError(f"dtype {value!r}: use float32, float16 or bfloat16")
    return names[str(value).lower()]


def _official_scheduler(pipe, kind: str, where: str) -> None:
    """Set the scheduler the official ReNO code uses for ``kind`` (it swaps SDXL-Turbo's and Hyper-SDXL's)."""
    d = _diffusers()
    sched = pipe.scheduler
    name = type(sched).__name__
    if kind == "sd-turbo":
        if name not in EULER:
            pipe.scheduler = d.EulerDiscreteScheduler.from_config(sched.config, timestep_spacing="trailing")
        elif sched.config.timestep_spacing != "trailing":
            pipe.scheduler = type(sched).from_config(sched.config, timestep_spacing="trailing")
    elif kind == "sdxl-turbo":
        pipe.scheduler = d.EulerAncestralDiscreteScheduler.from_config(sched.config, timestep_spacing="trailing")
    elif kind == "hyper-sdxl":
        if name != "LCMScheduler":
            pipe.scheduler = d.LCMScheduler.from_config(sched.config)
    elif name not in KINDS[kind].schedulers:
        source = ("the DMD scheduler (PixArt-alpha/PixArt-Alpha-DMD-XL-2-512x512, subfolder scheduler/)"
                  if kind == "pixart-dmd" else "FLUX.1-schnell's scheduler folder")
        raise PipelineLoadError(
            f"{where}: {KINDS[kind].title} needs a {' or '.join(KINDS[kind].schedulers)}, found {name}: "
            f"put {source} in the folder's scheduler/ subfolder"
        )


def _freeze(pipe) -> None:
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)
            module.eval()


def load_pipeline(folder: str | Path, kind: str | None = None, *, dtype=None, device=None):
    """Load the diffusers pipeline in ``folder`` for ReNO and return it.

    ``kind`` (one of ``KINDS``) is inferred from the folder when not given (``infer_kind``). The scheduler is set the
    way the official code sets it (SDXL-Turbo: Euler ancestral with trailing spacing; Hyper-SDXL: LCM; SD-Turbo:
    trailing spacing), Hyper-SDXL's VAE is moved to float32, and every module is frozen. ``dtype`` (torch dtype or
    "float16"/"bfloat16"/"float32") and ``device`` are applied when given.
    """
    d = _diffusers()
    folder = Path(folder)
    found = infer_kind(folder) if kind is None else None
    if kind is not None:
        spec = _check_kind(kind)
        index = _read_json(folder / "model_index.json", folder) if folder.is_dir() else None
        if index is None:
            raise PipelineLoadError(f"diffusers pipeline folder {folder} does not exist (or is not a folder)")
        if index.get("_class_name") != spec.pipeline:
            raise PipelineLoadError(
                f"{folder} holds a {index.get('_class_name')!r}, but kind={kind!r} needs a {spec.pipeline}")
    kind = kind or found
    spec = KINDS[kind]
    cls = getattr(d, spec.pipeline)
    kwargs = {}
    if dtype is not None:
        kwargs["torch_dtype"] = _dtype(dtype)
    if spec.pipeline == "StableDiffusionXLPipeline":
        kwargs["add_watermarker"] = False  # as the official code: a watermark is not differentiable
    if spec.pipeline == "StableDiffusionPipeline":
        kwargs.update(safety_checker=None, requires_safety_checker=False)
    try:
        pipe = cls.from_pretrained(str(folder), **kwargs)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PipelineLoadError(f"cannot load the {spec.title} pipeline from {folder}: {e}") from e
    _official_scheduler(pipe, kind, str(folder))
    if kind == "hyper-sdxl":
        pipe.vae.to(torch.float32)
    if device is not None:
        pipe.to(device)
    _freeze(pipe)
    log.info("ReNO: loaded %s (%s) from %s", spec.title, spec.pipeline, folder)
    return pipe


# -- the generators: a denoiser, its sigmas, optimizer/chain.py, the VAE -------------------------------------------------

@dataclass
class DiffusersGenerator:
    """``generator(noise)`` -> (B, 3, H, W) images in [0, 1] (float32; float64 for a float64 pipeline), differentiable in
    ``noise`` (B, *noise_shape[1:]): ``decode(run_chain(denoise, noise_scaling(noise), chain_spec(x), policy))``.

    ``denoise(x, sigma) -> x0``: the pipeline's denoiser in the k-diffusion convention of ``optimizer.chain`` (``x`` on
    the sigma scale ``x0 + sigma * eps``, or flow's ``(1 - sigma) x0 + sigma * noise``; ``sigma`` a (B,) tensor), the
    network wrapped with the scheduler's parameterization (epsilon, v-prediction, sample; LCM's boundary condition).
    ``sigmas``: the scheduler's ``steps + 1`` sigmas (the last one 0). ``noise_scaling(noise) -> x_T``: the scheduler's
    initial noise on the chain's scale (Euler: ``init_noise_sigma * noise``; LCM/DDPM, whose samples live on the
    variance-preserving scale with ``init_noise_sigma`` 1: ``sqrt(1 + sigma_0^2) * noise``; flow: the noise as is).
    ``sampler``/``policy``: the chain's sampler and gradient policy; a stochastic sampler's per-step noises are drawn
    from a CPU generator seeded with ``noise_seed`` after one draw the size of the start noise (float32, in step order),
    as a diffusers pipeline called with ``generator=`` draws its latents and then its steps' noise, and held fixed
    across calls: with the start noise ``torch.randn(noise_shape, generator=Generator().manual_seed(noise_seed))`` the
    steps' noises are the pipeline's for that seed (and never the start noise again).
    """

    kind: str
    height: int
    width: int
    noise_shape: tuple[int, ...]
    timestep: float  # the first step's timestep
    steps: int = 1
    sampler: str = "euler"
    policy: GradientPolicy = field(default_factory=GradientPolicy)
    sigmas: torch.Tensor | None = None
    flow: bool = False
    start_scale: float = 1.0
    noise_seed: int = 0
    info: dict = field(default_factory=dict)
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    decode: Callable[[torch.Tensor], torch.Tensor] | None = field(default=None, repr=False)
    chain_dtype: torch.dtype = torch.float32
    device: torch.device | None = None
    _noises: dict = field(default_factory=dict, repr=False)

    def noise_scaling(self, noise: torch.Tensor) -> torch.Tensor:
        """The chain's start ``x_T`` for ``noise`` (on the device, in the chain's dtype)."""
        return noise.to(device=self.device, dtype=self.chain_dtype) * self.start_scale

    def step_noises(self, x: torch.Tensor) -> list[torch.Tensor | None]:
        """The stochastic sampler's fresh noise per step for a start latent shaped as ``x`` (drawn once per shape)."""
        key = (tuple(x.shape), x.device, x.dtype)
        if key not in self._noises:
            generator = torch.Generator("cpu").manual_seed(int(self.noise_seed))
            torch.randn(x.shape, generator=generator, dtype=torch.float32)  # the start noise's draw

            def draw(sigma, sigma_next):
                return torch.randn(x.shape, generator=generator, dtype=torch.float32).to(device=x.device,
                                                                                        dtype=x.dtype)

            self._noises[key] = draw_step_noises(x, self.sampler, self.sigmas, self.noise_seed, flow=self.flow,
                                                 noise_sampler=draw)
        return self._noises[key]

    def chain_spec(self, x: torch.Tensor) -> ChainSpec:
        noises = self.step_noises(x) if self.sampler in STOCHASTIC_SAMPLERS else None
        return ChainSpec(self.sampler, self.sigmas, noises, flow=self.flow)

    def sample(self, noise: torch.Tensor) -> torch.Tensor:
        """The chain's final latent for ``noise`` (before decoding)."""
        self._check(noise)
        x = self.noise_scaling(noise)
        return run_chain(self.denoise, x, self.chain_spec(x), self.policy)[0]

    def _check(self, noise: torch.Tensor) -> None:
        if tuple(noise.shape[1:]) != tuple(self.noise_shape[1:]):
            raise ValueError(f"{KINDS[self.kind].title} at {self.width}x{self.height}: noise must have shape "
                             f"(B, {', '.join(map(str, self.noise_shape[1:]))}), got {tuple(noise.shape)}")

    def __call__(self, noise: torch.Tensor) -> torch.Tensor:
        return self.decode(self.sample(noise))


OneStepGenerator = DiffusersGenerator  # its name when it had one step only


def _x0(prediction_type: str, model_output, sample, *, sigma=None, alpha=None, who: str = ""):
    """The predicted clean latent: Euler-style (``sigma``) or DDPM-style (``alpha`` = alphas_cumprod[t])."""
    if prediction_type in ("sample", "original_sample"):
        return model_output
    if sigma is not None:
        if prediction_type == "epsilon":
            return sample - sigma * model_output
        if prediction_type == "v_prediction":
            return model_output * (-sigma / (sigma**2 + 1) ** 0.5) + sample / (sigma**2 + 1)
    else:
        beta = 1 - alpha
        if prediction_type == "epsilon":
            return (sample - beta**0.5 * model_output) / alpha**0.5
        if prediction_type == "v_prediction":
            return alpha**0.5 * sample - beta**0.5 * model_output
    raise PipelineLoadError(f"{who}: prediction_type {prediction_type!r} is not supported (epsilon, v_prediction, sample)")


def _clip_x0(sched, x0, who: str):
    cfg = sched.config
    if cfg.get("thresholding", False):
        raise PipelineLoadError(f"{who}: the scheduler's dynamic thresholding is not supported (no latent model uses it); "
                                "set thresholding=False in scheduler/scheduler_config.json")
    if cfg.get("clip_sample", False):
        r = cfg.get("clip_sample_range", 1.0)
        x0 = x0.clamp(-r, r)
    return x0


def _decode_fn(pipe, mode: str):
    vae = pipe.vae
    cfg = vae.config

    def decode(latents: torch.Tensor) -> torch.Tensor:
        if mode == "sdxl" and cfg.get("latents_mean") is not None and cfg.get("latents_std") is not None:
            c = latents.shape[1]
            mean = torch.tensor(cfg.latents_mean, device=latents.device, dtype=latents.dtype).view(1, c, 1, 1)
            std = torch.tensor(cfg.latents_std, device=latents.device, dtype=latents.dtype).view(1, c, 1, 1)
            latents = latents * std / cfg.scaling_factor + mean
        else:
            latents = latents / cfg.scaling_factor
        if mode == "flux":
            latents = latents + cfg.shift_factor
        image = vae.decode(latents.to(vae.dtype), return_dict=False)[0]
        return (image.to(torch.promote_types(image.dtype, torch.float32)) / 2 + 0.5).clamp(0, 1)

    return decode


def _check_size(kind: str, height: int, width: int, multiple: int) -> None:
    for name, v in (("height", height), ("width", width)):
        if not isinstance(v, int) or v <= 0 or v % multiple:
            raise ValueError(f"{KINDS[kind].title}: {name}={v!r} must be a positive multiple of {multiple}")


def _denoiser(pipe, kind):
    return pipe.transformer if kind in ("pixart-dmd", "flux-schnell") else pipe.unet


def _timestep_cond(pipe, unet, guidance_scale, device, dtype):
    dim = unet.config.get("time_cond_proj_dim")
    if dim is None:
        return None
    w = torch.tensor(guidance_scale - 1).repeat(1)
    return pipe.get_guidance_scale_embedding(w, embedding_dim=dim).to(device=device, dtype=dtype)


def _dims(t: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """A (B,) tensor shaped to broadcast against ``x`` (B, ...)."""
    return t.reshape(t.shape[0], *([1] * (x.ndim - 1)))


class _Table:
    """The schedule's step sigmas and, per step, what the denoiser needs there (its timestep, alphas_cumprod, ...): the
    chain calls the denoiser at those sigmas only, so a (B,) sigma is looked up (nearest entry), not converted."""

    def __init__(self, sigmas, **columns):
        self.sigmas = torch.as_tensor(sigmas).detach().to("cpu", torch.float64)
        self.columns = {k: torch.as_tensor(v).detach().cpu() for k, v in columns.items()}
        self._moved: dict = {}

    def index(self, sigma: torch.Tensor) -> torch.Tensor:
        table = self.sigmas.to(device=sigma.device, dtype=sigma.dtype)
        return (table[None, :] - sigma.detach()[:, None]).abs().argmin(1)

    def get(self, name: str, index: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
        col = self.columns[name]
        key = (name, index.device, dtype)
        if key not in self._moved:
            self._moved[key] = col.to(device=index.device, dtype=dtype or col.dtype)
        return self._moved[key][index]


def _vp_sigmas(sched, timesteps) -> tuple[torch.Tensor, torch.Tensor]:
    """alphas_cumprod at ``timesteps`` and the chain's sigmas for them, ``sqrt((1 - a) / a)``, then 0 (float64)."""
    acp = sched.alphas_cumprod.to(torch.float64)[torch.as_tensor(timesteps).long().cpu()]
    return acp, torch.cat([((1 - acp) / acp).sqrt(), acp.new_zeros(1)])


@dataclass(frozen=True)
class _Parts:
    """What a builder hands ``build_generator``: the denoiser in the chain's convention and the schedule it runs."""

    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    skip: Callable[[torch.Tensor], torch.Tensor]  # d x0 / d x with the network's output held fixed (drtune)
    sigmas: torch.Tensor  # steps + 1, float64, on the CPU
    start_scale: float  # x_T = start_scale * noise
    flow: bool
    sampler: str  # the chain's sampler that is the scheduler's own step (the default)
    decode: Callable[[torch.Tensor], torch.Tensor]
    shape: tuple[int, ...]
    timestep: float
    info: dict


def _wrap(table: _Table, network, pre, post) -> tuple[Callable, Callable]:
    """``denoise(x, sigma) = post(x, network(pre(x, sigma, i), i), sigma, i)`` (``i``: the step of ``sigma``) and its
    skip coefficient ``post(1, 0, sigma, i)`` (every parameterization is linear in the sample and the network's
    output; the clip of x0 is left out)."""

    def denoise(x, sigma):
        i = table.index(sigma)
        out = network(pre(x, sigma, i), i, x.shape[0])
        return post(x, out.to(x.dtype), sigma, i, True)

    def skip(sigma):
        i = table.index(sigma)
        return post(torch.ones_like(sigma), torch.zeros_like(sigma), sigma, i, False)

    return denoise, skip


def _build_unet(pipe, prompt, kind, height, width, device, dtype, steps):
    spec = KINDS[kind]
    unet = pipe.unet
    sched = copy.deepcopy(pipe.scheduler)  # never touch the pipeline's own scheduler state
    who = f"{spec.title} ({type(sched).__name__})"
    name = type(sched).__name__
    if name not in spec.schedulers:
        raise PipelineLoadError(f"{who}: needs a {' or '.join(spec.schedulers)} (load the folder with load_pipeline, "
                                "which sets the official scheduler)")
    vsf = pipe.vae_scale_factor
    shape = (1, unet.config.in_channels, height // vsf, width // vsf)

    with torch.no_grad():
        if kind == "sd-turbo":
            embeds, _ = pipe.encode_prompt(prompt, device, 1, False)
            added = None
        else:
            embeds, _, pooled, _ = pipe.encode_prompt(prompt=prompt, device=device, num_images_per_prompt=1,
                                                      do_classifier_free_guidance=False)
            time_ids = torch.tensor([[height, width, 0, 0, height, width]], dtype=embeds.dtype, device=device)
            added = {"text_embeds": pooled.to(device), "time_ids": time_ids}
        embeds = embeds.to(device=device, dtype=dtype)
        cond = _timestep_cond(pipe, unet, spec.guidance_scale, device, dtype)
    prediction = sched.config.prediction_type

    def network(x_in, i, b):
        kwargs = {}
        if added is not None:
            kwargs["added_cond_kwargs"] = {k: v.expand(b, *v.shape[1:]) for k, v in added.items()}
        t = table.get("t", i)
        return unet(x_in.to(dtype), t, encoder_hidden_states=embeds.expand(b, *embeds.shape[1:]),
                    timestep_cond=None if cond is None else cond.expand(b, -1), return_dict=False, **kwargs)[0]

    if name in EULER:
        if sched.config.timestep_spacing != "trailing":
            raise PipelineLoadError(f"{who}: the official one-step call starts at t = 999 with 'trailing' timestep "
                                    f"spacing, the scheduler has {sched.config.timestep_spacing!r}: load the folder "
                                    "with load_pipeline, or set timestep_spacing='trailing'")
        sched.set_timesteps(steps, device="cpu")
        sigmas = sched.sigmas.to(torch.float64)
        table = _Table(sigmas[:-1], t=sched.timesteps)
        start = float(sched.init_noise_sigma)
        sampler = "euler_ancestral" if name == "EulerAncestralDiscreteScheduler" else "euler"

        def pre(x, sigma, i):  # the scheduler's scale_model_input
            return x / (_dims(sigma, x) ** 2 + 1) ** 0.5

        def post(x, out, sigma, i, clip):
            return _x0(prediction, out, x, sigma=_dims(sigma, x), who=who)
    else:  # LCM: Hyper-SDXL 1-step at t = 800 (the official call); more steps at the scheduler's own timesteps
        if steps == 1:
            sched.set_timesteps(timesteps=[800], device="cpu")
        else:
            sched.set_timesteps(steps, device="cpu")
        acp, sigmas = _vp_sigmas(sched, sched.timesteps)
        scalings = [sched.get_scalings_for_boundary_condition_discrete(t) for t in sched.timesteps]
        table = _Table(sigmas[:-1], t=sched.timesteps, a=acp, sqrt_a=acp.sqrt(),
                       c_skip=torch.tensor([float(s) for s, _ in scalings], dtype=torch.float64),
                       c_out=torch.tensor([float(c) for _, c in scalings], dtype=torch.float64))
        start = float(sched.init_noise_sigma) * float((1 + sigmas[0] ** 2).sqrt())  # the VP sample on sigma's scale
        sampler = "lcm"
        _clip_x0(sched, torch.zeros(()), who)  # refuse thresholding at build time

        def pre(x, sigma, i):  # the scheduler's sample: the variance-preserving latent
            return x * _dims(table.get("sqrt_a", i, x.dtype), x)

        def post(x, out, sigma, i, clip):
            x_vp = x * _dims(table.get("sqrt_a", i, x.dtype), x)
            x0 = _x0(prediction, out, x_vp, alpha=_dims(table.get("a", i, x.dtype), x), who=who)
            if clip:
                x0 = _clip_x0(sched, x0, who)
            return _dims(table.get("c_out", i, x.dtype), x) * x0 + _dims(table.get("c_skip", i, x.dtype), x) * x_vp

    if kind == "hyper-sdxl" or (pipe.vae.dtype == torch.float16 and pipe.vae.config.get("force_upcast", False)):
        pipe.vae.to(torch.float32)  # official for Hyper-SDXL; diffusers' upcast for an fp16 VAE that needs it
    decode = _decode_fn(pipe, "sd" if kind == "sd-turbo" else "sdxl")
    denoise, skip = _wrap(table, network, pre, post)
    return _Parts(denoise, skip, sigmas, start, False, sampler, decode, shape, float(sched.timesteps[0]),
                  {"init_noise_sigma": float(sched.init_noise_sigma), "prediction_type": prediction, "scheduler": name,
                   "vae_dtype": str(pipe.vae.dtype)})


def _build_pixart(pipe, prompt, kind, height, width, device, dtype, steps):
    spec = KINDS[kind]
    tr = pipe.transformer
    sched = copy.deepcopy(pipe.scheduler)
    who = f"{spec.title} ({type(sched).__name__})"
    if type(sched).__name__ not in spec.schedulers:
        raise PipelineLoadError(f"{who}: needs the DMD DDPMScheduler (PixArt-alpha/PixArt-Alpha-DMD-XL-2-512x512, "
                                "subfolder scheduler/)")
    vsf = pipe.vae_scale_factor
    shape = (1, tr.config.in_channels, height // vsf, width // vsf)
    with torch.no_grad():
        embeds, mask, _, _ = pipe.encode_prompt(prompt, do_classifier_free_guidance=False, negative_prompt="",
                                                num_images_per_prompt=1, device=device, clean_caption=False,
                                                max_sequence_length=TEXT_LENGTH[kind])
        embeds = embeds.to(device=device, dtype=dtype)
        mask = mask.to(device)
    added = {"resolution": None, "aspect_ratio": None}
    if tr.config.sample_size == 128:  # PixArt 1024's micro-conditions (the pipeline's rule)
        added = {"resolution": torch.tensor([[height, width]], dtype=dtype, device=device),
                 "aspect_ratio": torch.tensor([[float(height / width)]], dtype=dtype, device=device)}
    if steps == 1:  # DMD's one step: x0 predicted at t = 400 from pure noise
        sched.set_timesteps(timesteps=[400], device="cpu")
    else:
        sched.set_timesteps(steps, device="cpu")
    acp, sigmas = _vp_sigmas(sched, sched.timesteps)
    table = _Table(sigmas[:-1], t=sched.timesteps, a=acp, sqrt_a=acp.sqrt())
    start = float(sched.init_noise_sigma) * float((1 + sigmas[0] ** 2).sqrt())
    learned_sigma = tr.config.out_channels // 2 == tr.config.in_channels
    prediction = sched.config.prediction_type
    _clip_x0(sched, torch.zeros(()), who)  # refuse thresholding at build time

    def network(x_in, i, b):
        cond = {k: (None if v is None else v.expand(b, -1)) for k, v in added.items()}
        pred = tr(x_in.to(dtype), encoder_hidden_states=embeds.expand(b, *embeds.shape[1:]),
                  encoder_attention_mask=mask.expand(b, *mask.shape[1:]), timestep=table.get("t", i),
                  added_cond_kwargs=cond, return_dict=False)[0]
        return pred.chunk(2, dim=1)[0] if learned_sigma else pred

    def pre(x, sigma, i):
        return x * _dims(table.get("sqrt_a", i, x.dtype), x)

    def post(x, out, sigma, i, clip):
        x0 = _x0(prediction, out, x * _dims(table.get("sqrt_a", i, x.dtype), x),
                 alpha=_dims(table.get("a", i, x.dtype), x), who=who)
        return _clip_x0(sched, x0, who) if clip else x0

    denoise, skip = _wrap(table, network, pre, post)
    return _Parts(denoise, skip, sigmas, start, False, "ddpm", _decode_fn(pipe, "sd"), shape,
                  float(sched.timesteps[0]),
                  {"init_noise_sigma": float(sched.init_noise_sigma), "prediction_type": prediction,
                   "scheduler": type(sched).__name__, "learned_sigma": learned_sigma})


def _build_flux(pipe, prompt, kind, height, width, device, dtype, steps):
    import numpy as np

    spec = KINDS[kind]
    tr = pipe.transformer
    sched = copy.deepcopy(pipe.scheduler)
    who = f"{spec.title} ({type(sched).__name__})"
    if type(sched).__name__ not in spec.schedulers:
        raise PipelineLoadError(f"{who}: needs a FlowMatchEulerDiscreteScheduler")
    with torch.no_grad():
        embeds, pooled, text_ids = pipe.encode_prompt(prompt=prompt, prompt_2=None, device=device,
                                                      num_images_per_prompt=1,
                                                      max_sequence_length=TEXT_LENGTH[kind])
        embeds, pooled = embeds.to(device=device, dtype=dtype), pooled.to(device=device, dtype=dtype)
        probe, image_ids = pipe.prepare_latents(1, tr.config.in_channels // 4, height, width, dtype, device,
                                                torch.Generator("cpu").manual_seed(0), None)
    shape = tuple(probe.shape)
    cfg = sched.config
    mu = None
    if cfg.get("use_dynamic_shifting", False):
        from diffusers.pipelines.flux.pipeline_flux import calculate_shift

        mu = calculate_shift(shape[1], cfg.get("base_image_seq_len", 256), cfg.get("max_image_seq_len", 4096),
                             cfg.get("base_shift", 0.5), cfg.get("max_shift", 1.15))
    if cfg.get("use_flow_sigmas", False):
        sched.set_timesteps(steps, device="cpu", mu=mu)
    else:  # FluxPipeline's schedule
        sched.set_timesteps(sigmas=np.linspace(1.0, 1 / steps, steps), device="cpu", mu=mu)
    sigmas = sched.sigmas.to(torch.float64)
    table = _Table(sigmas[:-1], t=sched.timesteps)
    guidance = None
    if tr.config.get("guidance_embeds", False):
        guidance = torch.full([1], spec.guidance_scale, device=device, dtype=torch.float32)
    decode_latents = _decode_fn(pipe, "flux")

    def network(x_in, i, b):
        t_model = (table.get("t", i) / 1000).to(dtype)
        return tr(hidden_states=x_in.to(dtype), timestep=t_model,
                  guidance=None if guidance is None else guidance.expand(b),
                  pooled_projections=pooled.expand(b, -1), encoder_hidden_states=embeds.expand(b, *embeds.shape[1:]),
                  txt_ids=text_ids, img_ids=image_ids, return_dict=False)[0]

    def pre(x, sigma, i):
        return x

    def post(x, out, sigma, i, clip):  # the velocity: x0 = x - sigma * v
        return x - _dims(sigma, x) * out

    def decode(latents):
        return decode_latents(pipe._unpack_latents(latents, height, width, pipe.vae_scale_factor))

    denoise, skip = _wrap(table, network, pre, post)
    return _Parts(denoise, skip, sigmas, 1.0, True, "euler", decode, shape, float(sched.timesteps[0]),
                  {"sigma": float(sigmas[0]), "mu": mu, "scheduler": type(sched).__name__,
                   "guidance": guidance is not None})


def build_generator(pipe, prompt: str, *, kind: str | None = None, height: int | None = None, width: int | None = None,
                    device=None, dtype=None, gradient_checkpointing: bool = False, steps: int = 1,
                    sampler: str | None = None, gradient: str = "exact", gradient_steps: int = 1, noise_seed: int = 0):
    """``(generate, noise_shape)`` for a loaded diffusers pipeline and one prompt.

    ``generate(noise)`` maps noise of shape ``(B, *noise_shape[1:])`` to (B, 3, height, width) float32 images in
    [0, 1] with gradients to the noise; ``noise_shape`` is for B = 1 (FLUX: packed latents). The prompt embeddings
    are computed here, once, without gradients; every pipeline module is frozen. ``kind`` defaults to
    ``pipeline_kind(pipe)``; ``height``/``width`` to the official resolution (the denoiser's sample size x the VAE
    scale factor; FLUX: 512); ``device`` to the pipeline's; ``dtype`` (of the denoiser's inputs) to the denoiser's.
    ``gradient_checkpointing`` turns on the denoiser's and the VAE's (the official code does, to save memory).

    The sampling is ``optimizer.chain``'s (as the ComfyUI node's): ``steps`` of the scheduler's schedule (1: the official
    one-step call), ``sampler`` one of ``optimizer.chain.SAMPLERS`` (default: the scheduler's own step: euler for
    SD-Turbo and FLUX, euler_ancestral for SDXL-Turbo, lcm for Hyper-SDXL, ddpm for PixArt DMD), ``gradient``
    ``exact`` / ``drtune`` / ``last k`` with ``gradient_steps`` its k (``GradientPolicy``; with several steps each step
    is recomputed in the backward pass). A stochastic sampler's step noises come from ``noise_seed``, continuing the
    stream that drew the start noise (see ``DiffusersGenerator``).
    """
    _diffusers()
    if not isinstance(prompt, str):
        raise ValueError(f"prompt must be a string, got {type(prompt).__name__}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps={steps!r}: must be a whole number >= 1")
    if sampler is not None and sampler not in SAMPLERS:
        raise ValueError(f"sampler={sampler!r}: the sampling chain has {', '.join(SAMPLERS)}")
    policy = GradientPolicy(gradient, gradient_steps)  # an unknown mode or a bad k fails here, before any work
    kind = kind or pipeline_kind(pipe)
    spec = _check_kind(kind)
    if type(pipe).__name__ != spec.pipeline:
        raise PipelineLoadError(f"kind={kind!r} needs a {spec.pipeline}, got a {type(pipe).__name__}")
    den = _denoiser(pipe, kind)
    vsf = pipe.vae_scale_factor
    if spec.default_size is not None:
        size = spec.default_size
    else:
        size = int(den.config.sample_size) * vsf
    height, width = height or size, width or size
    _check_size(kind, height, width, max(8, vsf * 2) if kind == "flux-schnell" else 8)
    device = torch.device(device) if device is not None else pipe._execution_device
    dtype = _dtype(dtype) or den.dtype
    chain_dtype = torch.float64 if dtype == torch.float64 else torch.float32  # the latents between the steps
    _freeze(pipe)
    if gradient_checkpointing:
        for m in (den, pipe.vae):
            if getattr(m, "_supports_gradient_checkpointing", False):
                m.enable_gradient_checkpointing()
    builder = {"pixart-dmd": _build_pixart, "flux-schnell": _build_flux}.get(kind, _build_unet)
    parts = builder(pipe, prompt, kind, height, width, device, dtype, steps)
    policy = GradientPolicy(policy.mode, policy.k, recompute=steps > 1, skip=parts.skip)
    sampler = sampler or parts.sampler
    if sampler == "lcm" and policy.mode == "last_k" and policy.k < steps:
        raise ValueError(f"sampler 'lcm' with gradient 'last k' (k = {policy.k}) over {steps} steps: each lcm step starts "
                         "from the previous step's prediction, which last k detaches, so no gradient reaches the noise; "
                         "use gradient 'exact' or 'drtune', or gradient_steps >= steps")
    gen = DiffusersGenerator(
        kind=kind, height=height, width=width, noise_shape=tuple(parts.shape), timestep=parts.timestep, steps=steps,
        sampler=sampler, policy=policy, sigmas=parts.sigmas, flow=parts.flow, start_scale=parts.start_scale,
        noise_seed=int(noise_seed),
        info={"step": spec.step if steps == 1 and sampler == parts.sampler else
              f"{steps} step(s) of the chain's {sampler}", "dtype": str(dtype), "steps": steps, "sampler": sampler,
              "gradient": policy.mode, "gradient_steps": policy.k, "sigmas": [float(s) for s in parts.sigmas],
              **parts.info},
        denoise=parts.denoise, decode=parts.decode, chain_dtype=chain_dtype, device=device)
    return gen, gen.noise_shape

# -- one runner item ----------------------------------------------------------------------------------------------------

OPTION_KEYS = ("kind", "height", "width", "device", "dtype", "gradient_checkpointing", "steps", "sampler", "gradient",
               "gradient_steps", "callback", "config",
               *(f.name for f in fields(ReNOConfig)))


@dataclass
class DiffusersItemResult:
    """One (prompt, seed) optimized on a diffusers pipeline: ``result`` is ``optimize_noise``'s."""

    kind: str
    prompt: str
    seed: int
    height: int
    width: int
    noise_shape: tuple[int, ...]
    config: ReNOConfig
    result: ReNOResult
    initial_image: torch.Tensor  # (1, 3, H, W) in [0, 1]: iteration 0, the plain (one- or N-step) image
    best_image: torch.Tensor
    initial_loss: float
    best_loss: float
    best_iteration: int
    initial_scores: dict[str, float]
    best_scores: dict[str, float]
    seconds: float

    def to_dict(self) -> dict:
        """Everything but the tensors, JSON-ready (per-iteration records included)."""
        return {
            "kind": self.kind, "prompt": self.prompt, "seed": self.seed, "height": self.height, "width": self.width,
            "noise_shape": list(self.noise_shape), "config": asdict(self.config),
            "initial_loss": self.initial_loss, "best_loss": self.best_loss, "best_iteration": self.best_iteration,
            "initial_scores": self.initial_scores, "best_scores": self.best_scores, "seconds": self.seconds,
            "iterations_run": self.result.iterations_run, "stop_reason": self.result.stop_reason,
            "records": [r.to_dict() for r in self.result.records],
        }


def _objective(rewards, prompt: str):
    from ..reward_loaders import RewardEnsemble, WeightedReward

    if isinstance(rewards, Sequence) and not isinstance(rewards, (str, bytes)):
        if not rewards or not all(isinstance(r, WeightedReward) for r in rewards):
            raise ValueError("rewards: pass a RewardEnsemble, a non-empty list of WeightedReward, or a callable "
                             "objective(images) -> (loss (B,), {name: score (B,)})")
        rewards = RewardEnsemble(list(rewards), prompt)
    if not callable(rewards):
        raise ValueError(f"rewards: {type(rewards).__name__} is not a RewardEnsemble, a list of WeightedReward or a "
                         "callable objective")
    own = getattr(rewards, "prompt", None)
    if isinstance(own, str) and own != prompt:
        raise ValueError(f"rewards score the prompt {own!r}, but the item's prompt is {prompt!r}: build the "
                         "RewardEnsemble for this prompt (or pass the list of WeightedReward)")
    prepare = getattr(rewards, "prepare", None)
    if callable(prepare):
        prepare()
    return rewards


def run_diffusers_item(folder_or_pipe, prompt: str, seed: int, rewards, options: Mapping | None = None
                       ) -> DiffusersItemResult:
    """Optimize one prompt's noise with ReNO on a diffusers one-step model and return both ends.

    ``folder_or_pipe``: a diffusers folder (loaded with ``load_pipeline``) or a loaded pipeline. ``rewards``: a
    ``RewardEnsemble`` for ``prompt``, a list of ``WeightedReward``, or any ``objective(images) -> (loss, scores)``.
    ``options`` (all optional): ``kind``, ``height``, ``width``, ``device``, ``dtype``, ``gradient_checkpointing``,
    ``steps``, ``sampler``, ``gradient``, ``gradient_steps`` (``build_generator``'s sampling chain; a stochastic
    sampler's step noises are drawn from ``seed``), ``callback`` (``optimize_noise``'s), ``config`` (a ``ReNOConfig``) or its fields one by one (``iterations``,
    ``learning_rate``, ...; the learning rate defaults to the model's official one: 10 for Hyper-SDXL, else 5).
    The noise is ``torch.randn(noise_shape)`` from a CPU generator seeded with ``seed``, in float32 (the same on
    every device), then moved to the device.
    """
    options = dict(options or {})
    unknown = sorted(set(options) - set(OPTION_KEYS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}: valid options are {', '.join(OPTION_KEYS)}")
    if not isinstance(seed, int) or isinstance(seed, bool) or seed < 0:
        raise ValueError(f"seed={seed!r}: must be an integer >= 0")
    kind = options.get("kind")
    if isinstance(folder_or_pipe, (str, Path)):
        pipe = load_pipeline(folder_or_pipe, kind, dtype=options.get("dtype"), device=options.get("device"))
    else:
        pipe = folder_or_pipe
    kind = kind or pipeline_kind(pipe)
    spec = _check_kind(kind)
    config = options.get("config")
    overrides = {k: options[k] for k in (f.name for f in fields(ReNOConfig)) if k in options}
    if config is None:
        config = ReNOConfig(**{"learning_rate": spec.learning_rate, **overrides})
    elif overrides:
        config = ReNOConfig(**{**asdict(config), **overrides})
    objective = _objective(rewards, prompt)
    generate, shape = build_generator(pipe, prompt, kind=kind, height=options.get("height"),
                                      width=options.get("width"), device=options.get("device"),
                                      dtype=options.get("dtype"),
                                      gradient_checkpointing=bool(options.get("gradient_checkpointing", False)),
                                      steps=options.get("steps", 1), sampler=options.get("sampler"),
                                      gradient=options.get("gradient", "exact"),
                                      gradient_steps=options.get("gradient_steps", 1), noise_seed=seed)
    device = torch.device(options["device"]) if options.get("device") is not None else pipe._execution_device
    noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(seed), dtype=torch.float32).to(device)
    first: list[torch.Tensor] = []
    user_callback = options.get("callback")

    def callback(record, image):
        if record.iteration == 0:
            first.append(image.detach().float().cpu())
        if user_callback is not None:
            user_callback(record, image)

    start = time.perf_counter()
    with torch.inference_mode(False), torch.enable_grad():
        result = optimize_noise(generate, objective, noise, config, callback=callback)
    seconds = time.perf_counter() - start
    best = result.best_iteration[0]
    rec0, rec_best = result.records[0], result.records[best]
    return DiffusersItemResult(
        kind=kind, prompt=prompt, seed=seed, height=generate.height, width=generate.width, noise_shape=shape,
        config=config, result=result, initial_image=first[0], best_image=result.best_image.detach().float().cpu(),
        initial_loss=rec0.loss[0], best_loss=result.best_loss[0], best_iteration=best,
        initial_scores={k: v[0] for k, v in rec0.scores.items()},
        best_scores={k: v[0] for k, v in rec_best.scores.items()},
        seconds=seconds,
    )

