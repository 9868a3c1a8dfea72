"""Estimated peak memory of a ReNO iteration at full size, per model family, from the memory planner's own profiling.

No full-size model fits this machine in float32, and no GPU is needed: the planner (``optimizer/memory.py``) measures
what the backward pass keeps per block, so each family's diffusion model is built through the running ComfyUI's own
classes at its REAL width (the config ComfyUI's ``model_detection`` derives from the published weights) with only two
blocks of each kind (two double and two single blocks, two layers...; the SD UNets whole), random bf16 weights, and:

1. each block's saved bytes and input bytes are measured by ``ActivationProbe`` (what the planner runs), at the
   preflight's three latent crops (``PROBE_SIDES``: 32, 24 and 16 latent pixels a side);
2. at each crop the model is brought to the real model's number of blocks of each kind (counted on the full model built
   on the meta device: nothing allocated) by repeating the LAST measured block of the kind (the first block of a kind
   differs: it saves what later blocks find already saved by their predecessor, or gets a stream without gradient),
   plus what runs outside the blocks;
3. the three full-depth profiles are fitted in the token count and evaluated at the template's latent, exactly as the
   preflight does (``extrapolate_profiles``: constant + linear + quadratic, never below the largest probe);
4. the VAE decoder (real size, bf16, built by ``comfy.sd.VAE`` from a state dict in the file's layout) is probed the
   same way (a family's ``vae_sides`` may probe it at smaller crops where the preflight's would not fit this machine:
   HunyuanImage 2.1's 32x VAE, noted under the table); the paper's four rewards (ImageReward, HPSv2.1,
   PickScore, CLIPScore: real widths, two layers per tower, bf16, as ``reward_patcher`` casts them on a GPU) at the
   template's image size (they resize to 224 px);
5. ``estimate_peak`` gives the activations' peak for ``memory: no checkpointing`` and for ``checkpoint all`` (what
   ``auto`` ends with when nothing less fits). With steps > 1 the diffusion model recomputes whatever the mode
   (README "Memory and speed"): whole steps (K latents plus one step's activations) or, with ``checkpoint all`` when
   that is lower, its blocks in every step (K times one call's block inputs and what it keeps outside its blocks,
   plus the largest block). With cfg > 1 the model runs cond and uncond as one batch of 2.

Weights: the full model's parameter count (meta device) times the bytes per parameter of the file the template loads
(bf16 2, fp8 1, int8 1), plus the VAE and the four rewards in bf16. Text encoders are not counted (they run once per prompt,
before the iterations). The planner asks for ``peak x 1.2 + 256 MiB`` (``activation_request``); the table gives the
peak itself. All figures are ESTIMATES: measured on the CPU (PyTorch SDPA attention forced, as ComfyUI runs on NVIDIA
GPUs), never on a GPU; the allocator's fragmentation and the backward pass's temporaries are not in them.

    OMP_NUM_THREADS=1 .venv/bin/python scripts/estimate_family_memory.py [--families sd15,flux1-schnell,...]
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib  # noqa: E402
import dataclasses  # noqa: E402
import gc  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Sequence  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
GIB = 2**30
PROBE_SIDES = (32, 24, 16)  # nodes/lifecycle.PROBE_SIDES (checked against the pack at run time)
MODEL, VAE = "diffusion model", "VAE decoder"
PAPER_MIX = ("imagereward", "hpsv2.1", "pickscore", "clipscore")
BF16 = torch.bfloat16


# -- the families -------------------------------------------------------------------------------------------------

_UNET = {"use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True, "legacy": False,
         "in_channels": 4, "use_temporal_attention": False, "use_temporal_resblock": False}
#: SD 1.5's UNet as ComfyUI's detection gives it (8 heads, context 768)
SD15_UNET = {**_UNET, "adm_in_channels": None, "model_channels": 320, "num_res_blocks": [2, 2, 2, 2],
             "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0], "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1,
             "use_linear_in_transformer": False, "context_dim": 768, "num_heads": 8, "num_head_channels": -1,
             "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0]}
#: SDXL base's UNet
SDXL_UNET = {**_UNET, "num_classes": "sequential", "adm_in_channels": 2816, "model_channels": 320,
             "num_res_blocks": [2, 2, 2], "transformer_depth": [0, 0, 2, 2, 10, 10], "channel_mult": [1, 2, 4],
             "transformer_depth_middle": 10, "use_linear_in_transformer": True, "context_dim": 2048,
             "num_head_channels": 64, "transformer_depth_output": [0, 0, 0, 2, 2, 2, 10, 10, 10]}


@dataclass(frozen=True)
class Family:
    """One row of the table: a family's model at full width, and the template it runs in."""

    name: str
    title: str
    comfy_class: str
    fixture: str | None  # the fixture pack's family whose config (with the engine's own schema fixes) is the base
    width: dict  # the real widths over the fixture's config (or the whole config when fixture is None)
    depth_full: dict  # the real block counts
    depth_reduced: dict  # what is built and measured
    weight_bytes: float  # bytes per parameter of the file the template loads
    weights_note: str
    template: str
    side: tuple[int, int]  # image width, height
    steps: int
    cfg: float
    vae: str  # "sd", "flux_ae", "wan21", "flux2", "hunyuan21", "mage"
    text: tuple[int, int]  # text tokens, width of the conditioning
    pooled: int | None = None
    sdxl_sizes: bool = False
    mask: bool = False  # the conditioning carries an attention mask
    latent: tuple[int, int, int] = (4, 8, 0)  # channels, downscale, 1 for a 5-D (one frame) latent
    extra: dict = field(default_factory=dict)  # further conds: a tuple is a random tensor's shape after the batch
    vae_sides: tuple[int, ...] = PROBE_SIDES  # the VAE's probe crops (smaller where the preflight's would not fit here)


