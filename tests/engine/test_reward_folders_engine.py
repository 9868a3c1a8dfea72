"""ReNO Load Reward in a real engine with the IterComp rewards and a custom reward folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch


def test_load_reward_lists_and_loads_itercomp_spatial_and_a_custom_folder(fresh_engine, tmp_path):
    from tiny_imagereward import write_tiny_imagereward
    from tiny_rewards import write_tiny_clip_folder

    engine = fresh_engine
    root = Path(engine.folder_paths.get_folder_paths("reno_rewards")[0])
    made = [root / "itercomp_spatial", root / "custom" / "engine_clip"]
    try:
        # IterComp's format: a DDP state dict (module.* keys) with its own med_config.json and tokenizer
        source = write_tiny_imagereward(tmp_path / "src", seed=3)
        state = torch.load(source / "ImageReward.pt", weights_only=True)
        made[0].mkdir(parents=True)
        torch.save({"module." + k: v for k, v in state.items()}, made[0] / "spatial.pt")
        for name in ("vision_config.json", "med_config.json"):
            shutil.copy(source / name, made[0] / name)
        shutil.copytree(source / "tokenizer", made[0] / "tokenizer")
        write_tiny_clip_folder(made[1], seed=2)
        (made[1] / "reward.json").write_text(json.dumps({"format": "clip", "description": "engine test"}))

        combo = engine.node_class("ReNORewardLoader").INPUT_TYPES()["required"]["reward"][0]
        assert combo[:9] == ["imagereward", "hpsv2.1", "hpsv2", "pickscore", "clipscore", "aesthetic",
                             "itercomp_attribute", "itercomp_spatial", "itercomp_nonspatial"]
        assert "custom/engine_clip" in combo[9:]

        (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward="itercomp_spatial", weight=1.0)
        (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward="custom/engine_clip", weight=0.5,
                                    rewards=stack)
        assert [(r.name, r.weight, r.model.name) for r in stack] == [
            ("itercomp_spatial", 1.0, "itercomp_spatial"), ("custom/engine_clip", 0.5, "custom/engine_clip")]
        assert stack[1].model.offset == 100.0
    finally:
        for folder in made:
            shutil.rmtree(folder, ignore_errors=True)
