"""A first use's reward download through ReNO Load Reward in a real engine: the node's progress bar and status-line
events show bytes/total per file, and Cancel (the host's interrupt) stops a download cleanly."""

from __future__ import annotations

from pathlib import Path

import pytest
from fake_hub import FakeHub

PICKSCORE = "yuvalkirstain/PickScore_v1"
LAION_CLIP_H = "laion/CLIP-ViT-H-14-laion2B-s32B-b79K"
FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json")
NODE_ID = "17"


@pytest.fixture
def empty_rewards(fresh_engine, tmp_path, monkeypatch):
    """The engine's reno_rewards folders replaced by one empty folder; downloads on; a fake Hub serving the tiny
    pickscore files under their real repositories; the recording server has a client to send to."""
    from tiny_rewards import write_reward_root

    source = write_reward_root(tmp_path / "source", ("pickscore",)) / "pickscore"
    root = tmp_path / "reno_rewards"
    root.mkdir()
    fp = fresh_engine.folder_paths
    monkeypatch.setitem(fp.folder_names_and_paths, "reno_rewards", ([str(root)], fp.folder_names_and_paths[
        "reno_rewards"][1]))
    monkeypatch.delenv("RENO_REWARDS_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("RENO_DOWNLOADS", "1")
    monkeypatch.setattr(fresh_engine.server, "client_id", "reno-test-client")
    fresh_engine.server.clear()
    fresh_engine.progress_events.clear()
    with FakeHub() as hub:
        monkeypatch.setenv("HF_ENDPOINT", hub.url)
        for name in FILES:
            hub.add(PICKSCORE if name in ("config.json", "model.safetensors") else LAION_CLIP_H, name,
                    (source / name).read_bytes())
        yield hub, root / "pickscore", {name: (source / name).stat().st_size for name in FILES}


def download_events(engine) -> list[dict]:
    return [e.data for e in engine.server.sent if e.event == "reno.download"]


def test_the_loader_shows_bytes_of_each_file_on_its_progress_bar_and_status_line(fresh_engine, empty_rewards):
    _, folder, sizes = empty_rewards
    (stack,) = fresh_engine.call_node("ReNORewardLoader", inference=True, reward="pickscore", weight=1.0,
                                      unique_id=NODE_ID)
    assert stack[0].name == "pickscore" and all((folder / n).is_file() for n in FILES)
    events = download_events(fresh_engine)
    assert {e["node"] for e in events} == {NODE_ID}
    assert all(e.sid == "reno-test-client" for e in fresh_engine.server.sent if e.event == "reno.download")
    for index, name in enumerate(FILES, 1):
        mine = [e for e in events if e["file"] == name]
        assert mine[0]["phase"] == "download" and mine[0]["done"] == 0, mine[0]
        assert [e["phase"] for e in mine[-2:]] == ["verify", "done"]
        assert {(e["reward"], e["index"], e["count"], e["total"]) for e in mine} == {("pickscore", index, 5, sizes[name])}
        done = [e["done"] for e in mine]
        assert done == sorted(done) and done[-1] == sizes[name]
    assert events[-1]["phase"] == "done" and events[-1]["index"] == events[-1]["count"] == 5
    # ComfyUI's progress bar on the node: bytes of each file out of its size, ending full
    bars = [(ev.value, ev.total) for ev in fresh_engine.progress_events if str(ev.node_id) == NODE_ID]
    for name in FILES:
        mine = [v for v, t in bars if t == sizes[name]]
        assert mine and mine[0] == 0 and mine[-1] == sizes[name] and mine == sorted(mine), name


def test_cancel_stops_a_download_mid_file_and_keeps_nothing_of_it(fresh_engine, empty_rewards):
    import comfy.model_management

    hub, folder, sizes = empty_rewards
    hub.set_mode(PICKSCORE, "model.safetensors", "slow")  # seconds of trickle: Cancel lands mid-file
    total = sizes["model.safetensors"]
    pressed = []

    def press_cancel_mid_file(ev):
        if not pressed and str(ev.node_id) == NODE_ID and ev.total == total and 0 < ev.value < total:
            pressed.append(ev.value)
            fresh_engine.interrupt()  # what POST /interrupt does

    fresh_engine.add_progress_callback(press_cancel_mid_file)
    with pytest.raises(comfy.model_management.InterruptProcessingException):
        fresh_engine.call_node("ReNORewardLoader", inference=True, reward="pickscore", weight=1.0, unique_id=NODE_ID)
    assert pressed and 0 < pressed[0] < total
    assert (folder / "config.json").is_file()  # complete before the cancel: kept
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]  # nothing partial, no staging
    assert not [p for p in Path(folder).parent.rglob("*") if p.suffix == ".incomplete"]
    last = download_events(fresh_engine)[-1]
    assert last["phase"] == "stopped" and last["file"] == "model.safetensors" and last["node"] == NODE_ID
    # the next run downloads the rest
    hub.set_mode(PICKSCORE, "model.safetensors", "ok")
    fresh_engine.reset_interrupt()
    (stack,) = fresh_engine.call_node("ReNORewardLoader", inference=True, reward="pickscore", weight=1.0,
                                      unique_id=NODE_ID)
    assert stack[0].name == "pickscore" and (folder / "model.safetensors").stat().st_size == total


def test_a_failed_download_tells_the_status_line(fresh_engine, empty_rewards):
    hub, folder, _ = empty_rewards
    hub.set_mode(PICKSCORE, "model.safetensors", "corrupt")
    with pytest.raises(RuntimeError, match="corrupted"):
        fresh_engine.call_node("ReNORewardLoader", inference=True, reward="pickscore", weight=1.0, unique_id=NODE_ID)
    last = download_events(fresh_engine)[-1]
    assert last["phase"] == "failed" and last["file"] == "model.safetensors"
    assert not (folder / "model.safetensors").exists()
