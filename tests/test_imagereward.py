"""ImageReward on tiny checkpoints written in the real format: definition, tokenizer, gradients, layouts, errors."""

import contextlib
import json
import math
import shutil

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from reno_pack.optimizer.memory import recomputing
from reno_pack.reward_loaders import RewardLoadError, clip_preprocess, comfy_to_bchw
from reno_pack.reward_loaders import imagereward as ir
from reno_pack.reward_loaders.imagereward import ImageRewardModel, load_imagereward_folder
from tiny_imagereward import real_layout, tiny_vocab, write_tiny_imagereward
from tolerances import BATCH_K, HALF_TOWER_K, REFERENCE_K, assert_rounding_close

PROMPT = "a photo of the cat on the mat"
MEAN, STD = 0.16717362830052426, 1.0333394966054072  # ImageReward.py: self.mean, self.std


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_tiny_imagereward(tmp_path_factory.mktemp("imagereward") / "imagereward", seed=0)


@pytest.fixture(scope="module")
def model(folder):
    return load_imagereward_folder(folder)


def copy_folder(folder, tmp_path):
    target = tmp_path / "imagereward"
    shutil.copytree(folder, target)
    return target


# -- an independent computation of the score, from the state dict ------------------------------------

def blip_tokenizer(tokenizer_dir):
    """The tokenizer set up exactly as BLIP's init_tokenizer, with the slow (pure Python) BERT tokenizer."""
    try:
        from transformers.models.bert import BertTokenizerLegacy as Slow  # transformers 5
    except ImportError:  # transformers 4: BertTokenizer is the slow one
        from transformers import BertTokenizer as Slow
    tok = Slow.from_pretrained(str(tokenizer_dir), local_files_only=True)
    tok.add_special_tokens({"bos_token": "[DEC]"})
    tok.add_special_tokens({"additional_special_tokens": ["[ENC]"]})
    return tok


def reference_scores(folder, images_bchw, prompt, vision_heads=None):
    """The ImageReward score recomputed functionally from ImageReward.pt and the config files.

    Attention is written out with einsum and softmax; the padding mask of the text is not used at all:
    BERT runs on the unpadded tokens only (equivalent for a bidirectional encoder with absolute positions).
    """
    sd = torch.load(folder / "ImageReward.pt", weights_only=True)
    sd = {k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}
    med = json.loads((folder / "med_config.json").read_text())
    if vision_heads is None:
        vision_heads = json.loads((folder / "vision_config.json").read_text())["heads"]

    def lin(x, p):
        return x @ sd[p + ".weight"].T + sd[p + ".bias"]

    def ln(x, p, eps):
        mu = x.mean(-1, keepdim=True)
        var = ((x - mu) ** 2).mean(-1, keepdim=True)
        return (x - mu) / torch.sqrt(var + eps) * sd[p + ".weight"] + sd[p + ".bias"]

    def attend(q, k, v, heads):
        b, n, c = q.shape
        d = c // heads
        q, k, v = (t.reshape(b, -1, heads, d) for t in (q, k, v))
        weights = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(d), dim=-1)
        return torch.einsum("bhqk,bkhd->bqhd", weights, v).reshape(b, n, c)

    def gelu(x):
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))

    # BLIP ViT
    v = "blip.visual_encoder."
    pixels = clip_preprocess(images_bchw)
    w = sd[v + "patch_embed.proj.weight"]
    patch = w.shape[-1]
    x = F.conv2d(pixels, w, sd[v + "patch_embed.proj.bias"], stride=patch).flatten(2).transpose(1, 2)
    x = torch.cat([sd[v + "cls_token"].expand(x.shape[0], 1, -1), x], 1) + sd[v + "pos_embed"]
    width = x.shape[-1]
    n_blocks = len({k.split(".")[3] for k in sd if k.startswith(v + "blocks.")})
    for i in range(n_blocks):
        b = f"{v}blocks.{i}."
        q, k, val = lin(ln(x, b + "norm1", 1e-6), b + "attn.qkv").split(width, dim=-1)
        x = x + lin(attend(q, k, val, vision_heads), b + "attn.proj")
        x = x + lin(gelu(lin(ln(x, b + "norm2", 1e-6), b + "mlp.fc1")), b + "mlp.fc2")
    image = ln(x, v + "norm", 1e-6)

    # BLIP BERT, [CLS] first, cross-attending to every image token
    tok = blip_tokenizer(folder / "tokenizer")(prompt, truncation=True, max_length=35)
    ids = torch.tensor(tok["input_ids"]).unsqueeze(0)
    t, eps, heads = "blip.text_encoder.", med["layer_norm_eps"], med["num_attention_heads"]
    h = sd[t + "embeddings.word_embeddings.weight"][ids] + sd[t + "embeddings.position_embeddings.weight"][: ids.shape[1]]
    h = ln(h, t + "embeddings.LayerNorm", eps).expand(image.shape[0], -1, -1)
    for i in range(med["num_hidden_layers"]):
        b = f"{t}encoder.layer.{i}."
        a = b + "attention."
        h = ln(lin(attend(lin(h, a + "self.query"), lin(h, a + "self.key"), lin(h, a + "self.value"), heads),
                   a + "output.dense") + h, a + "output.LayerNorm", eps)
        c = b + "crossattention."
        h = ln(lin(attend(lin(h, c + "self.query"), lin(image, c + "self.key"), lin(image, c + "self.value"), heads),
                   c + "output.dense") + h, c + "output.LayerNorm", eps)
        h = ln(lin(gelu(lin(h, b + "intermediate.dense")), b + "output.dense") + h, b + "output.LayerNorm", eps)

    r = h[:, 0]
    for i in (0, 2, 4, 6, 7):  # no activations between the layers
        r = lin(r, f"mlp.layers.{i}")
    return (r[:, 0] - MEAN) / STD


