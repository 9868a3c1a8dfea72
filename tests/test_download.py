"""The real download code against a loopback server that behaves like the Hub (HF_ENDPOINT)."""

import dataclasses
import hashlib
import http.client
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
import torch
from fake_hub import FakeHub
from hypothesis import example, given, settings
from hypothesis import strategies as st
from reno_pack.reward_loaders import RewardFilesMissing, load_reward
from reno_pack.reward_loaders import download as dl
from reno_pack.reward_loaders.download import DownloadError, Source, check_url, downloads_enabled, fetch
from reno_pack.reward_loaders.registry import (
    AESTHETIC_SHA256,
    AESTHETIC_SIZE,
    AESTHETIC_URL,
    LAION_CLIP_H,
    PICKSCORE,
    REWARDS,
    ensure_files,
)
from reno_pack.reward_loaders.staging import boot_id

ROOT = Path(__file__).resolve().parents[1]
PICKSCORE_FILES = ("config.json", "model.safetensors", "vocab.json", "merges.txt", "tokenizer_config.json")


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


# -- staging left by a killed download ---------------------------------------------------------------

CHILD = """
import importlib.util, sys
from pathlib import Path
pack, root = Path(sys.argv[1]), Path(sys.argv[2])
spec = importlib.util.spec_from_file_location("reno_pack", pack / "__init__.py", submodule_search_locations=[str(pack)])
module = importlib.util.module_from_spec(spec)
sys.modules["reno_pack"] = module
spec.loader.exec_module(module)
from reno_pack.reward_loaders.registry import ensure_files
ensure_files("pickscore", [root], download=True)
"""


def _incomplete_files(staging: Path) -> list[Path]:
    # huggingface_hub writes the .incomplete file in large chunks: it may still be empty on disk
    return [p for p in staging.rglob("*.incomplete") if p.is_file()]


