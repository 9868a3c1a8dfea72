"""The batch runner's pieces that need no engine: prompt files, workflow targets, layouts, summary, CLI, launcher."""

from __future__ import annotations

import importlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from reno_prompts import SAMPLER_ID, reno_api_prompt

prompts = importlib.import_module("reno_pack.runner.prompts")
workflow = importlib.import_module("reno_pack.runner.workflow")
layouts = importlib.import_module("reno_pack.runner.layouts")
batch = importlib.import_module("reno_pack.runner.batch")
cli = importlib.import_module("reno_pack.runner.cli")
backends = importlib.import_module("reno_pack.runner.backends")
items_mod = importlib.import_module("reno_pack.runner.items")

ROOT = Path(__file__).resolve().parents[1]


def test_geneval_metadata_lines_keep_their_index_and_bad_lines_their_line_number(tmp_path):
    f = tmp_path / "evaluation_metadata.jsonl"
    f.write_text('{"tag": "single_object", "include": [{"class": "bench", "count": 1}], "prompt": "a photo of a bench"}\n'
                 "{oops\n\n"
                 '{"tag": "colors", "prompt": "a photo of a red cake"}\n{"tag": "x"}\n')
    entries, bad = prompts.read_prompt_file(f)
    assert [(e.index, e.line, e.prompt) for e in entries] == [(0, 1, "a photo of a bench"), (2, 4, "a photo of a red cake")]
    assert entries[0].metadata["include"] == [{"class": "bench", "count": 1}]
    assert [(b.index, b.line) for b in bad] == [(1, 2), (3, 5)]
    assert "JSON" in bad[0].error and '"prompt"' in bad[1].error


def test_plain_and_partiprompts_tsv(tmp_path):
    plain = tmp_path / "color_val.txt"
    plain.write_text("a green bench and a blue bowl\n\na red apple\n")
    entries, bad = prompts.read_prompt_file(plain)
    assert [(e.index, e.line, e.prompt) for e in entries] == [(0, 1, "a green bench and a blue bowl"), (1, 3, "a red apple")]
    assert not bad
    tsv = tmp_path / "PartiPrompts.tsv"
    tsv.write_text("Prompt\tCategory\tChallenge\tNote\nbond\tAbstract\tBasic\t\n\tArts\tBasic\t\na cat\tAnimals\tBasic\t\n")
    entries, bad = prompts.read_prompt_file(tsv)
    assert [(e.index, e.line, e.prompt, e.metadata["Category"]) for e in entries] == [
        (0, 2, "bond", "Abstract"), (2, 4, "a cat", "Animals")]
    assert [(b.index, b.line) for b in bad] == [(1, 3)]
    (tmp_path / "nohead.tsv").write_text("Text\tCategory\nx\ty\n")
    with pytest.raises(prompts.PromptFileError, match="Prompt"):
        prompts.read_prompt_file(tmp_path / "nohead.tsv")


def test_default_targets_are_the_positive_encoder_and_every_reno_prompt():
    wf = reno_api_prompt(prompt="p", iterations=2)
    job = workflow.make_job(wf)
    assert job.text_targets == [("2", "text"), (SAMPLER_ID, "prompt")]
    assert job.seed_target == (SAMPLER_ID, "seed")
    built = job.build("a blue cup", 7)
    assert built["2"]["inputs"]["text"] == "a blue cup" and built[SAMPLER_ID]["inputs"]["prompt"] == "a blue cup"
    assert built["3"]["inputs"]["text"] == "" and built[SAMPLER_ID]["inputs"]["seed"] == 7
    assert wf["2"]["inputs"]["text"] == "p"  # the job's workflow is never changed
    assert job.targets == [SAMPLER_ID]


def test_marker_title_prompt_node_links_and_initial_copy():
    wf = reno_api_prompt(prompt="p", iterations=5)
    wf["20"] = {"class_type": "PrimitiveStringMultiline", "inputs": {"value": "p"}, "_meta": {"title": "Prompt [prompt]"}}
    wf["21"] = {"class_type": "PrimitiveInt", "inputs": {"value": 3}}
    wf[SAMPLER_ID]["inputs"]["prompt"] = ["20", 0]
    wf[SAMPLER_ID]["inputs"]["seed"] = ["21", 0]
    job = workflow.make_job(wf, prompt_nodes=["3.text"], save_initial=True)
    assert job.text_targets == [("3", "text"), ("20", "value")]  # explicit replaces the default encoder
    assert job.seed_target == ("21", "value")
    built = job.build("q", 9)
    initial = built[job.initial_node]
    assert initial["class_type"] == "ReNOSampler" and initial["inputs"]["iterations"] == 1
    assert built[SAMPLER_ID]["inputs"]["iterations"] == 5 and built["21"]["inputs"]["value"] == 9
    assert job.targets == [SAMPLER_ID, job.initial_node]


