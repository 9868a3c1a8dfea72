"""Training an ImageReward-architecture reward on preference marks (training/preference_reward.py).

Tiny ImageReward checkpoints in the real format (testing/tiny_imagereward.py) and preference datasets written in
the store's format (``<user>/reno_preferences/<dataset>/records.jsonl`` + ``images/``): the preferred images of a
dataset are systematically of one colour, the rejected of another, chosen as the colour the base reward dislikes,
so the base ranks the pairs mostly wrong and training must turn it round.
"""

from __future__ import annotations

import importlib.util
import json
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
from image_files import bomb_jpeg
from PIL import Image
from reno_pack.reward_loaders.imagereward import load_imagereward_folder
from reno_pack.training import preference_reward as pt
from tiny_imagereward import write_tiny_imagereward

PROMPTS = ("a photo of a cat", "a red car on the street", "a house near the lake")
FAST = dict(epochs=4, learning_rate=1e-3, seed=0)  # the tiny random model needs a larger step than 1e-5


def colour_image(rgb, seed: int, size: int = 64) -> np.ndarray:
    """A flat colour with brightness jitter and pixel noise (uint8 HWC)."""
    g = np.random.default_rng(seed)
    base = np.clip(np.asarray(rgb, dtype=np.float32) * g.uniform(0.7, 1.0), 0, 1)
    pixels = np.clip(base[None, None, :] + g.normal(0, 0.08, (size, size, 3)), 0, 1)
    return (pixels * 255).astype(np.uint8)


def record(prompt: str, image: str, mark: str, compared_with=()) -> dict:
    return {"id": uuid.uuid5(uuid.NAMESPACE_URL, f"{prompt}|{image}|{mark}").hex, "time": 0.0, "prompt": prompt,
            "image": image, "mark": mark, "compared_with": list(compared_with),
            "source": {"node": "9", "filename": image, "subfolder": "", "type": "output"}}


def write_dataset(user_root: Path, dataset: str, preferred_rgb, rejected_rgb, per_prompt: int = 3,
                  prompts=PROMPTS) -> Path:
    """``per_prompt`` preferred and rejected images for each prompt (every preferred/rejected pair of a prompt)."""
    folder = user_root / "reno_preferences" / dataset
    (folder / "images").mkdir(parents=True, exist_ok=True)
    lines, seed = [], 0
    for prompt in prompts:
        group = []
        for mark, rgb in (("rejected", rejected_rgb), ("preferred", preferred_rgb)):
            for _ in range(per_prompt):
                seed += 1
                name = f"images/{seed:04d}.png"
                Image.fromarray(colour_image(rgb, seed)).save(folder / name)
                opposite = [r["id"] for r in group if r["mark"] != mark]
                group.append(record(prompt, name, mark, opposite))
        lines += group
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines), encoding="utf-8")
    return folder


WARM, COOL = (0.9, 0.35, 0.2), (0.2, 0.4, 0.9)


def pair_accuracy(model, pairs) -> float:
    """Fraction of pairs ranked right through the reward's public path (model(images, prompt))."""
    right = 0
    with torch.no_grad():
        for p in pairs:
            images = torch.cat([pt.read_image(p.preferred), pt.read_image(p.rejected)])
            s = model(images, p.prompt)
            right += int(s[0] > s[1])
    return right / len(pairs)


@pytest.fixture(scope="module")
def rewards_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("reno_rewards")
    write_tiny_imagereward(root / "imagereward", seed=3)
    return root


@pytest.fixture(scope="module")
def dataset(rewards_root, tmp_path_factory):
    """(user root, dataset name): the preferred colour is the one the base reward scores lower on average."""
    user = tmp_path_factory.mktemp("user")
    base = load_imagereward_folder(rewards_root / "imagereward")
    with torch.no_grad():
        warm = base(torch.from_numpy(colour_image(WARM, 99)).permute(2, 0, 1)[None] / 255.0, PROMPTS[0])
        cool = base(torch.from_numpy(colour_image(COOL, 99)).permute(2, 0, 1)[None] / 255.0, PROMPTS[0])
    preferred, rejected = (WARM, COOL) if float(warm) < float(cool) else (COOL, WARM)
    write_dataset(user, "taste", preferred, rejected)
    return user, "taste"