# -- the definition -------------------------------------------------------------------------------------

@pytest.mark.parametrize("prompt", [PROMPT, "Two RED apples, on a wooden table!", "cat " * 60])
def test_score_matches_an_independent_computation(folder, model, prompt):
    images = torch.rand(3, 3, 96, 160)
    with torch.no_grad():
        ours = model(images, prompt)
        ref = reference_scores(folder, images, prompt)
    assert ours.shape == (3,) and ours.dtype == torch.float32
    # float32, against BLIP written out independently; the score is linear in LayerNorm'd features (~1): rounding
    # relative to max(1, |score|) (measured <= 2)
    assert_rounding_close(ours, ref, REFERENCE_K, at_least=1.0)
    assert ours.std() > 1e-3  # the tiny weights give a score that depends on the image


def test_reward_attributes_and_constants(model):
    assert model.name == "imagereward" and model.offset == 2.0
    assert model.input_size == 224 and model.mean == (0.48145466, 0.4578275, 0.40821073)
    # the published constants, given to 5 decimals: equal within half their last digit
    assert abs(ir.REWARD_MEAN - 0.16717) <= 5e-6 and abs(ir.REWARD_STD - 1.03334) <= 5e-6
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert all(p.dtype == torch.float32 and p.device.type == "cpu" for p in model.parameters())


def test_state_dict_keys_equal_the_file(folder, model):
    saved = torch.load(folder / "ImageReward.pt", weights_only=True)
    assert list(model.state_dict()) == list(saved)


def test_full_size_architecture_is_the_released_layout():
    """ViT-L/16 + BERT-base: 625 keys, 446,665,953 parameters, every key and shape as in ImageReward.pt."""
    with torch.device("meta"):
        full = ImageRewardModel()
    sd = full.state_dict()
    layout = real_layout()
    assert len(sd) == len(layout) == 625
    assert {k: tuple(v.shape) for k, v in sd.items()} == layout
    assert sum(p.numel() for p in full.parameters()) == 446_665_953
    assert full.input_size == 224