def test_candidates_search_every_item_and_the_initial_copy_keeps_the_seeds_own_image():
    wf = reno_api_prompt(prompt="p", iterations=5)
    job = workflow.make_job(wf, save_initial=True, candidates=4)
    assert "candidates" not in wf[SAMPLER_ID]["inputs"]  # the caller's workflow is not changed
    built = job.build("q", 9)
    assert built[SAMPLER_ID]["inputs"]["candidates"] == 4 and built[SAMPLER_ID]["inputs"]["keep"] == 1
    assert built[job.initial_node]["inputs"]["candidates"] == 1 and built[job.initial_node]["inputs"]["keep"] == 1
    assert workflow.workflow_sha256(job.workflow) != workflow.workflow_sha256(workflow.make_job(wf).workflow)
    assert "candidates" not in workflow.make_job(wf).build("q", 9)[SAMPLER_ID]["inputs"]  # default: the workflow's
    with pytest.raises(workflow.WorkflowError, match="--candidates 0"):
        workflow.make_job(wf, candidates=0)
    args = cli.build_parser().parse_args(["--workflow", "w.json", "--prompts", "p.txt", "--out", "o", "--candidates", "8"])
    assert args.candidates == 8


@pytest.mark.parametrize("mutate, match", [
    (lambda wf: wf.pop(SAMPLER_ID), "no ReNO Sampler"),
    (lambda wf: wf.__setitem__("70", dict(wf[SAMPLER_ID])), "2 ReNO Samplers"),
    (lambda wf: wf["2"].__setitem__("class_type", "ConditioningZeroOut") or wf["2"].__setitem__("inputs", {}),
     r"\[prompt\]"),
])
def test_unusable_workflows_say_what_to_do(mutate, match):
    wf = reno_api_prompt(prompt="p")
    mutate(wf)
    with pytest.raises(workflow.WorkflowError, match=match):
        workflow.make_job(wf)


def test_ui_format_workflow_is_refused_with_the_export_hint(tmp_path):
    f = tmp_path / "ui.json"
    f.write_text(json.dumps({"nodes": [], "links": []}))
    with pytest.raises(workflow.WorkflowError, match="Export \\(API\\)"):
        workflow.load_workflow(f)


def test_layouts():
    kw = dict(index=3, seed=2, prompt="a red/blue cube", position=1, n_seeds=4)
    assert layouts.image_path("geneval", "best", **kw) == "images/00003/samples/00002.png"
    assert layouts.image_path("geneval", "initial", **kw) == "initial/00003/samples/00002.png"
    assert layouts.image_path("t2i-compbench", "best", **kw) == "samples/a red blue cube_000013.png"
    assert layouts.image_path("t2i-compbench", "initial", **kw) == "initial/samples/a red blue cube_000013.png"
    assert layouts.image_path("plain", "best", **kw) == "images/00003_00002.png"
    side = layouts.side_files("geneval", "best", index=3, metadata={"prompt": "x", "tag": "t"})
    assert json.loads(side["images/00003/metadata.jsonl"]) == {"prompt": "x", "tag": "t"}


def test_summary_means_gains_and_share_improved():
    recs = [{"initial": {"a": 1.0, "total": 2.0}, "best": {"a": 2.0, "total": 3.0}, "seconds": 2.0, "node_seconds": 1.5},
            {"initial": {"a": 3.0, "total": 4.0}, "best": {"a": 2.0, "total": 5.0}, "seconds": 4.0, "node_seconds": 3.5}]
    s = batch.summarize(recs)
    assert s["rewards"]["a"] == {"n": 2, "mean_initial": 2.0, "mean_best": 2.0, "mean_gain": 0.0, "share_improved": 0.5}
    assert s["rewards"]["total"]["mean_gain"] == 1.0 and s["rewards"]["total"]["share_improved"] == 1.0
    assert s["mean_seconds_per_item"] == 3.0 and s["mean_node_seconds_per_item"] == 2.5
    table = batch.format_summary(s)
    assert "weighted total" in table and "50%" in table


