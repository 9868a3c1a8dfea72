"""What the benchmark scripts share (scripts/benchmark.py, bench_multistep.py, bench_training.py): their comma-list
options, finding the ComfyUI engine, and the command and machine lines a report starts with."""

from __future__ import annotations

import datetime
import os
import platform
import shlex
import sys

NO_ENGINE = "no ComfyUI engine found: set COMFYUI_PATH or run scripts/setup_env.sh"


def comma_list(ap, option: str, text: str, choices) -> list[str]:
    """The names of the comma list ``text`` given to ``option``; ``ap.error`` (exits) where one is not in ``choices``
    or there is none."""
    names = [n.strip() for n in text.split(",") if n.strip()]
    bad = [n for n in names if n not in choices]
    if bad or not names:
        ap.error(f"{option}: unknown {', '.join(bad) or '(none)'}; choose from {', '.join(choices)}")
    return names


def find_host(comfy_host):
    """``comfy_host.find_host()`` (testing/comfy_host.py); where there is none, says how to get one and returns
    None."""
    host = comfy_host.find_host()
    if host is None:
        print(NO_ENGINE)
    return host


def command_line(script: str | None = None, *, with_env: bool = True) -> str:
    """The command that runs this process again: python, ``script`` (default: as it was called) and this process's
    arguments; with ``with_env``, after $COMFYUI_PATH where it is set."""
    env = f"COMFYUI_PATH={shlex.quote(os.environ['COMFYUI_PATH'])} " if with_env and os.environ.get("COMFYUI_PATH") else ""
    return env + shlex.join(["python", *([script, *sys.argv[1:]] if script else sys.argv)])


def print_header(script: str, *, with_env: bool = False) -> None:
    """The report's first lines: the command that made it (``command_line``), the date and the machine."""
    print(f"command: {command_line(script, with_env=with_env)}")
    print(f"date: {datetime.datetime.now().astimezone().isoformat(timespec='minutes')}; "
          f"machine: {platform.machine()}, {os.cpu_count()} CPUs, Python {platform.python_version()}", flush=True)
