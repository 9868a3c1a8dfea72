"""Quantized diffusion-model weights through ReNO (issue 22 §2): each format the engine loads gives the noise a
gradient, or the run refuses it by name before any work.

The tiny SD1.5-family UNet of the fixture pack is written in each format with its Linear layers quantized (the
layers ComfyUI's quantized ops cover; convolutions stay float32) and loaded with ComfyUI's own UNETLoader:

* ``fp8_e4m3fn`` weight_dtype (UNETLoader's option: weights stored in fp8, cast per layer, ``comfy.ops.manual_cast``);
* ``scaled fp8``, the legacy file (a ``scaled_fp8`` key, per-layer ``scale_weight``; 0.3.75 ``scaled_fp8_ops``,
  0.33 converts it to ``comfy_quant`` float8_e4m3fn layers);
* ``fp8 comfy_quant``, per-layer quantization metadata (``_quantization_metadata``: 0.3.75 ``mixed_precision_ops`` with
  its own ``QuantizedTensor``; 0.33 comfy-kitchen's);
* on 0.33 (comfy-kitchen): ``int8_tensorwise``, ``int8_tensorwise`` with ConvRot (per-row scales, Hadamard-rotated
  groups), ``nvfp4`` and ``mxfp8`` (dequantized per call where the device lacks them, as on every CPU), built with the
  host's own ``QuantizedTensor.from_float`` and its state dict;
* on 0.33: ``convrot_w4a4`` and ``asym_w4a8_int8``, whose matrix multiply has no backward: refused by name;
* the fp8 files and UNETLoader's ``fp8_e4m3fn_fast`` as ComfyUI loads them for a GPU with fp8 compute (its
  ``supports_fp8_compute`` made true while loading; torch's fp8 ``_scaled_mm`` runs on CPUs): 0.3.75's
  ``scaled_fp8_ops(fp8_matrix_mult=True)`` has no backward and is refused by name.

For each format that runs: (a) the oracle, ReNO at one iteration == KSampler on the same quantized model; (b) the
noise gradient is finite, non-zero, and points where the same model's gradient does with its weights dequantized to
float32 (cosine, at the quantization's precision); (c) the weighted reward rises over a few iterations. The measured
numbers are printed (``pytest -s``). Formats a host lacks skip naming the engine.
"""

from __future__ import annotations

import contextlib
import json
import math

import pytest
import torch
from engine_support import PROMPT_TEXT, depth_for, first_iteration, reward_stack
from tolerances import ORACLE_IMAGE_K, ORACLE_LATENT_K, assert_rounding_close

SEED = 3
ITERATIONS = 4
REWARDS = (("pickscore", 1.0), ("clipscore", 0.5))
FP8_MAX = 448.0  # torch.finfo(torch.float8_e4m3fn).max

#: 1 - cosine(quantized model's noise gradient, dequantized model's) allowed per format. fp8 storage: the host
#: computes in float32 with exactly the dequantized weights (on a CPU fp8 has no matrix multiply: ComfyUI casts),
#: so only float32 roundings differ. int8: comfy-kitchen's int8 linear also quantizes each activation row to int8
#: in the forward pass and each row of the incoming gradient in the backward pass (its mm handler): errors of
#: ~1/127 of a row's largest element per layer, which cost the cosine about their square; a few hundred times that
#: bounds it through the tiny UNet (measured on 0.33.0: see the README).
COSINE_DEFICIT = {"fp8": 1e-9, "int8": 1e-2, "fp8 matmul": 1e-2}


# -- fixtures ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def stack(engine):
    from tiny_rewards import ALL_REWARDS

    return reward_stack(engine, REWARDS, ALL_REWARDS)


@pytest.fixture(scope="module")
def base(engine):
    model, vae = engine.call_node("ReNOTestTinySD", inference=True, transformer_depth=depth_for(engine),
                                  context_dim=32, seed=0)
    (pos,) = engine.call_node("ReNOTestConditioning", inference=True, text=PROMPT_TEXT, context_dim=32)
    (neg,) = engine.call_node("ReNOTestConditioning", inference=True, text="", context_dim=32)
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=64, height=64, batch_size=1)
    return dict(model=model, vae=vae, pos=pos, neg=neg, latent=latent)


@pytest.fixture(scope="module")
def detection(engine):
    """ComfyUI's model detection recognises the tiny UNet while this module runs."""
    from tiny_formats import tiny_sd15_detection

    with tiny_sd15_detection(32) as cls:
        yield cls


