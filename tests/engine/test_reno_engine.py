"""The pack inside a real ComfyUI engine: contract, execution, progress, cancel, batches, errors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import comfy_host
import pytest
import torch
from engine_support import PROMPT_TEXT, depth_for, pack_module, reno_prompt, tiny_sd_parts
from reno_prompts import SAMPLER_ID, SAVE_ID
from tolerances import (
    BATCH_K,
    EPS32,
    ORACLE_IMAGE_K,
    ORACLE_LATENT_K,
    assert_rounding_close,
    rounding_tol,
    weighted_score_scale,
)

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "node_contract.json"


@pytest.fixture(scope="module")
def pack(engine):
    return pack_module(engine)


@pytest.fixture(scope="module")
def reward_dir(engine, pack):
    """Tiny reward checkpoints in the engine's own models/reno_rewards folder (what users do)."""
    from tiny_rewards import ALL_REWARDS, write_reward_root

    folders = engine.folder_paths.get_folder_paths("reno_rewards")
    root = Path(folders[0])
    assert engine.workdir in root.parents, f"reno_rewards folder {root} is outside the test workdir"
    return write_reward_root(root, ALL_REWARDS)


def call_chain(engine, *, iterations, seed=0, batch=1, rewards=(("pickscore", 1.0), ("clipscore", 0.5))):
    """Run the nodes directly (under inference mode, like the executor); returns the pieces."""
    p = tiny_sd_parts(engine, rewards, batch)
    out = engine.call_node("ReNOSampler", inference=True, **p, prompt=PROMPT_TEXT, seed=seed, iterations=iterations,
                           learning_rate=5.0, cfg=1.0, regularization=0.01, grad_clip=0.1)
    return dict(model=p["model"], vae=p["vae"], pos=p["positive"], neg=p["negative"], latent=p["latent_image"],
                rewards=p["rewards"], out=out["result"], ui=out["ui"])


# -- the public contract ------------------------------------------------------------------------------

def _input_type(spec):
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def test_node_contract_matches_the_golden_file(engine, pack):
    golden = json.loads(GOLDEN.read_text())
    for class_name, want in golden.items():
        if class_name.startswith("_"):
            continue
        cls = pack.NODE_CLASS_MAPPINGS[class_name]
        assert engine.node_class(class_name) is cls
        assert pack.NODE_DISPLAY_NAME_MAPPINGS[class_name] == want["display_name"]
        assert cls.CATEGORY == want["category"]
        types = cls.INPUT_TYPES()
        required = [[name, _input_type(spec)] for name, spec in types["required"].items()]
        optional = [[name, _input_type(spec)] for name, spec in types.get("optional", {}).items()]
        assert required == want["required"], f"{class_name}: required inputs renamed or reordered"
        assert optional[: len(want["optional"])] == want["optional"], f"{class_name}: optional inputs changed"
        assert list(cls.RETURN_TYPES) == want["outputs"]
        specs = {**types["required"], **types.get("optional", {})}
        for name, values in want.get("combo_values", {}).items():
            assert set(values) <= set(specs[name][0]), f"{class_name}.{name}: combo value removed"
        for name, default in want.get("defaults", {}).items():
            assert types["required"][name][1]["default"] == default
        for name, default in want.get("optional_defaults", {}).items():  # appended inputs: today's behaviour
            assert types["optional"][name][1]["default"] == default, f"{class_name}.{name}: default changed"


def test_every_input_has_a_tooltip_and_every_node_a_description(pack):
    for class_name, cls in pack.NODE_CLASS_MAPPINGS.items():
        assert getattr(cls, "DESCRIPTION", ""), class_name
        types = cls.INPUT_TYPES()
        for section in ("required", "optional"):
            for name, spec in types.get(section, {}).items():
                assert len(spec) > 1 and spec[1].get("tooltip"), f"{class_name}.{name} has no tooltip"


def test_reward_folder_is_registered_with_folder_paths(engine, pack):
    folders = engine.folder_paths.get_folder_paths("reno_rewards")
    assert any(Path(f) == Path(engine.folder_paths.models_dir) / "reno_rewards" for f in folders)


# -- running ReNO in the engine ---------------------------------------------------------------------------

