"""LAION aesthetic predictor on tiny checkpoints in the real format, against an independent computation."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reno_pack.reward_loaders import RewardLoadError, clip_preprocess
from reno_pack.reward_loaders.aesthetic import AESTHETIC_FILE, load_aesthetic_folder
from reward_checks import check_comfy_images_score_per_image, check_gradients_reach_the_image
from tiny_open_clip import tiny_aesthetic_state_dict, write_tiny_aesthetic, write_tiny_hps
from tolerances import REFERENCE_K, assert_rounding_close

PROMPT = "a photo of the cat on the mat"


@pytest.fixture(scope="module")
def aesthetic_dir(tmp_path_factory):
    return write_tiny_aesthetic(tmp_path_factory.mktemp("aesthetic"), seed=0)


@pytest.fixture(scope="module")
def aesthetic(aesthetic_dir):
    return load_aesthetic_folder(aesthetic_dir)


def reference_score(folder: Path, images_bchw: torch.Tensor) -> torch.Tensor:
    """transformers' public CLIPModel API + the predictor written out by hand (Linear layers, no activation)."""
    from transformers import CLIPModel

    clip = CLIPModel.from_pretrained(str(folder / "clip"), local_files_only=True).float().eval()
    head = torch.load(folder / AESTHETIC_FILE, map_location="cpu", weights_only=True)
    with torch.no_grad():
        emb = clip.get_image_features(pixel_values=clip_preprocess(images_bchw))
        emb = emb if torch.is_tensor(emb) else emb.pooler_output
        x = emb / emb.norm(dim=-1, keepdim=True)
        for i in (0, 2, 4, 6, 7):
            x = x @ head[f"layers.{i}.weight"].float().T + head[f"layers.{i}.bias"].float()
        return x[:, 0]


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def test_score_is_the_predictor_on_the_normalized_clip_embedding(aesthetic_dir, aesthetic):
    images = torch.rand(3, 3, 96, 160)
    ours = aesthetic(images, PROMPT)
    # float32, against transformers' CLIPModel + the head written out (measured 0)
    assert_rounding_close(ours, reference_score(aesthetic_dir, images), REFERENCE_K, at_least=1.0)
    assert ours.shape == (3,) and ours.dtype == torch.float32 and ours.std() > 1e-3
    assert aesthetic.name == "aesthetic" and aesthetic.offset == 10.0 and aesthetic.input_size == 224


def test_prompt_is_ignored(aesthetic):
    images = torch.rand(2, 3, 64, 64)
    # the prompt takes no part in the computation: bit-identical
    torch.testing.assert_close(aesthetic(images, PROMPT), aesthetic(images, "something else entirely"), rtol=0, atol=0)
    assert aesthetic.encode_text(PROMPT).numel() == 0


def test_name_and_offset_are_passed_through(aesthetic_dir):
    model = load_aesthetic_folder(aesthetic_dir, name="aesthetic#2", offset=7.5)
    assert (model.name, model.offset) == ("aesthetic#2", 7.5)


def test_weights_are_frozen_float32_in_eval_mode_and_vision_only(aesthetic):
    assert not aesthetic.training and not aesthetic.vision.training and not aesthetic.mlp.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in aesthetic.parameters())
    assert not any(k.startswith("text_model") for k in aesthetic.state_dict())  # the text tower is not loaded


def test_gradients_reach_the_image(aesthetic):
    check_gradients_reach_the_image(aesthetic, PROMPT)


@settings(max_examples=5, deadline=None)
@given(h=st.integers(16, 300), w=st.integers(16, 300), batch=st.integers(1, 3))
def test_comfy_images_of_any_size_score_per_image(aesthetic, h, w, batch):
    check_comfy_images_score_per_image(aesthetic, PROMPT, h, w, batch)  # float32 batch vs single (measured <= 1.3)


# -- accepted variants --------------------------------------------------------------------------------------

def test_half_precision_predictor_loads_as_float32(tmp_path):
    folder = write_tiny_aesthetic(tmp_path / "a", seed=1, dtype=torch.float16)
    model = load_aesthetic_folder(folder)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    images = torch.rand(2, 3, 64, 64)
    # float32 weights (from float16) against the reference implementation (measured 0)
    assert_rounding_close(model(images, PROMPT), reference_score(folder, images), REFERENCE_K, at_least=1.0)


def test_clip_weights_as_pytorch_model_bin(tmp_path, aesthetic_dir, aesthetic):
    from safetensors.torch import load_file

    folder = copy_dir(aesthetic_dir, tmp_path / "a")
    clip_dir = folder / "clip"
    sd = load_file(str(clip_dir / "model.safetensors"))
    sd["vision_model.embeddings.position_ids"] = torch.arange(50)[None]  # saved by old transformers versions
    torch.save(sd, clip_dir / "pytorch_model.bin")
    (clip_dir / "model.safetensors").unlink()
    images = torch.rand(2, 3, 64, 64)
    # the same weights from another file format, the same code: bit-identical
    torch.testing.assert_close(load_aesthetic_folder(folder)(images, PROMPT), aesthetic(images, PROMPT), rtol=0, atol=0)


# -- strict loading and clear errors ----------------------------------------------------------------------------

def rewrite_head(folder: Path, mutate) -> Path:
    path = folder / AESTHETIC_FILE
    torch.save(mutate(torch.load(path, weights_only=True)), path)
    return path


def _drop(key):
    return lambda sd: {k: v for k, v in sd.items() if k != key}


def _add(key):
    return lambda sd: {**sd, key: torch.zeros(2)}


def _replace(key, shape):
    return lambda sd: {**sd, key: torch.zeros(*shape)}


