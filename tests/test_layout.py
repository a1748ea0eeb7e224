"""The code's shape, as docs/development.md describes it: no import cycle in q2_aam, the
core never imports QIIME 2, no function longer than 60 lines, and the layout lists every
core file."""
import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "q2_aam"
LONGEST_FUNCTION = 60


def _modules() -> dict:
    """``{dotted name: path}`` of q2_aam's modules (its tests left out)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        if "tests" in path.relative_to(PACKAGE).parts:
            continue
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def _imports(name: str, path: Path, modules: dict) -> set:
    """The q2_aam modules ``name`` imports, at its top or inside a function."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package.split(".")[:len(package.split(".")) - node.level + 1] \
                if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            candidates = [target] + [f"{target}.{a.name}" for a in node.names]
        elif isinstance(node, ast.Import):
            candidates = [a.name for a in node.names]
        else:
            continue
        # A package importing its own submodules (its __init__) is not a cycle.
        out |= {c for c in candidates if c in modules and c != name
                and not c.startswith(name + ".")}
    return out


def test_no_import_cycle():
    modules = _modules()
    graph = {name: _imports(name, path, modules) for name, path in modules.items()}
    cycles = []

    def visit(name, trail):
        for nxt in sorted(graph[name]):
            if nxt in trail:
                cycles.append(trail[trail.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, trail + [nxt])
        done.add(name)
    done: set = set()
    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not cycles, cycles[:3]


def test_the_core_never_imports_qiime2():
    core = {name: path for name, path in _modules().items() if name.startswith("q2_aam.core")}
    for name, path in core.items():
        for node in ast.walk(ast.parse(path.read_text())):
            names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                     [node.module or ""] if isinstance(node, ast.ImportFrom) else [])
            assert not any(n.split(".")[0] in ("qiime2", "q2cli", "q2_types") for n in names), \
                name


def test_no_function_is_longer_than_60_lines():
    long = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > LONGEST_FUNCTION:
                    long.append(f"{name}.{node.name}: {length} lines")
    assert not long, long


@pytest.mark.parametrize("folder", ["core", "core/readout"])
def test_the_documented_layout_lists_every_core_file(folder):
    layout = (PACKAGE.parent / "docs" / "development.md").read_text()
    listed = set(re.findall(r"([a-z_]+\.py)\b", layout))
    files = {p.name for p in (PACKAGE / folder).glob("*.py") if p.name != "__init__.py"}
    assert files <= listed, sorted(files - listed)
