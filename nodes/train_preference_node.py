"""ReNO Train Preference Reward: fine-tune an ImageReward-architecture reward on your preferred/rejected marks.

Whose marks: ComfyUI tells a node nothing about who queued the prompt (its hidden inputs are PROMPT, DYNPROMPT,
EXTRA_PNGINFO, UNIQUE_ID, the comfy.org token/key and, from 0.33, COMFY_USAGE_SOURCE; the ``comfy-user`` header
is read by the user manager of the routes and never copied into the prompt's ``extra_data``: checked on
ComfyUI 0.3.75 and 0.33). So the dataset is named as the preference routes store it: a plain ``<dataset>`` is the
default user's (``user/default``, where single-user ComfyUI records the marks), and under ``--multi-user`` each
other user's datasets are offered as ``<user id>/<dataset>`` (``user/<user id>/reno_preferences/<dataset>``).
ComfyUI has no authentication (the header is a label anyone can send): this keeps honest users' datasets apart,
it protects nothing from a person who can reach the server.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import os
import re
from pathlib import Path

import comfy.model_management
import comfy.utils
import folder_paths
import torch

from ..reward_loaders import REWARDS, RewardLoadError, paths
from ..reward_loaders.registry import ensure_files
from ..training import preference_reward as pt
from .download_progress import NodeDownloads
from .guards import with_oom_advice
from .settings import downloads_allowed

log = logging.getLogger(__name__)

CATEGORY = "ReNO/training"
NODE = "ReNO Train Preference Reward"
# the rewards of ImageReward's architecture (BLIP ViT + BERT + MLP head), in the combo's order, when registered
IMAGEREWARD_FAMILY = ("imagereward", "itercomp_attribute", "itercomp_spatial", "itercomp_nonspatial")
NO_DATASET = "(no preference dataset yet)"
DEFAULT_USER = "default"
# a ComfyUI user id as its user manager makes them ("<name>_<uuid>", name letters/digits/-/_), never a system user
_USER_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9_.-]{0,127}")


def base_rewards() -> list[str]:
    return [name for name in IMAGEREWARD_FAMILY if name in REWARDS] or ["imagereward"]


def users_dir() -> Path:
    """ComfyUI's user directory (``user/``: one folder per user)."""
    get_dir = getattr(folder_paths, "get_user_directory", None)
    return Path(get_dir() if get_dir is not None else os.path.join(os.path.dirname(folder_paths.models_dir), "user"))


def user_root(user: str = DEFAULT_USER) -> Path:
    """A user's folder, whose ``reno_preferences/`` holds the marks the routes recorded for that user (ComfyUI's
    ``user/default`` in single-user mode)."""
    return users_dir() / user


def preferences_root() -> Path:
    return user_root() / pt.PREFERENCES_DIR


def multi_user() -> bool:
    try:
        from comfy.cli_args import args
    except Exception:  # noqa: BLE001 - a host without ComfyUI's arguments: single user
        return False
    return bool(getattr(args, "multi_user", False))


def _is_user_id(user: str) -> bool:
    return bool(_USER_ID.fullmatch(user)) and not user.startswith("__") and user not in (".", "..")


def dataset_location(dataset: str) -> tuple[Path, str]:
    """(user folder, dataset name) of the node's ``dataset`` value: ``<dataset>`` is the default user's,
    ``<user id>/<dataset>`` that user's (offered under ``--multi-user``). A ValueError names the node when the
    user part is not a user folder (system users, ``__...``, included)."""
    user, sep, name = str(dataset).partition("/")
    if not sep:
        return user_root(), str(dataset)
    folder = user_root(user)
    if not _is_user_id(user) or not folder.is_dir():
        raise ValueError(f"{NODE}: dataset {str(dataset)[:120]!r}: {user[:60]!r} is not a user of this ComfyUI "
                         f"(a folder of {users_dir()}); pick a dataset from the list (refresh the page: R)")
    return folder, name


