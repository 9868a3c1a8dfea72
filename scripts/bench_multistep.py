"""ReNO beyond one step, measured through the real node path: reward gain, seconds per iteration, peak memory.

    python scripts/bench_multistep.py [--size 256] [--iterations 20] [--counter-iterations 4] [--threads 1]
        [--repeats 1] [--rewards imagereward,hpsv2.1,pickscore,clipscore]
        [--rows "1-step,exact,drtune,last k,euler_ancestral exact"]

A real ComfyUI engine (the host testing/comfy_host.py finds, booted headless on the CPU, as scripts/benchmark.py
does) runs ReNO Sampler on the tiny embedded SD model (``ReNOTestTinySD``, transformer depth 1) with tiny reward
checkpoints in their real formats (testing/tiny_rewards.py; the paper's weights 1, 5, 0.05, 0.01). Rows
(``ROWS``): 1-step ReNO (``steps`` 1, today's default) and, at 4 steps with scheduler ``simple``, sampler
``euler`` with each gradient policy of the chain (``exact``; ``drtune`` and ``last k`` with ``gradient_steps``
1), plus ``euler_ancestral`` with ``exact``. ``memory`` is the node's default (``auto``); the plan it chose is
printed with each row. Every row runs in fresh subprocesses (``--child``), one after another, so peaks and
timings of one row never include another's: a **time** process and a **memory** process per row, because the
memory measures need an allocator setting that changes the timings (below). With ``--repeats`` R the time
processes run R rounds, each round every row once (interleaved, so a change of the machine's load hits every row
alike), and the table gives the median of the rounds.

Both kinds of child run torch with ``--threads`` threads (default 1: ``OMP_NUM_THREADS`` and
``torch.set_num_threads``) and ``OMP_WAIT_POLICY=PASSIVE``: on a CPU shared with other work, OpenMP threads that
spin waiting for a descheduled peer made one 4-step iteration take 12 s instead of 0.5 s (measured); passive waiting
keeps the timings comparable.

In each row's **time** process (glibc's default allocator settings: ``MALLOC_MMAP_THRESHOLD_`` is removed from its
environment), after the engine boots and the models and rewards are loaded:

1. **warm-up**: ReNO Sampler with the row's settings for 2 iterations (first-call costs: kernels, text features);
2. **timed run** (``--iterations``, default 20): ReNO Sampler, timed from the node's progress callbacks (the
   reports for this run's ``iterations``). *s/iteration* is the median gap between consecutive reports,
   leaving out the last gap (the last iteration only evaluates: no backward pass, no step), i.e. the median
   over iterations 1 .. N-2, each one forward + backward + step, in CPU time (``time.process_time``: this
   process's user + system time, which other programs on the machine cannot inflate) and in wall time.
   *Reward gain* is, from the run's history, the weighted total Σ wᵢ·scoreᵢ at the best iteration (the node's
   ``best_iteration``) minus iteration 0's (``iterations`` = 20 is the node input: 20 evaluated iterations, 19
   optimizer steps).

In each row's **memory** process (``MALLOC_MMAP_THRESHOLD_=65536``): the same warm-up, then

2. **RSS run** (``--iterations``): ReNO Sampler again with the same settings.
   *Peak RSS growth* (memory measure a) is the kernel's high-water mark of the process RSS during this run
   (VmHWM, reset through ``/proc/self/clear_refs`` just before it) minus the RSS just before it (VmRSS); where
   the reset is not possible, ``ru_maxrss`` after minus before (which the warm-up's own peak then hides: a
   note says so). This process runs with ``MALLOC_MMAP_THRESHOLD_=65536`` so that glibc serves every large tensor
   from its own mapping and gives it back when freed; with glibc's default (a threshold that grows after
   frees) a tensor freed in the warm-up stays resident and the next run's activations reuse it without
   raising RSS, which hides exactly the growth measured here. That setting also makes every large allocation a
   fresh ``mmap`` whose pages are zeroed by the kernel: it costs time (issue 20 measured 2.39 vs 1.71 CPU s per
   iteration for the same row), which is why no timing is taken in this process.
3. **counted run** (``--counter-iterations``, default 4): ReNO Sampler again, with a counter of the tensors
   saved for backward (memory measure b), reported as the peak over the iterations after the first.

What the saved-tensor counter counts (measure b). ``torch.autograd.graph.saved_tensors_hooks`` apply only the
innermost pair of hooks: a counter installed around the run alone sees what the outer graph saves (the chain's
linear updates, the VAE decoder, the rewards), but not what the chain's ``exact`` recomputation saves: each
step's denoiser call runs under ``optimizer.memory.recompute_in_backward``'s own hooks, whose forward pack
keeps nothing (it returns an index) and whose backward recomputation keeps the step's activations in its own
table until each is used. Blocks the memory plan recomputes (and the plan's measuring pass, and the copying
hook for in-place models) push their own hooks the same way. So for the counted run the script wraps every
pack hook pushed by any ``saved_tensors_hooks`` (it patches ``saved_tensors_hooks.__enter__`` for the run, and
restores it) and installs one outermost identity pack (``t.detach()``, autograd's own default saving) for what
no other hook covers. Every tensor handed to *any* pack hook is seen exactly once, by the hook that autograd
calls for it. The counter then tracks **storages, not tensors**: a storage is counted (once, however many
tensors on it are saved) from the moment a tensor on it is first packed until the storage itself is freed (a
``weakref.finalize`` on the storage object: PyTorch keeps one Python object per live storage, so it fires
when the memory is released, whoever held it: the outer graph, recompute's table, or the forward pass that is
still using an activation that recompute's forward pack dropped). Only tensors of the autograd graph are
counted (``grad_fn`` set, or a leaf that requires grad: the noise); weights, buffers and constants (text
features, conditioning, sigmas, the per-step noises) are leaves without grad and are never counted, as the
pack's own ``ActivationProbe`` does. So the figure is *the peak bytes of activations that are, or were saved
for backward and are still, alive at once*: for ``exact`` that includes one step's activations while the
step is recomputed in the backward pass, and also the transient activations of each step's forward pass
(alive while the forward still uses them, though recompute's pack does not keep them). Not counted: what is
never handed to a pack hook (recompute's stash of each step's input latent, one small latent per step; the
gradients themselves; the optimizer state; previews). The peak is taken over the windows between consecutive
progress reports after the first (each window one iteration: its forward pass and its backward pass); the
first window holds the memory plan's measuring pass and is left out.

Prints the host, the command, the date and a markdown table (and ``--json`` writes the rows). The 1.3x target
of the issue: ``exact`` at 4 steps within 1.3x of 1-step ReNO's peak; both memory ratios are reported as
measured.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import json
import os
import re
import resource
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_common import comma_list, find_host, print_header  # noqa: E402
from benchmark import reset_peak_rss  # noqa: E402  (the node-path benchmark's RSS high-water reset)
from reno_batch import import_pack  # noqa: E402

PROMPT = "a red apple on a wooden table"
WEIGHTS = {"imagereward": 1.0, "hpsv2.1": 5.0, "hpsv2": 5.0, "pickscore": 0.05, "clipscore": 0.01, "aesthetic": 0.5}
DEFAULT_REWARDS = "imagereward,hpsv2.1,pickscore,clipscore"
#: row name -> ReNO Sampler's chain inputs
ROWS = {
    "1-step": dict(steps=1, sampler_name="euler", gradient="exact", gradient_steps=1),
    "exact": dict(steps=4, sampler_name="euler", gradient="exact", gradient_steps=1),
    "drtune": dict(steps=4, sampler_name="euler", gradient="drtune", gradient_steps=1),
    "last k": dict(steps=4, sampler_name="euler", gradient="last k", gradient_steps=1),
    "euler_ancestral exact": dict(steps=4, sampler_name="euler_ancestral", gradient="exact", gradient_steps=1),
}
BASELINE = "1-step"
WARMUP_ITERATIONS = 2
#: the environment of every child; the memory children add MEMORY_ENV, the time children run without it
CHILD_ENV = {"OMP_WAIT_POLICY": "PASSIVE"}
MEMORY_ENV = {"MALLOC_MMAP_THRESHOLD_": "65536"}
PARTS = ("time", "memory")
RESULT_TAG = "BENCH_MULTISTEP_RESULT "


# -- memory measure (a): process RSS ---------------------------------------------------------------------

def _status_kib(field: str) -> int | None:
    try:
        m = re.search(rf"{field}:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
    except OSError:
        return None
    return int(m.group(1)) if m else None


def ru_maxrss_bytes() -> int:
    scale = 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


class RSSPeak:
    """``with RSSPeak() as r: ...`` -> ``r.growth`` bytes: the run's peak RSS minus the RSS before it."""

    def __enter__(self):
        gc.collect()
        self.resettable = reset_peak_rss() and _status_kib("VmHWM") is not None
        self.before = (_status_kib("VmRSS") * 1024) if self.resettable else ru_maxrss_bytes()
        return self

    def __exit__(self, *exc):
        peak = _status_kib("VmHWM") * 1024 if self.resettable else ru_maxrss_bytes()
        self.growth = peak - self.before
        self.method = "VmHWM - VmRSS" if self.resettable else "ru_maxrss after - before"