def _flux(hidden, heads, depth, single):
    return {"hidden_size": hidden, "num_heads": heads, "depth": depth, "depth_single_blocks": single}


FAMILIES = {f.name: f for f in [
    Family("sd15", "SD 1.5 (LCM-LoRA)", "SD15", None, SD15_UNET, {}, {}, 2, "fp16",
           "ReNO 15", (512, 512), 4, 1.0, "sd", (77, 768)),
    Family("sdxl-turbo", "SDXL-Turbo", "SDXL", None, SDXL_UNET, {}, {}, 2, "fp16",
           "ReNO 06", (512, 512), 1, 1.0, "sd", (77, 2048), pooled=1280, sdxl_sizes=True),
    Family("sdxl-lightning", "SDXL-Lightning", "SDXL", None, SDXL_UNET, {}, {}, 2, "fp16",
           "ReNO 10", (1024, 1024), 4, 1.0, "sd", (77, 2048), pooled=1280, sdxl_sizes=True),
    Family("flux1-schnell", "FLUX.1 [schnell]", "FluxSchnell", "flux_schnell",
           {"vec_in_dim": 768, "context_in_dim": 4096, "mlp_ratio": 4.0, "axes_dim": [16, 56, 56],
            **_flux(3072, 24, 1, 1)}, {"depth": 19, "depth_single_blocks": 38},
           {"depth": 2, "depth_single_blocks": 2}, 2, "bf16", "ReNO 07", (512, 512), 1, 1.0, "flux_ae", (256, 4096),
           pooled=768, latent=(16, 8, 0)),
    Family("flux1-schnell-4", "FLUX.1 [schnell], 4 steps", "FluxSchnell", "flux_schnell",
           {"vec_in_dim": 768, "context_in_dim": 4096, "mlp_ratio": 4.0, "axes_dim": [16, 56, 56],
            **_flux(3072, 24, 1, 1)}, {"depth": 19, "depth_single_blocks": 38},
           {"depth": 2, "depth_single_blocks": 2}, 2, "bf16", "ReNO 11", (512, 512), 4, 1.0, "flux_ae", (256, 4096),
           pooled=768, latent=(16, 8, 0)),
    Family("z-image-turbo", "Z-Image-Turbo", "ZImage", "z_image",
           {"dim": 3840, "n_heads": 30, "n_kv_heads": 30, "n_refiner_layers": 2, "n_layers": 1},
           {"n_layers": 30}, {"n_layers": 2}, 2, "bf16", "ReNO 01", (1024, 1024), 8, 1.0, "flux_ae", (128, 2560),
           mask=True, latent=(16, 8, 0)),
    Family("qwen-image", "Qwen-Image 2512 (Lightning LoRA)", "QwenImage", "qwen_image",
           {"num_attention_heads": 24, "num_layers": 1}, {"num_layers": 60}, {"num_layers": 2}, 1, "fp8_e4m3fn",
           "ReNO 03", (1328, 1328), 2, 1.0, "wan21", (128, 3584), mask=True, latent=(16, 8, 1)),
    Family("flux2-klein-4b", "FLUX.2 [klein] 4B", "Flux2", "flux2", _flux(3072, 24, 1, 1),
           {"depth": 5, "depth_single_blocks": 20}, {"depth": 2, "depth_single_blocks": 2}, 2, "bf16",
           "ReNO 04", (1024, 1024), 4, 1.0, "flux2", (512, 7680), latent=(128, 16, 0)),
    Family("chroma", "Chroma1-HD", "Chroma", "chroma",
           {**_flux(3072, 24, 1, 1), "out_dim": 3072, "hidden_dim": 5120, "n_layers": 5},
           {"depth": 19, "depth_single_blocks": 38}, {"depth": 2, "depth_single_blocks": 2}, 1, "fp8 (fp8mixed)",
           "image_chroma_text_to_image", (1024, 1024), 26, 3.5, "flux_ae", (128, 4096), latent=(16, 8, 0)),
    Family("lumina2", "Lumina 2 (NetaYume)", "Lumina2", "lumina2",
           {"dim": 2304, "n_heads": 24, "n_kv_heads": 8, "n_refiner_layers": 2, "n_layers": 1},
           {"n_layers": 26}, {"n_layers": 2}, 2, "bf16", "image_netayume_lumina_t2i", (1024, 1024), 30, 4.0,
           "flux_ae", (256, 2304), mask=True, latent=(16, 8, 0)),
    Family("krea2-turbo", "Krea 2 Turbo", "Krea2", "krea2",  # ComfyUI 0.33+; SingleStreamDiT's defaults = detection's
           {"features": 6144, "heads": 48, "kvheads": 12, "txtdim": 2560, "txtheads": 20, "txtkvheads": 20},
           {"layers": 28}, {"layers": 2}, 1, "fp8 (scaled)", "image_krea2_turbo_t2i", (1024, 1024), 8, 1.0, "wan21",
           (128, 12 * 2560), latent=(16, 8, 1)),
    Family("hidream-i1-fast", "HiDream-I1 Fast", "HiDream", "hidream",  # detection's config is fixed: 20 heads of 128
           {"num_attention_heads": 20},
           {"num_layers": 16, "num_single_layers": 32, "llama_layers": list(range(32)) + [31] * 16},
           {"num_layers": 2, "num_single_layers": 2, "llama_layers": [0, 1, 31, 31]}, 1, "fp8", "hidream_i1_fast",
           (1024, 1024), 16, 1.0, "flux_ae", (128, 4096), pooled=768 + 1280, latent=(16, 8, 0),
           extra={"conditioning_llama3": (32, 128, 4096)}),  # Llama-3.1-8B's 32 layers, 128 tokens (min_length)
    Family("hunyuan-image-2.1", "HunyuanImage 2.1", "HunyuanImage21", "hunyuan_image21",  # img_in 3584 wide
           {"hidden_size": 3584, "num_heads": 28}, {"depth": 20, "depth_single_blocks": 40},
           {"depth": 2, "depth_single_blocks": 2}, 2, "bf16", "no template; EmptyHunyuanImageLatent's default size",
           (2048, 2048), 20, 3.5, "hunyuan21", (128, 3584), mask=True, latent=(64, 32, 0),
           extra={"pooled_output": None}, vae_sides=(16, 12, 8)),
    Family("lens-turbo", "Lens Turbo", "Lens", "lens",  # ComfyUI 0.33+; 24 heads of 64
           {"num_attention_heads": 24}, {"num_layers": 48}, {"num_layers": 2}, 2, "bf16", "image_lens_turbo_t2i",
           (1440, 1440), 4, 1.0, "flux2", (128, 4 * 2880), mask=True, latent=(128, 16, 0),
           extra={"pooled_output": None}),
    Family("mage-flow-turbo", "Mage-Flow Turbo", "MageFlow", "mage_flow",  # ComfyUI 0.33+; 24 heads of 128
           {"num_attention_heads": 24}, {"num_layers": 12}, {"num_layers": 2}, 1, "int8",
           "image_mage_flow_turbo_t2i_int8", (1024, 1024), 4, 1.0, "mage", (128, 2560), latent=(128, 16, 0),
           extra={"pooled_output": None}),
    Family("ernie-image-turbo", "ERNIE-Image Turbo", "ErnieImage", "ernie_image",  # ComfyUI 0.33+
           {"hidden_size": 4096, "num_attention_heads": 32, "ffn_hidden_size": 12288}, {"num_layers": 36},
           {"num_layers": 2}, 2, "bf16", "image_ernie_image_turbo", (1024, 1024), 8, 1.0, "flux2", (128, 3072),
           mask=True, latent=(128, 16, 0), extra={"pooled_output": None}),
]}
ORDER = tuple(FAMILIES)


