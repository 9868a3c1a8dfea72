"""HPSv3 on a tiny Qwen2-VL checkpoint in the real format, against the authors' own inference code.

The oracle (tests/hpsv3_oracle.py) runs PyPI ``hpsv3`` 1.0.0's ``HPSv3RewardInferencer`` in a separate virtual
environment with the transformers it pins (4.45.2): set ``HPSV3_ORACLE_PYTHON`` to its python (default
/work/venv_hpsv3/bin/python); without it that test is skipped, the others run. Build such an environment with
``python3 -m venv V && V/bin/pip install torch transformers==4.45.2 'tokenizers<0.21' pillow numpy safetensors pyyaml
omegaconf 'accelerate<1.5' && V/bin/pip install --no-deps hpsv3``.
"""

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from reno_pack.reward_loaders import RewardLoadError, registry
from reno_pack.reward_loaders.hpsv3 import (
    CHECKPOINT,
    PIXELS,
    HPSv3Reward,
    hpsv3_text,
    load_hpsv3_folder,
    qwen2vl_patches,
    smart_resize,
)
from reno_pack.testing.tiny_hpsv3 import write_tiny_hpsv3

PROMPT = "a photo of the cat on the mat"
ORACLE = Path(os.environ.get("HPSV3_ORACLE_PYTHON", "/work/venv_hpsv3/bin/python"))


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_hpsv3(tmp_path_factory.mktemp("reno_rewards") / "hpsv3", seed=0)


@pytest.fixture(scope="module")
def model(folder):
    return load_hpsv3_folder(folder)


def uint8_images(n=2, h=448, w=448, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (n, h, w, 3), dtype=np.uint8)


