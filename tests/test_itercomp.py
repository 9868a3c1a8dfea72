"""IterComp's three reward models (ImageReward clones saved from a DDP-wrapped model) on tiny checkpoints.

The tiny checkpoints are written the way IterComp's training script saves them: ``torch.save`` of the
state dict of a ``DistributedDataParallel``-wrapped ImageReward, so every key starts with ``module.``
and the keys the score never uses (``blip.vision_proj``, ``blip.text_proj``) are in the file too.
"""

import json
import logging
import shutil

import pytest
import torch
from reno_pack.reward_loaders import REWARDS, RewardFilesMissing, RewardLoadError, clear_cache, load_reward, registry
from reno_pack.reward_loaders.imagereward import load_imagereward_folder
from tiny_imagereward import write_tiny_imagereward
from tolerances import REFERENCE_K, rounding_tol

PROMPT = "a red cat on the left of a blue dog"
ITERCOMP = ("itercomp_attribute", "itercomp_spatial", "itercomp_nonspatial")
BUILT_IN = ("imagereward", "hpsv2.1", "hpsv2", "pickscore", "clipscore", "aesthetic")


def write_ddp_checkpoint(plain_folder, target, extra=None, drop=()):
    """``plain_folder``'s ImageReward.pt as IterComp saves it: every key prefixed with ``module.``."""
    state = torch.load(plain_folder / "ImageReward.pt", weights_only=True)
    ddp = {"module." + k: v for k, v in state.items() if k not in drop}
    ddp.update(extra or {})
    target.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ddp, target)
    shutil.copy(plain_folder / "vision_config.json", target.parent / "vision_config.json")  # the tiny ViT's heads
    return target


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """The same weights as the IterComp file, in the pack's ImageReward layout (no prefix): the reference."""
    return write_tiny_imagereward(tmp_path_factory.mktemp("plain") / "imagereward", seed=5)


@pytest.fixture
def root(tmp_path):
    """A reno_rewards root whose imagereward folder (other weights) lends med_config.json and the tokenizer."""
    write_tiny_imagereward(tmp_path / "imagereward", seed=0)
    clear_cache()
    yield tmp_path
    clear_cache()


def images(n=3, seed=1):
    return torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(seed))


def scores(model, x):
    with torch.no_grad():
        return model.score(x, model.encode_text(PROMPT))


def test_itercomp_rewards_are_appended_after_the_built_in_ones():
    assert tuple(registry.AVAILABLE_REWARDS)[: len(BUILT_IN + ITERCOMP)] == BUILT_IN + ITERCOMP  # later ones appended
    for name in ITERCOMP:
        assert REWARDS[name].offset == 2.0 and REWARDS[name].paper_weight == 1.0


@pytest.mark.parametrize("name,filename", [
    ("itercomp_attribute", "attribute.pt"),
    ("itercomp_spatial", "spatial.pt"),
    ("itercomp_nonspatial", "best_lr=1e-05.pt"),  # the name IterComp's training script gives: the folder's only .pt
])
def test_scores_equal_imagereward_on_the_same_weights(root, plain, name, filename):
    write_ddp_checkpoint(plain, root / name / filename)
    model = load_reward(name, [root], download=False)
    reference = load_imagereward_folder(plain)
    x = images()
    got, want = scores(model, x), scores(reference, x)
    torch.testing.assert_close(got, want, rtol=0, atol=0)  # the same weights through the same code: bit-identical
    assert model.name == name and model.offset == 2.0
    other = scores(load_reward("imagereward", [root], download=False), x)  # the folder it borrows the tokenizer from
    # other weights: farther apart than any rounding difference
    assert float((got - other).abs().max()) > rounding_tol(REFERENCE_K, torch.float32, at_least=1.0), \
        "the IterComp weights were not used"
    # differentiable like every reward
    x = x.clone().requires_grad_(True)
    model.score(x, model.encode_text(PROMPT)).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_unused_keys_are_named_in_one_log_line(root, plain, caplog):
    path = write_ddp_checkpoint(plain, root / "itercomp_spatial" / "spatial.pt",
                                extra={"module.blip.itm_head.weight": torch.zeros(2, 32)})
    with caplog.at_level(logging.INFO):
        load_reward("itercomp_spatial", [root], download=False)
    lines = [r.getMessage() for r in caplog.records if "not used by the score" in r.getMessage()]
    assert len(lines) == 1, lines
    for key in ("blip.vision_proj.weight", "blip.vision_proj.bias", "blip.text_proj.weight", "blip.text_proj.bias",
                "blip.itm_head.weight"):
        assert key in lines[0]
    assert str(path) in lines[0] and "5 key(s)" in lines[0]


def test_a_missing_key_is_an_error_naming_the_file(root, plain):
    path = write_ddp_checkpoint(plain, root / "itercomp_attribute" / "attribute.pt",
                                drop=("blip.text_encoder.encoder.layer.0.crossattention.self.key.bias",))
    with pytest.raises(RewardLoadError) as e:
        load_reward("itercomp_attribute", [root], download=False)
    msg = str(e.value)
    assert str(path) in msg and "1 missing key(s): blip.text_encoder.encoder.layer.0.crossattention.self.key.bias" in msg