# -- measuring one component per block, scaled to the real depth ---------------------------------------------------

def block_kinds(root: torch.nn.Module, blocks: Sequence[torch.nn.Module]) -> list[str]:
    """Each block's kind: the path of the module that holds it (``double_blocks``, ``layers``, ``input_blocks.4``)."""
    parent = {}
    for name, module in root.named_modules():
        for child in module.children():
            parent[id(child)] = name
    return [parent.get(id(b), "") for b in blocks]


@dataclass
class Measured:
    """One probed pass of one component: the planner's profile, and each block's (kind, saved, input bytes)."""

    profile: object  # optimizer.memory.ComponentProfile
    blocks: list = field(default_factory=list)

    def per_kind(self) -> dict[str, list[tuple[int, int]]]:
        """kind -> [(saved bytes, input bytes) of each block of that kind, in the order they ran]."""
        out: dict[str, list[tuple[int, int]]] = {}
        for kind, saved, inputs in self.blocks:
            out.setdefault(kind, []).append((saved, inputs))
        return out


def measure(mem, name: str, run: Callable[[], object], blocks: Sequence[torch.nn.Module], kinds: Sequence[str],
            probe=None) -> Measured:
    """``run()`` once under the planner's ``ActivationProbe`` as component ``name``, every block wrapped as the
    planner wraps it; each block's saved bytes (the probe's own count) and input bytes recorded with its kind.
    ``mem``: the pack's ``optimizer.memory``."""
    probe = probe or mem.ActivationProbe()
    result = Measured(None)

    def make(kind):
        def wrap(forward):
            def probed(*args, **kwargs):
                inputs = list(args) + list(kwargs.values())
                entry = mem._tensor_bytes(inputs)  # at entry, as the probe counts it: a block may update an input in
                with probe.block(inputs):          # place and so make it require grad (FLUX's text stream)
                    out = forward(*args, **kwargs)
                profile = probe.profiles[name]
                result.blocks.append((kind, profile._block_bytes[-1], entry))
                return out
            return probed
        return wrap

    with contextlib.ExitStack() as stack:
        for kind in dict.fromkeys(kinds):
            stack.enter_context(mem.wrap_blocks([b for b, k in zip(blocks, kinds) if k == kind], make(kind)))
        with torch.inference_mode(False), torch.enable_grad(), probe, probe.component(name):
            run()
    result.profile = probe.profiles[name]
    return result


def at_depth(mem, measured: Measured, counts: dict[str, int]):
    """The profile of the model with ``counts[kind]`` blocks of each kind: the measured blocks of that kind as
    measured, and each further one as the LAST measured one (the first blocks of a stream can keep less: FLUX's first
    double block gets a text stream without gradient, so it is measured but never repeated), plus what the measured
    pass kept outside the blocks. Kinds not in ``counts`` keep the blocks measured. Refused when a kind of ``counts``
    was not measured, or has fewer blocks than were measured (the scaling would silently drop them)."""
    per = measured.per_kind()
    missing = [k for k in counts if k not in per]
    if missing:
        raise RuntimeError(f"no block of kind {missing} ran in the measured pass (measured: {list(per)})")
    short = [k for k, n in counts.items() if n < len(per[k])]
    if short:
        raise RuntimeError(f"kinds {short} have fewer blocks in the real model than were measured")
    saved, boundary, largest, blocks = measured.profile.outside_bytes, 0, 0, 0
    for kind, rows in per.items():
        extra = counts.get(kind, len(rows)) - len(rows)
        saved += sum(s for s, _ in rows) + extra * rows[-1][0]
        boundary += sum(b for _, b in rows) + extra * rows[-1][1]
        largest = max([largest] + [s for s, _ in rows])
        blocks += len(rows) + extra
    p = measured.profile
    return mem.ComponentProfile(p.name, saved_bytes=saved, outside_bytes=p.outside_bytes, boundary_bytes=boundary,
                                max_block_bytes=largest, blocks=blocks, seconds=p.seconds)


