"""Full-size diffusion models, VAE, conditioning and reward stack with random weights, for scripts/benchmark.py.

Everything is built through the running ComfyUI engine's own classes, the way its checkpoint loader builds
them, so the ReNO node sees what it would see with real files; only the weights are random:

* MODEL: ``comfy.supported_models.SD20`` (SD 2.1-base UNet: epsilon prediction, 865,910,724 parameters) or
  ``comfy.supported_models.SDXL`` (SDXL base UNet, 2,567,463,684 parameters), found from the UNet config by
  ComfyUI's own ``model_detection.model_config_from_unet_config``, created directly on the device in the
  benchmark's dtype (``get_model(..., device=...)``, as ComfyUI does when the model fits on the GPU) and
  wrapped in a ``comfy.model_patcher.ModelPatcher``. ComfyUI's ops leave weights uninitialised; they are
  drawn on the device: normal(0, 0.02), norm weights 1, biases 0.
* VAE: ``comfy.sd.VAE(sd=...)`` given a random state dict in the real SD VAE key format (ch 128,
  ch_mult 1-2-4-4, 2 res blocks, 4 latent channels; 83,653,863 parameters), so ComfyUI detects it as it
  detects a real file. SDXL uses the same architecture (its latent format is carried by the MODEL).
* CONDITIONING: random tensors in ComfyUI's format: SD 2.1 ``[[(1, 77, 1024), {}]]``; SDXL
  ``[[(1, 77, 2048), {"pooled_output": (1, 1280), "width", "height", "crop_w", "crop_h", "target_width",
  "target_height"}]]`` as CLIPTextEncodeSDXL gives (the keys ``model_base.SDXL.encode_adm`` reads).
* Rewards: the full-size architectures of scripts/bench_rewards.py ``full_models`` (the pack's own classes,
  default random init), built on the device, handed to ComfyUI's memory manager with the pack's
  ``reward_patcher`` (which casts the towers to bf16/fp16 on a GPU) and stacked as ``WeightedReward``.

Import only after the engine is booted (``comfy`` must be importable).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import torch

#: UNet configs as ComfyUI's model_detection derives them from the real checkpoints (SD21 / SDXL there).
SD21_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "adm_in_channels": None, "in_channels": 4, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
    "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
    "use_linear_in_transformer": True, "context_dim": 1024, "num_head_channels": 64,
    "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
SDXL_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
    "num_classes": "sequential", "adm_in_channels": 2816, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
    "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048, "num_head_channels": 64,
    "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}
#: the SD VAE (comfy.sd.VAE's default SD1.x/SD2.x/SDXL configuration)
VAE_DDCONFIG = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
                "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


@dataclass(frozen=True)
class Arch:
    name: str  # "sd21" / "sdxl"
    label: str
    unet_config: dict
    comfy_class: str  # the comfy.supported_models class ComfyUI must detect
    params: int  # parameters of the real UNet
    context_dim: int
    pooled_dim: int | None  # SDXL's pooled text embedding


ARCHS = {
    "sd21": Arch("sd21", "SD 2.1 UNet", SD21_UNET, "SD20", 865_910_724, 1024, None),
    "sdxl": Arch("sdxl", "SDXL UNet", SDXL_UNET, "SDXL", 2_567_463_684, 2048, 1280),
}
VAE_PARAMS = 83_653_863


@dataclass(frozen=True)
class ModelSpec:
    """A benchmark target: an architecture at a default size and learning rate."""

    name: str
    title: str
    arch: str
    size: int
    learning_rate: float


MODELS = {
    "sd-turbo": ModelSpec("sd-turbo", "SD-Turbo", "sd21", 512, 5.0),
    "sdxl-turbo": ModelSpec("sdxl-turbo", "SDXL-Turbo", "sdxl", 512, 5.0),
    "hyper-sdxl": ModelSpec("hyper-sdxl", "Hyper-SDXL", "sdxl", 1024, 10.0),
}

INIT_STD = 0.02


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _norm_types() -> tuple[type, ...]:
    return (torch.nn.GroupNorm, torch.nn.LayerNorm, torch.nn.BatchNorm2d)


@torch.no_grad()
def init_random_(module: torch.nn.Module, seed: int, std: float = INIT_STD) -> None:
    """In-place random weights where the parameters live (the GPU: no CPU-side init of billions of values)."""
    gens: dict = {}
    norms = _norm_types()
    for mod in module.modules():
        is_norm = isinstance(mod, norms)
        for name, p in mod.named_parameters(recurse=False):
            if name == "bias":
                p.zero_()
            elif is_norm or p.ndim == 1:
                p.fill_(1.0)
            else:
                gen = gens.get(p.device)
                if gen is None:
                    gen = gens[p.device] = torch.Generator(device=p.device).manual_seed(seed)
                p.normal_(0.0, std, generator=gen)
        for b in mod.buffers(recurse=False):
            if b.is_floating_point() and b.numel() and not torch.isfinite(b).all():
                b.zero_()  # uninitialised (torch.empty) buffers: real checkpoints would load them


def detect_config(arch: Arch, dtype: torch.dtype, device: torch.device):
    """The ``supported_models`` config ComfyUI's detection picks for this UNet config, set to ``dtype``."""
    import comfy.model_detection
    import comfy.model_management as mm

    unet_config = dict(arch.unet_config, dtype=dtype)
    model_config = comfy.model_detection.model_config_from_unet_config(unet_config)
    found = type(model_config).__name__ if model_config is not None else None
    if found != arch.comfy_class:
        raise RuntimeError(f"ComfyUI detects the {arch.label} config as {found}, expected {arch.comfy_class}")
    manual_cast = mm.unet_manual_cast(dtype, device, model_config.supported_inference_dtypes)
    model_config.set_inference_dtype(dtype, manual_cast)
    return model_config


