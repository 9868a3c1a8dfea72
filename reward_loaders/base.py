"""The reward interface: images in [0, 1] + a prompt -> one differentiable score per image."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from ..optimizer.objective import reward_loss, weighted_total
from .preprocess import CLIP_MEAN, CLIP_STD, clip_preprocess

log = logging.getLogger(__name__)


#: prompts whose text features a reward keeps (a LoRA training set cycles through all of its prompts)
TEXT_CACHE_SIZE = 256

class RewardModel(nn.Module):
    """Base class of every reward.

    Subclasses set ``name`` and ``offset`` (the constant ``c`` of the loss ``c - score`` used by the
    official ReNO code: it does not change gradients, only the reported loss) and implement
    ``encode_text`` and ``score``. ``score`` is the reward's native value, as its authors compute it.
    The module is a plain container (not a transformers model) so that ComfyUI's model manager can
    set its bookkeeping attributes on it.
    """

    name: str = "reward"
    offset: float = 0.0
    fp32_modules: tuple[str, ...] = ()  # submodules kept in float32 when the towers run in half precision
    text_modules: tuple[str, ...] = ()  # submodules only ``encode_text`` uses (once per prompt): offloadable
    input_size: int = 224
    mean: tuple[float, ...] = CLIP_MEAN
    std: tuple[float, ...] = CLIP_STD
    source: str = ""  # where the weights were loaded from, for messages and reports

    def __init__(self):
        super().__init__()
        self._text_cache: dict[str, torch.Tensor] = {}
        self._text_offload: torch.device | None = None

    # -- to implement -------------------------------------------------------------------------
    def encode_text(self, prompt: str) -> torch.Tensor:
        """Text features for one prompt, computed without gradients."""
        raise NotImplementedError

    def score(self, pixel_values: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """(B, 3, S, S) preprocessed pixels + text features -> (B,) float32 scores."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    def _image_side_parameters(self):
        """Parameters outside the text towers (which may sit on the offload device)."""
        prefixes = tuple(n + "." for n in self.text_modules)
        for name, t in self.named_parameters():
            if not name.startswith(prefixes):
                yield t

    def param_device(self) -> torch.device:
        for t in self._image_side_parameters():
            return t.device
        return torch.device("cpu")

    def param_dtype(self) -> torch.dtype:
        for t in self._image_side_parameters():
            if t.is_floating_point():
                return t.dtype
        return torch.float32

    def offload_text_towers(self, device: torch.device | str = "cpu") -> int:
        """Keep the text-only submodules on ``device`` (text features are computed once per prompt, so the
        GPU needs them only then); returns the bytes moved. ``text_features`` brings them back for a new prompt."""
        moved = 0
        self._text_offload = torch.device(device)
        for name in self.text_modules:
            module = self.get_submodule(name)
            moved += sum(t.numel() * t.element_size() for t in module.parameters() if t.device != self._text_offload)
            module.to(self._text_offload)
        return moved

    @contextlib.contextmanager
    def _text_towers_on_device(self):
        offload = self._text_offload
        if offload is None or not self.text_modules or offload == self.param_device():
            yield
            return
        device = self.param_device()
        for name in self.text_modules:
            self.get_submodule(name).to(device)
        try:
            yield
        finally:
            for name in self.text_modules:
                self.get_submodule(name).to(offload)

    def set_compute_dtype(self, dtype: torch.dtype) -> RewardModel:
        """Run the towers in ``dtype`` (fp16/bf16 on GPUs); heads in ``fp32_modules`` stay float32."""
        self.to(dtype)
        for name in self.fp32_modules:
            self.get_submodule(name).float()
        return self

    def compiled_score(self):
        """``score`` through ``torch.compile`` (built once per model; it recompiles for a new batch size,
        dtype or checkpointing choice)."""
        fn = self.__dict__.get("_compiled_score")
        if fn is None:
            fn = torch.compile(self.score, dynamic=False)
            object.__setattr__(self, "_compiled_score", fn)
        return fn

    def warn_if_truncated(self, n_tokens: int, limit: int, whose: str = "CLIP's") -> None:
        """Say so when a prompt is longer than the text encoder reads (the rest is not scored)."""
        if n_tokens > limit:
            log.warning("%s: the prompt has %d tokens; only the first %d are scored (%s limit)",
                        self.name, n_tokens, limit, whose)

    def preprocess_key(self) -> tuple:
        return (self.input_size, tuple(self.mean), tuple(self.std))

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        return clip_preprocess(images, self.input_size, self.mean, self.std)

    def text_features(self, prompt: str) -> torch.Tensor:
        """Cached text features on the model's current device (computed once per prompt).

        Features cached under inference mode (e.g. by a scoring node) are recomputed for a ReNO run:
        an inference tensor cannot be saved for backward. Every reward's text goes through here, so the
        prompt is made encodable here once for all (``clean_prompt``).
        """
        feats = self._text_cache.get(prompt)
        stale = feats is not None and feats.is_inference() and not torch.is_inference_mode_enabled()
        if feats is None or stale or feats.device != self.param_device():
            with torch.no_grad(), self._text_towers_on_device():
                feats = self.encode_text(clean_prompt(prompt, self.name))
            self._text_cache.pop(prompt, None)
            while len(self._text_cache) >= TEXT_CACHE_SIZE:  # evict the least recently used prompt, not all of them
                self._text_cache.pop(next(iter(self._text_cache)))
            self._text_cache[prompt] = feats
        else:
            self._text_cache[prompt] = self._text_cache.pop(prompt)  # most recently used last
        return feats

    def forward(self, images: torch.Tensor, prompt: str) -> torch.Tensor:
        """(B, C, H, W) images in [0, 1] -> (B,) scores."""
        images = images.to(self.param_device())
        return self.score(self.preprocess(images).to(self.param_dtype()), self.text_features(prompt))


