"""ReNO through the real node path, timed: seconds per iteration, peak memory, and the overhead ratio.

    python scripts/benchmark.py [--size 128] [--iterations 12] [--rewards imagereward,hpsv2.1,pickscore,clipscore]
    python scripts/benchmark.py --model sd-turbo,sdxl-turbo,hyper-sdxl [--device cuda] [--dtype bf16]
        [--size N] [--iterations 50] [--repeats 5] [--memory "auto,no checkpointing"]

A real ComfyUI engine (the host testing/comfy_host.py finds) runs ReNO Sampler. ``--model tiny`` (the default)
uses the tiny embedded model with tiny reward checkpoints in their real formats, on the CPU.
``--model sd-turbo|sdxl-turbo|hyper-sdxl`` (comma list allowed) builds the full-size architectures with random
weights directly on the device (scripts/full_size_models.py): SD 2.1 UNet at 512 px, SDXL UNet at 512 px,
SDXL UNet at 1024 px with learning rate 10, the SD VAE, and the full-size rewards (ImageReward, HPSv2.1,
PickScore, CLIPScore by default, the paper's weights); ``--size`` overrides the size (e.g. a small one to
check the path on a CPU), ``--memory`` runs each of the given memory modes of ReNO Sampler (when the node
has that input) with its own warm-up, timing and peak. Use the current ComfyUI (COMFYUI_PATH) for
full-size figures: the 2024 engine runs them, but its UNet needs activation copies for the backward pass.
On the GPU the engine is booted without ``--cpu``.

In the same process the same models are timed alone (UNet forward+backward through ``apply_model`` at
sigma_max, VAE decode forward+backward, the reward stack forward+backward on one image), so the
**overhead ratio** = ReNO's median iteration time / the sum of those parts shows what ReNO's own loop
costs on top of the models (its optimizer step, bookkeeping, previews, progress and events; and any
recomputation the memory mode chose). A warm-up run comes first; seconds per iteration is the median of the
timed run's iterations (ReNO; the last one, which only evaluates, left out) or of --repeats calls (parts);
"50 iterations" is the measured wall time of the node call when --iterations is 50, else extrapolated.
Prints markdown tables with the GPU allocator peak of the timed run (CUDA) or its peak RSS (CPU).

**Threads and timing.** By default torch runs one thread (``--threads``; ``torch.set_num_threads``) and OpenMP
waits passively (``OMP_WAIT_POLICY=PASSIVE``, set before torch is imported unless the environment sets it): on a
CPU shared with other work, OpenMP threads that spin waiting for a descheduled peer make wall times meaningless
(issue 20's outside run: 3.18 s/iteration and an overhead ratio of 0.772 with 2 spinning threads, 0.337 s and
1.099 with one passive thread, for the same work). The tiny benchmark reports **CPU time** (``time.process_time``: this process's
user + system time, all threads) beside wall time for every figure, and its overhead ratio in both; CPU time is
what another program on the machine cannot inflate. On a GPU the CPU time is only the host side: read the wall
columns there.
"""

from __future__ import annotations

import os  # noqa: I001  (OMP_WAIT_POLICY must be in the environment before anything imports torch)

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import contextlib
import gc
import platform
import re
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
from bench_common import comma_list, command_line, find_host  # noqa: E402
from reno_batch import import_pack  # noqa: E402

# the headless host and the tiny models are the pack's test fixtures (testing/), imported by name; this loads the
# pack as the package reno_pack
comfy_host = import_pack("testing.comfy_host")
pack_module = comfy_host.pack_module
from reno_pack.testing.tiny_rewards import write_reward_root  # noqa: E402