def model_type_keys(arch: Arch) -> dict[str, torch.Tensor]:
    """The state-dict entries ``model_type`` reads to tell epsilon from v-prediction: SD 2.x checks the std
    of one norm bias (the 2024 engine reads it unconditionally); zero biases (our init) mean epsilon, as in
    SD 2.1-base and SD-Turbo. SDXL reads only optional keys."""
    if arch.name == "sd21":
        return {"output_blocks.11.1.transformer_blocks.0.norm1.bias": torch.zeros(arch.unet_config["model_channels"])}
    return {}


def count_unet_params(arch: Arch) -> int:
    """Parameters of the UNet ComfyUI builds for ``arch`` (on the meta device: nothing allocated)."""
    model_config = detect_config(arch, torch.float32, torch.device("cpu"))
    keys = model_type_keys(arch)
    with torch.device("meta"):
        model = model_config.get_model(keys, device=torch.device("meta"))
    return count_params(model.diffusion_model)


def build_model(arch: Arch, device: torch.device, dtype: torch.dtype, seed: int = 0):
    """MODEL: the UNet built on ``device`` in ``dtype`` with random weights, in a ModelPatcher.

    Built under inference mode, as ComfyUI's executor runs a checkpoint loader (the node turns such weights
    into constants for its backward pass: no weight gradients)."""
    import comfy.model_management as mm
    import comfy.model_patcher

    model_config = detect_config(arch, dtype, device)
    with torch.inference_mode():
        model = model_config.get_model(model_type_keys(arch), device=device)
        init_random_(model.diffusion_model, seed)
    model.eval()
    params = count_params(model.diffusion_model)
    patcher = comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    return patcher, params


@torch.no_grad()
def random_vae_state_dict(device: torch.device, seed: int = 1) -> dict[str, torch.Tensor]:
    """A random state dict with the keys and shapes of a real SD VAE file (LDM format), made on ``device``."""
    from comfy.ldm.models.autoencoder import AutoencoderKL

    with torch.device("meta"):
        proto = AutoencoderKL(ddconfig=dict(VAE_DDCONFIG), embed_dim=VAE_DDCONFIG["z_channels"])
    gen = torch.Generator(device=device).manual_seed(seed)
    norms = _norm_types()
    sd = {}
    for mod_name, mod in proto.named_modules():
        is_norm = isinstance(mod, norms)
        for name, p in mod.named_parameters(recurse=False):
            key = f"{mod_name}.{name}" if mod_name else name
            if name == "bias":
                sd[key] = torch.zeros(p.shape, device=device)
            elif is_norm or p.ndim == 1:
                sd[key] = torch.ones(p.shape, device=device)
            else:
                sd[key] = torch.randn(p.shape, generator=gen, device=device) * INIT_STD
    return sd


