"""The tests' name for ``testing/tiny_rewards.py`` (the pack's test-and-demo fixtures); the same module object."""

import sys

import comfy_host  # noqa: F401 - loads the pack as reno_pack
from reno_pack.testing import tiny_rewards as _module

sys.modules[__name__] = _module
