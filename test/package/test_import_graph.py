"""The package's import graph, read from the source with `ast` (nothing is imported, no ROS).

Every import statement counts: module level, inside functions, under TYPE_CHECKING;
relative imports are resolved. Dependencies point one way (nodes/eval -> core <- models):
core imports nothing of the package outside core, and no modules of dispider_ros import
each other in a circle.
"""
import ast
from pathlib import Path
from typing import Dict, List, Optional, Set

PACKAGE = "dispider_ros"
CORE = f"{PACKAGE}.core"
SOURCE = Path(__file__).resolve().parents[2] / PACKAGE


def module_name(path: Path, source: Path) -> str:
    parts = [source.name, *path.relative_to(source).with_suffix("").parts]
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def imported_names(path: Path, module: str) -> List[str]:
    """Absolute names path imports; `from x import y` gives x.y (a module or a name in x)."""
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    names: List[str] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative to the importing module's package
                base = package[:len(package) - (node.level - 1)]
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module
            names += [stem if alias.name == "*" else f"{stem}.{alias.name}" for alias in node.names]
    return names


def resolve(name: str, known: Set[str]) -> Optional[str]:
    """The longest known module that name is or lies inside (None outside the package)."""
    while name:
        if name in known:
            return name
        name = name.rpartition(".")[0]
    return None


def read_package(source: Path = SOURCE):
    """(module -> absolute names it imports, module -> package modules it imports)."""
    files = {module_name(p, source): p for p in source.rglob("*.py")}
    names = {module: imported_names(path, module) for module, path in files.items()}
    graph: Dict[str, Set[str]] = {}
    for module, imported in names.items():
        targets = {resolve(name, set(files)) for name in imported}
        graph[module] = {t for t in targets if t is not None and t != module}
    return names, graph


def find_cycle(graph: Dict[str, Set[str]]) -> Optional[List[str]]:
    """One cycle as [a, b, ..., a], or None (iterative depth-first search)."""
    state = {node: "new" for node in graph}  # new -> open (on the path) -> done
    for root in sorted(graph):
        if state[root] != "new":
            continue
        state[root] = "open"
        path, stack = [root], [iter(sorted(graph[root]))]
        while stack:
            child = next(stack[-1], None)
            if child is None:
                state[path.pop()] = "done"
                stack.pop()
            elif state[child] == "open":
                return path[path.index(child):] + [child]
            elif state[child] == "new":
                state[child] = "open"
                path.append(child)
                stack.append(iter(sorted(graph[child])))
    return None


def reachable(graph: Dict[str, Set[str]], start: str) -> Set[str]:
    seen, todo = set(), [start]
    while todo:
        for child in graph[todo.pop()]:
            if child not in seen:
                seen.add(child)
                todo.append(child)
    return seen


def cycles(graph: Dict[str, Set[str]]) -> List[List[str]]:
    """One cycle for each group of modules that import each other in a circle."""
    reach = {node: reachable(graph, node) for node in graph}
    found, covered = [], set()
    for node in sorted(graph):
        if node in covered or node not in reach[node]:
            continue
        group = {other for other in reach[node] if node in reach[other]}
        covered |= group
        found.append(find_cycle({m: graph[m] & group for m in group}))
    return found


def outward_imports(names: Dict[str, List[str]]) -> List[str]:
    """core modules' imports of package modules outside core, as "module -> name"."""
    inside = lambda n: n == CORE or n.startswith(CORE + ".")  # noqa: E731
    return sorted(f"{module} -> {name}" for module, imported in names.items() if inside(module)
                  for name in imported
                  if (name == PACKAGE or name.startswith(PACKAGE + ".")) and not inside(name))


def test_reader_sees_function_level_relative_and_type_checking_imports(tmp_path):
    pkg = tmp_path / PACKAGE
    (pkg / "core").mkdir(parents=True)
    files = {
        "__init__.py": "",
        "core/__init__.py": "",
        "models.py": "import dispider_ros.core.b\n",
        "core/a.py": "def load():\n    from ..models import thing\n",
        "core/b.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n"
                     "    from . import a\nfrom .a import load\nimport numpy\n",
    }
    for name, text in files.items():
        (pkg / name).write_text(text)
    names, graph = read_package(pkg)
    assert graph[f"{CORE}.a"] == {f"{PACKAGE}.models"}
    assert graph[f"{CORE}.b"] == {f"{CORE}.a"}
    assert find_cycle(graph) == [f"{CORE}.a", f"{PACKAGE}.models", f"{CORE}.b", f"{CORE}.a"]
    assert cycles(graph) == [find_cycle(graph)]
    assert outward_imports(names) == [f"{CORE}.a -> {PACKAGE}.models.thing"]
    del graph[f"{PACKAGE}.models"]
    graph = {m: {t for t in ts if t in graph} for m, ts in graph.items()}
    assert find_cycle(graph) is None


def test_no_import_cycle_in_the_package():
    _, graph = read_package()
    assert f"{CORE}.reaction" in graph and f"{PACKAGE}.nodes.reaction_node" in graph
    found = cycles(graph)
    assert not found, "import cycles:\n" + "\n".join(" -> ".join(c) for c in found)


def test_no_import_cycle_between_subpackages():
    _, graph = read_package()
    top = lambda m: ".".join(m.split(".")[:2])  # noqa: E731 -- dispider_ros.<sub>
    packages: Dict[str, Set[str]] = {}
    for module, targets in graph.items():
        packages.setdefault(top(module), set()).update(top(t) for t in targets if top(t) != top(module))
    found = cycles(packages)
    assert not found, "cycles between subpackages:\n" + "\n".join(" -> ".join(c) for c in found)


def test_core_imports_nothing_outside_core():
    names, _ = read_package()
    offenders = outward_imports(names)
    assert not offenders, "core imports outward:\n" + "\n".join(offenders)
