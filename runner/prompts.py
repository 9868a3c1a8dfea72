"""Prompt files: plain text (one prompt a line; T2I-CompBench's per-category files), GenEval's
``evaluation_metadata.jsonl`` (one JSON object a line with a ``prompt`` key) and TSV with a ``Prompt`` column
(PartiPrompts' ``PartiPrompts.tsv``).

Every non-blank data line gets the next ``index`` (0-based), a bad line included, so the indices of the good
lines are the benchmark's own (GenEval numbers its prompt folders by line). Bad lines are returned with their
1-based line number and a reason, never raised.
"""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass, field
from pathlib import Path

FORMATS = ("auto", "plain", "geneval", "tsv")


@dataclass(frozen=True)
class PromptEntry:
    index: int  # 0-based among the file's data lines
    line: int  # 1-based line number in the file
    prompt: str
    metadata: dict = field(default_factory=dict)  # GenEval: the whole JSON object; else {"prompt": ...}


@dataclass(frozen=True)
class BadLine:
    index: int
    line: int
    error: str
    text: str


class PromptFileError(ValueError):
    """The prompt file cannot be read at all (missing, undecodable, a TSV without a Prompt column)."""


def detect_format(path: Path) -> str:
    name = path.name.lower()
    if name.endswith(".jsonl"):
        return "geneval"
    if name.endswith(".tsv"):
        return "tsv"
    return "plain"


def read_prompt_file(path: str | Path, fmt: str = "auto") -> tuple[list[PromptEntry], list[BadLine]]:
    path = Path(path)
    if fmt not in FORMATS:
        raise PromptFileError(f"unknown prompt format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if not path.is_file():
        raise PromptFileError(f"prompt file {path} does not exist")
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as e:
        raise PromptFileError(f"prompt file {path} is not UTF-8 text ({e})") from None
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "tsv":
        return _read_tsv(path, text)
    entries: list[PromptEntry] = []
    bad: list[BadLine] = []
    index = 0
    for lineno, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        if fmt == "geneval":
            entry, err = _geneval_line(line)
        else:
            entry, err = ({"prompt": line}, None)
        if err is None:
            entries.append(PromptEntry(index, lineno, entry["prompt"], entry))
        else:
            bad.append(BadLine(index, lineno, err, raw[:200]))
        index += 1
    return entries, bad


def _geneval_line(line: str) -> tuple[dict | None, str | None]:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        return None, f"not a JSON object ({e.msg} at column {e.colno})"
    if not isinstance(obj, dict):
        return None, "not a JSON object"
    prompt = obj.get("prompt")
    if not isinstance(prompt, str) or not prompt.strip():
        return None, 'no "prompt" string in this metadata line'
    return obj, None


def _read_tsv(path: Path, text: str) -> tuple[list[PromptEntry], list[BadLine]]:
    lines = text.splitlines()
    if not lines:
        raise PromptFileError(f"prompt file {path} is empty")
    header = next(csv.reader(io.StringIO(lines[0]), delimiter="\t"))
    columns = [h.strip() for h in header]
    lowered = [c.lower() for c in columns]
    if "prompt" not in lowered:
        raise PromptFileError(f"TSV prompt file {path} has no 'Prompt' column in its header line ({columns})")
    col = lowered.index("prompt")
    entries: list[PromptEntry] = []
    bad: list[BadLine] = []
    index = 0
    for lineno, raw in enumerate(lines[1:], start=2):
        if not raw.strip():
            continue
        row = next(csv.reader(io.StringIO(raw), delimiter="\t"))
        prompt = row[col].strip() if col < len(row) else ""
        if prompt:
            meta = {columns[k]: v for k, v in enumerate(row) if k < len(columns)}
            meta["prompt"] = prompt
            entries.append(PromptEntry(index, lineno, prompt, meta))
        else:
            bad.append(BadLine(index, lineno, f"no text in the Prompt column ({len(row)} of {len(columns)} columns)",
                               raw[:200]))
        index += 1
    return entries, bad