def per_step(mem, profile, steps: int, latent_bytes: int):
    """The diffusion model's part of the plan: with one step its blocks; with K > 1 steps (README "Memory and speed")
    either each step is the unit the chain recomputes (K step inputs kept, the latent in float32, one step's
    activations alive while it is recomputed) or, the second level, the model's blocks recompute in every step (K
    times what one call keeps outside its blocks and their inputs; the largest block alive while it is recomputed)."""
    if steps <= 1:
        return profile
    return mem.ComponentProfile(profile.name, saved_bytes=steps * profile.saved_bytes, outside_bytes=0,
                                boundary_bytes=steps * latent_bytes, max_block_bytes=profile.saved_bytes,
                                blocks=steps, seconds=steps * profile.seconds, inner_blocks=profile.blocks,
                                inner_retained_bytes=steps * (profile.outside_bytes + profile.boundary_bytes),
                                inner_max_block_bytes=profile.max_block_bytes)


def peaks(mem, profiles: Sequence, steps: int) -> tuple[int, int]:
    """(activations' peak with ``memory: no checkpointing``, with ``checkpoint all``): ``estimate_peak`` with the
    sets the run uses (steps > 1 forces the diffusion model's recomputation; checkpoint all then takes whole steps or
    the model's blocks in every step, whichever peak is lower)."""
    base = {MODEL} if steps > 1 else set()
    every = {p.name for p in profiles if p.checkpointable} | base
    options = [every, every | {mem.inner(MODEL)}] if steps > 1 else [every]
    return mem.estimate_peak(profiles, base), min(mem.estimate_peak(profiles, o) for o in options)


# -- building: diffusion model, VAE, rewards -----------------------------------------------------------------------

def model_config(families, family: Family, depth: dict):
    """``comfy.supported_models.<class>`` at the family's real widths and ``depth``."""
    import comfy.supported_models

    cls = getattr(comfy.supported_models, family.comfy_class, None)
    if cls is None:
        raise RuntimeError(f"this ComfyUI has no comfy.supported_models.{family.comfy_class}")
    if family.fixture is None:
        config = dict(family.width)
    else:
        config = families._unet_config(family.fixture, 1)
        config.update(family.width)
    config.update(depth)
    return cls(config)


def count_params(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def full_model_counts(families, mem_nodes, family: Family) -> tuple[int, dict[str, int]]:
    """(parameters, blocks per kind) of the full model, built on the meta device."""
    config = model_config(families, family, family.depth_full)
    config.set_inference_dtype(BF16, None)
    model = config.get_model({}, "", device=torch.device("meta"))
    root = model.diffusion_model
    blocks = mem_nodes.model_blocks(model)
    kinds = block_kinds(root, blocks)
    counts: dict[str, int] = {}
    for k in kinds:
        counts[k] = counts.get(k, 0) + 1
    return count_params(root), counts


def build_model(families, family: Family, dtype=BF16, seed: int = 0):
    """The reduced model (real widths), random weights in ``dtype`` on the CPU."""
    config = model_config(families, family, family.depth_reduced)
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, "", device=torch.device("cpu"))
    init_random_(model.diffusion_model, seed)
    model.diffusion_model.to(dtype)
    model.eval().requires_grad_(False)
    return model


@torch.no_grad()
def init_random_(module: torch.nn.Module, seed: int, std: float = 0.02) -> None:
    """normal(0, std) weights, unit 1-D weights, zero biases (the values do not change what is saved)."""
    gen = torch.Generator().manual_seed(seed)
    for name, p in module.named_parameters():
        if name.endswith("bias"):
            p.zero_()
        elif p.ndim <= 1:
            p.fill_(1.0)
        else:
            p.copy_(torch.randn(p.shape, generator=gen, dtype=torch.float32).to(p.dtype) * std)
    for b in module.buffers():
        if b.is_floating_point() and b.numel() and not torch.isfinite(b).all():
            b.zero_()


def conditioning(family: Family, batch: int, width: int, height: int, seed: int = 1) -> dict:
    """The keyword arguments of ``BaseModel.extra_conds`` as the sampler passes them (random text features)."""
    gen = torch.Generator().manual_seed(seed)
    tokens, dim = family.text
    cond: dict = {"cross_attn": torch.randn(batch, tokens, dim, generator=gen) * 0.5}
    if family.mask:
        cond["attention_mask"] = torch.ones(batch, tokens, dtype=torch.long)
    if family.pooled is not None:
        cond["pooled_output"] = torch.randn(batch, family.pooled, generator=gen)
    elif family.fixture in ("flux2", "chroma"):
        cond["pooled_output"] = None
    if family.sdxl_sizes:
        cond.update(width=width, height=height, crop_w=0, crop_h=0, target_width=width, target_height=height)
    for key, value in family.extra.items():
        cond[key] = torch.randn(batch, *value, generator=gen) * 0.5 if isinstance(value, tuple) else value
    return cond


def latent_shape(family: Family, side_h: int, side_w: int, batch: int = 1) -> tuple[int, ...]:
    channels, _, frames = family.latent
    return (batch, channels, 1, side_h, side_w) if frames else (batch, channels, side_h, side_w)


