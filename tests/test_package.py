"""Packaging: what ComfyUI-Manager and the Comfy Registry read, and a clean import without ComfyUI."""

import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
COMFY_TOP_LEVEL = ("comfy", "comfy_extras", "comfy_execution", "comfy_api", "folder_paths", "server", "nodes",
                   "execution", "latent_preview")  # ComfyUI's top-level modules
RUNNER_MODULES = ("backends", "batch", "cli", "diffusers_hook", "engine", "host", "items", "layouts", "prompts",
                  "ray_actor", "ray_backend", "server_stub", "standins", "worker", "workflow")


def test_pack_imports_cleanly_without_comfyui(tmp_path):
    """Outside ComfyUI the pack registers no nodes and its library folders work on their own; the diffusers
    generators and every batch-runner module import without ComfyUI (the runner boots it only in
    ``engine.boot_engine``) and without their optional extras (diffusers, Ray)."""
    link = tmp_path / "reno"
    link.symlink_to(ROOT, target_is_directory=True)
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('comfy') is None\n"
        "import reno\n"
        "assert reno.NODE_CLASS_MAPPINGS == {} and reno.WEB_DIRECTORY == './web/js'\n"
        "from reno.optimizer import ReNOConfig, optimize_noise\n"
        "from reno.reward_loaders import AVAILABLE_REWARDS\n"
        "import reno.generators, reno.preferences.store, reno.training.preference_reward\n"
        f"for m in {RUNNER_MODULES!r}: importlib.import_module('reno.runner.' + m)\n"
        "assert 'folder_paths' not in sys.modules and 'comfy' not in sys.modules\n"
        f"assert not [m for m in sys.modules if m.split('.')[0] in {COMFY_TOP_LEVEL!r}], sorted(sys.modules)\n"
        "assert 'diffusers' not in sys.modules and 'ray' not in sys.modules  # optional extras, imported lazily\n"
        "print('ok', AVAILABLE_REWARDS)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def comfy_imports(text: str, top_level_only: bool = False) -> list[str]:
    indent = "" if top_level_only else r"\s*"
    names = "|".join(COMFY_TOP_LEVEL)
    return re.findall(rf"^{indent}(?:import|from)\s+(?:{names})\b.*$", text, re.M)