def test_seeds_option():
    assert cli.parse_seeds("0,1,2,3") == [0, 1, 2, 3] and cli.parse_seeds("0-3") == [0, 1, 2, 3]
    with pytest.raises(Exception, match="distinct"):
        cli.parse_seeds("1,1")


@pytest.mark.parametrize(("layout", "value"), [("as-loaded", "0"), ("channels-last", "1"), ("measured", "kept")])
@pytest.mark.parametrize("before", [None, "1"])
def test_the_batch_pins_the_vae_layout_for_each_item_and_restores_the_environment(monkeypatch, layout, value, before):
    worker = importlib.import_module("reno_pack.runner.worker")
    if before is None:
        monkeypatch.delenv("RENO_CHANNELS_LAST", raising=False)
    else:
        monkeypatch.setenv("RENO_CHANNELS_LAST", before)
    with worker.pinned_vae_layout(layout):
        assert os.environ.get("RENO_CHANNELS_LAST") == (before if value == "kept" else value)
    assert os.environ.get("RENO_CHANNELS_LAST") == before
    with pytest.raises(ValueError, match="as-loaded"):
        with worker.pinned_vae_layout("nhwc"):
            pass
    assert worker.DEFAULT_OPTIONS["vae_layout"] == "as-loaded"
    args = cli.build_parser().parse_args(["--workflow", "w.json", "--prompts", "p.txt", "--out", "o", "--vae-layout", layout])
    assert args.vae_layout == layout


def test_launcher_runs_without_the_pack_on_sys_path(tmp_path):
    """scripts/reno_batch.py imports the pack by folder as ``reno_pack`` and reports bad input as one clear line."""
    wf = tmp_path / "wf.json"
    wf.write_text(json.dumps({"nodes": [], "links": []}))
    (tmp_path / "p.txt").write_text("a cat\n")
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "reno_batch.py"), "--workflow", str(wf), "--prompts",
                           str(tmp_path / "p.txt"), "--out", str(tmp_path / "o")], capture_output=True, text=True,
                          cwd=tmp_path, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "UI-format" in proc.stderr and "Traceback" not in proc.stderr
    help_ = subprocess.run([sys.executable, str(ROOT / "scripts" / "reno_batch.py"), "--help"], capture_output=True,
                           text=True, cwd=tmp_path, timeout=120)
    assert help_.returncode == 0 and "--layout" in help_.stdout and "--ray" in help_.stdout


def test_missing_ray_gives_the_install_command(monkeypatch):
    ray_backend = importlib.import_module("reno_pack.runner.ray_backend")
    monkeypatch.setitem(sys.modules, "ray", None)  # import ray -> ImportError
    with pytest.raises(SystemExit, match=r'pip install "ray\[default\]"'):
        ray_backend.import_ray()


# -- output folder: long names, write errors, one run at a time, durable writes (issue 20 §2) -----------------

CHINESE = ("一只红色的猫坐在蓝色的椅子上旁边有一张绿色的桌子" * 5)[:100]  # 100 characters, 300 bytes of UTF-8
PNG = b"\x89PNG\r\n\x1a\n" + b"\0" * 16  # the runner stores the bytes it is given


def fake_config(tmp_path, lines, layout="t2i-compbench", seeds=(0,)):
    pf = tmp_path / "prompts.txt"
    pf.write_text("\n".join(lines) + "\n", encoding="utf-8")
    source = backends.WorkflowSource(workflow.make_job(reno_api_prompt(prompt="p")))  # never run: fake_dispatch
    return batch.BatchConfig(source=source, prompt_file=pf, out=tmp_path / "out", seeds=list(seeds), layout=layout,
                             progress=False)


