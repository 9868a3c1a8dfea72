"""The pack's import rules (docs/ARCHITECTURE.md), checked on the source with ``ast``: every import counts, at module
level or inside a function, relative ones resolved to the pack's folders.

(a) the libraries (optimizer/, reward_loaders/, generators/, and preferences/, training/ where they exist) never
    import ComfyUI;
(b) no product module imports the tests' helpers (tests/, testing/, tiny_*, comfy_host, conftest, ...);
(c) the pack's own modules import each other without a cycle.

Product: the pack's ``__init__.py`` and every folder of the pack but tests/, scripts/, testing/ (test fixtures,
not shipped), web/, node_modules/ and hidden ones.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_PRODUCT = {"tests", "scripts", "testing", "web", "node_modules", "docs", "workflows"}
LIBRARIES = ("optimizer", "reward_loaders", "generators", "preferences", "training")
COMFYUI = {"comfy", "comfy_extras", "folder_paths", "nodes", "server", "execution", "comfy_api", "latent_preview"}
# tests/ and testing/ and their modules as top-level names (tests/ is on sys.path in the tests), and reno_pack: the
# name the tests import the pack under
TEST_HELPERS = {"tests", "testing", "conftest", "comfy_host", "engine_support", "family_support", "reno_prompts", "fake_hub",
                "tolerances", "editable_install", "comfy_fixture_nodes", "reno_pack"}
TEST_HELPER_PREFIXES = ("tiny_",)

# Edges of cycles that other work in progress removes (issue 24): allowed for now, each with its reason. Delete an
# entry once its edge is gone; an entry whose edge no longer exists fails the test, so the list cannot go stale.
TEMPORARY_EDGES: set = set()  # cycle edges being removed (each must still exist; none now)


@dataclass(frozen=True)
class Import:
    module: str  # the importing module, dotted from the pack's root ("" is the pack's __init__)
    line: int
    absolute: str | None  # a level-0 import's full name ("comfy.samplers"), else None
    internal: tuple[str, ...]  # the pack's product modules it names (resolved relative imports)
    resolved: str | None = None  # a relative import's target, dotted from the pack's root ("testing.tiny_rewards")
    escapes: bool = False  # a relative import above the pack's root


def product_files() -> list[Path]:
    files = sorted(ROOT.glob("*.py"))
    for folder in sorted(p for p in ROOT.iterdir() if p.is_dir()):
        if folder.name in NOT_PRODUCT or folder.name.startswith((".", "_")):
            continue
        files += sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)
    return files


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def shown(module: str) -> str:
    return module or "(the pack's __init__)"


def collect() -> tuple[dict[str, Path], list[Import]]:
    files = {module_name(p): p for p in product_files()}
    imports: list[Import] = []
    for module, path in files.items():
        package = module if path.name == "__init__.py" else module.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                imports += [Import(module, node.lineno, alias.name, ()) for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0:
                imports.append(Import(module, node.lineno, node.module, ()))
            elif isinstance(node, ast.ImportFrom):
                base = package.split(".") if package else []
                if node.level - 1 > len(base):
                    imports.append(Import(module, node.lineno, None, (), escapes=True))
                    continue
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + (node.module.split(".") if node.module else []))
                named = [f"{target}.{a.name}" if target else a.name for a in node.names]
                found = tuple(n for n in named if n in files)
                if len(found) < len(named) and target in files:  # names from the module itself (or its package)
                    found += (target,)
                imports.append(Import(module, node.lineno, None, found, target))
    return files, imports


def where(files: dict[str, Path], imp: Import) -> str:
    return f"{files[imp.module].relative_to(ROOT)}:{imp.line}"


def test_the_product_files_are_found():
    files, _ = collect()
    for module in ("", "nodes.lifecycle", "optimizer.reno", "reward_loaders.registry", "runner.engine"):
        assert module in files, shown(module)
    assert not [m for m in files if m.split(".")[0] in NOT_PRODUCT]


def test_relative_imports_stay_inside_the_pack():
    files, imports = collect()
    bad = [where(files, i) for i in imports if i.escapes]
    assert not bad, f"relative imports above the pack's root: {bad}"


def test_libraries_never_import_comfyui():
    files, imports = collect()
    bad = [f"{where(files, i)}: {i.absolute}" for i in imports
           if i.module.split(".")[0] in LIBRARIES and i.absolute and i.absolute.split(".")[0] in COMFYUI]
    assert not bad, "a library module imports ComfyUI (only nodes/ and runner/engine's boot may):\n" + "\n".join(bad)


def test_product_never_imports_the_tests_helpers():
    files, imports = collect()

    def helper(name: str) -> bool:
        top = name.split(".")[0]
        return top in TEST_HELPERS or top.startswith(TEST_HELPER_PREFIXES)

    bad = [f"{where(files, i)}: {i.absolute}" for i in imports if i.absolute and helper(i.absolute)]
    bad += [f"{where(files, i)}: the pack's {i.resolved}" for i in imports if i.resolved and helper(i.resolved)]
    assert not bad, "a product module imports test helpers:\n" + "\n".join(bad)


def _graph(imports: list[Import]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for i in imports:
        for target in i.internal:
            if target != i.module:
                graph.setdefault(i.module, set()).add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle of ``graph`` as a path that ends where it starts, or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def test_the_packs_modules_import_each_other_without_a_cycle():
    files, imports = collect()
    graph = _graph(imports)
    stale = sorted(e for e in TEMPORARY_EDGES if e[1] not in graph.get(e[0], set()))
    assert not stale, f"TEMPORARY_EDGES lists edges that are gone; delete them: {stale}"
    for a, b in TEMPORARY_EDGES:
        graph[a].discard(b)
    cycle = _cycle(graph)
    if cycle:
        lines = []
        for a, b in zip(cycle, cycle[1:]):
            at = [where(files, i) for i in imports if i.module == a and b in i.internal]
            lines.append(f"  {shown(a)} -> {shown(b)}  ({', '.join(at)})")
        raise AssertionError("import cycle among the pack's modules (function-local imports count):\n" + "\n".join(lines))


def test_the_cycle_finder_finds_a_cycle_and_names_its_path():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "d": {"a"}}) is None
