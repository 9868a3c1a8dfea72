"""The batch runner's ``--diffusers <folder>`` source end to end (runner/diffusers_hook.py): a tiny SD-Turbo pipeline
folder, tiny CLIPScore and PickScore checkpoints in a ``models/reno_rewards`` folder, a 2-prompt GenEval metadata
file and 2 seeds, through the CLI entry the launcher calls (``reno_pack.runner.cli.main``)."""

from __future__ import annotations

import importlib
import json

import pytest

pytest.importorskip("diffusers", reason="diffusers is an optional extra: pip install 'diffusers>=0.30'")

from tiny_diffusers import SIZE, one_thread, save_tiny_pipeline  # noqa: E402, F401 (one_thread: a fixture)

pytestmark = pytest.mark.usefixtures("one_thread")
from tiny_rewards import write_reward_root  # noqa: E402
from tolerances import EPS32  # noqa: E402

cli = importlib.import_module("reno_pack.runner.cli")

GENEVAL = [
    {"tag": "single_object", "include": [{"class": "cat", "count": 1}], "prompt": "a photo of a cat"},
    {"tag": "colors", "include": [{"class": "dog", "count": 1, "color": "red"}], "prompt": "a photo of a red dog"},
]
SEEDS = (0, 3)
WEIGHTS = {"clipscore": 1.0, "pickscore": 0.5}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("runner_diffusers")
    pipe = save_tiny_pipeline("sd-turbo", tmp / "sd-turbo")
    models = tmp / "models"
    write_reward_root(models / "reno_rewards", rewards=tuple(WEIGHTS))
    prompts = tmp / "evaluation_metadata.jsonl"
    prompts.write_text("".join(json.dumps(m) + "\n" for m in GENEVAL), encoding="utf-8")
    return {"tmp": tmp, "pipe": pipe, "models": models, "prompts": prompts}


def argv(setup, out, *extra, pipe=None):
    rewards = [a for name, w in WEIGHTS.items() for a in ("--reward", f"{name}:{w}")]
    return ["--diffusers", str(pipe or setup["pipe"]), "--prompts", str(setup["prompts"]), "--out", str(out),
            "--layout", "geneval", "--seeds", ",".join(map(str, SEEDS)), "--iterations", "3", "--no-progress",
            *rewards, *extra]


def test_diffusers_batch_writes_the_geneval_layout_and_resumes(setup, monkeypatch, capsys):
    """Reward folders from --models-dir (its reno_rewards/), GenEval's image tree with metadata, one result line per
    item whose weighted total never drops, the summary, and a second run that skips every item."""
    monkeypatch.delenv("RENO_REWARDS_DIR", raising=False)
    out = setup["tmp"] / "run"
    args = argv(setup, out, "--models-dir", str(setup["models"]), "--save-initial")
    assert cli.main(args) == 0, capsys.readouterr().err

    from PIL import Image

    for index, meta in enumerate(GENEVAL):
        folder = out / "images" / f"{index:05d}"
        assert json.loads((folder / "metadata.jsonl").read_text(encoding="utf-8")) == meta
        assert json.loads((out / "initial" / f"{index:05d}" / "metadata.jsonl").read_text(encoding="utf-8")) == meta
        for seed in SEEDS:
            for root in ("images", "initial"):
                with Image.open(out / root / f"{index:05d}" / "samples" / f"{seed:05d}.png") as im:
                    assert im.format == "PNG" and im.size == (SIZE, SIZE) and im.mode == "RGB"
    assert sorted(p.name for p in (out / "images" / "00000" / "samples").iterdir()) == ["00000.png", "00003.png"]

    lines = (out / "results.jsonl").read_text(encoding="utf-8").splitlines()
    recs = [json.loads(line) for line in lines]
    assert sorted((r["index"], r["seed"]) for r in recs) == [(i, s) for i in range(2) for s in SEEDS]
    for r in recs:
        assert r["prompt"] == GENEVAL[r["index"]]["prompt"] and r["line"] == r["index"] + 1
        assert r["rewards"] == [{"label": n, "name": n, "weight": w} for n, w in WEIGHTS.items()]
        assert set(r["initial"]) == set(r["best"]) == {*WEIGHTS, "total"}
        for scores in (r["initial"], r["best"]):
            # the float32 weighted sum of the stored (float32) scores: <= len + 1 roundings of sum |w s|
            assert scores["total"] == pytest.approx(sum(w * scores[n] for n, w in WEIGHTS.items()), rel=0, abs=(
                (len(WEIGHTS) + 1) * EPS32 * sum(abs(w * scores[n]) for n, w in WEIGHTS.items())))
        assert r["best"]["total"] >= r["initial"]["total"]  # the best iteration is chosen on it, iteration 0 included
        assert r["iterations"] == 3 and 0 <= r["best_iteration"] < 3 and r["stop_reason"] is None  # ran them all
        assert r["image"] == f"images/{r['index']:05d}/samples/{r['seed']:05d}.png"
        assert r["initial_image"] == f"initial/{r['index']:05d}/samples/{r['seed']:05d}.png"
    assert any(r["best"]["total"] > r["initial"]["total"] for r in recs)  # ReNO did something

    summary = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    assert summary["items"] == summary["items_total"] == 4 and summary["failed_items"] == 0
    assert summary["layout"] == "geneval" and summary["seeds"] == list(SEEDS) and not summary["interrupted"]
    total = summary["rewards"]["total"]
    assert total["n"] == 4 and total["mean_best"] >= total["mean_initial"] and total["mean_gain"] >= 0
    assert set(summary["rewards"]) == {*WEIGHTS, "total"}
    run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    assert run["diffusers"] == str(setup["pipe"]) and run["workflow_sha256"] is None
    assert not (out / "failures.jsonl").exists()
    capsys.readouterr()

    # the same command again: everything is done, nothing runs (the pipeline is not even loaded)
    stamps = {p: p.stat().st_mtime_ns for p in out.rglob("*.png")}
    assert cli.main(args) == 0
    err = capsys.readouterr().err
    assert "4 of 4 items already done" in err and "running 0" in err
    assert (out / "results.jsonl").read_text(encoding="utf-8").splitlines() == lines
    assert {p: p.stat().st_mtime_ns for p in out.rglob("*.png")} == stamps
    assert json.loads((out / "summary.json").read_text(encoding="utf-8"))["rewards"] == summary["rewards"]