def test_the_released_layout_is_read_as_vit_l16_bert_base(tmp_path):
    """The shape readers on a meta-device copy of the released layout, with BLIP's standard med_config.json."""
    from tiny_imagereward import BERT_MED_KEYS

    state = {k: torch.empty(shape, device="meta") for k, shape in real_layout().items()}
    path = tmp_path / "ImageReward.pt"
    vision = ir.vision_config_from_state(state, path, None, "imagereward")
    assert vision == ir.DEFAULT_VISION
    med = dict(BERT_MED_KEYS, hidden_size=768, intermediate_size=3072, max_position_embeddings=512,
               num_attention_heads=12, num_hidden_layers=12, vocab_size=30524, encoder_width=768)
    text = ir.text_config_from_med(med, tmp_path / "med_config.json", vision.width, "imagereward")
    assert text == ir.DEFAULT_TEXT and text.encoder_width == 1024  # overridden with the ViT width, as BLIP does
    ir._check_text_against_state(text, state, path, tmp_path / "med_config.json", "imagereward")
    assert ir.head_dims_from_state(state, path, "imagereward") == (768, 1024, 128, 64, 16, 1)


def test_a_vit_l_that_lost_blocks_is_refused_without_a_sidecar(tmp_path):
    state = {k: torch.empty(shape, device="meta") for k, shape in real_layout(vision_layers=23).items()}
    with pytest.raises(RewardLoadError, match="not ImageReward's ViT-L/16"):
        ir.vision_config_from_state(state, tmp_path / "ImageReward.pt", None, "imagereward")


# -- the tokenizer ------------------------------------------------------------------------------------------

def ids_of(*tokens):
    vocab = tiny_vocab()
    return [vocab.index(t) for t in tokens]


def test_tokenizer_lowercases_puts_cls_first_pads_to_35(model):
    tokens = model.tokenize("A Photo of the MATS")
    assert tokens.shape == (2, 35) and tokens.dtype == torch.long
    expected = ids_of("[CLS]", "a", "photo", "of", "the", "mat", "##s", "[SEP]")
    assert tokens[0, :8].tolist() == expected
    assert tokens[0, 8:].tolist() == [0] * 27 and ids_of("[PAD]") == [0]
    assert tokens[1].tolist() == [1] * 8 + [0] * 27
    assert torch.equal(model.tokenize("a photo of the mats"), tokens)  # integer ids: exact


def test_tokenizer_adds_blips_special_tokens_and_does_not_swap_in_enc(model):
    tok, n = model.tokenizer, len(tiny_vocab())
    assert len(tok) == n + 2 == model.text_config.vocab_size
    assert tok.bos_token == "[DEC]"
    assert tok.convert_tokens_to_ids(["[DEC]", "[ENC]"]) == [n, n + 1]
    first = model.tokenize(PROMPT)[0, 0].item()
    assert first == ids_of("[CLS]")[0] and first != n + 1  # ImageReward's score keeps [CLS] (no [ENC] swap)


@pytest.mark.parametrize("prompt", [PROMPT, "A PAINTING of an Astronaut riding a horse, 4k, détailed", "", "zebra"])
def test_tokenizer_matches_blips_slow_tokenizer(folder, model, prompt):
    ref = blip_tokenizer(folder / "tokenizer")(prompt, padding="max_length", truncation=True, max_length=35)
    tokens = model.tokenize(prompt)
    assert tokens[0].tolist() == ref["input_ids"] and tokens[1].tolist() == ref["attention_mask"]


def test_long_prompt_is_truncated_and_said(model, caplog):
    with caplog.at_level("WARNING"):
        tokens = model.tokenize(" ".join(["cat"] * 50))
    assert tokens[0].tolist() == ids_of("[CLS]") + ids_of("cat") * 33 + ids_of("[SEP]")
    assert tokens[1].tolist() == [1] * 35
    assert "only the first 35 are scored" in caplog.text
    caplog.clear()
    with caplog.at_level("WARNING"):
        model.tokenize(PROMPT)
    assert "only the first" not in caplog.text


def test_text_features_are_the_tokenization_cached_per_prompt(model):
    model._text_cache.clear()
    feats = model.text_features(PROMPT)
    assert feats.shape == (2, 35) and feats.dtype == torch.long and feats.device == model.param_device()
    assert model.text_features(PROMPT) is feats