PROMPT = "a red apple on a wooden table"
WEIGHTS = {"imagereward": 1.0, "hpsv2.1": 5.0, "hpsv2": 5.0, "pickscore": 0.05, "clipscore": 0.01, "aesthetic": 0.5}
DEFAULT_REWARDS = "imagereward,hpsv2.1,pickscore,clipscore"
FULL_MODELS = ("sd-turbo", "sdxl-turbo", "hyper-sdxl")  # scripts/full_size_models.py MODELS
DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}
TINY_DEFAULTS = {"size": 128, "iterations": 12}
FULL_ITERATIONS = 50
WARMUP_ITERATIONS = 3


def median_times(fn, repeats: int, sync=lambda: None) -> tuple[float, float]:
    """(median wall seconds, median CPU seconds) of ``repeats`` calls of ``fn`` after a warm-up call."""
    fn()  # warm-up
    walls, cpus = [], []
    for _ in range(repeats):
        sync()
        start, cpu = time.perf_counter(), time.process_time()
        fn()
        sync()
        walls.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def median_time(fn, repeats: int, sync=lambda: None) -> float:
    return median_times(fn, repeats, sync)[0]


def set_threads(threads: int) -> None:
    """torch's intra-op (and, where still possible, inter-op) thread count for the whole benchmark."""
    import torch

    torch.set_num_threads(threads)
    with contextlib.suppress(RuntimeError):  # inter-op threads can be set only before their first use
        torch.set_num_interop_threads(threads)


# -- peak memory ----------------------------------------------------------------------------------------

