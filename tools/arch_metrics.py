"""Print the package's architecture figures, to compare a tree before and after a clean-up.

Figures (one line each, then details):

- import cycles: strongly connected groups of ``rar_agent`` modules in grimp's import graph
  (every import counts, function-level and ``TYPE_CHECKING`` ones included);
- upward imports: direct imports from a module to one in a higher layer, with the layers
  read from the ``layers`` contract of ``[tool.importlinter]`` in ``pyproject.toml``
  (modules that issue 11 moves are counted in the layer they move to, see ``MOVED``), and
  grimp's own verdict on that contract (``find_illegal_dependencies_for_layers``);
- largest module (lines), longest function (lines), functions over 60 lines;
- cyclomatic complexity: the highest, and ``_block_image``'s (1 + one per ``if``,
  loop, ``except``, conditional expression, comprehension ``if``, ``match`` case, and one per
  extra operand of ``and``/``or``);
- repeated blocks: pairs reported by ``duplicates --repo rar_agent --most 40`` (when that
  tool is installed);
- public boundaries typed ``Any``: parameters, returns and class fields of public names
  whose annotation is ``Any`` itself (``Any | None`` too); ``Any`` nested in a container
  (``dict[str, Any]``) is counted apart;
- private imports: ``from x import _name`` / ``x._name`` where ``x`` is another
  ``rar_agent`` module, and imports of a private module from outside its package.

Usage::

    python tools/arch_metrics.py                 # this checkout
    python tools/arch_metrics.py --root /tmp/old --pyproject pyproject.toml
"""

from __future__ import annotations

import argparse
import ast
import shutil
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

PACKAGE = "rar_agent"
LONG_FUNCTION = 60
# Modules that issue 11 moves, counted in the layer they move to (so an old tree compares).
MOVED = {
    "rar_agent.models": "rar_agent.ranking",
    "rar_agent.local_vlm": "rar_agent.ranking",
    "rar_agent.eval": "rar_agent.evaluation",
    "rar_agent.cli_chat": "rar_agent.cli",
    "rar_agent.cli_eval": "rar_agent.cli",
    "rar_agent.cli_finetune": "rar_agent.cli",
}


@dataclass(frozen=True)
class Function:
    """One ``def`` in the package."""

    module: str
    qualname: str
    lines: int
    complexity: int


def read_layers(pyproject: Path) -> list[list[str]]:
    """The layers of the first ``layers`` contract in ``pyproject``, top first."""
    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    contracts = config.get("tool", {}).get("importlinter", {}).get("contracts", [])
    for contract in contracts:
        if contract.get("type") == "layers":
            containers = contract.get("containers", [])
            prefix = f"{containers[0]}." if containers else ""
            return [
                [prefix + name.strip() for name in layer.replace("|", ":").split(":")]
                for layer in contract["layers"]
            ]
    raise SystemExit(f"{pyproject} has no [tool.importlinter] layers contract")


def layer_of(module: str, layers: list[list[str]]) -> int | None:
    """Index of ``module``'s layer (0 = top), or ``None`` when no layer holds it."""
    module = next((new for old, new in MOVED.items() if _within(module, old)), module)
    for index, layer in enumerate(layers):
        if any(_within(module, name) for name in layer):
            return index
    return None