# -- memory measure (b): tensors saved for backward, alive at once -----------------------------------------

class SavedTensorCounter:
    """Bytes of storages holding tensors handed to any saved-tensor pack hook, alive at once (module docstring)."""

    def __init__(self):
        self._alive: dict[int, int] = {}  # id(storage) -> bytes, while the storage lives
        self._lock = threading.RLock()
        self.alive_bytes = 0
        self.peak = 0
        self.windows: list[int] = []  # the peak of each window between marks
        self.packed = 0

    def saw(self, t) -> None:
        if t.grad_fn is None and not t.requires_grad:
            return  # weights, buffers, constants: not activations
        storage = t.untyped_storage()
        key = id(storage)
        with self._lock:
            self.packed += 1
            if key in self._alive:
                return
            nbytes = storage.nbytes()
            self._alive[key] = nbytes
            self.alive_bytes += nbytes
            self.peak = max(self.peak, self.alive_bytes)
        weakref.finalize(storage, self._freed, key)

    def _freed(self, key: int) -> None:
        with self._lock:
            self.alive_bytes -= self._alive.pop(key, 0)

    def mark(self) -> None:
        """Close the current window (at a progress report) and start the next at what is alive now."""
        with self._lock:
            self.windows.append(self.peak)
            self.peak = self.alive_bytes

    @contextlib.contextmanager
    def installed(self):
        """Every pack hook pushed by any ``saved_tensors_hooks`` reports to the counter first; one outermost
        identity pack covers what no other hook does. Restored on exit."""
        import torch

        hooks = torch.autograd.graph.saved_tensors_hooks
        original = hooks.__enter__
        counter = self

        def enter(self_):
            pack = self_.pack_hook

            def counted(t):
                counter.saw(t)
                return pack(t)

            torch._C._autograd._push_saved_tensors_default_hooks(counted, self_.unpack_hook)

        hooks.__enter__ = enter
        try:
            with hooks(lambda t: t.detach(), lambda t: t):
                yield self
        finally:
            hooks.__enter__ = original


