"""The /mcp-chat PWA in a real browser: each Playwright spec (web/tests-e2e) against a stack started
as `make up` starts it (`koprogo up`, the app built from web/), on a data folder and a port of its own.

The specs sign in by pasting the dev token (KOPROGO_TOKEN), as a production user pastes theirs; the
one-time link scenario gets a fresh link from `koprogo login-link` (KOPROGO_LOGIN_URL), since each
link works once. Screenshots (360 and 1280 px per scenario) land in web/test-results/screenshots.
The gateway serves a copy of web/dist taken at the start (PWA_DIR), so that a rebuild of the checkout
while the specs run (another `make up`, an editor's `astro build`) cannot pull the page from under them.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from koprogo_cli.dev_auth import dev_token_path
from koprogo_cli.instance import leftovers, read_record, terminate
from koprogo_cli.ports import free_port
from tests.conftest import postgres_dir
from tests.e2e.test_grid_tasks import FIXTURES
from tests.e2e.test_koprogo_up import koprogo
from tests.web.conftest import CHROMIUM, SCREENSHOTS, WEB, build_web_app, require_chromium, run_in_web

SPECS = sorted(path.name for path in (WEB / "tests-e2e").glob("*.spec.ts"))
# An empty parametrization would be skipped: no specs is a broken checkout, and fails.
assert SPECS, f"no browser specs in {WEB / 'tests-e2e'}"
# What `koprogo up` must not inherit from a test run: it starts its own servers and secrets.
FOREIGN = (
    "NATS_URL",
    "DATABASE_URL",
    "JWT_SECRET",
    "JWT_SECRET_FILE",
    "JWKS_URL",
    "AUTH_DISABLED",
    "PWA_DIR",
)


@dataclass(frozen=True)
class PwaStack:
    url: str
    data: Path
    token: str = field(repr=False)
    env: dict[str, str] = field(repr=False)

    def login_url(self) -> str | None:
        """A fresh one-time sign-in link (`koprogo login-link`), or None where the command does not exist."""
        made = koprogo("login-link", "--data-dir", str(self.data), env=self.env)
        if made.returncode != 0:
            assert "invalid choice" in made.stderr, made.stdout + made.stderr
            return None
        links = [word for word in made.stdout.split() if word.startswith("http")]
        assert links, made.stdout
        return links[-1]


@pytest.fixture(scope="module")
def pwa_stack() -> Iterator[PwaStack]:
    require_chromium()
    shutil.rmtree(SCREENSHOTS, ignore_errors=True)
    env = {k: v for k, v in os.environ.items() if k not in FOREIGN and not k.startswith("CONTENT_KEY")}
    with postgres_dir() as folder:  # `koprogo up` keeps an embedded PostgreSQL in its data folder
        data = folder / "data"
        port = free_port()
        env["PWA_DIR"] = str(snapshot_of_the_app(folder / "pwa"))
        try:
            up = koprogo("up", "--detach", "--no-demo", "--data-dir", str(data), "--port", str(port), env=env)
            assert up.returncode == 0, up.stdout + up.stderr
            url = f"http://127.0.0.1:{port}"
            page = httpx.get(f"{url}/mcp-chat/", timeout=30)
            assert page.status_code == 200 and "<html" in page.text.lower(), (
                f"the gateway does not serve the app at /mcp-chat/: {page.status_code} {page.text[:300]}"
            )
            yield PwaStack(url, data, dev_token_path(data).read_text().strip(), env)
        finally:
            stop_stack(data, env)
            print(f"screenshots: {SCREENSHOTS}")


def snapshot_of_the_app(target: Path, attempts: int = 3) -> Path:
    """A complete copy of web/dist; built again when a concurrent `astro build` had emptied it."""
    for _ in range(attempts):
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(build_web_app(), target)
        if all((target / name).is_file() for name in ("index.html", "sw.js", "manifest.webmanifest")):
            return target
        time.sleep(5)
    pytest.fail(f"web/dist stayed incomplete over {attempts} builds (something else rebuilds it meanwhile?)")


def stop_stack(data: Path, env: dict[str, str]) -> None:
    """`koprogo down`; should it fail, the stack's processes as its record names them (nothing is left running)."""
    down = koprogo("down", "--data-dir", str(data), env=env)
    print(down.stdout + down.stderr)
    if down.returncode == 0 and not leftovers(data):
        return
    # Its `koprogo up` first (it stops what it started, in order), if that pid still is ours.
    if (record := read_record(data)) is not None and record.pid > 0:
        with contextlib.suppress(OSError):
            if str(data).encode() in Path(f"/proc/{record.pid}/cmdline").read_bytes():
                terminate([record.pid], timeout=60)
    still = terminate(leftovers(data))
    assert not still, f"processes {still} of the stack on {data} did not stop"


@pytest.mark.timeout(900)
@pytest.mark.parametrize("spec", SPECS)
def test_browser_scenario(pwa_stack: PwaStack, spec: str) -> None:
    env = {
        "KOPROGO_URL": pwa_stack.url,
        "KOPROGO_TOKEN": pwa_stack.token,
        "KOPROGO_FIXTURES": str(FIXTURES),
        "KOPROGO_SCREENSHOTS": str(SCREENSHOTS),
        "CHROMIUM_PATH": str(CHROMIUM),
        # Playwright drives Debian's chromium; it must never fetch a browser of its own.
        "PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD": "1",
    }
    if "signin-link" in spec and (link := pwa_stack.login_url()):
        env["KOPROGO_LOGIN_URL"] = link
    started = time.monotonic()
    result = run_in_web(
        [
            "npx", "--no-install", "playwright", "test", f"tests-e2e/{spec}",
            "--output", f"test-results/playwright/{spec.removesuffix('.spec.ts')}",
        ],
        timeout=840,
        env=env,
    )  # fmt: skip
    print(
        f"{spec}: exit {result.returncode} in {time.monotonic() - started:.0f} s; screenshots in {SCREENSHOTS}"
    )
    if result.returncode != 0:
        pytest.fail(f"{spec} failed:\n{result.stdout}", pytrace=False)
