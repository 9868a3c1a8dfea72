"""Custom reward folders: ``<reno_rewards>/custom/<name>/`` with a ``reward.json``, offered as ``custom/<name>``.

A folder holds either a checkpoint in ImageReward's format (a fine-tuned ImageReward, e.g. what the pack's
preference-reward trainer writes) or a transformers ``CLIPModel`` folder (scored like CLIPScore,
``exp(logit_scale)·cos``). ``reward.json`` says which::

    {"format": "imagereward" | "clip",
     "checkpoint": "ImageReward.pt",          # imagereward only: the checkpoint's file name in the folder
     "offset": 2.0,                           # optional: the c of c - score (default 2.0 imagereward, 100.0 clip;
                                              #   a finite number of magnitude at most 1e6)
     "description": "...", "base_reward": "imagereward", "dataset": "...", "pairs": 1234,   # optional
     "held_out_accuracy": {"before": 0.61, "after": 0.74}}                                  # optional

Other keys are allowed and ignored. For "imagereward" the folder also holds ``med_config.json`` and
``tokenizer/`` (``vocab.txt``, ``tokenizer_config.json``) and optionally ``vision_config.json`` as the
``imagereward`` folder does; when it does not, those of the ``imagereward`` (or an IterComp) folder of a
reno_rewards root are used. The checkpoint may be a
plain state dict or one saved from a DDP-wrapped model (``module.`` keys). Nothing is ever downloaded.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from .base import RewardModel
from .errors import RewardFilesMissing, RewardLoadError
from .paths import FOLDER_NAME
from .source import RewardSource
from .stamps import digest, file_stamps

PREFIX = "custom/"
FOLDER = "custom"  # <reno_rewards>/custom/<name>/
CONFIG_FILE = "reward.json"
FORMATS = ("imagereward", "clip")
DEFAULT_OFFSETS = {"imagereward": 2.0, "clip": 100.0}
# the official offsets are 2 to 100 (the scale of the scores); one far beyond makes weight * (offset - score)
# overflow to inf in float32 (e.g. 1e308), which would surface later as "the reward was NaN/Inf... check the VAE"
MAX_OFFSET = 1e6
# a folder name: one path component of ordinary characters (no separators, no '..', not hidden)
NAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.+\- ]{0,127}")
EXAMPLE = '{"format": "imagereward", "checkpoint": "ImageReward.pt"} (or {"format": "clip"} for a CLIPModel folder)'
OPTIONAL_TYPES = {  # key -> (accepted types, what to write)
    "description": ((str,), "a string"),
    "base_reward": ((str,), "a string"),
    "dataset": ((str,), "a string"),
    "pairs": ((int,), "a whole number"),
    "held_out_accuracy": ((dict,), 'an object {"before": number, "after": number}'),
}


def is_custom(name: str) -> bool:
    """Whether ``name`` names a custom reward folder (``custom/<name>``)."""
    return isinstance(name, str) and name.startswith(PREFIX)


def valid_name(name: str) -> bool:
    return bool(NAME_RE.fullmatch(name)) and ".." not in name and name.strip() == name


def folder_name(reward: str) -> str:
    """``custom/<name>`` -> ``<name>``, refusing anything that is not one plain folder name."""
    if not isinstance(reward, str) or not reward.startswith(PREFIX):
        raise ValueError(f"not a custom reward name: {reward!r} (expected custom/<name>)")
    name = reward[len(PREFIX):]
    if not valid_name(name):
        raise ValueError(
            f"invalid custom reward name {reward!r}: <name> must be one folder name of letters, digits, '_', '-', "
            f"'.', '+' or spaces (no '/', '\\\\' or '..'), the folder {FOLDER_NAME}/{FOLDER}/<name>/"
        )
    return name


def list_custom_rewards(roots) -> list[str]:
    """``custom/<name>`` for every ``<root>/custom/<name>/reward.json``, sorted, each name once (first root wins)."""
    names: list[str] = []
    for root in roots:
        base = Path(root) / FOLDER
        try:
            entries = sorted(base.iterdir()) if base.is_dir() else []
        except OSError:
            continue
        for entry in entries:
            if valid_name(entry.name) and (entry / CONFIG_FILE).is_file() and PREFIX + entry.name not in names:
                names.append(PREFIX + entry.name)
    return sorted(names, key=str.lower)


def locate_custom(reward: str, roots) -> Path:
    """The folder of custom reward ``custom/<name>``: the first root's ``custom/<name>/`` with a reward.json."""
    name = folder_name(reward)
    roots = [Path(r) for r in roots]
    for root in roots:
        folder = root / FOLDER / name
        if (folder / CONFIG_FILE).is_file():
            return folder
    if not roots:
        raise RewardFilesMissing(
            f"reward '{reward}': no '{FOLDER_NAME}' folder is configured (inside ComfyUI it is "
            f"ComfyUI/models/{FOLDER_NAME}/)."
        )
    existing = next((root / FOLDER / name for root in roots if (root / FOLDER / name).is_dir()), None)
    if existing is not None:
        raise RewardFilesMissing(
            f"reward '{reward}': {existing} has no {CONFIG_FILE}. Write one there, e.g. {EXAMPLE}."
        )
    raise RewardFilesMissing(
        f"reward '{reward}': no folder {FOLDER}/{name}/ with a {CONFIG_FILE} in "
        f"{', '.join(str(r) for r in roots)}. Create {roots[0] / FOLDER / name}/ holding {CONFIG_FILE} and the "
        "reward's files (custom rewards are never downloaded)."
    )


