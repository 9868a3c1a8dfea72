"""``reno-batch --help`` reads as a whole: a complete description, help for every option, examples and exit codes."""

from __future__ import annotations

import argparse
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def help_text() -> str:
    proc = subprocess.run([sys.executable, str(ROOT / "scripts" / "reno_batch.py"), "--help"], capture_output=True,
                          text=True, timeout=120, env={"PATH": "/usr/bin:/bin", "COLUMNS": "120"})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_the_description_is_whole_sentences():
    text = help_text()
    description = text.split("\n\n")[1]  # after the usage block
    assert description.startswith("Run a ReNO workflow") and description.rstrip().endswith("."), description
    assert description.count("(") == description.count(")"), description  # nothing cut inside a parenthesis
    assert "``" not in text  # no docstring markup


def test_every_option_says_what_it_does_and_the_epilog_has_examples_and_exit_codes():
    from reno_pack.runner.cli import build_parser

    parser = build_parser()
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help and len(action.help) > 8, f"{action.option_strings}: no help"
    text = help_text()
    assert re.search(r"^  reno-batch --workflow \S+ --prompts \S+ .*--out \S+$", text, re.M)
    assert re.search(r"^  reno-batch --diffusers ", text, re.M)
    assert re.search(r"Exit codes: 0 .* 1 .* 2 .* 130 ", text.replace("\n", " "))
    assert text.rstrip().endswith('"Benchmarks and batches".')
