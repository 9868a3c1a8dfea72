"""ReNO and ComfyUI's memory manager: weights streamed per layer, shared cast buffers, the model compiler.

A model that ComfyUI loads partially (lowvram; with dynamic VRAM every layer) casts each offloaded layer's weights
from its stored copy at every call (``comfy.ops.cast_bias_weight``), on 0.33 into one cast buffer per offload stream
that the next offloaded layer overwrites, with dynamic VRAM into comfy-aimdo memory that is released after the call.
The run recomputes each such layer in the backward pass, its cast included, and its backward reads the run's own
copy of the weight (``nodes/host.py``: ``streamed_weights``). Checked here on the CPU, on every engine:

1. the cast path: a tiny SD UNet stored in bf16 and in fp8 (cast to float32 per layer, ComfyUI's manual cast),
   partially loaded with a small budget, gives the noise gradient of the same model fully loaded;
2. a reused cast buffer cannot give a silently different gradient: ``cast_bias_weight`` made to hand out one shared
   buffer that the next layer overwrites (as views of one tensor, like ``mm.get_cast_buffer``: autograd's version
   counter sees the overwrite; as new tensor objects over the same memory, like comfy-aimdo's: nothing sees it; and
   such memory reused by someone else as soon as the layer hands it back, like an unpinned dynamic-VRAM weight) -
   the run gives the reference gradient. The controls: without the per-layer recomputation the first is caught
   ("modified by an inplace operation": autograd's, the pack's recomputation's or its copying hooks') and the second
   is silently wrong; recomputed without the run's copy of the weight, the third is silently wrong;
3. the host's model compiler and CUDA graphs are off during the run and restored after (0.33: ``--disable-cuda-graphs``;
   ``--disable-comfy-compiler`` where it exists; 0.3.75 has neither: skipped, naming the engine);
4. cast copies the host made under inference mode (an earlier sampler's) are forgotten before the run uses them.
"""

from __future__ import annotations

import contextlib

import comfy_host
import pytest
import torch
from engine_support import PROMPT_TEXT, depth_for, wrapped_generator

REWARDS = (("pickscore", 1.0),)
SEED = 3
INPLACE = "modified by an inplace operation"
STORAGE = {"bf16": torch.bfloat16, "fp8_e4m3fn": torch.float8_e4m3fn}
MEMORY_MODES = ("no checkpointing", "checkpoint all")  # every activation kept; every block recomputed


# -- fixtures ------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def base(engine):
    model, vae = engine.call_node("ReNOTestTinySD", inference=True, transformer_depth=depth_for(engine),
                                  context_dim=32, seed=0)
    (pos,) = engine.call_node("ReNOTestConditioning", inference=True, text=PROMPT_TEXT, context_dim=32)
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=64, height=64, batch_size=1)
    return dict(model=model, vae=vae, pos=pos, latent=latent)


@pytest.fixture(scope="module")
def unet_file(engine, base):
    """The fixture's UNet as a diffusion-model file, loadable by ComfyUI's own loader (``load_diffusion_model``)."""
    from tiny_formats import write_diffusion_model

    folder = engine.workdir / "reno_memory_manager"
    folder.mkdir(exist_ok=True)
    return write_diffusion_model(base["model"], folder / "reno_tiny_unet.safetensors")


def load(unet_file, storage: str | None):
    """A fresh MODEL from the file, its weights stored as ``storage`` (None: the host's default, float32 on a CPU)."""
    import comfy.sd
    from tiny_formats import tiny_sd15_detection

    options = {} if storage is None else {"dtype": STORAGE[storage]}
    with tiny_sd15_detection(32):
        return comfy.sd.load_diffusion_model(str(unet_file), model_options=options)


def offloaded(patcher) -> list:
    """The layers ``ModelPatcher.load`` left offloaded (cast at every call): the host's own mark."""
    return [m for m in comfy_layers(patcher) if m.comfy_cast_weights and hasattr(m, "prev_comfy_cast_weights")]


