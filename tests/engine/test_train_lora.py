"""ReNO Train Reward LoRA in the real engine, on tiny models: every method raises the held-out reward, the LoRA is
core ComfyUI's (Save LoRA Weights, Load LoRA Model and LoraLoaderModelOnly reproduce the trained model exactly),
training continues from an existing LoRA, is deterministic for a seed, and Cancel or OOM leave the model as it was.
"""

from __future__ import annotations

import pytest
import torch
from engine_support import pack_module, reward_stack
from tolerances import ORACLE_LATENT_K, assert_rounding_close, rounding_tol

TRAIN = "a red cube\na blue sphere\na green cone\na yellow star"
HELD = "a purple ring\nan orange box"
SIZE = 32


@pytest.fixture(scope="module")
def stack(engine):
    # the aesthetic reward ignores the prompt: what the LoRA learns on the training prompts carries to held-out ones
    return reward_stack(engine, (("aesthetic", 1.0),))


@pytest.fixture(scope="module")
def sd(engine):
    model, vae, _, _ = engine.call_node("ReNOTestTinyFamily", inference=True, family="sd15", transformer_depth=1,
                                        seed=0, text="x", negative_text="")
    (clip,) = engine.call_node("ReNOTestTinyCLIP", inference=True, family="sd15")
    return dict(model=model, vae=vae, clip=clip)


def trainer(engine, p, stack, **kw):
    args = dict(model=p["model"], clip=p["clip"], vae=p["vae"], rewards=stack, prompts=TRAIN, method="alignprop",
                training_steps=10, learning_rate=2e-2, rank=4, batch_size=1, grad_accumulation=1, sampler_steps=2,
                sampler_name="euler", scheduler="simple", cfg=1.0, k=1, seed=0, held_out=HELD, width=SIZE,
                height=SIZE, eval_every=5)
    args.update(kw)
    return engine.call_node("ReNORewardLoRATrainer", inference=True, **args)


def ksampler(engine, model, clip, seed=7, steps=2):
    (pos,) = engine.call_node("CLIPTextEncode", inference=True, clip=clip, text="a purple ring")
    (neg,) = engine.call_node("CLIPTextEncode", inference=True, clip=clip, text="")
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=SIZE, height=SIZE, batch_size=1)
    (out,) = engine.call_node("KSampler", inference=True, model=model, seed=seed, steps=steps, cfg=1.0,
                              sampler_name="euler", scheduler="simple", positive=pos, negative=neg,
                              latent_image=latent, denoise=1.0)
    return out["samples"].clone()


@pytest.mark.parametrize("method", ["alignprop", "drtune", "refl"])
def test_each_method_raises_the_held_out_reward(engine, sd, stack, method):
    # four rollouts per step over a 4-step euler chain (alignprop: the last 1-2 steps carry gradient; drtune: 2 steps)
    out = trainer(engine, sd, stack, method=method, batch_size=4, learning_rate=3e-2, sampler_steps=4, k=2)
    model, lora, history = out["result"]
    summary = out["ui"]["reno_training"][0]
    print(f"\n[train lora] {method}: held-out {summary['held_out_before']:.4f} -> {summary['held_out_after']:.4f}, "
          f"evaluations {summary['evaluations']}")
    assert [s for s, _ in summary["evaluations"]] == [0, 5, 10]
    assert summary["held_out_after"] > summary["held_out_before"] + 0.5
    # the history: one record per step with the loss, each reward and the latest held-out reward
    assert history.iterations == 10 and history.config["method"] == method
    assert [r["label"] for r in history.rewards] == ["aesthetic", "held-out"]
    assert history.records[4]["scores"]["held-out"] == [summary["evaluations"][1][1]]
    assert len(history.previews) == 10 and len(out["ui"]["images"]) == 3  # held-out image at each evaluation
    chart = out["ui"]["reno_chart"][0]
    assert chart["iterations"] == 10 and len(chart["series"][0]["scores"]["held-out"]) == 10


