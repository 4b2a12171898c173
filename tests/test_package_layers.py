"""The packages of mlip form layers: a module imports only from its own package or from a
lower layer (function-level imports included), so there are no package cycles and a newcomer
can read the code bottom-up. The layers are drawn in docs/architecture.md."""
import ast
import os
from typing import Dict, Set

import pytest

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mlip")

# lowest first; units on one line are siblings and must not import each other
LAYERS = [
    {"errors"},
    {"irreps", "perf", "examples"},
    {"ops", "data"},
    {"nn"},
    {"checkpoint"},
    {"train", "deploy"},
    {"validate"},
    {"cli", "demo", "benchmark_cli", "__init__"},
    {"__main__"},
]
LAYER_OF = {unit: i for i, units in enumerate(LAYERS) for unit in units}


def unit_of(path: str) -> str:
    """The package (or top-level module) a file of mlip belongs to: mlip/nn/mace.py -> nn."""
    rel = os.path.relpath(path, ROOT)
    first = rel.split(os.sep)[0]
    return first[:-3] if first.endswith(".py") else first


def imported_units(path: str) -> Set[str]:
    with open(path) as fh:
        tree = ast.parse(fh.read(), path)
    found: Set[str] = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
            if node.module == "mlip":  # from mlip import x: x is the unit
                names = [f"mlip.{a.name}" for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "mlip" and len(parts) > 1:
                found.add(parts[1])
    return found


def dependencies() -> Dict[str, Dict[str, Set[str]]]:
    """unit -> imported unit -> the files that import it."""
    deps: Dict[str, Dict[str, Set[str]]] = {}
    for folder, _, files in os.walk(ROOT):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                unit = unit_of(path)
                for other in imported_units(path) - {unit}:
                    deps.setdefault(unit, {}).setdefault(other, set()).add(os.path.relpath(path, ROOT))
    return deps


def test_every_unit_has_a_layer():
    units = {unit_of(os.path.join(folder, name)) for folder, _, files in os.walk(ROOT) for name in files
             if name.endswith(".py")}
    assert not units - set(LAYER_OF), f"place these in LAYERS (and docs/architecture.md): {units - set(LAYER_OF)}"


@pytest.mark.parametrize("unit", sorted(LAYER_OF))
def test_imports_go_down_only(unit):
    upward = {other: sorted(files) for other, files in dependencies().get(unit, {}).items()
              if LAYER_OF.get(other, -1) >= LAYER_OF[unit]}
    assert not upward, f"mlip.{unit} imports from its own layer or above: {upward}"


def test_the_check_sees_a_cycle(tmp_path):
    """The scanner finds both function-level imports and `from mlip import x`."""
    path = tmp_path / "m.py"
    path.write_text("def f():\n    from mlip.train import trainer\n    from mlip import deploy\n")
    assert imported_units(str(path)) == {"train", "deploy"}
