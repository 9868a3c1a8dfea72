"""The Ray actor. Standard library only and no relative imports: Ray ships this module to its workers by value
(``cloudpickle.register_pickle_by_value``), where the pack is not importable by name. The actor imports the pack
from its folder as the package ``reno_pack`` (without running its ``__init__``) and builds the backend the run's source
names (``runner.backends``): the workflow backend (a ComfyUI engine) or the diffusers backend. Items and outcomes
travel as plain dicts (``runner.items``).

``RENO_RUNNER_TEST_CRASH`` ("<actor number>:<items>", read by the driver and passed in) makes the actor with that
number exit abruptly when asked for one more item than ``<items>``: only the tests set it, to check that a dead
worker's item is rerun on another worker.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
import types
from pathlib import Path

PACKAGE = "reno_pack"
CRASH_ENV = "RENO_RUNNER_TEST_CRASH"


def import_pack(pack_dir: str, name: str = PACKAGE) -> types.ModuleType:
    """The pack as a package named ``name`` whose ``__init__`` is not run (the runner needs no ComfyUI node)."""
    mod = sys.modules.get(name)
    if mod is not None:
        return mod
    pack = Path(pack_dir).resolve()
    if not (pack / "runner" / "worker.py").is_file():
        raise RuntimeError(f"{pack} is not the ReNO pack (no runner/worker.py): set RENO_PACK_DIR on this machine to "
                           "the pack's folder")
    spec = importlib.util.spec_from_loader(name, loader=None, is_package=True)
    mod = importlib.util.module_from_spec(spec)
    mod.__path__ = [str(pack)]
    mod.__file__ = None
    sys.modules[name] = mod
    return mod


class RenoActor:
    def __init__(self, number: int, pack_dir: str, source: dict, options: dict, crash: str | None = None):
        import_pack(os.environ.get("RENO_PACK_DIR") or pack_dir)
        backends = importlib.import_module(f"{PACKAGE}.runner.backends")
        self._items = importlib.import_module(f"{PACKAGE}.runner.items")
        self.number = number
        self.crash_after = None
        if crash:
            who, _, n = crash.partition(":")
            if who.strip() == str(number):
                self.crash_after = int(n or 0)
        self.backend = backends.source_from_wire(source).build(options)
        self.asked = 0

    def run(self, item: dict) -> dict:
        self.asked += 1
        if self.crash_after is not None and self.asked > self.crash_after:
            os._exit(17)  # test-only: die like a killed worker, mid-batch
        out = self.backend.run(self._items.Item.from_wire(item))
        out.worker = self.number
        return out.to_wire()