def as_bchw(a: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(a).permute(0, 3, 1, 2).float() / 255


def test_hpsv3_is_appended_last_with_its_files():
    assert registry.AVAILABLE_REWARDS[-1] == "hpsv3"
    spec = registry.REWARDS["hpsv3"]
    names = [n.names[0] for n in spec.files]
    assert names == [CHECKPOINT, "config.json", "vocab.json", "merges.txt", "tokenizer_config.json",
                     "preprocessor_config.json"]
    assert spec.files[0].source.repo == "MizzenAI/HPSv3"
    assert {n.source.repo for n in spec.files[1:]} == {"Qwen/Qwen2-VL-7B-Instruct"}


def smooth_image(h=300, w=500):
    """A smooth uint8 image (resizing it, PIL's uint8 rounding stays small)."""
    y, x = np.mgrid[0:h, 0:w]
    a = np.stack([128 + 100 * np.sin(x / 23 + c) * np.cos(y / 31) for c in range(3)], -1)
    return np.clip(a, 0, 255).astype(np.uint8)[None]


@pytest.mark.skipif(not ORACLE.is_file(), reason=f"no hpsv3 oracle environment at {ORACLE} (HPSV3_ORACLE_PYTHON)")
def test_score_equals_the_authors_inference_code(folder, model, tmp_path):
    # 448x448 = 256 merged tokens: the authors' PIL resize is the identity, so everything must agree; 300x500 is
    # resized to 364x588 (PIL's uint8 bicubic there, antialiased float bicubic here: within 1.1/255 per pixel)
    batches = [uint8_images(2, 448, 448), smooth_image(300, 500)]
    for i, images in enumerate(batches):
        np.save(tmp_path / f"images{i}.npy", images)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    run = subprocess.run([str(ORACLE), str(Path(__file__).with_name("hpsv3_oracle.py")), str(folder), PROMPT,
                          str(tmp_path / "out.json"), *(str(tmp_path / f"images{i}.npy") for i in range(2))],
                         capture_output=True, text=True, timeout=240, env=env, cwd=tmp_path)
    assert run.returncode == 0, run.stderr[-3000:]
    oracles = json.loads((tmp_path / "out.json").read_text())

    ids = model.token_ids(PROMPT)
    at = int((ids == model.image_token_id).nonzero()[0, 0])
    for images, oracle, pixel_tol, score_tol in zip(batches, oracles, (1e-6, 1.2 / 255 / 0.26), (1e-4, 1e-2)):
        pixels = model.preprocess(as_bchw(images))
        flat, grid = qwen2vl_patches(pixels)
        n = flat.shape[0] // len(images) // 4
        spliced = torch.cat([ids[:at], torch.full((n,), model.image_token_id), ids[at + 1:]]).tolist()
        assert spliced == oracle["input_ids"]  # the chat template, the instruction and the image tokens
        assert list(flat.shape) == oracle["pixel_values_shape"] and grid.tolist() == oracle["image_grid_thw"]
        torch.testing.assert_close(flat[:4, :8], torch.tensor(oracle["pixel_values_head"]), rtol=0, atol=pixel_tol)
        with torch.no_grad():
            ours = model(as_bchw(images), PROMPT)
        theirs = torch.tensor(oracle["scores"])
        rel = ((ours - theirs).abs() / theirs.abs()).max().item()
        assert rel < score_tol, (images.shape, ours.tolist(), theirs.tolist(), rel)  # measured 4.5e-7 and 1.4e-3


def test_text_is_the_chat_template_with_the_authors_instruction():
    text = hpsv3_text("a red fox")
    assert text.startswith("<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
                           "<|vision_start|><|image_pad|><|vision_end|>\nYou are tasked with evaluating")
    assert "Textual prompt - a red fox\n\n\n\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n" \
           "<|im_end|>\n<|im_start|>assistant\n" in text
    assert hpsv3_text("{curly}").count("{curly}") == 1  # the prompt is not a format string


@pytest.mark.parametrize(("hw", "want"), [((448, 448), (448, 448)), ((1024, 1024), (448, 448)),
                                         ((512, 512), (448, 448)), ((64, 64), (448, 448)),
                                         ((768, 1344), (336, 588)), ((1024, 768), (504, 364))])
def test_smart_resize_sizes(hw, want):
    assert smart_resize(*hw) == want


@settings(max_examples=40, deadline=None)
@given(st.integers(28, 4000), st.integers(28, 4000))
def test_smart_resize_gives_multiples_of_28_near_the_fixed_area(h, w):
    if max(h, w) / min(h, w) > 200:
        return
    nh, nw = smart_resize(h, w)
    assert nh % 28 == 0 and nw % 28 == 0 and min(nh, nw) >= 28
    if max(h, w) / min(h, w) <= 4:  # about the authors' fixed budget of 256 merged tokens
        assert 0.75 * PIXELS <= nh * nw <= 1.3 * PIXELS


def test_patching_is_the_processors_layout():
    """Row r of pixel_values is patch (merge window, position in it) with channels, then time, then 14x14 pixels."""
    x = torch.arange(2 * 3 * 56 * 84, dtype=torch.float32).reshape(2, 3, 56, 84)
    flat, grid = qwen2vl_patches(x)
    assert grid.tolist() == [[1, 4, 6]] * 2 and flat.shape == (2 * 24, 3 * 2 * 14 * 14)
    row = flat[1 * 24 + (1 * 3 + 2) * 4 + 1 * 2 + 0].reshape(3, 2, 14, 14)  # image 1, window (1, 2), cell (1, 0)
    top, left = (1 * 2 + 1) * 14, (2 * 2 + 0) * 14
    for t in range(2):
        torch.testing.assert_close(row[:, t], x[1, :, top:top + 14, left:left + 14], rtol=0, atol=0)


def test_gradients_reach_the_image_and_match_finite_differences(folder, monkeypatch):
    """In float64. transformers' Qwen2-VL computes RMSNorm and the vision tower's q/k rotation in float32 even in a
    float64 model, which puts float32 noise into the forward pass (finite differences then disagree by ~0.5%);
    for this check they are replaced by the same formulas without the casts."""
    from transformers.models.qwen2_vl import modeling_qwen2_vl as qm

    def rms_norm(self, h):
        return self.weight * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.variance_epsilon))

    def rotate(q, k, cos, sin):
        cos, sin = cos.unsqueeze(-2).to(q.dtype), sin.unsqueeze(-2).to(q.dtype)
        return q * cos + qm.rotate_half(q) * sin, k * cos + qm.rotate_half(k) * sin

    monkeypatch.setattr(qm.Qwen2VLRMSNorm, "forward", rms_norm)
    monkeypatch.setattr(qm, "apply_rotary_pos_emb_vision", rotate)
    model = load_hpsv3_folder(folder).double()
    x = as_bchw(uint8_images(1, 448, 448, seed=3)).double().requires_grad_(True)
    score = model(x, PROMPT)
    (grad,) = torch.autograd.grad(score.sum(), x)
    assert grad.abs().sum() > 0 and torch.isfinite(grad).all()
    direction = torch.randn(x.shape, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = 1e-5
    with torch.no_grad():
        numeric = (model(x + eps * direction, PROMPT) - model(x - eps * direction, PROMPT)) / (2 * eps)
    # measured: 1e-8 relative at eps 1e-5 (0.45% at eps 1e-3: the ReLU head's kinks)
    torch.testing.assert_close(numeric.sum(), (grad * direction).sum(), rtol=1e-6, atol=1e-9)


def test_batch_scores_equal_single_scores_and_any_size_works(model):
    x = as_bchw(uint8_images(3, 300, 500, seed=5))
    with torch.no_grad():
        batch = model(x, PROMPT)
        single = torch.cat([model(x[i:i + 1], PROMPT) for i in range(3)])
    torch.testing.assert_close(batch, single, rtol=1e-5, atol=1e-6)
    assert model.preprocess(x).shape[-2:] == smart_resize(300, 500)


def test_half_precision_towers_keep_the_head_in_float32(folder):
    model = load_hpsv3_folder(folder)
    x = as_bchw(uint8_images(2, 448, 448, seed=7))
    with torch.no_grad():
        full = model(x, PROMPT)
        model.set_compute_dtype(torch.bfloat16)
        assert model.rm_head[0].weight.dtype == torch.float32 and model.param_dtype() == torch.bfloat16
        half = model(x, PROMPT)
    assert half.dtype == torch.float32
    torch.testing.assert_close(half, full, rtol=0.1, atol=0.05)


def test_loads_through_the_registry_and_refuses_a_foreign_checkpoint(folder, tmp_path):
    registry.clear_cache()
    model = registry.load_reward("hpsv3", [folder.parent], download=False)
    assert isinstance(model, HPSv3Reward) and model.name == "hpsv3" and model.offset == registry.REWARDS["hpsv3"].offset
    registry.clear_cache()

    from safetensors.torch import load_file, save_file

    bad = tmp_path / "hpsv3"
    bad.mkdir()
    for f in folder.iterdir():
        if f.name != CHECKPOINT:
            (bad / f.name).write_bytes(f.read_bytes())
    state = load_file(str(folder / CHECKPOINT))
    state["visual.merger.mlp.2.weight"] = torch.zeros(8, 8)
    del state["model.layers.1.mlp.up_proj.weight"]
    save_file(state, str(bad / CHECKPOINT))
    with pytest.raises(RewardLoadError, match="1 missing key.*language_model.layers.1.mlp.up_proj.weight.*"
                                              "visual.merger.mlp.2.weight: checkpoint \\(8, 8\\)"):
        load_hpsv3_folder(bad)
    save_file({k: v for k, v in state.items() if not k.startswith("rm_head.")}, str(bad / CHECKPOINT))
    with pytest.raises(RewardLoadError, match="no reward head"):
        load_hpsv3_folder(bad)
    (bad / CHECKPOINT).write_bytes(b"not a safetensors file")
    with pytest.raises(RewardLoadError, match="could not read"):
        load_hpsv3_folder(bad)


def test_recomputed_blocks_give_the_same_score_and_gradient(folder):
    """The memory planner's recomputation finds the vision blocks and decoder layers and changes nothing."""
    from reno_pack.optimizer.memory import find_blocks, recomputing

    model = load_hpsv3_folder(folder)
    blocks = find_blocks(model)
    assert len(blocks) == len(model.visual.blocks) + len(model.language_model.layers)
    x = as_bchw(uint8_images(1, 448, 448, seed=9)).requires_grad_(True)
    score = model(x, PROMPT)
    (grad,) = torch.autograd.grad(score.sum(), x)
    with recomputing(model):
        score2 = model(x, PROMPT)
        (grad2,) = torch.autograd.grad(score2.sum(), x)
    torch.testing.assert_close(score2, score, rtol=0, atol=0)
    torch.testing.assert_close(grad2, grad, rtol=1e-6, atol=1e-9)


def test_a_tokenizer_of_another_size_is_refused(folder, tmp_path):
    """<|Reward|> must land on the checkpoint's last embedding row, as the authors' resize put it."""
    other = tmp_path / "hpsv3"
    other.mkdir()
    for f in folder.iterdir():
        (other / f.name).write_bytes(f.read_bytes())
    vocab = json.loads((other / "vocab.json").read_text(encoding="utf-8"))
    config = json.loads((other / "tokenizer_config.json").read_text(encoding="utf-8"))
    shift = {str(int(i) + 1): v for i, v in config["added_tokens_decoder"].items()}
    vocab["Ġcat"] = len(vocab)  # one more BPE entry moves every special token up by one
    (other / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (other / "tokenizer_config.json").write_text(json.dumps({**config, "added_tokens_decoder": shift}), encoding="utf-8")
    with pytest.raises(RewardLoadError, match="does not belong to this checkpoint"):
        load_hpsv3_folder(other)


def test_the_embedding_table_is_a_text_module_not_needed_per_iteration(folder):
    """Text features carry the prompt's token embeddings, so the 1 GB table can leave the GPU after them."""
    model = load_hpsv3_folder(folder)
    x = as_bchw(uint8_images(1, 448, 448, seed=11))
    with torch.no_grad():
        before = model(x, PROMPT)
        model.offload_text_towers("meta")  # gone for good: any use of it would fail
        after = model(x, PROMPT)
    assert model.language_model.embed_tokens.weight.is_meta
    torch.testing.assert_close(after, before, rtol=0, atol=0)
