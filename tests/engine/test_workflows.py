"""Every shipped workflow is a valid UI-format graph whose nodes exist and whose widget values fit."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

WORKFLOWS = sorted((Path(__file__).resolve().parents[2] / "workflows").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote", "PrimitiveNode", "Reroute"}
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN"}


def widget_names(cls) -> list[tuple[str, bool]]:
    """The widget values a frontend stores for a node class, in order (seed control included),
    each with whether it is required (saved workflows may lack trailing optional ones)."""
    names = []
    types = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        for name, spec in types.get(section, {}).items():
            kind = spec[0]
            opts = spec[1] if len(spec) > 1 else {}
            if isinstance(kind, list) or kind in WIDGET_TYPES or kind == "COMBO":
                if opts.get("forceInput"):
                    continue
                names.append((name, section == "required"))
                if kind == "INT" and (opts.get("control_after_generate") or name in ("seed", "noise_seed")):
                    names.append((f"{name}:control_after_generate", section == "required"))
    return names


def test_there_are_workflows():
    assert WORKFLOWS, "workflows/ holds no .json file"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_is_consistent_ui_format(path):
    wf = json.loads(path.read_text())
    assert {"nodes", "links", "last_node_id", "last_link_id", "version"} <= set(wf)
    nodes = {n["id"]: n for n in wf["nodes"]}
    assert len(nodes) == len(wf["nodes"]) and max(nodes) <= wf["last_node_id"]
    for link_id, origin, o_slot, target, t_slot, kind in wf["links"]:
        assert link_id <= wf["last_link_id"]
        out = nodes[origin]["outputs"][o_slot]
        inp = nodes[target]["inputs"][t_slot]
        assert link_id in out["links"] and inp["link"] == link_id, f"link {link_id} is not wired both ways"
        assert out["type"] == inp["type"] == kind, f"link {link_id}: {out['type']} -> {inp['type']} ({kind})"
    linked = {lk[0] for lk in wf["links"]}
    for n in wf["nodes"]:
        for inp in n.get("inputs", []):
            assert inp["link"] is None or inp["link"] in linked
    assert (path.with_suffix(".png").exists() or path.with_suffix(".jpg").exists()), "no preview image"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.name)
def test_workflow_nodes_exist_and_widget_values_fit(path, engine):
    wf = json.loads(path.read_text())
    missing = []
    for n in wf["nodes"]:
        if n["type"] in FRONTEND_ONLY:
            continue
        cls = engine.nodes.NODE_CLASS_MAPPINGS.get(n["type"])
        if cls is None and engine.is_legacy and not n["type"].startswith("ReNO"):
            missing.append(n["type"])  # a core node newer than the 2024 engine
            continue
        assert cls is not None, f"{path.name}: node type {n['type']} is not registered on {engine.info}"
        if n["type"].startswith("ReNO"):
            names = widget_names(cls)
            values = n.get("widgets_values", [])
            required = sum(req for _, req in names)
            assert required <= len(values) <= len(names), f"{n['type']}: widgets_values {values} do not match {names}"
            names = [name for name, _ in names]
            types = cls.INPUT_TYPES()
            specs = {**types["required"], **types.get("optional", {})}
            for name, value in zip(names, values):
                if ":" in name:
                    assert value in ("fixed", "increment", "decrement", "randomize")
                    continue
                kind = specs[name][0]
                if isinstance(kind, list):
                    assert value in kind, f"{n['type']}.{name}: {value!r} is not one of {kind}"
                elif kind in ("INT", "FLOAT"):
                    opts = specs[name][1]
                    assert isinstance(value, (int, float)) and opts["min"] <= value <= opts["max"], (name, value)
                elif kind == "STRING":
                    assert isinstance(value, str)
    if missing:
        pytest.skip(f"{path.name}: core node type(s) {sorted(set(missing))} are not in {engine.info} (newer ComfyUI)")