def test_reno_prompt_validates_executes_and_reports_progress_each_iteration(fresh_engine, reward_dir):
    engine = fresh_engine
    prompt = reno_prompt(engine, iterations=6)
    ok, err, outputs, node_errors = engine.validate(prompt)
    assert ok, (err, node_errors)
    res = engine.execute(prompt)
    res.raise_for_error()
    steps = [e for e in res.progress if str(e.node_id) in (SAMPLER_ID, "None") and e.total == 6]
    assert [e.value for e in steps] == [1, 2, 3, 4, 5, 6]
    assert all(e.has_preview for e in steps)
    summary = res.ui_outputs[SAMPLER_ID]["reno_summary"][0]
    assert summary["iterations"] == 6
    assert summary["best_loss"][0] < summary["initial_loss"][0]
    assert [p.exists() for p in res.image_paths(SAVE_ID)] == [True]


def test_returned_image_scores_higher_than_iteration_zero(fresh_engine, reward_dir, pack):
    engine = fresh_engine
    run = call_chain(engine, iterations=8)
    latent, image, history = run["out"]
    plain = call_chain(engine, iterations=1)["out"][1]  # the one-step image for the same seed
    ensemble = pack.reward_loaders.RewardEnsemble(list(run["rewards"]), PROMPT_TEXT)
    with torch.inference_mode(False), torch.no_grad():
        best_total = ensemble.weighted_total(ensemble.scores(image.movedim(-1, 1)))
        plain_total = ensemble.weighted_total(ensemble.scores(plain.movedim(-1, 1)))
    assert best_total.item() > plain_total.item()
    # the records agree with the independent scores
    first = history.records[0]
    best = history.records[history.best_iteration[0]]
    assert history.best_iteration[0] > 0
    # the loop scored the same images (up to another VAE layout: ORACLE_IMAGE_K roundings of 1) through the same
    # rewards: rounding at the weighted total's scale
    tol = rounding_tol(ORACLE_IMAGE_K, torch.float32, scale=weighted_score_scale(run["rewards"]))
    assert sum(r["weight"] * first["scores"][r["label"]][0] for r in history.rewards) == pytest.approx(
        plain_total.item(), rel=0, abs=tol)
    assert sum(r["weight"] * best["scores"][r["label"]][0] for r in history.rewards) == pytest.approx(
        best_total.item(), rel=0, abs=tol)
    # outputs: shapes, ranges, and a history with one preview per iteration
    assert image.shape == (1, 64, 64, 3) and 0 <= image.min() and image.max() <= 1
    assert latent["samples"].shape == (1, 4, 8, 8)
    assert len(history.previews) == history.iterations == 8
    assert history.best_noise.shape == (1, 4, 8, 8) and history.best_noise.dtype == torch.float32


def test_one_iteration_is_comfyuis_own_one_step_image(fresh_engine, reward_dir):
    """With no update, ReNO's image is what KSampler (euler, one step from sigma_max) + VAE Decode make."""
    engine = fresh_engine
    run = call_chain(engine, iterations=1, seed=3)
    (ks,) = engine.call_node("KSampler", inference=True, model=run["model"], seed=3, steps=1, cfg=1.0,
                             sampler_name="euler", scheduler=engine.one_step_scheduler(), positive=run["pos"],
                             negative=run["neg"], latent_image=run["latent"], denoise=1.0)
    (decoded,) = engine.call_node("VAEDecode", inference=True, samples=ks, vae=run["vae"])
    latent, image, history = run["out"]
    # the one-step oracle: rounding at the noised latent's magnitude (|latent| + sigma |noise|) and of |image| <= 1
    noised = history.sigma * float(history.best_noise.abs().max()) + float(run["latent"]["samples"].abs().max())
    assert_rounding_close(latent["samples"].float(), ks["samples"].float(), ORACLE_LATENT_K,
                          scale=max(noised, float(ks["samples"].abs().max())), msg="latent")
    assert_rounding_close(image.float(), decoded.float(), ORACLE_IMAGE_K, scale=1.0, msg="image")


