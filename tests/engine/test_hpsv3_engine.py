"""HPSv3 in a real engine: ReNO Load Reward lists and loads it from the engine's reno_rewards folder, and a ReNO run
with it raises its score (tiny Qwen2-VL checkpoint in the real format)."""

from __future__ import annotations

import shutil
from pathlib import Path

import torch
from engine_support import PROMPT_TEXT, depth_for


def test_hpsv3_loads_in_the_engine_and_a_reno_run_improves_it(fresh_engine):
    from reno_pack.testing.tiny_hpsv3 import write_tiny_hpsv3

    engine = fresh_engine
    folder = Path(engine.folder_paths.get_folder_paths("reno_rewards")[0]) / "hpsv3"
    try:
        write_tiny_hpsv3(folder, seed=0)
        combo = engine.node_class("ReNORewardLoader").INPUT_TYPES()["required"]["reward"][0]
        assert "hpsv3" in combo and combo.index("hpsv3") == 9
        (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward="hpsv3", weight=1.0)
        assert [(r.name, r.model.name, r.model.offset) for r in stack] == [("hpsv3", "hpsv3", 15.0)]

        model, vae = engine.call_node("ReNOTestTinySD", inference=True, transformer_depth=depth_for(engine),
                                      context_dim=32, seed=0)
        (pos,) = engine.call_node("ReNOTestConditioning", inference=True, text=PROMPT_TEXT, context_dim=32)
        (neg,) = engine.call_node("ReNOTestConditioning", inference=True, text="", context_dim=32)
        (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=64, height=64, batch_size=1)
        out = engine.call_node("ReNOSampler", inference=True, model=model, positive=pos, negative=neg, vae=vae,
                               latent_image=latent, rewards=stack, prompt=PROMPT_TEXT, seed=0, iterations=3,
                               learning_rate=5.0, cfg=1.0, regularization=0.01, grad_clip=0.1)
        history = out["result"][2]
        scores = [r["scores"]["hpsv3"][0] for r in history.records]
        assert len(scores) == 3 and torch.isfinite(torch.tensor(scores)).all()
        assert max(scores[1:]) > scores[0]  # measured: 0.255 -> 0.393 -> 0.476
    finally:
        shutil.rmtree(folder, ignore_errors=True)
