"""Dependencies between the package's modules point one way (STYLE.md)."""

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "lmalign_jax"


def _imports(path: Path) -> set[str]:
    """Absolute names of the lmalign_jax modules (and third-party roots) a file imports."""
    tree = ast.parse(path.read_text())
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    package = parts[:-1] if parts[-1] != "__init__" else parts[:-1]
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = list(package[: len(package) - node.level + 1])
                module = ".".join(base + ([node.module] if node.module else []))
                names.add(module)
                names.update(f"{module}.{alias.name}" for alias in node.names)
            else:
                names.add(node.module)
    return names


def _files(subpackage: str):
    return sorted((PACKAGE / subpackage).rglob("*.py"))


@pytest.mark.parametrize(
    "subpackage, forbidden",
    [
        ("solve", ("lmalign_jax.models", "lmalign_jax.core.align", "lmalign_jax.core.problem", "lmalign_jax.io", "lmalign_jax.cli")),
        ("models", ("lmalign_jax.solve", "lmalign_jax.core.align", "lmalign_jax.io", "lmalign_jax.cli")),
        ("recon", ("lmalign_jax.solve", "lmalign_jax.core.align", "lmalign_jax.models", "lmalign_jax.io", "lmalign_jax.cli")),
        ("io", ("jax", "lmalign_jax.solve", "lmalign_jax.core.align", "lmalign_jax.models", "lmalign_jax.recon", "lmalign_jax.cli")),
    ],
)
def test_dependencies_point_one_way(subpackage, forbidden):
    for path in _files(subpackage):
        for name in _imports(path):
            assert not any(name == f or name.startswith(f + ".") for f in forbidden), f"{path.name} imports {name}"


def test_library_modules_do_not_import_the_cli():
    for path in PACKAGE.rglob("*.py"):
        if "cli" in path.relative_to(PACKAGE).parts or path.name == "__main__.py":
            continue
        assert not any(n.startswith("lmalign_jax.cli") for n in _imports(path)), path


def test_import_resolution_sees_relative_imports():
    """Guard for the checks above: relative imports resolve to absolute module names."""
    assert "lmalign_jax.geometry" in _imports(PACKAGE / "models" / "jou.py")
    assert "lmalign_jax.solve._linearize" in _imports(PACKAGE / "solve" / "_lm.py")
    assert "lmalign_jax.models" in _imports(PACKAGE / "core" / "problem.py")
