"""Shared test setup.

The pack is imported as the package ``reno_pack`` from its folder (whatever the clone is called),
never by putting the repo root on sys.path: ComfyUI's own top-level ``nodes``/``utils`` modules would
collide with ours. ``tests/`` itself is put on sys.path for the helper modules.
"""

import importlib.util
import os
import sys
from pathlib import Path

import pytest
from hypothesis import settings

# property tests draw the same examples on every run and machine (CI must be deterministic); run with
# --hypothesis-profile=explore to search afresh
settings.register_profile("deterministic", derandomize=True, print_blob=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile("deterministic")

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
if str(TESTS) not in sys.path:
    sys.path.insert(0, str(TESTS))


def _load_pack(name: str = "reno_pack"):
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, ROOT / "__init__.py", submodule_search_locations=[str(ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


# no test may reach the network: reward downloads are off unless a test turns them on against
# the loopback hub (tests/fake_hub.py)
os.environ["RENO_DOWNLOADS"] = "0"
os.environ["HF_HUB_DISABLE_TELEMETRY"] = "1"

_load_pack()


@pytest.fixture(scope="session")
def reward_root(tmp_path_factory):
    """A reno_rewards folder with tiny clipscore and pickscore checkpoints in the real formats."""
    from tiny_rewards import write_reward_root

    return write_reward_root(tmp_path_factory.mktemp("reno_rewards"))


def pytest_report_header(config):
    """Say which ComfyUI host the engine tests run on (or why they skip)."""
    import comfy_host

    return comfy_host.report_line()


def pytest_collection_modifyitems(config, items):
    """``@pytest.mark.slow`` tests run only with RENO_SLOW=1 (each skip says so)."""
    if os.environ.get("RENO_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow cross product: run with RENO_SLOW=1 (README, Tests)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)
