"""A ReNO workflow in ComfyUI's API format, and the per-item copy with the item's prompt and seed put in.

Which inputs get the prompt:
* the nodes whose ``_meta.title`` contains ``[prompt]`` or that ``--prompt-node ID[.input]`` names (their text
  input: ``text``, ``text_g``/``text_l`` (SDXL), ``clip_l``/``t5xxl`` (FLUX), ``prompt``, ``value``, ``string``);
* otherwise (the default) the text encoder feeding each ReNO Sampler's ``positive`` input (its text inputs, following
  a link to a String primitive);
* and always every ReNO node's ``prompt`` input (what the rewards score), literal or through a link.

The seed goes into ReNO Sampler's ``seed`` (literal or through a link to a primitive).
"""

from __future__ import annotations

import copy
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

SAMPLER_CLASS = "ReNOSampler"
PROMPT_MARKER = "[prompt]"
TEXT_INPUTS = ("text", "text_g", "text_l", "clip_l", "t5xxl", "prompt", "value", "string")
SOURCE_TEXT_INPUTS = ("value", "string", "text", "prompt")
SOURCE_INT_INPUTS = ("value", "seed", "noise_seed", "int")
#: Node id of the 1-iteration copy of the sampler that renders the initial (plain one-step) image.
INITIAL_NODE_SUFFIX = "reno_batch_initial"


class WorkflowError(ValueError):
    """The workflow file is unusable for the runner; the message says what to change."""


def _is_link(value) -> bool:
    return isinstance(value, list) and len(value) == 2 and isinstance(value[0], (str, int)) and isinstance(value[1], int)


def load_workflow(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise WorkflowError(f"workflow file {path} does not exist")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise WorkflowError(f"workflow file {path} is not JSON ({e})") from None
    return parse_workflow(data, str(path))


def parse_workflow(data, where: str = "workflow") -> dict:
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict) and "class_type" not in data:
        data = data["prompt"]  # the body of POST /prompt
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise WorkflowError(
            f"{where} is a UI-format workflow (the editor's save file); the runner needs the API format: in ComfyUI "
            "use Workflow > Export (API) and pass that file")
    if not isinstance(data, dict) or not data or not all(
            isinstance(n, dict) and "class_type" in n for n in data.values()):
        raise WorkflowError(f"{where} is not an API-format ComfyUI workflow ({{node_id: {{class_type, inputs}}}})")
    return {str(k): v for k, v in data.items()}


def workflow_sha256(workflow: dict) -> str:
    return hashlib.sha256(json.dumps(workflow, sort_keys=True).encode()).hexdigest()


@dataclass
class Job:
    """The workflow plus where the prompt and the seed go; JSON-able (sent to Ray workers)."""

    workflow: dict
    sampler: str
    text_targets: list[tuple[str, str]]  # (node id, input name)
    seed_target: tuple[str, str]
    save_initial: bool = False
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {"workflow": self.workflow, "sampler": self.sampler, "text_targets": [list(t) for t in self.text_targets],
                "seed_target": list(self.seed_target), "save_initial": self.save_initial}

    @classmethod
    def from_dict(cls, d: dict) -> Job:
        return cls(d["workflow"], d["sampler"], [tuple(t) for t in d["text_targets"]], tuple(d["seed_target"]),
                   bool(d.get("save_initial")))

    @property
    def initial_node(self) -> str:
        return f"{self.sampler}_{INITIAL_NODE_SUFFIX}"

    @property
    def targets(self) -> list[str]:
        return [self.sampler] + ([self.initial_node] if self.save_initial else [])

    def build(self, prompt: str, seed: int) -> dict:
        """The API prompt for one item."""
        wf = copy.deepcopy(self.workflow)
        for node, name in self.text_targets:
            wf[node]["inputs"][name] = prompt
        node, name = self.seed_target
        wf[node]["inputs"][name] = int(seed)
        if self.save_initial:
            initial = copy.deepcopy(wf[self.sampler])
            initial["inputs"]["iterations"] = 1
            if "candidates" in initial["inputs"]:  # the seed's own image, not the best candidate's
                initial["inputs"].update(candidates=1, keep=1)
            initial.setdefault("_meta", {})["title"] = "ReNO batch: initial image (iteration 0)"
            wf[self.initial_node] = initial
        return wf


def _text_input(node_id: str, node: dict, name: str | None, where: str) -> str:
    inputs = node.get("inputs") or {}
    if name is not None:
        if name not in inputs:
            raise WorkflowError(f"{where}: node {node_id} ({node['class_type']}) has no input {name!r} "
                                f"(its inputs: {', '.join(inputs) or 'none'})")
        return name
    for cand in TEXT_INPUTS:
        if isinstance(inputs.get(cand), str):
            return cand
    raise WorkflowError(f"{where}: node {node_id} ({node['class_type']}) has no text input (one of "
                        f"{', '.join(TEXT_INPUTS)}); name the input: --prompt-node {node_id}.INPUT")