@pytest.fixture(scope="module")
def folder(engine, detection):
    name = "diffusion_models" if "diffusion_models" in engine.folder_paths.folder_names_and_paths else "unet"
    path = engine.folder_paths.get_folder_paths(name)[0]
    from pathlib import Path

    path = Path(path)
    assert engine.workdir in path.parents, f"{name} folder {path} is outside the test workdir"
    path.mkdir(parents=True, exist_ok=True)
    return path


@pytest.fixture(scope="module")
def weights(base):
    """(the fixture UNet's float32 state dict, the names of its Linear layers: what quantized ops quantize)."""
    unet = base["model"].model.diffusion_model
    with torch.inference_mode(False):
        sd = {k: v.detach().float().cpu().clone() for k, v in unet.state_dict().items()}
    linears = [n for n, m in unet.named_modules() if isinstance(m, torch.nn.Linear) and f"{n}.weight" in sd]
    assert len(linears) >= 8, linears
    return sd, linears


# -- the formats: (state dict to save, safetensors metadata, the same weights dequantized to float32) --------------

def fp8_scale(w: torch.Tensor) -> torch.Tensor:
    return (w.abs().max() / FP8_MAX).float()


def scaled_fp8(sd, linears, engine):
    out, deq = dict(sd), dict(sd)
    for name in linears:
        w = sd[f"{name}.weight"]
        scale = fp8_scale(w)
        q = (w / scale).to(torch.float8_e4m3fn)
        out[f"{name}.weight"], out[f"{name}.scale_weight"] = q, scale
        deq[f"{name}.weight"] = q.float() * scale
    out["scaled_fp8"] = torch.empty(0, dtype=torch.float8_e4m3fn)  # the marker ComfyUI's own fp8_scaled files carry
    return out, None, deq


def fp8_comfy_quant(sd, linears, engine):
    out, deq = dict(sd), dict(sd)
    for name in linears:
        w = sd[f"{name}.weight"]
        scale = fp8_scale(w)
        q = (w / scale).to(torch.float8_e4m3fn)
        out[f"{name}.weight"], out[f"{name}.weight_scale"] = q, scale
        deq[f"{name}.weight"] = q.float() * scale
    layers = {name: {"format": "float8_e4m3fn"} for name in linears}
    return out, {"_quantization_metadata": json.dumps({"format_version": "1.0", "layers": layers})}, deq


def kitchen(fmt: str, conf: dict | None = None, min_group: int = 1, **quantize_kwargs):
    """A format built with the host's own comfy-kitchen quantizer (``QuantizedTensor.from_float``) and written with
    the host's own serialization (``QuantizedTensor.state_dict``, a ``comfy_quant`` JSON per layer, as ComfyUI's
    ``_quantized_weight_state_dict`` writes it). ``min_group``: only layers whose input width it divides (the 4-bit
    formats quantize activations in groups of 64 and pack two weights per byte, so they also leave alone the narrow
    layers whose shapes ComfyUI's model detection reads)."""
    def build(sd, linears, engine):
        import comfy.quant_ops as q

        layout = q.QUANT_ALGOS[fmt]["comfy_tensor_layout"]
        out, deq = dict(sd), dict(sd)
        for name in [n for n in linears if sd[f"{n}.weight"].shape[1] % min_group == 0]:
            qt = q.QuantizedTensor.from_float(sd[f"{name}.weight"], layout, **quantize_kwargs)
            del out[f"{name}.weight"]
            out.update({k: v.contiguous() for k, v in qt.state_dict(f"{name}.weight").items()})
            layer = {"format": fmt, **(conf or {})}
            out[f"{name}.comfy_quant"] = torch.tensor(list(json.dumps(layer).encode("utf-8")), dtype=torch.uint8)
            deq[f"{name}.weight"] = qt.dequantize().float()
        return out, None, deq
    return build


#: name -> (what the host must have, builder, cosine class)
RUNNING = {
    "scaled fp8": (None, scaled_fp8, "fp8"),
    "fp8 comfy_quant": (None, fp8_comfy_quant, "fp8"),
    "int8_tensorwise": ("int8_tensorwise", kitchen("int8_tensorwise"), "int8"),
    "int8_tensorwise convrot": ("int8_tensorwise", kitchen("int8_tensorwise", {"convrot": True, "convrot_groupsize": 16},
                                                           per_channel=True, convrot=True, convrot_groupsize=16),
                                "int8"),
    # where the GPU lacks the format (every CPU; NVFP4 before Blackwell) ComfyUI dequantizes per call
    "nvfp4": ("nvfp4", kitchen("nvfp4", None, 64), "fp8"),
    "mxfp8": ("mxfp8", kitchen("mxfp8"), "fp8"),
}
REFUSED = {
    "convrot_w4a4": kitchen("convrot_w4a4", {"convrot_groupsize": 16}, 64, convrot_groupsize=16),
    "asym_w4a8_int8": kitchen("asym_w4a8_int8", {"group_size": 16, "convrot_groupsize": 16}, 64,
                              convrot_groupsize=16),
}


