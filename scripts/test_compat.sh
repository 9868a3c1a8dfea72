#!/usr/bin/env bash
# The library tests again on transformers 4.x and huggingface_hub 0.x (what many ComfyUI installs have),
# in their own virtual environment (.venv-transformers4). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
TORCH_VERSION="${RENO_TORCH_VERSION:-2.13.0}"
V=.venv-transformers4
[ -x "$V/bin/python" ] || "${PYTHON:-python3}" -m venv "$V"
. "$V/bin/activate"
stamp="$V/.reno-setup-$(cat scripts/test_compat.sh | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
  python -m pip install -q --upgrade pip
  python -c "import torch" 2>/dev/null || python -m pip install -q "torch==${TORCH_VERSION}"
  python -c "import torch; print(f'torch=={torch.__version__.split(\"+\")[0]}')" > "$V/constraints.txt"
  python -m pip install -q -c "$V/constraints.txt" "transformers>=4.40,<5" "huggingface_hub>=0.23,<1" safetensors \
    numpy Pillow pytest hypothesis ftfy regex psutil
  python -m pip install -q --no-deps "open_clip_torch==3.3.0"
  touch "$stamp"
fi
python -c "import transformers, huggingface_hub; print('compatibility run: transformers', transformers.__version__, '/ huggingface_hub', huggingface_hub.__version__)"
python -m pytest tests/test_optimizer.py tests/test_rewards.py tests/test_imagereward.py tests/test_hps.py \
  tests/test_aesthetic.py tests/test_download.py tests/test_reliability.py tests/test_hardening.py tests/test_chain.py \
  tests/test_itercomp.py tests/test_custom_rewards.py tests/test_preferences.py tests/test_preference_training.py \
  tests/test_reward_training.py "$@"
