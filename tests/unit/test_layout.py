"""What ships never needs the tests: no shipped package imports `tests`, and the harness ships."""

import ast
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def shipped_packages() -> list[str]:
    """The top-level packages `pip install .` puts in the distribution (pyproject's list)."""
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    patterns = pyproject["tool"]["setuptools"]["packages"]["find"]["include"]
    return [pattern.removesuffix("*") for pattern in patterns]


def imported_modules(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function, absolutely named."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module)
    return found


def test_the_harness_and_the_tools_ship_with_the_services():
    assert {"harness", "tools", "contracts", "outbox"} <= set(shipped_packages())


def test_no_shipped_module_imports_the_tests():
    offenders = [
        f"{path.relative_to(ROOT)} imports {module}"
        for package in shipped_packages()
        for path in sorted((ROOT / package).rglob("*.py"))
        for module in sorted(imported_modules(path))
        if module == "tests" or module.startswith("tests.")
    ]
    assert offenders == [], "\n".join(offenders)