def test_library_folders_never_import_comfyui():
    for folder in ("optimizer", "reward_loaders", "preferences", "training", "generators"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not comfy_imports(path.read_text()), path


def test_runner_imports_comfyui_only_inside_the_engine_boot():
    """The batch runner also runs where ComfyUI is not importable (--diffusers, the Ray driver): only
    runner/engine.py imports ComfyUI, and only inside functions (after boot_engine put it on sys.path)."""
    found = sorted(p.stem for p in (ROOT / "runner").glob("*.py") if p.stem != "__init__")
    assert found == sorted(RUNNER_MODULES), "update RUNNER_MODULES"
    for path in (ROOT / "runner").glob("*.py"):
        text = path.read_text()
        if path.name == "engine.py":
            assert comfy_imports(text) and not comfy_imports(text, top_level_only=True), path
        else:
            assert not comfy_imports(text), path


def test_product_code_never_imports_the_testing_fixtures():
    """``testing/`` (tiny models, the tests' headless host, the test-only fixture node pack) is for tests/, the demo
    and the benchmarks, which import it by name: no product folder imports it, the pack's ``__init__`` (all that
    ComfyUI loads of a pack) does not, and the registry archive and the wheel leave it out."""
    imports_testing = re.compile(r"^\s*(?:from\s+\.+testing\b|from\s+[\w.]*\btesting\b|import\s+[\w.]*\btesting\b)", re.M)
    for folder in ("optimizer", "reward_loaders", "preferences", "training", "generators", "runner", "nodes"):
        for path in (ROOT / folder).rglob("*.py"):
            assert not imports_testing.search(path.read_text()), path
    assert not imports_testing.search((ROOT / "__init__.py").read_text())
    assert "testing/" in (ROOT / ".comfyignore").read_text().split()
    packages = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"]
    assert not [p for p in packages if "testing" in p.split(".")], packages


def test_requirements_are_floors_without_torch_or_the_fragile_wheels():
    lines = [ln.split("#")[0].strip() for ln in (ROOT / "requirements.txt").read_text().splitlines()]
    reqs = [ln for ln in lines if ln]
    assert reqs
    for req in reqs:
        name = re.split(r"[<>=!~ \[]", req, maxsplit=1)[0].lower()
        assert name not in {"torch", "torchvision", "torchaudio", "xformers", "image-reward", "hpsv2"}, req
        assert "==" not in req and "<" not in req, f"{req}: use a floor (>=), not a pin or a cap"


def test_pyproject_has_the_registry_fields():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    project, comfy = meta["project"], meta["tool"]["comfy"]
    assert "comfyui" not in project["name"].lower()
    assert re.fullmatch(r"\d+\.\d+\.\d+", project["version"])
    assert project["license"] == {"file": "LICENSE"} and (ROOT / "LICENSE").read_text().startswith(
        "                    GNU GENERAL PUBLIC LICENSE")
    assert project["description"] and project["requires-python"] and project["urls"]["Repository"]
    assert {"PublisherId", "DisplayName", "requires-comfyui"} <= set(comfy)
    deps = sorted(re.split(r"[<>=]", d)[0] for d in project["dependencies"])
    reqs = sorted(re.split(r"[<>=]", ln)[0] for ln in (ROOT / "requirements.txt").read_text().splitlines()
                  if ln.strip() and not ln.startswith("#"))
    assert deps == reqs, "pyproject dependencies and requirements.txt disagree"


def test_no_eval_exec_or_runtime_pip_in_the_pack():
    for path in list(ROOT.glob("*.py")) + [p for d in ("optimizer", "reward_loaders", "preferences", "training", "nodes") for p in (ROOT / d).rglob("*.py")]:
        text = path.read_text()
        assert not re.search(r"(?<![.\w])(eval|exec)\s*\(", text), path
        assert "pip install" not in text and "subprocess" not in text, path


FRONTEND_THUMBNAIL_EXT = "jpg"  # what frontend 1.32.9 asks for a custom node's template card


def frontend_thumbnail_ext() -> str:
    """The image type the installed ComfyUI frontend asks for a custom-node workflow template.

    Its template browser lists each pack's workflows (GET /api/workflow_templates) as templates with a fixed
    ``mediaSubtype``, and builds the card image URL as ``/api/workflow_templates/<module>/<name>.<subtype>``
    (the ``-1`` suffix is for the core templates only). Read from the frontend's built JS when it is installed.
    """
    spec = importlib.util.find_spec("comfyui_frontend_package")
    if spec is None or not spec.submodule_search_locations:
        return FRONTEND_THUMBNAIL_EXT
    assets = Path(next(iter(spec.submodule_search_locations))) / "static" / "assets"
    found, url_builder = set(), False
    for js in assets.glob("*.js"):
        text = js.read_text(encoding="utf-8", errors="replace")
        # 1.32.9 quotes with "…", 1.49.6 with `…` (minifier change)
        found |= set(re.findall(r'mediaSubtype:\s*["`\'](\w+)["`\'],\s*(?:description:\s*\w+,\s*)?sourceModule:', text))
        url_builder |= bool(re.search(r'`/workflow_templates/\$\{\w+\}/\$\{\w+\.name\}`', text))
    assert url_builder, f"the frontend in {assets} no longer builds /workflow_templates/<module>/<name> URLs"
    assert len(found) == 1, f"custom-node template image types in the frontend: {found}"
    return found.pop()


def test_each_workflow_has_the_thumbnail_the_frontend_asks_for():
    from PIL import Image

    ext = frontend_thumbnail_ext()
    assert ext == FRONTEND_THUMBNAIL_EXT, f"the frontend now asks for .{ext}: update the thumbnails (see tests/browser)"
    workflows = sorted((ROOT / "workflows").glob("*.json"))
    assert workflows
    for wf in workflows:
        thumb = wf.with_suffix(f".{ext}")
        assert thumb.is_file(), f"{wf.name}: no {thumb.name} (the template browser shows /api/workflow_templates/.../{thumb.name})"
        with Image.open(thumb) as im:
            assert im.format == "JPEG" and im.width >= 320 and im.height >= 200, (thumb.name, im.format, im.size)
    stale = sorted(p.name for p in (ROOT / "workflows").iterdir() if p.suffix in (".png", ".webp", ".jpeg"))
    assert not stale, f"thumbnails the frontend never asks for: {stale}"


def test_front_end_suggested_weights_are_the_paper_weights():
    """web/js/reno_weights.js (the weight a ReNO Load Reward takes when the user picks a reward) holds the
    registry's paper weights for every registry reward, except aesthetic (off in the paper's mix): 1.0 when chosen
    (custom/<name> rewards have none: the front end keeps their weight); and the node's default
    weight (1.0) is the suggestion for its default reward, the first in the combo."""
    from reno_pack.reward_loaders import AVAILABLE_REWARDS, REWARDS

    text = (ROOT / "web" / "js" / "reno_weights.js").read_text(encoding="utf-8")
    table = re.search(r"SUGGESTED_WEIGHTS = Object\.freeze\(\{(.*?)\}\)", text, re.S).group(1)
    js = {k: float(v) for k, v in re.findall(r'"?([\w.]+)"?:\s*([-0-9.]+)', table)}
    missing = sorted(set(REWARDS) - set(js))
    assert not missing, f"web/js/reno_weights.js SUGGESTED_WEIGHTS lacks registry rewards {missing}: add them"
    for name, weight in js.items():
        assert name in REWARDS, f"reno_weights.js knows a reward the registry lacks: {name}"
        assert weight == (REWARDS[name].paper_weight or 1.0), (name, weight, REWARDS[name].paper_weight)
    assert REWARDS["aesthetic"].paper_weight == 0
    assert js[AVAILABLE_REWARDS[0]] == 1.0
