"""The /mcp-chat PWA's tests, run by pytest: its unit tests and type check (Node.js, in web/), and its
browser tests (Playwright driving Debian's chromium) against a stack that `koprogo up` starts.

Node.js comes from the machine (>= 20) or, when it has none, from PyPI into .venv (scripts/build-web.sh,
which every test here runs first). Chromium missing fails these tests, never skips them:
`scripts/check-prerequisites.sh PYTHON browser` (run by `make test`) installs it as root on
Debian/Ubuntu, or says what to install.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
WEB = REPO / "web"
CHROMIUM = Path(os.environ.get("CHROMIUM_PATH", "/usr/bin/chromium"))
SCREENSHOTS = WEB / "test-results" / "screenshots"
# Where scripts/build-web.sh puts Node.js from PyPI when the machine has no Node.js >= 20.
VENV_NODE = REPO / ".venv" / "node-bin"


def node_path() -> str:
    """PATH with the .venv's Node.js first when build-web.sh installed one."""
    path = os.environ.get("PATH", "")
    return f"{VENV_NODE}{os.pathsep}{path}" if (VENV_NODE / "npx").exists() else path


def require_chromium() -> None:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(
            f"no chromium at {CHROMIUM}: the browser tests drive Debian's chromium, never a downloaded one "
            "(run scripts/check-prerequisites.sh, or set CHROMIUM_PATH)"
        )


def run_in_web(
    args: Sequence[str], *, timeout: float, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """`args` in web/, stdout and stderr together (printed: pytest shows it on failure, -s always)."""
    result = subprocess.run(
        list(args),
        cwd=WEB,
        env={**os.environ, "PATH": node_path(), "NO_COLOR": "1", "FORCE_COLOR": "0", **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
    )
    print(f"$ {' '.join(args)}  (in web/, exit {result.returncode})\n{result.stdout}")
    return result


@pytest.fixture(scope="session")
def web_app() -> Path:
    """web/ with its dependencies installed and web/dist built from the current sources."""
    return build_web_app()


def build_web_app() -> Path:
    """`scripts/build-web.sh`: npm ci and astro build, each only when its inputs changed."""
    build = subprocess.run(
        [str(REPO / "scripts" / "build-web.sh")],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=900,
    )
    assert build.returncode == 0, f"scripts/build-web.sh failed:\n{build.stdout}"
    assert (WEB / "dist" / "index.html").is_file(), build.stdout
    return WEB / "dist"