def test_stale_staging_of_a_killed_download_is_cleaned_at_load(hub, reward_root, tmp_path):
    serve_pickscore(hub, reward_root, {(PICKSCORE, "model.safetensors"): "slow"})
    root = tmp_path / "reno_rewards"
    folder, staging = root / "pickscore", root / "pickscore" / ".reno-download"
    env = {**os.environ, "HF_ENDPOINT": hub.url, "HF_HUB_DISABLE_XET": "1", "RENO_DOWNLOADS": "1",
           "HF_HOME": str(tmp_path / "hf_home")}
    env.pop("HF_HUB_OFFLINE", None)
    child = subprocess.Popen([sys.executable, "-c", CHILD, str(ROOT), str(root)], env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 120
        slow_get = ("GET", f"/{PICKSCORE}/resolve/main/model.safetensors")
        while not (staging.is_dir() and _incomplete_files(staging) and slow_get in hub.requests):
            assert child.poll() is None, child.stdout.read().decode(errors="replace")
            assert time.monotonic() < deadline, "the child never started the slow transfer"
            time.sleep(0.05)
        time.sleep(0.3)  # mid-transfer of the slow file (it takes seconds)
        assert child.poll() is None
    finally:
        child.kill()  # SIGKILL: no finally clause, no atexit in the child runs
        child.wait(timeout=30)
    assert child.returncode != 0
    assert list(staging.glob("*.lock")) and _incomplete_files(staging)
    assert not (folder / "model.safetensors").exists()
    # the user puts the files in by hand; loading with downloads off cleans what the killed process left
    for name in PICKSCORE_FILES:
        shutil.copy(reward_root / "pickscore" / name, folder / name)
    model = load_reward("pickscore", [root], download=False)
    assert not staging.exists()
    assert torch.isfinite(model(torch.rand(1, 3, 64, 64), "a cat")).all()


def _fake_download(folder: Path, pid: int, host: str | None = None, age_s: float = 0.0) -> tuple[Path, Path]:
    """Staging as ``fetch`` writes it (a lock naming the process, a work folder with an .incomplete file)."""
    staging = folder / ".reno-download"
    work = staging / f"{pid}-cafe"
    part = work / ".cache" / "huggingface" / "download" / "abc.incomplete"
    part.parent.mkdir(parents=True)
    part.write_bytes(b"x" * 1000)
    lock = staging / f"{pid}-cafe.lock"
    lock.write_text(json.dumps({"pid": pid, "host": host or socket.gethostname(), "boot": boot_id(),
                                "started": time.time() - age_s}))
    if age_s:
        old = time.time() - age_s
        for p in [lock, *work.rglob("*"), work]:
            os.utime(p, (old, old))
    return lock, part


def test_a_live_downloads_staging_is_left_alone(reward_root, tmp_path):
    root = tmp_path / "reno_rewards"
    shutil.copytree(reward_root / "pickscore", root / "pickscore")
    folder = root / "pickscore"
    mine = _fake_download(folder, os.getpid())  # this process: alive
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"])
    try:
        theirs = _fake_download(folder, sleeper.pid)  # a running child
        elsewhere = _fake_download(folder, 1, host="another-machine.example")  # cannot be checked: kept while fresh
        load_reward("pickscore", [root], download=False)
        assert dl.clean_stale_staging(folder) == []
        assert all(p.exists() for p in (*mine, *theirs, *elsewhere))
    finally:
        sleeper.kill()
        sleeper.wait(timeout=30)
    # the same lock, once its process is gone, is stale
    removed = dl.clean_stale_staging(folder)
    assert theirs[0] in removed and not theirs[0].exists() and not theirs[1].exists()
    assert mine[0].exists() and mine[1].exists() and elsewhere[0].exists()


def test_staging_unchanged_for_a_day_or_owned_by_no_lock_is_stale(tmp_path):
    folder = tmp_path / "pickscore"
    old_elsewhere = _fake_download(folder, 1, host="another-machine.example", age_s=2 * 24 * 3600)
    staging = folder / ".reno-download"
    legacy_old, legacy_new = staging / "old.part", staging / "new.part"  # no lock owns these
    legacy_old.write_bytes(b"1")
    legacy_new.write_bytes(b"2")
    os.utime(legacy_old, (time.time() - 2 * 3600,) * 2)
    removed = dl.clean_stale_staging(folder)
    assert set(removed) >= {old_elsewhere[0], legacy_old}
    assert not old_elsewhere[0].exists() and not old_elsewhere[1].exists() and not legacy_old.exists()
    assert legacy_new.exists()  # might be a download starting right now


def test_a_download_never_removes_another_live_downloads_staging(hub, tmp_path):
    folder = tmp_path / "pickscore"
    live = _fake_download(folder, os.getpid())
    url = hub.add_raw("head.pth", b"w" * 5000)
    fetch(Source(url=url, sha256=hashlib.sha256(b"w" * 5000).hexdigest()), folder, "head.pth")
    assert (folder / "head.pth").is_file()
    assert live[0].exists() and live[1].exists()
    assert sorted(p.name for p in (folder / ".reno-download").iterdir()) == [live[0].name[:-5], live[0].name]


# -- downloads on, but the network does not answer ----------------------------------------------------

def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _assert_lists(msg: str, folder: Path, host: str, names):
    assert f"in {folder}" in msg and f"put them in {folder}" in msg
    assert f"from {host} (HF_ENDPOINT)" in msg
    for name in names:
        assert f"{host}/" in next(line for line in msg.splitlines() if line.strip().startswith(f"- {name}")), name
    assert "huggingface.co" not in msg  # not a host that was never asked


def test_no_network_names_every_missing_file_the_folder_and_the_host_used(tmp_path, monkeypatch):
    host = f"http://127.0.0.1:{_free_port()}"  # nothing listens: connection refused
    monkeypatch.setenv("HF_ENDPOINT", host)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    root = tmp_path / "reno_rewards"
    with pytest.raises(DownloadError) as e:
        load_reward("pickscore", [root], download=True)
    msg = str(e.value)
    _assert_lists(msg, root / "pickscore", host, PICKSCORE_FILES)
    assert "5 files" in msg and "Connect" in msg and "by hand" in msg


def test_a_failure_midway_lists_the_files_still_missing(hub, reward_root, tmp_path):
    serve_pickscore(hub, reward_root)
    del hub.files[f"/{LAION_CLIP_H}/resolve/main/vocab.json"]  # the hub answers 404 for it
    root = tmp_path / "reno_rewards"
    with pytest.raises(DownloadError) as e:
        ensure_files("pickscore", [root], download=True)
    msg = str(e.value)
    _assert_lists(msg, root / "pickscore", hub.url, ("vocab.json", "merges.txt", "tokenizer_config.json"))
    assert "3 files" in msg and "downloading vocab.json" in msg
    assert "- config.json" not in msg and (root / "pickscore" / "model.safetensors").is_file()


def test_without_hf_endpoint_the_message_names_the_public_hub(tmp_path, monkeypatch):
    monkeypatch.delenv("HF_ENDPOINT", raising=False)
    src = Source(PICKSCORE)
    assert src.host() == "https://huggingface.co"
    assert src.download_url("model.safetensors") == f"https://huggingface.co/{PICKSCORE}/resolve/main/model.safetensors"
    monkeypatch.setenv("HF_ENDPOINT", "https://hf-mirror.example/")
    assert src.host() == "https://hf-mirror.example (HF_ENDPOINT)"
    assert src.download_url("model.safetensors").startswith("https://hf-mirror.example/yuvalkirstain/")


# -- plain URLs: https, or http to exactly the loopback host ------------------------------------------

LABEL = st.text("abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=12)
LOOPBACK = st.sampled_from(["localhost", "127.0.0.1", "[::1]", "LOCALHOST"])
HOSTILE_HOST = st.one_of(
    st.builds(lambda a, lb: f"{a}.{lb}", LOOPBACK, LABEL),  # localhost.evil.example, 127.0.0.1.nip.io
    st.builds(lambda lb, a: f"{lb}.{a}", LABEL, LOOPBACK),  # evil.localhost
    st.builds(lambda a, lb: f"{a}{lb}", LOOPBACK, LABEL),  # localhostevil
    st.builds(lambda a, lb: f"{a}@{lb}.example", LOOPBACK, LABEL),  # userinfo: the host is after the @
    st.builds(lambda a, lb, sep: f"{lb}.example{sep}{a}", LOOPBACK, LABEL, st.sampled_from(["#@", "?@", "\\@", "\\"])),
    st.sampled_from(["127.1", "0x7f000001", "2130706433", "0.0.0.0", "[::ffff:127.0.0.1]", "127.0.0.2", "[::]"]),
    LABEL,
)


def _connects_to(url: str) -> str | None:
    """The host urllib's own code would open a connection to for ``url`` (None: it would not connect)."""
    try:
        return http.client.HTTPConnection(urllib.request.Request(url).host).host.lower()
    except (ValueError, http.client.InvalidURL):
        return None


@settings(max_examples=300, deadline=None)
@given(host=HOSTILE_HOST, port=st.sampled_from(["", ":80", ":8080"]), path=st.sampled_from(["/", "/x.pth", ""]))
@example(host="localhost.evil.example", port="", path="/")
@example(host="127.0.0.1.nip.io", port="", path="/")
def test_plain_http_goes_only_to_exactly_the_loopback_host(host, port, path):
    url = f"http://{host}{port}{path}"
    try:
        check_url(url)
    except DownloadError as e:
        assert "refusing" in str(e)
        accepted = False
    else:
        accepted = True
    if accepted:  # then urllib really connects to the loopback host, whatever the URL looks like
        assert _connects_to(url) in {"localhost", "127.0.0.1", "::1"}, url
    if host.lower() not in {"localhost", "127.0.0.1", "[::1]"}:
        assert not accepted, url
    # and fetch refuses before any connection is tried
    if not accepted:
        with pytest.MonkeyPatch.context() as mp, pytest.raises(DownloadError, match="refusing"):
            mp.setattr(urllib.request.OpenerDirector, "open", lambda *a, **k: pytest.fail(f"opened {url}"))
            dl._fetch_url(Source(url=url), "x.pth", Path("/nonexistent"))


@pytest.mark.parametrize("url", ["https://github.com/a/b/raw/main/x.pth", "http://localhost:8000/x",
                                 "http://127.0.0.1/x", "http://[::1]:9/x", AESTHETIC_URL])
def test_https_and_exact_loopback_are_accepted(url):
    check_url(url)


@pytest.mark.parametrize("url", ["ftp://example.com/x", "file:///etc/passwd", "https:///x", "http://example.com/x",
                                 "https://exa mple.com/x", "https://example.com/x\n", "//example.com/x",
                                 "http://localhost:99999/x", "https://localhost:port/x"])
def test_other_schemes_empty_hosts_and_odd_characters_are_refused(url):
    with pytest.raises(DownloadError, match="refusing"):
        check_url(url)


def test_a_redirect_to_plain_http_elsewhere_is_not_followed(hub, tmp_path):
    url = hub.add_raw("head.pth", b"w" * 100, mode="redirect:http://example.com/evil.pth")
    with pytest.raises(DownloadError, match="refusing a non-HTTPS source 'http://example.com/evil.pth'"):
        fetch(Source(url=url), tmp_path, "head.pth")
    assert not (tmp_path / "head.pth").exists()
    assert [k for _, k in hub.requests] == ["/raw/head.pth"]


# -- the aesthetic checkpoint: pinned SHA-256 and size ------------------------------------------------

def test_aesthetic_checkpoint_is_pinned_to_its_published_sha256_and_size():
    src = REWARDS["aesthetic"].files[0].source
    assert REWARDS["aesthetic"].files[0].names == ("sac+logos+ava1-l14-linearMSE.pth",)
    assert src.url == AESTHETIC_URL and src.url.startswith("https://")
    assert src.sha256 == AESTHETIC_SHA256 == "21dd590f3ccdc646f0d53120778b296013b096a035a2718c9cb0d511bff0f1e0"
    assert src.size == AESTHETIC_SIZE == 3_714_759


@pytest.mark.parametrize("size, message", [(AESTHETIC_SIZE, "SHA-256 .* does not match"),
                                           (AESTHETIC_SIZE - 10, "incomplete"),
                                           (AESTHETIC_SIZE + 10, "more than")])
def test_a_wrong_aesthetic_file_is_refused_by_its_pin(hub, tmp_path, size, message):
    pinned = REWARDS["aesthetic"].files[0].source
    src = dataclasses.replace(pinned, url=hub.add_raw("sac+logos+ava1-l14-linearMSE.pth", bytes(size)))
    with pytest.raises(DownloadError, match=message):
        fetch(src, tmp_path, "sac+logos+ava1-l14-linearMSE.pth")
    assert not (tmp_path / "sac+logos+ava1-l14-linearMSE.pth").exists()


# -- progress and cancel ------------------------------------------------------------------------------

class HostInterrupt(Exception):
    """Stands for the host's interruption (ComfyUI's InterruptProcessingException): any exception will do."""


def test_progress_is_reported_per_file_in_order_with_the_right_totals(hub, reward_root, tmp_path):
    serve_pickscore(hub, reward_root)
    seen = []
    folder = ensure_files("pickscore", [tmp_path / "r"], download=True, progress=seen.append)
    sizes = {name: (reward_root / "pickscore" / name).stat().st_size for name in PICKSCORE_FILES}
    assert [p.file for p in seen if p.phase == "done"] == list(PICKSCORE_FILES)  # the registry's order
    for index, name in enumerate(PICKSCORE_FILES, 1):
        mine = [p for p in seen if p.file == name]
        assert {(p.reward, p.index, p.count) for p in mine} == {("pickscore", index, 5)}
        assert {p.total for p in mine} == {sizes[name]}, name  # the published size, known from the first report
        phases = [p.phase for p in mine]
        assert phases == ["download"] * (len(phases) - 2) + ["verify", "done"] and len(phases) >= 4, phases
        done = [p.done for p in mine]
        assert done[0] == 0 and done == sorted(done) and done[-3:] == [sizes[name]] * 3, (name, done)
        assert (folder / name).stat().st_size == sizes[name]
    files = [p.file for p in seen]
    assert files == sorted(files, key=PICKSCORE_FILES.index)  # one file after the other, never interleaved


def test_a_big_file_reports_more_than_once_as_bytes_arrive(hub, tmp_path):
    data = os.urandom(3 * dl.CHUNK + 12345)
    url = hub.add_raw("big.pth", data, mode="slow")
    hub.slow_chunk, hub.slow_delay = 256 * 1024, 0.01
    seen = []
    fetch(Source(url=url, sha256=hashlib.sha256(data).hexdigest()), tmp_path, "big.pth",
          lambda phase, done, total: seen.append((phase, done, total)))
    downloads = [d for phase, d, t in seen if phase == "download"]
    assert len(downloads) >= 5 and downloads == sorted(downloads) and downloads[-1] == len(data)
    assert {t for _, _, t in seen} == {len(data)}  # Content-Length: the total is known before the first byte
    assert max(b - a for a, b in zip(downloads, downloads[1:])) <= dl.CHUNK
    assert seen[-2:] == [("verify", len(data), len(data)), ("done", len(data), len(data))]


def test_cancel_mid_file_leaves_nothing_and_raises_the_callers_exception(hub, reward_root, tmp_path):
    serve_pickscore(hub, reward_root, {(PICKSCORE, "model.safetensors"): "slow"})
    root = tmp_path / "reno_rewards"
    folder = root / "pickscore"
    seen = []

    def progress(p):
        seen.append(p)
        if p.file == "model.safetensors" and 0 < p.done < p.total:
            raise HostInterrupt("cancel pressed")

    with pytest.raises(HostInterrupt, match="cancel pressed"):  # the very exception: not a DownloadError
        ensure_files("pickscore", [root], download=True, progress=progress)
    stopped = seen[-1]
    assert stopped.file == "model.safetensors" and 0 < stopped.done < stopped.total  # it was mid-file
    assert (folder / "config.json").is_file()  # the file completed before the cancel stays
    assert not (folder / "model.safetensors").exists()
    assert not (folder / ".reno-download").exists()
    assert sorted(p.name for p in folder.iterdir()) == ["config.json"]  # no partial file under any name
    assert not [p for p in root.rglob("*") if p.suffix == ".incomplete"]
    # a later run downloads what is missing (the cancelled file from its start)
    hub.set_mode(PICKSCORE, "model.safetensors", "ok")
    assert ensure_files("pickscore", [root], download=True) == folder
    assert (folder / "model.safetensors").read_bytes() == (reward_root / "pickscore" / "model.safetensors").read_bytes()


@pytest.mark.parametrize("phase", ["download", "verify"])
def test_cancel_before_the_first_byte_or_during_the_check_keeps_nothing(hub, tmp_path, phase):
    data = b"w" * 5000
    url = hub.add_raw("head.pth", data)

    def progress(p, done, total):
        if p == phase:
            raise HostInterrupt(p)

    with pytest.raises(HostInterrupt):
        fetch(Source(url=url, sha256=hashlib.sha256(data).hexdigest()), tmp_path, "head.pth", progress)
    assert sorted(tmp_path.iterdir()) == []


def test_a_dropped_connection_is_resumed_where_the_server_allows_it(hub, reward_root, tmp_path):
    serve_pickscore(hub, reward_root, {(PICKSCORE, "model.safetensors"): "interrupt-once"})
    seen = []
    folder = ensure_files("pickscore", [tmp_path / "r"], download=True, progress=seen.append)
    want = (reward_root / "pickscore" / "model.safetensors").read_bytes()
    assert (folder / "model.safetensors").read_bytes() == want
    gets = [k for m, k in hub.requests if m == "GET" and k.endswith("/model.safetensors")]
    assert len(gets) == 2  # the dropped one and one resume
    done = [p.done for p in seen if p.file == "model.safetensors"]
    assert done == sorted(done) and done[-1] == len(want)  # never reported backwards
    # a server that ignores Range: the transfer is incomplete, nothing is kept
    serve_pickscore(hub, reward_root, {(PICKSCORE, "model.safetensors"): "norange"})
    hub.requests.clear()
    with pytest.raises(DownloadError, match="incomplete"):
        ensure_files("pickscore", [tmp_path / "other"], download=True)
    assert not (tmp_path / "other" / "pickscore" / "model.safetensors").exists()
    assert not (tmp_path / "other" / "pickscore" / ".reno-download").exists()
