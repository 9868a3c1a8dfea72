"""scripts/estimate_family_memory.py's core on a tiny FLUX.1 [schnell] (the fixture pack's config, ComfyUI's classes).

The script measures one block of each kind with the planner's ``ActivationProbe`` and multiplies by the real block
counts, then fits the preflight's three probe sizes. Here both steps are checked against direct measurements: the
scaled profile of a 2 double + 2 single block model must equal the profile measured on a 5 double + 4 single block
model (same widths, same input), byte for byte; and the size fit must reproduce a direct measurement at a larger latent.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

import pytest
import torch
from engine_support import fixture_families, pack_module

REDUCED = {"depth": 2, "depth_single_blocks": 2}  # what the script builds of every FLUX-like family
SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "estimate_family_memory.py"


@pytest.fixture(scope="module")
def est():
    spec = importlib.util.spec_from_file_location("estimate_family_memory", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def env(engine):
    # the engine's own import of the pack: importing ``reno_pack.nodes`` here would register ComfyUI's model folders
    # as the reward search path of the library that the library tests use (reno_pack.reward_loaders), and every
    # later library test would find the engine's tiny rewards instead of its own (17 failures in a whole run)
    pack = pack_module(engine)
    return {"mem": pack.optimizer.memory, "mem_nodes": pack.nodes.memory, "families": fixture_families(engine)}


def tiny_family(est, depth: dict):
    return est.Family("tiny-flux", "tiny FLUX.1 [schnell]", "FluxSchnell", "flux_schnell", {}, depth, depth, 4,
                      "fp32", "test", (64, 64), 1, 1.0, "flux_ae", (8, 32), pooled=32, latent=(16, 8, 0))


def measure_at(est, env, family, side):
    model = est.build_model(env["families"], family, dtype=torch.float32)
    blocks = env["mem_nodes"].model_blocks(model)
    kinds = est.block_kinds(model.diffusion_model, blocks)
    run = est.model_runner(model, family, est.latent_shape(family, side, side), batch=1)
    return est.measure(env["mem"], est.MODEL, run, blocks, kinds)


def test_blocks_scale_to_the_real_depth(est, env):
    small = measure_at(est, env, tiny_family(est, REDUCED), 8)
    big = measure_at(est, env, tiny_family(est, {"depth": 5, "depth_single_blocks": 4}), 8)
    per = small.per_kind()
    assert [len(per[k]) for k in ("double_blocks", "single_blocks")] == [2, 2], per
    scaled = est.at_depth(env["mem"], small, {"double_blocks": 5, "single_blocks": 4})
    direct = big.profile
    assert direct.blocks == scaled.blocks == 9
    # three more double blocks and two more single blocks add exactly the last measured block of each kind
    last = {k: rows[-1][0] for k, rows in per.items()}
    assert direct.saved_bytes - small.profile.saved_bytes == 3 * last["double_blocks"] + 2 * last["single_blocks"]
    for name in ("saved_bytes", "outside_bytes", "boundary_bytes", "max_block_bytes"):
        assert getattr(scaled, name) == getattr(direct, name), name


def test_a_first_block_is_not_repeated(est, env):
    """The first block of a kind keeps what the next ones share with their predecessor (FLUX's first single block
    saves its fresh input, which later blocks find already saved; the first double block has a text stream without
    gradient): scaling from one block per kind would be wrong, which is why every family measures two of each."""
    rows = measure_at(est, env, tiny_family(est, REDUCED), 8).per_kind()
    assert rows["single_blocks"][0][0] != rows["single_blocks"][1][0], rows
    assert rows["double_blocks"][0][0] != rows["double_blocks"][1][0], rows


def test_size_fit_reproduces_a_direct_measurement(est, env):
    family = tiny_family(est, REDUCED)
    model = est.build_model(env["families"], family, dtype=torch.float32)
    counts = {"double_blocks": 5, "single_blocks": 4}
    fitted = est.estimate_model(env["mem"], env["mem_nodes"], model, family, counts, (16, 16), 1, sides=(8, 6, 4))
    direct = est.at_depth(env["mem"], measure_at(est, env, family, 16), counts)
    for name in ("saved_bytes", "outside_bytes", "boundary_bytes", "max_block_bytes"):
        got, want = getattr(fitted, name), getattr(direct, name)
        # the fit is evaluated in float64 and rounded up: at most one byte above, never below
        assert want <= got <= want + 1, (name, got, want)
    assert fitted.saved_bytes > measure_at(est, env, family, 8).profile.saved_bytes  # 4x the tokens: more bytes


def test_peaks_follow_the_planner(est, env):
    mem = env["mem"]
    step = mem.ComponentProfile(est.MODEL, saved_bytes=1000, outside_bytes=100, boundary_bytes=50,
                                max_block_bytes=300, blocks=3)
    vae = mem.ComponentProfile(est.VAE, saved_bytes=700, outside_bytes=10, boundary_bytes=40, max_block_bytes=200,
                               blocks=4)
    assert est.peaks(mem, [step, vae], 1) == (1700, 100 + 50 + 10 + 40 + 300)
    multi = est.per_step(mem, step, 4, latent_bytes=8)
    # K steps, no checkpointing: K latents kept and one step's activations alive while it is recomputed; checkpoint
    # all: that with the VAE's blocks recomputed (1082), or the model's blocks in every step (4 x (outside + inputs),
    # the largest block alive: 950), the lower
    whole, blocks = 4 * 8 + 10 + 40 + 1000, 4 * (100 + 50) + 10 + 40 + 300
    assert (whole, blocks) == (1082, 950)
    assert est.peaks(mem, [multi, vae], 4) == (4 * 8 + 700 + 1000, blocks)
    assert mem.estimate_peak([multi, vae], {est.MODEL, est.VAE}) == whole




#: (family, the quoted size of the file or model, bytes per parameter, the quoted figure's last digit): the templates'
#: file sizes (GiB, two decimals: hidream_i1_fast_fp8 15.93, lens_turbo_bf16 7.64, mage_flow_turbo_bf16 7.67,
#: ernie-image-turbo 14.96) and HunyuanImage 2.1's published 17 B parameters
PUBLISHED = [("hidream-i1-fast", 15.93 * 2**30, 1, 0.01 * 2**30), ("hunyuan-image-2.1", 17e9 * 2, 2, 1e9 * 2),
             ("lens-turbo", 7.64 * 2**30, 2, 0.01 * 2**30), ("mage-flow-turbo", 7.67 * 2**30, 2, 0.01 * 2**30),
             ("ernie-image-turbo", 14.96 * 2**30, 2, 0.01 * 2**30)]


@pytest.mark.parametrize(("name", "size", "per_param", "digit"), PUBLISHED, ids=[p[0] for p in PUBLISHED])
def test_real_configs_match_the_published_sizes(est, env, engine, name, size, per_param, digit):
    """The full model the script counts (its real widths and depths, on the meta device) has the published file's
    size: within half the quoted figure's last digit, plus the file's few non-parameter bytes (its header)."""
    import comfy.supported_models

    family = est.FAMILIES[name]
    if not hasattr(comfy.supported_models, family.comfy_class):
        pytest.skip(f"{name}: no comfy.supported_models.{family.comfy_class} ({engine.info})")
    params, _ = est.full_model_counts(env["families"], env["mem_nodes"], family)
    assert abs(params * per_param - size) <= digit / 2 + 2**20, (name, params, size / per_param)
