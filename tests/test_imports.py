"""The import structure of asr/: only asr/cli.py may import export.* or benchmarks.* (the
library does not depend on its tools), and the module-level imports between asr's modules have
no cycle. Parsed with ast, nothing is imported."""
from __future__ import annotations

import ast
from pathlib import Path

from conftest import REPO_ROOT

ASR = REPO_ROOT / "asr"
TOOLS = ("export", "benchmarks")
MAY_IMPORT_TOOLS = {"asr.cli"}


def module_name(path: Path) -> str:
    parts = path.relative_to(REPO_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> list[tuple[str, bool]]:
    """(imported module, at module level) for every import statement of ``path``; for
    ``from a import b`` both a and a.b (b may be a submodule)."""
    tree = ast.parse(path.read_text(), str(path))
    top_level = {id(node) for node in tree.body}
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(a.name, id(node) in top_level) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1] + ([base] if base else []))
            out.append((base, id(node) in top_level))
            out += [(f"{base}.{a.name}", id(node) in top_level) for a in node.names]
    return out


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(ASR.rglob("*.py"))}


def test_only_the_cli_imports_export_or_benchmarks():
    offenders = [
        f"{name} imports {target}"
        for name, path in modules().items()
        if name not in MAY_IMPORT_TOOLS
        for target, _ in imports(path)
        if target.split(".")[0] in TOOLS
    ]
    assert not offenders


def test_no_import_cycle_among_module_level_imports():
    mods = modules()
    graph = {}
    for name, path in mods.items():
        # the modules named (a package's __init__ importing its submodules is not a cycle)
        graph[name] = {t for t, top in imports(path) if top and t in mods and t != name}
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(graph[node]):
            if state.get(nxt) == "open":
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for name in sorted(graph):
        if name not in state:
            visit(name, [name])
    assert not cycles


def test_the_checks_see_imports():
    """The parser finds what the rules are about (a check that finds nothing proves nothing)."""
    cli = dict(imports(ASR / "cli.py"))
    assert any(t.startswith("export.") for t in cli)
    source = {t for t, top in imports(ASR / "data" / "source.py") if top}
    assert {"asr.data.memory", "asr.data.shard_source"} <= source