@contextlib.contextmanager
def partially_loaded(patcher):
    """``patcher`` loaded partially (``ModelPatcher.patch_model`` with a ``lowvram_model_memory`` budget, the lowvram
    load that ``partially_load`` does: the layers that do not fit are offloaded and cast at every call; with three
    quarters of the model's size about a fifth of the layers fit), and kept so while the test runs: ComfyUI's own
    loads of it (``LoadedModel.model_use_more_vram``, called by ``load_models_gpu``) load nothing more, as on a GPU
    with little free memory (on the CPU ComfyUI would otherwise load every model whole)."""
    import comfy.model_management as mm

    size, total = patcher.model_size(), len(comfy_layers(patcher))
    for fraction in (0.75, 0.5, 0.25):  # the host's budget also counts float32 casts and its streams' look-ahead
        patcher.patch_model(patcher.load_device, lowvram_model_memory=int(size * fraction))
        if 0 < len(offloaded(patcher)) < total:
            break
    assert patcher.model.model_lowvram and 0 < len(offloaded(patcher)) < total, (len(offloaded(patcher)), total)
    real = mm.LoadedModel.model_use_more_vram

    def hold(self, extra_memory, force_patch_weights=False):
        if getattr(self.model, "model", None) is patcher.model:
            return 0
        return real(self, extra_memory, force_patch_weights=force_patch_weights)

    mm.LoadedModel.model_use_more_vram = hold
    try:
        yield patcher
    finally:
        mm.LoadedModel.model_use_more_vram = real


@contextlib.contextmanager
def first_noise_gradient(pack, seen: dict | None = None):
    """Records the gradient of the first backward pass with respect to the noise (``out["grad"]``) and, when ``seen``
    holds a ``during`` callable, what it returns inside the run (``out["during"]``)."""
    out: dict = {}

    def wrap(generate):
        def forward(z, *args, **kwargs):
            if z.requires_grad and "grad" not in out:
                z.register_hook(lambda g: out.setdefault("grad", g.detach().clone()))
            if seen is not None and "during" in seen:
                out.setdefault("during", seen["during"]())
            return generate(z, *args, **kwargs)
        return forward

    with wrapped_generator(pack, wrap):
        yield out


def reno(engine, model, base, stack, memory="no checkpointing"):
    out = engine.call_node("ReNOSampler", inference=True, model=model, positive=base["pos"], negative=base["pos"],
                           vae=base["vae"], latent_image=base["latent"], rewards=stack, prompt=PROMPT_TEXT,
                           seed=SEED, iterations=2, learning_rate=5.0, cfg=1.0, regularization=0.0, grad_clip=0.1,
                           memory=memory)
    return out["result"]


def noise_gradient(engine, pack, model, base, stack, memory="no checkpointing") -> torch.Tensor:
    with first_noise_gradient(pack) as out:
        reno(engine, model, base, stack, memory)
    assert "grad" in out, "the run never backpropagated to the noise"
    return out["grad"]


def same_gradient_tol(reference: torch.Tensor) -> float:
    # the same float32 operations on the same weights in both runs (a recomputed layer runs the same kernels on the
    # same inputs): equal up to a few roundings of the largest element
    return 8 * torch.finfo(torch.float32).eps * float(reference.abs().max())


def comfy_layers(patcher) -> list:
    return [m for m in patcher.model.diffusion_model.modules() if hasattr(m, "comfy_cast_weights")]


# -- 1. the cast path: bf16 / fp8 storage, partially loaded == fully loaded ------------------------------------------

@pytest.mark.parametrize("storage", ["bf16", "fp8_e4m3fn"])
def test_partially_loaded_low_precision_model_gives_the_fully_loaded_noise_gradient(engine, pack, base, stack,
                                                                                   unet_file, storage):
    host = pack.nodes.host
    full = load(unet_file, storage)
    weights = [p for p in full.model.diffusion_model.parameters() if p.dim() > 1]
    assert weights and all(p.dtype == STORAGE[storage] for p in weights), {p.dtype for p in weights}
    assert full.model.manual_cast_dtype == torch.float32, "the host does not cast this storage to float32 per layer"
    # one reference per memory mode: recomputing the blocks may pick other float32 kernels (test_memory_engine.py)
    references = {memory: noise_gradient(engine, pack, full, base, stack, memory) for memory in MEMORY_MODES}
    assert all(float(r.abs().max()) > 0 for r in references.values())

    part = load(unet_file, storage)
    with partially_loaded(part):
        streamed = host.streamed_layers([part.model])
        layers = comfy_layers(part)
        assert streamed == offloaded(part), "the run does not recompute exactly the offloaded layers"
        for memory, reference in references.items():
            got = noise_gradient(engine, pack, part, base, stack, memory)
            err = float((got - reference).abs().max())
            print(f"\n[{storage}, {len(streamed)} of {len(layers)} layers streamed, {memory}] noise gradient max abs "
                  f"error {err:.3g} (max |g| {float(reference.abs().max()):.3g})")
            torch.testing.assert_close(got, reference, rtol=0, atol=same_gradient_tol(reference))
    # the run left no wrapper on the streamed layers
    assert not any("forward" in m.__dict__ for m in streamed)


