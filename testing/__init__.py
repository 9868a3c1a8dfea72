"""Test, demo and benchmark fixtures: tiny models written in the real formats, and the headless host that runs them.

Not product: the pack's ``__init__`` never imports this package (ComfyUI loads a custom node pack through its
``__init__`` only, so nothing here registers a node), no library or node module imports it, and it stays out of
the registry archive (``.comfyignore``) and the wheel (``pyproject.toml``). Its importers say so by name:
``tests/``, ``scripts/demo.py`` and ``scripts/bench_*.py`` import ``reno_pack.testing.<module>``.

* ``tiny_rewards``, ``tiny_imagereward``, ``tiny_open_clip``: tiny reward checkpoints in the real formats and
  folder layout (``write_reward_root``).
* ``comfy_host``: the batch runner's engine (``runner/engine.py``) with the tests' defaults (the torchvision
  stand-in asked for explicitly, the models folder inside the workdir, the fixture pack).
* ``comfy_fixture_nodes/``: a separate, test-only ComfyUI node pack (tiny models of every family, deterministic
  conditioning), loaded by path by ``comfy_host.boot_engine`` under its own name; the pack's ``__init__`` never
  imports it, so ComfyUI registers none of its nodes with the pack's.
* ``reno_prompts``: API-format ReNO prompts on the tiny fixture model.
"""