def dataset_choices() -> list[str]:
    """The default user's datasets, by name; under ``--multi-user`` also every other user's, as ``<user>/<name>``."""
    found: list[str] = []
    try:
        found += pt.list_datasets(user_root())
        if multi_user():
            for entry in sorted(users_dir().iterdir()):
                if entry.name != DEFAULT_USER and _is_user_id(entry.name) and entry.is_dir():
                    found += [f"{entry.name}/{name}" for name in pt.list_datasets(entry)]
    except Exception as e:  # noqa: BLE001 - the node list must load even with an unreadable folder
        log.warning("ReNO: could not list the preference datasets in %s: %s", users_dir(), e)
    return found or [NO_DATASET]


def _memory_estimate(model) -> int:
    """Bytes the training needs on the device: weights, their gradients and AdamW's two moments (float32),
    plus room for activations."""
    weights = sum(p.numel() for p in model.parameters()) * 4
    return 4 * weights + (1 << 30)


def run_training(base_reward: str, dataset: str, name: str, epochs: int, learning_rate: float,
                 freeze_fraction: float, seed: int, node_id=None) -> tuple[str, float, Path]:
    """Load a private copy of the base reward, train it on the dataset's pairs, save it as custom/<name>."""
    if base_reward not in REWARDS:
        raise ValueError(f"{NODE}: base_reward {base_reward!r} is not a registered reward ({', '.join(base_rewards())})")
    if dataset == NO_DATASET:
        raise ValueError(
            f"{NODE}: there is no preference dataset yet in {preferences_root()}. Mark generated images as preferred "
            "or rejected first, then refresh the page (R) so the dataset appears in the 'dataset' list.")
    config = pt.TrainingConfig(epochs=int(epochs), learning_rate=float(learning_rate),
                               freeze_fraction=float(freeze_fraction), seed=int(seed)).checked()
    name = pt.validate_name(name)
    owner, dataset_name = dataset_location(dataset)
    pairs, skipped = pt.load_preference_pairs(owner, dataset_name, seed=config.seed)
    with NodeDownloads(node_id).reporting() as downloads:  # a first use downloads the base reward: progress, Cancel
        folder = ensure_files(base_reward, download=downloads_allowed(), progress=downloads)
    rewards_root = folder.parent
    pt.check_free(rewards_root, name)  # before any work: an existing custom reward is never overwritten

    roots = paths.search_dirs()
    with torch.inference_mode(False):  # a private copy: the cached, shared reward model is never trained
        model = REWARDS[base_reward].build(folder, roots)
    device = comfy.model_management.get_torch_device()
    if device.type != "cpu":
        with contextlib.suppress(Exception):
            comfy.model_management.free_memory(_memory_estimate(model), device)
    bar: list = []

    def progress(step: int, total: int, loss: float) -> None:
        if not bar:
            bar.append(comfy.utils.ProgressBar(total, node_id=node_id))
        bar[0].update_absolute(step, total)

    try:
        result, saved = pt.train_and_save(
            model, pairs, rewards_root=rewards_root, name=name, base_reward=base_reward, base_folder=folder,
            dataset=dataset, config=config, progress=progress,
            check_cancel=comfy.model_management.throw_exception_if_processing_interrupted, device=device, roots=roots)
    finally:
        model.to("cpu")
        del model
        gc.collect()
        with contextlib.suppress(Exception):
            comfy.model_management.soft_empty_cache(True)
    report = pt.format_report(result, dataset=dataset, base_reward=base_reward, name=name, folder=saved,
                              skipped=skipped)
    after = result.accuracy_after if result.accuracy_after is not None else math.nan
    return report, float(after), saved