def fresh_base(rewards_root):
    return load_imagereward_folder(rewards_root / "imagereward")


def train(rewards_root, dataset, name, tmp_out=None, **kwargs):
    user, ds = dataset
    pairs, _ = pt.load_preference_pairs(user, ds)
    out_root = tmp_out or rewards_root
    config = pt.TrainingConfig(**{**FAST, **{k: v for k, v in kwargs.items() if k in pt.TrainingConfig.__annotations__}})
    extra = {k: v for k, v in kwargs.items() if k not in pt.TrainingConfig.__annotations__}
    model = fresh_base(rewards_root)
    result, folder = pt.train_and_save(model, pairs, rewards_root=out_root, name=name, base_reward="imagereward",
                                       base_folder=rewards_root / "imagereward", dataset=ds, config=config, **extra)
    return model, pairs, result, folder


def load_custom(folder: Path):
    """The saved reward as ReNO Load Reward loads it: ``custom/<name>`` through the registry (custom.py's loader)
    when the pack has custom rewards, else through ImageReward's strict loader."""
    if importlib.util.find_spec("reno_pack.reward_loaders.custom") is None:
        return load_imagereward_folder(folder, name=f"custom/{folder.name}")
    from reno_pack.reward_loaders import load_reward

    model = load_reward(f"custom/{folder.name}", extra_dirs=[folder.parent.parent], download=False)
    assert model.name == f"custom/{folder.name}" and model.offset == 2.0
    return model


# -- the training ------------------------------------------------------------------------------------------------

def test_training_raises_held_out_accuracy_and_the_saved_reward_ranks_the_preferred_images_higher(
        rewards_root, dataset, tmp_path):
    steps = []
    model, pairs, result, folder = train(rewards_root, dataset, "warmth", tmp_out=tmp_path,
                                         progress=lambda s, t, loss: steps.append((s, t, loss)))
    assert result.pairs == 27 and result.held_out_pairs == 3 and result.train_pairs == 24
    assert result.accuracy_before is not None and result.accuracy_after is not None
    assert result.accuracy_after > result.accuracy_before, result
    assert result.accuracy_after == 1.0
    assert result.train_accuracy_after > result.train_accuracy_before
    assert [s for s, _, _ in steps] == list(range(1, result.steps + 1)) and steps[-1][1] == result.steps == 4 * 6
    assert np.mean(result.losses[-6:]) < np.mean(result.losses[:6])

    # the folder: ImageReward's format, the sidecars, reward.json
    assert folder == tmp_path / "custom" / "warmth"
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        ["ImageReward.pt", "med_config.json", "vision_config.json", "tokenizer", "reward.json"])
    saved = torch.load(folder / "ImageReward.pt", weights_only=True)
    original = torch.load(rewards_root / "imagereward" / "ImageReward.pt", weights_only=True)
    assert list(saved) == list(original) and all(saved[k].shape == original[k].shape for k in saved)
    meta = json.loads((folder / "reward.json").read_text())
    assert {k: meta[k] for k in ("format", "checkpoint", "offset", "base_reward", "dataset", "pairs")} == {
        "format": "imagereward", "checkpoint": "ImageReward.pt", "offset": 2.0, "base_reward": "imagereward",
        "dataset": "taste", "pairs": 27}
    # JSON writes a float's repr, which reads back as the same float: exact
    assert meta["held_out_accuracy"] == {"before": result.accuracy_before, "after": result.accuracy_after}
    assert meta["description"]
    assert not [p for p in (tmp_path / "custom").iterdir() if p.name.startswith(".")]  # no staging left

    # loaded again from disk, through the public scoring path, it ranks the dataset's pairs better than the base
    trained = load_custom(folder)
    before, after = pair_accuracy(fresh_base(rewards_root), pairs), pair_accuracy(trained, pairs)
    assert after > before and after >= 0.9, (before, after)
    report = pt.format_report(result, dataset="taste", base_reward="imagereward", name="warmth", folder=folder)
    assert "custom/warmth" in report and str(folder) in report and "held-out pair accuracy" in report


