"""Failure cases inside a real engine (RELIABILITY.md): each gives a clear answer or a safe fallback,
leaves the models as they were, and the next run works."""

from __future__ import annotations

import copy
import logging
import shutil

import pytest
import torch
from engine_support import PROMPT_TEXT, depth_for, pack_module, reno_prompt
from reno_prompts import SAMPLER_ID

pytestmark = pytest.mark.usefixtures("reward_dir")


@pytest.fixture(scope="module")
def reward_dir(engine, pack):
    from pathlib import Path

    from tiny_rewards import write_reward_root

    root = Path(engine.folder_paths.get_folder_paths("reno_rewards")[0])
    if not (root / "pickscore" / "model.safetensors").exists():
        write_reward_root(root, ("pickscore", "clipscore"))
    return root


@pytest.fixture(scope="module")
def pack(engine):
    return pack_module(engine)


def build(engine, width=64, height=64, batch=1, reward="pickscore", weight=1.0):
    model, vae = engine.call_node("ReNOTestTinySD", inference=True, transformer_depth=depth_for(engine),
                                  context_dim=32, seed=0)
    (pos,) = engine.call_node("ReNOTestConditioning", inference=True, text=PROMPT_TEXT, context_dim=32)
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=width, height=height, batch_size=batch)
    (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward=reward, weight=weight)
    return dict(model=model, vae=vae, positive=pos, negative=pos, latent_image=latent, rewards=stack)


def run(engine, parts, prompt=PROMPT_TEXT, **overrides):
    args = dict(seed=0, iterations=4, learning_rate=5.0, cfg=1.0, regularization=0.01, grad_clip=0.1)
    args.update(overrides)
    return engine.call_node("ReNOSampler", inference=True, prompt=prompt, **parts, **args)["result"]


def snapshot(parts):
    modules = {"unet": parts["model"].model, "vae": parts["vae"].first_stage_model,
               **{f"reward{k}": r.model for k, r in enumerate(parts["rewards"])}}
    return modules, {
        (k, f"{mn}.{n}"): (t, t.is_inference(), t.detach().clone())
        for k, m in modules.items() for mn, mod in m.named_modules()
        for table in ("_parameters", "_buffers") for n, t in getattr(mod, table).items() if t is not None
    }


def assert_restored(modules, before):
    assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
    for (k, name), (t, was_inference, values) in before.items():
        mod_name, _, attr = name.rpartition(".")
        mod = modules[k].get_submodule(mod_name) if mod_name else modules[k]
        now = getattr(mod, attr)
        assert now is t and now.is_inference() == was_inference, f"{k}:{name} not restored"
        assert torch.equal(now.detach(), values), f"{k}:{name} changed"


def failing_score(model, at_call: int, make):
    """Patch one reward model's score to misbehave from its ``at_call``-th call on."""
    original = model.score
    calls = {"n": 0}

    def score(pixels, text):
        calls["n"] += 1
        out = original(pixels, text)
        return make(out) if calls["n"] >= at_call else out

    model.score = score
    return lambda: model.__dict__.pop("score", None)


def test_out_of_memory_is_comfyuis_oom_type_with_advice_and_the_run_is_released(fresh_engine, pack):
    """OOM mid-run: raised again as ComfyUI's own OOM type (so its executor unloads every model), with the pack's
    advice, and no traceback holds the run's tensors (weak references to them are dead)."""
    import gc
    import weakref

    import comfy.model_management

    engine = fresh_engine
    parts = build(engine)
    modules, before = snapshot(parts)
    model = parts["rewards"][0].model
    seen = []

    def oom(out):
        seen.append(weakref.ref(out))  # a tensor of the run (this iteration's score)
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    undo = failing_score(model, 3, oom)
    try:
        with pytest.raises(comfy.model_management.OOM_EXCEPTION, match="ran out of memory") as e:
            run(engine, parts)
    finally:
        undo()
    message = str(e.value)
    assert "'checkpoint all'" in message and "gradient_checkpointing" in message and "smaller size" in message
    assert "Tried to allocate 20.00 GiB" in message  # the original error is named
    assert e.value.__context__ is None and e.value.__cause__ is None  # nothing chains back to the run's frames
    gc.collect()
    assert seen and all(ref() is None for ref in seen), "the run's tensors are still referenced after the OOM"
    assert_restored(modules, before)
    assert run(engine, parts, iterations=2)[2].iterations == 2  # the next run works


