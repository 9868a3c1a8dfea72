"""torchvision / torchaudio stand-ins (test and headless-engine only): ComfyUI imports both at module load for model
families ReNO never runs; where the real packages do not import (PyPI's builds on CPU-only machines), a stand-in in
``sys.modules`` lets ComfyUI import. ``engine.boot_engine(torchvision_standin=True)`` installs them.
"""

from __future__ import annotations

import importlib
import importlib.machinery
import importlib.util
import logging
import sys
import types

log = logging.getLogger("reno.runner.standins")


#: Submodules each stand-in provides (what ComfyUI imports at module load), and transformers' cached probes that
#: must be evaluated (-> False) before the stand-in appears.
_STANDINS = {
    "torchvision": (("transforms", "transforms.functional", "transforms.v2", "models", "ops", "ops.misc", "io",
                     "utils"), ("is_torchvision_available", "is_torchvision_v2_available")),
    # ComfyUI >= 0.17 imports torchaudio at startup (comfy/sd.py -> LTX audio VAE, #13486): checked on 0.33.0
    "torchaudio": (("transforms", "functional", "compliance", "compliance.kaldi", "io"), ("is_torchaudio_available",)),
}


class _MissingMeta(type):
    """Attribute access on a placeholder class (``InterpolationMode.BICUBIC``) gives another one."""

    def __getattr__(cls, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _missing(f"{cls._qualname}.{name}")

    def __repr__(cls) -> str:
        return f"<stand-in {cls._qualname}>"


def _missing(qualname: str) -> type:
    """A placeholder for any attribute of a stood-in module: a class (so modules can subclass it, as
    open_clip subclasses ``ToTensor``) that fails loudly only when an instance is used."""
    package = qualname.split(".", 1)[0]

    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, *args, **kwargs):
        raise RuntimeError(
            f"{qualname}: {package} is not installed; this is the pack's stand-in for headless engines and tests "
            f"(runner/standins.py), which only lets ComfyUI and reference libraries import. Install {package} to use it."
        )

    return _MissingMeta(qualname.rsplit(".", 1)[-1], (), {"_qualname": qualname, "__init__": __init__,
                                                          "__call__": __call__})


class _StandInModule(types.ModuleType):
    def __getattr__(self, name: str):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return _missing(f"{self.__name__}.{name}")


def _really_available(package: str) -> bool:
    mod = sys.modules.get(package)
    if mod is not None:
        return not getattr(mod, "__reno_test_standin__", False)
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return False
    if spec is None:
        return False
    try:  # installed but broken (PyPI's CUDA torchaudio on CPU torch: its native library does not load)
        importlib.import_module(package)
    except Exception as exc:  # noqa: BLE001 - any import failure means "not usable"
        log.info("%s is installed but does not import (%s): using the stand-in", package, exc)
        for name in [m for m in sys.modules if m == package or m.startswith(package + ".")]:
            del sys.modules[name]
        return False
    return True


def install_standin(package: str) -> bool:
    """Put a stand-in ``package`` (``torchvision`` or ``torchaudio``) into ``sys.modules`` when the real one is not
    importable; returns True if the stand-in is (now) installed.

    ComfyUI imports both at module load for model families ReNO never runs (0.3.75: torchvision; 0.33: torchaudio
    too). Real ComfyUI installs have both; this is for the tests and headless engines on CPU-only machines, where
    PyPI's builds of them do not import. transformers probes ``importlib.util.find_spec`` and must keep seeing the
    package absent, so its lru-cached ``is_*_available()`` is evaluated (-> False) *before* the stand-in appears."""
    submodules, probes = _STANDINS[package]
    existing = sys.modules.get(package)
    if existing is not None:
        return bool(getattr(existing, "__reno_test_standin__", False))
    if _really_available(package):
        return False
    try:  # warm transformers' cached probes while the package is still absent
        from transformers.utils import import_utils as _tiu

        for probe in probes:
            fn = getattr(_tiu, probe, None)
            if fn is not None:
                fn()
    except Exception:  # transformers missing or different: nothing to warm
        pass

    def make(name: str, is_pkg: bool) -> types.ModuleType:
        mod = _StandInModule(name, f"{package} stand-in (runner/standins.py; the real {package} is not importable)")
        mod.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=is_pkg)
        mod.__file__ = None
        mod.__reno_test_standin__ = True
        if is_pkg:
            mod.__path__ = []
        return mod

    root = make(package, True)
    sys.modules[package] = root
    for sub in submodules:
        parts = sub.split(".")
        parent = root
        for i, part in enumerate(parts):
            full = package + "." + ".".join(parts[: i + 1])
            mod = sys.modules.get(full)
            if mod is None:
                mod = make(full, True)
                sys.modules[full] = mod
            object.__setattr__(parent, part, mod)
            parent = mod
    return True


def install_torchvision_standin() -> bool:
    """``install_standin("torchvision")``."""
    return install_standin("torchvision")


def install_torchaudio_standin() -> bool:
    """``install_standin("torchaudio")``."""
    return install_standin("torchaudio")