# -- gradients, layouts, batches -----------------------------------------------------------------------------

def test_gradients_reach_the_image(model):
    images = torch.rand(2, 3, 64, 96, requires_grad=True)
    model(images, PROMPT).sum().backward()
    assert torch.isfinite(images.grad).all()
    assert images.grad.abs().max() > 1e-5  # not the ~1e-10 of a default-initialized head
    assert all(p.grad is None for p in model.parameters())


@settings(max_examples=6, deadline=None)
@given(h=st.integers(16, 300), w=st.integers(16, 300), batch=st.integers(1, 3))
def test_comfy_images_of_any_size_and_batch_score_per_image(model, h, w, batch):
    comfy_images = torch.rand(batch, h, w, 3)
    with torch.no_grad():
        scores = model(comfy_to_bchw(comfy_images), PROMPT)
        assert scores.shape == (batch,) and torch.isfinite(scores).all()
        singles = torch.cat([model(comfy_to_bchw(comfy_images[i : i + 1]), PROMPT) for i in range(batch)])
    assert_rounding_close(scores, singles, BATCH_K, at_least=1.0)  # float32 batch vs single (measured <= 1.2)


def test_half_precision_tower_keeps_a_float32_head(folder):
    model = load_imagereward_folder(folder).to(torch.bfloat16)
    images = torch.rand(2, 3, 64, 64, requires_grad=True)
    scores = model(images, PROMPT)
    assert scores.dtype == torch.float32 and torch.isfinite(scores).all()
    scores.sum().backward()
    assert torch.isfinite(images.grad).all()
    with torch.no_grad():
        # a bfloat16 tower before a float32 head, against the float32 reference (measured 0.23 roundings of 1)
        assert_rounding_close(scores, reference_scores(folder, images, PROMPT), HALF_TOWER_K, dtype=torch.bfloat16,
                              at_least=1.0)


def test_models_built_inside_inference_mode_still_backpropagate(folder):
    with torch.inference_mode():
        model = load_imagereward_folder(folder)
    assert not any(p.is_inference() for p in model.parameters())
    images = torch.rand(1, 3, 32, 32, requires_grad=True)
    model(images, PROMPT).sum().backward()
    assert images.grad.abs().sum() > 0


# -- gradient checkpointing ----------------------------------------------------------------------------------

def count_block_calls(model):
    calls = []
    blocks = [*model.blip.visual_encoder.blocks, *model.blip.text_encoder.encoder.layer]
    # a hook on each block's first child: the recomputation calls the block's own forward, not its hooks
    handles = [next(b.children()).register_forward_pre_hook(lambda *a, i=i: calls.append(i))
               for i, b in enumerate(blocks)]
    return calls, handles, len(blocks)


def test_gradient_checkpointing_gives_the_same_score_and_gradient_and_recomputes(folder):
    model = load_imagereward_folder(folder)
    images = torch.rand(2, 3, 80, 64)
    results = {}
    for on in (False, True):
        x = images.clone().requires_grad_(True)
        calls, handles, n_blocks = count_block_calls(model)
        with recomputing(model) if on else contextlib.nullcontext():
            score = model(x, PROMPT)
            forward_calls = len(calls)
            score.sum().backward()
        for h in handles:
            h.remove()
        results[on] = (score.detach(), x.grad, forward_calls, len(calls))
    assert not model.training  # it acts in eval mode
    # the recomputed pass runs the same ops on the same inputs in grad mode (the pack refuses a recomputation that
    # saves anything different): bit-identical score and gradient
    torch.testing.assert_close(results[True][0], results[False][0], rtol=0, atol=0)
    torch.testing.assert_close(results[True][1], results[False][1], rtol=0, atol=0)
    assert results[False][2:] == (n_blocks, n_blocks)  # each block once
    assert results[True][2:] == (n_blocks, 2 * n_blocks)  # recomputed once more in the backward pass
    calls, handles, _ = count_block_calls(model)
    with torch.no_grad():
        model(images, PROMPT)  # nothing to checkpoint without gradients
    assert len(calls) == n_blocks