def host_has(engine, fmt: str | None) -> None:
    if fmt is None:
        return
    import comfy.quant_ops as q

    if fmt not in getattr(q, "QUANT_ALGOS", {}) or getattr(q.QuantizedTensor, "from_float", None) is None \
            or not getattr(q, "_CK_AVAILABLE", False):
        pytest.skip(f"{engine.info} has no {fmt} quantization (a comfy-kitchen layout this ComfyUI does not have)")


def write(folder, name: str, sd: dict, metadata: dict | None):
    import safetensors.torch

    path = folder / f"reno_tiny_{name.replace(' ', '_')}.safetensors"
    safetensors.torch.save_file({k: v.detach().cpu().contiguous() for k, v in sd.items()}, str(path),
                                metadata=metadata)
    return path


def unet_loader(engine, path, weight_dtype="default"):
    (model,) = engine.call_node("UNETLoader", inference=True, unet_name=path.name, weight_dtype=weight_dtype)
    return model


def quantized_layers(model) -> dict:
    """{layer name: storage} of the loaded model's quantized weights (a QuantizedTensor's layout, or an fp8 dtype)."""
    out = {}
    for name, module in model.model.diffusion_model.named_modules():
        w = module._parameters.get("weight")
        if w is None:
            continue
        layout = getattr(w, "_layout_cls", None) or getattr(w, "_layout_type", None)
        if layout is not None:
            out[name] = layout if isinstance(layout, str) else getattr(layout, "__name__", str(layout))
        elif w.dtype in (torch.float8_e4m3fn, torch.float8_e5m2):
            out[name] = str(w.dtype)
    return out


# -- runs ----------------------------------------------------------------------------------------------------

def reno(engine, b, stack, model, iterations):
    out = engine.call_node("ReNOSampler", inference=True, model=model, positive=b["pos"], negative=b["neg"],
                           vae=b["vae"], latent_image=b["latent"], rewards=stack, prompt=PROMPT_TEXT, seed=SEED,
                           iterations=iterations, learning_rate=5.0, cfg=1.0, regularization=0.01, grad_clip=0.1)
    return out["result"]


def ksampler(engine, b, model):
    (out,) = engine.call_node("KSampler", inference=True, model=model, seed=SEED, steps=1, cfg=1.0,
                              sampler_name="euler", scheduler="simple", positive=b["pos"], negative=b["neg"],
                              latent_image=b["latent"], denoise=1.0)
    return out


def oracle(engine, b, stack, model, case) -> dict:
    """ReNO with one iteration == KSampler (euler, one step) + VAE Decode on the same quantized model."""
    latent, image, history = reno(engine, b, stack, model, 1)
    ks = ksampler(engine, b, model)
    (ks_image,) = engine.call_node("VAEDecode", inference=True, samples=ks, vae=b["vae"])
    scale = history.sigma * float(history.best_noise.abs().max()) + float(b["latent"]["samples"].abs().max())
    scale = max(scale, float(ks["samples"].abs().max()))
    err = float((latent["samples"] - ks["samples"]).abs().max())
    errs = {"latent": err, "roundings": err / (torch.finfo(torch.float32).eps * scale),
            "image": float((image - ks_image).abs().max())}
    assert_rounding_close(latent["samples"].float(), ks["samples"].float(), ORACLE_LATENT_K,
                          scale=scale, msg=f"{case} latent")
    assert_rounding_close(image.float(), ks_image.float(), ORACLE_IMAGE_K, msg=f"{case} image")
    return errs


