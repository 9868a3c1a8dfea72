"""Hardening of the reward library (RELIABILITY.md): CLIP folders of another size name their keys and shapes, a
lone surrogate in the prompt is cleaned for every reward, and the loader's cache notices replaced files."""

from __future__ import annotations

import logging
import os
import shutil

import pytest
import torch
from reno_pack.reward_loaders import (
    RewardEnsemble,
    RewardFilesMissing,
    RewardLoadError,
    WeightedReward,
    clear_cache,
    load_reward,
    reward_fingerprint,
)
from reno_pack.reward_loaders.base import clean_prompt
from tiny_rewards import ALL_REWARDS, write_reward_root, write_tiny_clip_folder

SURROGATE_PROMPT = "a photo of a cat \ud800 on the mat"


@pytest.fixture(scope="module")
def all_rewards_root(tmp_path_factory):
    """A reno_rewards folder with a tiny checkpoint of every reward (testing/tiny_rewards.py ALL_REWARDS)."""
    return write_reward_root(tmp_path_factory.mktemp("all_rewards"), ALL_REWARDS)


# -- item 2: a CLIP folder whose weights have other shapes than its config.json ---------------------------------------

def _clip_dir(root, reward):
    return root / reward / "clip" if reward == "aesthetic" else root / reward


@pytest.mark.parametrize("reward, weights_name", [
    ("pickscore", "model.safetensors"), ("clipscore", "model.safetensors"), ("clipscore", "pytorch_model.bin"),
    ("aesthetic", "model.safetensors"),
])
def test_a_clip_folder_of_another_size_names_the_file_the_keys_and_both_shapes(
        tmp_path, all_rewards_root, reward, weights_name, capfd):
    """Width 48 weights beside a width-32 config.json: the error names the file, the keys, and the checkpoint's and
    the config's shapes (not transformers' bare 'ignore_mismatched_sizes... look at the above report')."""
    root = tmp_path / "root"
    shutil.copytree(all_rewards_root / reward, root / reward)
    clip_dir = _clip_dir(root, reward)
    other = write_tiny_clip_folder(tmp_path / "other", seed=5, width=48)  # same vocabulary and projection
    (clip_dir / "model.safetensors").unlink()
    if weights_name == "model.safetensors":
        shutil.copy(other / "model.safetensors", clip_dir / "model.safetensors")
    else:
        from safetensors.torch import load_file

        torch.save(load_file(str(other / "model.safetensors")), clip_dir / "pytorch_model.bin")
    capfd.readouterr()
    with pytest.raises(RewardLoadError) as e:
        load_reward(reward, [root])
    msg = str(e.value)
    assert str(clip_dir / weights_name) in msg and str(clip_dir / "config.json") in msg
    assert "mismatched key(s)" in msg
    assert "vision_model.post_layernorm.weight: checkpoint (48,) vs config.json (32,)" in msg or "(+" in msg
    assert ": checkpoint (48, 48) vs config.json (32, 32)" in msg  # an attention projection, both shapes
    assert "ignore_mismatched_sizes" not in msg and "above report" not in msg
    assert "MISMATCH" not in capfd.readouterr().err  # refused before transformers prints its table


def test_a_clip_folder_whose_config_is_not_a_clip_model_is_a_clear_error(tmp_path, all_rewards_root):
    root = tmp_path / "root"
    shutil.copytree(all_rewards_root / "pickscore", root / "pickscore")
    (root / "pickscore" / "config.json").write_text("{not json")
    with pytest.raises(RewardLoadError, match="could not load the CLIP model") as e:
        load_reward("pickscore", [root])
    assert str(root / "pickscore" / "config.json") in str(e.value)


def test_a_safetensors_header_that_cannot_be_read_is_called_truncated(tmp_path, all_rewards_root):
    root = tmp_path / "root"
    shutil.copytree(all_rewards_root / "clipscore", root / "clipscore")
    weights = root / "clipscore" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # cut inside the JSON header
    with pytest.raises(RewardLoadError, match="truncated, corrupt or not a safetensors file") as e:
        load_reward("clipscore", [root])
    assert str(weights) in str(e.value)


# -- item 3: a lone surrogate in the prompt -------------------------------------------------------------------------

def test_clean_prompt_replaces_unpaired_surrogates_and_joins_pairs(caplog):
    with caplog.at_level(logging.WARNING):
        assert clean_prompt("a\ud800b", "pickscore") == "a\ufffdb"
    assert "pickscore: the prompt" in caplog.text and "1 unpaired surrogate" in caplog.text
    assert "U+D800, at position 1" in caplog.text and "'prompt' input" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        assert clean_prompt("x\ud83d\ude00y") == "x\U0001f600y"  # a pair is one character: nothing to say
        assert clean_prompt("plain \u00e9 \U0001f600") == "plain \u00e9 \U0001f600"
    assert caplog.text == ""
    with caplog.at_level(logging.WARNING):
        assert clean_prompt("\ude00\ud83d") == "\ufffd\ufffd"  # the wrong order pairs nothing
    assert "2 unpaired surrogate" in caplog.text and "U+DE00, at position 0" in caplog.text