# -- the vision_config.json sidecar ----------------------------------------------------------------------------

def test_vision_sidecar_sets_the_head_count(tmp_path):
    folder = write_tiny_imagereward(tmp_path / "two", seed=1, vision_heads=2)
    model = load_imagereward_folder(folder)
    assert model.blip.visual_encoder.blocks[0].attn.heads == 2
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ours = model(images, PROMPT)
        # float32 against the reference with 2 heads (measured <= 5 roundings of 1)
        assert_rounding_close(ours, reference_scores(folder, images, PROMPT, vision_heads=2), REFERENCE_K, at_least=1.0)
        four = reference_scores(folder, images, PROMPT, vision_heads=4)
    assert (ours - four).abs().max() > 1e-3  # the head count matters, so it was honoured


def test_without_sidecar_the_vit_l_default_or_a_warning(tmp_path, caplog):
    folder = write_tiny_imagereward(tmp_path / "plain", sidecar=False)
    with caplog.at_level("WARNING"):
        model = load_imagereward_folder(folder)
    assert model.blip.visual_encoder.blocks[0].attn.heads == 1 and "vision_config.json" in caplog.text
    assert ir.DEFAULT_VISION == ir.VisionConfig(224, 16, 1024, 24, 16, 4096)


def test_sidecar_that_contradicts_the_checkpoint_is_refused(folder, tmp_path):
    target = copy_folder(folder, tmp_path)
    side = json.loads((target / "vision_config.json").read_text())
    (target / "vision_config.json").write_text(json.dumps(dict(side, width=128)))
    with pytest.raises(RewardLoadError) as e:
        load_imagereward_folder(target)
    msg = str(e.value)
    assert "vision_config.json" in msg and "width=128" in msg and "blip.visual_encoder.pos_embed" in msg


# -- strict loading and clear errors ---------------------------------------------------------------------------

def resave(folder, tmp_path, edit):
    target = copy_folder(folder, tmp_path)
    sd = torch.load(target / "ImageReward.pt", weights_only=True)
    torch.save(edit(sd), target / "ImageReward.pt")
    return target


def load_error(target) -> str:
    with pytest.raises(RewardLoadError) as e:
        load_imagereward_folder(target)
    msg = str(e.value)
    assert str(target / "ImageReward.pt") in msg or str(target) in msg
    return msg


def test_missing_key_is_named(folder, tmp_path):
    target = resave(folder, tmp_path, lambda sd: {k: v for k, v in sd.items() if k != "blip.text_proj.bias"})
    msg = load_error(target)
    assert "1 missing key(s): blip.text_proj.bias" in msg and "ImageReward.pt" in msg


def test_missing_position_ids_is_named(folder, tmp_path):
    key = "blip.text_encoder.embeddings.position_ids"
    msg = load_error(resave(folder, tmp_path, lambda sd: {k: v for k, v in sd.items() if k != key}))
    assert "missing key(s): " + key in msg


def test_unexpected_key_is_named(folder, tmp_path):
    extra = {"blip.text_encoder.pooler.dense.weight": torch.zeros(32, 32), "itm_head.weight": torch.zeros(2, 32)}
    msg = load_error(resave(folder, tmp_path, lambda sd: {**sd, **extra}))
    assert "2 unexpected key(s)" in msg and "blip.text_encoder.pooler.dense.weight" in msg and "itm_head.weight" in msg


def test_wrong_shapes_are_named(folder, tmp_path):
    def edit(sd):
        sd["blip.visual_encoder.blocks.1.attn.proj.weight"] = torch.zeros(64, 32)
        return sd

    msg = load_error(resave(folder, tmp_path, edit))
    assert "blip.visual_encoder.blocks.1.attn.proj.weight: file (64, 32), model (64, 64)" in msg


