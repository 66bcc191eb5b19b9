"""scripts/fetch_js.py installs package-lock.json's packages from a real (local) HTTP registry."""

from __future__ import annotations

import base64
import hashlib
import http.server
import importlib.util
import io
import json
import tarfile
import threading
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "scripts" / "fetch_js.py"
spec = importlib.util.spec_from_file_location("fetch_js", SCRIPT)
fetch_js = importlib.util.module_from_spec(spec)
spec.loader.exec_module(fetch_js)


def tarball(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            archive.addfile(info, io.BytesIO(content))
    return buffer.getvalue()


def package(name: str, version: str, extra: dict[str, bytes] | None = None) -> bytes:
    manifest = json.dumps({"name": name, "version": version}).encode()
    return tarball({"package/package.json": manifest, "package/lib.min.js": b"window.lib=1;", **(extra or {})})


def sri(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


@pytest.fixture
def registry():
    """A registry serving {url path: bytes}; records the paths asked for."""
    served: dict[str, bytes] = {}
    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            asked.append(self.path)
            body = served.get(self.path)
            self.send_response(200 if body is not None else 404)
            self.end_headers()
            self.wfile.write(body or b"not found")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/", served, asked
    server.shutdown()
    server.server_close()


def write_lock(root: Path, entries: dict[str, tuple[str, str]]) -> None:
    packages = {"": {"name": "site", "dependencies": {n: v for n, (v, _) in entries.items()}}}
    for name, (version, integrity) in entries.items():
        packages[f"node_modules/{name}"] = {"version": version, "integrity": integrity}
    (root / "package-lock.json").write_text(json.dumps({"lockfileVersion": 3, "packages": packages}))


def test_installs_the_locked_tarball_once_and_again_when_the_lock_changes(tmp_path, registry):
    url, served, asked = registry
    v1, v2 = package("plotlike", "1.0.0"), package("plotlike", "1.1.0")
    served["/plotlike/-/plotlike-1.0.0.tgz"] = v1
    served["/plotlike/-/plotlike-1.1.0.tgz"] = v2
    write_lock(tmp_path, {"plotlike": ("1.0.0", sri(v1))})

    assert fetch_js.install(tmp_path, url) == ["plotlike@1.0.0"]
    installed = tmp_path / "node_modules" / "plotlike"
    assert (installed / "lib.min.js").read_bytes() == b"window.lib=1;"
    assert json.loads((installed / "package.json").read_text())["version"] == "1.0.0"

    assert fetch_js.install(tmp_path, url) == []  # up to date: nothing downloaded
    assert asked == ["/plotlike/-/plotlike-1.0.0.tgz"]

    write_lock(tmp_path, {"plotlike": ("1.1.0", sri(v2))})
    assert fetch_js.install(tmp_path, url) == ["plotlike@1.1.0"]
    assert json.loads((installed / "package.json").read_text())["version"] == "1.1.0"


def test_a_scoped_package_is_fetched_from_npm_s_layout(tmp_path, registry):
    url, served, _ = registry
    data = package("@scope/widget", "2.0.0")
    served["/@scope/widget/-/widget-2.0.0.tgz"] = data
    write_lock(tmp_path, {"@scope/widget": ("2.0.0", sri(data))})
    assert fetch_js.install(tmp_path, url) == ["@scope/widget@2.0.0"]
    assert (tmp_path / "node_modules" / "@scope" / "widget" / "lib.min.js").is_file()


def test_a_tarball_that_does_not_match_the_lockfile_is_refused_and_nothing_is_written(tmp_path, registry):
    url, served, _ = registry
    served["/plotlike/-/plotlike-1.0.0.tgz"] = package("plotlike", "1.0.0", {"package/evil.js": b"steal()"})
    write_lock(tmp_path, {"plotlike": ("1.0.0", sri(package("plotlike", "1.0.0")))})
    with pytest.raises(fetch_js.FetchError, match=r"does not match package-lock\.json's integrity"):
        fetch_js.install(tmp_path, url)
    assert not (tmp_path / "node_modules" / "plotlike").exists()


def test_a_tarball_escaping_its_folder_is_refused(tmp_path, registry):
    url, served, _ = registry
    data = tarball({"package/package.json": b"{}", "package/../../outside.js": b"x"})
    served["/plotlike/-/plotlike-1.0.0.tgz"] = data
    write_lock(tmp_path, {"plotlike": ("1.0.0", sri(data))})
    with pytest.raises(fetch_js.FetchError, match="cannot unpack"):
        fetch_js.install(tmp_path, url)
    assert not (tmp_path / "outside.js").exists()
    assert not (tmp_path / "node_modules" / "plotlike").exists()


def test_a_missing_package_or_an_unreachable_registry_is_a_clear_error(tmp_path, registry):
    url, _, _ = registry
    write_lock(tmp_path, {"plotlike": ("9.9.9", "sha512-AAAA")})
    with pytest.raises(fetch_js.FetchError, match=r"cannot download .*/plotlike/-/plotlike-9\.9\.9\.tgz"):
        fetch_js.install(tmp_path, url)
    with pytest.raises(fetch_js.FetchError, match="cannot download"):
        fetch_js.install(tmp_path, "http://127.0.0.1:9/")


def test_a_lockfile_without_integrity_is_refused(tmp_path):
    (tmp_path / "package-lock.json").write_text(
        json.dumps({"lockfileVersion": 3, "packages": {"node_modules/x": {"version": "1.0.0"}}})
    )
    with pytest.raises(fetch_js.FetchError, match="no version or integrity"):
        fetch_js.install(tmp_path, "http://127.0.0.1:9/")


def test_the_project_lockfile_pins_what_the_pages_serve():
    from daqbroker_site.static_vendor import VENDOR_FILES

    locked = {name for _, name, _, _ in fetch_js.locked_packages(SCRIPT.parent.parent)}
    assert {package for package, _ in VENDOR_FILES.values()} <= locked


def test_what_npm_ci_installed_is_taken_as_it_is_offline(tmp_path):
    """A node_modules made by ``npm ci`` (on an air-gapped machine, copied in) is used without a download."""
    data = package("plotlike", "1.0.0")
    write_lock(tmp_path, {"plotlike": ("1.0.0", sri(data))})
    folder = tmp_path / "node_modules" / "plotlike"
    folder.mkdir(parents=True)
    (folder / "package.json").write_text(json.dumps({"name": "plotlike", "version": "1.0.0"}))
    npm_record = {"packages": {"node_modules/plotlike": {"version": "1.0.0", "integrity": sri(data)}}}
    (tmp_path / "node_modules" / ".package-lock.json").write_text(json.dumps(npm_record))
    assert fetch_js.install(tmp_path, "http://127.0.0.1:9/") == []  # nothing listens there: no download tried
    npm_record["packages"]["node_modules/plotlike"]["integrity"] = "sha512-other"
    (tmp_path / "node_modules" / ".package-lock.json").write_text(json.dumps(npm_record))
    with pytest.raises(fetch_js.FetchError, match="cannot download"):
        fetch_js.install(tmp_path, "http://127.0.0.1:9/")  # npm installed another build: fetched again