@pytest.mark.parametrize("reward", ALL_REWARDS)
def test_a_lone_surrogate_in_the_prompt_scores_as_u_fffd_with_a_warning(all_rewards_root, reward, caplog):
    """Every reward's text path (RewardModel.text_features) cleans the prompt: the fast tokenizers would raise a bare
    TypeError ('TextEncodeInput must be Union[...]') on it."""
    model = load_reward(reward, [all_rewards_root])
    images = torch.rand(2, 3, 64, 64)
    with caplog.at_level(logging.WARNING):
        score = model(images, SURROGATE_PROMPT)
    assert torch.isfinite(score).all()
    # the cleaned prompt is that text itself: the same computation, bit-identical
    torch.testing.assert_close(score, model(images, SURROGATE_PROMPT.replace("\ud800", "\ufffd")), rtol=0, atol=0)
    assert f"{reward}: the prompt" in caplog.text and "unpaired surrogate" in caplog.text and "U+D800" in caplog.text


def test_an_ensemble_of_every_reward_scores_a_prompt_with_a_lone_surrogate(all_rewards_root):
    stack = [WeightedReward(r, 1.0, load_reward(r, [all_rewards_root])) for r in ALL_REWARDS]
    ensemble = RewardEnsemble(stack, SURROGATE_PROMPT)
    ensemble.prepare()
    loss, scores = ensemble(torch.rand(1, 3, 64, 64))
    assert torch.isfinite(loss).all() and set(scores) == set(ALL_REWARDS)


# -- item 4: the files' fingerprint and the loader's cache ----------------------------------------------------------

def test_a_file_replaced_by_one_of_the_same_size_and_time_is_reloaded(tmp_path, all_rewards_root):
    """The cache is keyed on each file's size, mtime and inode (a copy that keeps the old file's time and size
    must not serve the old model)."""
    root = tmp_path / "root"
    shutil.copytree(all_rewards_root / "pickscore", root / "pickscore")
    weights = root / "pickscore" / "model.safetensors"
    a = load_reward("pickscore", [root])
    assert load_reward("pickscore", [root]) is a
    before = weights.stat()
    other = write_tiny_clip_folder(tmp_path / "other", seed=11)
    assert (other / "model.safetensors").stat().st_size == before.st_size
    staged = root / "pickscore" / "model.safetensors.new"
    shutil.copy(other / "model.safetensors", staged)
    os.utime(staged, ns=(before.st_atime_ns, before.st_mtime_ns))
    os.replace(staged, weights)
    assert (weights.stat().st_size, weights.stat().st_mtime_ns) == (before.st_size, before.st_mtime_ns)
    b = load_reward("pickscore", [root])
    assert b is not a
    assert not torch.equal(a.clip.visual_projection.weight, b.clip.visual_projection.weight)


def test_the_fingerprint_changes_when_a_file_is_replaced_added_or_deleted(tmp_path, all_rewards_root):
    root = tmp_path / "root"
    shutil.copytree(all_rewards_root / "hpsv2", root / "hpsv2")
    folder = root / "hpsv2"
    first = reward_fingerprint("hpsv2", [root])
    assert reward_fingerprint("hpsv2", [root]) == first  # stable: nothing read, nothing changed
    (folder / ".reno-download").mkdir()
    (folder / ".reno-download" / "HPS_v2_compressed.pt.part").write_bytes(b"partial")
    assert reward_fingerprint("hpsv2", [root]) == first  # the download staging is not a reward file
    (folder / "open_clip_config.json").write_text((folder / "open_clip_config.json").read_text() + " ")
    second = reward_fingerprint("hpsv2", [root])
    assert second != first  # a sidecar the registry does not list is still part of the model
    (folder / "HPS_v2_compressed.pt").unlink()
    third = reward_fingerprint("hpsv2", [root])
    assert third not in (first, second)
    with pytest.raises(RewardFilesMissing, match="HPS_v2_compressed.pt"):
        load_reward("hpsv2", [root], download=False)


def test_the_fingerprint_is_cheap_it_reads_no_file(tmp_path, all_rewards_root, monkeypatch):
    import builtins
    import io

    root = tmp_path / "root"
    shutil.copytree(all_rewards_root / "imagereward", root / "imagereward")
    opened = []
    real_open, real_io_open = builtins.open, io.open

    def spy(file, *args, **kwargs):
        opened.append(str(file))
        return real_open(file, *args, **kwargs)

    monkeypatch.setattr(builtins, "open", spy)
    monkeypatch.setattr(io, "open", spy)
    reward_fingerprint("imagereward", [root])
    monkeypatch.setattr(builtins, "open", real_open)
    monkeypatch.setattr(io, "open", real_io_open)
    assert not [f for f in opened if str(root) in f]


@pytest.fixture(autouse=True)
def _fresh_cache():
    yield
    clear_cache()