def test_the_frozen_vit_prefix_cache_gives_the_model_s_own_rewards(rewards_root):
    model = fresh_base(rewards_root)
    images = torch.rand(3, 3, 64, 64)
    tokens = model.tokenize("a photo of a cat")
    with torch.no_grad():
        want = model.raw_reward(model.preprocess(images), tokens)
        pixels = model.preprocess(images)
        many = tokens.unsqueeze(0).expand(3, -1, -1)
        for start in (0, 1, 2):
            prefix = pt._vit_prefix(model.blip.visual_encoder, pixels, start)
            # the same ViT blocks on the same values, the first ones' output kept in between: bit-identical
            torch.testing.assert_close(pt.raw_rewards(model, prefix, many, start), want, rtol=0, atol=0)
        torch.testing.assert_close(pt.raw_rewards(model, pixels, many, None), want, rtol=0, atol=0)


def test_freeze_fraction_freezes_the_first_layers_and_leaves_their_weights_unchanged(tmp_path, dataset):
    base = write_tiny_imagereward(tmp_path / "rewards" / "imagereward", seed=1, vision_layers=10, text_layers=10)
    model = load_imagereward_folder(base)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    seen = {}

    def progress(step, total, loss):
        if step == 1:
            seen.update({n: p.requires_grad for n, p in model.named_parameters()})

    user, ds = dataset
    pairs, _ = pt.load_preference_pairs(user, ds)
    result = pt.train_preference_reward(model, pairs, pt.TrainingConfig(epochs=1, learning_rate=1e-3),
                                        progress=progress)
    assert (result.freeze.text_frozen, result.freeze.vision_frozen) == (7, 7)

    def frozen(name):
        for prefix in ("blip.vision_proj.", "blip.text_proj.", "blip.visual_encoder.patch_embed.",
                       "blip.text_encoder.embeddings."):
            if name.startswith(prefix):
                return True
        if name in ("blip.visual_encoder.cls_token", "blip.visual_encoder.pos_embed"):
            return True
        for prefix, count in (("blip.visual_encoder.blocks.", 7), ("blip.text_encoder.encoder.layer.", 7)):
            if name.startswith(prefix):
                return int(name[len(prefix):].split(".")[0]) < count
        return False

    assert seen and all(seen[n] == (not frozen(n)) for n in seen), [n for n in seen if seen[n] == frozen(n)]
    after = model.state_dict()
    for name, _ in model.named_parameters():
        if frozen(name):
            assert torch.equal(after[name], before[name]), f"{name} is frozen but changed"
    for name in ("mlp.layers.0.weight", "blip.visual_encoder.blocks.9.attn.qkv.weight",
                 "blip.text_encoder.encoder.layer.9.crossattention.self.key.weight", "blip.visual_encoder.norm.weight"):
        assert not torch.equal(after[name], before[name]), f"{name} is trainable but did not change"
    assert not any(p.requires_grad for p in model.parameters()) and not model.training


@pytest.mark.parametrize("fraction,counts", [(0.0, (0, 0)), (0.5, (1, 1)), (1.0, (2, 2))])
def test_freeze_fraction_edges(rewards_root, fraction, counts):
    model = fresh_base(rewards_root)
    summary = pt.freeze_layers(model, fraction)
    assert (summary.text_frozen, summary.vision_frozen) == counts
    assert model.blip.text_encoder.embeddings.word_embeddings.weight.requires_grad == (fraction == 0)
    assert model.mlp.layers[0].weight.requires_grad and model.blip.visual_encoder.norm.weight.requires_grad
    assert pt.frozen_count(10, 0.7) == 7 and pt.frozen_count(100, 0.29) == 29 and pt.frozen_count(24, 0.7) == 16


def test_training_is_deterministic_for_a_seed(rewards_root, dataset, tmp_path):
    with torch.random.fork_rng():  # whatever the caller's random state: the seed decides the dropout too
        torch.manual_seed(1)
        a, _, ra, _ = train(rewards_root, dataset, "a", tmp_out=tmp_path, epochs=1)
        torch.manual_seed(2)
        b, _, rb, _ = train(rewards_root, dataset, "b", tmp_out=tmp_path, epochs=1)
    assert ra.losses == rb.losses and (ra.accuracy_before, ra.accuracy_after) == (rb.accuracy_before, rb.accuracy_after)
    sa, sb = a.state_dict(), b.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    c, _, rc, _ = train(rewards_root, dataset, "c", tmp_out=tmp_path, epochs=1, seed=5)
    assert rc.losses != ra.losses
    assert torch.equal(torch.load(tmp_path / "custom" / "a" / "ImageReward.pt", weights_only=True)["mlp.layers.7.bias"],
                       sa["mlp.layers.7.bias"])


