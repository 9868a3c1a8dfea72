"""GGUF-quantized diffusion models through ReNO, loaded the way ComfyUI users load them.

ComfyUI-GGUF (city96) keeps every weight of a ``.gguf`` model as a ``torch.Tensor`` subclass carrying its
quantization type and logical shape, and dequantizes it inside its own ``comfy.ops`` layers. ReNO swaps the
inference-mode weights of the models for zero-copy normal tensors during a run (``nodes/autograd.py``); that
swap must keep the subclass and its attributes, and the gradient must reach the noise through the
dequantizing layers.

A tiny SD1.5 UNet (real SD1.5 widths, 320 channels and 768-wide context, so that ComfyUI's model detection
recognises it; one level, one transformer block) is written to ``models/diffusion_models/*.gguf`` in the layout
of the real quantized UNet files (Q8_0 for the large tensors, F16 where rows are not whole blocks, F32 for
small ones; ``tests/tiny_gguf.py``) and loaded by

* ``ComfyUI-GGUF``: the real pack's ``UnetLoaderGGUF``, when ``COMFYUI_GGUF_PATH`` names a checkout (the engine
  loads it at boot, see ``tests/engine/conftest.py``); skipped with the reason otherwise;
* ``replica``: ``ReNOTestUnetLoaderGGUFReplica``, the test-only replica of the same mechanism
  (``testing/comfy_fixture_nodes/gguf_replica.py``), which always runs (CI has no ComfyUI-GGUF: it is not on PyPI).

Both need the PyPI package ``gguf`` (the writer, and the loaders' reader); without it the module skips.
"""

from __future__ import annotations

from pathlib import Path

import comfy_host
import pytest
import torch
from engine_support import reward_stack
from tolerances import EPS32, ORACLE_IMAGE_K, ORACLE_LATENT_K, rounding_tol

gguf = pytest.importorskip("gguf", reason="the PyPI package gguf (llama.cpp's GGUF reader/writer) is not installed: "
                                          "pip install 'gguf>=0.13'")

PROMPT = "a photo of a cat"
REWARDS = (("pickscore", 1.0), ("clipscore", 0.5))
FILE = "reno_tiny_sd15_Q8_0.gguf"
CONTEXT_DIM = 768  # what ComfyUI's detection needs to call a UNet SD1.5 (with 320 model channels)
UNET_STD = 0.02
LOADERS = {"ComfyUI-GGUF": "UnetLoaderGGUF", "replica": "ReNOTestUnetLoaderGGUFReplica"}
#: measured numbers, printed (pytest -s) for the record
NUMBERS: dict = {}


def _fixture_pack(engine):
    module = engine.packs[comfy_host.FIXTURE_PACK_NAME]["module"]
    assert module is not None, "the fixture pack's module is not loaded"
    return module


def build_sd15_unet(fixture, seed: int = 0):
    """A randomly initialised SD1.5 ``BaseModel`` small enough for the CPU that detection still calls SD1.5."""
    import comfy.model_management as mm
    import comfy.supported_models

    cfg = fixture.tiny_unet_config(1, CONTEXT_DIM)
    cfg.update(model_channels=320, channel_mult=[1], num_res_blocks=[1], transformer_depth=[1],
               transformer_depth_output=[1, 1], transformer_depth_middle=1)
    model_config = comfy.supported_models.SD15(cfg)
    model = model_config.get_model({}, device=mm.unet_offload_device())
    fixture._init_module_weights(model.diffusion_model, seed, UNET_STD)
    model.to(torch.float32)
    return model.eval()


@pytest.fixture(scope="module", name="reward_stack")
def reward_stack_fixture(engine):
    return reward_stack(engine, REWARDS)


