"""docs/architecture.md's import graph is the code's: every module of src/nsl_lab is listed with
exactly the nsl_lab modules it imports at module level, and every import points down the layers."""
from __future__ import annotations

import ast
import fnmatch
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "src" / "nsl_lab"
DOC = ROOT / "docs" / "architecture.md"


def module_name(path: Path) -> str:
    """``src/nsl_lab/attacks/apgd.py`` -> ``attacks.apgd``; a package's ``__init__`` is the package
    (the top level is ``nsl_lab``)."""
    parts = list(path.relative_to(PACKAGE).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts) or "nsl_lab"


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imported_modules(name: str) -> set[str]:
    """The nsl_lab modules ``name`` imports at module level (``if TYPE_CHECKING:`` blocks left out)."""
    path = MODULES[name]
    package = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found: set[str] = set()

    def add(dotted: str, aliases: list[str]) -> None:
        if dotted != "nsl_lab" and not dotted.startswith("nsl_lab."):
            return
        base = dotted.removeprefix("nsl_lab").removeprefix(".") or "nsl_lab"
        for alias in aliases:  # `from nsl_lab import multirun` imports the module multirun
            child = alias if base == "nsl_lab" else f"{base}.{alias}"
            found.add(child if child in MODULES else base)

    def visit(nodes: list[ast.stmt]) -> None:
        for node in nodes:
            if isinstance(node, ast.If):
                visit(node.orelse if is_type_checking(node.test) else node.body + node.orelse)
            elif isinstance(node, ast.Try):
                visit(node.body + [s for h in node.handlers for s in h.body] + node.orelse + node.finalbody)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name == "nsl_lab" or alias.name.startswith("nsl_lab."):
                        found.add(alias.name.removeprefix("nsl_lab.") if alias.name != "nsl_lab" else "nsl_lab")
            elif isinstance(node, ast.ImportFrom):
                dotted = node.module or ""
                if node.level:
                    base = ["nsl_lab", *package] if package else ["nsl_lab"]
                    base = base[: len(base) - (node.level - 1)]
                    dotted = ".".join(base + ([dotted] if dotted else []))
                add(dotted, [alias.name for alias in node.names])

    visit(ast.parse(path.read_text()).body)
    found.discard(name)
    return found


def expand(item: str) -> list[str]:
    """``attacks.{apgd,square}`` -> ``attacks.apgd``, ``attacks.square``."""
    match = re.fullmatch(r"(.*)\{(.*)\}(.*)", item)
    if not match:
        return [item]
    head, options, tail = match.groups()
    return [f"{head}{option}{tail}" for option in options.split(",")]


def documented_graph(text: str) -> tuple[dict[str, tuple[int, list[str]]], list[str]]:
    """{module: (layer index, documented imports)} from the code block under "The import graph"
    of ``text``, and the layers' names bottom to top."""
    block = text.split("## The import graph, by layer", 1)[1].split("```", 2)[1]
    lines: list[str] = []
    for line in block.strip("\n").splitlines():
        if lines and lines[-1].rstrip().endswith(","):
            lines[-1] = lines[-1].rstrip() + " " + line.strip()  # a wrapped list of imports
        else:
            lines.append(line)
    graph: dict[str, tuple[int, list[str]]] = {}
    layers: list[str] = []
    for line in lines:
        if not line[:1].isspace():
            layer, line = line.split(None, 1)
            layers.append(layer)
        if layers[-1] == "scripts":
            continue
        line = re.sub(r"\([^)]*\)", "", line)  # descriptions such as "(FeatureStore, CSR files)"
        for entry in line.split(";"):
            left, _, right = entry.partition("->")
            imports = [item for part in right.split(", ") if part.strip() for item in expand(part.strip())]
            for module in (m.strip() for m in left.split(", ") if m.strip()):
                for name in expand(module):
                    assert name not in graph, f"{name} is listed twice in docs/architecture.md"
                    graph[name] = (len(layers) - 1, imports)
    return graph, layers


GRAPH, LAYERS = documented_graph(DOC.read_text())


def covers(documented: str, module: str) -> bool:
    return fnmatch.fnmatchcase(module, documented)


def differences(name: str, graph: dict[str, tuple[int, list[str]]]) -> tuple[list[str], list[str]]:
    """(imported but not documented, documented but not imported) for module ``name``."""
    real, documented = imported_modules(name), graph[name][1]
    undocumented = sorted(m for m in real if not any(covers(d, m) for d in documented))
    stale = sorted(d for d in documented if not any(covers(d, m) for m in real))
    return undocumented, stale


def test_every_module_is_documented_once_and_nothing_else() -> None:
    assert sorted(set(MODULES) - set(GRAPH)) == [], "modules missing from docs/architecture.md"
    assert sorted(set(GRAPH) - set(MODULES)) == [], "docs/architecture.md lists modules that do not exist"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_documented_imports_are_the_real_ones(name: str) -> None:
    assert differences(name, GRAPH) == ([], []), f"{name}: (imported but not documented, documented but not imported)"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_imports_point_down_the_layers(name: str) -> None:
    layer = GRAPH[name][0]
    above = sorted(m for m in imported_modules(name) if GRAPH[m][0] > layer)
    assert above == [], f"{name} ({LAYERS[layer]}) imports modules of a higher layer"


def test_the_checker_sees_a_wrong_entry() -> None:
    """Not vacuous: a doc whose line drops a real import and adds a false one, or that leaves a
    module out, is caught."""
    text = DOC.read_text()
    line = "attacks.apgd -> attacks.steepest_ascent, errors, modules.backbone"
    assert line in text and imported_modules("attacks.apgd") == {"attacks.steepest_ascent", "errors",
                                                                 "modules.backbone"}
    wrong, _ = documented_graph(text.replace(line, "attacks.apgd -> attacks.steepest_ascent, losses, modules.backbone"))
    assert differences("attacks.apgd", wrong) == (["errors"], ["losses"])
    missing, _ = documented_graph(text.replace("\n" + " " * 13 + line, ""))
    assert "attacks.apgd" not in missing and "attacks.apgd" in GRAPH
    assert not covers("graphs.*", "graph") and covers("graphs.*", "graphs.store")