@pytest.mark.parametrize(
    "mutate, words",
    [
        (_drop("layers.4.bias"), ["1 missing key", "layers.4.bias"]),
        (_add("layers.8.weight"), ["1 unexpected key", "layers.8.weight"]),
        (_replace("layers.4.weight", (16, 7)), ["inconsistent shapes", "layers.4.weight (16, 7)"]),
        (_replace("layers.7.weight", (3, 8)), ["inconsistent shapes", "layers.7.weight"]),
        (lambda sd: {"module." + k: v for k, v in sd.items()} | {"extra": torch.zeros(1)}, ["unexpected", "module.layers.0.weight"]),
    ],
)
def test_strict_predictor_loading_names_the_file_and_keys(tmp_path, aesthetic_dir, mutate, words):
    folder = copy_dir(aesthetic_dir, tmp_path / "a")
    path = rewrite_head(folder, mutate)
    with pytest.raises(RewardLoadError) as e:
        load_aesthetic_folder(folder)
    msg = str(e.value)
    assert str(path) in msg
    for w in words:
        assert w in msg


def test_another_rewards_checkpoint_is_refused(tmp_path, aesthetic_dir):
    folder = copy_dir(aesthetic_dir, tmp_path / "a")
    hps = write_tiny_hps(tmp_path / "hps", tokenizer="bundled")
    shutil.copy(hps / "HPS_v2.1_compressed.pt", folder / AESTHETIC_FILE)
    with pytest.raises(RewardLoadError, match="not the LAION aesthetic predictor") as e:
        load_aesthetic_folder(folder)
    assert "missing" in str(e.value) and "visual.conv1.weight" in str(e.value)
    image_reward_head = {f"mlp.layers.{i}.{p}": torch.zeros(2, 2) for i in (0, 2, 4, 6, 7) for p in ("weight", "bias")}
    torch.save(image_reward_head, folder / AESTHETIC_FILE)
    with pytest.raises(RewardLoadError, match="another model") as e:
        load_aesthetic_folder(folder)
    assert "mlp.layers.0.weight" in str(e.value)


class NotATensor:
    pass


@pytest.mark.parametrize("content, match", [
    ("custom_class", "needs code to be unpickled"),
    ("truncated", "truncated, corrupt or not a PyTorch checkpoint"),
    ("list", "does not hold a state dict"),
])
def test_damaged_predictor_files(tmp_path, aesthetic_dir, content, match):
    folder = copy_dir(aesthetic_dir, tmp_path / "a")
    path = folder / AESTHETIC_FILE
    if content == "custom_class":
        torch.save({"layers.0.weight": NotATensor()}, path)
    elif content == "truncated":
        path.write_bytes(path.read_bytes()[:300])
    else:
        torch.save([1, 2, 3], path)
    with pytest.raises(RewardLoadError, match=match) as e:
        load_aesthetic_folder(folder)
    assert str(path) in str(e.value)


def test_projection_size_mismatch_is_a_clear_error(tmp_path, aesthetic_dir):
    folder = copy_dir(aesthetic_dir, tmp_path / "a")
    torch.save(tiny_aesthetic_state_dict(24), folder / AESTHETIC_FILE)  # the CLIP projects to 16
    with pytest.raises(RewardLoadError, match="takes 24-d CLIP embeddings but the CLIP model .* projects to 16-d"):
        load_aesthetic_folder(folder)


def test_clip_folder_problems_are_clear_errors(tmp_path, aesthetic_dir):
    from tiny_rewards import write_tiny_clip_folder

    folder = copy_dir(aesthetic_dir, tmp_path / "a")
    clip_dir = folder / "clip"
    original = (clip_dir / "model.safetensors").read_bytes()

    other = write_tiny_clip_folder(tmp_path / "other", seed=3, width=48)  # same projection, another width
    shutil.copy(other / "model.safetensors", clip_dir / "model.safetensors")
    with pytest.raises(RewardLoadError, match="does not (fit|match)") as e:
        load_aesthetic_folder(folder)
    assert str(clip_dir / "model.safetensors") in str(e.value)

    (clip_dir / "model.safetensors").write_bytes(original[: len(original) // 2])
    with pytest.raises(RewardLoadError, match="truncated or corrupt"):
        load_aesthetic_folder(folder)

    (clip_dir / "model.safetensors").write_bytes(original)
    cfg = json.loads((clip_dir / "config.json").read_text())
    (clip_dir / "config.json").write_text(json.dumps({**cfg, "model_type": "siglip"}))
    with pytest.raises(RewardLoadError, match="not a CLIP model"):
        load_aesthetic_folder(folder)

    shutil.rmtree(clip_dir)
    with pytest.raises(RewardLoadError, match="config.json is missing") as e:
        load_aesthetic_folder(folder)
    assert "openai/clip-vit-large-patch14" in str(e.value)


def test_clip_weights_missing_a_vision_key_are_refused(tmp_path, aesthetic_dir):
    from safetensors.torch import load_file, save_file

    folder = copy_dir(aesthetic_dir, tmp_path / "a")
    weights = folder / "clip" / "model.safetensors"
    sd = load_file(str(weights))
    del sd["vision_model.post_layernorm.bias"]
    sd["vision_model.extra.weight"] = torch.zeros(2)
    save_file(sd, str(weights))
    with pytest.raises(RewardLoadError) as e:
        load_aesthetic_folder(folder)
    msg = str(e.value)
    assert "vision_model.post_layernorm.bias" in msg and "vision_model.extra.weight" in msg and str(weights) in msg


def test_missing_predictor_file_names_the_source(tmp_path):
    with pytest.raises(RewardLoadError, match=AESTHETIC_FILE.replace("+", r"\+")) as e:
        load_aesthetic_folder(tmp_path)
    assert "improved-aesthetic-predictor" in str(e.value)
