"""The library's shape: a small top level, floors that only import downwards, short functions,
and chapters that use the public API only."""
from __future__ import annotations

import ast
import json
import pkgutil
import re
from pathlib import Path

import pytest

import deltalearn as dl

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "deltalearn"
CHAPTERS = sorted((ROOT / "book").glob("*.ipynb"))
# a floor may import from the floors before it, never from one after it (classroom sits beside the cli,
# which calls it; it runs chapters in kernels and imports no other part of the library)
FLOORS = {"_status": 0, "core": 1, "store": 2, "rl": 3, "study": 4, "cli": 5, "classroom": 5}


def _floor(module: str) -> int:
    """The floor of a dotted module name inside the package (``deltalearn.rl.dqn`` -> rl)."""
    parts = module.split(".")
    return FLOORS[parts[1]] if len(parts) > 1 and parts[1] in FLOORS else -1


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PACKAGE.rglob("*.py")):
        rel = path.relative_to(PACKAGE.parent).with_suffix("")
        name = ".".join(rel.parts)
        out.append((name[: -len(".__init__")] if name.endswith(".__init__") else name, path))
    return out


def _absolute(module: str, node: ast.ImportFrom, is_package: bool) -> str:
    if node.level == 0:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def test_the_top_level_is_small_and_shadows_no_submodule():
    public = [n for n in dir(dl) if not n.startswith("_")]
    assert len(public) <= 40, f"{len(public)} public top-level names: {public}"
    submodules = {m.name for m in pkgutil.iter_modules(dl.__path__)}
    for name in public:
        if name in submodules:
            assert getattr(dl, name).__name__ == f"deltalearn.{name}", f"dl.{name} shadows deltalearn.{name}"


def test_every_namespace_lists_only_names_it_has():
    for ns in (dl.core, dl.rl, dl.store, dl.study):
        missing = [n for n in ns.__all__ if not hasattr(ns, n)]
        assert not missing, f"{ns.__name__}.__all__ names {missing}"
        assert len(set(ns.__all__)) == len(ns.__all__), f"{ns.__name__}.__all__ repeats a name"


def test_no_module_imports_from_a_floor_above_it():
    bad = []
    for module, path in _modules():
        own = _floor(module)
        if own < 0:
            continue  # the package's own __init__ gathers every floor
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom):
                target = _absolute(module, node, path.name == "__init__.py")
                names = [target] if node.module or node.level == 0 else [f"{target}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                continue
            for t in names:
                if t.startswith("deltalearn") and _floor(t) > own:
                    bad.append(f"{module} imports {t}")
    assert not bad, "imports from a higher floor: " + "; ".join(bad)


def test_no_library_function_is_longer_than_about_100_lines():
    long = []
    for module, path in _modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                n = node.end_lineno - node.lineno + 1
                if n > 100:
                    long.append(f"{module}.{node.name}: {n} lines")
    assert not long, "; ".join(long)


def _code(nb: Path) -> str:
    cells = json.loads(nb.read_text())["cells"]
    return "\n".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_chapters_use_public_names_only(nb):
    code = _code(nb)
    private = re.findall(r"\bdl(?:\.[A-Za-z]\w*)*\._\w+|deltalearn(?:\.\w+)*\._\w+|from deltalearn\S* import[^\n]*\b_\w+",
                         code)
    assert not private, f"{nb.name} uses private names: {private}"
    names = set(re.findall(r"\bdl\.([A-Za-z]\w*)", code))
    missing = sorted(n for n in names if not hasattr(dl, n))
    assert not missing, f"{nb.name} uses dl.{missing}, not in the public API"


@pytest.mark.parametrize("nb", CHAPTERS, ids=lambda p: p.stem)
def test_chapters_decode_no_result_file_by_hand(nb):
    code = _code(nb)
    hand = re.findall(r"""\[\s*["'](?:variants|layers|total_significant|total_dense|steps|scores)["']\s*\]""", code)
    assert not hand, f"{nb.name} indexes result JSON by hand: {hand}; use dl.load_table / dl.load_sweep"