def clean_prompt(prompt: str, who: str = "reward") -> str:
    """``prompt`` with each unpaired UTF-16 surrogate (``"\\ud800"``: JSON and Python strings can carry one, UTF-8
    cannot) replaced by U+FFFD, and a surrogate pair joined into its character; a warning says so.

    No tokenizer can encode a lone surrogate (the fast ones raise a bare ``TypeError``), so the prompt is cleaned
    rather than refused: the rest of it still scores, as with any character the vocabulary lacks.
    """
    if not isinstance(prompt, str) or not any("\ud800" <= c <= "\udfff" for c in prompt):
        return prompt
    unpaired, i = [], 0
    while i < len(prompt):
        if "\ud800" <= prompt[i] <= "\udbff" and i + 1 < len(prompt) and "\udc00" <= prompt[i + 1] <= "\udfff":
            i += 2  # a high + low pair: one character, joined by the decode below
            continue
        if "\ud800" <= prompt[i] <= "\udfff":
            unpaired.append(i)
        i += 1
    cleaned = prompt.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
    if unpaired:
        log.warning("%s: the prompt (the 'prompt' input of the ReNO node) has %d unpaired surrogate character(s) "
                    "(the first, U+%04X, at position %d), which no tokenizer can encode: they are replaced by U+FFFD "
                    "(the rest of the prompt is scored as written)", who, len(unpaired), ord(prompt[unpaired[0]]), unpaired[0])
    return cleaned


def float32_stack(layers: Iterable[nn.Module], x: torch.Tensor) -> torch.Tensor:
    """Run a Linear/Dropout stack (a reward head) in float32, whatever dtype the rest of the model uses."""
    x = x.float()
    for m in layers:
        x = torch.nn.functional.linear(x, m.weight.float(), m.bias.float()) if isinstance(m, nn.Linear) else m(x)
    return x


@dataclass(frozen=True)
class WeightedReward:
    """One entry of a RENO_REWARDS stack."""

    name: str
    weight: float
    model: RewardModel
    gradient_checkpointing: bool = False  # the loader asked for its blocks to recompute in backward (a run's plan)


class RewardEnsemble:
    """The weighted sum of several rewards for one prompt: ReNO's objective.

    ``ensemble(images)`` returns ``(loss, scores)``: ``loss`` (B,) is ``sum_i w_i (c_i - score_i)`` (``reward_loss``)
    and ``scores`` maps each reward's label to its (B,) native score. Preprocessing shared by several
    rewards (same size and normalization) is computed once per call. ``compile`` scores through
    ``torch.compile`` (not while ``around`` instruments a pass). The ensemble holds no other run state:
    which blocks recompute in backward is installed around a run by its owner (``nodes/lifecycle.py``,
    or ``optimizer.memory.wrap_blocks`` in library use), never set on the shared reward models.
    """

    def __init__(self, rewards: Sequence[WeightedReward], prompt: str, compile: bool = False):
        if not rewards:
            raise ValueError("no reward connected: add at least one 'ReNO Load Reward' node")
        self.rewards = list(rewards)
        self.prompt = prompt
        self.labels = unique_labels([r.name for r in self.rewards])
        self.compile = bool(compile)

    def prepare(self) -> None:
        """Compute every reward's text features now (once per prompt, not once per iteration)."""
        for r in self.rewards:
            r.model.text_features(self.prompt)

    def scores(self, images: torch.Tensor, around: Callable[[str], contextlib.AbstractContextManager] | None = None
               ) -> dict[str, torch.Tensor]:
        """(B, C, H, W) in [0, 1] -> {label: (B,) float32 score}; ``around(label)`` wraps each reward's work."""
        prepared: dict[tuple, torch.Tensor] = {}
        out: dict[str, torch.Tensor] = {}
        for label, r in zip(self.labels, self.rewards):
            m = r.model
            with around(label) if around is not None else contextlib.nullcontext():
                device, dtype = m.param_device(), m.param_dtype()
                key = (*m.preprocess_key(), device, dtype)
                pixels = prepared.get(key)
                if pixels is None:
                    pixels = prepared[key] = m.preprocess(images.to(device)).to(dtype)
                score = m.compiled_score() if self.compile and around is None else m.score
                out[label] = score(pixels, m.text_features(self.prompt)).float()
        return out

    def __call__(self, images: torch.Tensor, around: Callable[[str], contextlib.AbstractContextManager] | None = None
                 ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        scores = self.scores(images, around)
        loss = reward_loss((r.weight, r.model.offset, scores[label].to(images.device))
                           for label, r in zip(self.labels, self.rewards))
        return loss, scores

    def weighted_total(self, scores: dict[str, torch.Tensor]) -> torch.Tensor:
        """sum_i w_i score_i, the figure ReNO Score Images reports."""
        return weighted_total((r.weight, scores[label]) for label, r in zip(self.labels, self.rewards))



def unique_labels(names: Sequence[str]) -> list[str]:
    """'pickscore', 'pickscore' -> 'pickscore', 'pickscore#2' (a reward may be chained twice)."""
    counts: dict[str, int] = {}
    labels = []
    for n in names:
        counts[n] = counts.get(n, 0) + 1
        labels.append(n if counts[n] == 1 else f"{n}#{counts[n]}")
    return labels
