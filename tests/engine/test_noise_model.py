"""ReNO Train Noise Model and ReNO Noise Model (Noise Hypernetworks, issue 23 §1) in the real engine, on tiny models:
the offset is exactly zero before training, training raises the reward and the held-out reward of one-pass hyper-noise
generation over plain generation, the NOISE renders in SamplerCustomAdvanced exactly as ReNO Sampler's iteration 0
from the history, nothing stays on ComfyUI's objects, and Cancel stops training.
"""

from __future__ import annotations

import pytest
import torch
from engine_support import pack_module, reward_stack
from tolerances import ORACLE_LATENT_K, assert_rounding_close

TRAIN = "a red cube\na blue sphere"
HELD = "a purple ring\nan orange box"
SIZE = 32
SEED = 7


@pytest.fixture(scope="module")
def stack(engine):
    # the aesthetic reward ignores the prompt: what the noise model learns on the training prompts carries over
    return reward_stack(engine, (("aesthetic", 1.0),))


@pytest.fixture(scope="module")
def sd(engine):
    model, vae, _, _ = engine.call_node("ReNOTestTinyFamily", inference=True, family="sd15", transformer_depth=1,
                                        seed=0, text="x", negative_text="")
    (clip,) = engine.call_node("ReNOTestTinyCLIP", inference=True, family="sd15")
    (pos,) = engine.call_node("CLIPTextEncode", inference=True, clip=clip, text="a purple ring")
    (neg,) = engine.call_node("CLIPTextEncode", inference=True, clip=clip, text="")
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=SIZE, height=SIZE, batch_size=1)
    return dict(model=model, vae=vae, clip=clip, pos=pos, neg=neg, latent=latent)


def trainer(engine, p, stack, **kw):
    args = dict(model=p["model"], clip=p["clip"], vae=p["vae"], rewards=stack, prompts=TRAIN, training_steps=20,
                learning_rate=0.1, rank=4, regularization=0.1, sampler_steps=1, sampler_name="euler",
                scheduler="simple", seed=0, held_out=HELD, width=SIZE, height=SIZE, eval_every=10)
    args.update(kw)
    return engine.call_node("ReNOTrainNoiseModel", inference=True, **args)


@pytest.fixture(scope="module")
def trained(engine, sd, stack):
    return trainer(engine, sd, stack)


def noise_model(engine, p, lora, seed=SEED, strength=1.0):
    return engine.call_node("ReNONoiseModel", inference=True, model=p["model"], noise_model=lora, positive=p["pos"],
                            latent=p["latent"], seed=seed, strength=strength)


def random_noise(engine, p, seed=SEED):
    (noise,) = engine.call_node("RandomNoise", inference=True, noise_seed=seed)
    return noise.generate_noise(p["latent"])


def no_adapters_left(model):
    for m in model.model.modules():
        assert not getattr(m, "weight_function", []) and not getattr(m, "bias_function", [])


def ksampler(engine, p):
    (out,) = engine.call_node("KSampler", inference=True, model=p["model"], seed=SEED, steps=1, cfg=1.0,
                              sampler_name="euler", scheduler="simple", positive=p["pos"], negative=p["neg"],
                              latent_image=p["latent"], denoise=1.0)
    return out["samples"].clone()


def test_the_offset_is_exactly_zero_before_training(engine, sd):
    training = pack_module(engine).nodes.training
    switch = training.AdapterSwitch()
    adapters = training.attach_adapters(sd["model"], 4, seed=3, switch=switch)
    untrained = adapters.state()
    training.unload_training_clone(adapters)
    ups = [k for k in untrained if k.endswith(".lora_up.weight")]
    assert ups
    for k in ups:  # ComfyUI's initialization: one factor random, the other zero, so up @ down = 0
        down = untrained[k.replace(".lora_up.", ".lora_down.")]
        assert not torch.count_nonzero(untrained[k].flatten(1) @ down.flatten(1))
        assert torch.count_nonzero(untrained[k]) or torch.count_nonzero(down)
    noise, history = noise_model(engine, sd, untrained)
    eps = random_noise(engine, sd)
    hyper = noise.generate_noise(sd["latent"])
    assert torch.equal(hyper, eps)  # bit for bit: ε' = ε + 0
    assert torch.equal(history.best_noise, eps) and noise.seed == SEED
    no_adapters_left(sd["model"])