# -- 2. a reused cast buffer: recomputed correctly, or caught; never silently different -----------------------------

class SharedCastBuffer:
    """``comfy.ops.cast_bias_weight`` made to hand out every layer's weight in one shared buffer that the next layer's
    cast overwrites:

    * ``views``: views of one tensor, like 0.33's ``mm.get_cast_buffer`` (one autograd version counter for all);
    * ``aliases``: a new tensor object over the same memory at every call, like comfy-aimdo's ``aimdo_to_tensor``
      (no version counter sees an overwrite);
    * ``released``: aliases, and the memory is reused by someone else as soon as the layer hands it back
      (``uncast_bias_weight``), like a dynamic-VRAM weight unpinned after the call and evicted."""

    def __init__(self, kind: str, nbytes: int):
        self.kind = kind
        self.buffer = torch.zeros(nbytes, dtype=torch.uint8)
        self.casts = self.released = 0

    def slot(self, like: torch.Tensor) -> torch.Tensor:
        if self.kind == "views":
            n = like.numel() * like.element_size()
            return self.buffer[:n].view(like.dtype).view(like.shape)
        return torch.empty(0, dtype=like.dtype).set_(self.buffer.untyped_storage(), 0, like.shape)

    def hand_out(self, weight: torch.Tensor) -> torch.Tensor:
        slot = self.slot(weight)
        with torch.no_grad():
            slot.copy_(weight)
        self.casts += 1
        return slot

    def hand_back(self, weight) -> None:
        if self.kind == "released" and isinstance(weight, torch.Tensor):
            with torch.no_grad():
                self.slot(weight).fill_(0.25)  # another user of the memory writes its own data
            self.released += 1

    @contextlib.contextmanager
    def installed(self):
        import comfy.ops

        cast, uncast = comfy.ops.cast_bias_weight, comfy.ops.uncast_bias_weight

        def cast_bias_weight(s, *args, **kwargs):
            out = cast(s, *args, **kwargs)
            return (self.hand_out(out[0]), *out[1:])

        def uncast_bias_weight(s, weight, *args, **kwargs):
            uncast(s, weight, *args, **kwargs)
            self.hand_back(weight)

        comfy.ops.cast_bias_weight, comfy.ops.uncast_bias_weight = cast_bias_weight, uncast_bias_weight
        try:
            yield self
        finally:
            comfy.ops.cast_bias_weight, comfy.ops.uncast_bias_weight = cast, uncast


@pytest.fixture(scope="module")
def fp32_references(engine, pack, base, stack, unet_file):
    model = load(unet_file, None)
    return {memory: noise_gradient(engine, pack, model, base, stack, memory) for memory in MEMORY_MODES}


def shared_buffer_run(engine, pack, base, stack, unet_file, kind, memory):
    model = load(unet_file, None)
    nbytes = max(p.numel() * p.element_size() for p in model.model.diffusion_model.parameters())
    with partially_loaded(model), SharedCastBuffer(kind, nbytes).installed() as shared:
        grad = noise_gradient(engine, pack, model, base, stack, memory)
    assert shared.casts > 0, "no layer was cast through the shared buffer"
    assert kind != "released" or shared.released > 0, "no layer handed its weight back"
    return grad


def differs(got, reference, what) -> None:
    err = float((got - reference).abs().max())
    print(f"\n[{what}] noise gradient max abs error {err:.3g} (max |g| {float(reference.abs().max()):.3g})")
    assert err > 100 * same_gradient_tol(reference), f"{what}: the shared buffer did not change the gradient"


@pytest.mark.parametrize("kind", ["views", "aliases", "released"])
@pytest.mark.parametrize("memory", MEMORY_MODES)
def test_a_reused_cast_buffer_is_recomputed_correctly(engine, pack, base, stack, unet_file, fp32_references, kind,
                                                      memory):
    reference = fp32_references[memory]
    got = shared_buffer_run(engine, pack, base, stack, unet_file, kind, memory)
    print(f"\n[shared cast buffer, {kind}, {memory}] noise gradient max abs error "
          f"{float((got - reference).abs().max()):.3g}")
    torch.testing.assert_close(got, reference, rtol=0, atol=same_gradient_tol(reference))


