"""ReNO Train Preference Reward inside a real ComfyUI engine: the executor runs it, progress, cancel."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from test_preference_training import COOL, WARM, write_dataset

NODE_ID = "1"


@pytest.fixture(scope="module")
def setup(engine):
    """A tiny imagereward in the engine's reno_rewards folder and a dataset in the default user's folder."""
    from tiny_rewards import write_reward_root

    root = Path(engine.folder_paths.get_folder_paths("reno_rewards")[0])
    if not (root / "imagereward" / "ImageReward.pt").is_file():
        write_reward_root(root, ("imagereward",))
    user = Path(engine.folder_paths.get_user_directory()) / "default"
    write_dataset(user, "engine-taste", WARM, COOL, per_prompt=2)
    return root


def prompt(name: str, epochs: int = 2) -> dict:
    return {NODE_ID: {"class_type": "ReNOTrainPreferenceReward", "inputs": {
        "base_reward": "imagereward", "dataset": "engine-taste", "name": name, "epochs": epochs,
        "learning_rate": 1e-4, "freeze_fraction": 0.7, "seed": 0}}}


def test_the_executor_trains_saves_and_reports_progress(fresh_engine, setup):
    engine = fresh_engine
    res = engine.execute(prompt("engine-run"))
    res.raise_for_error()
    folder = setup / "custom" / "engine-run"
    meta = json.loads((folder / "reward.json").read_text())
    assert meta["pairs"] == 12 and meta["training"]["held_out_pairs"] == 1
    steps = meta["training"]["steps"]
    # every step reports, but hosts may throttle what reaches the client (0.33: #11504 sends the first, the last and
    # then at most one update per 100 ms): the sent values climb step by step to the last one
    values = [e.value for e in res.progress if e.total == steps]
    assert values[0] == 1 and values[-1] == steps and values == sorted(set(values))
    report = res.ui_outputs[NODE_ID]["text"][0]
    assert "custom/engine-run" in report and str(folder) in report
    # ReNO Load Reward offers it (after a refresh: INPUT_TYPES is read again) and loads it
    loader = engine.node_class("ReNORewardLoader")
    assert "custom/engine-run" in loader.INPUT_TYPES()["required"]["reward"][0]
    (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward="custom/engine-run", weight=1.0)
    assert stack[-1].model.name == "custom/engine-run"
    # queued again with the same name: refused, the trained reward kept
    res = engine.execute(prompt("engine-run", epochs=3))
    assert not res.success and "already exists" in json.dumps(res.error)
    assert json.loads((folder / "reward.json").read_text()) == meta


def test_cancel_leaves_no_folder(fresh_engine, setup):
    engine = fresh_engine
    cancelled_at = []

    def cancel(e):  # Cancel at the first step the host reports (0.33 throttles the others: see above)
        if e.total == 6 and not cancelled_at:
            cancelled_at.append(e.value)
            engine.interrupt()

    engine.add_progress_callback(cancel)
    res = engine.execute(prompt("engine-cancelled", epochs=2))
    assert not res.success and res.interrupted
    values = [e.value for e in res.progress if e.total == 6]
    assert cancelled_at == [1] and values == [1]  # no step reported after the one Cancel came at
    assert not (setup / "custom" / "engine-cancelled").exists()
    assert not [p for p in (setup / "custom").iterdir() if p.name.startswith(".")] if (setup / "custom").is_dir() else True