def gradient_and_gain(engine, b, stack, model, iterations) -> tuple[torch.Tensor, float, float, int]:
    """(iteration 0's noise gradient, weighted reward at iteration 0, at the best iteration, the best iteration)."""
    with first_iteration(engine) as first:
        latent, image, history = reno(engine, b, stack, model, iterations)
    assert "grad" in first, "the run never backpropagated to the noise"
    assert torch.isfinite(latent["samples"]).all() and torch.isfinite(image).all()
    weights = {r["label"]: r["weight"] for r in history.rewards}

    def weighted(i):
        return sum(w * history.records[i]["scores"][label][0] for label, w in weights.items())

    losses = [r["loss"][0] for r in history.records]
    assert all(math.isfinite(v) for v in losses), losses
    best = history.best_iteration[0]
    return first["grad"], weighted(0), weighted(best), best


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.flatten().double(), b.flatten().double()
    return float(a @ b / (a.norm() * b.norm()))


def check_format(engine, b, stack, case, model, reference, deficit) -> None:
    errs = oracle(engine, b, stack, model, case)
    grad, first, best, best_i = gradient_and_gain(engine, b, stack, model, ITERATIONS)
    ref_grad, *_ = gradient_and_gain(engine, b, stack, reference, 2)
    assert torch.isfinite(grad).all() and float(grad.abs().max()) > 0, f"{case}: no gradient reached the noise"
    cos = cosine(grad, ref_grad)
    rel = float((grad - ref_grad).norm() / ref_grad.norm())
    print(f"\n[{case}] oracle latent {errs['latent']:.3g} ({errs['roundings']:.2g} roundings) image {errs['image']:.3g}; noise gradient vs dequantized "
          f"float32: cosine {cos:.9f} (relative error {rel:.3g}); weighted reward {first:.4f} -> {best:.4f} "
          f"(iteration {best_i} of {ITERATIONS})")
    assert 1 - cos <= deficit, f"{case}: the noise gradient is not the dequantized model's (cosine {cos})"
    assert best_i > 0 and best > first, f"{case}: the reward did not rise ({first} -> {best})"


# -- 1. fp8 weight_dtype (UNETLoader's option) ----------------------------------------------------------------------

def test_fp8_weight_dtype(engine, base, stack, folder, weights):
    sd, _ = weights
    path = write(folder, "fp32", sd, None)
    model = unet_loader(engine, path, "fp8_e4m3fn")
    stored = [p for p in model.model.diffusion_model.parameters() if p.dim() > 1]
    assert stored and all(p.dtype == torch.float8_e4m3fn for p in stored), {p.dtype for p in stored}
    # the reference: the same fp8 values cast to float32 (what ComfyUI's manual cast computes with)
    deq = {k: (v.to(torch.float8_e4m3fn).float() if v.dim() > 1 else v) for k, v in sd.items()}
    reference = unet_loader(engine, write(folder, "fp8_e4m3fn_dequantized", deq, None))
    check_format(engine, base, stack, "fp8_e4m3fn weight_dtype", model, reference, COSINE_DEFICIT["fp8"])


# -- 2. quantized files that run --------------------------------------------------------------------------------

@pytest.mark.parametrize("case", list(RUNNING))
def test_quantized_file(engine, base, stack, folder, weights, case):
    need, build, kind = RUNNING[case]
    host_has(engine, need)
    sd, linears = weights
    out, metadata, deq = build(sd, linears, engine)
    model = unet_loader(engine, write(folder, case, out, metadata))
    layers = quantized_layers(model)
    written = {n for n in linears if f"{n}.weight_scale" in out or f"{n}.scale_weight" in out}
    assert len(written) >= 8 and set(layers) == written, f"{case}: loaded quantized {sorted(layers)}, written {written}"
    print(f"\n[{case}] {len(layers)} quantized layers as {sorted(set(layers.values()))}")
    reference = unet_loader(engine, write(folder, f"{case} dequantized", deq, None))
    assert not quantized_layers(reference)
    check_format(engine, base, stack, case, model, reference, COSINE_DEFICIT[kind])


# -- 3. formats without a backward: refused by name, before the run ---------------------------------------------

@pytest.mark.parametrize("case", list(REFUSED))
def test_format_without_backward_is_refused(engine, pack, base, stack, folder, weights, case):
    host_has(engine, case)
    sd, linears = weights
    out, metadata, _ = REFUSED[case](sd, linears, engine)
    model = unet_loader(engine, write(folder, case, out, metadata))
    quantized = quantized_layers(model)
    assert quantized and set(quantized) <= set(linears), quantized
    assert torch.isfinite(ksampler(engine, base, model)["samples"]).all()  # the host samples it
    with first_iteration(engine) as first, pytest.raises(Exception) as refused:
        reno(engine, base, stack, model, 2)
    message = str(refused.value)
    print(f"\n[{case}] refused: {message}")
    assert "image" not in first, "the run started before refusing"
    assert case in message and pack.nodes.host.version() in message and "bf16" in message, message
    # the refusal is needed: without the check, the backward fails inside comfy-kitchen
    host = pack.nodes.host
    check = host.quantized_error
    host.quantized_error = lambda model: None
    try:
        with pytest.raises(Exception) as failed:
            reno(engine, base, stack, model, 2)
    finally:
        host.quantized_error = check
    print(f"[{case}] without the check: {type(failed.value).__name__}: {str(failed.value)[:160]}")
    assert case not in str(failed.value)


