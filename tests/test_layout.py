"""The package's layout: its layers (a module imports only from its own layer and the ones below), and no
import cycle inside drdemo/, counting imports inside functions.

A cycle hidden behind a function-level import still ties two modules together (neither can be
read, tested or moved without the other) and breaks as soon as someone hoists the import. Only
imports under `if TYPE_CHECKING:` are left out: they never run.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "drdemo"
# The package's layers, lowest first (docs/architecture.md shows the same table); a module may import only from its
# own layer and the layers before it. A module belongs to the longest prefix that names it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("drdemo", "drdemo.errors", "drdemo.tasks", "drdemo.cam.methods"),
    ("drdemo.ops",),
    ("drdemo.models",),
    ("drdemo.intake", "drdemo.preprocess"),
    ("drdemo.data", "drdemo.calibration", "drdemo.inference", "drdemo.metrics"),
    ("drdemo.checkpoint",),
    ("drdemo.cam",),
    ("drdemo.predictor",),
    ("drdemo.batch",),
    ("drdemo.serving", "drdemo.evaluate", "drdemo.train", "drdemo.screen"),
    ("drdemo.ui",),
)


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _type_checking_nodes(tree: ast.Module) -> set[int]:
    """ids of every node under an `if TYPE_CHECKING:` (or `typing.TYPE_CHECKING`) block."""
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for statement in node.body:
                skipped.update(id(n) for n in ast.walk(statement))
    return skipped


def _top_level_names(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                names.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
    return names


def import_graph() -> dict[str, set[str]]:
    """module -> the drdemo modules it imports anywhere in its body (TYPE_CHECKING blocks excepted).

    `import a.b.c` also runs the packages a.b and a (left out where the importer is inside them: a
    package's own modules run after its __init__ has started). `from pkg import name` runs the
    submodule `name` when it is one, and, for a package that imports names on first use (PEP 562,
    as drdemo.data does), the submodule that defines `name`."""
    modules = _modules()
    trees = {name: ast.parse(path.read_text(), filename=str(path)) for name, path in modules.items()}
    defined = {name: _top_level_names(tree) for name, tree in trees.items()}
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in trees.items():
        is_package = modules[name].name == "__init__.py"
        skipped = _type_checking_nodes(tree)

        def add(target: str, importer: str = name) -> None:
            parts = target.split(".")
            for length in range(1, len(parts) + 1):
                candidate = ".".join(parts[:length])
                inside = importer == candidate or importer.startswith(candidate + ".")
                if candidate in modules and not inside:
                    graph[importer].add(candidate)

        for node in ast.walk(tree):
            if id(node) in skipped:
                continue
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name)
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    base = name.split(".") if is_package else name.split(".")[:-1]
                    base = base[:len(base) - node.level + 1]
                    source = ".".join(base + ([node.module] if node.module else []))
                else:
                    source = node.module or ""
                if not source.startswith("drdemo"):
                    continue
                add(source)
                for alias in node.names:
                    if f"{source}.{alias.name}" in modules:
                        add(f"{source}.{alias.name}")
                    elif source in modules and alias.name not in defined[source]:
                        owners = [m for m in modules if m.rpartition(".")[0] == source and alias.name in defined[m]]
                        for owner in owners:
                            add(owner)
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in sorted(graph[node]):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                components.append(component)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return [_one_cycle(graph, set(component)) for component in components]


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module, for the failure message."""
    start = min(component)
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for successor in sorted(graph[node] & component):
                if successor == start:
                    return paths[node] + [start]
                if successor not in paths:
                    paths[successor] = paths[node] + [successor]
                    following.append(successor)
        frontier = following
    return sorted(component)


def test_the_cycle_finder_sees_function_level_imports_and_skips_type_checking():
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(graph) == [["a", "b", "c", "a"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
    tree = ast.parse("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\n"
                     "def f():\n    import y\n")
    skipped = _type_checking_nodes(tree)
    imported = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) and id(n) not in skipped for a in n.names]
    assert imported == ["y"]


def test_the_import_graph_counts_imports_inside_functions():
    graph = import_graph()
    # drdemo.serving.hub's CLI imports drdemo.serving.space inside main(); drdemo.data's names load on first use.
    assert "drdemo.serving.space" in graph["drdemo.serving.hub"]
    assert "drdemo.data.datasets" in graph["drdemo.cam.evaluation"]


def test_no_import_cycle_inside_drdemo():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles (function-level imports included):\n" + "\n".join(
        " -> ".join(cycle) for cycle in cycles)


