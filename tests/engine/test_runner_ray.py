"""The batch runner fanned out with Ray: two CPU actors on a local cluster (one per test module), each booting its
own engine; one actor killed mid-run; the output equals the single-process run's, file for file."""

from __future__ import annotations

import importlib
import importlib.util
import json
import os
from pathlib import Path

import pytest
from tiny_rewards import write_reward_root

_spec = importlib.util.spec_from_file_location("reno_runner_engine_helpers", Path(__file__).with_name("test_runner_engine.py"))
_helpers = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_helpers)
make_config, read_jsonl = _helpers.make_config, _helpers.read_jsonl

ray = pytest.importorskip("ray", reason='Ray is an optional extra: pip install "ray[default]"')
batch = importlib.import_module("reno_pack.runner.batch")
ray_actor = importlib.import_module("reno_pack.runner.ray_actor")
ray_backend = importlib.import_module("reno_pack.runner.ray_backend")

LINES = ["a photo of a cake", "a blue cup"]


@pytest.fixture(scope="module")
def ray_cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def files(out: Path) -> dict[str, bytes]:
    return {str(p.relative_to(out)): p.read_bytes() for p in sorted(out.rglob("*.png"))}


def stable(out: Path) -> dict:
    recs = {(r["index"], r["seed"]): {k: v for k, v in r.items() if k not in batch.VOLATILE_KEYS}
            for r in read_jsonl(out / "results.jsonl")}
    return recs


def test_ray_workers_match_the_single_process_run_and_survive_a_dead_worker(fresh_engine, ray_cluster, tmp_path,
                                                                           monkeypatch, capsys):
    models = Path(fresh_engine.folder_paths.models_dir)
    write_reward_root(Path(fresh_engine.folder_paths.get_folder_paths("reno_rewards")[0]), ["clipscore"])
    # single process, one torch thread like each Ray actor (same arithmetic, same bits)
    single = make_config(tmp_path, lines=LINES, seeds=(0, 1), layout="plain", out="single", name="p.txt", threads=1)
    assert batch.run_batch(single) == batch.EXIT_OK

    fanned = make_config(tmp_path, lines=LINES, seeds=(0, 1), layout="plain", out="ray", name="p.txt", threads=1)
    fanned.dispatch = ray_backend.RayDispatch(workers=2)
    fanned.worker_options.update({"models_dir": str(models), "torchvision_standin": True, "cpu": True,
                                  "comfy_extras": []})
    monkeypatch.setenv(ray_actor.CRASH_ENV, "0:0")  # actor 0 dies on its first item (on a loaded machine the other
    # actor may take every later item, so "dies on its second" might never happen)
    assert batch.run_batch(fanned) == batch.EXIT_OK
    err = capsys.readouterr().err
    assert "Ray worker 0 died" in err
    results = read_jsonl(fanned.out / "results.jsonl")
    assert sorted((r["index"], r["seed"]) for r in results) == [(0, 0), (0, 1), (1, 0), (1, 1)]  # each exactly once
    assert {r["worker"] for r in results} >= {1, 2}  # the replacement actor (number 2) took over
    assert files(fanned.out) == files(single.out)  # identical PNG bytes
    assert stable(fanned.out) == stable(single.out)  # identical scores, iterations, paths
    summary = json.loads((fanned.out / "summary.json").read_text())
    assert summary["rewards"] == json.loads((single.out / "summary.json").read_text())["rewards"]
    assert os.environ.get(ray_actor.CRASH_ENV) == "0:0"