def test_med_config_that_does_not_match_is_named(folder, tmp_path):
    target = copy_folder(folder, tmp_path)
    med = json.loads((target / "med_config.json").read_text())
    (target / "med_config.json").write_text(json.dumps(dict(med, hidden_size=48)))
    msg = load_error(target)
    assert "med_config.json" in msg and "blip.text_encoder.embeddings.word_embeddings.weight" in msg
    (target / "med_config.json").write_text(json.dumps(dict(med, num_hidden_layers=12)))
    msg = load_error(target)
    assert "num_hidden_layers=12" in msg and "2 BERT layers" in msg


def test_tokenizer_that_does_not_fit_the_embeddings_is_refused(folder, tmp_path):
    target = copy_folder(folder, tmp_path)
    vocab = (target / "tokenizer" / "vocab.txt").read_text().splitlines()
    (target / "tokenizer" / "vocab.txt").write_text("\n".join(vocab[:-5]) + "\n")
    msg = load_error(target)
    assert "tokenizer" in msg and "word_embeddings" in msg and "bert-base-uncased" in msg


@pytest.mark.parametrize("payload, expected", [
    ([torch.zeros(2)], "holds a list"),
    ({"blip.text_proj.bias": torch.zeros(2), "epoch": 3}, "not a dict of tensors (non-tensor entries: epoch)"),
])
def test_wrong_format_is_refused(folder, tmp_path, payload, expected):
    msg = load_error(resave(folder, tmp_path, lambda sd: payload))
    assert expected in msg and "plain state dict" in msg


def test_truncated_file_gets_a_clear_error(folder, tmp_path):
    target = copy_folder(folder, tmp_path)
    data = (target / "ImageReward.pt").read_bytes()
    (target / "ImageReward.pt").write_bytes(data[: len(data) // 2])
    msg = load_error(target)
    assert "could not read" in msg and "truncated" in msg


MARKER = []


def _side_effect(text):  # what a malicious pickle would run on load
    MARKER.append(text)
    return text


class _Payload:
    def __reduce__(self):
        return (_side_effect, ("ran",))


def test_pickle_that_needs_code_is_refused_without_running_it(folder, tmp_path):
    target = resave(folder, tmp_path, lambda sd: {**sd, "extra": _Payload()})
    msg = load_error(target)
    assert "refused to load" in msg and "run code" in msg
    assert MARKER == []


def test_hps_checkpoint_is_refused_as_another_model(folder, tmp_path):
    open_clip = {
        "positional_embedding": torch.zeros(77, 16), "logit_scale": torch.zeros(()),
        "visual.conv1.weight": torch.zeros(16, 3, 14, 14), "visual.class_embedding": torch.zeros(16),
        "transformer.resblocks.0.attn.in_proj_weight": torch.zeros(48, 16),
    }
    msg = load_error(resave(folder, tmp_path, lambda sd: {"state_dict": open_clip}))
    assert "state_dict" in msg and "HPS" in msg and "not ImageReward.pt" in msg
    msg = load_error(resave(folder, tmp_path / "bare", lambda sd: open_clip))
    assert "none of ImageReward's keys" in msg and "positional_embedding" in msg and "HPS" in msg


def test_half_precision_checkpoint_loads_into_float32(tmp_path):
    folder = write_tiny_imagereward(tmp_path / "half", dtype=torch.float16)
    model = load_imagereward_folder(folder)
    assert all(p.dtype == torch.float32 for p in model.parameters())
    assert model.blip.text_encoder.embeddings.position_ids.dtype == torch.long
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        # float32 weights (from float16) against the reference (measured <= 4 roundings of 1)
        assert_rounding_close(model(images, PROMPT), reference_scores(folder, images, PROMPT), REFERENCE_K, at_least=1.0)


def test_missing_files_are_named(folder, tmp_path):
    target = copy_folder(folder, tmp_path)
    (target / "med_config.json").unlink()
    with pytest.raises(RewardLoadError, match="med_config.json is missing"):
        load_imagereward_folder(target)
    shutil.rmtree(target / "tokenizer")
    shutil.copy(folder / "med_config.json", target / "med_config.json")
    with pytest.raises(RewardLoadError, match="could not load the BERT tokenizer"):
        load_imagereward_folder(target)