def test_a_missing_reward_or_pipeline_is_one_clear_line(setup, monkeypatch, capsys):
    """A reward not in any searched folder, or a folder that is no pipeline: exit status 2 and a message naming the
    folder and what to do, before any item runs (no traceback)."""
    monkeypatch.delenv("RENO_REWARDS_DIR", raising=False)
    out = setup["tmp"] / "bad"
    with pytest.raises(SystemExit) as exc:
        cli.main(argv(setup, out / "a", "--rewards-dir", str(setup["models"] / "reno_rewards"), "--reward", "hpsv2.1:5"))
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert "reno-batch: --reward hpsv2.1" in err and str(setup["models"] / "reno_rewards") in err
    assert "Traceback" not in err and not (out / "a" / "results.jsonl").exists()

    with pytest.raises(SystemExit) as exc:
        cli.main(argv(setup, out / "b", pipe=setup["models"]))
    err = capsys.readouterr().err
    assert exc.value.code == 2, err
    assert f"reno-batch: --diffusers {setup['models']}" in err and "model_index.json is missing" in err


def test_a_second_ctrl_c_aborts_the_item_in_flight(setup, capsys):
    """run_batch's SIGINT handler: the first Ctrl-C finishes the item, a second one aborts it (nothing of it is
    written) and no later item starts."""
    batch = importlib.import_module("reno_pack.runner.batch")
    backends = importlib.import_module("reno_pack.runner.backends")
    Item = importlib.import_module("reno_pack.runner.items").Item
    stop = batch.StopFlag()
    iterations = []

    def callback(record, image):
        iterations.append(record.iteration)
        if record.iteration == 1:
            stop.request()  # what two Ctrl-C's do
            stop.request()

    source = backends.DiffusersSource(setup["pipe"], [("clipscore", 1.0)], {
        "iterations": 20, "callback": callback, "rewards_dir": str(setup["models"] / "reno_rewards")})
    cfg = batch.BatchConfig(source=source, prompt_file=setup["prompts"], out=setup["tmp"] / "abort", seeds=[0])
    items = [Item(index=i, line=i + 1, prompt=m["prompt"], seed=0) for i, m in enumerate(GENEVAL)]
    outcomes = []
    batch.LocalDispatch()(cfg, items, lambda item, outcome: outcomes.append(outcome), stop)
    assert outcomes == [] and iterations == [0, 1]
    assert stop.stop and stop.abort and stop.on_abort is None
    assert "stopping after the current item" in capsys.readouterr().err