def test_split_holds_out_a_tenth_by_pair_from_the_seed():
    assert pt.split_pairs(1, 0) == ([0], [])
    train, held = pt.split_pairs(2, 0)
    assert len(held) == 1 and sorted(train + held) == [0, 1]
    train, held = pt.split_pairs(37, 3)
    assert len(held) == 4 and sorted(train + held) == list(range(37)) and not set(train) & set(held)
    assert pt.split_pairs(37, 3) == (train, held) and pt.split_pairs(37, 4) != (train, held)


def test_a_single_pair_trains_with_nothing_held_out(rewards_root, tmp_path):
    user = tmp_path / "user"
    write_dataset(user, "one", WARM, COOL, per_prompt=1, prompts=PROMPTS[:1])
    pairs, _ = pt.load_preference_pairs(user, "one")
    result, folder = pt.train_and_save(fresh_base(rewards_root), pairs, rewards_root=tmp_path, name="one",
                                       base_reward="imagereward", base_folder=rewards_root / "imagereward",
                                       dataset="one", config=pt.TrainingConfig(epochs=1))
    assert (result.pairs, result.train_pairs, result.held_out_pairs) == (1, 1, 0)
    assert result.accuracy_after is None
    assert json.loads((folder / "reward.json").read_text())["held_out_accuracy"] == {"before": None, "after": None}
    assert "nothing held out" in pt.format_report(result, dataset="one", base_reward="imagereward", name="one",
                                                  folder=folder)


# -- cancel, failures, bad input ---------------------------------------------------------------------------------

class Cancelled(Exception):
    pass


def test_cancel_during_training_leaves_no_folder(rewards_root, dataset, tmp_path):
    calls = []

    def check_cancel():
        calls.append(1)
        if len(calls) > 30:  # past the preparation and the first accuracy batches, inside the steps
            raise Cancelled

    steps = []
    with pytest.raises(Cancelled):
        train(rewards_root, dataset, "cancelled", tmp_out=tmp_path, check_cancel=check_cancel,
              progress=lambda s, t, loss: steps.append(s))
    assert 0 < len(steps) < 24
    assert not (tmp_path / "custom").exists() or not list((tmp_path / "custom").iterdir())


def test_a_failure_while_saving_leaves_no_folder(rewards_root, dataset, tmp_path, monkeypatch):
    real_save = torch.save

    def failing_save(obj, path, *a, **k):
        real_save(obj, path, *a, **k)
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pt.torch, "save", failing_save)
    with pytest.raises(OSError, match="No space"):
        train(rewards_root, dataset, "full-disk", tmp_out=tmp_path, epochs=1)
    assert list((tmp_path / "custom").iterdir()) == []


def test_a_killed_trainings_staging_is_removed_and_a_live_ones_kept(tmp_path):
    """The trainer stages as the downloads do (reward_loaders/staging.py): a lock naming the process beside its
    work folder; what a killed training left goes the next time, a live one's stays."""
    import socket
    import subprocess
    import sys

    from reno_pack.reward_loaders import staging

    staging_dir = tmp_path / "custom" / pt.STAGING
    staging_dir.parent.mkdir()
    mine = staging.claim(staging_dir)  # this process: alive
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait(timeout=60)
    gone = staging_dir / f"{child.pid}-cafe"
    gone.mkdir()
    (gone / "ImageReward.pt").write_bytes(b"x")
    lock = staging_dir / f"{child.pid}-cafe.lock"
    lock.write_text(json.dumps({"pid": child.pid, "host": socket.gethostname(),
                                "boot": staging.boot_id(), "started": 0}))
    removed = pt.clean_stale_staging(tmp_path)
    assert set(removed) == {lock, gone} and not gone.exists() and not lock.exists()
    assert all(p.exists() for p in mine)
    staging.release(staging_dir, *mine)
    assert list((tmp_path / "custom").iterdir()) == []