def test_an_unknown_extra_key_is_an_error_naming_the_file(root, plain):
    path = write_ddp_checkpoint(plain, root / "itercomp_attribute" / "attribute.pt",
                                extra={"module.mlp.layers.9.weight": torch.zeros(1, 1)})
    with pytest.raises(RewardLoadError) as e:
        load_reward("itercomp_attribute", [root], download=False)
    msg = str(e.value)
    assert str(path) in msg and "1 unexpected key(s): mlp.layers.9.weight" in msg


def test_a_missing_checkpoint_says_where_to_get_it_and_where_to_put_it_and_downloads_nothing(root, monkeypatch):
    def no_fetch(*args, **kwargs):
        raise AssertionError("nothing may be downloaded while the IterComp checkpoint is missing")

    monkeypatch.setattr(registry, "fetch", no_fetch)
    (root / "itercomp_nonspatial").mkdir()
    with pytest.raises(RewardFilesMissing) as e:
        load_reward("itercomp_nonspatial", [root], download=True)
    msg = str(e.value)
    assert "https://huggingface.co/comin/IterComp" in msg and "reward_models" in msg
    assert str(root / "itercomp_nonspatial") in msg and "nonspatial.pt" in msg
    assert "not downloaded automatically" in msg
    assert "med_config.json" not in msg  # borrowed from the imagereward folder


def test_med_config_and_tokenizer_missing_everywhere_are_listed(tmp_path, plain):
    write_ddp_checkpoint(plain, tmp_path / "itercomp_spatial" / "spatial.pt")
    with pytest.raises(RewardFilesMissing) as e:
        load_reward("itercomp_spatial", [tmp_path], download=False)
    msg = str(e.value)
    assert "med_config.json" in msg and "tokenizer/vocab.txt" in msg and "THUDM/ImageReward" in msg
    assert "  - spatial.pt" not in msg  # the checkpoint is there


def test_a_checkpoint_under_another_name_in_a_second_root_is_where_the_rest_goes(tmp_path, plain, monkeypatch):
    """With two roots, the folder holding the (differently named) checkpoint gets the downloaded med_config.json."""
    first, second = tmp_path / "first", tmp_path / "second"
    (first / "itercomp_spatial").mkdir(parents=True)
    write_ddp_checkpoint(plain, second / "itercomp_spatial" / "best_lr=1e-05.pt")
    fetched = []

    def fake_fetch(source, folder, name, progress=None):
        fetched.append((folder, name))
        raise registry.DownloadError("offline", "offline")

    monkeypatch.setattr(registry, "fetch", fake_fetch)
    with pytest.raises(registry.DownloadError):
        load_reward("itercomp_spatial", [first, second], download=True)
    assert fetched == [(second / "itercomp_spatial", "med_config.json")]


def test_the_imagereward_folders_vision_config_is_borrowed_with_the_rest(tmp_path):
    """Issue 20 §4: an IterComp folder with no vision_config.json takes the ViT head count from the imagereward
    folder, as it takes med_config.json and the tokenizer; the same weights then score the same."""
    ir = write_tiny_imagereward(tmp_path / "imagereward", seed=3, vision_width=64, vision_heads=4)
    assert json.loads((ir / "vision_config.json").read_text())["heads"] == 4  # not the width // 64 = 1 guessed
    state = torch.load(ir / "ImageReward.pt", weights_only=True)
    (tmp_path / "itercomp_spatial").mkdir()
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "itercomp_spatial" / "spatial.pt")
    assert not (tmp_path / "itercomp_spatial" / "vision_config.json").exists()
    clear_cache()
    try:
        itercomp = load_reward("itercomp_spatial", [tmp_path], download=False)
        imagereward = load_reward("imagereward", [tmp_path], download=False)
        assert itercomp.vision_config.heads == imagereward.vision_config.heads == 4
        x = images()
        # same weights, same architecture, same code path: bit-identical scores
        torch.testing.assert_close(scores(itercomp, x), scores(imagereward, x), rtol=0, atol=0)
    finally:
        clear_cache()


def test_a_borrowed_vision_config_of_another_vit_is_passed_over_and_an_own_one_wins(tmp_path):
    write_tiny_imagereward(tmp_path / "imagereward", seed=3, vision_width=64, vision_heads=4)
    other = write_tiny_imagereward(tmp_path / "other", seed=4, vision_width=128, vision_heads=8)
    state = torch.load(other / "ImageReward.pt", weights_only=True)
    folder = tmp_path / "itercomp_attribute"
    folder.mkdir()
    torch.save({"module." + k: v for k, v in state.items()}, folder / "attribute.pt")
    clear_cache()
    try:
        # imagereward's sidecar says width 64; this ViT is 128 wide: not its description, so not an error either
        assert load_reward("itercomp_attribute", [tmp_path], download=False).vision_config.heads == 128 // 64
        shutil.copy(other / "vision_config.json", folder / "vision_config.json")
        assert load_reward("itercomp_attribute", [tmp_path], download=False).vision_config.heads == 8
    finally:
        clear_cache()
