"""The batch runner on the real engine, in this process: layouts, results/summary, resume, failures, Ctrl-C."""

from __future__ import annotations

import importlib
import json
import os
import signal
import sys
from pathlib import Path

import comfy_host
import pytest
import torch
from reno_prompts import reno_api_prompt
from tiny_rewards import write_reward_root
from tolerances import ORACLE_IMAGE_K, rounding_tol

batch = importlib.import_module("reno_pack.runner.batch")
backends = importlib.import_module("reno_pack.runner.backends")
workflow = importlib.import_module("reno_pack.runner.workflow")
worker = importlib.import_module("reno_pack.runner.worker")

ITERATIONS = 2
FIXTURES = [[comfy_host.FIXTURE_PACK_NAME, str(comfy_host.FIXTURE_PACK_DIR)]]
GENEVAL_LINES = ['{"tag": "single_object", "include": [{"class": "cake", "count": 1}], "prompt": "a photo of a cake"}',
                 "not json",
                 '{"tag": "colors", "include": [{"class": "cup", "count": 1, "color": "blue"}], "prompt": "a blue cup"}']


@pytest.fixture
def runner_engine(fresh_engine):
    root = Path(fresh_engine.folder_paths.get_folder_paths("reno_rewards")[0])
    write_reward_root(root, ["clipscore"])
    return fresh_engine


def make_config(tmp_path, *, layout="geneval", save_initial=False, seeds=(0, 1), lines=GENEVAL_LINES, name="p.jsonl",
                out="out", threads=None, candidates=None, wf=None):
    wf = wf or reno_api_prompt(prompt="placeholder", iterations=ITERATIONS, rewards=(("clipscore", 1.0),))
    job = workflow.make_job(wf, save_initial=save_initial, candidates=candidates)
    pf = tmp_path / name
    pf.write_text("\n".join(lines) + "\n")
    return batch.BatchConfig(source=backends.WorkflowSource(job), prompt_file=pf, out=tmp_path / out, seeds=list(seeds), layout=layout,
                             save_initial=save_initial, progress=False,
                             worker_options={"comfy_extras": [], "extra_packs": FIXTURES, "threads": threads})


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def test_geneval_batch_writes_layout_results_failures_and_summary(runner_engine, tmp_path, capsys):
    cfg = make_config(tmp_path, save_initial=True)
    layout_env = os.environ.get("RENO_CHANNELS_LAST")
    assert batch.run_batch(cfg) == batch.EXIT_FAILURES  # the bad line is reported, the run goes on
    out = cfg.out
    for index in (0, 2):
        meta = json.loads((out / f"images/{index:05d}/metadata.jsonl").read_text())
        assert meta["prompt"] == json.loads(GENEVAL_LINES[index])["prompt"] and "include" in meta
        for seed in (0, 1):
            assert (out / f"images/{index:05d}/samples/{seed:05d}.png").is_file()
            assert (out / f"initial/{index:05d}/samples/{seed:05d}.png").is_file()
    assert not (out / "images/00001").exists()
    results = read_jsonl(out / "results.jsonl")
    assert [(r["index"], r["line"], r["seed"]) for r in results] == [(0, 1, 0), (0, 1, 1), (2, 3, 0), (2, 3, 1)]
    for r in results:
        assert r["iterations"] == ITERATIONS and 0 <= r["best_iteration"] < ITERATIONS
        assert set(r["initial"]) == set(r["best"]) == {"clipscore", "total"}
        assert r["best"]["total"] >= r["initial"]["total"]  # iteration 0 is a candidate
        assert r["node_seconds"] > 0 and r["seconds"] >= r["node_seconds"]
        # the batch pins the VAE layout (the same bytes in any process), and only for its items
        assert r["vae_layout"] == "contiguous (RENO_CHANNELS_LAST=0)", r["vae_layout"]
    assert os.environ.get("RENO_CHANNELS_LAST") == layout_env
    failures = read_jsonl(out / "failures.jsonl")
    assert [(f["kind"], f["line"]) for f in failures] == [("prompt_line", 2)]
    captured = capsys.readouterr()
    assert "p.jsonl line 2" in captured.err and "weighted total" in captured.out
    summary = json.loads((out / "summary.json").read_text())
    assert summary["items"] == 4 and summary["bad_prompt_lines"] == 1 and not summary["interrupted"]
    s = summary["rewards"]["clipscore"]
    gains = [r["best"]["clipscore"] - r["initial"]["clipscore"] for r in results]
    # the same four float64 differences, averaged in the summary's order: <= 4 roundings of the largest
    assert s["n"] == 4 and s["mean_gain"] == pytest.approx(
        sum(gains) / 4, rel=0, abs=4 * sys.float_info.epsilon * max(abs(g) for g in gains))

    # resume: nothing runs again; a missing image reruns only its item
    calls = []
    orig = worker.ItemWorker.run

    def counting(self, item):
        calls.append((item.index, item.seed))
        return orig(self, item)

    (out / "images/00002/samples/00001.png").unlink()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(worker.ItemWorker, "run", counting)
        batch.run_batch(cfg)
    assert calls == [(2, 1)]
    assert (out / "images/00002/samples/00001.png").is_file()
    again = {(r["index"], r["seed"]): r for r in read_jsonl(out / "results.jsonl")}
    assert again[(2, 1)]["best"] == results[3]["best"]  # same seed, same scores
    # a different workflow in the same folder is refused instead of mixing two runs
    other = make_config(tmp_path, save_initial=False)
    with pytest.raises(SystemExit, match="different"):
        batch.run_batch(other)


