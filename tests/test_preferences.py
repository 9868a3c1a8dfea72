"""The preference store (preferences/store.py): append-only records, atomic under concurrency and crashes."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
import zipfile
from pathlib import Path

import pytest
from reno_pack.preferences import store as prefs

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
    assert set(a) == {"id", "time", "prompt", "image", "mark", "source"}  # the mark only: pairs are derived
    assert a["image"].startswith("images/") and (folder / a["image"]).read_bytes() == png(1)
    assert len(a["id"]) == 32 and int(a["id"], 16) >= 0 and isinstance(a["time"], float)
    assert a["source"] == {"node": "ReNOIterationPreview", "filename": "a.png", "subfolder": "", "type": "temp"}
    assert prefs.read_records(tmp_path, "default") == [a, b, c, d]
    assert prefs.pairs([a, b, c, d]) == [(a, b), (a, d)] and prefs.pair_count([a, b, c, d]) == 2
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


# -- issue 20 §2: records name their image inside the dataset only; marks, not pairs, are stored ---------------


def hostile_dataset(tmp_path):
    """A dataset with one good pair and records whose image points outside it (an existing PNG and a missing one,
    absolute, by '..', through a symlink, through a symlinked images/ entry)."""
    folder = tmp_path / "user" / "reno_preferences" / "ds"
    (folder / "images").mkdir(parents=True)
    secret = tmp_path / "secret.png"
    secret.write_bytes(png(99))
    (folder / "images" / "good1.png").write_bytes(png(1))
    (folder / "images" / "good2.png").write_bytes(png(2))
    (folder / "images" / "link.png").symlink_to(secret)
    rows = [("images/good1.png", "preferred"), ("images/good2.png", "rejected")]
    hostile = [str(secret), str(tmp_path / "absent.png"), "../../../secret.png", "images/../../../../secret.png",
               "images/link.png", "images/", "images/sub/x.png", "images\\..\\x.png", "IMAGES/good1.png", 7]
    rows += [(h, "preferred") for h in hostile]
    lines = [{"id": f"{i:032x}", "time": 0.0, "prompt": "p", "image": image, "mark": mark,
              "source": {"node": "", "filename": "", "subfolder": "", "type": ""}} for i, (image, mark) in enumerate(rows)]
    (folder / "records.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
    return tmp_path / "user", folder, secret, [x["id"] for x in lines]


def test_a_record_naming_an_image_outside_the_dataset_is_never_listed_exported_deleted_or_paired(tmp_path):
    root, folder, secret, ids = hostile_dataset(tmp_path)
    refused = []
    records = prefs.read_records(root, "ds", refused=refused)
    assert [r["image"] for r in records] == ["images/good1.png", "images/good2.png"]
    assert refused == ids[2:-1]  # the last one's image is no string: not a record at all
    assert prefs.pair_count(records) == 1 and [(p["id"], q["id"]) for p, q in prefs.pairs(records)] == [(ids[0], ids[1])]
    zipped = prefs.export_dataset(root, "ds", tmp_path / "out.zip")
    with zipfile.ZipFile(zipped) as z:
        assert sorted(z.namelist()) == ["ds/images/good1.png", "ds/images/good2.png", "ds/records.jsonl"]
        assert all(z.read(n) != png(99) for n in z.namelist())
    # deleting hostile ids deletes nothing (they are no records), and never touches a file outside
    assert prefs.delete_records(root, "ds", ids[2:]) == []
    assert secret.read_bytes() == png(99) and (folder / "images" / "link.png").is_symlink()
    # the same words whether the outside file exists or not (no oracle for arbitrary paths)
    resolve = prefs.image_resolver(folder)
    errors = []
    for image in (str(secret), str(tmp_path / "absent.png")):
        with pytest.raises(prefs.PreferenceError) as e:
            resolve(image)
        errors.append(str(e.value).replace(image[:80], "<image>"))
    assert errors[0] == errors[1] and "not a file of the dataset's images/ folder" in errors[0]
    assert resolve("images/good1.png") == str((folder / "images" / "good1.png").resolve())
    # images/ itself a link out of the dataset: nothing in it resolves
    other = tmp_path / "other"
    (other / "reno_preferences" / "ds").mkdir(parents=True)
    (other / "reno_preferences" / "ds" / "images").symlink_to(folder / "images")
    with pytest.raises(prefs.PreferenceError):
        prefs.image_file(other / "reno_preferences" / "ds", "images/good1.png")


def test_a_record_does_not_grow_with_the_marks_before_it(tmp_path):
    for i in range(60):
        prefs.append_record(tmp_path, "ds", fields("one prompt", ("preferred", "rejected")[i % 2], f"{i:02d}.png"),
                            png(i))
    lines = (tmp_path / "reno_preferences" / "ds" / "records.jsonl").read_bytes().splitlines()
    assert len(lines) == 60 and all("compared_with" not in json.loads(x) for x in lines)
    # the same fields each time: the lengths differ only by the float time's digits
    assert max(map(len, lines)) - min(map(len, lines)) <= 8, (len(lines[0]), len(lines[-1]))


def test_records_written_with_compared_with_still_load_and_pair(tmp_path):
    folder = tmp_path / "reno_preferences" / "old"
    (folder / "images").mkdir(parents=True)
    rows = []
    for i, mark in enumerate(("preferred", "rejected", "rejected")):
        (folder / "images" / f"{i:032x}.png").write_bytes(png(i))
        rows.append({"id": f"{i + 1:032x}", "time": 1.0 + i, "prompt": "p", "image": f"images/{i:032x}.png",
                     "mark": mark, "compared_with": [r["id"] for r in rows if r["mark"] != mark],
                     "source": {"node": "ReNOSampler", "filename": "x.png", "subfolder": "", "type": "temp"}})
    (folder / "records.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    records = prefs.read_records(tmp_path, "old")
    assert records == [{k: v for k, v in r.items() if k != "compared_with"} for r in rows]
    assert [(p["id"], q["id"]) for p, q in prefs.pairs(records)] == [(rows[0]["id"], rows[1]["id"]),
                                                                     (rows[0]["id"], rows[2]["id"])]
    new = prefs.append_record(tmp_path, "old", fields("p", "rejected", "new.png"), png(7))
    assert "compared_with" not in new and prefs.pair_count(prefs.read_records(tmp_path, "old")) == 3


def synthetic(prompt: str, n_preferred: int, n_rejected: int, start: int = 0) -> list[dict]:
    return [{"id": f"{start + i:032x}", "prompt": prompt, "image": f"images/{start + i}.png",
             "mark": "preferred" if i < n_preferred else "rejected", "source": {}}
            for i in range(n_preferred + n_rejected)]


def test_pairs_per_prompt_are_bounded_seeded_and_use_every_mark():
    cap = prefs.PAIRS_PER_PROMPT
    assert cap == 256
    many, few = synthetic("many", 400, 400), synthetic("few", 3, 2, start=10_000)
    records = many + few
    got = prefs.pairs(records)  # 800 marks on one prompt: 160,000 combinations
    assert len(got) == cap + 6 == prefs.pair_count(records)
    assert len({(p["id"], q["id"]) for p, q in got}) == len(got)  # no pair twice
    assert all(p["prompt"] == q["prompt"] and (p["mark"], q["mark"]) == ("preferred", "rejected") for p, q in got)
    order = {r["id"]: k for k, r in enumerate(records)}
    keys = [(order[p["id"]], order[q["id"]]) for p, q in got]
    assert keys == sorted(keys)  # record order within a prompt, prompts in order of first mark
    assert got[-6:] == [(p, q) for p in few[:3] for q in few[3:]]  # under the bound: every combination
    assert prefs.pairs(records) == got and prefs.pairs(records, seed=0) == got  # deterministic
    assert prefs.pairs(records, seed=1) != got  # and drawn from the seed
    # every mark is used while the bound allows it (200 + 50 marks: 10,000 combinations, 256 kept)
    some = synthetic("some", 200, 50)
    used = {x["id"] for pair in prefs.pairs(some) for x in pair}
    assert len(prefs.pairs(some)) == cap and used == {r["id"] for r in some}
    assert len(prefs.pairs(some, per_prompt=10)) == 10
