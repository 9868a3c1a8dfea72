"""The pack installed the way the README says (``pip install -e ComfyUI-ReNO``), without pip or a network.

setuptools' own PEP 660 hook (what pip calls for ``-e``) builds the editable wheel of this checkout in a subprocess,
and the wheel's files are unpacked into a site folder, as pip would unpack them into site-packages. A Python that
adds that folder with ``site.addsitedir`` imports the checkout as ``reno`` (and the launcher as ``reno_batch``) through
the wheel's own import finder, from any working directory. Nothing is written into the checkout.
"""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_BUILD = "import sys; from setuptools import build_meta; print(build_meta.build_editable(sys.argv[1]))"


def editable_site(dest: Path) -> Path:
    """Build the editable wheel of this checkout and unpack it into ``dest/site``; returns that folder."""
    wheels, site = dest / "wheels", dest / "site"
    wheels.mkdir(parents=True, exist_ok=True)
    proc = subprocess.run([sys.executable, "-c", _BUILD, str(wheels)], cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    name = proc.stdout.strip().splitlines()[-1]
    with zipfile.ZipFile(wheels / name) as wheel:
        wheel.extractall(site)
    return site


def python_with(site: Path, code: str) -> list[str]:
    """A command line running ``code`` in a Python that has ``site`` as a site folder (the .pth file is read)."""
    return [sys.executable, "-c", f"import site; site.addsitedir({str(site)!r})\n{code}"]


def run_script(site: Path, script: Path) -> list[str]:
    """A command line running ``script`` as ``__main__`` with ``site`` added."""
    return python_with(site, f"import runpy; runpy.run_path({str(script)!r}, run_name='__main__')")