def test_t2i_compbench_layout_and_a_failing_item_does_not_stop_the_run(runner_engine, tmp_path, monkeypatch):
    cfg = make_config(tmp_path, layout="t2i-compbench", seeds=(0,), lines=["a green bench", "boom", "a red apple"],
                      name="color_val.txt")
    orig = worker.ItemWorker._run

    def failing(self, item):
        if item.prompt == "boom":
            raise ValueError("this item breaks")
        return orig(self, item)

    monkeypatch.setattr(worker.ItemWorker, "_run", failing)
    assert batch.run_batch(cfg) == batch.EXIT_FAILURES
    assert sorted(p.name for p in (cfg.out / "samples").iterdir()) == ["a green bench_000000.png",
                                                                       "a red apple_000002.png"]
    (fail,) = read_jsonl(cfg.out / "failures.jsonl")
    assert fail["kind"] == "item" and fail["line"] == 2 and "this item breaks" in fail["error"]


def test_ctrl_c_finishes_the_current_item_and_stops(runner_engine, tmp_path):
    cfg = make_config(tmp_path, lines=GENEVAL_LINES[:1], seeds=(0, 1, 2), layout="plain")
    sent = []

    def on_progress(ev):
        if not sent:
            sent.append(ev)
            os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C in the middle of the first item

    runner_engine.add_progress_callback(on_progress)
    try:
        code = batch.run_batch(cfg)
    finally:
        runner_engine.remove_progress_callback(on_progress)
    assert code == batch.EXIT_INTERRUPTED == 130
    results = read_jsonl(cfg.out / "results.jsonl")
    assert [(r["index"], r["seed"]) for r in results] == [(0, 0)]  # the item in flight finished
    assert (cfg.out / "images/00000_00000.png").is_file()
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["interrupted"] and summary["items"] == 1
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is restored


def test_candidates_search_each_item_and_the_record_names_the_kept_seed(runner_engine, tmp_path):
    cfg = make_config(tmp_path, layout="plain", lines=["a photo of a cake"], name="p.txt", seeds=(5,), candidates=3,
                      save_initial=True)
    assert batch.run_batch(cfg) == batch.EXIT_OK
    (r,) = read_jsonl(cfg.out / "results.jsonl")
    s = r["search"]
    assert s["candidates"] == 3 and s["keep"] == 1 and s["kept_seeds"][0] in (5, 6, 7)
    # the run starts from the best candidate: its iteration 0 is that candidate's score (the search's best)
    # (the search scored it in a batch of 3 without gradient, the run in a batch of 1 with it: the one-iteration
    # oracle's image rounding, at a CLIP-type score's scale: cosines times exp(logit_scale) <= 100, CLIP's clamp)
    assert r["initial"]["total"] == pytest.approx(
        s["best"], abs=rounding_tol(ORACLE_IMAGE_K, torch.float32, scale=100.0 * max(1.0, abs(s["best"]))))
    assert r["best"]["total"] >= r["initial"]["total"]
    assert (cfg.out / "initial").is_dir()  # the seed's own image beside the best


def in_subgraph(wf: dict, ids: set[str], parent: str = "57") -> dict:
    """``wf`` as the frontend exports a workflow whose nodes ``ids`` sit inside subgraph node ``parent``: their ids
    become ``parent:id`` (API format has no subgraphs, only these ids), links follow."""
    new = {(f"{parent}:{k}" if k in ids else k): v for k, v in wf.items()}
    for node in new.values():
        for name, value in node["inputs"].items():
            if isinstance(value, list) and len(value) == 2 and str(value[0]) in ids:
                node["inputs"][name] = [f"{parent}:{value[0]}", value[1]]
    return new


def test_a_reno_sampler_inside_a_subgraph_runs_and_the_summary_names_family_and_sampler(runner_engine, tmp_path):
    from reno_prompts import SAMPLER_ID

    wf = in_subgraph(reno_api_prompt(prompt="placeholder", iterations=ITERATIONS, rewards=(("clipscore", 1.0),)),
                     {"2", SAMPLER_ID, "50"})
    cfg = make_config(tmp_path, layout="plain", lines=["a photo of a cake"], name="p.txt", seeds=(0,), wf=wf,
                      save_initial=True)
    assert cfg.source.job.sampler == f"57:{SAMPLER_ID}" and ("57:2", "text") in cfg.source.job.text_targets
    assert batch.run_batch(cfg) == batch.EXIT_OK
    (r,) = read_jsonl(cfg.out / "results.jsonl")
    assert r["prompt"] == "a photo of a cake" and r["iterations"] == ITERATIONS and r["sampler"] == "euler"
    summary = json.loads((cfg.out / "summary.json").read_text())
    assert summary["families"] == [r["family"]] and r["family"] and summary["samplers"] == ["euler"]
