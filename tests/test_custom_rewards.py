"""Custom reward folders (``<reno_rewards>/custom/<name>/`` with a reward.json): formats, errors, listing, cache."""

import json
import shutil

import pytest
import torch
from reno_pack.reward_loaders import RewardFilesMissing, RewardLoadError, clear_cache, load_reward, reward_fingerprint
from reno_pack.reward_loaders.clip_rewards import load_clip_folder
from reno_pack.reward_loaders.custom import list_custom_rewards, load_custom_reward, locate_custom
from reno_pack.reward_loaders.imagereward import load_imagereward_folder
from tiny_imagereward import write_tiny_imagereward
from tiny_rewards import write_tiny_clip_folder
from tolerances import REFERENCE_K, rounding_tol

PROMPT = "a photo of a cat on a mat"


@pytest.fixture
def root(tmp_path):
    clear_cache()
    yield tmp_path
    clear_cache()


def scores(model, x):
    with torch.no_grad():
        return model.score(x, model.encode_text(PROMPT))


def images(n=2):
    return torch.rand(n, 3, 224, 224, generator=torch.Generator().manual_seed(3))


def write_config(folder, **config):
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "reward.json").write_text(json.dumps(config))
    return folder


def custom_imagereward(root, name="mine", seed=7, own_support=False, **config):
    """A custom ImageReward folder: the checkpoint (+ vision_config.json); med_config.json and the tokenizer
    stay in the root's imagereward folder unless ``own_support``."""
    source = write_tiny_imagereward(root.parent / f"src-{name}-{seed}", seed=seed)
    folder = root / "custom" / name
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(source / "ImageReward.pt", folder / "tuned.pt")
    shutil.copy(source / "vision_config.json", folder / "vision_config.json")
    if own_support:
        shutil.copy(source / "med_config.json", folder / "med_config.json")
        shutil.copytree(source / "tokenizer", folder / "tokenizer")
    elif not (root / "imagereward").is_dir():
        write_tiny_imagereward(root / "imagereward", seed=0)
    write_config(folder, **{"format": "imagereward", "checkpoint": "tuned.pt", **config})
    return folder, source


def test_imagereward_format_scores_as_the_same_weights_loaded_directly(root):
    folder, source = custom_imagereward(root, description="tuned on my pairs", base_reward="imagereward",
                                        dataset="pairs.jsonl", pairs=120,
                                        held_out_accuracy={"before": 0.5, "after": None}, trainer_version=3)
    model = load_reward("custom/mine", [root], download=False)
    x = images()
    # the same weights through the same code: bit-identical
    torch.testing.assert_close(scores(model, x), scores(load_imagereward_folder(source), x), rtol=0, atol=0)
    assert model.name == "custom/mine" and model.offset == 2.0
    assert load_reward("custom/mine", [root]) is model  # cached
    base = scores(load_reward("imagereward", [root], download=False), x)
    # its own weights, the lent tokenizer: farther from the base reward than any rounding difference
    assert float((scores(model, x) - base).abs().max()) > rounding_tol(REFERENCE_K, torch.float32, at_least=1.0)


def test_imagereward_format_with_its_own_config_files_and_a_ddp_checkpoint(root):
    folder, source = custom_imagereward(root, own_support=True, offset=1.5)
    state = torch.load(folder / "tuned.pt", weights_only=True)
    torch.save({"module." + k: v for k, v in state.items()}, folder / "tuned.pt")
    model = load_custom_reward(folder, [root])
    x = images()
    # the same tensors under DDP's "module." prefix, the same code: bit-identical
    torch.testing.assert_close(scores(model, x), scores(load_imagereward_folder(source), x), rtol=0, atol=0)
    assert model.offset == 1.5


def test_clip_format_scores_as_the_clip_folder_loaded_directly(root):
    folder = write_tiny_clip_folder(root / "custom" / "myclip", seed=4)
    write_config(folder, format="clip")
    model = load_reward("custom/myclip", [root], download=False)
    direct = load_clip_folder(folder, "clipscore", 100.0)
    x = images()
    torch.testing.assert_close(scores(model, x), scores(direct, x), rtol=0, atol=0)  # the same loader: bit-identical
    assert model.name == "custom/myclip" and model.offset == 100.0


