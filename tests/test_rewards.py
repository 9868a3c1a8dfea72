"""Rewards on tiny checkpoints written in the real formats: definitions, gradients, layouts, errors."""

import contextlib
import os
import shutil

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from reno_pack.optimizer.memory import recomputing
from reno_pack.reward_loaders import (
    REWARDS,
    RewardEnsemble,
    RewardFilesMissing,
    RewardLoadError,
    WeightedReward,
    clip_preprocess,
    comfy_to_bchw,
    load_reward,
)
from reno_pack.reward_loaders import preprocess as pp
from reno_pack.reward_loaders.base import unique_labels
from tolerances import BATCH_K, EPS32, HALF_TOWER_K, REFERENCE_K, assert_rounding_close, eps

PROMPT = "a photo of the cat on the mat"


# -- preprocessing ---------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "hw, resized",
    [((512, 512), (224, 224)), ((512, 768), (224, 336)), ((768, 512), (336, 224)), ((300, 433), (224, 323)),
     ((100, 150), (224, 336))],
)
def test_resize_follows_torchvision_rounding(hw, resized):
    x = torch.rand(1, 3, *hw)
    assert pp.resize_short_side(x, 224).shape[-2:] == resized  # 224*433/300 = 323.3 -> 323 (truncated)


@pytest.mark.parametrize("size, offset", [(323, 50), (325, 50), (327, 52), (224, 0)])
def test_center_crop_offset_uses_python_rounding(size, offset):
    x = torch.arange(size, dtype=torch.float32).view(1, 1, 1, size).expand(1, 1, 224, size)
    out = pp.center_crop(x, 224)
    assert out.shape[-1] == 224 and out[0, 0, 0, 0].item() == offset  # (323-224)/2 = 49.5 -> 50 (half to even)


def test_resize_is_the_antialiased_bicubic_kernel_and_differentiable():
    x = torch.rand(2, 3, 300, 433, requires_grad=True)
    out = pp.resize_short_side(x, 224)
    ref = F.interpolate(x, size=(224, 323), mode="bicubic", antialias=True, align_corners=False)
    torch.testing.assert_close(out, ref, rtol=0, atol=0)  # the same call: bit-identical
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0


