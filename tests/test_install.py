"""Installing the pack: what the Comfy Registry and ComfyUI-Manager read, what the README tells, and ``pip install -e``
making the library importable as ``reno`` from a plain clone."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from editable_install import editable_site, python_with

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
README = (ROOT / "README.md").read_text(encoding="utf-8")
LIBRARY = ("optimizer", "reward_loaders", "preferences", "training", "generators", "runner", "nodes")


def install_section() -> str:
    section = README[README.index("## Install\n"):]
    return section[: section.index("\n## ", 5)]


def test_registry_metadata_names_the_node_the_publisher_and_an_icon_in_the_repository():
    project, comfy = PYPROJECT["project"], PYPROJECT["tool"]["comfy"]
    # the node id (comfy node install <id>): letters, digits, - _ . without runs, starting with a letter
    assert re.fullmatch(r"[A-Za-z](?:[A-Za-z0-9]|[-_.](?=[A-Za-z0-9]))*", project["name"]) and len(project["name"]) < 100
    assert "comfyui" not in project["name"].lower()
    assert comfy["PublisherId"] and comfy["DisplayName"]
    repo = project["urls"]["Repository"]
    owner_name = repo.removeprefix("https://github.com/")
    icon = comfy["Icon"]
    prefix = f"https://raw.githubusercontent.com/{owner_name}/main/"
    assert icon.startswith(prefix), icon
    path = ROOT / icon.removeprefix(prefix)
    assert path.is_file(), f"the icon {icon} is not a file of this repository"
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] == im.size[1] and 64 <= im.size[0] <= 400, (im.format, im.size)
    assert path.stat().st_size < 200_000


def test_the_readme_says_how_to_install_through_the_manager_the_registry_and_git():
    text = install_section()
    repo = PYPROJECT["project"]["urls"]["Repository"]
    assert "<this repository>" not in README
    assert f"git clone {repo}" in text
    assert f"comfy node install {PYPROJECT['project']['name']}" in text
    assert "ComfyUI-Manager" in text and repo in text.split("ComfyUI-Manager", 1)[1]
    assert PYPROJECT["tool"]["comfy"]["PublisherId"] in text and PYPROJECT["tool"]["comfy"]["DisplayName"] in text


def node_categories() -> dict[str, str]:
    """Each node module's CATEGORY, read from the source (no ComfyUI needed)."""
    found = {}
    for path in sorted((ROOT / "nodes").glob("*.py")):
        m = re.search(r'^CATEGORY = "([^"]+)"$', path.read_text(encoding="utf-8"), re.M)
        if m:
            found[path.stem] = m.group(1)
    return found


def test_every_node_is_in_one_category_tree_and_the_readme_names_it():
    categories = node_categories()
    assert len(categories) >= 8
    assert {c.split("/")[0] for c in categories.values()} == {"ReNO"}, categories
    text = install_section()
    for category in set(categories.values()):
        assert f"**{category}**" in text, category
    assert "sampling/ReNO" not in README


def test_pip_install_e_makes_a_plain_clone_importable_as_reno(tmp_path):
    site = editable_site(tmp_path)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    code = (
        "import sys\n"
        "import reno\n"
        "from reno.optimizer import ReNOConfig, optimize_noise\n"
        "from reno.reward_loaders import load_reward\n"
        "import reno.generators, reno.runner.cli\n"
        "import reno_batch\n"
        "print(reno.__file__)\n"
        "print(reno_batch.pack_dir())\n"
        f"print(sorted(m for m in sys.modules if m.split('.')[0] in {LIBRARY!r}))\n"
        "print(reno.NODE_CLASS_MAPPINGS)\n"
    )
    proc = subprocess.run(python_with(site, code), cwd=elsewhere, capture_output=True, text=True, timeout=300,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    init, pack, top_level, nodes = proc.stdout.splitlines()[-4:]
    assert Path(init) == ROOT / "__init__.py"  # the clone itself, under the name reno
    assert Path(pack) == ROOT  # the reno-batch launcher finds the same clone
    assert top_level == "[]"  # the pack's folders never become top-level modules (ComfyUI's nodes, utils...)
    assert nodes == "{}"  # outside ComfyUI: no nodes registered
    dist_info = next(site.glob("*.dist-info"))
    assert "reno-batch = reno_batch:main" in (dist_info / "entry_points.txt").read_text()


def test_a_built_wheel_holds_the_library_under_reno_and_nothing_of_the_tests(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", "__init__.py"):
        shutil.copy(ROOT / name, src / name)
    for folder in (*LIBRARY, "scripts", "tests"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    build = "import sys; from setuptools import build_meta; print(build_meta.build_wheel(sys.argv[1]))"
    proc = subprocess.run([sys.executable, "-c", build, str(tmp_path / "dist")], cwd=src, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with zipfile.ZipFile(tmp_path / "dist" / proc.stdout.strip().splitlines()[-1]) as wheel:
        names = wheel.namelist()
    tops = {n.split("/")[0] for n in names if not n.split("/")[0].endswith(".dist-info")}
    assert tops == {"reno", "reno_batch.py"}, tops
    for module in ("reno/__init__.py", "reno/optimizer/reno.py", "reno/reward_loaders/registry.py",
                   "reno/runner/cli.py", "reno/generators/__init__.py", "reno/nodes/__init__.py"):
        assert module in names, module
    assert not [n for n in names if n.startswith("reno/tests")]