def test_listing_sorted_once_per_name_valid_folders_only(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    write_config(a / "custom" / "zeta", format="clip")
    write_config(a / "custom" / "Alpha", format="clip")
    write_config(b / "custom" / "zeta", format="clip")
    write_config(b / "custom" / "beta", format="imagereward", checkpoint="x.pt")
    (a / "custom" / "no_config").mkdir()
    write_config(a / "custom" / ".hidden", format="clip")
    assert list_custom_rewards([a, b]) == ["custom/Alpha", "custom/beta", "custom/zeta"]
    assert locate_custom("custom/zeta", [a, b]) == a / "custom" / "zeta"  # the first root wins
    assert list_custom_rewards([tmp_path / "nothing"]) == []


@pytest.mark.parametrize("name", ["custom/../x", "custom/a/b", "custom/..", "custom/", "custom/.hidden", "custom/a\\b"])
def test_names_that_leave_the_folder_are_refused(tmp_path, name):
    write_config(tmp_path / "x", format="clip")
    with pytest.raises(ValueError, match="invalid custom reward name"):
        load_reward(name, [tmp_path / "custom"])


@pytest.mark.parametrize("text,expected", [
    ("{not json", "is not valid JSON"),
    ("[1, 2]", "holds a JSON list, not an object"),
    ('{"checkpoint": "tuned.pt"}', 'no "format"'),
    ('{"format": "onnx"}', '"format" is "onnx"; it must be one of "imagereward", "clip"'),
    ('{"format": "imagereward"}', '"checkpoint" is missing'),
    ('{"format": "imagereward", "checkpoint": 3}', '"checkpoint" is 3'),
    ('{"format": "imagereward", "checkpoint": "../imagereward/ImageReward.pt"}', "is not a file name inside"),
    ('{"format": "imagereward", "checkpoint": "tuned.pt", "offset": "2"}', '"offset" is "2"; it must be a finite'),
    ('{"format": "imagereward", "checkpoint": "tuned.pt", "pairs": 1.5}', '"pairs" is 1.5; it must be a whole'),
    ('{"format": "imagereward", "checkpoint": "tuned.pt", "held_out_accuracy": {"before": "x"}}',
     '"held_out_accuracy"."before" is "x"'),
    ('{"format": "imagereward", "checkpoint": "tuned.pt", "description": 5}', '"description" is 5'),
    # issue 20 §2: nesting past the parser's recursion limit, a NUL, an absurd offset, a name too long
    ('{"format": "imagereward", "x": ' + "[" * 100_000 + "]" * 100_000 + "}", "nested too deeply to read"),
    ('{"format": "imagereward", "checkpoint": "tuned\\u0000.pt"}', "holds a NUL character"),
    ('{"format": "imagereward", "checkpoint": "tuned.pt", "offset": 1e308}', '"offset" is 1e+308; it must be a finite '
                                                                             "number of magnitude at most 1e+06"),
    ('{"format": "imagereward", "checkpoint": "tuned.pt", "offset": 1e309}', '"offset" is Infinity'),
    ('{"format": "clip", "offset": -2e6}', '"offset" is -2000000.0; it must be a finite number of magnitude'),
    ('{"format": "imagereward", "checkpoint": "' + "x" * 300 + '.pt"}', "cannot be a file name here"),
])
def test_bad_reward_json_names_the_file_and_the_fix(root, text, expected):
    folder, _ = custom_imagereward(root)
    (folder / "reward.json").write_text(text)
    with pytest.raises(RewardLoadError) as e:
        load_reward("custom/mine", [root])
    msg = str(e.value)
    assert expected in msg and str(folder / "reward.json") in msg, msg


def test_a_checkpoint_named_but_absent_lists_what_is_there(root):
    folder, _ = custom_imagereward(root, checkpoint="ImageReward.pt")
    with pytest.raises(RewardFilesMissing) as e:
        load_reward("custom/mine", [root])
    msg = str(e.value)
    assert str(folder / "ImageReward.pt") in msg and "tuned.pt" in msg and str(folder / "reward.json") in msg


def test_missing_folder_or_reward_json_says_what_to_create(root):
    with pytest.raises(RewardFilesMissing, match=r"no folder custom/ghost/ with a reward\.json"):
        load_reward("custom/ghost", [root])
    (root / "custom" / "ghost").mkdir(parents=True)
    with pytest.raises(RewardFilesMissing, match=r"has no reward\.json\. Write one there"):
        load_reward("custom/ghost", [root])


def test_imagereward_format_without_med_config_anywhere_says_where_to_put_it(tmp_path):
    folder, _ = custom_imagereward(tmp_path, own_support=False)
    shutil.rmtree(tmp_path / "imagereward")
    with pytest.raises(RewardLoadError) as e:
        load_reward("custom/mine", [tmp_path])
    msg = str(e.value)
    assert "med_config.json" in msg and str(folder) in msg and "THUDM/ImageReward" in msg


def test_fingerprint_and_cache_follow_the_folder_files(root):
    folder, _ = custom_imagereward(root)
    before = reward_fingerprint("custom/mine", [root])
    first = load_reward("custom/mine", [root])
    assert reward_fingerprint("custom/mine", [root]) == before
    config = json.loads((folder / "reward.json").read_text())
    (folder / "reward.json").write_text(json.dumps({**config, "offset": 3.0}))
    assert reward_fingerprint("custom/mine", [root]) != before
    second = load_reward("custom/mine", [root])
    assert second is not first and second.offset == 3.0
    lent = reward_fingerprint("custom/mine", [root])
    (root / "imagereward" / "med_config.json").write_text((root / "imagereward" / "med_config.json").read_text())
    assert reward_fingerprint("custom/mine", [root]) != lent  # a borrowed file counts too