def _within(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


def cycles(graph) -> list[list[str]]:  # noqa: ANN001 - grimp.ImportGraph
    """Strongly connected groups (more than one module) of the package's import graph."""
    modules = sorted(m for m in graph.modules if _within(m, PACKAGE))
    edges = {m: sorted(graph.find_modules_directly_imported_by(m) & set(modules)) for m in modules}
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(start: str) -> None:  # Tarjan, iterative (deep graphs)
        work = [(start, iter(edges[start]))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is None:
                work.pop()
                if work:
                    low[work[-1][0]] = min(low[work[-1][0]], low[node])
                if low[node] == index[node]:
                    group = []
                    while True:
                        member = stack.pop()
                        on_stack.discard(member)
                        group.append(member)
                        if member == node:
                            break
                    if len(group) > 1:
                        groups.append(sorted(group))
            elif child not in index:
                index[child] = low[child] = len(index)
                stack.append(child)
                on_stack.add(child)
                work.append((child, iter(edges[child])))
            elif child in on_stack:
                low[node] = min(low[node], index[child])

    for module in modules:
        if module not in index:
            visit(module)
    return sorted(groups)


def upward_imports(graph, layers: list[list[str]]) -> list[tuple[str, str]]:  # noqa: ANN001
    """Direct imports from a module to one in a higher layer (moved modules remapped)."""
    found = []
    for importer in sorted(m for m in graph.modules if _within(m, PACKAGE)):
        low = layer_of(importer, layers)
        for imported in sorted(graph.find_modules_directly_imported_by(importer)):
            high = layer_of(imported, layers)
            if low is not None and high is not None and high < low:
                found.append((importer, imported))
    return found


def contract_dependencies(graph, layers: list[list[str]], pyproject: Path) -> int:  # noqa: ANN001
    """How many layer pairs break the contract, by grimp's own check."""
    import grimp

    config = tomllib.loads(pyproject.read_text(encoding="utf-8"))
    raw = next(
        c["layers"]
        for c in config["tool"]["importlinter"]["contracts"]
        if c.get("type") == "layers"
    )
    present = set(graph.modules)
    grimp_layers = [
        grimp.Layer(*[m for m in names if m in present], independent="|" in spec)
        for names, spec in zip(layers, raw, strict=True)
    ]
    return len(graph.find_illegal_dependencies_for_layers(layers=grimp_layers))


_BRANCHES = (ast.If, ast.IfExp, ast.For, ast.AsyncFor, ast.While, ast.ExceptHandler, ast.match_case)


def complexity(node: ast.AST) -> int:
    """Cyclomatic complexity of a function body (nested functions not included)."""
    score = 1
    for child in _walk_own(node):
        if isinstance(child, _BRANCHES):
            score += 1
        elif isinstance(child, ast.comprehension):
            score += len(child.ifs)
        elif isinstance(child, ast.BoolOp):
            score += len(child.values) - 1
    return score


def _walk_own(node: ast.AST) -> Iterator[ast.AST]:
    for child in ast.iter_child_nodes(node):
        if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda):
            continue
        yield child
        yield from _walk_own(child)


def functions(module: str, tree: ast.Module) -> Iterator[Function]:
    """Every function and method of a module, nested ones included."""

    def visit(node: ast.AST, prefix: str) -> Iterator[Function]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                name = prefix + child.name
                lines = (child.end_lineno or child.lineno) - child.lineno + 1
                yield Function(module, name, lines, complexity(child))
                yield from visit(child, name + ".")
            elif isinstance(child, ast.ClassDef):
                yield from visit(child, prefix + child.name + ".")

    yield from visit(tree, "")


def _is_any(node: ast.AST | None) -> bool:
    if isinstance(node, ast.Name | ast.Attribute):
        return (node.id if isinstance(node, ast.Name) else node.attr) == "Any"
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _is_any(node.left) or _is_any(node.right)
    if isinstance(node, ast.Subscript) and _name(node.value) == "Optional":
        return _is_any(node.slice)
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        try:
            return _is_any(ast.parse(node.value, mode="eval").body)
        except SyntaxError:
            return False
    return False


def _name(node: ast.AST) -> str:
    return node.id if isinstance(node, ast.Name) else getattr(node, "attr", "")


def _has_any(node: ast.AST | None) -> bool:
    return node is not None and any(
        isinstance(n, ast.Name | ast.Attribute) and _name(n) == "Any" for n in ast.walk(node)
    )


def any_boundaries(module: str, tree: ast.Module) -> tuple[list[str], list[str]]:
    """``(bare, nested)``: public annotations that are ``Any``, and that contain it."""
    bare: list[str] = []
    nested: list[str] = []

    def note(where: str, annotation: ast.AST | None) -> None:
        if _is_any(annotation):
            bare.append(where)
        elif _has_any(annotation):
            nested.append(where)

    def visit(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.ClassDef) and not child.name.startswith("_"):
                for item in child.body:
                    if not isinstance(item, ast.AnnAssign):
                        continue
                    target = item.target
                    if isinstance(target, ast.Name) and not target.id.startswith("_"):
                        note(f"{module}:{child.name}.{target.id}", item.annotation)
                visit(child, prefix + child.name + ".")
            elif isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                public = not child.name.startswith("_") or child.name == "__init__"
                if public:
                    where = f"{module}:{prefix}{child.name}"
                    args = child.args
                    for arg in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
                        note(f"{where}({arg.arg})", arg.annotation)
                    note(f"{where} -> return", child.returns)

    visit(tree, "")
    return bare, nested


def private_imports(module: str, tree: ast.Module, is_package: bool) -> list[str]:
    """Uses of another ``rar_agent`` module's private names, and private modules from outside."""
    here = module if is_package else module.rpartition(".")[0]
    found: list[str] = []
    aliases: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            source = _absolute(node, here)
            if not _within(source, PACKAGE):
                continue
            found += _private_module(module, source)
            for alias in node.names:
                name = alias.name
                if name.startswith("_") and not name.startswith("__") and source != module:
                    if not _is_submodule(source, name):
                        found.append(f"{module}: from {source} import {name}")
                    else:
                        found += _private_module(module, f"{source}.{name}")
                else:
                    aliases[alias.asname or name] = f"{source}.{name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if _within(alias.name, PACKAGE):
                    found += _private_module(module, alias.name)
                    if alias.asname:
                        aliases[alias.asname] = alias.name
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in aliases
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
            and aliases[node.value.id] != module
        ):
            found.append(f"{module}: {aliases[node.value.id]}.{node.attr}")
    return sorted(set(found))


