"""Lay the shipped workflows out again from what the browser test measured (a development tool, not a test).

    python tests/browser/relayout_workflows.py RESULT.json [RESULT.json ...] [--gap 24] [--dry-run]

Each RESULT.json is what tests/browser/drive.mjs reported for one frontend and renderer (the browser test keeps
it as <tmp>/reno_browser_<frontend>-<renderer>/result.json). For every node of every workflow in workflows/ it
takes the box the user saw, at load and after a run (drive.mjs step 6), in each frontend and renderer, mapped back
to the workflow's own units (Nodes 2.0 in frontend 1.32.9 scales positions on load: the scale is fitted from the
nodes' positions), and keeps the largest. Then, top to bottom, every node is moved down (never up, never sideways)
until it is `gap` below every node above it that it shares columns with (nodes whose tops were level move
together); a group's title bar counts as a node at its top, and each group is fitted around its nodes again. The workflows are rewritten (json, indent 2).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
GROUP_TITLE = 40  # a group's title bar and padding above its first node
GROUP_PAD = 12
TITLE = 30  # LiteGraph.NODE_TITLE_HEIGHT: a node's pos is the top of its body


def _fit(pairs: list[tuple[float, float]]) -> tuple[float, float]:
    """Least-squares measured = k * saved + b (k = 1, b = mean offset when the saved values do not vary)."""
    n = len(pairs)
    mx = sum(p[0] for p in pairs) / n
    my = sum(p[1] for p in pairs) / n
    sxx = sum((p[0] - mx) ** 2 for p in pairs)
    if sxx < 1e-9:
        return 1.0, my - mx
    k = sum((p[0] - mx) * (p[1] - my) for p in pairs) / sxx
    return k, my - k * mx


def extents(workflow: dict, measured: list[list[dict]]) -> dict[int, list[float]]:
    """Per node id: [left, top, right, bottom] relative to its saved pos, the largest over the measurements."""
    pos = {n["id"]: n["pos"] for n in workflow["nodes"]}
    out: dict[int, list[float]] = {}
    for boxes in measured:
        boxes = [b for b in boxes if b["id"] in pos]
        kx, bx = _fit([(pos[b["id"]][0], b["x"]) for b in boxes])
        ky, by = _fit([(pos[b["id"]][1], b["y"] + TITLE) for b in boxes])  # a box's top is its title bar's
        for b in boxes:
            x0, y0 = (b["x"] - bx) / kx, (b["y"] - by) / ky
            x1, y1 = (b["x"] + b["w"] - bx) / kx, (b["y"] + b["h"] - by) / ky
            px, py = pos[b["id"]]
            e = [x0 - px, y0 - py, x1 - px, y1 - py]
            old = out.get(b["id"])
            out[b["id"]] = e if old is None else [min(old[0], e[0]), min(old[1], e[1]), max(old[2], e[2]),
                                                  max(old[3], e[3])]
    return out


def relayout(workflow: dict, ext: dict[int, list[float]], gap: float) -> int:
    """Move nodes down so no two overlap (see the module docstring); returns how many moved."""
    items = []  # (id or group index, left, top, right, bottom) in workflow units, as saved
    for n in workflow["nodes"]:
        e = ext.get(n["id"])
        if e is None:
            continue
        x, y = n["pos"]
        items.append({"node": n, "l": x + e[0], "t": y + e[1], "r": x + e[2], "b": y + e[3]})
    groups = workflow.get("groups") or []
    node_items = list(items)
    members: list[list[dict]] = []
    for g in groups:
        gx, gy, gw, gh = g["bounding"]
        inside = [i for i in node_items if gx <= i["node"]["pos"][0] < gx + gw and gy <= i["node"]["pos"][1] < gy + gh]
        members.append(inside)
        items.append({"group": g, "l": gx, "t": gy, "r": gx + gw, "b": gy + GROUP_TITLE})
    items.sort(key=lambda i: (i["t"], 0 if "group" in i else 1))
    rows: list[list[dict]] = []  # items whose tops were level stay level (a row of loaders moves as one)
    for it in items:
        if rows and abs(rows[-1][0]["t"] - it["t"]) <= 1 and ("group" in it) == ("group" in rows[-1][0]):
            rows[-1].append(it)
        else:
            rows.append([it])
    placed: list[dict] = []
    moved = 0
    for row in rows:
        shift = 0.0
        for it in row:
            for p in placed:
                if it["l"] < p["r"] + gap and p["l"] < it["r"] + gap:  # shares columns (with the gap beside)
                    shift = max(shift, p["b"] + gap - it["t"])
        for it in row:
            if shift > 0:
                it["t"] += shift
                it["b"] += shift
                if "node" in it:
                    it["node"]["pos"] = [it["node"]["pos"][0], round(it["node"]["pos"][1] + shift)]
                    moved += 1
            placed.append(it)
    for g, inside, it in zip(groups, members, [i for i in items if "group" in i]):
        if not inside:
            continue
        top = it["t"]
        left = min(i["l"] for i in inside) - GROUP_PAD
        right = max(i["r"] for i in inside) + GROUP_PAD
        bottom = max(i["b"] for i in inside) + GROUP_PAD
        g["bounding"] = [round(left), round(top), round(right - left), round(bottom - top)]
    return moved


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("results", nargs="+", type=Path)
    ap.add_argument("--gap", type=float, default=24.0)
    ap.add_argument("--dry-run", action="store_true")
    ns = ap.parse_args()
    results = [json.loads(p.read_text()) for p in ns.results]
    for wf in sorted((ROOT / "workflows").glob("*.json")):
        workflow = json.loads(wf.read_text())
        measured = []
        for r in results:
            got = r["workflows"].get(wf.name)
            if not got:
                continue
            measured.append(got["boxes"])
            if got.get("afterRun"):
                measured.append(got["afterRun"]["after"])
        if not measured:
            continue
        moved = relayout(workflow, extents(workflow, measured), ns.gap)
        print(f"{wf.name}: {moved} node(s) moved")
        if moved and not ns.dry_run:
            wf.write_text(json.dumps(workflow, indent=2, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
