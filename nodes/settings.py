"""The pack's settings as the user set them in ComfyUI (Settings → ReNO), read on the server side."""

from __future__ import annotations

import json
import logging
import os

import folder_paths

from ..optimizer.memory import CHANNELS_LAST_ENV
from ..reward_loaders.download import downloads_enabled

log = logging.getLogger(__name__)

ALLOW_DOWNLOADS = "ReNO.AllowDownloads"
TORCH_COMPILE = "ReNO.TorchCompile"


def user_setting(key: str, default=None):
    """A value from the default user's ``comfy.settings.json`` (what the Settings dialog writes)."""
    get_dir = getattr(folder_paths, "get_user_directory", None)
    if get_dir is None:  # ComfyUI before per-user settings on the server
        return default
    path = os.path.join(get_dir(), "default", "comfy.settings.json")
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get(key, default)
    except FileNotFoundError:
        return default
    except (OSError, ValueError) as e:
        log.warning("ReNO: could not read %s (%s); using the default for %s", path, e, key)
        return default


def downloads_allowed() -> bool:
    """Missing reward files may be downloaded: environment (RENO_DOWNLOADS, HF_HUB_OFFLINE) and setting agree."""
    return downloads_enabled() and bool(user_setting(ALLOW_DOWNLOADS, True))


def compile_rewards() -> bool:
    """Reward models run through torch.compile: RENO_TORCH_COMPILE=1/0 if set, else the setting (off by default)."""
    env = os.environ.get("RENO_TORCH_COMPILE", "").strip().lower()
    if env:
        return env not in ("0", "false", "no", "off")
    return bool(user_setting(TORCH_COMPILE, False))


def _env_flag(name: str) -> bool | None:
    """True/False where the environment variable ``name`` is set (0/false/no/off are False), None where unset."""
    env = os.environ.get(name, "").strip().lower()
    if not env:
        return None
    return env not in ("0", "false", "no", "off")


def channels_last_forced() -> bool | None:
    """RENO_CHANNELS_LAST=1/0 forces the VAE decoder's layout (channels-last NHWC / as loaded); unset (None), the
    run measures both at its own shapes and takes the faster (``ReNORun._vae_layout``)."""
    return _env_flag(CHANNELS_LAST_ENV)


def pytorch_attention() -> bool:
    """The VAE decoder's gradient passes run PyTorch's SDPA where the host would run an unfused attention in float32
    (``host.vae_sdpa``): on unless RENO_PYTORCH_ATTENTION=0."""
    if os.environ.get("RENO_PYTORCH_ATTENTION", "").strip().lower() == "all":
        return True
    flag = _env_flag("RENO_PYTORCH_ATTENTION")
    return True if flag is None else flag


def model_pytorch_attention() -> bool:
    """The diffusion model's attention runs PyTorch's SDPA too (``host.gradient_attention_options``) only with
    RENO_PYTORCH_ATTENTION=all: KSampler runs the host's choice, and ReNO's iteration 0 is KSampler's sample exactly
    (a different attention kernel changes it by float rounding, about 1e-4 on SD1.5 latents)."""
    return os.environ.get("RENO_PYTORCH_ATTENTION", "").strip().lower() == "all"
