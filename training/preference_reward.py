"""Fine-tune an ImageReward-architecture reward on the user's own preferred/rejected marks ("train your taste").

Plain torch (no ComfyUI import). The recipe is ImageReward's / IterComp's reward training, reduced to what a
small personal dataset needs:

- **Pairs**: (preferred, rejected) pairs of images of the same prompt, derived from the marks of the preference
  store (``preferences.store``: ``<user dir>/reno_preferences/<dataset>/records.jsonl``): every
  combination up to ``preferences.PAIRS_PER_PROMPT`` per prompt, past it a sample drawn from the seed. A record's
  image is read only through the store's resolver (a file of the dataset's own ``images/`` folder); images over
  ``preferences.MAX_PIXELS`` are refused before they are decoded.
- **Loss**: the pairwise ranking loss ``-log sigmoid(r_preferred - r_rejected)`` on the reward head's raw output
  (before ImageReward's fixed normalization, which only rescales it), averaged over a mini-batch of pairs.
- **Frozen layers** (``freeze_fraction``, IterComp's and ImageReward's ``fix_rate``, default 0.7): with ``k_t =
  floor(fraction * text layers)`` and ``k_v = floor(fraction * ViT blocks)``, frozen are the text encoder's
  embeddings and its first ``k_t`` BERT layers, the ViT's patch embedding, class token, position embedding and
  its first ``k_v`` blocks, and BLIP's two contrastive projections (unused by the score). Trainable: the
  remaining BERT layers and ViT blocks, the ViT's final LayerNorm and the MLP head. ImageReward's training
  code freezes the same modules by walking ``named_parameters()`` until the first tensor of layer ``k`` (so it
  also freezes that one tensor, the next layer's first weight); here whole layers are frozen. A fraction of 0
  freezes nothing (ImageReward: ``fix_rate 0``), 1 leaves only the ViT's final norm and the head trainable.
- **Optimizer**: AdamW (torch defaults besides the learning rate, default 1e-5), float32 weights, the head's
  dropout active as in the original training, ``epochs`` passes over the training pairs in a seeded order.
- **Held out**: 10 % of the pairs (at least one when there are two or more), chosen by pair from the seed,
  are never trained on; the accuracy on them (the fraction of pairs whose preferred image scores strictly
  higher) is measured before and after training.

Because the frozen ViT prefix does not change, each image's tokens after it are computed once and reused
every epoch (the same numbers, a fraction of the cost).

The result is saved in ImageReward's own format in ``<reno_rewards>/custom/<name>/``: ``ImageReward.pt`` (a plain
state dict with the key names of the released file), ``med_config.json`` and ``tokenizer/`` copied from the
base reward (or the ``imagereward`` folder it borrows them from), ``vision_config.json`` written from the model,
and ``reward.json`` describing it. The folder is written in a hidden
staging folder beside it and renamed into place only when complete: a failed or cancelled training leaves
nothing. An existing custom reward of the same name is never overwritten: the training is refused before it
starts, with the folder to delete or a hint to choose another name.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..preferences import store as preferences
from ..reward_loaders import staging
from ..reward_loaders.base import clean_prompt
from ..reward_loaders.imagereward import PROJ_DIM, find_bert_tokenizer, find_med_config

log = logging.getLogger(__name__)

CUSTOM_DIR = "custom"  # <reno_rewards>/custom/<name>/
PREFERENCES_DIR = preferences.FOLDER  # <user folder>/reno_preferences/<dataset>/records.jsonl
RECORDS_FILE = preferences.RECORDS
REWARD_JSON = "reward.json"
STAGING = ".reno-staging"  # custom/.reno-staging/<token>/ + <token>.lock (reward_loaders/staging.py)
HELD_OUT_FRACTION = 0.1
BATCH_PAIRS = 4  # pairs per optimizer step (8 images)
EVAL_BATCH = 16  # images scored at once when measuring accuracy
NO_PAIR_HINT = "mark at least one preferred and one rejected image of the same prompt"
# a folder name that is safe on Windows, macOS and Linux, and cannot climb out of custom/
_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9 ._-]{0,63}")
_RESERVED = {"con", "prn", "aux", "nul", *(f"com{i}" for i in range(1, 10)), *(f"lpt{i}" for i in range(1, 10))}


class PreferenceTrainingError(ValueError):
    """Bad input to a preference training (no pair, a bad name, an existing folder): the message says what to do."""


@dataclass(frozen=True)
class TrainingConfig:
    epochs: int = 5
    learning_rate: float = 1e-5
    freeze_fraction: float = 0.7
    seed: int = 0
    batch_pairs: int = BATCH_PAIRS
    held_out_fraction: float = HELD_OUT_FRACTION

    def checked(self) -> TrainingConfig:
        if int(self.epochs) < 1:
            raise PreferenceTrainingError(f"epochs must be at least 1, got {self.epochs}")
        lr = float(self.learning_rate)
        if not math.isfinite(lr) or lr <= 0:
            raise PreferenceTrainingError(f"learning_rate must be a positive number (e.g. 1e-5), got {self.learning_rate}")
        fraction = float(self.freeze_fraction)
        if not (0.0 <= fraction <= 1.0):
            raise PreferenceTrainingError(
                f"freeze_fraction must be between 0 and 1 (0.7 freezes the first 70% of the layers), got {fraction}")
        if int(self.batch_pairs) < 1:
            raise PreferenceTrainingError(f"batch_pairs must be at least 1, got {self.batch_pairs}")
        return self


@dataclass(frozen=True)
class PreferencePair:
    """Two images of one prompt, the first preferred to the second."""

    prompt: str
    preferred: Path
    rejected: Path
    preferred_id: str = ""
    rejected_id: str = ""


@dataclass(frozen=True)
class FreezeSummary:
    text_layers: int
    text_frozen: int
    vision_blocks: int
    vision_frozen: int
    frozen_parameters: int
    trainable_parameters: int

    def describe(self) -> str:
        return (f"frozen: text embeddings + {self.text_frozen}/{self.text_layers} BERT layers, ViT embeddings + "
                f"{self.vision_frozen}/{self.vision_blocks} blocks ({self.trainable_parameters:,} of "
                f"{self.frozen_parameters + self.trainable_parameters:,} parameters trained)")


@dataclass
class TrainingResult:
    pairs: int
    train_pairs: int
    held_out_pairs: int
    accuracy_before: float | None  # on the held-out pairs; None when no pair is held out
    accuracy_after: float | None
    train_accuracy_before: float
    train_accuracy_after: float
    steps: int
    losses: list[float] = field(default_factory=list)
    freeze: FreezeSummary | None = None
    seconds: float = 0.0


# -- the preference store -----------------------------------------------------------------------------------------

def list_datasets(user_root: Path) -> list[str]:
    """The preference datasets of a user's folder (``<user_root>/reno_preferences/<dataset>/records.jsonl``)."""
    return preferences.list_datasets(user_root)


