"""Random-weight SD-Turbo-, SDXL-Turbo-, FLUX.1- and Z-Image-shaped models for scripts/gpu_check.py, built through
the running ComfyUI's own classes and loaders (nothing downloaded).

Every family is one ``Family``: the ComfyUI model class that must be detected, the diffusion model's config at full
size (the values ComfyUI's ``model_detection`` derives from the real checkpoint) and at a tiny size (the ``--dry-run``),
the dtype its published file stores, the VAE's latent channels and the text encoders' output shapes.

* **Diffusion model**: the model is built on the ``meta`` device from the config (nothing allocated) to get the keys and
  shapes of its state dict; a random state dict with those keys is drawn per tensor on the device (the GPU: normal(0,
  0.02), norm scales 1, biases 0; each tensor from its own seeded generator, so every process draws the same weights)
  in the file's dtype and moved to the CPU, where a file's tensors would be; then ``comfy.sd.load_diffusion_model_state_dict``
  loads it as the UNETLoader loads a file: the host's detection, its dtype choice, ``CoreModelPatcher`` (the dynamic
  patcher when main.py enabled dynamic VRAM) and its weight assignment. Tiny shapes cannot be detected (detection
  hard-codes full-size dimensions: Z-Image is ``dim == 3840``, SD 2.x/SDXL need 320 channels), so in the dry run, and
  only there, the detected config is replaced by the family's class built from the tiny config
  (``substituted_detection``); ``full_size_layout`` checks the full-size state dict's detection on the meta device.
* **VAE**: a random state dict in the SD VAE's LDM key format (4 latent channels for SD/SDXL, 16 for FLUX.1's and
  Z-Image's ``ae``), through ``comfy.sd.VAE(sd=...)`` (detected like a file; the tiny one gets its config passed).
* **Conditioning**: random tensors in the format the family's text encoders give (shapes only matter).
* **Reward**: the LAION aesthetic predictor (CLIP ViT-L/14 + MLP; image-only, so it needs no tokenizer) from the pack's
  own classes, random weights (tiny: a 2-layer CLIP vision tower).

Import this module before torch if you like: torch and ComfyUI are imported inside the functions (the GPU check
starts ComfyUI as main.py does, which must happen before torch is imported).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import logging
import math
from dataclasses import dataclass, field

INIT_STD = 0.02
DTYPES = {"float16": "float16", "fp16": "float16", "bfloat16": "bfloat16", "bf16": "bfloat16",
          "float32": "float32", "fp32": "float32"}

# -- configs -------------------------------------------------------------------------------------------------------

_UNET_COMMON = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
                "legacy": False, "in_channels": 4, "use_temporal_attention": False, "use_temporal_resblock": False}
#: SD 2.1 UNet (SD-Turbo): ComfyUI's SD20 config, as detected from the checkpoint
SD21_UNET = {**_UNET_COMMON, "adm_in_channels": None, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
             "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
             "use_linear_in_transformer": True, "context_dim": 1024, "num_head_channels": 64,
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
#: SDXL UNet (SDXL-Turbo)
SDXL_UNET = {**_UNET_COMMON, "num_classes": "sequential", "adm_in_channels": 2816, "model_channels": 320,
             "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
             "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
             "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}
#: FLUX.1 [schnell] (no guidance embedding); txt_ids_dims is required from 0.3x on and unknown before (filtered)
FLUX1_SCHNELL = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768,
                 "context_in_dim": 4096, "hidden_size": 3072, "mlp_ratio": 4.0, "num_heads": 24, "depth": 19,
                 "depth_single_blocks": 38, "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2,
                 "qkv_bias": True, "guidance_embed": False, "txt_ids_dims": []}
#: Z-Image (Turbo): Lumina 2's NextDiT with Z-Image's modulation, as detected (dim 3840)
Z_IMAGE = {"image_model": "lumina2", "patch_size": 2, "in_channels": 16, "dim": 3840, "cap_feat_dim": 2560,
           "n_layers": 30, "n_refiner_layers": 2, "qk_norm": True, "n_heads": 30, "n_kv_heads": 30,
           "axes_dims": [32, 48, 48], "axes_lens": [1536, 512, 512], "rope_theta": 256.0,
           "ffn_dim_multiplier": 8.0 / 3.0, "z_image_modulation": True, "time_scale": 1000.0, "pad_tokens_multiple": 32}

_TINY_UNET = {**_UNET_COMMON, "image_size": 8, "adm_in_channels": None, "model_channels": 32, "num_res_blocks": [1, 1],
              "channel_mult": [1, 2], "transformer_depth": [1, 1], "transformer_depth_output": [1, 1, 1, 1],
              "transformer_depth_middle": 1, "use_linear_in_transformer": True, "context_dim": 32}
TINY_CONTEXT = 32
TINY_POOLED = 32


@dataclass(frozen=True)
class Family:
    name: str  # the case name: sd-turbo, sdxl-turbo, flux1-schnell, z-image-turbo
    title: str
    comfy_class: str  # comfy.supported_models class the host must detect
    kind: str  # "unet", "flux", "lumina"
    full: dict
    tiny: dict
    file_dtype: str  # what the published file stores (ComfyUI picks the compute dtype from it)
    size: int  # default image side at full size (what the model is run at)
    latent_channels: int
    context: tuple[int, int]  # text tokens, width of the conditioning tensor (full size)
    pooled: int | None = None  # pooled text embedding width (full size)
    sdxl_sizes: bool = False  # SDXL's size conditioning keys
    known_params: int | None = None  # parameters of the published model, where known exactly
    notes: str = ""
    tiny_overrides: dict = field(default_factory=dict)  # set on the model config after construction (tiny UNets)


FAMILIES = {
    "sd-turbo": Family("sd-turbo", "SD-Turbo", "SD20", "unet", SD21_UNET, _TINY_UNET, "float16", 512, 4, (77, 1024),
                       known_params=865_910_724, notes="SD 2.1 UNet, epsilon (zero norm biases read as SD-Turbo's eps)",
                       tiny_overrides={"num_heads": 4, "num_head_channels": -1}),
    "sdxl-turbo": Family("sdxl-turbo", "SDXL-Turbo", "SDXL", "unet", SDXL_UNET,
                         {**_TINY_UNET, "num_classes": "sequential", "adm_in_channels": TINY_POOLED + 6 * 256},
                         "float16", 512, 4, (77, 2048), pooled=1280, sdxl_sizes=True, known_params=2_567_463_684,
                         notes="SDXL UNet", tiny_overrides={"num_heads": 4, "num_head_channels": -1}),
    "flux1-schnell": Family("flux1-schnell", "FLUX.1 [schnell]", "FluxSchnell", "flux", FLUX1_SCHNELL,
                            {**FLUX1_SCHNELL, "vec_in_dim": TINY_POOLED, "context_in_dim": TINY_CONTEXT,
                             "hidden_size": 32, "mlp_ratio": 2.0, "num_heads": 2, "depth": 1, "depth_single_blocks": 1,
                             "axes_dim": [4, 6, 6]},
                            "bfloat16", 1024, 16, (256, 4096), pooled=768,
                            known_params=11_891_178_560,  # FLUX.1 [dev]'s 11,901,408,320 less its guidance_in
                            notes="12B MMDiT; T5-XXL context, CLIP-L pooled"),
    "z-image-turbo": Family("z-image-turbo", "Z-Image-Turbo", "ZImage", "lumina", Z_IMAGE,
                            {**Z_IMAGE, "dim": 256, "cap_feat_dim": TINY_CONTEXT, "n_layers": 1, "n_refiner_layers": 1,
                             "n_heads": 2, "n_kv_heads": 2},
                            "bfloat16", 1024, 16, (128, 2560),
                            notes="6B NextDiT; Qwen3-4B context (tiny: dim 256, the smallest z_image_modulation takes)"),
}
ORDER = ("sd-turbo", "sdxl-turbo", "z-image-turbo", "flux1-schnell")  # smallest first
TINY_SIZE = 64  # dry-run image side (an 8x8 latent)


def torch_dtype(name: str):
    import torch

    return getattr(torch, DTYPES[name])


def unit_roundoff(dtype) -> float:
    """u = eps/2 of a float dtype (bf16 2^-8, fp16 2^-11, fp32 2^-24)."""
    import torch

    return float(torch.finfo(dtype).eps) / 2


# -- the host's view of a config --------------------------------------------------------------------------------------

def host_config(family: Family, tiny: bool) -> dict:
    """The family's config restricted to what this ComfyUI's model class accepts (read from the class, not guessed):
    FLUX's ``FluxParams`` fields (``txt_ids_dims`` exists from 0.3x on), NextDiT's constructor parameters. A field the
    host requires and the config lacks is an error naming it (the host's model changed)."""
    config = dict(family.tiny if tiny else family.full)
    if family.kind == "flux":
        import comfy.ldm.flux.model as flux

        fields = {f.name: f for f in dataclasses.fields(flux.FluxParams)}
        config = {k: v for k, v in config.items() if k in fields or k == "image_model"}
        missing = [n for n, f in fields.items() if n not in config and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise RuntimeError(f"this ComfyUI's FluxParams requires {missing}, which the check's FLUX.1 config lacks")
    elif family.kind == "lumina":
        import comfy.ldm.lumina.model as lumina

        params = inspect.signature(lumina.NextDiT.__init__).parameters
        if not any(p.kind is inspect.Parameter.VAR_KEYWORD for p in params.values()):
            config = {k: v for k, v in config.items() if k in params}
    return config


def model_config(family: Family, tiny: bool):
    """``comfy.supported_models.<class>`` built from the family's config (what detection gives at full size)."""
    import comfy.supported_models

    cls = getattr(comfy.supported_models, family.comfy_class, None)
    if cls is None:
        raise RuntimeError(f"this ComfyUI has no comfy.supported_models.{family.comfy_class} ({family.title} is newer)")
    config = cls(host_config(family, tiny))
    if tiny:
        config.unet_config.update(family.tiny_overrides)
    return config


def _model_type_keys(family: Family) -> dict:
    """State-dict entries ``model_type`` reads: SD 2.x takes a v-prediction model from the spread of one norm bias;
    zero (our init) means epsilon, as in SD-Turbo."""
    import torch

    if family.comfy_class == "SD20":
        return {"output_blocks.11.1.transformer_blocks.0.norm1.bias": torch.zeros(1)}
    return {}


def state_dict_shapes(family: Family, tiny: bool) -> dict[str, tuple[tuple[int, ...], str]]:
    """``{key: (shape, dtype name)}`` of the diffusion model's state dict, from the model built on the meta device."""
    import torch

    config = model_config(family, tiny)
    _set_inference_dtype(config, torch.float32, None)
    model = _meta_model(config, family)
    return {k: (tuple(v.shape), str(v.dtype).replace("torch.", "")) for k, v in model.diffusion_model.state_dict().items()}


def _meta_model(config, family: Family):
    """The model of ``config`` with its diffusion model on the meta device (ComfyUI's ops take ``device``; a
    ``torch.device("meta")`` context would also put the noise schedule there, slowly); refused if anything of the
    diffusion model was allocated after all."""
    import torch

    model = config.get_model(_model_type_keys(family), "", device=torch.device("meta"))
    real = [n for n, t in [*model.diffusion_model.named_parameters(), *model.diffusion_model.named_buffers()]
            if t.device.type != "meta"]
    if real:
        raise RuntimeError(f"this ComfyUI allocated {real[:3]} of the {family.title} model outside the meta device")
    return model


def _set_inference_dtype(config, dtype, manual_cast) -> None:
    config.set_inference_dtype(dtype, manual_cast)


def full_size_layout(family: Family) -> dict:
    """The full-size state dict's layout as this ComfyUI detects it (meta tensors: nothing allocated): the detected
    class, the parameter count, and whether the detected config builds the same keys and shapes."""
    import torch

    out: dict = {"expected_class": family.comfy_class}
    try:
        shapes = state_dict_shapes(family, tiny=False)
    except Exception as exc:  # noqa: BLE001 - reported in the summary
        return {**out, "ok": False, "error": f"building the full-size {family.title} failed: {exc!r}"}
    out["params"] = sum(_numel(s) for s, _ in shapes.values())
    if family.known_params is not None:
        out["known_params"] = family.known_params
    import comfy.model_detection

    meta_sd = {k: torch.empty(s, dtype=getattr(torch, d), device="meta") for k, (s, d) in shapes.items()}
    try:
        detected = comfy.model_detection.model_config_from_unet(meta_sd, "")
    except Exception as exc:  # noqa: BLE001
        return {**out, "ok": False, "error": f"detection failed on the full-size layout: {exc!r}"}
    out["detected_class"] = type(detected).__name__ if detected is not None else None
    if detected is not None:
        _set_inference_dtype(detected, torch.float32, None)
        model = _meta_model(detected, family)
        got = {k: tuple(v.shape) for k, v in model.diffusion_model.state_dict().items()}
        want = {k: s for k, (s, _) in shapes.items()}
        out["detected_layout_matches"] = got == want
        if got != want:
            out["layout_differences"] = sorted(set(got) ^ set(want))[:10] + [
                k for k in set(got) & set(want) if got[k] != want[k]][:10]
    out["ok"] = bool(out.get("detected_class") == family.comfy_class and out.get("detected_layout_matches")
                     and (family.known_params is None or out["params"] == family.known_params))
    return out


def _numel(shape) -> int:
    n = 1
    for s in shape:
        n *= int(s)
    return n


# -- random weights --------------------------------------------------------------------------------------------------

def random_state_dict(shapes: dict, dtype, device, seed: int, std: float | str = INIT_STD) -> dict:
    """Random tensors with these keys and shapes, drawn on ``device`` (each from its own generator seeded by ``seed``
    and the key's position, so every process draws the same weights) in ``dtype``, returned on the CPU. Weights are
    normal(0, ``std``), or with ``std="fan_in"`` normal(0, 1/sqrt(fan_in)) (each layer keeps its input's scale)."""
    import torch

    out = {}
    for i, key in enumerate(sorted(shapes)):
        shape, kind = shapes[key]
        src_dtype = getattr(torch, kind)
        if not src_dtype.is_floating_point:
            out[key] = torch.zeros(shape, dtype=src_dtype)
            continue
        if key.endswith("bias"):
            t = torch.zeros(shape, device=device, dtype=dtype)
        elif len(shape) <= 1:  # norm scales and other 1-D parameters
            t = torch.ones(shape, device=device, dtype=dtype)
        else:
            gen = torch.Generator(device=device).manual_seed(seed * 1_000_003 + i)
            scale = std if std != "fan_in" else 1.0 / math.sqrt(_numel(shape[1:]))
            t = torch.randn(shape, generator=gen, device=device, dtype=torch.float32).mul_(scale).to(dtype)
        out[key] = t.cpu()
    return out


def init_module_(module, seed: int, device, std: float | str = INIT_STD) -> None:
    """Overwrite every parameter of ``module`` as ``random_state_dict`` draws them (deterministic across processes,
    whatever the library's own initialisation does)."""
    import torch

    params = dict(module.named_parameters())
    drawn = random_state_dict({k: (tuple(p.shape), str(p.dtype).replace("torch.", "")) for k, p in params.items()},
                              torch.float32, device, seed, std)
    with torch.no_grad():
        for k, p in params.items():
            p.copy_(drawn[k].to(p.device, p.dtype))


@contextlib.contextmanager
def substituted_detection(config):
    """For tiny shapes only: ComfyUI's loader gets ``config`` where its detection would run (see the module doc)."""
    import comfy.model_detection

    original = comfy.model_detection.model_config_from_unet

    def detect(*args, **kwargs):
        return config

    comfy.model_detection.model_config_from_unet = detect
    try:
        yield
    finally:
        comfy.model_detection.model_config_from_unet = original


class _Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.messages: list[str] = []

    def emit(self, record):
        self.messages.append(record.getMessage())


def load_diffusion_model(family: Family, sd: dict, tiny: bool, dtype=None, non_dynamic: bool = False):
    """The diffusion model from ``sd`` through ``comfy.sd.load_diffusion_model_state_dict`` (the UNETLoader's path).

    ``dtype`` forces the weights' dtype (the fp32 reference); ``non_dynamic`` asks for the plain ModelPatcher where
    the loader takes ``disable_dynamic``. Returns ``(patcher, report)``; the report lists the loader's warnings about
    missing or unexpected keys (none expected)."""
    import comfy.sd

    options = {} if dtype is None else {"dtype": dtype}
    kwargs = {}
    if non_dynamic and "disable_dynamic" in inspect.signature(comfy.sd.load_diffusion_model_state_dict).parameters:
        kwargs["disable_dynamic"] = True
    collect = _Collect()
    root = logging.getLogger()
    root.addHandler(collect)
    try:
        with substituted_detection(model_config(family, True)) if tiny else contextlib.nullcontext():
            patcher = comfy.sd.load_diffusion_model_state_dict(sd, model_options=options, **kwargs)
    finally:
        root.removeHandler(collect)
    if patcher is None:
        raise RuntimeError(f"ComfyUI did not detect the {family.title} state dict as a diffusion model")
    found = type(patcher.model.model_config).__name__
    if found != family.comfy_class:
        raise RuntimeError(f"ComfyUI detected the {family.title} state dict as {found}, expected {family.comfy_class}")
    problems = [m for m in collect.messages if "missing" in m.lower() or "unexpected" in m.lower()]
    model = patcher.model
    report = {
        "detected_class": found,
        "detection": "substituted (tiny shapes are not detectable)" if tiny else "ComfyUI's own",
        "patcher": type(patcher).__name__,
        "dynamic": bool(getattr(patcher, "is_dynamic", lambda: False)()),
        "weight_dtype": str(model.get_dtype()).replace("torch.", ""),
        "manual_cast_dtype": str(getattr(model, "manual_cast_dtype", None)).replace("torch.", ""),
        "model_type": str(getattr(model, "model_type", "")),
        "params": sum(p.numel() for p in model.diffusion_model.parameters()),
        "loader_warnings": problems,
    }
    if problems:
        raise RuntimeError(f"ComfyUI's loader reported key problems for the {family.title} state dict: {problems[:3]}")
    return patcher, report


# -- VAE -------------------------------------------------------------------------------------------------------------

def vae_ddconfig(family: Family, tiny: bool) -> dict:
    if tiny:
        return {"double_z": True, "z_channels": family.latent_channels, "resolution": 64, "in_channels": 3, "out_ch": 3,
                "ch": 32, "ch_mult": [1, 1, 1, 1], "num_res_blocks": 1, "attn_resolutions": [], "dropout": 0.0}
    return {"double_z": True, "z_channels": family.latent_channels, "resolution": 256, "in_channels": 3, "out_ch": 3,
            "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}


def vae_state_dict(family: Family, tiny: bool, dtype, device, seed: int) -> dict:
    """A random state dict in the LDM VAE key format (what an SD VAE or FLUX.1's ``ae`` file holds)."""
    import torch
    from comfy.ldm.models.autoencoder import AutoencoderKL

    ddconfig = vae_ddconfig(family, tiny)
    with torch.device("meta"):
        proto = AutoencoderKL(ddconfig=dict(ddconfig), embed_dim=ddconfig["z_channels"])
    shapes = {k: (tuple(v.shape), "float32") for k, v in proto.state_dict().items()}
    return random_state_dict(shapes, dtype, device, seed)


def build_vae(family: Family, sd: dict, tiny: bool, dtype=None):
    """``comfy.sd.VAE`` from the state dict, detected as a file (full size) or with the tiny config passed."""
    import comfy.sd

    ddconfig = vae_ddconfig(family, tiny)
    config = {"params": {"ddconfig": ddconfig, "embed_dim": ddconfig["z_channels"]}} if tiny else None
    vae = comfy.sd.VAE(sd=sd, config=config, dtype=dtype)
    if tiny:
        vae.latent_channels = family.latent_channels
    return vae


# -- conditioning and reward -----------------------------------------------------------------------------------------

def conditioning(family: Family, tiny: bool, size: int, seed: int):
    """``[[context, extra]]`` as the family's text encoders give it (random values, real shapes)."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    tokens, width = (8, TINY_CONTEXT) if tiny else family.context
    context = torch.randn(1, tokens, width, generator=gen)
    extra: dict = {}
    if family.pooled is not None:
        extra["pooled_output"] = torch.randn(1, TINY_POOLED if tiny else family.pooled, generator=gen)
    if family.sdxl_sizes:  # as CLIPTextEncodeSDXL
        extra.update(width=size, height=size, crop_w=0, crop_h=0, target_width=size, target_height=size)
    return [[context, extra]]


def aesthetic_reward(pack, tiny: bool, device, seed: int):
    """The pack's aesthetic reward with random weights (full: CLIP ViT-L/14 + the LAION MLP), built on ``device``."""
    import importlib

    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    aesthetic = importlib.import_module(f"{pack.__name__}.reward_loaders.aesthetic")
    if tiny:
        config = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                                  image_size=32, patch_size=8, projection_dim=16)
        dims = [16, 16, 8, 8, 4, 1]
    else:
        config = CLIPVisionConfig(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24, num_attention_heads=16,
                                  image_size=224, patch_size=14, projection_dim=768)
        dims = [768, 1024, 128, 64, 16, 1]
    with torch.inference_mode(False), torch.device(device):
        model = aesthetic.AestheticReward(CLIPVisionModelWithProjection(config), aesthetic.AestheticMLP(dims),
                                          "aesthetic", 10.0, source="random weights (GPU check)")
        init_module_(model, seed, device)
        # the rating head keeps its input's scale (at std 0.02 five layers would shrink the score, and every gradient,
        # by ~1e-3 at full size and ~1e-6 tiny, far below what real rewards give: fp16 backward would underflow)
        init_module_(model.mlp, seed + 1, device, std="fan_in")
    return model.eval().requires_grad_(False)


__all__ = ["FAMILIES", "ORDER", "TINY_SIZE", "Family", "aesthetic_reward", "build_vae", "conditioning",
           "full_size_layout", "host_config", "init_module_", "load_diffusion_model", "model_config",
           "random_state_dict", "state_dict_shapes", "substituted_detection", "torch_dtype", "unit_roundoff",
           "vae_state_dict"]