# -- one row, in its own process -------------------------------------------------------------------------

def weighted_total(history, index: int) -> float:
    record = history.records[index]
    return sum(r["weight"] * record["scores"][r["label"]][0] for r in history.rewards)


def run_child(args) -> int:
    import torch

    comfy_host = import_pack("testing.comfy_host")
    from reno_pack.testing.tiny_rewards import write_reward_root

    torch.set_num_threads(args.threads)
    row = ROWS[args.child]
    host = find_host(comfy_host)
    if host is None:
        return 2
    engine = comfy_host.boot_engine(host, [comfy_host.FIXTURE_PACK_DIR, comfy_host.PACK_DIR],
                                    Path(tempfile.mkdtemp(prefix="reno-bench-multistep-")), cpu=True)
    names = args.reward_names
    write_reward_root(Path(engine.folder_paths.get_folder_paths("reno_rewards")[0]), names)
    model, vae = engine.call_node("ReNOTestTinySD", inference=True, transformer_depth=args.depth, context_dim=32,
                                  seed=0)
    (cond,) = engine.call_node("ReNOTestConditioning", inference=True, text=PROMPT, context_dim=32)
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=args.size, height=args.size, batch_size=1)
    stack = None
    for name in names:
        (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward=name, weight=WEIGHTS[name], rewards=stack)

    def reno(iterations, on_progress):
        def progress(event):
            if event.total == iterations:
                on_progress()

        with engine.progress_callback(progress):
            out = engine.call_node("ReNOSampler", inference=True, model=model, positive=cond, negative=cond, vae=vae,
                                   latent_image=latent, rewards=stack, prompt=PROMPT, seed=0, iterations=iterations,
                                   learning_rate=5.0, cfg=1.0, regularization=0.01, grad_clip=0.1, **row)
        return out["result"][2]

    reno(WARMUP_ITERATIONS, lambda: None)
    result = {"row": args.child, "part": args.part, **row, "host": engine.info, "torch": torch.__version__,
              "threads": torch.get_num_threads(),
              "malloc_mmap_threshold": os.environ.get("MALLOC_MMAP_THRESHOLD_")}

    if args.part == "time":
        stamps: list[tuple[float, float]] = []  # (wall, CPU) at each progress report
        start = time.perf_counter()
        history = reno(args.iterations, lambda: stamps.append((time.perf_counter(), time.process_time())))
        wall = time.perf_counter() - start
        pairs = list(zip(stamps, stamps[1:]))[:-1]  # the last iteration has no backward pass
        walls, cpus = [b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs]
        best = history.best_iteration[0]
        config = history.config or {}
        result.update({
            "gain": weighted_total(history, best) - weighted_total(history, 0),
            "total_0": weighted_total(history, 0), "best_iteration": best, "records": len(history.records),
            "s_per_iteration": statistics.median(walls) if walls else wall / args.iterations,
            "cpu_per_iteration": statistics.median(cpus) if cpus else None, "gaps": len(walls), "wall": wall,
            "memory_plan": config.get("memory", ""), "vae_layout": config.get("vae_layout", ""),
            "attention": config.get("attention", ""), "sigmas": config.get("sigmas"),
        })
    else:
        with RSSPeak() as rss:
            reno(args.iterations, lambda: None)
        counter = SavedTensorCounter()
        gc.collect()
        with counter.installed():
            reno(args.counter_iterations, counter.mark)
        windows = counter.windows[1:]  # the first holds the memory plan's measuring pass
        result.update({"rss_growth": rss.growth, "rss_method": rss.method,
                       "saved_peak": max(windows) if windows else None, "saved_windows": counter.windows})
    print(RESULT_TAG + json.dumps(result), flush=True)
    return 0