def load_preference_pairs(user_root: Path, dataset: str, seed: int = 0) -> tuple[list[PreferencePair], list[str]]:
    """The pairs of ``<user_root>/reno_preferences/<dataset>`` whose two image files exist, and a line for each
    pair left out (a missing image). ``seed`` draws the pairs of a prompt with more marks than
    ``preferences.PAIRS_PER_PROMPT`` pairs' worth.

    Records whose image is not a file of the dataset's ``images/`` folder (an absolute path, ``..``, a link out)
    are never read: they are left out as if absent, and said to be, with the same words whatever exists outside.
    Raises PreferenceTrainingError when there is no such dataset, when it has no pair, or when no pair's images exist.
    """
    try:
        folder = Path(preferences.dataset_dir(user_root, dataset))
    except preferences.PreferenceError as e:
        raise PreferenceTrainingError(str(e)) from None
    base = folder.parent
    if not (folder / RECORDS_FILE).is_file():
        known = list_datasets(user_root)
        raise PreferenceTrainingError(
            f"no preference dataset {dataset!r} in {base} ({'datasets there: ' + ', '.join(known) if known else 'none yet'}). "
            f"Mark images as preferred/rejected first (the marks are recorded in {base}/<dataset>/{RECORDS_FILE}), "
            "then refresh the page (R) to update the dataset list.")
    refused: list[str] = []
    records = preferences.read_records(user_root, dataset, refused=refused)
    ignored = ""
    if refused:
        ignored = (f"; {len(refused)} record(s) ignored: their image is not a file of the dataset's "
                   f"{preferences.IMAGES}/ folder (e.g. record {refused[0]})")
        log.warning("ReNO: preference dataset %r%s", dataset, ignored)
    raw = preferences.pairs(records, seed=int(seed))
    if not raw:
        marks = [r.get("mark") for r in records]
        raise PreferenceTrainingError(
            f"the preference dataset {dataset!r} ({folder / RECORDS_FILE}) has no pair to learn from "
            f"({marks.count('preferred')} preferred and {marks.count('rejected')} rejected image(s){ignored}): "
            f"{NO_PAIR_HINT}.")
    resolve = preferences.image_resolver(folder)
    pairs, skipped = [], []
    for good, bad in raw:
        files = [Path(resolve(record["image"])) for record in (good, bad)]  # every record read resolves
        missing = [str(f) for f in files if not f.is_file()]
        if missing:
            skipped.append(f"pair {good.get('id')} > {bad.get('id')}: missing {', '.join(missing)}")
            continue
        pairs.append(PreferencePair(str(good.get("prompt", "")), files[0], files[1], str(good.get("id", "")),
                                    str(bad.get("id", ""))))
    if not pairs:
        raise PreferenceTrainingError(
            f"the preference dataset {dataset!r} has {len(raw)} pair(s) but the image files of every one are missing "
            f"from {folder} (e.g. {skipped[0]}). Restore the images or mark new ones.")
    for line in skipped:
        log.warning("ReNO: preference dataset %r: %s; the pair is left out", dataset, line)
    return pairs, skipped


