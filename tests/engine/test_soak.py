"""Soak: many consecutive ReNO prompts in one engine, with no growth in memory or leaked state."""

from __future__ import annotations

import gc
import os

import psutil
import pytest
import torch
from engine_support import reno_prompt

RUNS = int(os.environ.get("RENO_SOAK_RUNS", "12"))


def live_tensors() -> int:
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.fixture(scope="module")
def soak_rewards(engine):
    from pathlib import Path

    from tiny_rewards import write_reward_root

    root = Path(engine.folder_paths.get_folder_paths("reno_rewards")[0])
    if not (root / "pickscore" / "model.safetensors").exists():
        write_reward_root(root, ("pickscore", "clipscore"))
    return root


def test_consecutive_prompts_do_not_grow_memory_or_leak_state(fresh_engine, soak_rewards):
    engine = fresh_engine
    process = psutil.Process()
    rss, tensors = [], []
    for k in range(RUNS):
        # vary the seed and, every third run, cancel mid-way: failures must not leak either
        interrupt = k % 3 == 2
        if interrupt:
            engine.add_progress_callback(lambda e: engine.interrupt() if e.value == 2 and e.total == 4 else None)
        res = engine.execute(reno_prompt(engine, iterations=4, seed=k))
        engine.clear_progress_callbacks()
        engine.reset_interrupt()
        assert res.interrupted if interrupt else res.success, res.error
        assert torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        gc.collect()
        rss.append(process.memory_info().rss / 2**20)
        tensors.append(live_tensors())
    warm = RUNS // 4  # first runs fill caches (reward models, allocator pools)
    growth = rss[-1] - rss[warm]
    print(f"\nsoak: {RUNS} prompts, RSS {rss[warm]:.0f} -> {rss[-1]:.0f} MiB ({growth:+.1f} MiB after warm-up), "
          f"live tensors {tensors[warm]} -> {tensors[-1]}")
    assert growth < 40, rss
    assert tensors[-1] - tensors[warm] <= 10, tensors