def model_runner(model, family: Family, shape: tuple[int, ...], batch: int) -> Callable[[], object]:
    """One call of the diffusion model as the sampler makes it (``extra_conds`` then ``apply_model``), on a noise
    latent that requires grad; ``batch`` 2 is cond and uncond together (cfg > 1)."""
    h, w = shape[-2], shape[-1]
    down = family.latent[1]
    cond = conditioning(family, batch, w * down, h * down)

    def run():
        z = torch.randn(*shape, generator=torch.Generator().manual_seed(2)).requires_grad_(True)
        x = z.repeat(batch, *([1] * (z.dim() - 1))) if batch > 1 else z * 1.0
        sigma = model.model_sampling.sigma_max.reshape(1).repeat(batch).float()
        conds = model.extra_conds(input_x=x, noise=x, device=x.device, latent_image=torch.zeros_like(x), **cond)
        # as the sampler batches conds: each repeated to the batch (a guidance scalar becomes one per row)
        kwargs = {k: v.process_cond(batch_size=batch, device=x.device).cond for k, v in conds.items()}
        return model.apply_model(x, sigma, **kwargs)

    return run


def ddconfig(z_channels: int, **extra) -> dict:
    """The SD VAE's / FLUX ``ae``'s / FLUX.2 VAE's decoder at its real size (ch 128, mult 1-2-4-4, 2 res blocks)."""
    return {"double_z": True, "z_channels": z_channels, "resolution": 256, "in_channels": 3, "out_ch": 3, "ch": 128,
            "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0, **extra}


def build_vae(families, kind: str, dtype=BF16, seed: int = 3):
    """The family's VAE at its real size through ``comfy.sd.VAE`` (as the fixture pack builds the tiny ones)."""
    from unittest import mock

    import comfy.sd
    from comfy.ldm.models.autoencoder import AutoencoderKL

    if kind == "wan21":
        from comfy.ldm.wan.vae import WanVAE

        proto = WanVAE(dim=96, z_dim=16, dim_mult=[1, 2, 4, 4], num_res_blocks=2, attn_scales=[],
                       temperal_downsample=[False, True, True], dropout=0.0)
        init_random_(proto, seed)
        vae = comfy.sd.VAE(sd=proto.state_dict(), dtype=dtype)
    elif kind == "flux2":
        vae = families._flux2_vae(ddconfig(32), seed)
    elif kind == "hunyuan21":
        # the HunyuanImage 2.1 VAE (32x, 64 channels) at the widths comfy.sd.VAE's detection gives it: a state dict in
        # the file's layout built with those widths, then comfy.sd.VAE detects and builds it itself
        from comfy.ldm.models.autoencoder import AutoencodingEngine

        module = "comfy.ldm.hunyuan_video.vae"
        params = {"in_channels": 3, "out_channels": 3, "z_channels": 64, "ffactor_spatial": 32,
                  "downsample_match_channel": True, "upsample_match_channel": True,
                  "block_out_channels": [128, 256, 512, 512, 1024, 1024], "num_res_blocks": 2}
        proto = AutoencodingEngine(
            regularizer_config={"target": "comfy.ldm.models.autoencoder.DiagonalGaussianRegularizer"},
            encoder_config={"target": f"{module}.Encoder", "params": params},
            decoder_config={"target": f"{module}.Decoder", "params": params})
        init_random_(proto, seed)
        sd = {k: v.to(dtype) for k, v in proto.state_dict().items()}
        del proto
        vae = comfy.sd.VAE(sd=sd, dtype=dtype)
        if vae.latent_channels != 64 or vae.downscale_ratio != 32:
            raise RuntimeError("comfy.sd.VAE did not detect the HunyuanImage 2.1 VAE")
    elif kind == "mage":
        # the Mage VAE (mage_flow_vae_bf16): MageVAE() has its one fixed size; its state dict in the file's layout
        # (as families_2026.mage_vae lays out the tiny one), which comfy.sd.VAE detects and loads
        from comfy.ldm.mage_flow import vae as mage

        proto = mage.MageVAE()
        init_random_(proto, seed)
        sd = {}
        for k, v in proto.state_dict().items():
            k = "student." + k if k.startswith("dconv_encoder.") else k.replace("decoder_model.", "pipeline.", 1)
            sd[k] = v.to(dtype)
        del proto
        vae = comfy.sd.VAE(sd=sd, dtype=dtype)
        if not isinstance(vae.first_stage_model, mage.MageVAE):
            raise RuntimeError("comfy.sd.VAE did not detect the Mage VAE")
    elif kind == "flux_ae":
        cfg = ddconfig(16)
        proto = families._flux_ae(cfg)
        init_random_(proto, seed)
        with mock.patch.object(comfy.sd, "AutoencoderKL", families._flux_ae):
            vae = comfy.sd.VAE(sd=proto.state_dict(), config={"params": {"ddconfig": cfg, "embed_dim": 16}},
                               dtype=dtype)
    else:
        cfg = ddconfig(4)
        proto = AutoencoderKL(ddconfig=dict(cfg), embed_dim=4)
        init_random_(proto, seed)
        vae = comfy.sd.VAE(sd=proto.state_dict(), config={"params": {"ddconfig": cfg, "embed_dim": 4}}, dtype=dtype)
    vae.first_stage_model.to(dtype).eval().requires_grad_(False)
    vae.vae_dtype = dtype
    return vae


def vae_runner(lifecycle, vae, shape: tuple[int, ...]) -> Callable[[], object]:
    def run():
        z = torch.randn(*shape, generator=torch.Generator().manual_seed(4)).requires_grad_(True)
        return lifecycle.decode_with_grad(vae, z * 1.0)
    return run


def reward_models(layers: int | None, dtype=BF16) -> dict[str, torch.nn.Module]:
    """The paper's four rewards with the pack's classes at their real widths; ``layers`` per tower (None: the real
    depth). Built on the meta device when ``layers`` is None (for counting only)."""
    from reno_pack.reward_loaders.clip_rewards import CLIPModelReward
    from reno_pack.reward_loaders.hps import HPSReward
    from reno_pack.reward_loaders.imagereward import DEFAULT_TEXT, DEFAULT_VISION, ImageRewardModel
    from reno_pack.reward_loaders.open_clip_model import VIT_H_14, OpenCLIP, OpenCLIPConfig
    from transformers import CLIPConfig, CLIPModel

    def n(real):
        return real if layers is None else layers

    v, t = VIT_H_14["vision_cfg"], VIT_H_14["text_cfg"]
    hps_cfg = OpenCLIPConfig(embed_dim=VIT_H_14["embed_dim"], image_size=v["image_size"], patch_size=v["patch_size"],
                             grid=v["image_size"] // v["patch_size"], vision_width=v["width"],
                             vision_layers=n(v["layers"]), vision_heads=v["width"] // v["head_width"],
                             vision_mlp=4 * v["width"], context_length=t["context_length"], vocab_size=t["vocab_size"],
                             text_width=t["width"], text_layers=n(t["layers"]), text_heads=t["heads"],
                             text_mlp=4 * t["width"])

    def clip_h():
        return CLIPModel(CLIPConfig(
            text_config=dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=n(24), num_attention_heads=16,
                             vocab_size=49408, max_position_embeddings=77),
            vision_config=dict(hidden_size=1280, intermediate_size=5120, num_hidden_layers=n(32),
                               num_attention_heads=16, image_size=224, patch_size=14),
            projection_dim=1024))

    vision = dataclasses.replace(DEFAULT_VISION, layers=n(DEFAULT_VISION.layers))
    text = dataclasses.replace(DEFAULT_TEXT, layers=n(DEFAULT_TEXT.layers))
    if layers is None:  # counting: the bare towers on the meta device (the wrappers read values at construction)
        with torch.device("meta"):
            return {"imagereward": ImageRewardModel(vision, text), "hpsv2.1": OpenCLIP(hps_cfg),
                    "pickscore": clip_h(), "clipscore": clip_h()}
    out = {"imagereward": ImageRewardModel(vision, text), "hpsv2.1": HPSReward(OpenCLIP(hps_cfg), None, "hpsv2.1", 1.0),
           "pickscore": CLIPModelReward(clip_h(), None, "pickscore", 30.0),
           "clipscore": CLIPModelReward(clip_h(), None, "clipscore", 30.0)}
    for i, m in enumerate(out.values()):
        init_random_(m, 10 + i)
        m.eval().requires_grad_(False)
        m.set_compute_dtype(dtype)
    return out