# -- freezing -----------------------------------------------------------------------------------------------------

def frozen_count(layers: int, fraction: float) -> int:
    """floor(fraction * layers), robust to float rounding (0.7 * 10 is 7.000000000000001, 0.29 * 100 is 28.99...)."""
    return min(layers, max(0, int(math.floor(fraction * layers + 1e-9))))


def freeze_layers(model, fraction: float) -> FreezeSummary:
    """Set requires_grad as the module docstring says (everything else trainable); returns what was frozen."""
    blip = model.blip
    vit, bert = blip.visual_encoder, blip.text_encoder
    n_vit, n_text = len(vit.blocks), len(bert.encoder.layer)
    k_vit, k_text = frozen_count(n_vit, fraction), frozen_count(n_text, fraction)
    model.requires_grad_(True)
    frozen = [m for m in (getattr(blip, "vision_proj", None), getattr(blip, "text_proj", None)) if m is not None]
    if fraction > 0:
        frozen += [vit.patch_embed, bert.embeddings, *vit.blocks[:k_vit], *bert.encoder.layer[:k_text]]
        vit.cls_token.requires_grad_(False)
        vit.pos_embed.requires_grad_(False)
    for module in frozen:
        module.requires_grad_(False)
    n_frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return FreezeSummary(n_text, k_text, n_vit, k_vit, n_frozen, n_train)