def test_out_of_memory_in_a_workflow_lets_comfyui_unload_its_models(fresh_engine, pack):
    """Through the executor: ComfyUI recognises the error as OOM and runs its own cleanup (unload_all_models)."""
    engine = fresh_engine
    (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward="pickscore", weight=1.0)
    model = stack[0].model  # the cached model the workflow's loader returns too

    def oom(out):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    undo = failing_score(model, 2, oom)
    try:
        result = engine.execute(reno_prompt(engine, iterations=4, rewards=(("pickscore", 1.0),)))
    finally:
        undo()
    err = result.error
    assert err is not None and err["exception_type"].endswith("OutOfMemoryError"), err
    assert "ran out of memory" in err["exception_message"] and "'checkpoint all'" in err["exception_message"]
    assert engine.model_management.current_loaded_models == []  # ComfyUI's OOM cleanup ran


def test_nan_reward_mid_run_returns_the_best_finite_image(fresh_engine, caplog):
    engine = fresh_engine
    parts = build(engine)
    undo = failing_score(parts["rewards"][0].model, 3, lambda out: out * float("nan"))
    try:
        with caplog.at_level(logging.WARNING):
            _, image, history = run(engine, parts, iterations=6)
    finally:
        undo()
    assert torch.isfinite(image).all()
    assert history.best_iteration[0] < 2 and history.stop_reason
    assert "NaN/Inf" in caplog.text
    assert run(engine, parts, iterations=2)[2].stop_reason is None


def test_nan_from_the_first_iteration_is_an_error_not_a_nan_image(fresh_engine):
    engine = fresh_engine
    parts = build(engine)
    undo = failing_score(parts["rewards"][0].model, 1, lambda out: out * float("nan"))
    try:
        with pytest.raises(RuntimeError, match="NaN/Inf from the first iteration"):
            run(engine, parts)
    finally:
        undo()


def test_a_vae_of_another_latent_space_is_refused_clearly(fresh_engine):
    engine = fresh_engine
    parts = build(engine)
    if getattr(parts["model"].model.latent_format, "latent_channels", None) is None:
        pytest.skip(f"{engine.info}: latent formats carry no channel count here")
    other = copy.copy(parts["vae"])
    other.latent_channels = 16
    with pytest.raises(ValueError, match="4-channel latents but the VAE with 16-channel"):
        run(engine, {**parts, "vae": other})


@pytest.mark.parametrize("lr", [0.0, 100.0])
def test_extreme_learning_rates_never_give_a_bad_image(fresh_engine, lr):
    """0 and the widget's maximum (100); more is refused by ComfyUI's validation
    (test_a_learning_rate_above_the_maximum_is_refused_by_validation)."""
    engine = fresh_engine
    assert engine.node_class("ReNOSampler").INPUT_TYPES()["required"]["learning_rate"][1]["max"] == 100.0
    _, image, history = run(engine, build(engine), learning_rate=lr, iterations=4)
    assert torch.isfinite(image).all() and 0 <= image.min() and image.max() <= 1
    losses = [r["loss"][0] for r in history.records]
    assert history.best_loss[0] == min(losses)
    if lr == 0:
        assert max(losses) == min(losses)  # the noise never moves: the same noise through the same code each time
        assert history.best_iteration == [0]


@pytest.mark.parametrize("weight", [0.0, -1.0])
def test_zero_and_negative_weights(fresh_engine, weight):
    engine = fresh_engine
    _, image, history = run(engine, build(engine, weight=weight), iterations=4)
    scores = [r["scores"]["pickscore"][0] for r in history.records]
    if weight == 0:
        assert history.best_iteration == [0] and all(r["loss"][0] == 0 for r in history.records)
    else:  # a negative weight pushes the score down
        assert scores[history.best_iteration[0]] <= scores[0]