def reward_text_features(name: str, model) -> torch.Tensor:
    """Random text features of the shape each reward's ``encode_text`` gives (no tokenizer needed)."""
    gen = torch.Generator().manual_seed(5)
    if name == "imagereward":
        ids = torch.randint(1000, 2000, (1, model.max_length), generator=gen)
        return torch.cat([ids, torch.ones_like(ids)]).long()
    f = torch.randn(1, 1024, generator=gen)
    return f / f.norm(dim=-1, keepdim=True)


def measure_rewards(mem, mem_nodes, models: dict, image_hw: tuple[int, int]) -> dict[str, Measured]:
    """Each reward scoring one image of the template's size, as the ensemble runs it (preprocessing shared between
    rewards with the same key, counted in the first)."""
    probe = mem.ActivationProbe()
    out = {}
    image = torch.rand(1, 3, *image_hw, generator=torch.Generator().manual_seed(6)).requires_grad_(True)
    prepared: dict = {}
    for name, m in models.items():
        features = reward_text_features(name, m)

        def run(m=m, features=features):
            key = (*m.preprocess_key(), m.param_dtype())
            pixels = prepared.get(key)
            if pixels is None:
                pixels = prepared[key] = m.preprocess(image * 1.0).to(m.param_dtype())
            return m.score(pixels, features)

        blocks = mem_nodes.reward_blocks(m)
        out[name] = measure(mem, name, run, blocks, block_kinds(m, blocks), probe)
    return out


def reward_counts(mem_nodes, full: dict) -> dict[str, dict[str, int]]:
    """Blocks per kind of each real reward (meta device); the wrappers' paths prefixed as in the pack's classes."""
    prefix = {"imagereward": "", "hpsv2.1": "clip.", "pickscore": "clip.", "clipscore": "clip."}
    counts = {}
    for name, m in full.items():
        blocks = mem_nodes.reward_blocks(m)
        c: dict[str, int] = {}
        for k in block_kinds(m, blocks):
            c[prefix[name] + k] = c.get(prefix[name] + k, 0) + 1
        counts[name] = c
    return counts


# -- the estimate ----------------------------------------------------------------------------------------------------

@dataclass
class Estimate:
    family: Family
    params: int
    weights: dict  # bytes: model, VAE, rewards
    profiles: list
    no_checkpointing: int
    checkpoint_all: int
    seconds: float
    notes: list = field(default_factory=list)

    @property
    def weight_bytes(self) -> int:
        return int(sum(self.weights.values()))


def probe_sides(target_h: int, target_w: int, sides: Sequence[int] = PROBE_SIDES) -> list[tuple[int, int]]:
    """The preflight's crops: ``(min(h, side), min(w, round(side * w / h)))``."""
    return [(min(target_h, s), min(target_w, max(1, round(s * target_w / target_h)))) for s in sides]