def build_vae(device: torch.device, dtype: torch.dtype):
    """VAE: ``comfy.sd.VAE`` detecting a random SD VAE state dict, as it detects a real file (under inference
    mode, as the executor runs a VAE loader)."""
    import comfy.sd

    with torch.inference_mode():
        sd = random_vae_state_dict(device)
        vae = comfy.sd.VAE(sd=sd, dtype=dtype)
    del sd
    return vae, count_params(vae.first_stage_model)


def conditioning(arch: Arch, size: int, seed: int = 2):
    """Random positive conditioning in the format the architecture's text encoders give."""
    gen = torch.Generator().manual_seed(seed)
    context = torch.randn(1, 77, arch.context_dim, generator=gen)
    extra: dict = {}
    if arch.pooled_dim is not None:  # as CLIPTextEncodeSDXL
        extra = {"pooled_output": torch.randn(1, arch.pooled_dim, generator=gen), "width": size, "height": size,
                 "crop_w": 0, "crop_h": 0, "target_width": size, "target_height": size}
    return [[context, extra]]


def adm_input(model_patcher, cond) -> torch.Tensor | None:
    """The UNet's ``y`` (ADM) input for ``cond``, as the model computes it (None without ADM)."""
    inner = model_patcher.model
    if not getattr(inner, "adm_channels", 0):
        return None
    return inner.encode_adm(**cond[0][1], device=torch.device("cpu"))


# -- rewards -------------------------------------------------------------------------------------------

TOKENIZER_SOURCES = ("imagereward", "hpsv2.1", "pickscore")  # tiny rewards whose tokenizers full_models reuses


def alias_pack(pack) -> None:
    """Make ``reno_pack.*`` (the name scripts/bench_rewards.py imports) the pack modules ComfyUI loaded,
    so the full-size rewards are built from the very classes the node uses."""
    import importlib

    for sub in ("reward_loaders.aesthetic", "reward_loaders.clip_rewards", "reward_loaders.hps",
                "reward_loaders.imagereward", "reward_loaders.open_clip_model"):
        importlib.import_module(f"{pack.__name__}.{sub}")
    prefix = pack.__name__
    existing = sys.modules.get("reno_pack")
    if existing is not None and existing is not pack:
        raise RuntimeError("another copy of the pack is already imported as reno_pack")
    for name, module in list(sys.modules.items()):
        if name == prefix or name.startswith(prefix + "."):
            sys.modules["reno_pack" + name[len(prefix):]] = module


def build_rewards(pack, names: list[str], weights: dict[str, float], tiny: dict, device: torch.device,
                  log=print) -> tuple[tuple, dict[str, int]]:
    """The full-size reward stack (``WeightedReward`` tuple, as ReNO Load Reward makes it) and parameter counts.

    ``tiny``: tiny rewards loaded by the pack (their tokenizers serve the full-size models)."""
    import time

    from bench_rewards import full_models

    alias_pack(pack)
    builders = {}
    for label, (arch, build) in full_models(tiny).items():
        for name in label.split(" / "):
            builders[name] = (arch, build)
    stack, params = [], {}
    for name in names:
        if name not in builders:
            raise ValueError(f"no full-size builder for reward {name!r} (have {', '.join(builders)})")
        arch, build = builders[name]
        start = time.perf_counter()
        with torch.inference_mode(False), torch.device(device):
            model = build().eval().requires_grad_(False)
        spec = pack.reward_loaders.REWARDS[name]
        model.name, model.offset = name, float(spec.offset)  # pickscore/clipscore, hpsv2.1/hpsv2 share a builder
        model.source = f"random weights ({arch})"
        pack.nodes.reward_nodes.reward_patcher(model)  # ComfyUI's memory manager; bf16/fp16 towers on a GPU
        params[name] = count_params(model)
        stack.append(pack.reward_loaders.WeightedReward(name, float(weights[name]), model, False))
        log(f"  reward {name}: {arch}, {params[name]:,} parameters, {model.param_dtype()}, "
            f"built on {model.param_device()} in {time.perf_counter() - start:.1f} s")
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return tuple(stack), params