@pytest.mark.parametrize("width, height, batch", [(72, 40, 1), (64, 64, 3), (16, 24, 2)])
def test_odd_sizes_and_batches(fresh_engine, width, height, batch):
    engine = fresh_engine
    latent, image, history = run(engine, build(engine, width, height, batch), iterations=2)
    assert image.shape == (batch, height, width, 3) and torch.isfinite(image).all()
    assert latent["samples"].shape == (batch, 4, height // 8, width // 8)


@pytest.mark.parametrize("prompt", ["", "a " * 400])
def test_empty_and_very_long_prompts(fresh_engine, prompt, caplog):
    engine = fresh_engine
    with caplog.at_level(logging.WARNING):
        _, image, _ = run(engine, build(engine), prompt=prompt, iterations=2)
    assert torch.isfinite(image).all()
    if prompt:
        assert "only the first" in caplog.text  # truncation is said, not hidden


def test_invalid_iteration_counts_are_rejected_by_validation(fresh_engine):
    engine = fresh_engine
    prompt = reno_prompt(engine, iterations=0)
    ok, err, _, node_errors = engine.validate(prompt)
    assert not ok and "iterations" in str(node_errors)


@pytest.mark.parametrize("memory", ["auto", "checkpoint all"])
def test_a_run_leaves_nothing_on_comfyuis_objects(fresh_engine, pack, memory):
    """Everything ``ReNORun.installed`` changes is restored: per module of the diffusion model, the VAE and the
    rewards, the same attributes (no ``forward`` wrapper, no flag), and per tensor the same object, values,
    ``requires_grad`` and inference flag; the sampler keeps no run state either."""
    engine = fresh_engine
    parts = build(engine)
    run(engine, parts, iterations=1)  # ComfyUI's own first-load bookkeeping (weight functions...) happens here
    modules, before = snapshot(parts)
    attributes = {(k, name): (set(mod.__dict__), {n: id(v) for n, v in mod.__dict__.items() if not n.startswith("_")})
                  for k, m in modules.items() for name, mod in m.named_modules()}
    flags = {(k, n): (t.requires_grad, t.is_inference())
             for k, m in modules.items() for n, t in [*m.named_parameters(), *m.named_buffers()]}
    model_attrs = set(parts["model"].__dict__)
    # what ComfyUI's own sampling call rewrites on its objects at every call is not the run's doing (0.33 sets
    # ``latent_shapes`` on the model per call): found by a plain KSampler call, the baseline, not by name
    engine.call_node("KSampler", inference=True, model=parts["model"], seed=0, steps=1, cfg=1.0, sampler_name="euler",
                     scheduler="simple", positive=parts["positive"], negative=parts["negative"],
                     latent_image=parts["latent_image"], denoise=1.0)
    host_rewrites = {(k, name, n) for (k, name), (keys, values) in attributes.items()
                     for mod in [modules[k].get_submodule(name) if name else modules[k]]
                     for n, v in mod.__dict__.items() if not n.startswith("_") and values.get(n, id(v)) != id(v)}
    attributes = {key: (keys, {n: i for n, i in values.items() if (*key, n) not in host_rewrites})
                  for key, (keys, values) in attributes.items()}
    run(engine, parts, iterations=3, memory=memory)
    assert_restored(modules, before)
    for (k, name), (keys, values) in attributes.items():
        mod = modules[k].get_submodule(name) if name else modules[k]
        assert set(mod.__dict__) == keys, f"{k}:{name} gained or lost {set(mod.__dict__) ^ keys}"
        now = {n: id(v) for n, v in mod.__dict__.items() if not n.startswith("_") and (k, name, n) not in host_rewrites}
        assert now == values, f"{k}:{name} changed"
    for k, m in modules.items():
        for n, t in [*m.named_parameters(), *m.named_buffers()]:
            assert (t.requires_grad, t.is_inference()) == flags[(k, n)], f"{k}:{n} flags changed"
    assert set(parts["model"].__dict__) == model_attrs


def test_iterations_up_to_1000_pass_validation_and_more_do_not(fresh_engine):
    engine = fresh_engine
    assert engine.validate(reno_prompt(engine, iterations=1000))[0]
    ok, _, _, node_errors = engine.validate(reno_prompt(engine, iterations=1001))
    assert not ok and node_errors[SAMPLER_ID]["errors"][0]["message"] == "Value 1001 bigger than max of 1000"


def test_a_learning_rate_above_the_maximum_is_refused_by_validation(fresh_engine):
    engine = fresh_engine
    ok, _, _, node_errors = engine.validate(reno_prompt(engine, learning_rate=1e6))
    errors = node_errors[SAMPLER_ID]["errors"]
    assert not ok and [e["extra_info"]["input_name"] for e in errors] == ["learning_rate"]
    assert errors[0]["message"] == "Value 1000000.0 bigger than max of 100.0"


# -- non-finite cfg and weights: refused by the node, with the node and the input named --------------------------

@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_cfg_and_weight_are_refused_before_any_work(fresh_engine, value):
    """ComfyUI's min/max checks let NaN through (every comparison with NaN is false) and a direct call anything;
    without this the run ends in 'the reward was NaN/Inf from the first iteration... check the VAE'."""
    engine = fresh_engine
    with pytest.raises(ValueError, match=rf"ReNO Load Reward \(pickscore\): weight={value!r}: must be a finite number"):
        engine.call_node("ReNORewardLoader", inference=True, reward="pickscore", weight=value)
    parts = build(engine)
    engine.progress_events.clear()
    with pytest.raises(ValueError, match=rf"ReNO Sampler: cfg={value!r}: must be a finite number"):
        run(engine, parts, cfg=value)
    assert engine.progress_events == []  # not one model call or iteration
    assert run(engine, parts, iterations=1)[2].iterations == 1  # the next run works


def test_nan_cfg_and_weight_in_an_api_prompt_pass_validation_and_are_refused_by_name(fresh_engine):
    engine = fresh_engine
    nan = float("nan")
    for prompt, node, words in (
        (reno_prompt(engine, iterations=2, cfg=nan), SAMPLER_ID, "ReNO Sampler: cfg=nan"),
        (reno_prompt(engine, iterations=2, rewards=(("pickscore", 1.0), ("clipscore", nan))), "51",
         "ReNO Load Reward (clipscore): weight=nan"),
    ):
        assert engine.validate(prompt)[0]  # what ComfyUI's validation lets through
        err = engine.execute(prompt).error
        assert err is not None and err["node_id"] == node and words in err["exception_message"], err
        assert "first iteration" not in err["exception_message"]


# -- a lone surrogate in the prompt ---------------------------------------------------------------------------------

def test_a_prompt_with_a_lone_surrogate_runs_with_a_warning(fresh_engine, caplog):
    engine = fresh_engine
    prompt = reno_prompt(engine, iterations=2)
    prompt[SAMPLER_ID]["inputs"]["prompt"] = "a photo of a cat \ud800"
    with caplog.at_level(logging.WARNING):
        engine.execute(prompt).raise_for_error()
    assert "pickscore: the prompt" in caplog.text and "unpaired surrogate" in caplog.text


# -- ReNO Load Reward's IS_CHANGED: a replaced or deleted reward file is noticed by ComfyUI's cache ----------------

def test_a_replaced_or_deleted_reward_file_is_noticed_by_comfyuis_cache(fresh_engine, reward_dir, tmp_path):
    from tiny_rewards import write_tiny_clip_folder

    engine = fresh_engine
    prompt = reno_prompt(engine, iterations=2, rewards=(("clipscore", 1.0),))
    weights = reward_dir / "clipscore" / "model.safetensors"
    original = weights.read_bytes()
    loader = engine.node_class("ReNORewardLoader")

    def execute():  # a fresh copy each time, as the server makes one per request (ComfyUI writes is_changed in it)
        return engine.execute(copy.deepcopy(prompt), fresh_executor=False)

    def initial_loss(result):
        result.raise_for_error()
        return result.ui_outputs[SAMPLER_ID]["reno_summary"][0]["initial_loss"]

    try:
        ran = execute()
        first = initial_loss(ran)
        assert ran.progress != []
        fingerprint = loader.IS_CHANGED(reward="clipscore", weight=1.0)
        cached = execute()  # nothing changed: ComfyUI serves its cache
        assert cached.progress == [] and loader.IS_CHANGED(reward="clipscore", weight=1.0) == fingerprint

        other = write_tiny_clip_folder(tmp_path / "other", seed=9)  # same architecture, other weights
        shutil.copy(other / "model.safetensors", weights)
        assert loader.IS_CHANGED(reward="clipscore", weight=1.0) != fingerprint
        replaced = execute()
        assert replaced.progress != [] and initial_loss(replaced) != first  # run again, with the new weights

        weights.unlink()
        err = execute().error
        assert err is not None and err["node_type"] == "ReNORewardLoader", err
        assert "missing files" in err["exception_message"] and "model.safetensors" in err["exception_message"]
        assert str(weights.parent) in err["exception_message"]
    finally:
        weights.write_bytes(original)
    assert initial_loss(execute()) == first  # back to the original file