def test_interrupt_stops_within_one_iteration_and_restores_the_model(fresh_engine, reward_dir):
    engine = fresh_engine
    model, vae = engine.call_node("ReNOTestTinySD", inference=True, transformer_depth=depth_for(engine),
                                  context_dim=32, seed=0)
    modules = {"unet": model.model, "vae": vae.first_stage_model}
    before = {
        (k, n): (t, t.is_inference(), t.detach().clone())
        for k, m in modules.items()
        for table in ("_parameters", "_buffers")
        for mod_name, mod in m.named_modules()
        for n0, t in getattr(mod, table).items() if t is not None
        for n in [f"{mod_name}.{n0}"]
    }
    assert any(v[1] for v in before.values()), "the fixture should hold inference tensors, as in the executor"
    (pos,) = engine.call_node("ReNOTestConditioning", inference=True, text=PROMPT_TEXT, context_dim=32)
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=64, height=64, batch_size=1)
    (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward="pickscore", weight=1.0)
    seen = []

    def interrupt_at_3(event):
        seen.append(event.value)
        if event.value == 3:
            engine.interrupt()

    engine.add_progress_callback(interrupt_at_3)
    grad_mode = torch.is_grad_enabled()
    with pytest.raises(engine.model_management.InterruptProcessingException):
        engine.call_node("ReNOSampler", inference=True, model=model, positive=pos, negative=pos, vae=vae,
                         latent_image=latent, rewards=stack, prompt=PROMPT_TEXT, seed=0, iterations=20,
                         learning_rate=5.0, cfg=1.0, regularization=0.01, grad_clip=0.1)
    assert seen == [1, 2, 3]  # stopped at the iteration where the cancel came
    assert torch.is_grad_enabled() == grad_mode and not torch.is_inference_mode_enabled()
    for (k, n), (t, was_inference, values) in before.items():
        mod_name, _, attr = n.rpartition(".")
        mod = modules[k].get_submodule(mod_name) if mod_name else modules[k]
        now = getattr(mod, attr)
        assert now is t, f"{k}:{n} was not restored"
        assert now.is_inference() == was_inference
        assert torch.equal(now.detach(), values)
    # the next run works
    engine.clear_progress_callbacks()
    engine.reset_interrupt()
    out = engine.call_node("ReNOSampler", inference=True, model=model, positive=pos, negative=pos, vae=vae,
                           latent_image=latent, rewards=stack, prompt=PROMPT_TEXT, seed=0, iterations=2,
                           learning_rate=5.0, cfg=1.0, regularization=0.01, grad_clip=0.1)
    assert out["result"][2].iterations == 2


def test_interrupt_through_the_executor(fresh_engine, reward_dir):
    engine = fresh_engine
    engine.add_progress_callback(lambda e: engine.interrupt() if e.value == 2 and e.total == 30 else None)
    res = engine.execute(reno_prompt(engine, iterations=30))
    assert not res.success and res.interrupted
    assert [e.value for e in res.progress if e.total == 30] == [1, 2]
    engine.clear_progress_callbacks()
    engine.reset_interrupt()
    res = engine.execute(reno_prompt(engine, iterations=2, seed=1))
    res.raise_for_error()


def test_batch_elements_each_get_their_own_best_and_comfyuis_noise(fresh_engine, reward_dir, pack):
    engine = fresh_engine
    run = call_chain(engine, iterations=4, batch=2, seed=11)
    latent, image, history = run["out"]
    assert image.shape == (2, 64, 64, 3) and latent["samples"].shape == (2, 4, 8, 8)
    assert len(history.best_iteration) == 2 and len(history.records[0]["loss"]) == 2
    import comfy.sample

    noise = comfy.sample.prepare_noise(run["latent"]["samples"], 11)
    norms = noise.reshape(2, -1).norm(dim=1).tolist()
    # the norm of the same float32 values, summed in one order or another: <= d roundings relative
    assert history.records[0]["latent_norm"] == pytest.approx(norms, rel=noise[0].numel() * EPS32, abs=0)


def test_missing_reward_files_give_an_actionable_error(fresh_engine, reward_dir):
    engine = fresh_engine
    hidden = reward_dir / "pickscore.hidden"
    shutil.move(reward_dir / "pickscore", hidden)
    try:
        res = engine.execute(reno_prompt(engine, iterations=2, seed=5))
    finally:
        shutil.move(hidden, reward_dir / "pickscore")
    assert not res.success
    msg = res.error["exception_message"]
    assert "pickscore" in msg and "model.safetensors" in msg and str(reward_dir / "pickscore") in msg
    assert "huggingface.co/yuvalkirstain/PickScore_v1" in msg


