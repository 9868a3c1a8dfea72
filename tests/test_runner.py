"""The batch runner's pieces that need no engine: prompt files, workflow targets, layouts, summary, CLI, launcher."""

from __future__ import annotations

import importlib
import json
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