def fake_dispatch(ran=None, during=None):
    """A backend that makes every item at once (no engine): scores and the PNG bytes above."""

    def dispatch(cfg, todo, on_outcome, stop):
        for item in todo:
            if ran is not None:
                ran.append(item.prompt)
            if during is not None:
                during(item)
            on_outcome(item, items_mod.ItemResult(
                rewards=[{"label": "r", "name": "r", "weight": 1.0}], initial={"r": 0.0, "total": 0.0},
                best={"r": 1.0, "total": 1.0}, best_iteration=1, iterations=2, stop_reason=None, images={"best": PNG},
                seconds=0.01))

    return dispatch


def test_a_long_non_latin_prompt_is_cut_to_the_file_systems_byte_limit_on_a_character_boundary(tmp_path):
    assert len(CHINESE) == 100 and len(CHINESE.encode()) == 300
    limit = layouts.name_max(tmp_path)
    assert limit == (os.pathconf(tmp_path, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255)
    kw = dict(index=0, seed=0, position=0, n_seeds=1)
    for max_name in (limit, 64, 20):
        name = layouts.image_path("t2i-compbench", "best", prompt=CHINESE, max_name=max_name, **kw).split("/")[-1]
        stem = name[: -len("_000000.png")]
        assert len(name.encode()) <= max_name and CHINESE.startswith(stem) and stem, (max_name, name)
        assert len(stem.encode()) > max_name - len("_000000.png") - 3  # cut at most one 3-byte character short
    # what fits keeps the name it always had (T2I-CompBench reads the prompt back; a resumed run finds its files)
    assert layouts.image_path("t2i-compbench", "best", prompt="a red/blue cube ", **kw) == "samples/a red blue cube_000000.png"
    ascii_long = "a" * 230  # the 200-character cut as before
    assert layouts.image_path("t2i-compbench", "best", prompt=ascii_long, **kw) == f"samples/{'a' * 200}_000000.png"
    assert "?" in layouts.image_path("t2i-compbench", "best", prompt="cat \ud800 dog", **kw)  # no name holds it

    cfg = fake_config(tmp_path, [CHINESE, "a green bench", CHINESE + "也是"])
    assert batch.run_batch(cfg, dispatch=fake_dispatch()) == batch.EXIT_OK
    names = sorted(p.name for p in (cfg.out / "samples").iterdir())
    assert len(names) == 3 and all(len(n.encode()) <= limit for n in names), names
    results = [json.loads(x) for x in (cfg.out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(cfg.out / r["image"]).read_bytes() for r in results] == [PNG] * 3
    assert not (cfg.out / "failures.jsonl").exists() or not (cfg.out / "failures.jsonl").read_text()


def test_a_file_the_file_system_refuses_is_a_failed_item_and_the_run_and_its_resume_go_on(tmp_path, monkeypatch):
    monkeypatch.setattr(batch, "name_max", lambda folder: 1000)  # a file system that says more than it takes
    cfg = fake_config(tmp_path, ["a green bench", CHINESE, "a red apple"])
    ran = []
    assert batch.run_batch(cfg, dispatch=fake_dispatch(ran)) == batch.EXIT_FAILURES
    assert ran == ["a green bench", CHINESE, "a red apple"]  # the items after the bad one were made
    (fail,) = [json.loads(x) for x in (cfg.out / "failures.jsonl").read_text(encoding="utf-8").splitlines()]
    assert fail["kind"] == "item" and fail["line"] == 2 and "could not write its files" in fail["error"]
    assert "File name too long" in fail["error"] or "ENAMETOOLONG" in fail["error"] or "36" in fail["error"], fail
    assert sorted(p.name for p in (cfg.out / "samples").iterdir()) == ["a green bench_000000.png",
                                                                       "a red apple_000002.png"]
    assert not [p for p in (cfg.out / "samples").iterdir() if p.name.startswith(".")]  # no temporary file left
    # resume: only the failed item runs again, and fails again, cleanly (also with a result line naming it)
    with (cfg.out / "results.jsonl").open("a", encoding="utf-8") as f:
        f.write(json.dumps({"index": 1, "seed": 0, "initial": {}, "best": {}}) + "\n")
    ran.clear()
    assert batch.run_batch(cfg, dispatch=fake_dispatch(ran)) == batch.EXIT_FAILURES
    assert ran == [CHINESE]


def test_a_second_run_on_the_same_output_folder_stops_and_names_the_pid_holding_it(tmp_path):
    cfg = fake_config(tmp_path, ["a green bench", "a red apple"], layout="plain")
    second = []

    def during(item):  # while the first run holds the folder, the same command starts again
        if not second:
            with pytest.raises(SystemExit) as e:
                batch.run_batch(cfg, dispatch=fake_dispatch())
            second.append(str(e.value.code))

    assert batch.run_batch(cfg, dispatch=fake_dispatch(during=during)) == batch.EXIT_OK
    assert second and f"in use by another reno-batch run (PID {os.getpid()})" in second[0], second
    lines = (cfg.out / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2  # the refused run wrote nothing: no duplicate result lines
    assert (cfg.out / batch.LOCK_FILE).read_text().strip() == str(os.getpid())
    ran = []
    assert batch.run_batch(cfg, dispatch=fake_dispatch(ran)) == batch.EXIT_OK and ran == []  # released at the end


def test_each_file_is_fsynced_before_its_rename_and_the_folder_after(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        st = os.fstat(fd)
        events.append(("fsync", "dir" if stat.S_ISDIR(st.st_mode) else "file", st.st_ino))
        return real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino, str(dst)))
        return real_replace(src, dst)

    monkeypatch.setattr(batch.os, "fsync", fsync)
    monkeypatch.setattr(batch.os, "replace", replace)
    target = tmp_path / "sub" / "result.png"
    batch._write_atomic(target, b"data")
    assert target.read_bytes() == b"data"
    umask = os.umask(0o022)
    os.umask(umask)
    assert stat.S_IMODE(target.stat().st_mode) == 0o666 & ~umask  # as a plain write makes it (not mkstemp's 0600)
    (_, kind, ino), (op, moved, dst), (_, dkind, dino) = events
    assert (kind, op, moved, dst) == ("file", "replace", ino, str(target)) and ino == target.stat().st_ino
    assert (dkind, dino) == ("dir", (tmp_path / "sub").stat().st_ino)
    # the result line that marks an item done is flushed to disk too
    events.clear()
    cfg = fake_config(tmp_path, ["a cat"], layout="plain")
    assert batch.run_batch(cfg, dispatch=fake_dispatch()) == batch.EXIT_OK
    results_ino = (cfg.out / "results.jsonl").stat().st_ino
    assert ("fsync", "file", results_ino) in events


def test_items_results_and_sources_cross_a_process_boundary_as_plain_data(tmp_path):
    """What the Ray driver sends to an actor (the item, the run's source) and what comes back (the outcome) are plain
    dicts that rebuild equal objects; the result line is the same whichever side builds it."""
    item = items_mod.Item(index=3, line=5, prompt="a red apple", seed=7, position=1, metadata={"tag": "colors"})
    wire = item.to_wire()
    assert wire == {"index": 3, "line": 5, "prompt": "a red apple", "seed": 7}
    back = items_mod.Item.from_wire(json.loads(json.dumps(wire)))
    assert back.key == item.key and back.to_wire() == wire
    result = items_mod.ItemResult(rewards=[{"label": "r", "name": "r", "weight": 2.0}], initial={"r": 0.5, "total": 1.0},
                                  best={"r": 1.5, "total": 3.0}, best_iteration=2, iterations=3, stop_reason=None,
                                  images={"best": PNG}, node_seconds=0.123456, seconds=0.5, extra={"vae_layout": "x"},
                                  worker=1)
    again = items_mod.outcome_from_wire(result.to_wire())
    assert again == result and again.ok and again.record(item) == result.record(item)
    assert list(result.record(item)) == ["index", "line", "prompt", "seed", "rewards", "initial", "best",
                                         "best_iteration", "iterations", "stop_reason", "vae_layout", "node_seconds",
                                         "seconds"]
    failure = items_mod.ItemFailure("ValueError: boom", "Traceback ...", 0.25)
    assert items_mod.outcome_from_wire(failure.to_wire()) == failure and not failure.ok
    job = workflow.make_job(reno_api_prompt(prompt="p"), save_initial=True)
    for source in (backends.WorkflowSource(job),
                   backends.DiffusersSource(tmp_path / "pipe", [("clipscore", 1.0), ("pickscore", 0.5)],
                                            {"iterations": 3, "steps": 2}, save_initial=True)):
        wire = json.loads(json.dumps(source.to_wire()))
        assert backends.source_from_wire(wire) == source
        assert backends.source_from_wire(wire).identity() == source.identity()
