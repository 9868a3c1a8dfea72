"""The tests' name for ``testing/comfy_host.py`` (the headless ComfyUI host of the tests, the demo and the
benchmarks); the same module object. Importing it loads the pack as the package ``reno_pack`` first (as
tests/conftest.py does), so a process without pytest (tests/browser/serve_comfyui.py) can import it too."""

import importlib
import importlib.util
import sys
from pathlib import Path

if "reno_pack" not in sys.modules:
    _root = Path(__file__).resolve().parents[1]
    _spec = importlib.util.spec_from_file_location("reno_pack", _root / "__init__.py",
                                                   submodule_search_locations=[str(_root)])
    _pack = importlib.util.module_from_spec(_spec)
    sys.modules["reno_pack"] = _pack
    _spec.loader.exec_module(_pack)

sys.modules[__name__] = importlib.import_module("reno_pack.testing.comfy_host")