def test_diffusers_items_on_ray_match_the_single_process_run(setup, monkeypatch, capsys):
    """``--diffusers`` with ``--ray``: a local Ray cluster whose one actor loads the pipeline and the rewards itself
    and gives the same results.jsonl scores and the same PNG bytes as the run in this process (one torch thread in
    both)."""
    pytest.importorskip("ray", reason='Ray is an optional extra: pip install "ray[default]"')
    batch = importlib.import_module("reno_pack.runner.batch")
    monkeypatch.delenv("RENO_REWARDS_DIR", raising=False)
    runs = {}
    for name, extra in (("single", ()), ("ray", ("--ray", "--workers", "1"))):
        out = setup["tmp"] / f"ray_{name}"
        assert cli.main(argv(setup, out, "--models-dir", str(setup["models"]), "--save-initial", "--threads", "1",
                             *extra)) == 0, capsys.readouterr().err
        recs = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
        runs[name] = {
            "records": {(r["index"], r["seed"]): {k: v for k, v in r.items() if k not in batch.VOLATILE_KEYS}
                        for r in recs},
            "workers": {r.get("worker") for r in recs},
            "png": {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))},
        }
    assert "Ray with 1 diffusers worker(s)" in capsys.readouterr().err
    assert runs["single"]["workers"] == {None} and runs["ray"]["workers"] == {0}
    assert len(runs["single"]["records"]) == 4 and len(runs["single"]["png"]) == 8
    assert runs["ray"]["records"] == runs["single"]["records"]  # the same scores, iterations, paths
    assert runs["ray"]["png"] == runs["single"]["png"]  # the same PNG bytes


def test_diffusers_batch_samples_several_steps_with_a_gradient_mode(setup, monkeypatch, capsys):
    """--steps 4 --gradient exact: every item runs the 4-step chain (its iteration-0 image is the 4-step generator's
    for the item's seed, not the one-step image) and ReNO's gradient reaches the noise through the 4 steps; a
    --gradient the node does not have is refused by the parser."""
    import numpy as np
    import torch
    from PIL import Image

    gen = importlib.import_module("reno_pack.generators")
    monkeypatch.delenv("RENO_REWARDS_DIR", raising=False)
    out = setup["tmp"] / "steps"
    args = argv(setup, out, "--models-dir", str(setup["models"]), "--save-initial", "--seeds", "0", "--limit", "1",
                "--steps", "4", "--sampler", "euler", "--gradient", "exact")
    assert cli.main(args) == 0, capsys.readouterr().err
    (rec,) = [json.loads(line) for line in (out / "results.jsonl").read_text(encoding="utf-8").splitlines()]
    assert rec["iterations"] == 3 and rec["best"]["total"] >= rec["initial"]["total"]
    with Image.open(out / rec["initial_image"]) as im:
        initial = np.asarray(im.convert("RGB"), dtype=np.int16)

    pipe = gen.load_pipeline(setup["pipe"])
    images = {}
    for steps in (1, 4):
        generate, shape = gen.build_generator(pipe, GENEVAL[0]["prompt"], steps=steps)
        noise = torch.randn(shape, generator=torch.Generator("cpu").manual_seed(0), dtype=torch.float32)
        with torch.no_grad():
            images[steps] = np.clip(255.0 * generate(noise)[0].permute(1, 2, 0).numpy(), 0, 255).astype(np.int16)
    # the same 4-step image (computed here without autograd, there under it): at most one level of the 8-bit
    # quantization apart where a value sits at a rounding boundary
    assert np.abs(initial - images[4]).max() <= 1
    assert np.abs(images[1] - images[4]).max() > 8  # and not the one-step image

    with pytest.raises(SystemExit) as exc:
        cli.main(argv(setup, out / "bad", "--steps", "4", "--gradient", "truncated"))
    assert exc.value.code == 2 and "--gradient 'truncated'" in capsys.readouterr().err


def test_a_resumed_diffusers_run_with_other_steps_is_refused(setup, monkeypatch, capsys):
    """Another --steps (or sampler, gradient, reward...) into the same --out would mix two runs: refused."""
    monkeypatch.delenv("RENO_REWARDS_DIR", raising=False)
    out = setup["tmp"] / "resume-steps"
    common = ("--models-dir", str(setup["models"]), "--seeds", "0", "--limit", "1")
    assert cli.main(argv(setup, out, *common, "--steps", "2", "--iterations", "1")) == 0, capsys.readouterr().err
    with pytest.raises(SystemExit, match="different diffusers_generation"):
        cli.main(argv(setup, out, *common, "--steps", "3", "--iterations", "1"))
    assert cli.main(argv(setup, out, *common, "--steps", "2", "--iterations", "1")) == 0  # the same run resumes
