"""The house rules of the code base that a test can check (issue 20)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path


def test_importing_the_packages_changes_no_third_party_setting() -> None:
    """Importing our modules leaves pynetdicom's process-wide settings as they were."""
    code = (
        "from pynetdicom import _config as c\n"
        "before = {k: getattr(c, k) for k in dir(c) if k.isupper()}\n"
        "import ct_triage.dicom_bridge.deliver, ct_triage.dicom_bridge.scp\n"
        "import ct_triage.server.cli\n"
        "after = {k: getattr(c, k) for k in dir(c) if k.isupper()}\n"
        "changed = sorted(k for k in before if before[k] is not after[k])\n"
        "print(','.join(changed))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True
    )
    assert done.stdout.strip() == "", f"changed at import: {done.stdout.strip()}"


# --------------------------------------------------------------------------------------------
# The import graph, read from the source (issue 20)

#: The distributions, bottom layer first: a module may import its own layer and those below.
LAYERS = ("kernels", "models", "dicom_bridge", "server")
#: The layers whose modules import no circle (server/: test_server_has_no_import_cycle).
ACYCLIC = ("kernels", "models", "dicom_bridge")
ROOT = Path(__file__).resolve().parents[2]


def _modules() -> dict[str, Path]:
    """Every ``ct_triage`` module of the four distributions, by dotted name."""
    found: dict[str, Path] = {}
    for layer in LAYERS:
        src = ROOT / layer / "src"
        for path in sorted((src / "ct_triage" / layer).rglob("*.py")):
            parts = path.relative_to(src).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """``module -> modules it imports``, among ``modules``.

    Every import statement counts: at module level, inside functions and under
    ``TYPE_CHECKING`` alike. ``from package import name`` points at ``package.name`` when that
    is a module, else at ``package``; relative imports are resolved.
    """
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str] = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            if isinstance(node, ast.Import):
                targets.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    up = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*up, base] if base else up)
                for alias in node.names:
                    sub = f"{base}.{alias.name}"
                    targets.add(sub if sub in modules else base)
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles: strongly connected groups of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def _layer(module: str) -> str:
    return module.split(".")[1]


def test_the_circle_finder_finds_circles() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert circles(graph) == [["a", "b", "c"]]


def test_the_import_graph_sees_imports_inside_functions() -> None:
    graph = import_graph(_modules())
    assert len(graph) > 100
    # top-level import
    assert "ct_triage.models.runtime.factory" in graph["ct_triage.models.lesions"]
    # imports inside functions (the ones that hid the old circle)
    assert "ct_triage.models.runtime.fp16" in graph["ct_triage.models.runtime.factory"]
    assert "ct_triage.models.phantom" in graph["ct_triage.models.train.data"]


def test_every_layer_imports_only_itself_and_the_layers_below() -> None:
    """kernels imports nothing of ours; models no bridge or server; the bridge no server."""
    graph = import_graph(_modules())
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if LAYERS.index(_layer(target)) > LAYERS.index(_layer(module))
    )
    assert upward == []


def test_no_import_circle_in_kernels_models_and_the_bridge() -> None:
    graph = import_graph(_modules())
    clean = {
        module: {t for t in targets if _layer(t) in ACYCLIC}
        for module, targets in graph.items()
        if _layer(module) in ACYCLIC
    }
    assert circles(clean) == []


def test_server_has_no_import_cycle() -> None:
    """The server imports no circle either (once ``commands`` <-> ``jobs.worker`` and
    ``jobs.model`` <-> ``worklist``; the CLI is now a package of verbs on top)."""
    graph = import_graph(_modules())
    server = {
        module: {t for t in targets if _layer(t) == "server"}
        for module, targets in graph.items()
        if _layer(module) == "server"
    }
    # the verbs are seen (the CLI imports them inside a function, for a fast `health`)
    assert "ct_triage.server.cli.serve" in server["ct_triage.server.cli.main"]
    assert "ct_triage.server.jobs.worker" in server["ct_triage.server.cli.worker"]
    assert circles(server) == []


def test_no_cli_verb_is_imported_below_the_cli() -> None:
    """Only the CLI package imports its verbs: the rest of the server knows no command line."""
    graph = import_graph(_modules())
    upward = sorted(
        f"{module} -> {target}"
        for module, targets in graph.items()
        for target in targets
        if target.startswith("ct_triage.server.cli")
        and not module.startswith("ct_triage.server.cli")
    )
    assert upward == []