# -- the parent: one subprocess per row, then the table ----------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=256, help="image side in pixels (default 256; multiple of 8)")
    ap.add_argument("--iterations", type=int, default=20, help="ReNO iterations of the timed run (default 20)")
    ap.add_argument("--counter-iterations", type=int, default=4,
                    help="ReNO iterations of the run with the saved-tensor counter (default 4)")
    ap.add_argument("--rewards", default=DEFAULT_REWARDS)
    ap.add_argument("--rows", default=",".join(ROWS), help=f"comma list of: {', '.join(ROWS)}")
    ap.add_argument("--depth", type=int, default=1, help="tiny UNet transformer depth (default 1)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads in every child (default 1)")
    ap.add_argument("--repeats", type=int, default=1,
                    help="rounds of the time processes, every row once per round (default 1); the median is reported")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON to this file")
    ap.add_argument("--child", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--part", default="time", choices=PARTS, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    args.reward_names = comma_list(ap, "--rewards", args.rewards, WEIGHTS)
    args.row_names = comma_list(ap, "--rows", args.rows, ROWS)
    if args.child is not None and args.child not in ROWS:
        ap.error(f"--child: unknown row {args.child!r}")
    if args.iterations < 3:
        ap.error("--iterations must be at least 3 (s/iteration is the median gap between iterations with a backward "
                 "pass; the last iteration has none)")
    if args.counter_iterations < 3:
        ap.error("--counter-iterations must be at least 3 (the first window holds the measuring pass)")
    if args.size < 8 or args.size % 8:
        ap.error("--size must be a positive multiple of 8")
    if args.threads < 1 or args.repeats < 1:
        ap.error("--threads and --repeats must be at least 1")
    return args


def child_command(args, row: str, part: str) -> list[str]:
    return [sys.executable, str(Path(__file__).resolve()), "--child", row, "--part", part, "--size", str(args.size),
            "--iterations", str(args.iterations), "--counter-iterations", str(args.counter_iterations),
            "--rewards", ",".join(args.reward_names), "--depth", str(args.depth), "--threads", str(args.threads)]


def child_env(memory: bool, threads: int | None = None) -> dict:
    """A child's environment: CHILD_ENV, plus MEMORY_ENV for a memory child; a time child runs without
    ``MALLOC_MMAP_THRESHOLD_`` even where the parent has it."""
    env = {k: v for k, v in os.environ.items() if memory or k not in MEMORY_ENV}
    env.update(CHILD_ENV)
    if memory:
        env.update(MEMORY_ENV)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    return env


def run_child_row(command: list[str], row: str, tag: str, env: dict | None = None) -> dict:
    """Run one row's child process (``env``; default: a memory child's, CHILD_ENV + MEMORY_ENV) and return the JSON
    it printed after ``tag``, plus its ``process_seconds``; a failed child stops the benchmark with its output."""
    env = child_env(memory=True) if env is None else env
    start = time.perf_counter()
    proc = subprocess.run(command, capture_output=True, text=True, env=env, cwd=ROOT)
    lines = [line for line in proc.stdout.splitlines() if line.startswith(tag)]
    if proc.returncode != 0 or not lines:
        raise SystemExit(f"row {row!r} failed (exit {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(lines[-1][len(tag):])
    result["process_seconds"] = time.perf_counter() - start
    return result


def run_row(args, row: str, part: str) -> dict:
    env = child_env(memory=part == "memory", threads=args.threads)
    return run_child_row(child_command(args, row, part), row, RESULT_TAG, env)


def merged(times: list[dict], memory: dict) -> dict:
    """One table row: the memory child's measures, the time children's (the median over rounds; the gain and
    history of the first round: every round runs the same seeded computation)."""
    row = {**memory, **times[0]}
    for key in ("s_per_iteration", "cpu_per_iteration"):
        values = [t[key] for t in times if t.get(key) is not None]
        row[key] = statistics.median(values) if values else None
    row["rounds"] = len(times)
    row["process_seconds"] = sum(t["process_seconds"] for t in times) + memory["process_seconds"]
    return row


def mib(n) -> str:
    return "-" if n is None else f"{n / 2**20:.1f}"


def ratio(n, base) -> str:
    return "-" if n is None or not base else f"{n / base:.2f}x"


def table(rows: list[dict], iterations: int) -> str:
    base = next((r for r in rows if r["row"] == BASELINE), None)
    rss0 = base["rss_growth"] if base else None
    saved0 = base["saved_peak"] if base else None
    lines = [
        f"| row | steps | sampler | gradient (k) | reward gain ({iterations} it.) | best it. | CPU s/iteration "
        "| wall s/iteration | peak RSS growth (MiB) | vs 1-step | peak saved for backward (MiB) | vs 1-step |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        gradient = r["gradient"] + (f" ({r['gradient_steps']})" if r["gradient"] != "exact" else "")
        cpu = "-" if r.get("cpu_per_iteration") is None else f"{r['cpu_per_iteration']:.3f}"
        lines.append(
            f"| {r['row']} | {r['steps']} | {r['sampler_name']} | {gradient} | {r['gain']:+.3f} | {r['best_iteration']} "
            f"| {cpu} | {r['s_per_iteration']:.3f} | {mib(r['rss_growth'])} | {ratio(r['rss_growth'], rss0)} "
            f"| {mib(r['saved_peak'])} | {ratio(r['saved_peak'], saved0)} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.child is not None:
        return run_child(args)
    if find_host(import_pack("testing.comfy_host")) is None:
        return 2
    print_header("scripts/bench_multistep.py", with_env=True)
    times: dict[str, list[dict]] = {name: [] for name in args.row_names}
    memory: dict[str, dict] = {}
    for round_ in range(args.repeats):
        for name in args.row_names:
            t = run_row(args, name, "time")
            times[name].append(t)
            print(f"  {name} (time, round {round_ + 1}): gain {t['gain']:+.3f} (iteration 0 total {t['total_0']:.3f}, "
                  f"best {t['best_iteration']}), {t['cpu_per_iteration']:.3f} CPU s / {t['s_per_iteration']:.3f} wall s "
                  f"per iteration (median of {t['gaps']}); plan: {t['memory_plan']}; VAE: {t['vae_layout']}; "
                  f"{t['process_seconds']:.0f} s", flush=True)
            if round_ == 0:
                m = memory[name] = run_row(args, name, "memory")
                print(f"  {name} (memory): RSS growth {mib(m['rss_growth'])} MiB, saved peak {mib(m['saved_peak'])} "
                      f"MiB (windows {[round(w / 2**20, 1) for w in m['saved_windows']]}); "
                      f"{m['process_seconds']:.0f} s", flush=True)
    rows = [merged(times[name], memory[name]) for name in args.row_names]
    first = rows[0]
    print(f"\nhost: {first['host']}; torch {first['torch']}; {first['threads']} threads; {args.size}x{args.size}, tiny "
          f"SD UNet transformer depth {args.depth}; rewards {', '.join(f'{n} ({WEIGHTS[n]:g})' for n in args.reward_names)}"
          f"; memory auto; times: median of {args.repeats} round(s) of time processes ("
          + " ".join(f"{k}={v}" for k, v in CHILD_ENV.items()) + ", glibc's default malloc thresholds); memory: RSS "
          f"{first['rss_method']}, in memory processes with "
          + " ".join(f"{k}={v}" for k, v in MEMORY_ENV.items()) + "\n")
    print(table(rows, args.iterations))
    base = next((r for r in rows if r["row"] == BASELINE), None)
    exact = next((r for r in rows if r["row"] == "exact"), None)
    if base and exact:
        print(f"\nexact at 4 steps vs 1-step ReNO: peak RSS growth {ratio(exact['rss_growth'], base['rss_growth'])}, "
              f"peak saved for backward {ratio(exact['saved_peak'], base['saved_peak'])} (target: within 1.3x)")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