def _shown(value) -> str:
    """A JSON value for a message, cut short (a reward.json can hold anything)."""
    try:
        text = json.dumps(value)
    except (RecursionError, ValueError, TypeError):  # nested deep: name its type
        return f"a deeply nested JSON {type(value).__name__}"
    return text if len(text) <= 80 else text[:77] + "..."


def _number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def read_config(folder: Path, reward: str = "") -> dict:
    """The validated ``reward.json`` of ``folder``: ``format``, ``offset`` and (imagereward) ``checkpoint``
    filled in; an error naming the file and the fix when it is unreadable, malformed or names a missing file."""
    folder = Path(folder)
    path = folder / CONFIG_FILE
    label = reward or PREFIX + folder.name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise RewardFilesMissing(f"{label}: {path} is missing. Write it, e.g. {EXAMPLE}.") from None
    except (OSError, UnicodeDecodeError) as e:
        raise RewardLoadError(f"{label}: could not read {path} ({type(e).__name__}: {e}).") from e
    try:
        data = json.loads(text)
    except ValueError as e:
        raise RewardLoadError(
            f"{label}: {path} is not valid JSON ({e}). Fix it: it must be one JSON object, e.g. {EXAMPLE}."
        ) from None
    except RecursionError:
        raise RewardLoadError(
            f"{label}: {path} is JSON nested too deeply to read. Fix it: it must be one flat JSON object, e.g. "
            f"{EXAMPLE}."
        ) from None

    def bad(what: str) -> RewardLoadError:
        return RewardLoadError(f"{label}: {path}: {what}. Fix the file, e.g. {EXAMPLE}.")

    if not isinstance(data, dict):
        raise bad(f"it holds a JSON {type(data).__name__}, not an object")
    fmt = data.get("format")
    if fmt not in FORMATS:
        shown = "no \"format\"" if "format" not in data else f"\"format\" is {_shown(fmt)}"
        raise bad(f"{shown}; it must be one of {', '.join(json.dumps(f) for f in FORMATS)}")
    config = dict(data)
    offset = data.get("offset", DEFAULT_OFFSETS[fmt])
    if not _number(offset) or abs(offset) > MAX_OFFSET:
        raise bad(f"\"offset\" is {_shown(offset)}; it must be a finite number of magnitude at most {MAX_OFFSET:g} "
                  f"(default {DEFAULT_OFFSETS[fmt]}: the official offsets are 2 to 100)")
    config["offset"] = float(offset)
    for key, (types, what) in OPTIONAL_TYPES.items():
        if key in data and data[key] is not None and (not isinstance(data[key], types) or isinstance(data[key], bool)):
            raise bad(f"\"{key}\" is {_shown(data[key])}; it must be {what}")
    if isinstance(data.get("pairs"), int) and data["pairs"] < 0:
        raise bad(f"\"pairs\" is {data['pairs']}; it must not be negative")
    accuracy = data.get("held_out_accuracy")
    if isinstance(accuracy, dict):
        for key in ("before", "after"):
            if accuracy.get(key) is not None and not _number(accuracy[key]):  # null: not measured (no pair held out)
                raise bad(f"\"held_out_accuracy\".\"{key}\" is {_shown(accuracy[key])}; it must be a number "
                          "or null")
    if fmt == "imagereward":
        checkpoint = data.get("checkpoint")
        found = sorted(p.name for p in folder.iterdir() if p.suffix.lower() in (".pt", ".pth") and p.is_file())
        present = f" (.pt files in the folder: {', '.join(found)})" if found else " (there is no .pt file in the folder)"
        if not isinstance(checkpoint, str) or not checkpoint.strip():
            raise bad(f"\"checkpoint\" is {'missing' if 'checkpoint' not in data else _shown(checkpoint)}; "
                      f"it must name the checkpoint file in {folder}{present}")
        if "\x00" in checkpoint:
            raise bad(f"\"checkpoint\" {_shown(checkpoint)} holds a NUL character (\\u0000), which no file name "
                      f"can; it must name the checkpoint file in {folder}{present}")
        try:
            target = (folder / checkpoint).resolve()
            inside = not Path(checkpoint).is_absolute() and folder.resolve() in target.parents
            exists = inside and target.is_file()
        except (OSError, ValueError) as e:  # a name the file system refuses (too long, ...)
            raise bad(f"\"checkpoint\" {_shown(checkpoint)} cannot be a file name here ({type(e).__name__}: {e})") from None
        if not inside:
            raise bad(f"\"checkpoint\" {_shown(checkpoint)} is not a file name inside {folder}")
        if not exists:
            raise RewardFilesMissing(
                f"{label}: {path} names the checkpoint {json.dumps(checkpoint)}, but {folder / checkpoint} does not "
                f"exist{present}. Put the file there or fix \"checkpoint\"."
            )
        config["checkpoint_path"] = folder / checkpoint
    return config


