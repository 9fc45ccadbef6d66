"""The repository layout the README promises: runnable scripts at the top of ``experiments/``, plumbing in
``experiments.common``, imports pointing one way and no import circles (lazy imports included)."""
from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at top level or inside functions (absolute dotted names)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            out.add(node.module)
            out.update(f"{node.module}.{a.name}" for a in node.names)
    return out


def _module_name(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def test_experiments_top_level_holds_only_runnable_scripts():
    for f in (ROOT / "experiments").glob("*.py"):
        if f.name == "__init__.py":
            continue
        src = f.read_text()
        assert 'if __name__ == "__main__":' in src, f"{f.name} is at the top of experiments/ but is not a script"


def test_no_import_cycles_in_experiments_models_spherical():
    files = [p for pkg in ("spherical", "models", "experiments") for p in (ROOT / pkg).rglob("*.py")]
    names = {_module_name(p): p for p in files}
    graph = {n: {m for m in _imports(p) if m in names and m != n} for n, p in names.items()}

    def cycle_from(start: str) -> list[str] | None:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    return path + [start]
                if nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, path + [nxt]))
        return None

    # package __init__ files re-export their submodules; a cycle through them is not a real one
    cycles = [c for n in graph if not names[n].name == "__init__.py" and (c := cycle_from(n))
              and not any(names[m].name == "__init__.py" for m in c)]
    assert not cycles, f"import circles: {cycles}"


def test_imports_point_one_way():
    for pkg, banned in (("spherical", ("models", "experiments")), ("models", ("experiments",))):
        for f in (ROOT / pkg).rglob("*.py"):
            bad = {m for m in _imports(f) if m.split(".")[0] in banned}
            assert not bad, f"{f.relative_to(ROOT)} imports {bad}"
