"""The preference store (reward_loaders/preferences.py): append-only records, atomic under concurrency and crashes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest

from reward_loaders import preferences as prefs

STORE = Path(prefs.__file__)


def png(tag: int) -> bytes:
    """A small valid-looking PNG payload (the store checks the signature only) unique per tag."""
    return prefs.PNG_SIGNATURE + tag.to_bytes(4, "big") + b"IEND"


def fields(prompt: str, mark: str, name: str = "a.png") -> dict:
    return {"prompt": prompt, "mark": mark,
            "source": {"node": "ReNOIterationPreview", "filename": name, "subfolder": "", "type": "temp"}}


def test_records_round_trip_with_images_and_comparisons(tmp_path):
    a = prefs.append_record(tmp_path, "default", fields("a cat", "preferred"), png(1))
    b = prefs.append_record(tmp_path, "default", fields("a cat", "rejected", "b.png"), png(2))
    c = prefs.append_record(tmp_path, "default", fields("a dog", "rejected", "c.png"), png(3))
    d = prefs.append_record(tmp_path, "default", fields("a cat", "rejected", "d.png"), png(4))
    folder = tmp_path / "reno_preferences" / "default"
    assert sorted(p.name for p in folder.iterdir()) == [".lock", "images", "records.jsonl"]
    lines = [json.loads(x) for x in (folder / "records.jsonl").read_text().splitlines()]
    assert lines == [a, b, c, d]
    assert set(a) == {"id", "time", "prompt", "image", "mark", "compared_with", "source"}
    assert a["image"].startswith("images/") and (folder / a["image"]).read_bytes() == png(1)
    assert len(a["id"]) == 32 and int(a["id"], 16) >= 0 and isinstance(a["time"], float)
    assert a["source"] == {"node": "ReNOIterationPreview", "filename": "a.png", "subfolder": "", "type": "temp"}
    # compared_with: the same prompt's records with the opposite mark when the mark was made
    assert a["compared_with"] == [] and b["compared_with"] == [a["id"]] and c["compared_with"] == []
    assert d["compared_with"] == [a["id"]]
    assert prefs.read_records(tmp_path, "default") == [a, b, c, d]
    assert prefs.pairs([a, b, c, d]) == [(a, b), (a, d)]
    assert prefs.list_datasets(tmp_path) == ["default"]
    assert prefs.read_records(tmp_path, "other") == [] and prefs.list_datasets(tmp_path / "nowhere") == []


def test_tombstones_hide_records_and_remarking_replaces(tmp_path):
    a = prefs.append_record(tmp_path, "ds", fields("p", "preferred"), png(1))
    b = prefs.append_record(tmp_path, "ds", fields("p", "rejected", "b.png"), png(2))
    # the same image and prompt marked again: the earlier record is tombstoned in the same write
    replaced = []
    a2 = prefs.append_record(tmp_path, "ds", fields("p", "rejected"), png(1), replaced=replaced)
    assert replaced == [a["id"]]
    assert [r["id"] for r in prefs.read_records(tmp_path, "ds")] == [b["id"], a2["id"]]
    assert a2["compared_with"] == []
    assert prefs.delete_records(tmp_path, "ds", [b["id"], "f" * 32, "not-an-id"]) == [b["id"]]
    assert prefs.delete_records(tmp_path, "ds", [b["id"]]) == []  # already gone
    assert [r["id"] for r in prefs.read_records(tmp_path, "ds")] == [a2["id"]]
    lines = [json.loads(x) for x in (tmp_path / "reno_preferences" / "ds" / "records.jsonl").read_text().splitlines()]
    assert [x["id"] for x in lines if x.get("deleted") is True] == [a["id"], b["id"]]
    assert all(set(x) == {"id", "deleted", "time"} for x in lines if x.get("deleted"))
    images = tmp_path / "reno_preferences" / "ds" / "images"
    assert not (images / Path(b["image"]).name).exists()  # no live record names it any more
    assert (images / Path(a2["image"]).name).exists()


def test_truncated_last_line_is_skipped_and_closed_before_the_next_append(tmp_path):
    a = prefs.append_record(tmp_path, "default", fields("p", "preferred"), png(1))
    path = tmp_path / "reno_preferences" / "default" / "records.jsonl"
    with open(path, "ab") as f:  # a crash in the middle of a write
        f.write(b'{"id": "0123456789abcdef0123456789abcdef", "time": 1.0, "prompt": "p", "ima')
    assert prefs.read_records(tmp_path, "default") == [a]
    b = prefs.append_record(tmp_path, "default", fields("p", "rejected", "b.png"), png(2))
    assert prefs.read_records(tmp_path, "default") == [a, b]
    assert path.read_bytes().endswith(b"\n")


def test_export_has_the_live_records_and_their_images(tmp_path):
    a = prefs.append_record(tmp_path, "set.1", fields("p", "preferred"), png(1))
    b = prefs.append_record(tmp_path, "set.1", fields("p", "rejected", "b.png"), png(2))
    c = prefs.append_record(tmp_path, "set.1", fields("q", "rejected", "c.png"), png(3))
    prefs.delete_records(tmp_path, "set.1", [c["id"]])
    out = prefs.export_dataset(tmp_path, "set.1", tmp_path / "out" / "x.zip")
    with zipfile.ZipFile(out) as z:
        names = sorted(z.namelist())
        records = [json.loads(x) for x in z.read("set.1/records.jsonl").decode().splitlines()]
        assert z.read(f"set.1/{a['image']}") == png(1)
    assert records == [a, b]
    assert names == sorted(["set.1/records.jsonl", f"set.1/{a['image']}", f"set.1/{b['image']}"])
    with pytest.raises(FileNotFoundError, match="no preference dataset 'missing'"):
        prefs.export_dataset(tmp_path, "missing", tmp_path / "y.zip")


@pytest.mark.parametrize("name", ["default", "a", "Portraits-2025_v1.2", "x" * 64, "_x", "-x"])
def test_safe_dataset_names(name):
    assert prefs.validate_dataset_name(name) == name


@pytest.mark.parametrize("name", ["", ".", "..", ".hidden", "../x", "a/b", "a\\b", "x" * 65, "a b", "ä", "con",
                                  "NUL.txt", "a\x00", None, 3])
def test_unsafe_dataset_names_are_refused(tmp_path, name):
    with pytest.raises(prefs.PreferenceError, match="dataset name"):
        prefs.validate_dataset_name(name)
    with pytest.raises(prefs.PreferenceError):
        prefs.append_record(tmp_path, name, fields("p", "preferred"), png(1))
    assert not (tmp_path / "reno_preferences").exists() or not any((tmp_path / "reno_preferences").iterdir())


def test_bad_records_are_refused(tmp_path):
    with pytest.raises(prefs.PreferenceError, match="'preferred' or 'rejected'"):
        prefs.append_record(tmp_path, "d", fields("p", "meh"), png(1))
    with pytest.raises(prefs.PreferenceError, match="PNG"):
        prefs.append_record(tmp_path, "d", fields("p", "preferred"), b"GIF89a")
    with pytest.raises(prefs.PreferenceError, match="at most 10000"):
        prefs.append_record(tmp_path, "d", fields("p" * 10_001, "preferred"), png(1))
    assert prefs.read_records(tmp_path, "d") == []


def test_concurrent_threads_lose_nothing(tmp_path):
    def work(t):
        for i in range(50):
            prefs.append_record(tmp_path, "default", fields(f"p{i % 3}", "preferred" if t % 2 else "rejected"),
                                png(t * 1000 + i))

    threads = [threading.Thread(target=work, args=(t,)) for t in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    records = prefs.read_records(tmp_path, "default")
    assert len(records) == 200 and len({r["id"] for r in records}) == 200


WORKER = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("prefs_store", sys.argv[1])
prefs = importlib.util.module_from_spec(spec); spec.loader.exec_module(prefs)
tag = int(sys.argv[3])
for i in range(int(sys.argv[4])):
    prefs.append_record(sys.argv[2], "default", {"prompt": "p%d" % (i % 5), "mark": ("preferred", "rejected")[tag],
                        "source": {"node": "n", "filename": "f%d.png" % i}},
                        prefs.PNG_SIGNATURE + (tag * 100000 + i).to_bytes(4, "big"))
"""


def test_two_processes_appending_at_once_lose_nothing(tmp_path):
    n = 200
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(STORE), str(tmp_path), str(tag), str(n)])
             for tag in (0, 1)]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    path = tmp_path / "reno_preferences" / "default" / "records.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 2 * n and all(json.loads(x)["id"] for x in lines)  # every line whole
    records = prefs.read_records(tmp_path, "default")
    assert len(records) == 2 * n and len({r["id"] for r in records}) == 2 * n
    assert sorted(r["mark"] for r in records) == ["preferred"] * n + ["rejected"] * n
    assert len(list((path.parent / "images").iterdir())) == 2 * n
    assert len(prefs.pairs(records)) > 0
