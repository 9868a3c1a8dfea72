"""Headless batch runner: a ReNO workflow (ComfyUI API format) over a prompt file and seeds, in a headless ComfyUI
engine (``engine.py``), in one process or fanned out with Ray (``ray_backend.py``), writing images in the layouts
GenEval and T2I-CompBench read, one JSON line per item and a summary.

Invocation (the pack is a ComfyUI custom node folder, not an importable package): ``python <pack>/scripts/
reno_batch.py ...`` (or the ``reno-batch`` console command after ``pip install -e <pack>``). The launcher imports
the pack as the package ``reno_pack`` without running its ``__init__`` and calls ``reno_pack.runner.cli.main``;
nothing here puts the pack's folders on ``sys.path`` (ComfyUI's top-level ``nodes``/``utils``/``server`` would
clash). Modules here import ComfyUI only through ``engine.boot_engine``.
"""