def test_clip_preprocess_matches_the_clip_image_processor():
    """Same geometry and normalization as transformers' CLIPImageProcessor (PIL), up to resampling noise."""
    from PIL import Image
    from transformers import CLIPImageProcessor

    smooth = F.interpolate(torch.rand(1, 3, 12, 18), size=(300, 450), mode="bilinear", align_corners=False)
    ours = clip_preprocess(smooth)
    array = (smooth[0].permute(1, 2, 0).numpy() * 255).round().astype("uint8")
    proc = CLIPImageProcessor(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
    theirs = proc(images=Image.fromarray(array), return_tensors="pt")["pixel_values"]
    assert ours.shape == theirs.shape == (1, 3, 224, 224)
    # PIL works in uint8: the input and its output are rounded to 1/255 (mean |error| a quarter step each), and
    # its bicubic kernel (a = -0.5) differs from torch's (a = -0.75) by less than a step on this smooth image:
    # a mean below 1.5 steps, in CLIP's normalized units (divided by its smallest std); measured 0.0049
    step = 1 / 255 / min(proc.image_std)
    assert (ours - theirs).abs().mean() < 1.5 * step


def test_comfy_layout_and_channels():
    img = torch.rand(2, 64, 48, 3)
    assert comfy_to_bchw(img).shape == (2, 3, 64, 48)
    assert comfy_to_bchw(img[0]).shape == (1, 3, 64, 48)
    assert clip_preprocess(torch.rand(1, 1, 64, 64)).shape == (1, 3, 224, 224)
    assert clip_preprocess(torch.rand(1, 4, 64, 64)).shape == (1, 3, 224, 224)
    with pytest.raises(ValueError, match="channels"):
        clip_preprocess(torch.rand(1, 2, 64, 64))
    with pytest.raises(ValueError, match="IMAGE"):
        comfy_to_bchw(torch.rand(64, 64))


@settings(max_examples=25, deadline=None)
@given(
    h=st.integers(1, 700), w=st.integers(1, 700), batch=st.integers(1, 3),
    dtype=st.sampled_from([torch.float32, torch.float16, torch.bfloat16]),
)
def test_preprocess_any_shape_gives_finite_224_crops_in_the_input_dtype(h, w, batch, dtype):
    out = clip_preprocess(torch.rand(batch, 3, h, w).to(dtype))
    assert out.shape == (batch, 3, 224, 224) and out.dtype == dtype
    assert torch.isfinite(out.float()).all()


# -- CLIP rewards: the definition against an independent computation ---------------------------------

def reference_clip_score(folder, images_bchw, prompt):
    """exp(logit_scale) * cos computed with transformers' public API only."""
    from transformers import CLIPModel, CLIPTokenizer

    model = CLIPModel.from_pretrained(str(folder), local_files_only=True).float().eval()
    tok = CLIPTokenizer.from_pretrained(str(folder), local_files_only=True)
    with torch.no_grad():
        inputs = tok([prompt], padding=True, truncation=True, max_length=77, return_tensors="pt")
        t = model.get_text_features(**inputs)
        i = model.get_image_features(pixel_values=clip_preprocess(images_bchw))
        t = t if torch.is_tensor(t) else t.pooler_output
        i = i if torch.is_tensor(i) else i.pooler_output
        t = t / t.norm(dim=-1, keepdim=True)
        i = i / i.norm(dim=-1, keepdim=True)
        return model.logit_scale.exp() * (i @ t.T)[:, 0]


@pytest.mark.parametrize("name", ["clipscore", "pickscore"])
def test_clip_reward_score_is_logit_scale_times_cosine(reward_root, name):
    model = load_reward(name, [reward_root])
    images = torch.rand(3, 3, 96, 160)
    ours = model(images, PROMPT)
    ref = reference_clip_score(reward_root / name, images, PROMPT)
    # float32 exp(logit_scale) * cos against transformers' CLIPModel: rounding relative to exp(logit_scale) (measured
    # <= 0.14 roundings)
    assert_rounding_close(ours, ref, REFERENCE_K, scale=model.logit_scale_exp)
    assert model.offset == REWARDS[name].offset


@pytest.mark.parametrize("name", ["clipscore", "pickscore"])
def test_clip_reward_gradients_reach_the_image(reward_root, name):
    model = load_reward(name, [reward_root])
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    model(images, PROMPT).sum().backward()
    assert torch.isfinite(images.grad).all()
    assert images.grad.abs().sum() > 0
    # the weights are frozen: no gradient accumulates in the model
    assert all(p.grad is None for p in model.parameters())


@settings(max_examples=6, deadline=None)
@given(h=st.integers(16, 300), w=st.integers(16, 300), batch=st.integers(1, 3))
def test_comfy_images_of_any_size_and_batch_score_per_image(reward_root, h, w, batch):
    model = load_reward("pickscore", [reward_root])
    comfy_images = torch.rand(batch, h, w, 3)
    scores = model(comfy_to_bchw(comfy_images), PROMPT)
    assert scores.shape == (batch,) and torch.isfinite(scores).all()
    single = model(comfy_to_bchw(comfy_images[-1:]), PROMPT)
    # float32 batch vs single, at the score's scale exp(logit_scale)
    assert_rounding_close(scores[-1:], single, BATCH_K, scale=model.logit_scale_exp)


def test_long_prompt_is_truncated_and_said(reward_root, caplog):
    model = load_reward("clipscore", [reward_root])
    long_prompt = " ".join(["cat"] * 200)
    with caplog.at_level("WARNING"):
        score = model(torch.rand(1, 3, 64, 64), long_prompt)
    assert torch.isfinite(score).all()
    assert "only the first 77 are scored" in caplog.text


# -- the ensemble ---------------------------------------------------------------------------------------

def test_ensemble_loss_is_weighted_offset_minus_score(reward_root):
    clip = load_reward("clipscore", [reward_root])
    pick = load_reward("pickscore", [reward_root])
    stack = [WeightedReward("clipscore", 0.01, clip), WeightedReward("pickscore", 0.05, pick),
             WeightedReward("pickscore", -1.0, pick)]
    ens = RewardEnsemble(stack, PROMPT)
    images = torch.rand(2, 3, 64, 80)
    loss, scores = ens(images)
    assert list(scores) == ["clipscore", "pickscore", "pickscore#2"]
    s_clip, s_pick = clip(images, PROMPT), pick(images, PROMPT)
    expected = 0.01 * (100 - s_clip) + 0.05 * (30 - s_pick) - 1.0 * (30 - s_pick)
    # float32, three weighted terms summed in another order: <= 8 roundings of the largest term, |w| (c + |s|)
    largest = 30 + float(torch.cat([s_clip, s_pick]).abs().max())
    assert_rounding_close(loss, expected, 8, scale=largest)
    assert_rounding_close(ens.weighted_total(scores), 0.01 * s_clip + 0.05 * s_pick - s_pick, 8, scale=largest)


def test_text_features_are_computed_once_per_prompt(reward_root, monkeypatch):
    model = load_reward("pickscore", [reward_root])
    model._text_cache.clear()
    calls = []
    original = type(model).encode_text
    monkeypatch.setattr(type(model), "encode_text", lambda self, p: (calls.append(p), original(self, p))[1])
    ens = RewardEnsemble([WeightedReward("pickscore", 1.0, model)], "a new prompt")
    ens.prepare()
    for _ in range(5):
        ens(torch.rand(1, 3, 32, 32))
    assert calls == ["a new prompt"]


def test_a_training_set_of_many_prompts_keeps_its_text_features(reward_root, monkeypatch):
    """A LoRA training run cycles through its prompts: each is encoded once, not again on every visit (the cache
    evicts the least recently used prompt, and only beyond TEXT_CACHE_SIZE)."""
    from reno_pack.reward_loaders.base import TEXT_CACHE_SIZE

    model = load_reward("pickscore", [reward_root])
    model._text_cache.clear()
    calls = []
    original = type(model).encode_text
    monkeypatch.setattr(type(model), "encode_text", lambda self, p: (calls.append(p), original(self, p))[1])
    prompts = [f"prompt {i}" for i in range(40)]
    for _ in range(3):
        for p in prompts:
            model.text_features(p)
    assert calls == prompts
    for i in range(TEXT_CACHE_SIZE):
        model.text_features(f"other {i}")
    model.text_features(prompts[-1])  # evicted: the oldest go first
    assert calls[-1] == prompts[-1] and len(model._text_cache) == TEXT_CACHE_SIZE


def test_empty_stack_is_refused():
    with pytest.raises(ValueError, match="ReNO Load Reward"):
        RewardEnsemble([], PROMPT)


def test_unique_labels():
    assert unique_labels(["a", "b", "a", "a"]) == ["a", "b", "a#2", "a#3"]


# -- files, errors, caching -------------------------------------------------------------------------------

def test_missing_files_error_names_files_folder_and_source(tmp_path):
    (tmp_path / "pickscore").mkdir()
    (tmp_path / "pickscore" / "config.json").write_text("{}")
    with pytest.raises(RewardFilesMissing) as e:
        load_reward("pickscore", [tmp_path])
    msg = str(e.value)
    assert str(tmp_path / "pickscore") in msg
    assert "model.safetensors" in msg and "vocab.json" in msg and "merges.txt" in msg
    assert "https://huggingface.co/yuvalkirstain/PickScore_v1" in msg
    assert "  - config.json " not in msg  # present, so not listed (tokenizer_config.json is missing)
    assert "  - tokenizer_config.json " in msg


def test_unknown_reward_name():
    with pytest.raises(ValueError, match="unknown reward"):
        load_reward("nope")


def test_checkpoint_of_another_model_is_refused_with_the_keys(tmp_path, reward_root):
    from tiny_rewards import write_tiny_clip_folder

    other = write_tiny_clip_folder(tmp_path / "other", seed=3, width=48, layers=3)
    target = tmp_path / "root" / "clipscore"
    shutil.copytree(reward_root / "clipscore", target)
    shutil.copy(other / "model.safetensors", target / "model.safetensors")
    with pytest.raises(RewardLoadError) as e:
        load_reward("clipscore", [tmp_path / "root"])
    msg = str(e.value)
    assert str(target / "model.safetensors") in msg and "clipscore" in msg
    assert "unexpected key(s): text_model.encoder.layers.2." in msg  # the third block the config does not have
    assert "mismatched key(s)" in msg and "checkpoint (48, 48) vs config.json (32, 32)" in msg


def test_truncated_weights_file_gets_a_clear_error(tmp_path, reward_root):
    target = tmp_path / "root" / "clipscore"
    shutil.copytree(reward_root / "clipscore", target)
    data = (target / "model.safetensors").read_bytes()
    (target / "model.safetensors").write_bytes(data[: len(data) // 2])
    with pytest.raises(RewardLoadError, match="could not load the CLIP model"):
        load_reward("clipscore", [tmp_path / "root"])


def test_loaded_models_are_cached_and_reloaded_when_files_change(tmp_path, reward_root):
    root = tmp_path / "root"
    shutil.copytree(reward_root / "pickscore", root / "pickscore")
    a = load_reward("pickscore", [root])
    assert load_reward("pickscore", [root]) is a
    weights = root / "pickscore" / "model.safetensors"
    st_ = weights.stat()
    os.utime(weights, ns=(st_.st_atime_ns, st_.st_mtime_ns + 10_000_000))
    b = load_reward("pickscore", [root])
    assert b is not a


def test_env_var_search_path(monkeypatch, reward_root):
    monkeypatch.setenv("RENO_REWARDS_DIR", str(reward_root))
    assert load_reward("clipscore").source == str(reward_root / "clipscore")


def test_models_built_inside_inference_mode_still_backpropagate(tmp_path, reward_root):
    """ComfyUI runs nodes under inference_mode; the loader builds its weights as normal tensors."""
    root = tmp_path / "root"
    shutil.copytree(reward_root / "clipscore", root / "clipscore")
    with torch.inference_mode():
        model = load_reward("clipscore", [root])
    assert not any(p.is_inference() for p in model.parameters())
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    model(images, PROMPT).sum().backward()
    assert images.grad.abs().sum() > 0


@pytest.mark.parametrize("name", ["clipscore", "pickscore"])
def test_gradient_checkpointing_acts_in_eval_mode_without_changing_results(reward_root, name):
    model = load_reward(name, [reward_root])
    assert not model.training
    calls = []
    hook = model.clip.vision_model.encoder.layers[0].self_attn.register_forward_hook(lambda *a: calls.append(1))
    x0 = torch.rand(2, 3, 64, 64)
    results = []
    try:
        for flag in (False, True):
            stack = [WeightedReward(name, 1.0, model)]
            x = x0.clone().requires_grad_(True)
            calls.clear()
            with recomputing(model) if flag else contextlib.nullcontext():
                loss, _ = RewardEnsemble(stack, PROMPT)(x)
                loss.sum().backward()
            results.append((loss.detach(), x.grad, len(calls)))
    finally:
        hook.remove()
    assert all("forward" not in b.__dict__ for b in model.clip.vision_model.encoder.layers)  # nothing left
    (loss_off, grad_off, calls_off), (loss_on, grad_on, calls_on) = results
    assert (calls_off, calls_on) == (1, 2)  # recomputed in backward
    # the recomputed pass runs the same ops on the same inputs in grad mode (the pack refuses a recomputation that
    # saves anything different): bit-identical loss and gradient
    torch.testing.assert_close(loss_on, loss_off, rtol=0, atol=0)
    torch.testing.assert_close(grad_on, grad_off, rtol=0, atol=0)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_towers_keep_the_score_close_and_float32(tmp_path, reward_root, dtype):
    root = tmp_path / "root"
    shutil.copytree(reward_root / "pickscore", root / "pickscore")
    exact = load_reward("pickscore", [root])
    images = torch.rand(2, 3, 64, 64)
    want = exact(images, PROMPT)
    half = load_reward("pickscore", [root])
    assert half is exact  # cached: the conversion below applies to the shared model, as in ComfyUI
    half.set_compute_dtype(dtype)
    half._text_cache.clear()
    got = half(images, PROMPT)
    assert got.dtype == torch.float32 and half.param_dtype() == dtype
    # logit_scale is a float32 2.6592 (off by <= 2.66 eps/2), exponentiated in float64: <= 1.33 eps relative
    assert half.logit_scale_exp == pytest.approx(float(torch.tensor(2.6592, dtype=torch.float64).exp()),
                                                 rel=1.33 * EPS32, abs=0)
    # the cosine (score / exp(logit_scale)) within HALF_TOWER_K roundings of the half dtype of the float32 one
    # (measured 0.18 for bfloat16, 0.24 for float16)
    assert ((got - want).abs() / half.logit_scale_exp).max() <= HALF_TOWER_K * eps(dtype)