def estimate_model(mem, mem_nodes, model, family: Family, counts: dict[str, int], target_hw: tuple[int, int],
                   batch: int, sides: Sequence[int] = PROBE_SIDES, log=None):
    """The diffusion model's full-depth, full-size profile of one model call (blocks scaled, then sizes fitted)."""
    blocks = mem_nodes.model_blocks(model)
    kinds = block_kinds(model.diffusion_model, blocks)
    measured = []
    for ph, pw in probe_sides(*target_hw, sides):
        m = measure(mem, MODEL, model_runner(model, family, latent_shape(family, ph, pw), batch), blocks, kinds)
        measured.append((ph * pw, [at_depth(mem, m, counts)]))
    if log is not None:
        sizes = [size for size, _ in measured]
        c, a, b = mem._fit_size_law(sizes, [float(p[0].saved_bytes) for _, p in measured])
        log(f"[{family.name}] full-depth saved bytes at latent areas {sizes}: "
            f"{[p[0].saved_bytes for _, p in measured]}; fit {c:.4g} + {a:.4g} n + {b:.4g} n^2")
    return mem.extrapolate_profiles(measured, target_hw[0] * target_hw[1])[0]


def estimate_vae(mem, mem_nodes, lifecycle, vae, family: Family, target_hw: tuple[int, int],
                 sides: Sequence[int] = PROBE_SIDES):
    blocks = mem_nodes.vae_blocks(vae)
    decoder = getattr(vae.first_stage_model, "decoder", None)  # the Mage VAE has none (a one-step diffusion decoder)
    kinds = block_kinds(decoder, blocks) if decoder is not None else []
    measured = []
    for ph, pw in probe_sides(*target_hw, sides):
        m = measure(mem, VAE, vae_runner(lifecycle, vae, latent_shape(family, ph, pw)), blocks, kinds)
        measured.append((ph * pw, [m.profile]))
    return mem.extrapolate_profiles(measured, target_hw[0] * target_hw[1])[0]