def test_iteration_preview_node_outputs_every_iteration(fresh_engine, reward_dir):
    engine = fresh_engine
    prompt = reno_prompt(engine, iterations=5, batch=2, seed=2, preview=True)
    res = engine.execute(prompt)
    res.raise_for_error()
    ui = res.ui_outputs["9"]
    assert len(ui["images"]) == 5 * 2 and all(p.exists() for p in res.image_paths("9"))
    assert [(m["iteration"], m["batch_index"]) for m in ui["images"][:3]] == [(0, 0), (0, 1), (1, 0)]
    chart = ui["reno_chart"][0]
    assert chart["iterations"] == 5 and len(chart["series"]) == 2
    for s in chart["series"]:
        assert set(s["scores"]) == {"pickscore", "clipscore"} and len(s["weighted_total"]) == 5
        assert s["weighted_total"][s["best_iteration"]] == max(s["weighted_total"])


def test_web_extension_is_served(engine):
    web_dirs = engine.nodes.EXTENSION_WEB_DIRS
    assert comfy_host.PACK_NAME in web_dirs, sorted(web_dirs)
    assert (Path(web_dirs[comfy_host.PACK_NAME]) / "reno.js").is_file()


def test_score_images_node_scores_each_image_with_the_stack(fresh_engine, reward_dir, pack):
    engine = fresh_engine
    (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward="pickscore", weight=0.05)
    (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward="clipscore", weight=0.01, rewards=stack)
    images = torch.rand(3, 40, 72, 3)
    out = engine.call_node("ReNOScoreImages", inference=True, images=images, rewards=stack, prompt=PROMPT_TEXT)
    totals, report = out["result"]
    assert isinstance(totals, list) and len(totals) == 3
    ensemble = pack.reward_loaders.RewardEnsemble(list(stack), PROMPT_TEXT)
    with torch.no_grad():
        expected = ensemble.weighted_total(ensemble.scores(images.movedim(-1, 1))).tolist()
    # the same rewards on the same images, batched as the node batches them: BATCH_K roundings of the total's scale
    assert totals == pytest.approx(expected, rel=0,
                                   abs=rounding_tol(BATCH_K, torch.float32, scale=weighted_score_scale(stack)))
    assert report.splitlines()[1] == "image | weighted total | pickscore (w=0.05) | clipscore (w=0.01)"
    assert len(report.splitlines()) == 2 + 3 + 1 and report.splitlines()[-1].startswith("best: image")
    # through the executor, on the sampler's batch (FLOAT is a list output)
    prompt = reno_prompt(engine, iterations=2, batch=2)
    prompt["9"] = {"class_type": "ReNOScoreImages", "inputs": {"images": [SAMPLER_ID, 1], "rewards": ["51", 0],
                                                               "prompt": PROMPT_TEXT}}
    res = engine.execute(prompt)
    res.raise_for_error()
    assert len(res.ui_outputs["9"]["text"][0].splitlines()) == 2 + 2 + 1


def test_download_setting_and_environment(engine, pack, monkeypatch):
    import json as _json

    settings = pack.nodes.settings
    if not hasattr(engine.folder_paths, "get_user_directory"):
        monkeypatch.setenv("RENO_DOWNLOADS", "0")
        assert settings.downloads_allowed() is False
        monkeypatch.setenv("RENO_DOWNLOADS", "1")
        assert settings.downloads_allowed() is True
        pytest.skip(f"{engine.info} has no per-user settings on the server; only the environment applies")
    path = Path(engine.folder_paths.get_user_directory()) / "default" / "comfy.settings.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    monkeypatch.setenv("RENO_DOWNLOADS", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    try:
        path.write_text(_json.dumps({"ReNO.AllowDownloads": False}))
        assert settings.downloads_allowed() is False
        path.write_text(_json.dumps({"ReNO.AllowDownloads": True}))
        assert settings.downloads_allowed() is True
        path.write_text("{not json")
        assert settings.downloads_allowed() is True  # unreadable settings: the default, with a warning
        monkeypatch.setenv("RENO_DOWNLOADS", "0")
        assert settings.downloads_allowed() is False
    finally:
        path.unlink(missing_ok=True)


def test_gradient_checkpointing_option_reaches_the_stack(fresh_engine, reward_dir):
    (stack,) = fresh_engine.call_node("ReNORewardLoader", inference=True, reward="pickscore", weight=1.0,
                                      gradient_checkpointing="on")
    assert stack[0].gradient_checkpointing is True


