"""The real download code against a loopback server that behaves like the Hub (HF_ENDPOINT)."""

import hashlib

import pytest
import torch
from fake_hub import FakeHub
from reno_pack.reward_loaders import RewardFilesMissing, load_reward
from reno_pack.reward_loaders.download import DownloadError, Source, downloads_enabled, fetch
from reno_pack.reward_loaders.registry import LAION_CLIP_H, PICKSCORE, ensure_files


@pytest.fixture
def hub(monkeypatch):
    with FakeHub() as server:
        monkeypatch.setenv("HF_ENDPOINT", server.url)
        monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        yield server


def serve_pickscore(hub, reward_root, mode_for=None):
    """The tiny pickscore folder's files, published under the real repos they come from."""
    folder = reward_root / "pickscore"
    for name in ("config.json", "model.safetensors"):
        hub.add(PICKSCORE, name, (folder / name).read_bytes())
    for name in ("vocab.json", "merges.txt", "tokenizer_config.json"):
        hub.add(LAION_CLIP_H, name, (folder / name).read_bytes())
    for (repo, name), mode in (mode_for or {}).items():
        hub.set_mode(repo, name, mode)


def test_missing_files_are_downloaded_verified_and_loaded(hub, reward_root, tmp_path):
    serve_pickscore(hub, reward_root)
    root = tmp_path / "reno_rewards"
    model = load_reward("pickscore", [root], download=True)
    folder = root / "pickscore"
    for name in ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json"):
        assert (folder / name).read_bytes() == (reward_root / "pickscore" / name).read_bytes()
    assert not (folder / ".reno-download").exists()
    assert torch.isfinite(model(torch.rand(1, 3, 64, 64), "a cat")).all()
    # only the fixed sources were asked
    assert {k.split("/resolve/")[0] for _, k in hub.requests} == {f"/{PICKSCORE}", f"/{LAION_CLIP_H}"}


def test_only_missing_files_are_fetched(hub, reward_root, tmp_path):
    serve_pickscore(hub, reward_root)
    folder = tmp_path / "root" / "pickscore"
    folder.mkdir(parents=True)
    (folder / "config.json").write_bytes((reward_root / "pickscore" / "config.json").read_bytes())
    ensure_files("pickscore", [tmp_path / "root"], download=True)
    fetched = {k.rsplit("/", 1)[1] for method, k in hub.requests if method == "GET"}
    assert fetched == {"model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json"}


@pytest.mark.parametrize("mode, message", [("interrupt", "failed|incomplete"), ("corrupt", "corrupted")])
def test_a_failed_transfer_never_leaves_a_complete_looking_file(hub, reward_root, tmp_path, mode, message):
    serve_pickscore(hub, reward_root, {(PICKSCORE, "model.safetensors"): mode})
    root = tmp_path / "reno_rewards"
    with pytest.raises(DownloadError, match=message):
        ensure_files("pickscore", [root], download=True)
    folder = root / "pickscore"
    assert not (folder / "model.safetensors").exists()
    assert not (folder / ".reno-download").exists()
    # a later run with a good server completes
    hub.set_mode(PICKSCORE, "model.safetensors", "ok")
    assert ensure_files("pickscore", [root], download=True) == folder


def test_corrupted_small_file_is_caught_by_its_git_hash(hub, reward_root, tmp_path):
    serve_pickscore(hub, reward_root, {(LAION_CLIP_H, "vocab.json"): "corrupt"})
    with pytest.raises(DownloadError, match="git hash"):
        ensure_files("pickscore", [tmp_path / "r"], download=True)
    assert not (tmp_path / "r" / "pickscore" / "vocab.json").exists()


def test_downloads_off_gives_the_list_and_fetches_nothing(hub, reward_root, tmp_path, monkeypatch):
    serve_pickscore(hub, reward_root)
    monkeypatch.setenv("RENO_DOWNLOADS", "0")
    assert not downloads_enabled()
    with pytest.raises(RewardFilesMissing, match="downloads are turned off") as e:
        load_reward("pickscore", [tmp_path / "r"])
    assert "model.safetensors" in str(e.value) and f"https://huggingface.co/{PICKSCORE}" in str(e.value)
    assert hub.requests == []
    monkeypatch.setenv("RENO_DOWNLOADS", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert not downloads_enabled()


def test_plain_url_source_is_verified_by_sha256(hub, tmp_path):
    data = b"weights" * 1000
    url = hub.add_raw("head.pth", data)
    good = Source(url=url, sha256=hashlib.sha256(data).hexdigest())
    assert fetch(good, tmp_path, "head.pth").read_bytes() == data
    bad = Source(url=url, sha256="0" * 64)
    with pytest.raises(DownloadError, match="SHA-256"):
        fetch(bad, tmp_path / "other", "head.pth")
    assert not (tmp_path / "other" / "head.pth").exists()


def test_names_cannot_escape_the_reward_folder(tmp_path):
    with pytest.raises(DownloadError, match="outside"):
        fetch(Source(repo="a/b"), tmp_path / "pickscore", "../../evil.py")


def test_plain_http_to_other_hosts_is_refused(tmp_path):
    with pytest.raises(DownloadError, match="non-HTTPS"):
        fetch(Source(url="http://example.com/x.pth"), tmp_path, "x.pth")