def estimate_family(env, family: Family, reward_profiles: list, reward_weight_bytes: int, log=print) -> Estimate:
    mem, mem_nodes, lifecycle, families = env["mem"], env["mem_nodes"], env["lifecycle"], env["families"]
    start = time.perf_counter()
    params, counts = full_model_counts(families, mem_nodes, family)
    log(f"[{family.name}] full model: {params:,} parameters; blocks {counts}")
    down = family.latent[1]
    target = (family.side[1] // down, family.side[0] // down)
    batch = 2 if family.cfg > 1 else 1
    model = build_model(families, family)
    log(f"[{family.name}] built {count_params(model.diffusion_model):,} parameters (reduced) in "
        f"{time.perf_counter() - start:.0f} s")
    step = estimate_model(mem, mem_nodes, model, family, counts, target, batch, log=log)
    del model
    gc.collect()
    latent_bytes = 4 * family.latent[0] * target[0] * target[1]
    model_profile = per_step(mem, step, family.steps, latent_bytes)
    vae = build_vae(families, family.vae)
    vae_params = count_params(vae.first_stage_model)
    vae_profile = estimate_vae(mem, mem_nodes, lifecycle, vae, family, target, family.vae_sides)
    del vae
    gc.collect()
    profiles = [model_profile, vae_profile, *reward_profiles]
    no_ckpt, every = peaks(mem, profiles, family.steps)
    weights = {"model": params * family.weight_bytes, "vae": vae_params * 2, "rewards": reward_weight_bytes}
    est = Estimate(family, params, weights, profiles, no_ckpt, every, time.perf_counter() - start)
    if family.steps > 1:
        whole = mem.estimate_peak(profiles, {p.name for p in profiles if p.checkpointable} | {MODEL})
        est.notes.append(f"{family.steps} steps: one step's activations ({step.saved_bytes / 1e9:.1f} GB"
                         f"{', cond + uncond' if batch > 1 else ''}); checkpoint all with whole steps "
                         f"{(est.weight_bytes + whole) / 1e9:.1f} GB, with the model's blocks in every step "
                         f"{(est.weight_bytes + mem.estimate_peak(profiles, {p.name for p in profiles if p.checkpointable} | {MODEL, mem.inner(MODEL)})) / 1e9:.1f} GB")
    if tuple(family.vae_sides) != PROBE_SIDES:
        est.notes.append(f"the VAE decoder probed at latent sides {tuple(family.vae_sides)} (the preflight: "
                         f"{PROBE_SIDES}; its largest would not fit this machine's memory), fitted the same way")
    if not vae_profile.checkpointable:
        est.notes.append(f"the VAE decoder has no blocks the planner finds (nodes/memory.vae_blocks): its "
                         f"{vae_profile.saved_bytes / 1e9:.1f} GB are kept even with checkpoint all")
    log(f"[{family.name}] one model call {step.saved_bytes / GIB:.2f} GiB (blocks {step.blocks}, largest "
        f"{step.max_block_bytes / GIB:.3f} GiB); VAE {vae_profile.saved_bytes / GIB:.2f} GiB; peak "
        f"{no_ckpt / GIB:.2f} / {every / GIB:.2f} GiB; {est.seconds:.0f} s")
    return est


def reward_part(env, image_hw: tuple[int, int], log=print) -> tuple[list, int]:
    """The four rewards' profiles (full depth) at an image of ``image_hw``, and their weights' bytes (bf16)."""
    mem, mem_nodes = env["mem"], env["mem_nodes"]
    full = reward_models(None)
    counts = reward_counts(mem_nodes, full)
    weight_bytes = sum(2 * count_params(m) for m in full.values())
    del full
    models = reward_models(2)  # two layers per tower: the first block of a kind is never repeated (at_depth)
    measured = measure_rewards(mem, mem_nodes, models, image_hw)
    profiles = []
    for name, m in measured.items():
        known = {k: v for k, v in counts[name].items() if k in m.per_kind()}  # text towers: not run
        profiles.append(at_depth(mem, m, known))
    log(f"[rewards at {image_hw[1]}x{image_hw[0]}] " + ", ".join(
        f"{p.name} {p.saved_bytes / GIB:.3f} GiB ({p.blocks} blocks)" for p in profiles)
        + f"; weights {weight_bytes / GIB:.2f} GiB")
    return profiles, weight_bytes


def table(estimates: Sequence[Estimate], engine_label: str) -> str:
    rows = ["| family (template) | resolution | steps, cfg | weights GB (model + VAE + 4 rewards) | estimated peak GB, "
            "`no checkpointing` | estimated peak GB, `checkpoint all` |", "|---|---|---|---|---|---|"]
    for e in estimates:
        f = e.family
        w = e.weights
        rows.append(
            f"| {f.title} ({f.template}) | {f.side[0]}x{f.side[1]} | {f.steps}, {f.cfg:g} | "
            f"{e.weight_bytes / 1e9:.1f} ({w['model'] / 1e9:.1f} {f.weights_note} + {w['vae'] / 1e9:.2f} + "
            f"{w['rewards'] / 1e9:.1f}) | estimated {(e.weight_bytes + e.no_checkpointing) / 1e9:.1f} "
            f"(activations {e.no_checkpointing / 1e9:.1f}) | estimated {(e.weight_bytes + e.checkpoint_all) / 1e9:.1f} "
            f"(activations {e.checkpoint_all / 1e9:.1f}) |")
    notes = [f"- {e.family.title}: " + "; ".join(e.notes) for e in estimates if e.notes]
    return "\n".join(rows + [""] + notes) + (
        f"\n\nEstimated on {engine_label} (CPU, random weights, see the script's docstring).")


# -- the engine --------------------------------------------------------------------------------------------------------

def force_pytorch_attention() -> None:
    """Every ComfyUI attention call through PyTorch SDPA, as ComfyUI runs it on NVIDIA GPUs (on the CPU it picks an
    unfused split attention that would save the attention matrices)."""
    import comfy.ldm.modules.attention as attention
    import comfy.model_management as mm

    mm.ENABLE_PYTORCH_ATTENTION = True
    sdpa = attention.attention_pytorch
    replaced = {attention.optimized_attention, attention.optimized_attention_masked}
    for module in list(sys.modules.values()):
        if getattr(module, "__name__", "").startswith("comfy.") and module is not None:
            for attr in ("optimized_attention", "optimized_attention_masked"):
                if getattr(module, attr, None) in replaced:
                    setattr(module, attr, sdpa)


def environment(engine) -> dict:
    """The pack's modules (as ``reno_pack``) and the fixture pack's ``families`` module of the booted ``engine``."""
    import importlib

    families = None
    for module in list(sys.modules.values()):
        f = getattr(module, "__file__", None) or ""
        if f.endswith("families.py") and hasattr(module, "family_unavailable") and str(engine.workdir) in f:
            families = module
    if families is None:
        raise RuntimeError("the fixture pack's families module is not loaded")
    lifecycle = importlib.import_module("reno_pack.nodes.lifecycle")
    if tuple(lifecycle.PROBE_SIDES) != PROBE_SIDES:
        raise RuntimeError(f"the preflight probes {lifecycle.PROBE_SIDES}, this script {PROBE_SIDES}")
    return {"mem": importlib.import_module("reno_pack.optimizer.memory"),
            "mem_nodes": importlib.import_module("reno_pack.nodes.memory"), "lifecycle": lifecycle,
            "families": families, "host": importlib.import_module("reno_pack.nodes.host")}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--families", default=",".join(ORDER), help=f"comma list of {', '.join(ORDER)}")
    args = ap.parse_args(argv)
    names = [n.strip() for n in args.families.split(",") if n.strip()]
    unknown = [n for n in names if n not in FAMILIES]
    if unknown:
        ap.error(f"unknown families {unknown}")
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sys.path.insert(0, str(ROOT / "scripts"))
    from bench_common import find_host
    from reno_batch import import_pack

    comfy_host = import_pack("testing.comfy_host")
    host = find_host(comfy_host)
    if host is None:
        return 2
    engine = comfy_host.boot_engine(host, [comfy_host.FIXTURE_PACK_DIR, comfy_host.PACK_DIR],
                                    Path(tempfile.mkdtemp(prefix="reno-estimate-")))
    force_pytorch_attention()
    env = environment(engine)
    label = comfy_host.report_line()
    print(label, flush=True)
    import comfy.supported_models

    estimates = []
    rewards_by_size: dict = {}
    with env["host"].training_mode():
        for name in names:
            family = FAMILIES[name]
            if not hasattr(comfy.supported_models, family.comfy_class):
                print(f"[{name}] skipped: this ComfyUI has no {family.comfy_class}", flush=True)
                continue
            hw = (family.side[1], family.side[0])
            if hw not in rewards_by_size:
                rewards_by_size[hw] = reward_part(env, hw, log=lambda s: print(s, flush=True))
            reward_profiles, reward_bytes = rewards_by_size[hw]
            estimates.append(estimate_family(env, family, reward_profiles, reward_bytes,
                                             log=lambda s: print(s, flush=True)))
    print()
    print(table(estimates, label))
    return 0


if __name__ == "__main__":
    sys.exit(main())