def _support_files(folder: Path, config: dict, roots) -> list[Path]:
    """The files borrowed from another folder (med_config.json, the tokenizer, vision_config.json): their stamps
    count too."""
    if config.get("format") != "imagereward":
        return []
    from .imagereward import TOKENIZER_FILES, find_bert_tokenizer, find_borrowed_vision_configs, find_med_config

    out = [] if (Path(folder) / "vision_config.json").is_file() else find_borrowed_vision_configs(folder, roots)
    med, tok = find_med_config(folder, roots), find_bert_tokenizer(folder, roots)
    if med is not None:
        out.append(med)
    if tok is not None:
        out += [tok / n for n in TOKENIZER_FILES]
    return [p for p in out if Path(folder).resolve() not in p.resolve().parents]


def custom_stamps(folder: Path, roots=()) -> tuple:
    """The stamps of the folder's files and of the files it borrows (see ``stamps.file_stamps``)."""
    stamps = file_stamps(Path(folder))
    try:
        config = read_config(folder)
    except RewardLoadError:
        return stamps
    extra = []
    for p in _support_files(Path(folder), config, roots):
        try:
            st = p.stat()
        except OSError:
            continue
        extra.append((str(p), st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns))
    return stamps + tuple(extra)


def load_custom_reward(folder: Path, roots=()) -> RewardModel:
    """The custom reward in ``folder`` (see the module docstring), named ``custom/<folder name>``."""
    folder = Path(folder)
    reward = PREFIX + folder.name
    config = read_config(folder, reward)
    if config["format"] == "clip":
        from .clip_rewards import load_clip_folder

        model = load_clip_folder(folder, reward, config["offset"])
    else:
        from .imagereward import load_imagereward_format

        model = load_imagereward_format(
            folder, config["checkpoint_path"], roots, name=reward, offset=config["offset"],
            source_hint=f"wherever {folder / CONFIG_FILE}'s reward was made (custom rewards are not downloaded)",
        )
    model.name, model.offset = reward, config["offset"]
    return model


def custom_fingerprint(reward: str, roots) -> str:
    """What ``registry.reward_fingerprint`` returns for ``custom/<name>``: changes when its files change."""
    try:
        folder = locate_custom(reward, roots)
        text = repr((reward, os.path.abspath(folder), custom_stamps(folder, roots)))
    except (RewardLoadError, ValueError) as e:
        text = repr((reward, "unavailable", str(e)))
    return digest(text)


class CustomSource(RewardSource):
    """``custom/<name>``: a folder with a ``reward.json`` (never downloaded)."""

    def __init__(self, name: str):
        self.name = name

    def locate(self, roots: list[Path]) -> Path:
        return locate_custom(self.name, roots)

    def stamps(self, folder: Path, roots: list[Path]) -> tuple:
        return custom_stamps(folder, roots)

    def load(self, folder: Path, roots: list[Path]) -> RewardModel:
        return load_custom_reward(folder, roots)

    def fingerprint(self, roots: list[Path]) -> str:
        return custom_fingerprint(self.name, roots)