@pytest.fixture(scope="module")
def source(engine):
    """The float UNet, its GGUF file in the engine's diffusion-model folder, the VAE and the conditioning."""
    from tiny_gguf import write_unet_gguf

    fixture = _fixture_pack(engine)
    fp = engine.folder_paths
    folder = "diffusion_models" if "diffusion_models" in fp.folder_names_and_paths else "unet"
    target = Path(fp.get_folder_paths(folder)[0])
    assert engine.workdir in target.parents, f"{target} is outside the test workdir"
    target.mkdir(parents=True, exist_ok=True)
    model = build_sd15_unet(fixture)
    written = write_unet_gguf(target / FILE, model.diffusion_model.state_dict(), arch="sd1")
    kinds = {k: sum(1 for v in written.values() if v == k) for k in set(written.values())}
    assert kinds.get("Q8_0", 0) > 0 and kinds.get("F32", 0) > 0, kinds
    (pos,) = engine.call_node("ReNOTestConditioning", inference=True, text=PROMPT, context_dim=CONTEXT_DIM)
    (neg,) = engine.call_node("ReNOTestConditioning", inference=True, text="", context_dim=CONTEXT_DIM)
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=64, height=64, batch_size=1)
    return dict(float_model=model, kinds=kinds, vae=fixture.build_tiny_vae(0), pos=pos, neg=neg, latent=latent)


_MODELS: dict = {}


@pytest.fixture(params=list(LOADERS))
def loaded(request, engine, source):
    """(loader name, MODEL) as the GGUF loader node returns it under inference mode (like the executor)."""
    name = request.param
    node = LOADERS[name]
    if node not in engine.nodes.NODE_CLASS_MAPPINGS:
        if name == "ComfyUI-GGUF":
            pytest.skip("the real ComfyUI-GGUF is not loaded: set COMFYUI_GGUF_PATH to a city96/ComfyUI-GGUF "
                        "checkout (the replica runs instead)")
        pytest.skip(f"{node} is not registered on {engine.info}")
    import comfy.sd

    if not hasattr(comfy.sd, "load_diffusion_model_state_dict"):  # GGUF loaders pass custom_operations through it
        pytest.skip(f"{engine.info} has no comfy.sd.load_diffusion_model_state_dict(sd, model_options)")
    if name not in _MODELS:
        (model,) = engine.call_node(node, inference=True, unet_name=FILE)
        _MODELS[name] = model
    return name, _MODELS[name]


def gguf_weights(model) -> dict:
    """``{name: parameter}`` of the diffusion model's weights that carry a GGUF tensor type."""
    return {n: p for n, p in model.model.diffusion_model.named_parameters() if hasattr(p, "tensor_type")}


def reno(engine, model, source, stack, *, iterations, seed):
    out = engine.call_node("ReNOSampler", inference=True, model=model, positive=source["pos"], negative=source["neg"],
                           vae=source["vae"], latent_image=source["latent"], rewards=stack, prompt=PROMPT, seed=seed,
                           iterations=iterations, learning_rate=5.0, cfg=1.0, regularization=0.01, grad_clip=0.1)
    return out["result"]


def weighted_totals(history) -> list[float]:
    return history.chart()["series"][0]["weighted_total"]


def test_the_file_loads_as_quantized_tensor_subclass_weights(engine, source, loaded):
    name, model = loaded
    weights = gguf_weights(model)
    Q = gguf.GGMLQuantizationType
    types = {}
    for p in weights.values():
        types[p.tensor_type.name] = types.get(p.tensor_type.name, 0) + 1
    assert types.get("Q8_0", 0) > 0, types
    float_sd = source["float_model"].diffusion_model.state_dict()
    for key, p in weights.items():
        assert type(p) is not torch.Tensor and isinstance(p, torch.nn.Parameter), key
        assert p.is_inference(), f"{key}: loaded under inference mode, it should be an inference tensor"
        assert tuple(p.shape) == tuple(float_sd[key].shape), key  # the logical shape
        if p.tensor_type == Q.Q8_0:  # raw blocks: 34 bytes per 32 values
            assert p.dtype == torch.uint8 and torch.Tensor.size(p) != float_sd[key].shape, key
    # the layers dequantize to (nearly) the float weights
    conv = model.model.diffusion_model.input_blocks[1][0].in_layers[2]
    assert conv.weight.tensor_type == Q.Q8_0
    x = torch.randn(1, 320, 8, 8, generator=torch.Generator().manual_seed(0))
    w = float_sd["input_blocks.1.0.in_layers.2.weight"]
    ref = torch.nn.functional.conv2d(x, w, float_sd["input_blocks.1.0.in_layers.2.bias"], padding=1)
    diff = (conv(x) - ref).abs()
    err = float(diff.max() / ref.abs().max())
    # Q8_0 stores each weight as one of 255 steps of its 32-block's max / 127: independent errors of at most half a
    # step (<= max|w| / 254), summed over each output's 320 x 3 x 3 window with the inputs as weights: standard
    # deviation step * ||x_window|| / sqrt(12); six of those bound every output (plus float32's own rounding)
    step = float(w.abs().max()) / 127
    window = torch.nn.functional.conv2d(x.square(), torch.ones(1, *w.shape[1:]), padding=1).sqrt()
    bound = 6 * step / 12**0.5 * window + 64 * EPS32 * float(ref.abs().max())
    assert bool((diff <= bound).all()), float((diff / bound).max())
    NUMBERS[(name, "tensor types")] = types
    print(f"\n[gguf] {name}: {type(conv.weight).__name__} weights {types}; Q8_0 conv relative error {err:.2e}")


