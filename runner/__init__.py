"""Headless batch runner: a ReNO workflow (ComfyUI API format) or a diffusers one-step pipeline over a prompt file and
seeds, writing images in the layouts GenEval and T2I-CompBench read, one JSON line per item and a summary.

What makes the images is a backend (``backends.py``: the workflow in a headless ComfyUI engine, ``worker.py`` over
``engine.py``; or the diffusers pipeline, ``diffusers_hook.py``); where the items run is a dispatch (``batch.py``'s
``LocalDispatch``, this process; ``ray_backend.py``'s ``RayDispatch``, Ray actors), either with either. Items and
their results are ``items.py``'s records; the driver (``batch.py``) writes every file.

Invocation (the pack is a ComfyUI custom node folder, not an importable package): ``python <pack>/scripts/
reno_batch.py ...`` (or the ``reno-batch`` console command after ``pip install -e <pack>``). The launcher imports
the pack as the package ``reno_pack`` without running its ``__init__`` and calls ``reno_pack.runner.cli.main``;
nothing here puts the pack's folders on ``sys.path`` (ComfyUI's top-level ``nodes``/``utils``/``server`` would
clash). Modules here import ComfyUI only through ``engine.boot_engine``.
"""