class ReNOTrainPreferenceReward:
    DESCRIPTION = (
        "Fine-tunes an ImageReward-architecture reward (ImageReward, IterComp) on the images you marked as "
        "preferred or rejected (pairs of the same prompt), with the pairwise loss -log sigmoid(r_preferred - "
        "r_rejected), and saves it as models/reno_rewards/custom/<name>/. 10% of the pairs are held out to measure "
        "how often the reward ranks your choice first, before and after. Load it with ReNO Load Reward as "
        "custom/<name>."
    )
    CATEGORY = CATEGORY
    SEARCH_ALIASES = [  # the node search finds it by these too (older servers: web/js/reno_search.js)
        "train reward model", "preference learning", "fine-tune reward", "my taste", "personal reward"
    ]
    FUNCTION = "train"
    OUTPUT_NODE = True  # it saves a reward: it runs even when nothing consumes its outputs
    RETURN_TYPES = ("STRING", "FLOAT")
    RETURN_NAMES = ("report", "held_out_accuracy")
    OUTPUT_TOOLTIPS = (
        "What was trained: pairs, train/held-out split, held-out accuracy before -> after, the saved folder and "
        "the reward name to use in ReNO Load Reward.",
        "The fraction of held-out pairs the trained reward ranks right (NaN when the dataset has a single pair).",
    )

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "base_reward": (base_rewards(), {
                    "tooltip": "The reward to start from (its files must be in models/reno_rewards/<reward>/)."}),
                "dataset": (dataset_choices(), {
                    "tooltip": "The preference dataset: a folder of <ComfyUI user dir>/reno_preferences/ holding your "
                               "preferred/rejected marks (records.jsonl). Refresh the page (R) after marking. Under "
                               "--multi-user another user's datasets are listed as <user id>/<dataset>."}),
                "name": ("STRING", {
                    "default": "my-taste",
                    "tooltip": "The new reward's folder name (letters, digits, ' ', '.', '_', '-'): it is saved in "
                               "models/reno_rewards/custom/<name>/ and loaded as custom/<name>. An existing one is "
                               "never overwritten: choose a new name, or delete the old folder."}),
                "epochs": ("INT", {"default": 5, "min": 1, "max": 1000,
                                   "tooltip": "Passes over the training pairs (4 pairs per step)."}),
                "learning_rate": ("FLOAT", {
                    "default": 1e-5, "min": 1e-8, "max": 1e-2, "step": 1e-6, "round": False,
                    "tooltip": "AdamW's learning rate (ImageReward and IterComp train with 1e-5)."}),
                "freeze_fraction": ("FLOAT", {
                    "default": 0.7, "min": 0.0, "max": 1.0, "step": 0.05,
                    "tooltip": "The fraction of the text encoder's layers and of the ViT's blocks (from the input "
                               "side, with the embeddings) kept frozen; IterComp's fix_rate 0.7. Higher: faster, "
                               "less memory, less overfitting on a few marks."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 0xFFFFFFFFFFFFFFFF,
                                 "tooltip": "Chooses the held-out pairs, the order of the pairs and the dropout."}),
            }
        }

    @classmethod
    def IS_CHANGED(cls, base_reward, dataset, name, epochs=None, learning_rate=None, freeze_fraction=None, seed=None):
        """New marks in the dataset make the node run again (same inputs and same marks: ComfyUI's cached report)."""
        try:
            owner, name = dataset_location(dataset)
            st = (owner / pt.PREFERENCES_DIR / name / pt.RECORDS_FILE).stat()
        except (OSError, ValueError):
            return "absent"
        return f"{st.st_size}-{st.st_mtime_ns}"

    def train(self, base_reward, dataset, name, epochs, learning_rate, freeze_fraction, seed):
        try:
            report, after, _ = with_oom_advice(NODE, run_training, base_reward, dataset, name, epochs, learning_rate,
                                               freeze_fraction, seed)
        except (pt.PreferenceTrainingError, RewardLoadError) as e:
            raise ValueError(f"{NODE}: {e}") from None
        return {"ui": {"text": [report]}, "result": (report, after)}