def _vit_prefix(vit, pixels: torch.Tensor, blocks: int) -> torch.Tensor:
    """The ViT's tokens after its first ``blocks`` blocks (patch embedding, class token, positions first)."""
    x = vit.patch_embed(pixels.to(vit.pos_embed.dtype))
    x = torch.cat([vit.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + vit.pos_embed
    for block in vit.blocks[:blocks]:
        x = block(x)
    return x


def _vit_rest(vit, tokens: torch.Tensor, start: int) -> torch.Tensor:
    for block in vit.blocks[start:]:
        tokens = block(tokens)
    return vit.norm(tokens)


def raw_rewards(model, inputs: torch.Tensor, tokens: torch.Tensor, start: int | None) -> torch.Tensor:
    """(N,) raw head outputs for N images, each with its own prompt tokens (N, 2, L).

    ``inputs`` are preprocessed pixels when ``start`` is None, else the ViT tokens after its first ``start`` blocks.
    """
    vit = model.blip.visual_encoder
    image = vit(inputs) if start is None else _vit_rest(vit, inputs, start)
    tokens = tokens.to(image.device).long()
    hidden = model.blip.text_encoder(tokens[:, 0], tokens[:, 1], image)
    return model.mlp(hidden[:, 0, :].float())[:, 0]


def pairwise_loss(preferred: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
    """mean of -log sigmoid(r_preferred - r_rejected) (softplus form: no overflow for large differences)."""
    return F.softplus(rejected - preferred).mean()


# -- data ---------------------------------------------------------------------------------------------------------

def read_image(path: Path) -> torch.Tensor:
    """(1, 3, H, W) float32 in [0, 1] from an image file (alpha dropped, grey expanded). An image of more than
    ``preferences.MAX_PIXELS`` pixels is refused from its header, before it is decoded."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            preferences.check_pixels(*im.size, what=f"the image {path}")
            rgb = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    except preferences.PreferenceError as e:
        raise PreferenceTrainingError(f"{e}, or remove its mark from the dataset") from None
    except Image.DecompressionBombError as e:  # PIL's own limit, met while reading the header
        raise PreferenceTrainingError(f"the image {path} is too large to read ({e}); at most "
                                      f"{preferences.MAX_PIXELS / 1e6:.1f} megapixels: remove its mark from the "
                                      "dataset") from None
    except (OSError, UnidentifiedImageError) as e:
        raise PreferenceTrainingError(f"could not read the image {path} ({type(e).__name__}: {e}); "
                                      "replace it, or remove its mark from the dataset") from e
    return torch.from_numpy(rgb.copy()).permute(2, 0, 1).unsqueeze(0)


def split_pairs(n: int, seed: int, fraction: float = HELD_OUT_FRACTION) -> tuple[list[int], list[int]]:
    """(train, held-out) pair indices: round(fraction * n) held out, at least one when n >= 2, chosen by the seed."""
    if n < 2:
        return list(range(n)), []
    k = min(n - 1, max(1, int(round(fraction * n))))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(int(seed))).tolist()
    held = sorted(order[:k])
    held_set = set(held)
    return [i for i in range(n) if i not in held_set], held


class _Prepared:
    """Every image of the pairs, preprocessed once (and through the frozen ViT prefix), plus the prompts' tokens."""

    def __init__(self, model, pairs: Sequence[PreferencePair], start: int | None, device: torch.device,
                 check_cancel: Callable[[], None] | None):
        self.start = start
        paths = list(dict.fromkeys(p for pair in pairs for p in (pair.preferred, pair.rejected)))
        self.index = {p: i for i, p in enumerate(paths)}
        inputs = []
        with torch.no_grad():
            for path in paths:
                if check_cancel is not None:
                    check_cancel()
                pixels = model.preprocess(read_image(path).to(device)).to(model.param_dtype())
                x = pixels if start is None else _vit_prefix(model.blip.visual_encoder, pixels, start)
                inputs.append(x[0].to("cpu"))
        self.inputs = inputs
        self.tokens: dict[str, torch.Tensor] = {}
        for pair in pairs:
            if pair.prompt not in self.tokens:
                self.tokens[pair.prompt] = model.tokenize(clean_prompt(pair.prompt, model.name)).cpu()

    def batch(self, pairs: Sequence[PreferencePair], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and tokens of [preferred..., rejected...] (2N images)."""
        images = [p.preferred for p in pairs] + [p.rejected for p in pairs]
        prompts = [p.prompt for p in pairs] * 2
        x = torch.stack([self.inputs[self.index[i]] for i in images]).to(device)
        tokens = torch.stack([self.tokens[p] for p in prompts]).to(device)
        return x, tokens


def _accuracy(model, data: _Prepared, pairs: Sequence[PreferencePair], device: torch.device,
              check_cancel: Callable[[], None] | None) -> float | None:
    """Fraction of pairs whose preferred image gets the strictly higher reward (None for no pair)."""
    if not pairs:
        return None
    was_training = model.training
    model.eval()
    right = 0
    try:
        with torch.no_grad():
            step = max(1, EVAL_BATCH // 2)
            for i in range(0, len(pairs), step):
                if check_cancel is not None:
                    check_cancel()
                chunk = pairs[i: i + step]
                x, tokens = data.batch(chunk, device)
                r = raw_rewards(model, x, tokens, data.start)
                right += int((r[: len(chunk)] > r[len(chunk):]).sum())
    finally:
        model.train(was_training)
    return right / len(pairs)


@contextlib.contextmanager
def _seeded(seed: int, device: torch.device):
    """Dropout draws from a generator seeded here; the caller's random state is restored afterwards."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(int(seed))
        yield


def train_preference_reward(model, pairs: Sequence[PreferencePair], config: TrainingConfig = TrainingConfig(),
                            progress: Callable[[int, int, float], None] | None = None,
                            check_cancel: Callable[[], None] | None = None,
                            device: torch.device | str | None = None) -> TrainingResult:
    """Fine-tune ``model`` (an ImageRewardModel, trained in place: pass a private copy, never a cached one).

    ``progress(step, total, loss)`` is called after every optimizer step; ``check_cancel()`` (which raises to
    stop) before every step, between the images being prepared and the accuracy batches. The model is left
    in eval mode with no gradients required, on ``device``.
    """
    config = config.checked()
    if not pairs:
        raise PreferenceTrainingError(f"there is no preference pair to train on: {NO_PAIR_HINT}")
    if not hasattr(getattr(model, "blip", None), "visual_encoder") or not hasattr(model, "mlp"):
        raise PreferenceTrainingError(
            f"{getattr(model, 'name', type(model).__name__)} is not an ImageReward-architecture reward "
            "(BLIP ViT + BERT + MLP head); only those can be trained on preferences")
    t0 = time.perf_counter()
    device = torch.device(device) if device is not None else model.param_device()
    pairs = list(pairs)
    train_idx, held_idx = split_pairs(len(pairs), config.seed, config.held_out_fraction)
    train, held = [pairs[i] for i in train_idx], [pairs[i] for i in held_idx]
    with torch.inference_mode(False), torch.enable_grad():
        model.to(device=device, dtype=torch.float32)
        freeze = freeze_layers(model, float(config.freeze_fraction))
        start = freeze.vision_frozen if config.freeze_fraction > 0 else None
        data = _Prepared(model, pairs, start, device, check_cancel)
        before = _accuracy(model, data, held, device, check_cancel)
        train_before = _accuracy(model, data, train, device, check_cancel)
        params = [p for p in model.parameters() if p.requires_grad]
        optimizer = torch.optim.AdamW(params, lr=float(config.learning_rate))
        order_gen = torch.Generator().manual_seed((int(config.seed) + 1) % 2**64)
        per_epoch = math.ceil(len(train) / config.batch_pairs)
        total = per_epoch * int(config.epochs)
        losses: list[float] = []
        step = 0
        model.train()
        try:
            with _seeded(config.seed, device):
                for _ in range(int(config.epochs)):
                    order = torch.randperm(len(train), generator=order_gen).tolist()
                    for b in range(0, len(order), config.batch_pairs):
                        if check_cancel is not None:
                            check_cancel()
                        chunk = [train[i] for i in order[b: b + config.batch_pairs]]
                        x, tokens = data.batch(chunk, device)
                        r = raw_rewards(model, x, tokens, start)
                        loss = pairwise_loss(r[: len(chunk)], r[len(chunk):])
                        if check_cancel is not None:
                            check_cancel()
                        optimizer.zero_grad(set_to_none=True)
                        loss.backward()
                        optimizer.step()
                        step += 1
                        value = float(loss.detach())
                        losses.append(value)
                        if progress is not None:
                            progress(step, total, value)
        finally:
            model.eval()
            optimizer.zero_grad(set_to_none=True)
            del optimizer
        after = _accuracy(model, data, held, device, check_cancel)
        train_after = _accuracy(model, data, train, device, check_cancel)
        model.requires_grad_(False)
    return TrainingResult(len(pairs), len(train), len(held), before, after, train_before or 0.0, train_after or 0.0,
                          step, losses, freeze, time.perf_counter() - t0)


# -- saving -------------------------------------------------------------------------------------------------------

def validate_name(name: str) -> str:
    """The custom reward's folder name, or a PreferenceTrainingError saying what a valid one looks like."""
    text = str(name or "").strip()
    ok = bool(_NAME_RE.fullmatch(text)) and not text.endswith((".", " ")) and ".." not in text
    if ok and text.split(".")[0].strip().lower() in _RESERVED:
        ok = False
    if not ok:
        raise PreferenceTrainingError(
            f"name {name!r} cannot be a folder name: use 1 to 64 letters, digits, spaces, '.', '_' or '-', starting "
            "with a letter or digit (e.g. 'my-taste'); it becomes the reward 'custom/<name>'.")
    return text


def custom_folder(rewards_root: Path, name: str) -> Path:
    return Path(rewards_root) / CUSTOM_DIR / validate_name(name)


def check_free(rewards_root: Path, name: str) -> Path:
    """The target folder of ``custom/<name>``; refused (with what to do) when it already exists."""
    target = custom_folder(rewards_root, name)
    if target.exists() or target.is_symlink():
        what = ""
        with contextlib.suppress(OSError, ValueError, AttributeError):
            meta = json.loads((target / REWARD_JSON).read_text(encoding="utf-8"))
            what = f" (trained from {meta.get('base_reward')} on dataset {meta.get('dataset')!r})"
        raise PreferenceTrainingError(
            f"a custom reward named {target.name!r} already exists in {target}{what}; it is never overwritten. "
            "Choose another name, or delete that folder to train again under this name.")
    return target


def clean_stale_staging(rewards_root: Path) -> list[Path]:
    """Remove what killed trainings left in ``custom/.reno-staging`` (``staging.clean_stale``: once their process
    is gone, or nothing in it changed for a day; never a live training's). Never raises."""
    return staging.clean_stale(Path(rewards_root) / CUSTOM_DIR / STAGING, "training")


def _vision_sidecar(model) -> dict:
    v = model.vision_config
    return {"image_size": v.image_size, "patch_size": v.patch_size, "width": v.width, "layers": v.layers,
            "heads": v.heads}


def _med_config(model) -> dict:
    t = model.text_config
    return {"architectures": ["BertModel"], "attention_probs_dropout_prob": 0.1, "hidden_act": t.hidden_act,
            "hidden_dropout_prob": 0.1, "hidden_size": t.hidden_size, "initializer_range": 0.02,
            "intermediate_size": t.intermediate_size, "layer_norm_eps": t.eps, "max_position_embeddings": t.max_positions,
            "model_type": "bert", "num_attention_heads": t.heads, "num_hidden_layers": t.layers,
            "pad_token_id": t.pad_token_id, "type_vocab_size": 2, "vocab_size": t.vocab_size, "encoder_width": 768,
            "add_cross_attention": True}


def _json_number(x: float | None):
    return None if x is None or not math.isfinite(x) else round(float(x), 6)


def checkpoint_state(model) -> dict[str, torch.Tensor]:
    """The model's weights as ``ImageReward.pt`` holds them: a plain state dict, float32 on the CPU, with every key
    of the released file. A model loaded from a training checkpoint (IterComp's) has no contrastive projections
    (``blip.vision_proj`` / ``blip.text_proj``, which the score never runs): they are written as zeros, so that
    the file loads wherever ImageReward.pt does."""
    state = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in model.state_dict().items()}
    if "blip.vision_proj.weight" in state:
        return state
    width, hidden = model.vision_config.width, model.text_config.hidden_size
    projections = {"blip.vision_proj.weight": torch.zeros(PROJ_DIM, width), "blip.vision_proj.bias": torch.zeros(PROJ_DIM),
                   "blip.text_proj.weight": torch.zeros(PROJ_DIM, hidden), "blip.text_proj.bias": torch.zeros(PROJ_DIM)}
    ordered: dict[str, torch.Tensor] = {}
    for key, value in state.items():  # where the released file has them: after the towers, before the head
        if key.startswith("mlp.") and projections:
            ordered.update(projections)
            projections = {}
        ordered[key] = value
    ordered.update(projections)
    return ordered


def save_custom_reward(model, rewards_root: Path, name: str, *, base_reward: str, base_folder: Path, dataset: str,
                       result: TrainingResult, config: TrainingConfig, description: str = "",
                       roots: Sequence[Path] = ()) -> Path:
    """Write ``<rewards_root>/custom/<name>/`` atomically (staging folder, then rename); returns the folder.

    ``med_config.json`` and ``tokenizer/`` are copied from the base reward's folder (or, when it borrows them, from
    the ``imagereward`` folder of one of ``roots``, as the loader does); with no med config anywhere one is written
    from the model's sizes. ``vision_config.json`` is always written from the model.
    """
    target = check_free(rewards_root, name)
    base_folder = Path(base_folder)
    roots = list(roots) or [Path(rewards_root)]
    tokenizer_dir, med = find_bert_tokenizer(base_folder, roots), find_med_config(base_folder, roots)
    if tokenizer_dir is None:
        raise PreferenceTrainingError(
            f"no BERT tokenizer (tokenizer/vocab.txt and tokenizer_config.json) in the base reward's folder "
            f"{base_folder} nor in an imagereward folder of {', '.join(map(str, roots))}, to copy beside the trained "
            "reward: put bert-base-uncased's vocab.txt and tokenizer_config.json in "
            f"{base_folder / 'tokenizer'}")
    target.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_staging(rewards_root)
    staging_dir = target.parent / STAGING
    lock, work = staging.claim(staging_dir)
    try:
        state = checkpoint_state(model)
        torch.save(state, work / "ImageReward.pt")
        del state
        if med is not None:
            shutil.copy2(med, work / "med_config.json")
        else:
            (work / "med_config.json").write_text(json.dumps(_med_config(model), indent=2), encoding="utf-8")
        (work / "vision_config.json").write_text(json.dumps(_vision_sidecar(model), indent=2), encoding="utf-8")
        shutil.copytree(tokenizer_dir, work / "tokenizer",
                        ignore=shutil.ignore_patterns(".*"))
        meta = {
            "format": "imagereward",
            "checkpoint": "ImageReward.pt",
            "offset": float(getattr(model, "offset", 2.0)),
            "description": description or (
                f"ImageReward-architecture reward fine-tuned from {base_reward} on the preference dataset "
                f"'{dataset}' ({result.pairs} pairs)"),
            "base_reward": base_reward,
            "dataset": dataset,
            "pairs": result.pairs,
            "held_out_accuracy": {"before": _json_number(result.accuracy_before),
                                  "after": _json_number(result.accuracy_after)},
            "training": {
                **{k: v for k, v in asdict(config).items()},
                "train_pairs": result.train_pairs, "held_out_pairs": result.held_out_pairs, "steps": result.steps,
                "train_accuracy": {"before": _json_number(result.train_accuracy_before),
                                   "after": _json_number(result.train_accuracy_after)},
                "final_loss": _json_number(result.losses[-1] if result.losses else None),
                "trained_at": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        }
        (work / REWARD_JSON).write_text(json.dumps(meta, indent=2), encoding="utf-8")
        if target.exists():  # created meanwhile (another training of the same name)
            check_free(rewards_root, name)
        os.rename(work, target)
    finally:  # a failed or cancelled save leaves nothing; a saved one's work folder is the reward now
        staging.release(staging_dir, lock, work)
    log.info("ReNO: saved the custom reward %s", target)
    return target


# -- all of it ----------------------------------------------------------------------------------------------------

def train_and_save(model, pairs: Sequence[PreferencePair], *, rewards_root: Path, name: str, base_reward: str,
                   base_folder: Path, dataset: str, config: TrainingConfig = TrainingConfig(),
                   progress: Callable[[int, int, float], None] | None = None,
                   check_cancel: Callable[[], None] | None = None, device: torch.device | str | None = None,
                   roots: Sequence[Path] = ()) -> tuple[TrainingResult, Path]:
    """Refuse an existing ``custom/<name>`` first, train ``model`` (a private copy) on ``pairs``, save it; a
    cancelled or failed training leaves no folder."""
    check_free(rewards_root, name)
    result = train_preference_reward(model, pairs, config, progress=progress, check_cancel=check_cancel, device=device)
    folder = save_custom_reward(model, rewards_root, name, base_reward=base_reward, base_folder=base_folder,
                                dataset=dataset, result=result, config=config, roots=roots)
    return result, folder


def format_report(result: TrainingResult, *, dataset: str, base_reward: str, name: str, folder: Path,
                  skipped: Sequence[str] = ()) -> str:
    def pct(x):
        return "n/a" if x is None else f"{100 * x:.1f}%"

    lines = [
        f"dataset '{dataset}': {result.pairs} pair(s) -> {result.train_pairs} trained on, "
        f"{result.held_out_pairs} held out",
        f"held-out pair accuracy: {pct(result.accuracy_before)} -> {pct(result.accuracy_after)}"
        + ("" if result.held_out_pairs else " (a single pair: nothing held out)"),
        f"training pair accuracy: {pct(result.train_accuracy_before)} -> {pct(result.train_accuracy_after)}",
        f"{result.steps} step(s) from {base_reward}, final loss "
        + (f"{result.losses[-1]:.4f}" if result.losses else "n/a") + f", {result.seconds:.1f} s",
    ]
    if result.freeze is not None:
        lines.append(result.freeze.describe())
    if skipped:
        lines.append(f"left out {len(skipped)} pair(s) whose image files are missing (e.g. {skipped[0]})")
    lines += [f"saved: {folder}", f"use it in ReNO Load Reward as: {CUSTOM_DIR}/{name}"]
    return "\n".join(lines)
