"""Packaging: what ComfyUI-Manager and the Comfy Registry read, and a clean import without ComfyUI."""

import re
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]


def test_pack_imports_cleanly_without_comfyui(tmp_path):
    """Outside ComfyUI the pack registers no nodes and its library folders work on their own."""
    link = tmp_path / "reno"
    link.symlink_to(ROOT, target_is_directory=True)
    code = (
        "import importlib.util, sys\n"
        "assert importlib.util.find_spec('comfy') is None\n"
        "import reno\n"
        "assert reno.NODE_CLASS_MAPPINGS == {} and reno.WEB_DIRECTORY == './web/js'\n"
        "from reno.optimizer import ReNOConfig, optimize_noise\n"
        "from reno.reward_loaders import AVAILABLE_REWARDS\n"
        "assert 'folder_paths' not in sys.modules and 'comfy' not in sys.modules\n"
        "print('ok', AVAILABLE_REWARDS)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("ok")


def test_library_folders_never_import_comfyui():
    for folder in ("optimizer", "reward_loaders"):
        for path in (ROOT / folder).rglob("*.py"):
            text = path.read_text()
            assert not re.search(r"^\s*(import|from)\s+(comfy|folder_paths|server|nodes|execution)\b", text, re.M), path


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
    for path in list(ROOT.glob("*.py")) + [p for d in ("optimizer", "reward_loaders", "nodes") for p in (ROOT / d).rglob("*.py")]:
        text = path.read_text()
        assert not re.search(r"(?<![.\w])(eval|exec)\s*\(", text), path
        assert "pip install" not in text and "subprocess" not in text, path
