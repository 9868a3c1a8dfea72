"""HPSv3 (Ma, Shui et al., ICCV 2025): a Qwen2-VL-7B reward model; score = the mean (mu) of its output head.

Files, under ``models/reno_rewards/hpsv3/``:

* ``HPSv3.safetensors`` (HF MizzenAI/HPSv3): the state dict of the authors' ``Qwen2VLRewardModelBT``, saved with
  transformers 4.45: ``visual.*`` (the Qwen2-VL vision tower and patch merger), ``model.*`` (the Qwen2 decoder; its
  token embedding resized to the tokenizer plus the added ``<|Reward|>`` token), ``lm_head.weight`` (unused here,
  not loaded), ``rm_head.{0,3,5}.*`` (the "ranknet" head: Linear(hidden, 1024), ReLU, Dropout, Linear(1024, 16),
  ReLU, Linear(16, 2) -> (mu, sigma)). A later transformers layout (``model.language_model.*``, ``model.visual.*``)
  is read too.
* from HF Qwen/Qwen2-VL-7B-Instruct: ``config.json`` (the architecture; the vocabulary size is read from the
  checkpoint), ``vocab.json`` + ``merges.txt`` (or ``tokenizer.json``), ``tokenizer_config.json`` and
  ``preprocessor_config.json`` (patch sizes, mean, std). Not the 16 GB of base weights: the checkpoint holds them all.

Everything runs on transformers' own Qwen2-VL modules (``Qwen2VisionTransformerPretrainedModel``,
``Qwen2VLTextModel``) with this pack's code around them, never through the ``hpsv3`` package. What the authors'
``HPSv3RewardInferencer.reward`` does, redone differentiably in torch:

* the image is resized (bicubic, antialiased) to ``smart_resize(h, w, 28, 256*28*28, 256*28*28)`` (the authors fix
  min and max pixels to 256 merged 28-pixel tokens: 448x448 for a square image), scaled to [0, 1] and normalized with
  the processor's mean and std; then Qwen2-VL's patching: the frame repeated to the temporal patch of 2, cut in 14-pixel
  patches grouped by 2x2 merge windows -> ``pixel_values`` (n, 3*2*14*14) and ``image_grid_thw`` (1, h/14, w/14);
* the text is Qwen2-VL's chat template applied to one user message (the image, then the authors' instruction with the
  prompt and the ``<|Reward|>`` token), with a generation prompt; its ``<|image_pad|>`` repeated once per merged token;
* the decoder runs on the token embeddings with the image features in place of the image tokens, with plain
  sequential positions (the authors call the decoder directly, so no 3-D multimodal rope index is built), and the
  head reads the hidden state at ``<|Reward|>``: its first output (mu) is the score (the authors: "we select miu as
  the final output").
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .base import RewardModel
from .errors import RewardLoadError, compare_shapes, key_report
from .preprocess import CLIP_MEAN, CLIP_STD, as_rgb

log = logging.getLogger(__name__)

CHECKPOINT = "HPSv3.safetensors"
HPSV3_REPO = "MizzenAI/HPSv3"
QWEN2VL_REPO = "Qwen/Qwen2-VL-7B-Instruct"
REWARD_TOKEN = "<|Reward|>"
IMAGE_PAD = "<|image_pad|>"
# the authors' HPSv3RewardInferencer.prepare_batch: min_pixels = max_pixels = 256 * 28 * 28
PIXELS = 256 * 28 * 28
MAX_RATIO = 200
# a half-precision checkpoint larger than this stays in its dtype on load (float32 would double a 16 GB model)
KEEP_HALF_BYTES = 4 * 1024 ** 3

# The authors' instruction (hpsv3/dataset/data_collator_qwen.py, INSTRUCTION + prompt_with_special_token), verbatim:
# the reward head was trained on hidden states of exactly this text.
INSTRUCTION = (
    '\n'
    'You are tasked with evaluating a generated image based on Visual Quality and Text Alignment and '
    'give a overall score to estimate the human preference. Please provide a rating from 0 to 10, with 0 '
    'being the worst and 10 being the best. \n'
    '\n'
    '**Visual Quality:**  \n'
    'Evaluate the overall visual quality of the image. The following sub-dimensions should be '
    'considered:\n'
    '- **Reasonableness:** The image should not contain any significant biological or logical errors, '
    'such as abnormal body structures or nonsensical environmental setups.\n'
    '- **Clarity:** Evaluate the sharpness and visibility of the image. The image should be clear and '
    'easy to interpret, with no blurring or indistinct areas.\n'
    '- **Detail Richness:** Consider the level of detail in textures, materials, lighting, and other '
    'visual elements (e.g., hair, clothing, shadows).\n'
    '- **Aesthetic and Creativity:** Assess the artistic aspects of the image, including the color '
    'scheme, composition, atmosphere, depth of field, and the overall creative appeal. The scene should '
    'convey a sense of harmony and balance.\n'
    '- **Safety:** The image should not contain harmful or inappropriate content, such as political, '
    'violent, or adult material. If such content is present, the image quality and satisfaction score '
    'should be the lowest possible. \n'
    '\n'
    '**Text Alignment:**  \n'
    'Assess how well the image matches the textual prompt across the following sub-dimensions:\n'
    '- **Subject Relevance** Evaluate how accurately the subject(s) in the image (e.g., person, animal, '
    'object) align with the textual description. The subject should match the description in terms of '
    'number, appearance, and behavior.\n'
    '- **Style Relevance:** If the prompt specifies a particular artistic or stylistic style, evaluate '
    'how well the image adheres to this style.\n'
    '- **Contextual Consistency**: Assess whether the background, setting, and surrounding elements in '
    'the image logically fit the scenario described in the prompt. The environment should support and '
    'enhance the subject without contradictions.\n'
    '- **Attribute Fidelity**: Check if specific attributes mentioned in the prompt (e.g., colors, '
    'clothing, accessories, expressions, actions) are faithfully represented in the image. Minor '
    'deviations may be acceptable, but critical attributes should be preserved.\n'
    '- **Semantic Coherence**: Evaluate whether the overall meaning and intent of the prompt are '
    'captured in the image. The generated content should not introduce elements that conflict with or '
    'distort the original description.\n'
    'Textual prompt - {text_prompt}\n'
    '\n'
    '\n'
)
PROMPT_WITH_SPECIAL_TOKEN = "\nPlease provide the overall ratings of this image: <|Reward|>\n\nEND\n"
# Qwen2-VL-7B-Instruct's chat template rendered for [{"role": "user", "content": [image, text]}] with
# add_generation_prompt=True (no system message given, so the template adds its default one)
CHAT_PREFIX = "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
IMAGE_SLOT = "<|vision_start|>" + IMAGE_PAD + "<|vision_end|>"
CHAT_SUFFIX = "<|im_end|>\n<|im_start|>assistant\n"


def hpsv3_text(prompt: str) -> str:
    """The text the authors score an image with, with one ``<|image_pad|>`` (repeated per image token later)."""
    return CHAT_PREFIX + IMAGE_SLOT + INSTRUCTION.format(text_prompt=prompt) + PROMPT_WITH_SPECIAL_TOKEN + CHAT_SUFFIX


def smart_resize(height: int, width: int, factor: int = 28, min_pixels: int = PIXELS,
                 max_pixels: int = PIXELS) -> tuple[int, int]:
    """Qwen2-VL's target size (qwen-vl-utils' ``smart_resize``, as the authors' ``fetch_image`` calls it): both sides
    multiples of ``factor``, the area within [min_pixels, max_pixels], the aspect kept; the same float arithmetic."""
    if max(height, width) / min(height, width) > MAX_RATIO:
        raise ValueError(f"HPSv3: the image's aspect ratio must be below {MAX_RATIO}, got "
                         f"{max(height, width) / min(height, width)} ({height}x{width})")
    h_bar = max(factor, round(height / factor) * factor)
    w_bar = max(factor, round(width / factor) * factor)
    if h_bar * w_bar > max_pixels:
        beta = math.sqrt((height * width) / max_pixels)
        h_bar = math.floor(height / beta / factor) * factor
        w_bar = math.floor(width / beta / factor) * factor
    elif h_bar * w_bar < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h_bar = math.ceil(height * beta / factor) * factor
        w_bar = math.ceil(width * beta / factor) * factor
    return h_bar, w_bar


def qwen2vl_patches(pixels: torch.Tensor, patch: int = 14, temporal: int = 2, merge: int = 2
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, C, H, W) normalized images -> Qwen2-VL's ``pixel_values`` (B*H/p*W/p, C*temporal*p*p) and
    ``image_grid_thw`` (B, 3): each image is one frame repeated to the temporal patch, as the processor tiles it; the
    rows go merge window by merge window (the processor's numpy reshape/transpose, in torch)."""
    b, c, h, w = pixels.shape
    gh, gw = h // patch, w // patch
    x = pixels.unsqueeze(1).expand(b, temporal, c, h, w)
    x = x.reshape(b, temporal, c, gh // merge, merge, patch, gw // merge, merge, patch)
    x = x.permute(0, 3, 6, 4, 7, 2, 1, 5, 8)
    flat = x.reshape(b * gh * gw, c * temporal * patch * patch)
    grid = torch.tensor([[1, gh, gw]] * b, dtype=torch.long, device=pixels.device)
    return flat, grid


def ranknet_head(shapes: dict[str, tuple[int, ...]]) -> nn.Module:
    """The reward head of the checkpoint's shapes: the "ranknet" Sequential (keys 0, 3, 5) or one bias-free Linear."""
    if "rm_head.weight" in shapes:  # rm_head_type "default"
        o, i = shapes["rm_head.weight"]
        return nn.Linear(i, o, bias=False)
    try:
        (h1, i), (h2, _), (o, _) = shapes["rm_head.0.weight"], shapes["rm_head.3.weight"], shapes["rm_head.5.weight"]
    except KeyError:
        raise RewardLoadError("no reward head (rm_head.0/3/5 or rm_head.weight)") from None
    return nn.Sequential(nn.Linear(i, h1), nn.ReLU(), nn.Dropout(0.05), nn.Linear(h1, h2), nn.ReLU(),
                         nn.Linear(h2, o, bias="rm_head.5.bias" in shapes))


class HPSv3Reward(RewardModel):
    """``score = mu``: the first output of the reward head at the ``<|Reward|>`` token (the loss is ``offset - mu``).

    ``text_features(prompt)`` are the token embeddings of the scoring text (``hpsv3_text``, one ``<|image_pad|>``)
    with a column marking the image slot and ``<|Reward|>``; the number of image tokens follows the image's size, so
    the vision tower's output is spliced into the slot per call in ``score``.
    """

    fp32_modules = ("rm_head",)
    text_modules = ("language_model.embed_tokens",)

    def __init__(self, visual: nn.Module, language_model: nn.Module, rm_head: nn.Module, tokenizer, *,
                 image_token_id: int, reward_token_id: int, name: str = "hpsv3", offset: float = 10.0,
                 mean=CLIP_MEAN, std=CLIP_STD, patch: int = 14, temporal: int = 2, merge: int = 2,
                 source: str = ""):
        super().__init__()
        self.visual = visual.eval().requires_grad_(False)
        self.language_model = language_model.eval().requires_grad_(False)
        self.rm_head = rm_head.eval().requires_grad_(False)
        self.tokenizer = tokenizer
        self.image_token_id, self.reward_token_id = int(image_token_id), int(reward_token_id)
        self.name, self.offset, self.source = name, offset, source
        self.mean, self.std = tuple(float(v) for v in mean), tuple(float(v) for v in std)
        self.patch, self.temporal, self.merge = int(patch), int(temporal), int(merge)
        self.factor = self.patch * self.merge
        self.input_size = int(math.isqrt(PIXELS))  # 448: the side of a square image (for reports only)
        self.eval()

    # -- text ---------------------------------------------------------------------------------------
    def token_ids(self, prompt: str) -> torch.Tensor:
        """The scoring text's token ids (``hpsv3_text``), with one ``<|image_pad|>``."""
        ids = self.tokenizer(hpsv3_text(prompt), add_special_tokens=False)["input_ids"]
        ids = torch.tensor(ids, dtype=torch.long)
        if int((ids == self.image_token_id).sum()) != 1 or int((ids == self.reward_token_id).sum()) != 1:
            raise ValueError(f"{self.name}: the prompt may not contain the special tokens {IMAGE_PAD} or {REWARD_TOKEN}")
        return ids

    def encode_text(self, prompt: str) -> torch.Tensor:
        """(L, hidden + 1): the token embeddings of ``token_ids`` and a last column marking the image slot (1) and
        ``<|Reward|>`` (2). The embedding table (1 GB in bf16) is then needed once per prompt: a text module."""
        embed = self.language_model.embed_tokens
        ids = self.token_ids(prompt).to(embed.weight.device)
        kind = (ids == self.image_token_id).to(embed.weight.dtype) + 2 * (ids == self.reward_token_id).to(embed.weight.dtype)
        return torch.cat([embed(ids), kind[:, None]], dim=-1)

    # -- image --------------------------------------------------------------------------------------
    def preprocess_key(self) -> tuple:
        return ("qwen2vl", PIXELS, self.factor, self.mean, self.std)

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> (B, 3, h, w) normalized, h and w from ``smart_resize`` (multiples of 28)."""
        images = as_rgb(images)
        h, w = images.shape[-2:]
        new_h, new_w = smart_resize(h, w, self.factor, PIXELS, PIXELS)
        if (new_h, new_w) != (h, w):
            dtype = images.dtype
            if images.device.type == "cpu" and dtype in (torch.float16, torch.bfloat16):
                images = images.float()  # the antialiased bicubic kernel has no half-precision CPU version
            images = F.interpolate(images, size=(new_h, new_w), mode="bicubic", antialias=True,
                                   align_corners=False).to(dtype)
        m = torch.tensor(self.mean, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        s = torch.tensor(self.std, dtype=images.dtype, device=images.device).view(1, -1, 1, 1)
        return (images - m) / s

    def image_embeddings(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, h, w) preprocessed -> (B, h*w/28², hidden): the vision tower's merged tokens, per image."""
        flat, grid = qwen2vl_patches(pixels, self.patch, self.temporal, self.merge)
        out = self.visual(flat.to(self.visual.get_dtype()), grid_thw=grid)
        out = getattr(out, "pooler_output", out)  # transformers 5: an output object; 4.x: the merged tensor
        return out.reshape(pixels.shape[0], -1, out.shape[-1])

    def score(self, pixel_values: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        b = pixel_values.shape[0]
        image = self.image_embeddings(pixel_values)
        feats = text_features.to(image.device, self.language_model.norm.weight.dtype)
        kind, text = feats[:, -1], feats[:, :-1]
        at, reward = int((kind == 1).nonzero()[0, 0]), int((kind == 2).nonzero()[0, 0])
        before, after = text[:at], text[at + 1:]
        inputs = torch.cat([before.expand(b, -1, -1), image.to(text.dtype), after.expand(b, -1, -1)], dim=1)
        length = inputs.shape[1]
        # the authors call the decoder without position ids: sequential positions on all three rope axes
        positions = torch.arange(length, device=inputs.device).view(1, 1, -1).expand(3, b, -1)
        hidden = self.language_model(inputs_embeds=inputs, position_ids=positions, use_cache=False)
        hidden = getattr(hidden, "last_hidden_state", hidden[0] if isinstance(hidden, tuple) else hidden)
        x = hidden[:, reward + image.shape[1] - 1]  # the image slot's one row became image.shape[1] rows
        x = x.float() if x.dtype in (torch.float16, torch.bfloat16) else x  # the authors keep rm_head in float32
        for m in (self.rm_head if isinstance(self.rm_head, nn.Sequential) else [self.rm_head]):
            if isinstance(m, nn.Linear):
                x = F.linear(x, m.weight.to(x.dtype), None if m.bias is None else m.bias.to(x.dtype))
            else:
                x = m(x)
        return x[:, 0]


# -- loading ----------------------------------------------------------------------------------------------

def _checkpoint_name(key: str) -> str | None:
    """A checkpoint key -> this module's name (None: not loaded). transformers 4.45's layout first, then 5's."""
    for old, new in (("model.language_model.", "language_model."), ("model.visual.", "visual."),
                     ("visual.", "visual."), ("model.", "language_model."), ("rm_head.", "rm_head.")):
        if key.startswith(old):
            return new + key[len(old):]
    return None  # lm_head.weight: the language-model head, which the reward never uses


def _read_json(path: Path, name: str) -> dict:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise RewardLoadError(f"{name}: could not read {path}: {type(e).__name__}: {e}. Download it again from "
                              f"https://huggingface.co/{QWEN2VL_REPO}") from e
    if not isinstance(data, dict):
        raise RewardLoadError(f"{name}: {path} is not a JSON object")
    return data


def _rebuild_meta_buffers(root: nn.Module) -> None:
    """Modules built on the meta device whose buffers are not in the checkpoint (the rotary tables) are rebuilt on
    the CPU from their config."""
    for module_name, module in list(root.named_modules()):
        if any(b.is_meta for b in module.buffers(recurse=False)):
            config = getattr(module, "config", None)
            if config is None:
                raise RewardLoadError(f"cannot rebuild {module_name} ({type(module).__name__}): no config")
            fresh = type(module)(config)
            parent, _, child = module_name.rpartition(".")
            setattr(root.get_submodule(parent) if parent else root, child, fresh)


def load_hpsv3_folder(folder: Path, name: str = "hpsv3", offset: float = 10.0,
                      dtype: torch.dtype | None = None) -> HPSv3Reward:
    """Build HPSv3 from ``folder`` (``HPSv3.safetensors`` and the Qwen2-VL-7B-Instruct config, tokenizer and
    preprocessor files). ``dtype`` None: float32, except a half-precision checkpoint over 4 GB (the real one, about
    16 GB in bfloat16), which stays in its dtype (float32 would take about 33 GB of memory)."""
    from safetensors import safe_open
    from transformers import AddedToken, AutoTokenizer, Qwen2VLConfig
    from transformers.models.qwen2_vl import modeling_qwen2_vl as qm

    folder = Path(folder)
    path = folder / CHECKPOINT
    if not path.is_file():
        raise RewardLoadError(f"{name}: {path} does not exist: download {CHECKPOINT} from "
                              f"https://huggingface.co/{HPSV3_REPO}")
    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
            shapes = {k: tuple(f.get_slice(k).get_shape()) for k in keys}
            stored = {str(f.get_slice(k).get_dtype()) for k in keys}
    except Exception as e:  # noqa: BLE001 - truncated, corrupt or not a safetensors file
        raise RewardLoadError(f"{name}: could not read {path}: {type(e).__name__}: {e}. The file is truncated, "
                              "corrupt or not a safetensors file: download it again.") from e
    mapped = {_checkpoint_name(k): k for k in keys if _checkpoint_name(k) is not None}
    found = {n: shapes[k] for n, k in mapped.items()}
    embed = found.get("language_model.embed_tokens.weight")
    if embed is None:
        raise RewardLoadError(f"{name}: {path} holds no model.embed_tokens.weight: it is not an HPSv3 checkpoint "
                              f"(keys: {', '.join(keys[:5])} ...)")

    config = Qwen2VLConfig(**_read_json(folder / "config.json", name))
    text_config, vision_config = config.text_config, config.vision_config
    text_config.vocab_size = embed[0]  # resized by the authors to the tokenizer with <|Reward|>
    for c in (text_config, vision_config):
        c._attn_implementation = "sdpa"
    try:
        with torch.device("meta"):
            visual = qm.Qwen2VisionTransformerPretrainedModel(vision_config)
            language_model = qm.Qwen2VLTextModel(text_config)
            rm_head = ranknet_head({k: v for k, v in found.items() if k.startswith("rm_head.")})
    except RewardLoadError as e:
        raise RewardLoadError(f"{name}: {path}: {e}: it is not an HPSv3 checkpoint") from None
    modules = nn.ModuleDict({"visual": visual, "language_model": language_model, "rm_head": rm_head})
    expected = {k: tuple(v.shape) for k, v in modules.state_dict().items()}
    missing, unexpected, mismatched = compare_shapes(found, expected, (), "checkpoint", "config.json")
    if missing or unexpected or mismatched:
        raise RewardLoadError(
            f"{name}: {path} does not match {folder / 'config.json'}: {key_report(missing, unexpected, mismatched)}. "
            f"Put HPSv3.safetensors from {HPSV3_REPO} and the config.json of {QWEN2VL_REPO} in {folder}."
        )
    half = stored & {"BF16", "F16"}
    size = path.stat().st_size
    if dtype is None:
        dtype = (torch.bfloat16 if "BF16" in half else torch.float16) if half and size > KEEP_HALF_BYTES \
            else torch.float32
        if dtype != torch.float32:
            log.info("ReNO: %s: the %.1f GB checkpoint stays in %s on load", name, size / 1e9, dtype)
    tensors = {}
    with safe_open(str(path), framework="pt") as f:
        for n, k in mapped.items():
            tensors[n] = f.get_tensor(k).to(dtype)
    tensors.update({k: v.float() for k, v in tensors.items() if k.startswith("rm_head.")})
    modules.load_state_dict(tensors, strict=True, assign=True)
    del tensors
    _rebuild_meta_buffers(modules)

    pre = _read_json(folder / "preprocessor_config.json", name) if (folder / "preprocessor_config.json").is_file() \
        else {}
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
    except Exception as e:  # noqa: BLE001 - missing or foreign tokenizer files
        raise RewardLoadError(f"{name}: could not load the Qwen2-VL tokenizer from {folder}: {type(e).__name__}: "
                              f"{e}. The folder needs vocab.json and merges.txt (or tokenizer.json) and "
                              f"tokenizer_config.json of {QWEN2VL_REPO}.") from e
    if REWARD_TOKEN not in tokenizer.get_vocab():  # the authors add it as a special token: the next id
        tokenizer.add_tokens([AddedToken(REWARD_TOKEN, special=True, normalized=False)], special_tokens=True)
    reward_id = tokenizer.convert_tokens_to_ids(REWARD_TOKEN)
    image_id = tokenizer.convert_tokens_to_ids(IMAGE_PAD)
    # the authors resized the embedding to the tokenizer's length right after adding <|Reward|>: its row is the last
    if image_id != config.image_token_id or reward_id != embed[0] - 1:
        raise RewardLoadError(
            f"{name}: the tokenizer in {folder} does not belong to this checkpoint: {REWARD_TOKEN} gets id {reward_id} "
            f"({len(tokenizer)} tokens; {IMAGE_PAD} id {image_id}, config.json says {config.image_token_id}) but the "
            f"checkpoint embeds {embed[0]} tokens, the last being {REWARD_TOKEN}. Use the tokenizer files of "
            f"{QWEN2VL_REPO}."
        )
    return HPSv3Reward(
        modules["visual"], modules["language_model"], modules["rm_head"].float(), tokenizer,
        image_token_id=image_id, reward_token_id=reward_id, name=name, offset=offset,
        mean=pre.get("image_mean", CLIP_MEAN), std=pre.get("image_std", CLIP_STD),
        patch=vision_config.patch_size, temporal=vision_config.temporal_patch_size,
        merge=vision_config.spatial_merge_size, source=str(folder),
    )