def _absolute(node: ast.ImportFrom, here: str) -> str:
    if not node.level:
        return node.module or ""
    base = here.split(".")
    base = base[: len(base) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _is_submodule(package: str, name: str) -> bool:
    return name in _SUBMODULES.get(package, set())


def _private_module(importer: str, imported: str) -> list[str]:
    parts = imported.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_") and not part.startswith("__"):
            owner = ".".join(parts[:i])
            if not _within(importer, owner):
                return [f"{importer}: imports private module {imported}"]
    return []


_SUBMODULES: dict[str, set[str]] = {}


def source_files(root: Path) -> dict[str, Path]:
    """``module name -> file`` for every ``.py`` file of the package under ``root``."""
    files = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        files[".".join(parts)] = path
    for name in files:
        parent, _, child = name.rpartition(".")
        _SUBMODULES.setdefault(parent, set()).add(child)
    return files


def duplicate_pairs(root: Path) -> str:
    """The first line of ``duplicates --repo <root>/rar_agent --most 40`` (its pair count)."""
    tool = shutil.which("duplicates")
    if tool is None:
        return "n/a (the `duplicates` tool is not installed)"
    out = subprocess.run(
        [tool, "--repo", str(root / PACKAGE), "--most", "40", "--seconds", "120"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout
    first = out.splitlines()[0] if out else "no output"
    return first.split(" ", 1)[0] + " pairs" if first[:1].isdigit() else first


def main(argv: list[str] | None = None) -> int:
    """Print the figures for the package under ``--root``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=Path(__file__).resolve().parent.parent)
    parser.add_argument("--pyproject", type=Path, default=None)
    parser.add_argument("--details", action="store_true", help="list every finding")
    args = parser.parse_args(argv)
    root = args.root.resolve()
    pyproject = (args.pyproject or root / "pyproject.toml").resolve()
    sys.path.insert(0, str(root))
    import grimp

    graph = grimp.build_graph(PACKAGE, cache_dir=None)
    layers = read_layers(pyproject)
    files = source_files(root)
    trees = {m: ast.parse(p.read_text(encoding="utf-8")) for m, p in files.items()}
    sizes = {m: len(p.read_text(encoding="utf-8").splitlines()) for m, p in files.items()}
    funcs = [f for m, t in trees.items() for f in functions(m, t)]
    long_funcs = sorted((f for f in funcs if f.lines > LONG_FUNCTION), key=lambda f: -f.lines)
    groups = cycles(graph)
    upward = upward_imports(graph, layers)
    bare: list[str] = []
    nested: list[str] = []
    private: list[str] = []
    for module, tree in trees.items():
        b, n = any_boundaries(module, tree)
        bare += b
        nested += n
        private += private_imports(module, tree, files[module].name == "__init__.py")
    biggest = max(sizes, key=lambda m: sizes[m])
    longest = max(funcs, key=lambda f: f.lines)
    hardest = max(funcs, key=lambda f: f.complexity)
    block = [f for f in funcs if f.qualname == "_block_image"]

    print(f"import cycles: {len(groups)} groups ({sum(map(len, groups))} modules)")
    print(f"upward imports: {len(upward)} direct imports against the layers")
    print(f"  grimp layer check: {contract_dependencies(graph, layers, pyproject)} layer pairs")
    print(f"largest module: {sizes[biggest]} lines ({biggest})")
    print(f"modules over 400 lines: {sum(1 for s in sizes.values() if s > 400)}")
    print(f"longest function: {longest.lines} lines ({longest.module}.{longest.qualname})")
    print(f"functions over {LONG_FUNCTION} lines: {len(long_funcs)}")
    print(f"highest complexity: {hardest.complexity} ({hardest.module}.{hardest.qualname})")
    print(f"complexity of _block_image: {block[0].complexity if block else 'gone'}")
    print(f"repeated blocks: {duplicate_pairs(root)}")
    print(f"public boundaries typed Any: {len(bare)} (plus {len(nested)} nested in a type)")
    print(f"imports of other modules' private names: {len(private)}")
    if args.details:
        _details(groups, upward, long_funcs, bare, private)
    return 0


def _details(groups, upward, long_funcs, bare, private) -> None:  # noqa: ANN001
    for group in groups:
        print("cycle:", " <-> ".join(group))
    for importer, imported in upward:
        print(f"upward: {importer} -> {imported}")
    for f in long_funcs:
        print(f"long: {f.lines:4d} {f.module}.{f.qualname}")
    for where in bare:
        print(f"Any: {where}")
    for where in private:
        print(f"private: {where}")


if __name__ == "__main__":
    sys.exit(main())
