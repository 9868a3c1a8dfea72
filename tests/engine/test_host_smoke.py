"""Smoke tests of the headless ComfyUI host and the test-only fixture nodes, on a real engine."""

from __future__ import annotations

import time

import comfy_host
import numpy as np
import pytest
import torch

IDS = comfy_host.TINY_IDS


def _png_array(path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB")).astype(np.float64) / 255.0


def test_host_description(engine):
    assert engine.host.source in comfy_host.SOURCES
    assert engine.info.startswith("ComfyUI ") and str(engine.host.root) in engine.info
    assert (engine.host.root / "comfy_execution").is_dir()  # older engines are refused by comfy_host
    # The engine's folders are inside the workdir, not inside the ComfyUI checkout.
    for d in (engine.output_dir, engine.temp_dir, engine.input_dir):
        assert engine.workdir in d.parents
    assert engine.folder_paths.models_dir.startswith(str(engine.workdir))


def test_packs_loaded_under_stable_names(engine):
    import nodes

    for name in ("ReNOTestTinySD", "ReNOTestConditioning"):
        assert name in nodes.NODE_CLASS_MAPPINGS
        assert nodes.NODE_CLASS_MAPPINGS[name].CATEGORY == "ReNO/testing"
    for name, info in engine.packs.items():
        assert info["link"].name == name and info["link"].resolve() == info["path"]
        assert info["module"] is not None and info["nodes"], name
    assert comfy_host.FIXTURE_PACK_NAME in engine.packs
    # boot_engine is idempotent: same engine, packs not reloaded.
    assert comfy_host.boot_engine(engine.host, [comfy_host.FIXTURE_PACK_DIR]) is engine
    assert comfy_host.current_engine() is engine
    if comfy_host.PACK_DIR in [p["path"] for p in engine.packs.values()]:
        assert comfy_host.PACK_NAME in engine.packs
        assert engine.packs[comfy_host.PACK_NAME]["module"].__name__ != "main"


def test_torchvision_standin_keeps_transformers_blind(engine):
    import importlib.util
    import sys

    tv = sys.modules.get("torchvision")
    if not engine.torchvision_standin:
        pytest.skip("real torchvision is installed; no stand-in needed")
    assert getattr(tv, "__reno_test_standin__", False)
    from transformers.utils import import_utils

    assert import_utils.is_torchvision_available() is False
    assert importlib.util.find_spec("torchvision") is not None  # sys.modules entry, not a real package
    with pytest.raises(AttributeError):
        tv.__wrapped__  # noqa: B018 - dunder lookups must not be faked
    model = tv.models.efficientnet_v2_s()  # placeholders construct (and can be subclassed)...
    with pytest.raises(RuntimeError, match="stand-in"):
        model(None)  # ...but fail loudly when used


def test_smoke_prompt_validates_and_executes(fresh_engine):
    eng = fresh_engine
    prompt = eng.tiny_sd_prompt(filename_prefix="reno_smoke")
    ok, error, outputs, node_errors = eng.validate(prompt)
    assert ok, (error, node_errors)
    assert outputs == [IDS["save"]] and node_errors == {}

    t0 = time.perf_counter()
    res = eng.execute(prompt)
    elapsed = time.perf_counter() - t0
    res.raise_for_error()
    assert res.success and res.error is None and not res.interrupted
    assert elapsed < 10, elapsed

    # Output image exists and is not saturated (gradients through the clamp would die).
    paths = res.image_paths(IDS["save"])
    assert len(paths) == 1 and paths[0].is_file(), res.ui_outputs
    assert res.ui_outputs[IDS["save"]]["images"][0]["type"] == "output"
    img = _png_array(paths[0])
    assert img.shape == (64, 64, 3)
    inside = ((img > 0.0) & (img < 1.0)).mean()
    assert inside > 0.9, inside
    assert img.std() > 0.02, img.std()

    # The global progress hook fired for the sampler (1 step), with the node id resolved.
    assert res.progress, "progress hook never fired"
    last = res.progress[-1]
    assert (last.value, last.total, last.node_id) == (1, 1, IDS["sampler"])
    assert res.events_of("progress")
    # The executor's events went through PromptServer.instance.
    executing = [d["node"] for d in res.events_of("executing")]
    assert IDS["sampler"] in executing and executing[-1] is None
    assert [d["node"] for d in res.events_of("executed")] == [IDS["save"]]
    assert res.messages[0][0] == "execution_start"


def test_validation_errors(fresh_engine):
    eng = fresh_engine
    bad = eng.tiny_sd_prompt()
    bad[IDS["sampler"]]["inputs"]["sampler_name"] = "no_such_sampler"
    ok, error, outputs, node_errors = eng.validate(bad)
    assert not ok and IDS["sampler"] in node_errors
    with pytest.raises(comfy_host.PromptValidationError):
        eng.execute(bad)

    unknown = {"1": {"class_type": "NoSuchNode", "inputs": {}}}
    ok, error, outputs, node_errors = eng.validate(unknown)
    assert not ok and error["type"] == "invalid_prompt"


def test_execution_error_is_recorded(fresh_engine):
    # Cross-attention with a context of the wrong width fails inside KSampler.
    prompt = fresh_engine.tiny_sd_prompt(transformer_depth=1, context_dim=32, cond_context_dim=16)
    res = fresh_engine.execute(prompt)
    assert not res.success and not res.interrupted
    err = res.error
    assert err is not None and err["node_id"] == IDS["sampler"] and err["node_type"] == "KSampler"
    assert err["exception_message"] and err["traceback"]
    assert res.events_of("execution_error")
    with pytest.raises(comfy_host.HostError, match="KSampler"):
        res.raise_for_error()


def test_interrupt_from_progress_callback(fresh_engine):
    eng = fresh_engine
    seen = []

    def stop_at_first_step(ev):
        seen.append(ev)
        if ev.value == 1:
            eng.interrupt()

    res = eng.execute(eng.tiny_sd_prompt(steps=3, scheduler="normal"), progress_callback=stop_at_first_step)
    assert res.interrupted and not res.success
    assert [e.value for e in seen] == [1]
    assert res.message("execution_interrupted")["node_id"] == IDS["sampler"]
    assert res.events_of("execution_interrupted")  # broadcast to the server too
    # The callback is gone and the next run is clean.
    res2 = eng.execute(eng.tiny_sd_prompt(steps=2, scheduler="normal"))
    res2.raise_for_error()
    assert [e.value for e in res2.progress] == [1, 2]


def test_fixture_nodes_are_deterministic_and_fast(engine):
    t0 = time.perf_counter()
    m1, v1 = engine.call_node("ReNOTestTinySD", transformer_depth=0, context_dim=32, seed=3)
    assert time.perf_counter() - t0 < 1.0
    m2, v2 = engine.call_node("ReNOTestTinySD", transformer_depth=0, context_dim=32, seed=3)
    (m3, _) = engine.call_node("ReNOTestTinySD", transformer_depth=0, context_dim=32, seed=4)
    for (k, a), (_, b), _ in zip(
        m1.model.state_dict().items(), m2.model.state_dict().items(), m3.model.state_dict().items()
    ):
        assert torch.equal(a, b), k
    assert any(not torch.equal(a, c) for a, c in zip(m1.model.parameters(), m3.model.parameters()))
    for (k, a), (_, b) in zip(v1.first_stage_model.state_dict().items(), v2.first_stage_model.state_dict().items()):
        assert torch.equal(a, b), k
    for p in list(m1.model.parameters()) + list(v1.first_stage_model.parameters()):
        assert p.dtype == torch.float32 and torch.isfinite(p).all()

    (c1,) = engine.call_node("ReNOTestConditioning", text="a cat", context_dim=32)
    (c2,) = engine.call_node("ReNOTestConditioning", text="a cat", context_dim=32)
    (c3,) = engine.call_node("ReNOTestConditioning", text="a dog", context_dim=48)
    assert isinstance(c1, list) and isinstance(c1[0][1], dict)
    assert c1[0][0].shape == (1, 8, 32) and torch.equal(c1[0][0], c2[0][0])
    assert c3[0][0].shape == (1, 8, 48)

    assert v1.decode(torch.zeros(1, 4, 8, 8)).shape == (1, 64, 64, 3)


@pytest.mark.parametrize("depth", [0, 1])
def test_backward_through_tiny_model(engine, depth):
    model, _vae = engine.call_node("ReNOTestTinySD", transformer_depth=depth, context_dim=32, seed=0)
    (cond,) = engine.call_node("ReNOTestConditioning", text="a cat", context_dim=32)
    gen = torch.Generator().manual_seed(0)
    with torch.inference_mode(False), torch.enable_grad():
        x = torch.randn((1, 4, 8, 8), generator=gen).requires_grad_(True)
        sigma = model.model.model_sampling.sigma_max.reshape(1).clone()
        out = model.model.apply_model(x, sigma, c_crossattn=cond[0][0].clone())
        assert out.shape == x.shape
        out.square().mean().backward()
    assert x.grad is not None
    assert torch.isfinite(x.grad).all()
    assert x.grad.abs().sum() > 0


def test_backward_through_tiny_vae_decoder(engine):
    _model, vae = engine.call_node("ReNOTestTinySD", transformer_depth=0, context_dim=32, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.inference_mode(False), torch.enable_grad():
        z = torch.randn((1, 4, 8, 8), generator=gen).requires_grad_(True)
        img = vae.first_stage_model.decode(z.to(vae.vae_dtype))
        img = ((img + 1.0) / 2.0).clamp(0.0, 1.0)
        assert img.shape == (1, 3, 64, 64)
        inside = ((img > 0) & (img < 1)).float().mean().item()
        img.mean().backward()
    assert inside > 0.9
    assert torch.isfinite(z.grad).all() and z.grad.abs().sum() > 0


def test_broken_pack_raises_clearly(engine, tmp_path):
    pack = tmp_path / "broken_pack"
    pack.mkdir()
    (pack / "__init__.py").write_text("raise ImportError('deliberately broken test pack')\n")
    with pytest.raises(comfy_host.PackImportError, match="deliberately broken"):
        engine.load_pack("ReNO-broken-test-pack", pack)
    assert "ReNO-broken-test-pack" not in engine.packs