# -- 4. fp8 matrix multiplication, as ComfyUI loads fp8 files for a GPU with fp8 compute -----------------------------

@contextlib.contextmanager
def fp8_compute():
    """While inside, ComfyUI is told the device multiplies in fp8 (``mm.supports_fp8_compute``, which
    ``comfy.ops.pick_operations`` reads when the model loads): the ops it picks on Ada, Hopper and Blackwell GPUs.
    torch's ``_scaled_mm`` runs on CPUs too."""
    import comfy.model_management as mm

    real = mm.supports_fp8_compute
    mm.supports_fp8_compute = lambda *args, **kwargs: True
    try:
        yield
    finally:
        mm.supports_fp8_compute = real


FP8_MATMUL = {"scaled fp8": scaled_fp8, "fp8 comfy_quant": fp8_comfy_quant}


@pytest.mark.parametrize("case", list(FP8_MATMUL))
def test_fp8_matrix_multiply_as_on_a_gpu(engine, pack, base, stack, folder, weights, case):
    """0.33: both files run (``QuantLinearFunc``: the activations multiplied in fp8 as KSampler does, the backward
    through the dequantized weight). 0.3.75: the fp8 comfy_quant file runs; the scaled-fp8 file loads as
    ``scaled_fp8_ops(fp8_matrix_mult=True)``, whose fp8 linear fails under autograd: refused by name."""
    import comfy.ops

    sd, linears = weights
    out, metadata, deq = FP8_MATMUL[case](sd, linears, engine)
    with fp8_compute():
        model = unet_loader(engine, write(folder, f"{case} fp8 matmul", out, metadata))
    reference = unet_loader(engine, write(folder, f"{case} fp8 matmul dequantized", deq, None))
    host = pack.nodes.host
    if case == "scaled fp8" and hasattr(comfy.ops, "scaled_fp8_ops"):
        with first_iteration(engine) as first, pytest.raises(Exception) as refused:
            reno(engine, base, stack, model, 2)
        message = str(refused.value)
        print(f"\n[{case}, fp8 matmul] refused: {message}")
        assert "image" not in first, "the run started before refusing"
        assert "scaled fp8" in message and host.version() in message and "bf16" in message, message
        check = host.quantized_error
        host.quantized_error = lambda model: None
        try:
            with pytest.raises(Exception) as failed:
                reno(engine, base, stack, model, 2)
        finally:
            host.quantized_error = check
        print(f"[{case}, fp8 matmul] without the check: {type(failed.value).__name__}: {str(failed.value)[:160]}")
        assert "automatic differentiation" in str(failed.value)
        return
    assert host.quantized_error(model.model) is None
    check_format(engine, base, stack, f"{case}, fp8 matmul", model, reference, COSINE_DEFICIT["fp8 matmul"])