def reset_peak_rss() -> bool:
    """Reset the kernel's high-water mark of this process's RSS (Linux: /proc/self/clear_refs)."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def peak_rss_gib() -> float:
    """Peak RSS since the last reset (VmHWM), or of the whole process where that is not readable."""
    try:
        m = re.search(r"VmHWM:\s+(\d+)\s+kB", Path("/proc/self/status").read_text())
        if m:
            return int(m.group(1)) / 2**20
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def process_peak_rss_gib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


# -- arguments ------------------------------------------------------------------------------------------

def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="tiny",
                    help=f"comma list of: tiny (CPU), {', '.join(FULL_MODELS)} (full size, random weights)")
    ap.add_argument("--size", type=int, default=None,
                    help="image side in pixels (default: tiny 128, sd-turbo 512, sdxl-turbo 512, hyper-sdxl 1024)")
    ap.add_argument("--iterations", type=int, default=None, help="ReNO iterations (default: tiny 12, full size 50)")
    ap.add_argument("--repeats", type=int, default=5, help="timed calls of each part alone (median)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch threads (default 1: figures that mean something on a shared machine; OpenMP waits "
                         "passively unless OMP_WAIT_POLICY is set)")
    ap.add_argument("--rewards", default=DEFAULT_REWARDS)
    ap.add_argument("--depth", type=int, default=None,
                    help="tiny UNet transformer depth (default: 1, 0 on the 2024 engine)")
    ap.add_argument("--device", default=None, help="full-size models: cuda (default when available) or cpu")
    ap.add_argument("--dtype", choices=sorted(DTYPES), default=None,
                    help="full-size diffusion model and VAE (default: bf16 on cuda when supported, else fp16; "
                         "fp32 on cpu)")
    ap.add_argument("--memory", default=None,
                    help="comma list of ReNO Sampler memory modes to compare, each with its own "
                         "warm-up, timing and peak (default: the node's default; ignored if the node has no "
                         "'memory' input)")
    args = ap.parse_args(argv)
    args.models = comma_list(ap, "--model", args.model, ("tiny", *FULL_MODELS))
    args.reward_names = comma_list(ap, "--rewards", args.rewards, WEIGHTS)
    if args.iterations is not None and args.iterations < 2:
        ap.error("--iterations must be at least 2 (iteration times are the gaps between iterations)")
    if args.repeats < 1:
        ap.error("--repeats must be at least 1")
    if args.threads < 1:
        ap.error("--threads must be at least 1")
    if args.size is not None and args.size % 8:
        ap.error("--size must be a multiple of 8")
    full = [m for m in args.models if m != "tiny"]
    if full and args.iterations is not None and args.iterations < 3:
        ap.error("--iterations must be at least 3 for full-size models (the last iteration has no backward pass)")
    if full and args.size is not None and args.size % 64:
        ap.error("--size must be a multiple of 64 for full-size models (the UNets downsample the latent 8x)")
    import torch

    if args.device is None:
        args.device = "cuda" if full and torch.cuda.is_available() else "cpu"
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        ap.error("--device cuda: torch sees no CUDA device")
    if args.device not in ("cpu", "cuda"):
        ap.error("--device: cpu or cuda")
    if "tiny" in args.models and args.device != "cpu":
        ap.error("the tiny model runs on the CPU: benchmark it in its own run (without --device cuda)")
    return args


# -- the tiny model (CPU) -------------------------------------------------------------------------------

def run_tiny(engine, args) -> int:
    import torch

    size = args.size or TINY_DEFAULTS["size"]
    iterations = args.iterations or TINY_DEFAULTS["iterations"]
    names = args.reward_names
    write_reward_root(Path(engine.folder_paths.get_folder_paths("reno_rewards")[0]), names)
    pack = pack_module(engine)

    depth = args.depth if args.depth is not None else 1
    model, vae = engine.call_node("ReNOTestTinySD", inference=True, transformer_depth=depth, context_dim=32, seed=0)
    (cond,) = engine.call_node("ReNOTestConditioning", inference=True, text=PROMPT, context_dim=32)
    (latent,) = engine.call_node("EmptyLatentImage", inference=True, width=size, height=size, batch_size=1)
    stack = None
    for name in names:
        (stack,) = engine.call_node("ReNORewardLoader", inference=True, reward=name, weight=WEIGHTS[name], rewards=stack)

    # 1. ReNO through the node: time between consecutive iterations (progress updates), per memory mode
    stamps: list[tuple[float, float]] = []  # (wall, CPU) at each progress report
    engine.add_progress_callback(lambda e: stamps.append((time.perf_counter(), time.process_time())))
    optional = engine.node_class("ReNOSampler").INPUT_TYPES().get("optional", {})
    modes = [m.strip() for m in args.memory.split(",")] if args.memory and "memory" in optional else [None]

    def reno(mode):
        stamps.clear()
        extra = {} if mode is None else {"memory": mode}
        out = engine.call_node("ReNOSampler", inference=True, model=model, positive=cond, negative=cond, vae=vae,
                               latent_image=latent, rewards=stack, prompt=PROMPT, seed=0, iterations=iterations,
                               learning_rate=5.0, cfg=1.0, regularization=0.01, grad_clip=0.1, **extra)
        config = out["result"][2].config or {}
        pairs = list(zip(stamps, stamps[1:]))
        return ([b[0] - a[0] for a, b in pairs], [b[1] - a[1] for a, b in pairs], config.get("memory", ""),
                config.get("vae_layout", ""), config.get("attention", ""))

    runs = []
    for mode in modes:
        reno(mode)  # warm-up (loads, caches text features, measures the VAE layout)
        gc.collect()
        reset_peak_rss()
        walls, cpus, plan, layout, attention = reno(mode)
        runs.append((mode, statistics.median(walls), statistics.median(cpus), peak_rss_gib(), plan, layout,
                     attention))
    per_iteration, per_iteration_cpu = runs[0][1], runs[0][2]
    engine.clear_progress_callbacks()

    # 2. the same models alone, forward + backward, in the same process and mode: as the host runs them (its
    # attention, the VAE as loaded), and as the ReNO run configured them (the attention and VAE layout it reports)
    inner = model.model
    ensemble = pack.reward_loaders.RewardEnsemble(list(stack), PROMPT)
    modules = [inner, vae.first_stage_model] + [r.model for r in stack]
    sigma = float(inner.model_sampling.sigma_max)
    layout, attention = runs[0][5], runs[0][6]
    host = getattr(pack.nodes, "host", None)
    run_sdpa = attention.startswith("PyTorch SDPA") and host is not None

    def configured(as_run: bool):
        """(transformer_options, context manager) of the parts: the host's, or the ReNO run's configuration."""
        stack_ = contextlib.ExitStack()
        if not as_run:
            return {}, stack_
        options = host.gradient_attention_options({})[0].get("transformer_options", {}) if run_sdpa else {}
        if host is not None and hasattr(host, "vae_sdpa") and pack.nodes.settings.pytorch_attention():
            stack_.enter_context(host.vae_sdpa(vae.first_stage_model, vae.vae_dtype))
        if layout.startswith("channels-last"):
            stack_.enter_context(pack.nodes.autograd.channels_last_weights([vae.first_stage_model]))
        return options, stack_

    tables = {}
    with torch.inference_mode(False), torch.enable_grad(), pack.nodes.autograd.normal_tensors(modules):
        ensemble.prepare()
        context = cond[0][0].clone()
        noise = torch.randn(1, 4, size // 8, size // 8)
        for as_run in ([False, True] if layout or attention else [False]):
            options, installed = configured(as_run)

            def unet(options=options):
                x = (noise * (1 + sigma**2) ** 0.5).requires_grad_(True)
                extra = {"transformer_options": options} if options else {}
                inner.apply_model(x, torch.tensor([sigma]), c_crossattn=context, **extra).sum().backward()

            def decode():
                z = noise.clone().requires_grad_(True)
                pack.nodes.lifecycle.decode_with_grad(vae, z).sum().backward()

            def rewards():
                image = torch.rand(1, 3, size, size, requires_grad=True)
                ensemble(image)[0].sum().backward()

            with installed:
                tables[as_run] = {"UNet": median_times(unet, args.repeats),
                                  "VAE decode": median_times(decode, args.repeats),
                                  f"rewards ({', '.join(names)})": median_times(rewards, args.repeats)}
    sums = {k: (sum(w for w, _ in t.values()), sum(c for _, c in t.values())) for k, t in tables.items()}
    alone, alone_cpu = sums[False]
    as_run_cpu = sums[True][1] if True in sums else None
    peak = f"{process_peak_rss_gib():.2f} GiB peak RSS"

    print(f"host: {engine.info}; torch {torch.__version__}; {torch.get_num_threads()} threads, "
          f"OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', '(unset)')}; {size}x{size}, UNet transformer depth "
          f"{depth}; {peak}")
    print(f"ReNO run: VAE layout {layout or '(not reported by this version)'}; attention {attention or '(not reported)'}"
          "\n")
    print("| measured | CPU seconds | wall seconds |")
    print("|---|---|---|")
    for as_run, parts in tables.items():
        how = "as the ReNO run configures them" if as_run else "as the host runs them"
        for label, (wall, cpu) in parts.items():
            print(f"| {label} alone, forward+backward, {how} | {cpu:.4f} | {wall:.4f} |")
        print(f"| sum of the parts {how} | {sums[as_run][1]:.4f} | {sums[as_run][0]:.4f} |")
    if modes == [None]:
        print(f"| ReNO iteration (median of {iterations - 1}) | {per_iteration_cpu:.4f} | {per_iteration:.4f} |")
        print(f"| 50 iterations (extrapolated) | {per_iteration_cpu * 50:.2f} | {per_iteration * 50:.2f} |")
        print(f"| **overhead ratio** (iteration / sum of the parts as the host runs them) "
              f"| **{per_iteration_cpu / alone_cpu:.3f}** | {per_iteration / alone:.3f} |")
        if as_run_cpu is not None:
            print(f"| loop overhead (iteration / sum of the parts as the ReNO run configures them) "
                  f"| {per_iteration_cpu / as_run_cpu:.3f} | {per_iteration / sums[True][0]:.3f} |")
        return 0
    print(f"\n| memory | ReNO iteration, CPU s (median of {iterations - 1}) | wall s | 50 iterations, CPU s "
          "(extrapolated) | peak RSS of the run (GiB) | overhead ratio (CPU) | (wall) | loop overhead (CPU) | plan |")
    print("|---|---|---|---|---|---|---|---|---|")
    for mode, t, cpu, rss, plan, _, _ in runs:
        loop = f"{cpu / as_run_cpu:.3f}" if as_run_cpu is not None else "-"
        print(f"| {mode} | {cpu:.4f} | {t:.4f} | {cpu * 50:.2f} | {rss:.2f} | {cpu / alone_cpu:.3f} | {t / alone:.3f} "
              f"| {loop} | {plan} |")
    return 0


# -- full-size models -----------------------------------------------------------------------------------

class FullBench:
    """Full-size models with random weights through ReNO Sampler, on one device."""

    def __init__(self, engine, args):
        import full_size_models as fsm
        import torch

        self.torch, self.fsm, self.engine, self.args = torch, fsm, engine, args
        self.pack = pack_module(engine)
        self.device = torch.device(args.device)
        self.cuda = self.device.type == "cuda"
        if args.dtype is None:
            if self.cuda:
                args.dtype = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
            else:
                args.dtype = "fp32"
        self.dtype = getattr(torch, DTYPES[args.dtype])
        self.device_name = torch.cuda.get_device_name(self.device) if self.cuda else f"CPU ({platform.machine()})"
        self.iterations = args.iterations or FULL_ITERATIONS
        self.modes, self.mode_note = self.memory_modes()
        self.model_cache: dict = {}  # arch -> (patcher, params): sdxl-turbo and hyper-sdxl share one UNet
        self.vae = None
        self.stack = None

    def sync(self):
        if self.cuda:
            self.torch.cuda.synchronize(self.device)

    def log(self, text: str):
        print(text, flush=True)

    def memory_modes(self) -> tuple[list, str]:
        optional = self.engine.node_class("ReNOSampler").INPUT_TYPES().get("optional", {})
        spec = optional.get("memory")
        if spec is None:
            note = "ReNO Sampler has no 'memory' input on this version: one run per model, --memory ignored"
            return [None], note if self.args.memory else ""
        choices, options = list(spec[0]), (spec[1] if len(spec) > 1 else {})
        wanted = [m.strip() for m in self.args.memory.split(",")] if self.args.memory else [options.get("default",
                                                                                                        choices[0])]
        bad = [m for m in wanted if m not in choices]
        if bad:
            raise SystemExit(f"--memory: unknown mode(s) {bad}; ReNO Sampler offers {choices}")
        return wanted, ""

    # -- building -----------------------------------------------------------------------------------
    def build_shared(self):
        """The VAE and the reward stack, shared by every model of the run."""
        fsm, torch = self.fsm, self.torch
        start = time.perf_counter()
        self.vae, vae_params = fsm.build_vae(self.device, self.dtype)
        check = "matches" if vae_params == fsm.VAE_PARAMS else f"MISMATCH, the real one has {fsm.VAE_PARAMS:,}"
        self.log(f"  VAE (comfy.sd.VAE, SD VAE key format): {vae_params:,} parameters ({check}), "
                 f"{self.vae.vae_dtype}, built in {time.perf_counter() - start:.1f} s")
        # tiny rewards in their real formats: their tokenizers serve the full-size models
        root = Path(self.engine.folder_paths.get_folder_paths("reno_rewards")[0])
        write_reward_root(root, fsm.TOKENIZER_SOURCES)
        load = self.pack.reward_loaders.load_reward
        tiny = {name: load(name, [root], download=False) for name in fsm.TOKENIZER_SOURCES}
        self.stack, self.reward_params = fsm.build_rewards(self.pack, self.args.reward_names, WEIGHTS, tiny,
                                                           self.device, log=self.log)
        del tiny
        gc.collect()
        if self.cuda:
            torch.cuda.empty_cache()

    def model_for(self, arch):
        cached = self.model_cache.get(arch.name)
        if cached is not None:
            return cached
        self.release_models()
        start = time.perf_counter()
        patcher, params = self.fsm.build_model(arch, self.device, self.dtype)
        self.sync()
        check = "matches" if params == arch.params else f"MISMATCH, the real one has {arch.params:,}"
        self.log(f"  {arch.label} (comfy.supported_models.{type(patcher.model.model_config).__name__}, "
                 f"{patcher.model.model_type.name}): {params:,} parameters ({check}), {self.dtype}, "
                 f"built on {self.device} in {time.perf_counter() - start:.1f} s")
        self.model_cache[arch.name] = (patcher, params)
        return patcher, params

    def release_models(self):
        import comfy.model_management as mm

        if not self.model_cache:
            return
        self.model_cache.clear()
        mm.unload_all_models()
        gc.collect()
        mm.soft_empty_cache(True)
        if self.cuda:
            self.torch.cuda.empty_cache()

    # -- timing -------------------------------------------------------------------------------------
    def time_parts(self, model, cond, size) -> dict[str, float]:
        """UNet, VAE decode and reward stack alone, forward+backward, same process, device and dtype."""
        torch, pack, fsm = self.torch, self.pack, self.fsm
        import comfy.model_management as mm

        reward_patchers = [pack.nodes.reward_nodes.reward_patcher(r.model) for r in self.stack]
        mm.load_models_gpu([model, self.vae.patcher] + reward_patchers)
        inner = model.model
        ensemble = pack.reward_loaders.RewardEnsemble(list(self.stack), PROMPT)
        modules = [inner, self.vae.first_stage_model] + [r.model for r in self.stack]
        sigma = float(inner.model_sampling.sigma_max)
        device = self.device
        lifecycle = pack.nodes.lifecycle
        copy_saved = lifecycle.saved_activations_copied
        with torch.inference_mode(False), torch.enable_grad(), pack.nodes.autograd.normal_tensors(modules):
            ensemble.prepare()
            context = cond[0][0].to(device)
            y = fsm.adm_input(model, cond)
            extra = {"y": y.to(device)} if y is not None else {}
            gen = torch.Generator(device=device).manual_seed(3)
            noise = torch.randn(1, 4, size // 8, size // 8, device=device, generator=gen)
            timestep = torch.full((1,), sigma, device=device)

            # gradients to the input only, as ReNO's step takes them (torch.autograd.grad to the noise)
            def unet():
                x = (noise * (1 + sigma**2) ** 0.5).requires_grad_(True)
                copying = lifecycle._IN_PLACE.get(inner, False)
                try:
                    with copy_saved() if copying else contextlib.nullcontext():
                        torch.autograd.grad(inner.apply_model(x, timestep, c_crossattn=context, **extra).sum(), x)
                except RuntimeError as e:
                    if copying or "inplace operation" not in str(e):
                        raise
                    # a model that adds to activations in place (FLUX): copy them, as the node does
                    lifecycle._IN_PLACE[inner] = True
                    unet()

            def decode():
                z = noise.clone().requires_grad_(True)
                torch.autograd.grad(pack.nodes.lifecycle.decode_with_grad(self.vae, z).sum(), z)

            def rewards():
                image = torch.rand(1, 3, size, size, device=device, requires_grad=True)
                torch.autograd.grad(ensemble(image)[0].sum(), image)

            return {"UNet": median_time(unet, self.args.repeats, self.sync),
                    "VAE decode": median_time(decode, self.args.repeats, self.sync),
                    "rewards": median_time(rewards, self.args.repeats, self.sync)}

    def reno_run(self, model, cond, latent, spec, iterations, mode):
        """One ReNO Sampler call: (wall seconds, per-iteration gaps, node output)."""
        stamps: list[tuple[float, int]] = []

        def on_progress(event):
            if event.total == iterations:
                stamps.append((time.perf_counter(), event.value))

        extra = {} if mode is None else {"memory": mode}
        with self.engine.progress_callback(on_progress):
            self.sync()
            start = time.perf_counter()
            out = self.engine.call_node(
                "ReNOSampler", inference=True, model=model, positive=cond, negative=cond, vae=self.vae,
                latent_image=latent, rewards=self.stack, prompt=PROMPT, seed=0, iterations=iterations,
                learning_rate=spec.learning_rate, cfg=1.0, regularization=0.01, grad_clip=0.1, **extra)
            self.sync()
            wall = time.perf_counter() - start
        gaps = [b[0] - a[0] for a, b in zip(stamps, stamps[1:])]
        return wall, gaps, out

    def time_mode(self, model, cond, latent, spec, mode) -> dict:
        torch = self.torch
        self.reno_run(model, cond, latent, spec, min(WARMUP_ITERATIONS, self.iterations), mode)  # warm-up
        gc.collect()
        if self.cuda:
            self.sync()
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            reset_peak_rss()
        wall, gaps, out = self.reno_run(model, cond, latent, spec, self.iterations, mode)
        full = gaps[:-1]  # the last iteration only evaluates (no backward pass, no step): left out
        row = {"wall": wall, "per_iteration": statistics.median(full), "gaps": len(full)}
        if self.cuda:
            row["allocated"] = torch.cuda.max_memory_allocated(self.device) / 2**30
            row["reserved"] = torch.cuda.max_memory_reserved(self.device) / 2**30
        else:
            row["rss"] = peak_rss_gib()
        history = out["result"][2] if isinstance(out, dict) else out[2]
        row["best"] = history.best_iteration
        row["stop"] = history.stop_reason
        row["plan"] = (getattr(history, "config", None) or {}).get("memory") or ""  # what the memory mode chose
        return row

    # -- one model ----------------------------------------------------------------------------------
    def run_model(self, name: str) -> list[dict]:
        fsm = self.fsm
        spec = fsm.MODELS[name]
        arch = fsm.ARCHS[spec.arch]
        size = self.args.size or spec.size
        self.log(f"\n{spec.title}: {arch.label} at {size}x{size}, learning rate {spec.learning_rate:g}")
        model, _ = self.model_for(arch)
        cond = fsm.conditioning(arch, size)
        (latent,) = self.engine.call_node("EmptyLatentImage", inference=True, width=size, height=size, batch_size=1)
        start = time.perf_counter()
        parts = self.time_parts(model, cond, size)
        self.log(f"  parts alone (forward+backward, median of {self.args.repeats}): "
                 + ", ".join(f"{k} {v:.4f} s" for k, v in parts.items())
                 + f" ({time.perf_counter() - start:.0f} s)")
        rows = []
        for mode in self.modes:
            start = time.perf_counter()
            try:
                row = self.time_mode(model, cond, latent, spec, mode)
            except Exception as e:  # noqa: BLE001 - one mode failing (out of memory) must not end the run
                row = {"error": f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:300]}
            row.update(model=spec.title, size=size, mode=mode, parts=parts)
            self.log(f"  memory {mode or '-'}: "
                     + (f"{row['per_iteration']:.4f} s/iteration, best iteration {row['best']}"
                        + (f", stopped: {row['stop']}" if row["stop"] else "")
                        + (f"; plan: {row['plan']}" if row["plan"] else "")
                        if "error" not in row else row["error"])
                     + f" ({time.perf_counter() - start:.0f} s)")
            rows.append(row)
        return rows

    def table(self, rows: list[dict]) -> str:
        peak_cols = "| allocator peak (GiB) | reserved peak (GiB) " if self.cuda else "| peak RSS (GiB) "
        lines = [
            "| model | size | dtype | device | memory | s/iteration | 50 iterations (s) " + peak_cols
            + "| UNet f+b (s) | VAE decode f+b (s) | rewards f+b (s) | sum of parts (s) | overhead ratio |",
            "|---|---|---|---|---|---|---|" + ("---|---|" if self.cuda else "---|") + "---|---|---|---|---|",
        ]
        for r in rows:
            parts = r["parts"]
            alone = sum(parts.values())
            head = f"| {r['model']} | {r['size']} | {self.args.dtype} | {self.device_name} | {r['mode'] or '-'} "
            tail = (f"| {parts['UNet']:.4f} | {parts['VAE decode']:.4f} | {parts['rewards']:.4f} | {alone:.4f} ")
            if "error" in r:
                empty = "| - | - " if self.cuda else "| - "
                lines.append(head + f"| failed: {r['error']} | - " + empty + tail + "| - |")
                continue
            per = r["per_iteration"]
            fifty = (f"{r['wall']:.2f} (measured)" if self.iterations == 50 else f"{per * 50:.2f} (extrapolated)")
            peak = (f"| {r['allocated']:.2f} | {r['reserved']:.2f} " if self.cuda else f"| {r['rss']:.2f} ")
            lines.append(head + f"| {per:.4f} | {fifty} " + peak + tail + f"| **{per / alone:.3f}** |")
        return "\n".join(lines)

    def run(self, names: list[str]) -> int:
        torch = self.torch
        import transformers

        threads = torch.get_num_threads()
        self.log(f"host: {self.engine.info}; torch {torch.__version__}; transformers {transformers.__version__}; "
                 f"Python {platform.python_version()}; device {self.device_name}"
                 + ("" if self.cuda else f", {threads} threads"))
        self.log(f"command: {command_line()}")
        self.log(f"rewards: {', '.join(f'{n} (weight {WEIGHTS[n]:g})' for n in self.args.reward_names)}; "
                 f"{self.iterations} iterations after a {min(WARMUP_ITERATIONS, self.iterations)}-iteration warm-up; "
                 f"diffusion model and VAE in {self.args.dtype}")
        compile_env = os.environ.get("RENO_TORCH_COMPILE", "").strip()
        if compile_env:
            self.log(f"RENO_TORCH_COMPILE={compile_env} (reward models through torch.compile in ReNO runs)")
        if self.mode_note:
            self.log(f"note: {self.mode_note}")
        start = time.perf_counter()
        self.build_shared()
        self.log(f"  shared models built in {time.perf_counter() - start:.1f} s")
        tables = []
        for name in names:
            rows = self.run_model(name)
            tables.append(self.table(rows))
            self.log("\n" + tables[-1])
        self.release_models()
        if len(tables) > 1:
            self.log("\nall models:\n")
            self.log("\n\n".join(tables))
        footer = [f"ReNO: median of the timed run's {self.iterations - 2} gaps between iterations with a backward "
                  "pass (the last one has none); parts: median of "
                  f"{self.args.repeats} after a warm-up; overhead ratio = ReNO iteration / sum of parts"]
        if self.cuda:
            footer.append("peaks: torch.cuda max_memory_allocated / max_memory_reserved of the timed ReNO run")
        else:
            footer.append(f"peak RSS of the timed ReNO run; whole process {process_peak_rss_gib():.2f} GiB")
        self.log("\n" + "; ".join(footer))
        return 0


def main(argv=None) -> int:
    args = parse_args(argv)
    set_threads(args.threads)
    full = [m for m in args.models if m != "tiny"]

    host = find_host(comfy_host)
    if host is None:
        return 2
    engine = comfy_host.boot_engine(host, [comfy_host.FIXTURE_PACK_DIR, comfy_host.PACK_DIR],
                                    Path(tempfile.mkdtemp(prefix="reno-bench-")), cpu=args.device != "cuda")
    if args.device == "cuda":
        import comfy.model_management as mm

        if mm.get_torch_device().type != "cuda":
            print(f"ComfyUI did not boot on the GPU (its device is {mm.get_torch_device()})")
            return 2
    rc = 0
    if "tiny" in args.models:
        rc = run_tiny(engine, args)
    if full:
        rc = FullBench(engine, args).run(full) or rc
    return rc


if __name__ == "__main__":
    sys.exit(main())