@pytest.mark.parametrize("memory", MEMORY_MODES)
def test_without_the_recomputation_a_shared_buffer_is_caught_or_silently_wrong(engine, pack, base, stack, unet_file,
                                                                              fp32_references, memory, monkeypatch):
    """The control: the hazard the run guards against is real. With no layer recomputed, views of one buffer are
    caught by a version counter (autograd's; the pack's recomputation's; the pack's copying hooks'), and aliases give
    another gradient."""
    monkeypatch.setattr(pack.nodes.host, "streamed_layers", lambda modules: [])
    with pytest.raises(Exception, match=INPLACE):
        shared_buffer_run(engine, pack, base, stack, unet_file, "views", memory)
    differs(shared_buffer_run(engine, pack, base, stack, unet_file, "aliases", memory), fp32_references[memory],
            f"control: not recomputed, aliases, {memory}")


def test_without_the_copy_a_released_weight_gives_another_gradient(engine, pack, base, stack, unet_file,
                                                                   fp32_references, monkeypatch):
    """The control for ``copy_constants``: recomputed, but the backward reading the host's memory after the layer
    handed it back."""
    memory = "no checkpointing"
    real = pack.nodes.host.recompute_wrapper
    monkeypatch.setattr(pack.nodes.host, "recompute_wrapper", lambda copy_constants: real(copy_constants=False))
    differs(shared_buffer_run(engine, pack, base, stack, unet_file, "released", memory), fp32_references[memory],
            f"control: recomputed without the copy, released, {memory}")


# -- 3. the model compiler and CUDA graphs are off for the run, restored after ---------------------------------------

def test_the_model_compiler_and_cuda_graphs_are_off_during_the_run_and_restored_after(engine, pack, base, stack):
    import comfy.cli_args

    args = comfy.cli_args.args
    switches = [n for n in pack.nodes.host.COMPILER_SWITCHES if hasattr(args, n)]
    if not switches:
        pytest.skip(f"{comfy_host.report_line()}: this ComfyUI has neither --disable-comfy-compiler nor "
                    "--disable-cuda-graphs (no model compiler, no CUDA graphs)")
    before = {n: getattr(args, n) for n in switches}
    assert not any(before.values()), f"the engine was started with {before}"
    seen = {"during": lambda: {n: getattr(args, n) for n in switches}}
    with first_noise_gradient(pack, seen) as out:
        reno(engine, base["model"], base, stack)
    assert out["during"] == {n: True for n in switches}, out["during"]
    assert {n: getattr(args, n) for n in switches} == before
    # restored on an error too
    with pytest.raises(RuntimeError, match="boom"), pack.nodes.host.compiler_off():
        assert all(getattr(args, n) for n in switches)
        raise RuntimeError("boom")
    assert {n: getattr(args, n) for n in switches} == before


# -- 4. cast copies made under inference mode are forgotten -----------------------------------------------------------

def test_inference_mode_cast_copies_are_dropped_before_the_run_uses_them(engine, pack, unet_file):
    import comfy.model_management as mm

    host = pack.nodes.host
    model = load(unet_file, None)
    layer = comfy_layers(model)[0]
    with torch.inference_mode():
        cached = layer.weight.detach().clone()
        buffer = torch.empty(16, dtype=torch.int8)
    layer._v, layer._v_weight, layer._v_bias, layer._v_signature = object(), cached, None, "resident"
    buffers = getattr(mm, "STREAM_CAST_BUFFERS", None)
    if isinstance(buffers, dict):
        buffers["reno-test-stream"] = buffer
    try:
        with host.streamed_weights([model.model], recompute=False) as layers:
            assert layer in layers
            assert layer._v_signature is None  # the host casts it again, in the run's (normal) mode
            if isinstance(buffers, dict):
                assert "reno-test-stream" not in buffers
    finally:
        for name in ("_v", "_v_weight", "_v_bias", "_v_signature"):
            layer.__dict__.pop(name, None)
        if isinstance(buffers, dict):
            buffers.pop("reno-test-stream", None)
