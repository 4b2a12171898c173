"""The packages form layers without cycles: each imports only the layers below it (function-level
imports included), so a newcomer can read them bottom up."""
import ast
import os

import pytest

MLIP = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "mlip")

# package -> the mlip packages and modules it may import (besides itself)
ALLOWED = {
    "ops": {"irreps", "errors"},
    "data": {"errors"},
    "nn": {"irreps", "errors", "ops", "data"},
    "train": {"irreps", "errors", "ops", "data", "nn", "checkpoint", "perf"},
    "deploy": {"irreps", "errors", "ops", "data", "nn", "checkpoint", "perf"},
}


def imported_mlip_parts(package: str):
    """(file, first component after 'mlip.') of every import of mlip code in ``package``."""
    for root, _, files in os.walk(os.path.join(MLIP, package)):
        for name in files:
            if not name.endswith(".py"):
                continue
            path = os.path.join(root, name)
            for node in ast.walk(ast.parse(open(path).read(), path)):
                names = []
                if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    names = [node.module]
                elif isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                for module in names:
                    parts = module.split(".")
                    if parts[0] == "mlip" and len(parts) > 1:
                        yield os.path.relpath(path, MLIP), parts[1]


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_package_imports_only_lower_layers(package):
    bad = sorted({(f, part) for f, part in imported_mlip_parts(package)
                  if part != package and part not in ALLOWED[package]})
    assert not bad, f"{package} imports layers above it: {bad}"
