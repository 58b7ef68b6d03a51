"""The house rules of the package layout (docs/architecture.md), checked on the source with `ast`.

- no module imports another module's underscore name (nor a module whose path has an underscore part);
- no two modules import each other, counting imports inside functions and under TYPE_CHECKING;
- the packages' import graph has no cycle, and the engine imports no task package;
- `vggnet.cli` finds every command in one table pointing at `<part>/cli.py` (or a module that is the command).
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PARTS = ("classification", "localisation", "transfer", "experiments", "serve")  # the paper's parts and their harness


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted((SRC / "vggnet").rglob("*.py")):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


MODULES = _modules()


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every vggnet import in `module`, wherever it stands."""
    path = MODULES[module]
    tree = ast.parse(path.read_text(), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name.split(".")[0] == "vggnet"]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[:len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([node.module] if node.module else []))
            if base.split(".")[0] != "vggnet":
                continue
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.append((sub, None, node.lineno) if sub in MODULES else (base, alias.name, node.lineno))
    return found


def _edges() -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {}
    for module in MODULES:
        for target, _, _ in _imports(module):
            while target not in MODULES and "." in target:
                target = target.rpartition(".")[0]
            if target != module:
                edges.setdefault(module, set()).add(target)
    return edges


def test_the_walker_sees_imports_inside_functions_and_under_type_checking(tmp_path, monkeypatch):
    """The checks below would pass vacuously if the walker missed imports: it must see every kind."""
    pkg = tmp_path / "vggnet"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from vggnet.b import X\n"
                              "def f():\n    from vggnet.b import _hidden\n    from . import b\n")
    (pkg / "b.py").write_text("X = 1\n_hidden = 2\n")
    monkeypatch.setattr(sys.modules[__name__], "MODULES", {"vggnet": pkg / "__init__.py", "vggnet.a": pkg / "a.py",
                                                          "vggnet.b": pkg / "b.py"})
    assert sorted(_imports("vggnet.a"), key=str) == sorted([("vggnet.b", None, 6), ("vggnet.b", "X", 3),
                                                        ("vggnet.b", "_hidden", 5)], key=str)


def test_no_module_imports_another_modules_private_names():
    offences = []
    for module in MODULES:
        for target, name, line in _imports(module):
            hidden_module = any(p.startswith("_") and not p.startswith("__") for p in target.split("."))
            hidden_name = name is not None and name.startswith("_") and not name.startswith("__")
            if target != module and (hidden_module or hidden_name):
                offences.append(f"{MODULES[module].relative_to(SRC)}:{line} imports {target}"
                                + (f".{name}" if name else ""))
    assert not offences, "private names used across modules:\n" + "\n".join(offences)


def test_no_two_modules_import_each_other():
    edges = _edges()
    pairs = sorted({tuple(sorted((a, b))) for a, targets in edges.items() for b in targets
                    if a in edges.get(b, ()) and "vggnet" not in (a, b)})
    assert not pairs, f"modules that import each other: {pairs}"


def test_init_does_not_import_models_at_all():
    assert "vggnet.models" not in _edges().get("vggnet.init", set())


def test_the_packages_import_graph_has_no_cycle_and_the_engine_knows_no_task():
    def package(module: str) -> str:
        parts = module.split(".")
        return parts[1] if len(parts) > 1 and (SRC / "vggnet" / parts[1]).is_dir() else module

    graph: dict[str, set[str]] = {}
    for a, targets in _edges().items():
        if a == "vggnet":  # the facade: lazily re-exports the public names of every part
            continue
        for b in targets:
            if package(a) != package(b) and b != "vggnet":
                graph.setdefault(package(a), set()).add(package(b))
    assert not graph.get("engine", set()) & set(PARTS), f"the engine imports a task package: {graph['engine']}"
    assert "vggnet.cli" not in graph.get("engine", set()) and "vggnet.cli" not in graph.get("data", set())

    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                pytest.fail(f"import cycle between packages: {' -> '.join(path + [node, nxt])}")
            if nxt not in state:
                visit(nxt, path + [node])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [])


def test_every_command_lives_in_a_cli_module_of_its_part():
    from vggnet.cli import COMMANDS

    for name, (module, _) in COMMANDS.items():
        assert module in MODULES, f"vgg {name}: {module} does not exist"
        assert module.endswith(".cli") or module in ("vggnet.info", "vggnet.demo"), \
            f"vgg {name} lives in {module}, not in a <part>/cli.py"
        text = MODULES[module].read_text()
        attr = name.replace("-", "_")
        assert f"def add_{attr}_arguments(" in text and f"def run_{attr}(" in text, module


def test_no_module_is_longer_than_about_600_lines():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text().splitlines())) > 650}
    assert not long, f"modules over ~600 lines: {long}"