def test_saved_lora_round_trips_through_core_nodes(engine, sd, stack, tmp_path):
    from pathlib import Path

    model, lora, _ = trainer(engine, sd, stack, training_steps=3, held_out="")["result"]
    # ComfyUI's LORA_MODEL format: TrainLoraNode's keys, one LoRA per weight matrix, diff/diff_b elsewhere
    inner = sd["model"].model
    for name, m in inner.named_modules():
        if not hasattr(m, "weight_function"):
            continue
        if getattr(m, "weight", None) is not None:
            if m.weight.dim() >= 2:
                assert {f"{name}.lora_up.weight", f"{name}.lora_down.weight", f"{name}.alpha"} <= set(lora)
                assert lora[f"{name}.lora_down.weight"].shape[0] == 4  # rank
            else:
                assert lora[f"{name}.diff"].shape == m.weight.shape
        if getattr(m, "bias", None) is not None:
            assert lora[f"{name}.diff_b"].shape == m.bias.shape
    assert not any(t.requires_grad for t in lora.values())

    trained = ksampler(engine, model, sd["clip"])
    base = ksampler(engine, sd["model"], sd["clip"])
    assert not torch.equal(trained, base)  # the LoRA changes the image
    (via_loader,) = engine.call_node("LoraModelLoader", inference=True, model=sd["model"], lora=lora,
                                     strength_model=1.0)
    # the same LoRA applied by ComfyUI's loader instead of the trainer's own patches: the patched weights may round
    # differently (W + up @ down * scale summed in another order), a few roundings of the 2-step latent
    assert_rounding_close(ksampler(engine, via_loader, sd["clip"]), trained, ORACLE_LATENT_K, msg="LoraModelLoader")

    engine.call_node("SaveLoRA", inference=True, lora=lora, prefix="loras/reno_reward_lora")
    out_dir = Path(engine.folder_paths.get_output_directory()) / "loras"
    saved = sorted(out_dir.glob("reno_reward_lora_*.safetensors"))
    assert saved, f"Save LoRA Weights wrote nothing in {out_dir}"
    loras_dir = Path(engine.folder_paths.get_folder_paths("loras")[0])
    loras_dir.mkdir(parents=True, exist_ok=True)
    (loras_dir / "reno_reward_lora.safetensors").write_bytes(saved[-1].read_bytes())
    (from_file,) = engine.call_node("LoraLoaderModelOnly", inference=True, model=sd["model"],
                                    lora_name="reno_reward_lora.safetensors", strength_model=1.0)
    assert_rounding_close(ksampler(engine, from_file, sd["clip"]), trained, ORACLE_LATENT_K, msg="from the file")
    # and the input model is untouched
    torch.testing.assert_close(ksampler(engine, sd["model"], sd["clip"]), base, rtol=0, atol=0)


def test_existing_lora_continues_the_curve(engine, sd, stack):
    first = trainer(engine, sd, stack, training_steps=4, eval_every=4)
    _, lora1, _ = first["result"]
    curve1 = first["ui"]["reno_training"][0]["evaluations"]
    second = trainer(engine, sd, stack, training_steps=4, eval_every=4, existing_lora=lora1)
    _, lora2, history = second["result"]
    curve2 = second["ui"]["reno_training"][0]["evaluations"]
    # the held-out images come from the same seeds: the continued run starts exactly where the first one ended
    # the same LoRA weights (loaded instead of trained) on the same held-out images: the aesthetic score (~10) to
    # a few roundings of the patched model's output, as the LoRA round trip above
    same = rounding_tol(ORACLE_LATENT_K, torch.float32, curve1[-1][1], at_least=1.0)
    assert curve2[0][1] == pytest.approx(curve1[-1][1], rel=0, abs=same)
    assert abs(curve2[0][1] - curve1[0][1]) > same  # and not where the untrained model was
    assert set(lora1) == set(lora2) and any(not torch.equal(lora1[k], lora2[k]) for k in lora1)
    assert history.iterations == 4


def test_training_is_deterministic_for_a_seed(engine, sd, stack):
    a = trainer(engine, sd, stack, training_steps=3, held_out="", method="drtune", sampler_steps=3, k=2)
    b = trainer(engine, sd, stack, training_steps=3, held_out="", method="drtune", sampler_steps=3, k=2)
    la, lb = a["result"][1], b["result"][1]
    assert all(torch.equal(la[k], lb[k]) for k in la)
    assert [r["loss"] for r in a["result"][2].records] == [r["loss"] for r in b["result"][2].records]