def test_training_raises_the_reward_and_hyper_noise_beats_plain_generation(engine, sd, stack, trained):
    lora, history = trained["result"]
    # the training trajectory is chaotic in float32: at lr 0.1 a rounding-level difference (another CPU, another
    # thread count) grows within ~5 steps into another run. One run's 5-step training gain was +2.2 here and +0.46 on
    # CI's CPU; over 17 runs (seeds 0-5 at 1 and 2 threads, 0-3 at 3) it spread 0.6-2.8 (mean 2.1, sd 0.65) and the
    # held-out gain 1.4-3.5 (mean 2.6, sd 0.65); at seed 0 alone, across 1/2/3 threads, 1.8-2.4 and 2.3-3.2. So the
    # claims are asked of the mean of three training runs (seeds 0, 1, 2: sd / sqrt(3), about 0.4), not of one run
    runs = [trained] + [trainer(engine, sd, stack, seed=seed) for seed in (1, 2)]
    train_gains, held_gains = [], []
    for seed, run in enumerate(runs):
        evaluations = run["ui"]["reno_training"][0]["evaluations"]
        assert [s for s, _ in evaluations] == [0, 10, 20]
        rewards = [r["scores"]["aesthetic"][0] for r in run["result"][1].records]
        first, last = sum(rewards[:5]) / 5, sum(rewards[-5:]) / 5
        # step 0's evaluation is plain generation (the offset is zero before training); the last is one-pass
        # hyper-noise, at the same fixed noises
        train_gains.append(last - first)
        held_gains.append(evaluations[-1][1] - evaluations[0][1])
        print(f"\n[noise model] seed {seed}: training reward (mean of 5 steps) {first:.3f} -> {last:.3f}; held-out "
              f"weighted reward plain {evaluations[0][1]:.3f} -> hyper-noise {evaluations[-1][1]:.3f} ({evaluations})")
    train_gain, held_gain = sum(train_gains) / 3, sum(held_gains) / 3
    print(f"[noise model] mean of 3 runs: training gain {train_gain:+.3f}, held-out gain {held_gain:+.3f}")
    # each step draws other noise, so one step's reward spreads by about 0.5 around the trend and a 5-step mean by
    # about 0.25: the training rewards must go up (measured mean +2.1 to +2.6 at 1/2/3 threads)
    assert train_gain > 0, train_gains
    # hyper-noise beats plain generation on the held-out prompts by a margin (measured mean +2.3 to +2.9 at 1/2/3
    # threads: 0.5 is 5 sd of the 3-run mean below its expected 2.6)
    assert held_gain > 0.5, held_gains
    assert history.iterations == 20 and history.config["method"] == "hypernoise"
    assert history.config["regularization"] == pytest.approx(0.1)
    # a plain LORA_MODEL: ComfyUI's keys, nothing trainable, the up matrices trained away from zero
    assert any(k.endswith(".lora_up.weight") for k in lora) and any(k.endswith(".diff_b") for k in lora)
    assert not any(t.requires_grad for t in lora.values())
    assert any(torch.count_nonzero(lora[k].flatten(1) @ lora[k.replace(".lora_up.", ".lora_down.")].flatten(1))
               for k in lora if k.endswith(".lora_up.weight"))
    (via_loader,) = engine.call_node("LoraModelLoader", inference=True, model=sd["model"], lora=lora,
                                     strength_model=1.0)  # core's loader takes it
    assert via_loader is not sd["model"]