def test_fp8_fast_weight_dtype_as_on_a_gpu(engine, base, stack, folder, weights):
    """UNETLoader's fp8_e4m3fn_fast on a GPU with fp8 compute (``comfy.ops.fp8_ops``): KSampler multiplies each
    Linear's activations in fp8; in ReNO's gradient pass ComfyUI's own ``fp8_linear`` cannot run on activations that
    carry a gradient (it clamps them in place, ``torch.clamp(..., out=)``), and ``fp8_ops`` falls back to its cast
    path (the fp8 weights cast to float32) for those layers. So the gradient is the dequantized model's, and ReNO's
    iteration 0 differs from KSampler's by the fp8 rounding of the activations, not by float rounding: measured and
    printed, bounded at fp8's precision (eps 2^-3) of the noised latent."""
    sd, _ = weights
    path = write(folder, "fp32", sd, None)
    with fp8_compute():
        model = unet_loader(engine, path, "fp8_e4m3fn_fast")
    deq = {k: (v.to(torch.float8_e4m3fn).float() if v.dim() > 1 else v) for k, v in sd.items()}
    reference = unet_loader(engine, write(folder, "fp8_e4m3fn_dequantized", deq, None))
    latent, _, history = reno(engine, base, stack, model, 1)
    ks, ks_ref = ksampler(engine, base, model), ksampler(engine, base, reference)
    scale = history.sigma * float(history.best_noise.abs().max()) + float(base["latent"]["samples"].abs().max())
    fp8_diff = float((ks["samples"] - ks_ref["samples"]).abs().max())
    err = float((latent["samples"] - ks["samples"]).abs().max())
    grad, first, best, best_i = gradient_and_gain(engine, base, stack, model, ITERATIONS)
    ref_grad, *_ = gradient_and_gain(engine, base, stack, reference, 2)
    cos = cosine(grad, ref_grad)
    print(f"\n[fp8_e4m3fn_fast, fp8 matmul] KSampler fp8 vs float32 matmul {fp8_diff:.3g}; ReNO iteration 0 vs KSampler "
          f"{err:.3g} (noised latent {scale:.3g}); noise gradient vs dequantized float32: cosine {cos:.9f}; weighted "
          f"reward {first:.4f} -> {best:.4f} (iteration {best_i} of {ITERATIONS})")
    assert fp8_diff > 0, "KSampler did not multiply in fp8: the fp8 path was not taken"
    assert err <= 2.0 ** -3 * scale
    assert torch.isfinite(grad).all() and 1 - cos <= COSINE_DEFICIT["fp8 matmul"]
    assert best_i > 0 and best > first


# -- 5. int8 with a fused input activation (0.33: Wan, LTX-Video, MiniMax MLPs) ------------------------------------

def test_int8_fused_activation_gradient_needs_training_mode(engine, pack):
    """``comfy.ops.linear_input_act(linear, x, act)`` = ``linear(act(x))``: for an int8 layer ComfyUI 0.33 folds
    ``act`` into comfy-kitchen's int8 linear kernel, whose gradient is not that of ``linear(act(x))``, unless
    ``comfy.model_management.in_training`` is set (then it runs ``act`` eagerly). The run sets it
    (``host.training_mode``): inside, the input gradient is the dequantized layer's at int8's precision; outside it
    is silently another one (the control that shows why the run must set it)."""
    import comfy.ops

    if not hasattr(comfy.ops, "linear_input_act"):
        pytest.skip(f"{engine.info} has no fused input activation (comfy.ops.linear_input_act)")
    import comfy.quant_ops as q

    torch.manual_seed(0)
    w, bias, x0 = torch.randn(64, 256) * 0.05, torch.randn(64) * 0.1, torch.randn(2, 5, 256)
    ops = comfy.ops.mixed_precision_ops({"mixed_ops": True}, torch.float32,
                                        disabled={"float8_e4m3fn", "float8_e5m2", "nvfp4", "mxfp8"})
    layer = ops.Linear(256, 64, device="cpu")
    qt = q.QuantizedTensor.from_float(w, "TensorWiseINT8Layout")
    sd = {**qt.state_dict("weight"), "bias": bias,
          "comfy_quant": torch.tensor(list(json.dumps({"format": "int8_tensorwise"}).encode()), dtype=torch.uint8)}
    layer.load_state_dict(sd, strict=False)
    assert isinstance(layer.weight, q.QuantizedTensor)

    def act(x):
        return torch.nn.functional.gelu(x, approximate="tanh")

    def grad_of(f):
        x = x0.clone().requires_grad_()
        (g,) = torch.autograd.grad(f(x).square().sum(), x)
        return g

    reference = grad_of(lambda x: torch.nn.functional.linear(act(x), qt.dequantize().float(), bias))
    with pack.nodes.host.training_mode():
        inside = grad_of(lambda x: comfy.ops.linear_input_act(layer, x, "gelu_tanh"))
    outside = grad_of(lambda x: comfy.ops.linear_input_act(layer, x, "gelu_tanh"))
    cos_in, cos_out = cosine(inside, reference), cosine(outside, reference)
    print(f"\n[int8 fused gelu] input gradient vs the dequantized layer's: cosine {cos_in:.6f} in the run's training "
          f"mode, {cos_out:.6f} without it")
    assert 1 - cos_in <= COSINE_DEFICIT["int8"]
    assert 1 - cos_out > COSINE_DEFICIT["int8"], (
        "comfy-kitchen's fused int8 activation now has the right gradient: host.training_mode is no longer needed "
        "for it (update its docstring)")