def test_oracle_one_iteration_is_ksampler_on_the_gguf_model(engine, source, reward_stack, loaded):
    name, model = loaded
    seed = 3
    latent, image, history = reno(engine, model, source, reward_stack, iterations=1, seed=seed)
    (ks,) = engine.call_node("KSampler", inference=True, model=model, seed=seed, steps=1, cfg=1.0,
                             sampler_name="euler", scheduler="simple", positive=source["pos"], negative=source["neg"],
                             latent_image=source["latent"], denoise=1.0)
    (ks_image,) = engine.call_node("VAEDecode", inference=True, samples=ks, vae=source["vae"])
    err = float((latent["samples"].float() - ks["samples"].float()).abs().max())
    err_image = float((image.float() - ks_image.float()).abs().max())
    NUMBERS[(name, "oracle")] = (err, err_image)
    print(f"\n[gguf oracle] {name}: sigma {history.sigma:.4f}, max abs error latent {err:.3g}, image {err_image:.3g}")
    assert float(ks["samples"].abs().max()) > 0.1  # a real sample, not zeros
    # the one-step oracle: rounding at the noised latent's magnitude (|latent| + sigma |noise|), |image| <= 1
    noised = history.sigma * float(history.best_noise.abs().max()) + float(source["latent"]["samples"].abs().max())
    assert err <= rounding_tol(ORACLE_LATENT_K, torch.float32, ks["samples"], scale=None, at_least=noised)
    assert err_image <= rounding_tol(ORACLE_IMAGE_K, torch.float32, scale=1.0)


def test_gradients_reach_the_noise_and_the_gguf_weights_survive(engine, source, reward_stack, loaded):
    name, model = loaded
    before = {k: (p, type(p), p.tensor_type, p.is_inference()) for k, p in gguf_weights(model).items()}
    assert before
    _, _, history = reno(engine, model, source, reward_stack, iterations=6, seed=1)
    grads = [r["grad_norm"][0] for r in history.records if r["grad_norm"]]
    totals = weighted_totals(history)
    best = history.best_iteration[0]
    NUMBERS[(name, "optimization")] = (totals[0], totals[best], best)
    print(f"\n[gguf reward] {name}: weighted reward iteration 0 {totals[0]:.5f} -> best {totals[best]:.5f} "
          f"(iteration {best}); grad norms {[round(g, 5) for g in grads]}")
    assert grads and all(g > 0 and g == g for g in grads), grads
    assert best > 0 and totals[best] > totals[0]

    # the swap put every GGUF weight back: the same objects, class and quantization type
    after = gguf_weights(model)
    assert set(after) == set(before)
    for key, (p, cls, qtype, inference) in before.items():
        q = after[key]
        assert q is p and type(q) is cls and q.tensor_type == qtype and q.is_inference() == inference, key

    # and a second run works, from the same weights: its first iteration is the first run's
    _, _, again = reno(engine, model, source, reward_stack, iterations=2, seed=1)
    assert again.records[0]["grad_norm"][0] > 0
    # the same weights and noise through the same code (the VAE layout may be chosen anew): the loss of the same
    # image to ~ORACLE_IMAGE_K roundings of |loss|, as in the memory-mode tests
    assert again.records[0]["loss"][0] == pytest.approx(history.records[0]["loss"][0], rel=ORACLE_IMAGE_K * EPS32,
                                                        abs=0)
    assert all(gguf_weights(model)[k] is p for k, (p, *_rest) in before.items())