def test_an_existing_custom_reward_is_never_overwritten(rewards_root, dataset, tmp_path):
    train(rewards_root, dataset, "mine", tmp_out=tmp_path, epochs=1)
    stamp = (tmp_path / "custom" / "mine" / "ImageReward.pt").stat().st_mtime_ns
    steps = []
    with pytest.raises(pt.PreferenceTrainingError, match="already exists.*Choose another name, or delete that folder"):
        train(rewards_root, dataset, "mine", tmp_out=tmp_path, epochs=1, progress=lambda *a: steps.append(a))
    assert not steps  # refused before any training
    assert (tmp_path / "custom" / "mine" / "ImageReward.pt").stat().st_mtime_ns == stamp


def test_a_dataset_without_a_pair_is_refused_with_what_to_do(tmp_path):
    user = tmp_path / "user"
    folder = user / "reno_preferences" / "lonely"
    (folder / "images").mkdir(parents=True)
    Image.fromarray(colour_image(WARM, 1)).save(folder / "images" / "a.png")
    Image.fromarray(colour_image(COOL, 2)).save(folder / "images" / "b.png")
    rows = [record("a cat", "images/a.png", "preferred"), record("a dog", "images/b.png", "rejected")]
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(pt.PreferenceTrainingError, match="mark at least one preferred and one rejected image of the "
                                                         "same prompt"):
        pt.load_preference_pairs(user, "lonely")
    with pytest.raises(pt.PreferenceTrainingError, match="mark at least one preferred and one rejected image"):
        pt.train_preference_reward(None, [])
    with pytest.raises(pt.PreferenceTrainingError, match="no preference dataset 'nothing'.*datasets there: lonely"):
        pt.load_preference_pairs(user, "nothing")


def test_pairs_with_missing_images_are_left_out(tmp_path):
    user = tmp_path / "user"
    folder = write_dataset(user, "holes", WARM, COOL, per_prompt=2, prompts=PROMPTS[:1])
    (folder / "images" / "0001.png").unlink()  # a rejected image: its 2 pairs go
    pairs, skipped = pt.load_preference_pairs(user, "holes")
    assert len(pairs) == 2 and len(skipped) == 2 and "0001.png" in skipped[0]
    for p in (folder / "images").iterdir():
        p.unlink()
    with pytest.raises(pt.PreferenceTrainingError, match="image files of every one are missing"):
        pt.load_preference_pairs(user, "holes")


@pytest.mark.parametrize("bad", ["", "  ", "../up", "a/b", "a\\b", ".hidden", "con", "NUL.txt", "x" * 65, "trail.",
                                 "tab\tname", "semi;colon"])
def test_unsafe_names_are_refused(bad):
    with pytest.raises(pt.PreferenceTrainingError, match="cannot be a folder name"):
        pt.validate_name(bad)


def test_safe_names_are_kept():
    assert pt.validate_name(" my-taste_2.1 ") == "my-taste_2.1"
    assert pt.validate_name("Portraits 2025") == "Portraits 2025"


@pytest.mark.parametrize("field,value", [("epochs", 0), ("learning_rate", 0.0), ("learning_rate", float("nan")),
                                         ("freeze_fraction", 1.5), ("freeze_fraction", -0.1)])
def test_bad_settings_are_refused(field, value):
    with pytest.raises(pt.PreferenceTrainingError, match=field):
        pt.TrainingConfig(**{field: value}).checked()


def test_an_itercomp_base_is_saved_in_imagereward_s_format(rewards_root, dataset, tmp_path):
    """IterComp's checkpoints are DDP-prefixed and lack the contrastive projections, and their folder borrows
    med_config.json and the tokenizer from the imagereward folder: the trained reward still gets all of
    ImageReward.pt's keys (projections as zeros) and its own copies of the support files."""
    from reno_pack.reward_loaders import REWARDS

    if "itercomp_attribute" not in REWARDS:
        pytest.skip("the pack has no IterComp rewards")
    root = tmp_path / "rewards"
    support = write_tiny_imagereward(root / "imagereward", seed=3)
    folder = root / "itercomp_attribute"
    folder.mkdir()
    state = torch.load(support / "ImageReward.pt", weights_only=True)
    torch.save({"module." + k: v for k, v in state.items() if "_proj." not in k}, folder / "attribute.pt")
    (folder / "vision_config.json").write_bytes((support / "vision_config.json").read_bytes())
    model = REWARDS["itercomp_attribute"].build(folder, [root])
    user, ds = dataset
    pairs, _ = pt.load_preference_pairs(user, ds)
    result, saved = pt.train_and_save(model, pairs, rewards_root=root, name="composed", base_reward="itercomp_attribute",
                                      base_folder=folder, dataset=ds, config=pt.TrainingConfig(epochs=1),
                                      roots=[root])
    written = torch.load(saved / "ImageReward.pt", weights_only=True)
    assert list(written) == list(state)  # every key of ImageReward.pt, in its order
    assert not written["blip.vision_proj.weight"].any() and written["blip.text_proj.weight"].shape == (pt.PROJ_DIM, 32)
    assert (saved / "tokenizer" / "vocab.txt").read_bytes() == (support / "tokenizer" / "vocab.txt").read_bytes()
    assert (saved / "med_config.json").read_bytes() == (support / "med_config.json").read_bytes()
    assert json.loads((saved / "reward.json").read_text())["base_reward"] == "itercomp_attribute"
    load_imagereward_folder(saved)  # strict: every key of ImageReward.pt, nothing else
    assert result.steps == 6


