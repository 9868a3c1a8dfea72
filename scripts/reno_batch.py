#!/usr/bin/env python3
"""Launcher of the ReNO batch runner: ``python <pack>/scripts/reno_batch.py --workflow W --prompts P --out O``.

The pack is a ComfyUI custom node folder (named e.g. ``ComfyUI-ReNO``), not an importable package, and its folders
must never go on ``sys.path`` (ComfyUI's own top-level ``nodes``, ``utils``, ``server`` would clash with ours). So
this launcher imports the pack from its folder as the package ``reno_pack`` (without running its ``__init__``,
which registers ComfyUI nodes) and calls ``reno_pack.runner.cli.main``.

The same file is the ``reno-batch`` console command of ``pip install -e <pack>`` (pyproject ``[project.scripts]``).
The pack is this file's grandparent folder, or ``$RENO_PACK_DIR``.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path

PACKAGE = "reno_pack"


def pack_dir() -> Path:
    env = os.environ.get("RENO_PACK_DIR", "").strip()
    for cand in ([Path(env).expanduser()] if env else []) + [Path(__file__).resolve().parents[1]]:
        if (cand / "runner" / "cli.py").is_file():
            return cand.resolve()
    raise SystemExit("reno-batch: cannot find the ReNO pack (a folder with runner/cli.py): set RENO_PACK_DIR to it")


def import_pack(module: str):
    """``reno_pack.<module>`` (e.g. ``runner.cli``; the demo and the benchmarks: ``testing.comfy_host``), the pack
    imported from its folder as the package ``reno_pack`` first if it is not yet."""
    if PACKAGE not in sys.modules:
        spec = importlib.util.spec_from_loader(PACKAGE, loader=None, is_package=True)
        pkg = importlib.util.module_from_spec(spec)
        pkg.__path__ = [str(pack_dir())]
        pkg.__file__ = None
        sys.modules[PACKAGE] = pkg
    return importlib.import_module(f"{PACKAGE}.{module}")


def import_runner(module: str = "cli"):
    return import_pack(f"runner.{module}")


def main() -> int:
    return import_runner("cli").main(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
