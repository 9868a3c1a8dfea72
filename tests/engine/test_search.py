"""Search, then gradient (ReNO Sampler's ``candidates`` / ``keep``, nodes/search.py) in a real ComfyUI engine."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from engine_support import PROMPT_TEXT, tiny_sd_parts
from tolerances import ORACLE_IMAGE_K, ORACLE_LATENT_K, assert_rounding_close, rounding_tol, weighted_score_scale

REWARDS = (("pickscore", 1.0), ("clipscore", 0.5))


@pytest.fixture(scope="module")
def reward_dir(engine):
    from tiny_rewards import write_reward_root

    root = Path(engine.folder_paths.get_folder_paths("reno_rewards")[0])
    return write_reward_root(root, [name for name, _ in REWARDS])


def parts(engine, batch=1):
    return tiny_sd_parts(engine, REWARDS, batch)


def sample(engine, p, *, seed=0, iterations=3, **extra):
    out = engine.call_node("ReNOSampler", inference=True, **p, prompt=PROMPT_TEXT, seed=seed, iterations=iterations,
                           learning_rate=5.0, cfg=1.0, regularization=0.01, grad_clip=0.1, **extra)
    return out["result"], out["ui"]


def totals(history) -> list[float]:
    """The weighted total of each batch element at its best iteration."""
    chart = history.chart()
    return [s["weighted_total"][s["best_iteration"]] for s in chart["series"]]


def test_one_candidate_is_bit_identical_to_no_search(fresh_engine, reward_dir):
    engine = fresh_engine
    p = parts(engine)
    (lat_a, img_a, hist_a), _ = sample(engine, p, seed=5)
    (lat_b, img_b, hist_b), ui = sample(engine, p, seed=5, candidates=1, keep=1)
    assert torch.equal(lat_a["samples"], lat_b["samples"]) and torch.equal(img_a, img_b)
    assert [r["scores"] for r in hist_a.records] == [r["scores"] for r in hist_b.records]
    assert hist_b.search is None and "search" not in ui["reno_summary"][0]


@pytest.mark.parametrize("keep", [1, 2])
def test_the_kept_candidates_are_the_best_scored_and_reno_never_returns_less(fresh_engine, reward_dir, keep):
    engine = fresh_engine
    p = parts(engine)
    n, seed = 6, 11
    (latent, image, history), ui = sample(engine, p, seed=seed, candidates=n, keep=keep)
    s = history.search
    assert s["candidates"] == n and s["seeds"] == list(range(seed, seed + n)) and len(s["weighted_total"]) == n
    ranked = sorted(range(n), key=lambda i: (-s["weighted_total"][i], i))
    assert s["kept"] == ranked[:keep]
    assert latent["samples"].shape[0] == keep and image.shape[0] == keep and history.best_noise.shape[0] == keep
    # iteration 0 of the run is each kept candidate's search image again (euler: deterministic), up to rounding: the
    # search scores without gradient in batches of SEARCH_BATCH, the run with gradient in a batch of keep (other
    # kernels, another batch: as the one-iteration oracle's image, ORACLE_IMAGE_K roundings at the total's scale)
    tol = rounding_tol(ORACLE_IMAGE_K, torch.float32, scale=weighted_score_scale(p["rewards"]))
    first = history.records[0]
    for b, i in enumerate(s["kept"]):
        got0 = sum(r["weight"] * first["scores"][r["label"]][b] for r in history.rewards)
        assert got0 == pytest.approx(s["weighted_total"][i], abs=tol), (b, i)
    # ReNO returns its best iteration (iteration 0 included): never below the best candidate's score
    best = max(s["weighted_total"])
    assert max(totals(history)) >= best - tol
    summary = ui["reno_summary"][0]["search"]
    assert summary["candidates"] == n and summary["kept_seeds"] == [seed + i for i in s["kept"]]
    assert summary["best"] == best


def test_the_best_candidate_with_no_update_is_ksamplers_image_for_its_seed(fresh_engine, reward_dir):
    """At one iteration (no update) the output is the best candidate's own image: KSampler + VAE Decode for its seed."""
    engine = fresh_engine
    p = parts(engine)
    (latent, image, history), _ = sample(engine, p, seed=2, iterations=1, candidates=5, keep=1)
    chosen = history.search["seeds"][history.search["kept"][0]]
    (ks,) = engine.call_node("KSampler", inference=True, model=p["model"], seed=chosen, steps=1, cfg=1.0,
                             sampler_name="euler", scheduler=engine.one_step_scheduler(), positive=p["positive"],
                             negative=p["negative"], latent_image=p["latent_image"], denoise=1.0)
    (decoded,) = engine.call_node("VAEDecode", inference=True, samples=ks, vae=p["vae"])
    scale = max(float(ks["samples"].abs().max()), float(history.best_noise.abs().max()) * history.sigma)
    assert_rounding_close(latent["samples"].float(), ks["samples"].float(), ORACLE_LATENT_K, scale=scale, msg="latent")
    assert_rounding_close(image.float(), decoded.float(), ORACLE_IMAGE_K, scale=1.0, msg="image")


@pytest.mark.parametrize(("extra", "match"), [
    (dict(candidates=3, keep=4), "keep must be 1 to candidates"),
    (dict(candidates=0), "candidates must be 1"),
])
def test_bad_search_settings_are_refused_before_any_work(fresh_engine, reward_dir, extra, match):
    engine = fresh_engine
    p = parts(engine)
    with pytest.raises(ValueError, match=match):
        sample(engine, p, **extra)


def test_a_search_needs_a_batch_of_one(fresh_engine, reward_dir):
    engine = fresh_engine
    p = parts(engine, batch=2)
    with pytest.raises(ValueError, match="batch_size 1"):
        sample(engine, p, candidates=3, keep=1)