# -- issue 20 §2: the trainer reads a record's image only inside the dataset, and no huge image ----------------

def test_a_record_naming_a_file_outside_the_dataset_is_never_read_and_the_error_is_the_same_either_way(tmp_path):
    """A records.jsonl anyone wrote (ComfyUI's /userdata route): an absolute path to an existing image outside the
    dataset is not trained on, and the error does not tell an existing outside file from a missing one."""
    outside = tmp_path / "outside.png"
    Image.fromarray(colour_image(WARM, 5)).save(outside)
    messages = []
    for target in (outside, tmp_path / "absent.png", "../../../outside.png"):
        user = tmp_path / f"user{len(messages)}"
        folder = user / "reno_preferences" / "ds"
        (folder / "images").mkdir(parents=True)
        Image.fromarray(colour_image(COOL, 6)).save(folder / "images" / "mine.png")
        rows = [record("a cat", "images/mine.png", "rejected"), record("a cat", str(target), "preferred")]
        (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        with pytest.raises(pt.PreferenceTrainingError) as e:
            pt.load_preference_pairs(user, "ds")
        messages.append(str(e.value).replace(str(user), "<user>").replace(rows[1]["id"], "<id>"))
    assert messages[0] == messages[1] == messages[2], messages
    assert "no pair to learn from" in messages[0] and "1 record(s) ignored" in messages[0]
    assert "outside.png" not in messages[0] and "could not read" not in messages[0]


def test_the_pairs_of_a_prompt_with_many_marks_are_bounded_and_drawn_from_the_seed(tmp_path, monkeypatch):
    from reno_pack.preferences import store as preferences

    monkeypatch.setattr(preferences, "PAIRS_PER_PROMPT", 5)
    user = tmp_path / "user"
    write_dataset(user, "many", WARM, COOL, per_prompt=4, prompts=PROMPTS[:1])  # 16 combinations
    a, _ = pt.load_preference_pairs(user, "many", seed=0)
    b, _ = pt.load_preference_pairs(user, "many", seed=0)
    c, _ = pt.load_preference_pairs(user, "many", seed=1)
    assert len(a) == 5 and a == b and a != c
    assert len({p.preferred for p in a}) == 4 and len({p.rejected for p in a}) == 4  # every mark used


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # PIL warns over 89.5 megapixels
def test_read_image_refuses_an_image_over_the_pixel_cap_before_decoding_it(tmp_path, monkeypatch):
    from reno_pack.preferences import store as preferences

    assert preferences.MAX_PIXELS == 8192 * 8192
    with pytest.raises(pt.PreferenceTrainingError, match=r"12000 x 12000 pixels \(144\.0 megapixels\); at most 67\.1"):
        pt.read_image(bomb_jpeg(tmp_path / "bomb.jpg", 12000, 12000))
    small = tmp_path / "small.png"
    Image.fromarray(colour_image(WARM, 1, size=32)).save(small)
    assert pt.read_image(small).shape == (1, 3, 32, 32)
    monkeypatch.setattr(preferences, "MAX_PIXELS", 32 * 32 - 1)  # the same check at a size cheap to decode
    with pytest.raises(pt.PreferenceTrainingError, match="32 x 32 pixels"):
        pt.read_image(small)
