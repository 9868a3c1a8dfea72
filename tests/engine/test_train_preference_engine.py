"""ReNO Train Preference Reward inside a real ComfyUI engine: the executor runs it, progress, cancel."""

from __future__ import annotations

import json
import shutil
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


@pytest.fixture
def other_users(engine):
    users = Path(engine.folder_paths.get_user_directory())
    yield users
    for user in ("alice_1", "__system"):
        shutil.rmtree(users / user, ignore_errors=True)


def test_under_multi_user_each_users_datasets_are_offered_and_trained_on_by_name(fresh_engine, setup, other_users,
                                                                                  monkeypatch):
    """ComfyUI passes a node no user (the comfy-user header never reaches the prompt): under --multi-user the node
    offers every user's datasets as <user id>/<dataset>, the way the routes store them, and trains on the one
    named; a plain name stays the default user's; a system user or a path is refused by name (issue 20 §2)."""
    from comfy.cli_args import args
    from engine_support import pack_module

    engine = fresh_engine
    node = pack_module(engine).nodes.train_preference_node
    users = other_users
    write_dataset(users / "alice_1", "alice-taste", WARM, COOL, per_prompt=1, prompts=["a red apple"])
    write_dataset(users / "__system", "hidden", WARM, COOL, per_prompt=1, prompts=["x"])
    choices = lambda: engine.node_class("ReNOTrainPreferenceReward").INPUT_TYPES()["required"]["dataset"][0]  # noqa: E731
    assert "alice_1/alice-taste" not in choices() and "engine-taste" in choices()  # single user: user/default only
    monkeypatch.setattr(args, "multi_user", True)
    offered = choices()
    assert "alice_1/alice-taste" in offered and "engine-taste" in offered, offered
    assert not [c for c in offered if c.startswith("__")], offered
    assert node.dataset_location("alice_1/alice-taste") == (users / "alice_1", "alice-taste")
    assert node.dataset_location("engine-taste") == (users / "default", "engine-taste")
    for bad in ("__system/hidden", "../alice_1/alice-taste", "nobody/x", "/etc/x"):
        with pytest.raises(ValueError, match="is not a user of this ComfyUI"):
            node.dataset_location(bad)
    p = prompt("alice-run", epochs=1)
    p[NODE_ID]["inputs"]["dataset"] = "alice_1/alice-taste"
    res = engine.execute(p)
    res.raise_for_error()
    meta = json.loads((setup / "custom" / "alice-run" / "reward.json").read_text())
    assert meta["pairs"] == 1 and meta["dataset"] == "alice_1/alice-taste"  # alice's one pair, not default's 12
