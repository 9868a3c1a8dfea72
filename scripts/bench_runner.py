"""The batch runner's throughput: single process vs Ray with 1 and 2 CPU workers, and its per-item overhead.

    python scripts/bench_runner.py [--prompts 8] [--seeds 2] [--iterations 20] [--modes single,ray1,ray2]

Runs the runner's own library (``runner.batch.run_batch``, as ``reno-batch`` does) on the tests' tiny ReNO workflow
(testing/reno_prompts.py: the tiny embedded SD model, ReNO Sampler, tiny CLIPScore checkpoint in its real format) over
``--prompts`` x ``--seeds`` items, every mode into its own output folder, each worker on one torch thread (so the
modes do the same arithmetic). Per mode:

* *wall*: the whole ``run_batch`` call, Ray start-up and every worker's engine boot and model loading included;
* *items/s (steady)*: the items after each worker's first (which carries the model building and reward loading)
  divided by the busiest worker's summed seconds for them (results.jsonl ``seconds``: each item from being handed
  to the worker until its images are written), i.e. the throughput once every worker is up;
* *runner overhead per item*: the median of ``seconds - node_seconds`` (the item's time minus the ReNO Sampler
  node's own execution time, from the engine's executing events), over items after each worker's first.

The output folders of the modes hold identical images (checked here, as tests/engine/test_runner_ray.py does).
Ray is an optional extra: ``pip install "ray[default]"``.
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))

PROMPTS = ["a photo of a cake", "a blue cup", "a red bicycle", "a green apple on a table", "a cat on a sofa",
           "a lighthouse at night", "two dogs in the snow", "a yellow kite"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=8, help=f"prompts (1..{len(PROMPTS)}, default 8)")
    ap.add_argument("--seeds", type=int, default=2, help="seeds per prompt (default 2)")
    ap.add_argument("--iterations", type=int, default=20, help="ReNO iterations per item (default 20)")
    ap.add_argument("--modes", default="single,ray1,ray2", help="comma list of single, ray1, ray2")
    args = ap.parse_args(argv)
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not 1 <= args.prompts <= len(PROMPTS) or args.seeds < 1 or any(m not in ("single", "ray1", "ray2") for m in modes):
        ap.error("bad --prompts, --seeds or --modes")

    from reno_batch import import_runner

    batch = import_runner("batch")
    workflow = importlib.import_module("reno_pack.runner.workflow")
    backends = importlib.import_module("reno_pack.runner.backends")
    ray_backend = importlib.import_module("reno_pack.runner.ray_backend")
    comfy_host = importlib.import_module("reno_pack.testing.comfy_host")
    from reno_pack.testing.reno_prompts import reno_api_prompt
    from reno_pack.testing.tiny_rewards import write_reward_root

    work = Path(tempfile.mkdtemp(prefix="reno-bench-runner-"))
    models = work / "models"
    write_reward_root(models / "reno_rewards", ["clipscore"])
    prompt_file = work / "prompts.txt"
    prompt_file.write_text("\n".join(PROMPTS[:args.prompts]) + "\n")
    job = workflow.make_job(reno_api_prompt(prompt="placeholder", iterations=args.iterations,
                                            rewards=(("clipscore", 1.0),)))
    options = {"comfy_extras": [], "extra_packs": [[comfy_host.FIXTURE_PACK_NAME, str(comfy_host.FIXTURE_PACK_DIR)]],
               "threads": 1, "models_dir": str(models), "torchvision_standin": True, "cpu": True}
    items = args.prompts * args.seeds
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='minutes')}; machine: {platform.machine()}, "
          f"{os.cpu_count()} CPUs, Python {platform.python_version()}; {items} items ({args.prompts} prompts x "
          f"{args.seeds} seeds), {args.iterations} iterations each, tiny SD + tiny CLIPScore", flush=True)

    rows = []
    ray_up = False
    for mode in modes:
        cfg = batch.BatchConfig(source=backends.WorkflowSource(job), prompt_file=prompt_file, out=work / mode, seeds=list(range(args.seeds)),
                                layout="plain", save_initial=False, progress=False, worker_options=dict(options))
        if mode != "single":
            import ray

            if not ray_up:
                ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, log_to_driver=False)
                ray_up = True
            cfg.dispatch = ray_backend.RayDispatch(workers=int(mode[-1]))
        start = time.perf_counter()
        code = batch.run_batch(cfg)
        wall = time.perf_counter() - start
        if code != batch.EXIT_OK:
            print(f"{mode}: the runner exited {code}")
            return 1
        results = [json.loads(x) for x in (cfg.out / "results.jsonl").read_text().splitlines() if x.strip()]
        per_worker = collections.defaultdict(list)
        for r in results:
            per_worker[r.get("worker", 0)].append(r)
        # steady state: each worker's items after its first (which carries the model building and reward loading)
        later = sum(len(rs) - 1 for rs in per_worker.values())
        busiest = max(sum(r["seconds"] for r in rs[1:]) for rs in per_worker.values())
        overhead = [r["seconds"] - r["node_seconds"] for rs in per_worker.values() for r in rs[1:]
                    if isinstance(r.get("node_seconds"), (int, float))]
        node = [r["node_seconds"] for rs in per_worker.values() for r in rs[1:]
                if isinstance(r.get("node_seconds"), (int, float))]
        rows.append({"mode": mode, "workers": len(per_worker), "wall": wall, "items_per_s_wall": items / wall,
                     "items_per_s_steady": later / busiest if busiest else float("nan"), "overhead": statistics.median(overhead) if overhead else None,
                     "node": statistics.median(node) if node else None})
        print(f"  {mode}: wall {wall:.1f} s, steady {rows[-1]['items_per_s_steady']:.3f} items/s, overhead "
              f"{rows[-1]['overhead'] * 1000 if rows[-1]['overhead'] is not None else float('nan'):.1f} ms/item", flush=True)
    if ray_up:
        import ray

        ray.shutdown()
    images = {m: {p.name: p.read_bytes() for p in sorted((work / m).rglob("*.png"))} for m in modes}
    same = all(images[m] == images[modes[0]] for m in modes)
    base = next((r for r in rows if r["mode"] == "ray1"), rows[0])
    print("\n| mode | workers | wall (s) | items/s (wall) | items/s (steady) | vs ray1 (steady) | node s/item "
          "| runner overhead (ms/item) |\n|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['mode']} | {r['workers']} | {r['wall']:.1f} | {r['items_per_s_wall']:.3f} "
              f"| {r['items_per_s_steady']:.3f} | {r['items_per_s_steady'] / base['items_per_s_steady']:.2f}x "
              f"| {r['node']:.3f} | {r['overhead'] * 1000:.1f} |")
    print(f"\nidentical images in every mode: {same}")
    return 0 if same else 1


if __name__ == "__main__":
    raise SystemExit(main())
