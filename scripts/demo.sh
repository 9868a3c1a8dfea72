#!/usr/bin/env bash
# The main job, headless: a ReNO workflow executed by a real ComfyUI engine on a tiny embedded model.
# Writes the best image, the iteration strip and the reward curve to ./out/demo (or $1).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
python scripts/demo.py --out "${1:-out/demo}"