def test_cancel_mid_training_leaves_the_model_unpatched_and_the_next_run_works(engine, sd, stack):
    import comfy.model_management

    base = ksampler(engine, sd["model"], sd["clip"])
    seen = []

    def on_progress(event):
        if event.total == 50:
            seen.append(event.value)
            if event.value == 2:
                engine.interrupt()

    try:
        with engine.progress_callback(on_progress), \
                pytest.raises(comfy.model_management.InterruptProcessingException):
            trainer(engine, sd, stack, training_steps=50, held_out="")
    finally:
        engine.reset_interrupt()
    assert seen == [1, 2]  # stopped within the step after Cancel
    # nothing of the adapters is left on the shared model
    for m in sd["model"].model.modules():
        assert not getattr(m, "weight_function", []) and not getattr(m, "bias_function", [])
    torch.testing.assert_close(ksampler(engine, sd["model"], sd["clip"]), base, rtol=0, atol=0)
    model, lora, history = trainer(engine, sd, stack, training_steps=2, held_out="")["result"]
    assert history.iterations == 2


def test_out_of_memory_gives_the_packs_advice_and_leaves_the_model_as_it_was(engine, sd, stack, monkeypatch):
    import comfy.model_management

    pack = pack_module(engine)
    training = pack.nodes.training

    def oom(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    base = ksampler(engine, sd["model"], sd["clip"])
    monkeypatch.setattr(training, "rollout_chain", oom)
    with pytest.raises(comfy.model_management.OOM_EXCEPTION) as e:
        trainer(engine, sd, stack, training_steps=2, held_out="")
    assert "ReNO Train Reward LoRA" in str(e.value) and "checkpoint" in str(e.value)
    monkeypatch.undo()
    torch.testing.assert_close(ksampler(engine, sd["model"], sd["clip"]), base, rtol=0, atol=0)


@pytest.mark.parametrize("kw, match", [
    (dict(prompts="\n  \n"), "'prompts' is empty"),
    (dict(held_out="a red cube"), "never be trained on"),
    (dict(sampler_name="heun"), "sampler_name"),
])
def test_bad_inputs_are_named(engine, sd, stack, kw, match):
    with pytest.raises(ValueError, match=match):
        trainer(engine, sd, stack, **kw)


def test_a_learning_rate_of_zero_is_refused_by_the_widget_and_by_name(engine, sd, stack):
    """The widget's minimum is above 0 (ComfyUI's validation refuses 0 in a prompt), and a direct call or a
    prompt past validation gets an error naming the node and the input, before any work (issue 20 §2)."""
    spec = engine.node_class("ReNORewardLoRATrainer").INPUT_TYPES()["required"]["learning_rate"][1]
    assert spec["min"] > 0 and spec["default"] >= spec["min"]
    for value, words in ((0.0, "must be > 0"), (-1e-4, "must be > 0"), (float("nan"), "must be a finite number")):
        with pytest.raises(ValueError, match=rf"^ReNO Train Reward LoRA: learning_rate.*{words}"):
            trainer(engine, sd, stack, learning_rate=value, model=None, vae=None)  # refused before model checks
    with pytest.raises(ValueError, match=r"^ReNO Train Reward LoRA: training_steps must be a whole number >= 1"):
        trainer(engine, sd, stack, training_steps=0, model=None, vae=None)


def test_a_host_without_comfyuis_weight_adapters_is_told_which_version_it_needs(engine, sd, stack, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "comfy.weight_adapter", None)  # as on ComfyUI before 0.3.41
    with pytest.raises(RuntimeError, match=r"ComfyUI 0\.3\.41 or newer"):
        trainer(engine, sd, stack, training_steps=1, held_out="")


def test_an_existing_lora_of_another_model_is_refused_by_name(engine, sd, stack):
    bogus = {"diffusion_model.not_a_layer.lora_up.weight": torch.zeros(4, 4),
             "diffusion_model.not_a_layer.lora_down.weight": torch.zeros(4, 4)}
    with pytest.raises(ValueError, match="another model family"):
        trainer(engine, sd, stack, training_steps=1, held_out="", existing_lora=bogus)
    _, lora, _ = trainer(engine, sd, stack, training_steps=1, held_out="")["result"]
    key = next(k for k in lora if k.endswith(".diff_b"))
    wrong = {**lora, key: torch.zeros(lora[key].numel() + 1)}
    with pytest.raises(ValueError, match="another model"):
        trainer(engine, sd, stack, training_steps=1, held_out="", existing_lora=wrong)
