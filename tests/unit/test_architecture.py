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


# --------------------------------------------------------------------------------------------
# Synthetic data stays off the runtime path (issue 20)

#: The phantom generator package (synthetic chest CT with exact truth).
PHANTOM = "ct_triage.models.phantom"
#: What may use it: training and evaluation data, synthetic DICOM for tests and the demo, and
#: the CLI verbs that make or score synthetic data (``phantom``, ``demo``, ``evaluate``).
SYNTHETIC_USERS = (
    "ct_triage.models.train",
    "ct_triage.models.evaluation",
    "ct_triage.dicom_bridge.synthetic",
    "ct_triage.server.cli.phantom",
    "ct_triage.server.cli.demo",
    "ct_triage.server.cli.evaluate",
)
#: The command-line dispatch: it imports each verb inside the function that runs it, so a
#: verb's imports load only when that verb runs (the verbs themselves are checked).
CLI_DISPATCH = (
    "ct_triage.server.cli",
    "ct_triage.server.cli.__main__",
    "ct_triage.server.cli.main",
)
#: Modules of the path of a study (docs/architecture.md), named so the rule cannot pass empty.
RUNTIME_PATH = (
    "ct_triage.models.analysis",
    "ct_triage.models.lungs",
    "ct_triage.models.lesions",
    "ct_triage.models.preprocess",
    "ct_triage.models.postprocess",
    "ct_triage.models.quality",
    "ct_triage.models.quantify",
    "ct_triage.models.runtime.factory",
    "ct_triage.dicom_bridge.load",
    "ct_triage.dicom_bridge.scp",
    "ct_triage.server.pipeline",
    "ct_triage.server.jobs.worker",
    "ct_triage.server.api.app",
    "ct_triage.server.cli.analyze",
    "ct_triage.server.cli.serve",
)


def _within(module: str, names: tuple[str, ...]) -> bool:
    """Whether ``module`` is one of ``names`` or inside one of them."""
    return any(module == name or module.startswith(f"{name}.") for name in names)


def import_path(graph: dict[str, set[str]], start: str, targets: tuple[str, ...]) -> list[str]:
    """A shortest chain of imports from ``start`` to a module within ``targets``; ``[]`` if none."""
    previous: dict[str, str] = {start: start}
    queue = [start]
    for module in queue:
        for imported in sorted(graph.get(module, ())):
            if imported in previous:
                continue
            previous[imported] = module
            if _within(imported, targets):
                chain = [imported]
                while chain[-1] != start:
                    chain.append(previous[chain[-1]])
                return chain[::-1]
            queue.append(imported)
    return []


def test_the_import_path_finder_follows_indirect_imports() -> None:
    graph = {"run": {"helper"}, "helper": {"gen.sub"}, "gen.sub": set(), "clean": {"helper2"}}
    assert import_path(graph, "run", ("gen",)) == ["run", "helper", "gen.sub"]
    assert import_path(graph, "clean", ("gen",)) == []


def test_only_training_evaluation_and_synthetic_data_import_the_phantom() -> None:
    """The phantom generator is imported, directly, only by the modules that make or score
    synthetic data (today: the training data, its measurements, the synthetic DICOM writer
    and the ``phantom`` verb)."""
    graph = import_graph(_modules())
    importers = {
        module
        for module, targets in graph.items()
        if not _within(module, (PHANTOM,)) and any(_within(t, (PHANTOM,)) for t in targets)
    }
    # the rule sees the real importers (a renamed package would make it pass empty)
    assert {
        "ct_triage.models.train.data",
        "ct_triage.dicom_bridge.synthetic",
        "ct_triage.server.cli.phantom",
    } <= importers
    assert sorted(m for m in importers if not _within(m, SYNTHETIC_USERS)) == []


def test_no_runtime_module_reaches_the_phantom() -> None:
    """No module on the path of a study loads the phantom generator, even through others:
    every module but the synthetic-data users and the CLI dispatch is checked."""
    graph = import_graph(_modules())
    checked = [
        module
        for module in graph
        if not _within(module, (PHANTOM, *SYNTHETIC_USERS)) and module not in CLI_DISPATCH
    ]
    assert set(RUNTIME_PATH) <= set(checked)
    reaching = [
        " -> ".join(chain)
        for module in checked
        if (chain := import_path(graph, module, (PHANTOM,)))
    ]
    assert reaching == []