def test_the_noise_renders_as_reno_samplers_iteration_0_from_the_history(engine, sd, stack, trained):
    lora, _ = trained["result"]
    noise, history = noise_model(engine, sd, lora)
    eps = random_noise(engine, sd)
    hyper = noise.generate_noise(sd["latent"])
    assert not torch.equal(hyper, eps)  # the trained noise model moves the noise
    (half, _) = noise_model(engine, sd, lora, strength=0.5)
    torch.testing.assert_close(half.generate_noise(sd["latent"]) - eps, (hyper - eps) / 2, rtol=1e-5, atol=1e-6)
    (plain, _) = noise_model(engine, sd, lora, strength=0.0)
    assert torch.equal(plain.generate_noise(sd["latent"]), eps)

    (guider,) = engine.call_node("CFGGuider", inference=True, model=sd["model"], positive=sd["pos"],
                                 negative=sd["neg"], cfg=1.0)
    (sampler,) = engine.call_node("KSamplerSelect", inference=True, sampler_name="euler")
    (sigmas,) = engine.call_node("BasicScheduler", inference=True, model=sd["model"], scheduler="simple", steps=1,
                                 denoise=1.0)
    out = engine.call_node("SamplerCustomAdvanced", inference=True, noise=noise, guider=guider, sampler=sampler,
                           sigmas=sigmas, latent_image=sd["latent"])
    rendered = out[0]["samples"]
    reno = engine.call_node("ReNOSampler", inference=True, model=sd["model"], positive=sd["pos"], negative=sd["neg"],
                            vae=sd["vae"], latent_image=sd["latent"], rewards=stack, prompt="a purple ring", seed=SEED,
                            iterations=1, learning_rate=5.0, cfg=1.0, regularization=0.01, grad_clip=0.1,
                            continue_from=history)
    latent, _, reno_history = reno["result"]
    assert torch.equal(reno_history.best_noise, history.best_noise)
    assert_rounding_close(latent["samples"], rendered, ORACLE_LATENT_K, msg="ReNO iteration 0 vs SamplerCustomAdvanced")


def test_recomputing_in_backward_gives_the_same_gradient(engine, sd, stack):
    """With every block recomputed in the backward pass (memory: checkpoint all) the adapters get the gradient they
    get with nothing recomputed: each recomputed block sees the switch as its forward pass did (were the adapters'
    part recomputed with the switch off, their gradient would be 0). Compared at the first step, before AdamW (whose
    first update is about lr * sign(g) for any g above its epsilon, so rounding-level differences of near-zero
    gradient components would show in the weights)."""
    kept = trainer(engine, sd, stack, training_steps=1, held_out="", memory="no checkpointing")["result"][1]
    recomputed = trainer(engine, sd, stack, training_steps=1, held_out="", memory="checkpoint all")["result"][1]
    assert kept.records[0]["grad_norm"][0] > 0
    assert recomputed.records[0]["loss"][0] == pytest.approx(kept.records[0]["loss"][0], rel=1e-5)
    assert recomputed.records[0]["grad_norm"][0] == pytest.approx(kept.records[0]["grad_norm"][0], rel=1e-4)


def test_nothing_stays_on_comfyuis_objects(engine, sd, stack, trained):
    base = ksampler(engine, sd)
    no_adapters_left(sd["model"])
    noise_model(engine, sd, trained["result"][0])
    no_adapters_left(sd["model"])
    assert not sd["model"].weight_wrapper_patches
    torch.testing.assert_close(ksampler(engine, sd), base, rtol=0, atol=0)


def test_cancel_stops_training_and_leaves_the_model_unpatched(engine, sd, stack):
    import comfy.model_management

    base = ksampler(engine, sd)
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
    assert seen == [1, 2]
    no_adapters_left(sd["model"])
    torch.testing.assert_close(ksampler(engine, sd), base, rtol=0, atol=0)
    lora, history = trainer(engine, sd, stack, training_steps=2, held_out="")["result"]
    assert history.iterations == 2


@pytest.mark.parametrize("kw, match", [
    (dict(prompts="\n  \n"), "'prompts' is empty"),
    (dict(held_out="a red cube"), "never be trained on"),
    (dict(regularization=-1.0), "regularization must be >= 0"),
])
def test_bad_inputs_are_named(engine, sd, stack, kw, match):
    with pytest.raises(ValueError, match=match):
        trainer(engine, sd, stack, **kw)


def test_a_noise_model_of_another_model_is_refused_by_name(engine, sd):
    bogus = {"diffusion_model.not_a_layer.lora_up.weight": torch.zeros(4, 4),
             "diffusion_model.not_a_layer.lora_down.weight": torch.zeros(4, 4)}
    with pytest.raises(ValueError, match=r"^ReNO Noise Model: noise_model .*another model family"):
        noise_model(engine, sd, bogus)
    with pytest.raises(ValueError, match=r"^ReNO Noise Model: noise_model must be a LORA_MODEL"):
        noise_model(engine, sd, {})
    no_adapters_left(sd["model"])