def _follow(workflow: dict, node_id: str, name: str, kinds: tuple[str, ...], typ) -> tuple[str, str] | None:
    """A literal input, or the literal input of the node a link points at (one hop: a primitive node)."""
    value = workflow[node_id]["inputs"].get(name)
    if isinstance(value, typ) and not isinstance(value, bool):
        return node_id, name
    if _is_link(value):
        src = str(value[0])
        node = workflow.get(src)
        if node is not None:
            for cand in kinds:
                v = (node.get("inputs") or {}).get(cand)
                if isinstance(v, typ) and not isinstance(v, bool):
                    return src, cand
    return None


def make_job(workflow: dict, *, prompt_nodes: list[str] = (), sampler: str | None = None,
             save_initial: bool = False, candidates: int | None = None) -> Job:
    samplers = [k for k, n in workflow.items() if n["class_type"] == SAMPLER_CLASS]
    if sampler is not None:
        if sampler not in workflow or workflow[sampler]["class_type"] != SAMPLER_CLASS:
            raise WorkflowError(f"--sampler-node {sampler}: no ReNO Sampler with that id (ReNO Samplers: "
                                f"{', '.join(samplers) or 'none'})")
    elif not samplers:
        custom = [k for k, n in workflow.items() if n["class_type"] == "ReNOSamplerCustom"]
        hint = (" (ReNO Sampler (custom) workflows are not supported by the runner yet: use ReNO Sampler)"
                if custom else "")
        raise WorkflowError(f"the workflow has no ReNO Sampler node (class_type {SAMPLER_CLASS}){hint}")
    elif len(samplers) > 1:
        raise WorkflowError(f"the workflow has {len(samplers)} ReNO Samplers ({', '.join(samplers)}); "
                            "choose one with --sampler-node ID")
    else:
        sampler = samplers[0]

    targets: list[tuple[str, str]] = []
    notes: list[str] = []

    def add(t):
        if t not in targets:
            targets.append(t)

    explicit = []
    for spec in prompt_nodes:
        node_id, _, name = str(spec).partition(".")
        if node_id not in workflow:
            raise WorkflowError(f"--prompt-node {spec}: the workflow has no node {node_id!r}")
        explicit.append((node_id, _text_input(node_id, workflow[node_id], name or None, f"--prompt-node {spec}")))
    for node_id, node in workflow.items():
        title = str((node.get("_meta") or {}).get("title", ""))
        if PROMPT_MARKER in title.lower():
            explicit.append((node_id, _text_input(node_id, node, None, f"node {node_id} titled {title!r}")))
    for t in explicit:
        add(t)
    if not explicit:
        pos = workflow[sampler]["inputs"].get("positive")
        if not _is_link(pos) or str(pos[0]) not in workflow:
            raise WorkflowError(f"ReNO Sampler {sampler}'s positive input is not connected")
        enc_id = str(pos[0])
        enc = workflow[enc_id]
        found = False
        for name in TEXT_INPUTS:
            if name in (enc.get("inputs") or {}):
                t = _follow(workflow, enc_id, name, SOURCE_TEXT_INPUTS, str)
                if t is not None:
                    add(t)
                    found = True
        if not found:
            raise WorkflowError(
                f"could not find the prompt text of ReNO Sampler {sampler}'s positive input (node {enc_id}, "
                f"{enc['class_type']}, has none of the text inputs {', '.join(TEXT_INPUTS)}): put {PROMPT_MARKER} in "
                "the title of the node that holds the prompt, or pass --prompt-node ID[.input]")
    for node_id, node in workflow.items():
        if node["class_type"].startswith("ReNO") and "prompt" in (node.get("inputs") or {}):
            t = _follow(workflow, node_id, "prompt", SOURCE_TEXT_INPUTS, str)
            if t is None:
                raise WorkflowError(f"node {node_id} ({node['class_type']}): its prompt input is neither text nor "
                                    "a link to a text primitive")
            add(t)
    seed = _follow(workflow, sampler, "seed", SOURCE_INT_INPUTS, int)
    if seed is None:
        raise WorkflowError(f"ReNO Sampler {sampler}'s seed is neither a number nor a link to an integer primitive")
    if candidates is not None:  # search, then gradient, for every item: the best one of N seeds continues
        if candidates < 1:
            raise WorkflowError(f"--candidates {candidates}: use 1 (no search) or more")
        workflow = copy.deepcopy(workflow)
        workflow[sampler]["inputs"].update(candidates=int(candidates), keep=1)
    return Job(workflow, sampler, targets, seed, save_initial, notes)
