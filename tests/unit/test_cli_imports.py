"""The `koprogo` CLI uses the services through their commands and HTTP APIs, never their code:
no module under cli/src imports a service package (what they share lives in libs)."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CLI_SOURCES = REPO / "cli" / "src"


def service_packages() -> set[str]:
    """Every service's top-level package, as laid out under services/*/src."""
    return {
        package.name
        for package in REPO.glob("services/*/src/*")
        if package.is_dir() and (package / "__init__.py").is_file()
    }


def service_imports(source: str, packages: set[str]) -> list[str]:
    """`line: module` for each import of one of `packages` (statements and import_module/__import__ calls)."""
    found: list[str] = []
    for node in ast.walk(ast.parse(source)):
        modules: list[str] = []
        if isinstance(node, ast.Import):
            modules = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            modules = [node.module]
        elif isinstance(node, ast.Call) and _names_an_importer(node.func) and node.args:
            first = node.args[0]
            if isinstance(first, ast.Constant) and isinstance(first.value, str):
                modules = [first.value]
        found += [f"{node.lineno}: {m}" for m in modules if m.split(".")[0] in packages]
    return found


def _names_an_importer(func: ast.expr) -> bool:
    name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
    return name in {"import_module", "__import__"}


def test_the_service_packages_are_all_known() -> None:
    assert {"koprogo_gateway", "koprogo_cloud", "koprogo_node", "koprogo_router", "koprogo_ledger"} <= (
        service_packages()
    )


def test_the_check_finds_each_way_of_importing_a_service() -> None:
    source = (
        "import koprogo_gateway\n"
        "import os, koprogo_node.settings as s\n"
        "from koprogo_cloud.settings import CloudSettings\n"
        "from koprogo_shared.catalogue import CATALOGUE\n"
        "def f():\n"
        "    from koprogo_router import bootstrap\n"
        "    importlib.import_module('koprogo_ledger.settings')\n"
    )
    assert service_imports(source, service_packages()) == [
        "1: koprogo_gateway",
        "2: koprogo_node.settings",
        "3: koprogo_cloud.settings",
        "6: koprogo_router",
        "7: koprogo_ledger.settings",
    ]


def test_no_cli_module_imports_a_service_package() -> None:
    packages = service_packages()
    modules = sorted(CLI_SOURCES.rglob("*.py"))
    assert len(modules) > 10, modules  # the walk really reads the CLI
    offenders = {
        str(path.relative_to(REPO)): hits
        for path in modules
        if (hits := service_imports(path.read_text(encoding="utf-8"), packages))
    }
    assert offenders == {}