def test_sampler_runs_with_every_reward_together(fresh_engine, reward_dir):
    """The paper's mix plus the other two: each scored, finite and in the history, the loss improving."""
    engine = fresh_engine
    mix = (("imagereward", 1.0), ("hpsv2.1", 5.0), ("pickscore", 0.05), ("clipscore", 0.01), ("hpsv2", 1.0),
           ("aesthetic", 0.5))
    prompt = reno_prompt(engine, iterations=4, rewards=mix, preview=True)
    res = engine.execute(prompt)
    res.raise_for_error()
    summary = res.ui_outputs[SAMPLER_ID]["reno_summary"][0]
    assert [r["label"] for r in summary["rewards"]] == [name for name, _ in mix]
    assert summary["best_loss"][0] <= summary["initial_loss"][0]
    series = res.ui_outputs["9"]["reno_chart"][0]["series"][0]
    for name, _ in mix:
        values = series["scores"][name]
        # finite and of a score's size (CLIP-type scores are at most exp(logit_scale) <= 100, the others O(10))
        assert len(values) == 4 and all(v == v and abs(v) < 1e6 for v in values), (name, values)


def test_live_iteration_events_go_to_the_queuing_client(fresh_engine, reward_dir):
    import base64
    import io

    from PIL import Image

    engine = fresh_engine
    res = engine.execute(reno_prompt(engine, iterations=4, batch=2), client_id="artist-1")
    res.raise_for_error()
    events = [e for e in res.events if e.event == "reno.iteration"]
    assert [e.data["iteration"] for e in events] == [0, 1, 2, 3]
    assert all(e.sid == "artist-1" for e in events)  # never broadcast
    first, last = events[0].data, events[-1].data
    assert first["node"] == SAMPLER_ID and first["iterations"] == 4
    assert [r["label"] for r in first["rewards"]] == ["pickscore", "clipscore"]
    assert len(first["total"]) == 2 and len(first["scores"]["pickscore"]) == 2
    assert first["grad_norm"] is not None and last["grad_norm"] is None
    summary = res.ui_outputs[SAMPLER_ID]["reno_summary"][0]
    assert last["best_iteration"] == summary["best_iteration"]
    header, b64 = first["preview"].split(",", 1)
    assert header == "data:image/jpeg;base64"
    assert Image.open(io.BytesIO(base64.b64decode(b64))).size == (64, 64)
    # the sampler's own UI output carries the full chart, so the node keeps it after the run
    chart = res.ui_outputs[SAMPLER_ID]["reno_chart"][0]
    assert chart["iterations"] == 4 and len(chart["series"]) == 2


def test_no_events_without_a_client(fresh_engine, reward_dir, pack):
    record = pack.optimizer.IterationRecord(0, [1.0], {"pickscore": [2.0]}, [3.0], None, [True])
    server = fresh_engine.server
    before = len(server.sent)
    previous, server.client_id = server.client_id, None
    try:
        sent = pack.nodes.events.send_iteration("7", record, 1, [{"label": "pickscore", "weight": 1.0}], [0],
                                                torch.zeros(1, 8, 8, 3, dtype=torch.uint8))
    finally:
        server.client_id = previous
    assert sent is False and len(server.sent) == before


def test_continue_from_starts_at_the_previous_best_noise(fresh_engine, reward_dir):
    engine = fresh_engine
    first = call_chain(engine, iterations=5, seed=4)
    _, best_image, history = first["out"]
    out = engine.call_node("ReNOSampler", inference=True, model=first["model"], positive=first["pos"],
                           negative=first["neg"], vae=first["vae"], latent_image=first["latent"],
                           rewards=first["rewards"], prompt=PROMPT_TEXT, seed=999, iterations=1, learning_rate=5.0,
                           cfg=1.0, regularization=0.01, grad_clip=0.1, continue_from=history)
    _, image, resumed = out["result"]
    # the same noise through the same model, decoded again (the VAE layout may be chosen anew): |image| <= 1
    assert_rounding_close(image, best_image, ORACLE_IMAGE_K, scale=1.0)
    torch.testing.assert_close(resumed.best_noise, history.best_noise, rtol=0, atol=0)  # the noise itself, kept
    (bigger,) = engine.call_node("EmptyLatentImage", inference=True, width=128, height=64, batch_size=1)
    with pytest.raises(ValueError, match="continue_from holds noise of shape"):
        engine.call_node("ReNOSampler", inference=True, model=first["model"], positive=first["pos"],
                         negative=first["neg"], vae=first["vae"], latent_image=bigger, rewards=first["rewards"],
                         prompt=PROMPT_TEXT, seed=0, iterations=1, learning_rate=5.0, cfg=1.0, regularization=0.01,
                         grad_clip=0.1, continue_from=history)