def test_validating_a_config_imports_no_grad_cam():
    """Reading a checkpoint's config.json and writing its card need the CAM methods' names only."""
    code = ("import sys\nfrom drdemo.checkpoint import CheckpointConfig, model_card\n"
            "model_card(CheckpointConfig.for_architecture('medmamba_t', cam_method='eigencam'))\n"
            "print('pytorch_grad_cam' in sys.modules)\n")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "False"


BUILT_IN_ERRORS = {"ValueError", "RuntimeError", "TypeError", "KeyError", "OSError"}


def test_every_error_of_drdemo_s_is_a_drdemo_error():
    """The page and the CLIs can catch DrdemoError alone; each error keeps its built-in base too."""
    from drdemo.errors import DrdemoError

    outside = []
    for name, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                bases = {ast.unparse(base) for base in node.bases}
                if bases & BUILT_IN_ERRORS and "DrdemoError" not in bases:
                    outside.append(f"{name}.{node.name}")
    assert not outside, f"derive these from drdemo.errors.DrdemoError as well: {', '.join(outside)}"
    from drdemo.checkpoint import CheckpointError, HubUnavailable
    from drdemo.data import DatasetError
    from drdemo.tasks import TaskError

    for error in (CheckpointError, HubUnavailable, DatasetError, TaskError):
        assert issubclass(error, DrdemoError) and issubclass(error, ValueError)


def layer_of(module: str) -> int | None:
    """The index in LAYERS of the longest prefix naming `module` (the bare "drdemo" names only the package's
    __init__); None when no prefix names it."""
    best: tuple[int, int] | None = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            names_it = module == prefix or (prefix != "drdemo" and module.startswith(prefix + "."))
            if names_it and (best is None or len(prefix) > best[1]):
                best = (index, len(prefix))
    return None if best is None else best[0]


def layer_violations(graph: dict[str, set[str]]) -> list[str]:
    """Every import from a lower layer into a higher one. A package whose __init__ imports nothing of drdemo's
    is left out as a target: importing one of its modules runs it, and it can pull nothing in."""
    found = []
    for importer in sorted(graph):
        for imported in sorted(graph[importer]):
            if (PACKAGE.parent / imported.replace(".", "/") / "__init__.py").is_file() and not graph[imported]:
                continue
            if layer_of(imported) > layer_of(importer):
                found.append(f"{importer} (layer {layer_of(importer)}) imports {imported} (layer {layer_of(imported)})")
    return found


def test_every_module_has_a_layer():
    unplaced = [module for module in _modules() if layer_of(module) is None]
    assert not unplaced, f"add these to LAYERS: {', '.join(unplaced)}"


def test_the_layer_check_sees_an_import_from_below():
    assert layer_violations({"drdemo.ops.scan": {"drdemo.models.medmamba"}, "drdemo.models.medmamba": set()}) == [
        "drdemo.ops.scan (layer 1) imports drdemo.models.medmamba (layer 2)"]
    assert layer_violations({"drdemo.ui.page": {"drdemo.predictor"}, "drdemo.predictor": set()}) == []


def test_no_module_imports_from_a_higher_layer():
    violations = layer_violations(import_graph())
    assert not violations, "imports against the layers (LAYERS in this file):\n" + "\n".join(violations)


def test_the_package_imports_neither_tests_nor_benchmarks():
    found = [f"{path.relative_to(ROOT)}: {line.strip()}" for path in sorted(PACKAGE.rglob("*.py"))
             for line in path.read_text().splitlines()
             if line.lstrip().startswith(("import tests", "from tests", "import benchmarks", "from benchmarks"))]
    assert not found, "\n".join(found)
