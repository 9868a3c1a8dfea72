"""Write workflows/ReNO 02 Z-Image-Turbo as a subgraph.json with the real frontend (test-only tool).

    .venv/bin/python tests/browser/make_subgraph_workflow.py [--frontend 1.58.1] [--raw OUT.json]

Starts ComfyUI with this pack as tests/browser/test_browser.py does (tests/browser/serve_comfyui.py, the frontend
unpacked in <venv>/frontends/), then tests/browser/make_subgraph_workflow.mjs loads
``ReNO 01 Z-Image-Turbo, 8 steps (start here).json`` in headless chromium, selects its ReNO part (ModelSamplingAuraFlow, the
prompt's CLIP Text Encode and its zeroed negative, the four reward loaders, the ReNO Sampler) and collapses it into
one subgraph node with the frontend's own ``convertToSubgraph`` (what "Convert to Subgraph" runs); the graph the
frontend serializes is saved as the new workflow, with its Note. Its inputs: model, clip, vae, latent, prompt; its
outputs: the image and the history (for the ReNO Iteration Preview outside). The frontend also promotes the
sampler's seed to an input of the node (a widget on it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
sys.path.insert(0, str(HERE.parent))
sys.path.insert(0, str(HERE))

import comfy_host  # noqa: E402
from test_browser import CHROMIUM, FRONTEND_CACHE, _free_port, _wait_for_server  # noqa: E402

SOURCE = ROOT / "workflows" / "ReNO 01 Z-Image-Turbo, 8 steps (start here).json"
TARGET = ROOT / "workflows" / "ReNO 02 Z-Image-Turbo as a subgraph.json"
TITLE = "ReNO Z-Image"
#: ModelSamplingAuraFlow, CLIP Text Encode, ConditioningZeroOut, the four ReNO Reward Loaders, ReNO Sampler
INNER = [5, 6, 7, 9, 10, 11, 12, 13]
LABELS = {"inputs": {"text": "prompt", "latent_image": "latent"}, "outputs": {}}
#: the top-level nodes after the conversion (the loaders, latent and prompt left, the ReNO node, its outputs)
POSITIONS = {"1": [40, -200], "2": [40, 45], "3": [40, 205], "4": [40, 380], "8": [40, 500],
             "subgraph": [500, 45], "14": [880, 45], "15": [880, 520], "16": [40, 700]}
NOTE_ADDED = (
    "\n\nThe ReNO part of 'ReNO 01 Z-Image-Turbo, 8 steps (start here)' (ModelSamplingAuraFlow, the prompt's encoding and its "
    "zeroed negative, the four reward loaders and the ReNO Sampler) is one reusable subgraph node, "
    f"'{TITLE}': model, clip, vae, latent and prompt in, the image and the iteration history out. "
    "Open the node to change the rewards, steps or learning rate inside it.")


def make(frontend: str, raw: Path | None, shot: Path | None = None) -> Path:
    node = shutil.which("node")
    assert node, "node is not installed"
    host = comfy_host.find_host()
    front = FRONTEND_CACHE / f"comfyui-frontend-package-{frontend}" / "static"
    assert (front / "index.html").is_file(), f"frontend {frontend} is not unpacked at {front}"
    with tempfile.TemporaryDirectory(prefix="reno_subgraph_") as tmp:
        base = Path(tmp)
        (base / "custom_nodes").mkdir()
        (base / "custom_nodes" / comfy_host.PACK_NAME).symlink_to(ROOT, target_is_directory=True)
        (base / "custom_nodes" / comfy_host.FIXTURE_PACK_NAME).symlink_to(comfy_host.FIXTURE_PACK_DIR,
                                                                          target_is_directory=True)
        from tiny_rewards import write_reward_root

        write_reward_root(base / "models" / "reno_rewards", ("pickscore", "clipscore"))
        port = _free_port()
        log = base / "server.log"
        env = dict(os.environ, RENO_DOWNLOADS="0", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
        env.pop("PYTHONPATH", None)
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [sys.executable, str(HERE / "serve_comfyui.py"), "--root", str(host.root), "--base", str(base),
                 "--port", str(port), "--front-end-root", str(front)],
                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(base))
        url = f"http://127.0.0.1:{port}/"
        try:
            _wait_for_server(url, proc, log)
            spec = base / "spec.json"
            spec.write_text(json.dumps({"nodes": INNER, "title": TITLE, **LABELS, "positions": POSITIONS,
                                        "sizes": {"16": [760, 400]}}))
            result = base / "result.json"
            subprocess.run([node, str(HERE / "make_subgraph_workflow.mjs"), "--url", url, "--in", str(SOURCE),
                            "--spec", str(spec), "--out", str(result), "--chromium", CHROMIUM]
                           + (["--shot", str(shot)] if shot else []),
                           cwd=str(ROOT), check=True, timeout=300)
            got = json.loads(result.read_text())
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    if raw:
        raw.write_text(json.dumps(got, indent=1))
    wf = got["saved"]
    for n in wf["nodes"]:
        if n["type"] == "Note":
            n["widgets_values"][0] += NOTE_ADDED
    wf["extra"] = {"ds": {"scale": 0.6, "offset": [20, 420]}}
    TARGET.write_text(json.dumps(wf, indent=2, ensure_ascii=False) + "\n")
    return TARGET


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--frontend", default="1.58.1")
    ap.add_argument("--raw", type=Path, help="also write what the frontend returned (saved graph, API prompt) here")
    ap.add_argument("--shot", type=Path, help="also a screenshot of the graph after the conversion (PNG)")
    a = ap.parse_args()
    print(f"wrote {make(a.frontend, a.raw, a.shot)}")
