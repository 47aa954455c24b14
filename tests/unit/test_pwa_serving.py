"""The gateway serves the built chat app at /mcp-chat/: right types, caching and page policy, nothing
outside its folder, a rebuild without a restart, and a clear 503 when the app is not built.

The app's routes need no NATS nor PostgreSQL (no token, no lifespan): the app is served from
`create_app` as is, on a temporary PWA_DIR shaped like Astro's output."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from koprogo_gateway.entrypoints.http.app import create_app
from koprogo_gateway.entrypoints.http.pwa_files import PwaFiles, inline_script_hashes
from koprogo_gateway.settings import GatewaySettings

REPO_WEB_DIST = Path(__file__).resolve().parents[2] / "web" / "dist"
BOOT = '(()=>{window.x="a&amp;b <b>";})();'
MODULE = "import('/mcp-chat/_astro/App.abc123.js');"
REBUILT = "console.log('rebuilt');"


def sha(text: str) -> str:
    return base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def page(*scripts: str) -> str:
    inline = "".join(f"<script>{s}</script>" for s in scripts)
    return (
        '<!DOCTYPE html><html lang="fr"><head><meta charset="utf-8">'
        '<script type="module" src="/mcp-chat/_astro/hoisted.js"></script></head>'
        f"<body><style>a{{color:red}}</style>{inline}<p>Chargement…</p></body></html>"
    )


@pytest.fixture
def dist(tmp_path: Path) -> Path:
    root = tmp_path / "dist"
    (root / "_astro").mkdir(parents=True)
    (root / "icons").mkdir()
    (root / "index.html").write_text(page(BOOT, MODULE))
    (root / "_astro" / "App.abc123.js").write_text("export default 1;")
    (root / "_astro" / "index.abc123.css").write_text("body{margin:0}")
    (root / "sw.js").write_text("importScripts('workbox-1.js');")
    (root / "workbox-1.js").write_text("self.x=1;")
    (root / "manifest.webmanifest").write_text('{"name":"KoproGo"}')
    (root / "icons" / "icon.svg").write_text("<svg xmlns='http://www.w3.org/2000/svg'/>")
    (root / "icons" / "icon-192.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    (tmp_path / "secret.txt").write_text("outside the app")
    return root


def client(pwa_dir: Path | None) -> TestClient:
    settings = GatewaySettings(auth_disabled=True, pwa_dir=pwa_dir)
    return TestClient(create_app(settings), follow_redirects=False)


def test_the_page_is_served_with_a_policy_allowing_exactly_its_inline_scripts(dist: Path) -> None:
    got = client(dist).get("/mcp-chat/")
    assert got.status_code == 200
    assert got.headers["content-type"] == "text/html; charset=utf-8"
    assert got.headers["cache-control"] == "no-cache"
    assert got.headers["x-content-type-options"] == "nosniff"
    assert got.headers["referrer-policy"] == "no-referrer"
    policy = got.headers["content-security-policy"]
    script_src = next(d for d in policy.split("; ") if d.startswith("script-src "))
    assert script_src == f"script-src 'self' 'sha256-{sha(BOOT)}' 'sha256-{sha(MODULE)}'"
    for directive in (
        "default-src 'self'",
        "style-src 'self' 'unsafe-inline'",
        "img-src 'self' data: blob:",
        "connect-src 'self'",
        "worker-src 'self'",
        "manifest-src 'self'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
        "object-src 'none'",
    ):
        assert directive in policy.split("; "), directive


def test_a_rebuilt_page_is_served_with_its_new_policy_without_a_restart(dist: Path) -> None:
    gateway = client(dist)
    first = gateway.get("/mcp-chat/")
    (dist / "index.html").write_text(page(REBUILT))
    second = gateway.get("/mcp-chat/")
    assert "rebuilt" in second.text and second.headers["etag"] != first.headers["etag"]
    assert f"'sha256-{sha(REBUILT)}'" in second.headers["content-security-policy"]
    assert sha(BOOT) not in second.headers["content-security-policy"]


@pytest.mark.parametrize(
    ("path", "media_type", "cache"),
    [
        ("/mcp-chat/_astro/App.abc123.js", "text/javascript; charset=utf-8", "public, max-age=31536000, immutable"),
        ("/mcp-chat/_astro/index.abc123.css", "text/css; charset=utf-8", "public, max-age=31536000, immutable"),
        ("/mcp-chat/sw.js", "text/javascript; charset=utf-8", "no-cache"),
        ("/mcp-chat/workbox-1.js", "text/javascript; charset=utf-8", "no-cache"),
        ("/mcp-chat/manifest.webmanifest", "application/manifest+json", "no-cache"),
        ("/mcp-chat/icons/icon.svg", "image/svg+xml", "no-cache"),
        ("/mcp-chat/icons/icon-192.png", "image/png", "no-cache"),
    ],
)  # fmt: skip
def test_each_kind_of_file_has_its_type_and_caching(
    dist: Path, path: str, media_type: str, cache: str
) -> None:
    got = client(dist).get(path)
    assert got.status_code == 200
    assert got.headers["content-type"] == media_type
    assert got.headers["cache-control"] == cache
    assert got.headers["x-content-type-options"] == "nosniff"
    assert "content-security-policy" not in got.headers  # pages only


def test_an_unchanged_file_is_a_304_for_its_etag(dist: Path) -> None:
    gateway = client(dist)
    etag = gateway.get("/mcp-chat/sw.js").headers["etag"]
    again = gateway.get("/mcp-chat/sw.js", headers={"If-None-Match": etag})
    assert again.status_code == 304 and again.content == b""
    (dist / "sw.js").write_text("// rebuilt")
    assert gateway.get("/mcp-chat/sw.js", headers={"If-None-Match": etag}).status_code == 200


def test_text_files_go_gzipped_to_a_browser_that_accepts_it(dist: Path) -> None:
    script = "export const words = '" + "copropriété " * 400 + "';"
    (dist / "_astro" / "App.abc123.js").write_text(script)
    gateway = client(dist)
    path = "/mcp-chat/_astro/App.abc123.js"
    zipped = gateway.get(path, headers={"Accept-Encoding": "gzip, deflate, br"})
    assert zipped.headers["content-encoding"] == "gzip"
    assert zipped.headers["vary"] == "Accept-Encoding"
    assert int(zipped.headers["content-length"]) < len(script.encode()) / 10
    assert zipped.text == script  # httpx decodes it: the same file
    plain = gateway.get(path, headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and plain.content == script.encode()
    refused = gateway.get(path, headers={"Accept-Encoding": "gzip;q=0"})
    assert "content-encoding" not in refused.headers
    # Two representations, two ETags; each revalidates as itself.
    assert plain.headers["etag"] != zipped.headers["etag"]
    again = gateway.get(path, headers={"Accept-Encoding": "gzip", "If-None-Match": zipped.headers["etag"]})
    assert again.status_code == 304
    # Images are compressed already.
    png = gateway.get("/mcp-chat/icons/icon-192.png", headers={"Accept-Encoding": "gzip"})
    assert "content-encoding" not in png.headers and "vary" not in png.headers


@pytest.mark.parametrize(
    "path",
    [
        "/mcp-chat/%2e%2e/secret.txt",
        "/mcp-chat/_astro/%2e%2e/%2e%2e/secret.txt",
        "/mcp-chat/..%2fsecret.txt",
        "/mcp-chat/%2e%2e%5csecret.txt",
        "/mcp-chat/.hidden",
        "/mcp-chat/escape/secret.txt",
        "/mcp-chat/missing.js",
        "/mcp-chat/_astro",
    ],
)
def test_nothing_outside_the_app_nor_missing_is_served(dist: Path, path: str) -> None:
    (dist / ".hidden").write_text("dotfile")
    (dist / "escape").symlink_to(dist.parent)  # a symlink out of the folder
    got = client(dist).get(path)
    assert got.status_code == 404, got.text
    assert "outside the app" not in got.text and "dotfile" not in got.text


def test_the_file_reader_refuses_traversal_spelled_any_way(dist: Path) -> None:
    files = PwaFiles(dist)
    for relative in (
        "../secret.txt",
        "_astro/../../secret.txt",
        "..\\secret.txt",
        "sw.js\x00",
        "/../secret.txt",
    ):
        assert files.read(relative) is None, relative
    found = files.read("_astro/../sw.js")  # `..` is refused even when it stays inside
    assert found is None


def test_root_and_the_bare_path_lead_to_the_app(dist: Path) -> None:
    gateway = client(dist)
    for path in ("/", "/mcp-chat"):
        got = gateway.get(path)
        assert got.status_code == 307 and got.headers["location"] == "/mcp-chat/", path


def test_an_app_not_built_is_a_503_saying_how_to_build_it(tmp_path: Path) -> None:
    empty = tmp_path / "dist"
    empty.mkdir()
    for gateway in (client(empty), client(None), client(tmp_path / "nowhere")):
        data = gateway.get("/mcp-chat/")
        assert data.status_code == 503
        assert data.json()["error"] == "pwa_not_built"
        assert "make up" in data.json()["message"] and "npm run build" in data.json()["message"]
        assert data.headers["cache-control"] == "no-store"
        browser = gateway.get("/mcp-chat/", headers={"Accept": "text/html,application/xhtml+xml"})
        assert browser.status_code == 503 and browser.headers["content-type"].startswith("text/html")
        assert "npm run build" in browser.text
        assert gateway.get("/mcp-chat/sw.js").status_code == 503


def test_the_docs_keep_their_own_policy(dist: Path) -> None:
    docs = client(dist).get("/docs")
    assert docs.status_code == 200
    assert "script-src 'self' 'unsafe-inline'" in docs.headers["content-security-policy"]


def test_the_default_app_folder_is_the_checkouts_web_dist(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("PWA_DIR", raising=False)
    assert GatewaySettings(auth_disabled=True).pwa_dir == REPO_WEB_DIST
    monkeypatch.setenv("PWA_DIR", "")
    assert GatewaySettings(auth_disabled=True).pwa_dir is None


def test_the_real_builds_inline_scripts_are_all_hashed() -> None:
    """Astro's own output (`make test` builds web/dist first): each inline script, found here
    independently of the parser, has its hash in the page's policy."""
    html = (REPO_WEB_DIST / "index.html").read_text()
    inline = re.findall(r"<script>(.*?)</script>", html, flags=re.S)
    assert inline, "Astro's page starts its islands with inline scripts"
    policy = client(REPO_WEB_DIST).get("/mcp-chat/").headers["content-security-policy"]
    for script in inline:
        assert f"'sha256-{sha(script)}'" in policy
    assert len(inline_script_hashes(html)) == len(set(inline))
