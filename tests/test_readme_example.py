"""The README's "Using the library without ComfyUI" example runs as written.

The code block is taken from README.md and run verbatim in a subprocess, with the pack importable as ``reno`` the way
the README says (``pip install -e``: tests/editable_install.py builds and unpacks that editable install) and
``RENO_REWARDS_DIR`` pointing at tiny reward checkpoints in the real formats (testing/tiny_rewards.py). Nothing is
downloaded.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from editable_install import editable_site, run_script

ROOT = Path(__file__).resolve().parents[1]
SECTION = "## Using the library without ComfyUI"


def readme_example() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert SECTION in text, f"README.md has no section {SECTION!r}"
    section = text[text.index(SECTION):]
    section = section[:section.find("\n## ", len(SECTION))]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, f"expected one python block in {SECTION!r}, found {len(blocks)}"
    return blocks[0]


def run_example(tmp_path: Path, rewards_dir: Path) -> subprocess.CompletedProcess:
    site = editable_site(tmp_path / "install")
    script = tmp_path / "example.py"
    script.write_text(readme_example(), encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "RENO_DOWNLOADS")}
    env.update(RENO_REWARDS_DIR=str(rewards_dir), HF_HUB_OFFLINE="1")
    return subprocess.run(run_script(site, script), cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=300)


@pytest.fixture
def tiny_rewards(tmp_path):
    from tiny_rewards import write_reward_root

    return write_reward_root(tmp_path / "reno_rewards", ("pickscore",))


def test_readme_library_example_runs_verbatim(tmp_path, tiny_rewards):
    work = tmp_path / "work"
    work.mkdir()
    proc = run_example(work, tiny_rewards)
    assert proc.returncode == 0, proc.stderr[-3000:]
    m = re.search(r"^best iteration \[(\d+)\] loss \[([-0-9.e+]+)\]$", proc.stdout, re.M)
    assert m, proc.stdout
    assert 0 <= int(m.group(1)) < 10


def test_readme_library_example_names_missing_files_without_downloading(tmp_path):
    """download=False with an empty RENO_REWARDS_DIR: the error names the files, the folder and the source."""
    empty = tmp_path / "empty_rewards"
    empty.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    proc = run_example(work, empty)
    assert proc.returncode != 0
    err = proc.stderr
    assert "pickscore" in err and "missing" in err and str(empty / "pickscore") in err, err[-2000:]
    assert "model.safetensors" in err and "yuvalkirstain/PickScore_v1" in err, err[-2000:]
    assert not (empty / "pickscore" / "model.safetensors").exists()
