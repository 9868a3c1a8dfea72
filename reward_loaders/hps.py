"""HPSv2 / HPSv2.1: open_clip ViT-H-14 fine-tuned on human preferences; score = cos(image, text).

``hpsv2.1/HPS_v2.1_compressed.pt`` and ``hpsv2/HPS_v2_compressed.pt`` (HF xswu/HPSv2) hold
``{"state_dict": ...}`` in open_clip's ViT-H-14 layout. They load into this pack's own open_clip
implementation (``open_clip_model``), never through the ``open_clip_torch``/``hpsv2`` packages, and
only with ``torch.load(weights_only=True)``: a file that needs code to unpickle is refused.

The CLIP BPE tokenizer is the same for every CLIP model, so only the checkpoint has to be in the
folder: ``find_clip_tokenizer`` takes the folder's own ``vocab.json`` + ``merges.txt`` (or
``tokenizer.json``), else the host's bundled CLIP tokenizer (ComfyUI's ``comfy/sd1_tokenizer/``),
else another reward folder's CLIP tokenizer files, else open_clip's ``bpe_simple_vocab_16e6.txt.gz``;
the registry downloads the files only when none of these exists.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch

from . import open_clip_model as ocm
from . import paths
from .base import RewardModel
from .errors import RewardLoadError
from .open_clip_model import CONFIG_SIDECAR, CLIPBPETokenizer, OpenCLIP, build_open_clip, read_model_config

log = logging.getLogger(__name__)

HPS_FILES = {"hpsv2.1": "HPS_v2.1_compressed.pt", "hpsv2": "HPS_v2_compressed.pt"}
HPS_SOURCE = "https://huggingface.co/xswu/HPSv2"


# -- the CLIP tokenizer: the folder's own, else a local copy of the same vocabulary ------------------

# reward folders (under any reno_rewards root) whose CLIP tokenizer files are the same vocabulary
CLIP_TOKENIZER_FOLDERS = ("pickscore", "clipscore", "hpsv2.1", "hpsv2", "aesthetic/clip")
# the OpenAI CLIP BPE vocabulary every CLIP model uses: 49,408 tokens, the last two the start and end
# tokens, 48,894 merges; a borrowed tokenizer must be exactly this one
CLIP_VOCAB_SIZE, CLIP_SOT_ID, CLIP_EOT_ID, CLIP_MERGES = 49408, 49406, 49407, 48894


@dataclass(frozen=True)
class TokenizerFiles:
    """Where a CLIP tokenizer is read from: ``kind`` is "vocab+merges", "tokenizer.json" or "bpe.gz"."""

    kind: str
    files: tuple[Path, ...]
    origin: str  # for messages: "the reward folder", "ComfyUI's bundled CLIP tokenizer", ...

    def load(self, context_length: int = 77) -> CLIPBPETokenizer:
        if self.kind == "vocab+merges":
            return CLIPBPETokenizer.from_vocab_merges(self.files[0], self.files[1], context_length)
        if self.kind == "tokenizer.json":
            return CLIPBPETokenizer.from_tokenizer_json(self.files[0], context_length)
        return CLIPBPETokenizer.from_bpe_gz(self.files[0], context_length)


def _files_in(folder: Path, origin: str) -> TokenizerFiles | None:
    vocab, merges, tok_json = folder / "vocab.json", folder / "merges.txt", folder / "tokenizer.json"
    if vocab.is_file() and merges.is_file():
        return TokenizerFiles("vocab+merges", (vocab, merges), origin)
    if tok_json.is_file():
        return TokenizerFiles("tokenizer.json", (tok_json,), origin)
    return None


_checked: dict[tuple, bool] = {}


def _is_the_clip_vocabulary(candidate: TokenizerFiles) -> bool:
    """Whether borrowed files hold exactly the CLIP vocabulary (a tiny or extended one is not borrowed)."""
    try:
        key = tuple((str(f), f.stat().st_mtime_ns, f.stat().st_size) for f in candidate.files)
    except OSError:
        return False
    if key not in _checked:
        try:
            tok = candidate.load()
            _checked[key] = (len(tok.encoder) == CLIP_VOCAB_SIZE and len(tok.ranks) == CLIP_MERGES
                             and (tok.sot_id, tok.eot_id) == (CLIP_SOT_ID, CLIP_EOT_ID) and tok.max_id == CLIP_EOT_ID)
        except RewardLoadError as e:
            log.warning("ReNO: not using the CLIP tokenizer files %s: %s", ", ".join(map(str, candidate.files)), e)
            _checked[key] = False
    return _checked[key]


def clip_tokenizer_candidates(folder: Path, roots: Iterable[Path] | None = None) -> list[TokenizerFiles]:
    """Every place a CLIP tokenizer for the reward in ``folder`` could come from, in order (unchecked)."""
    folder = Path(folder)
    found = [f for f in [_files_in(folder, "the reward folder")] if f]
    for d in paths.host_clip_tokenizer_dirs():
        found += [f for f in [_files_in(d, "the host's bundled CLIP tokenizer")] if f]
    search = [folder.parent, *(roots if roots is not None else paths.search_dirs())]
    seen = {folder.resolve()}
    for root in search:
        for sub in CLIP_TOKENIZER_FOLDERS:
            other = Path(root) / sub
            key = other.resolve()
            if key in seen:
                continue
            seen.add(key)
            found += [f for f in [_files_in(other, f"the {sub} reward's files")] if f]
    bundled = ocm.bundled_bpe_path()
    if bundled is not None:
        found.append(TokenizerFiles("bpe.gz", (bundled,), "open_clip's bundled BPE file"))
    return found


def find_clip_tokenizer(folder: Path, roots: Iterable[Path] | None = None) -> TokenizerFiles | None:
    """The first usable CLIP tokenizer for the reward in ``folder``: its own files (whatever they are),
    else a local copy of the CLIP vocabulary (the host's, another reward's, open_clip's); None if none."""
    for candidate in clip_tokenizer_candidates(folder, roots):
        if candidate.origin == "the reward folder" or candidate.kind == "bpe.gz" or _is_the_clip_vocabulary(candidate):
            return candidate
    return None


def load_hps_tokenizer(folder: Path, context_length: int = 77, name: str = "reward",
                       roots: Iterable[Path] | None = None) -> CLIPBPETokenizer:
    """The CLIP tokenizer of the HPS reward in ``folder`` (see ``find_clip_tokenizer``), or an error saying
    which files to put where."""
    folder = Path(folder)
    found = find_clip_tokenizer(folder, roots)
    if found is None:
        present = [n for n in ("vocab.json", "merges.txt") if (folder / n).is_file()]
        raise RewardLoadError(
            f"{name}: the CLIP tokenizer files are missing: put vocab.json and merges.txt in {folder} "
            f"(from {ocm.LAION_CLIP_H}/tree/main)" + (f"; only {present[0]} is there" if present else "")
            + ". No local copy was found either (ComfyUI's comfy/sd1_tokenizer, another reward folder's "
            f"CLIP tokenizer: {', '.join(CLIP_TOKENIZER_FOLDERS)}, or the open_clip package)."
        )
    if found.origin != "the reward folder":
        log.info("ReNO: %s: no CLIP tokenizer files in %s; using %s (%s)", name, folder, found.origin,
                 ", ".join(map(str, found.files)))
    return found.load(context_length)


def load_torch_file(path: Path, name: str):
    """``torch.load(path, map_location="cpu", weights_only=True)`` with errors that say what is wrong."""
    try:
        return torch.load(str(path), map_location="cpu", weights_only=True)
    except MemoryError:
        raise
    except Exception as e:  # noqa: BLE001 - refused, truncated, corrupt or not a PyTorch file
        text = str(e)
        needs_code = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if needs_code:
            raise RewardLoadError(
                f"{name}: {path} needs code to be unpickled (it refers to {needs_code.group(1)}, not only to tensors). "
                "For safety this pack only loads plain tensor checkpoints (torch.load weights_only=True), and this "
                "is not the official file: download it again from its source."
            ) from e
        reason = text.split("WeightsUnpickler error:", 1)[-1].strip() if "WeightsUnpickler error:" in text else text
        reason = next((line.strip() for line in reason.splitlines() if line.strip()), "").rstrip(".") or "no details"
        size = path.stat().st_size if path.exists() else 0
        raise RewardLoadError(
            f"{name}: could not read {path} ({size:,} bytes): {type(e).__name__}: {reason}. "
            "The file is truncated, corrupt or not a PyTorch checkpoint: download it again."
        ) from e


def unwrap_state_dict(obj, path: Path, name: str, wrapper_key: str | None = "state_dict") -> dict[str, torch.Tensor]:
    """The tensor dict inside a loaded checkpoint: ``obj[wrapper_key]`` or ``obj`` itself, with a
    ``module.`` prefix (saved from DistributedDataParallel) removed."""
    if isinstance(obj, dict) and wrapper_key is not None and isinstance(obj.get(wrapper_key), dict):
        obj = obj[wrapper_key]
    if not isinstance(obj, dict) or not obj:
        raise RewardLoadError(
            f"{name}: {path} does not hold a state dict (a mapping of parameter names to tensors) but "
            f"{'an empty dict' if isinstance(obj, dict) else type(obj).__name__}. It is not this reward's checkpoint."
        )
    not_tensors = [str(k) for k, v in obj.items() if not isinstance(k, str) or not torch.is_tensor(v)]
    if not_tensors:
        shown = ", ".join(not_tensors[:5]) + (" ..." if len(not_tensors) > 5 else "")
        raise RewardLoadError(
            f"{name}: {path} is not a plain state dict: {len(not_tensors)} entries are not tensors ({shown}). "
            "It is not this reward's checkpoint."
        )
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return dict(obj)


class HPSReward(RewardModel):
    """``score = cos(image_features, text_features)`` of an HPS open_clip model (the loss is ``1 - score``)."""

    text_modules = ("clip.transformer", "clip.token_embedding", "clip.ln_final")

    def __init__(self, clip: OpenCLIP, tokenizer: CLIPBPETokenizer, name: str, offset: float, source: str = ""):
        super().__init__()
        self.clip = clip.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.name, self.offset, self.source = name, offset, source
        self.input_size = clip.image_size
        self.eval()

    def encode_text(self, prompt: str) -> torch.Tensor:
        self.warn_if_truncated(self.tokenizer.token_count(prompt), self.clip.context_length)
        ids = self.tokenizer([prompt], context_length=self.clip.context_length).to(self.param_device())
        return self.clip.encode_text(ids)

    def image_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(pixel_values)

    def score(self, pixel_values: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        image = self.image_features(pixel_values)
        return (image * text_features.to(image.device, torch.float32)).sum(dim=-1)


def load_hps_folder(folder: Path, name: str, offset: float = 1.0, roots: Iterable[Path] | None = None) -> HPSReward:
    """Build an HPS reward from ``folder``: the checkpoint of ``name`` ("hpsv2.1" or "hpsv2"), the optional
    ``open_clip_config.json`` (head counts of a non-ViT-H-14 checkpoint) and the CLIP tokenizer
    (``load_hps_tokenizer``; ``roots`` are the reno_rewards folders to borrow it from)."""
    folder = Path(folder)
    if name not in HPS_FILES:
        raise ValueError(f"unknown HPS version {name!r}: expected one of {', '.join(HPS_FILES)}")
    path = folder / HPS_FILES[name]
    if not path.is_file():
        raise RewardLoadError(f"{name}: {path} does not exist: download {HPS_FILES[name]} from {HPS_SOURCE}")
    state_dict = unwrap_state_dict(load_torch_file(path, name), path, name)
    sidecar = folder / CONFIG_SIDECAR
    model_cfg = read_model_config(sidecar) if sidecar.is_file() else None
    source = f"{name}: {path}" + (f" (with {sidecar.name})" if model_cfg is not None else "")
    clip = build_open_clip(state_dict, model_cfg, source)
    del state_dict
    tokenizer = load_hps_tokenizer(folder, clip.context_length, name, roots)
    if tokenizer.max_id >= clip.config.vocab_size:
        raise RewardLoadError(
            f"{name}: the tokenizer in {folder} ({tokenizer.source}) has ids up to {tokenizer.max_id} but the model's "
            f"vocabulary has {clip.config.vocab_size} entries: the tokenizer files do not belong to this checkpoint."
        )
    return HPSReward(clip, tokenizer, name=name, offset=offset, source=str(folder))
