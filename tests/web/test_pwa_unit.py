"""The web app's own checks: its Vitest unit tests (queue, idempotency, stores, parsing) and
svelte-check over every component and TypeScript file, warnings included."""

from __future__ import annotations

from pathlib import Path

from tests.web.conftest import run_in_web


def test_the_apps_unit_tests_pass(web_app: Path) -> None:
    result = run_in_web(["npx", "--no-install", "vitest", "run"], timeout=600)
    assert result.returncode == 0, result.stdout


def test_the_app_type_checks_with_no_error_and_no_warning(web_app: Path) -> None:
    result = run_in_web(
        ["npx", "--no-install", "svelte-check", "--tsconfig", "./tsconfig.json", "--fail-on-warnings"],
        timeout=600,
    )
    assert result.returncode == 0, result.stdout
