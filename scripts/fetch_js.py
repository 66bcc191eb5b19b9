#!/usr/bin/env python3
"""Install the browser libraries pinned in package-lock.json into node_modules/, without Node.js.

The pages are served with no CDN (they must work on an instrument network with no internet), so their
JavaScript is installed next to the code from the npm registry, exactly as ``npm ci`` would lay it out.
Node.js is not needed: each package's tarball is downloaded from the registry, checked against the
lockfile's ``integrity`` digest (a tarball that does not match is refused, nothing is written) and
unpacked into ``node_modules/<name>``. A package already installed at the locked version with the same
digest is left alone, so this is quick when nothing changed.

    python3 scripts/fetch_js.py            # install or check what package-lock.json pins
    NPM_CONFIG_REGISTRY=https://npm.example.org/ python3 scripts/fetch_js.py   # through a mirror

Standard library only: it runs before the virtual environment has anything in it.
"""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_REGISTRY = "https://registry.npmjs.org/"
MARKER = ".daqbroker-integrity"  # the lockfile digest a package was installed from
TIMEOUT_S = 60


class FetchError(Exception):
    pass


def locked_packages(root: Path) -> list[tuple[Path, str, str, str]]:
    """(install folder, package name, version, integrity) for every package the lockfile installs."""
    lockfile = root / "package-lock.json"
    try:
        lock = json.loads(lockfile.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise FetchError(f"cannot read {lockfile}: {exc}") from exc
    if lock.get("lockfileVersion") not in (2, 3):
        raise FetchError(f"{lockfile}: lockfileVersion {lock.get('lockfileVersion')!r} is not supported (2 or 3)")
    found = []
    for location, entry in lock.get("packages", {}).items():
        if not location or entry.get("link") or entry.get("dev"):
            continue  # the project itself, workspace links and development-only packages
        name = entry.get("name") or location.rsplit("node_modules/", 1)[-1]
        version, integrity = entry.get("version"), entry.get("integrity")
        if not version or not integrity:
            raise FetchError(f"{lockfile}: {location} has no version or integrity; regenerate the lockfile")
        found.append((root / location, name, version, integrity))
    return found


def tarball_url(name: str, version: str, registry: str) -> str:
    # npm's layout: <registry>/<name>/-/<name without scope>-<version>.tgz
    return f"{registry.rstrip('/')}/{name}/-/{name.rsplit('/', 1)[-1]}-{version}.tgz"


def check_integrity(data: bytes, integrity: str, url: str) -> None:
    """Subresource-integrity check: any one of the listed digests must match."""
    for candidate in integrity.split():
        algorithm, _, expected = candidate.partition("-")
        if algorithm not in {"sha512", "sha384", "sha256"}:
            continue
        actual = base64.b64encode(hashlib.new(algorithm, data).digest()).decode()
        if actual == expected:
            return
    raise FetchError(f"{url}: the download does not match package-lock.json's integrity {integrity[:30]}...; refused")


def installed(folder: Path, version: str, integrity: str, root: Path) -> bool:
    """Already there at that version, unpacked from that digest: by this script (its marker) or by
    ``npm ci``, which records what it installed in ``node_modules/.package-lock.json``."""
    try:
        manifest = json.loads((folder / "package.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    if manifest.get("version") != version:
        return False
    try:
        if (folder / MARKER).read_text().strip() == integrity:
            return True
    except OSError:
        pass
    try:
        npm = json.loads((root / "node_modules" / ".package-lock.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    entry = npm.get("packages", {}).get(folder.relative_to(root).as_posix(), {})
    return entry.get("version") == version and entry.get("integrity") == integrity


def unpack(data: bytes, folder: Path, integrity: str) -> None:
    """Unpack the tarball's ``package/`` folder into ``folder``, replacing it in one rename."""
    folder.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".fetch-", dir=folder.parent))
    try:
        try:
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as archive:
                archive.extractall(staging, filter="data")  # refuses absolute paths, .. and device files
        except (tarfile.TarError, OSError) as exc:
            raise FetchError(f"cannot unpack the tarball of {folder.name}: {exc}") from exc
        tops = [p for p in staging.iterdir()]
        if len(tops) != 1 or not tops[0].is_dir():
            raise FetchError(f"unexpected tarball layout for {folder.name}: {[p.name for p in tops]}")
        (tops[0] / MARKER).write_text(integrity + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        tops[0].rename(folder)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def download(url: str) -> bytes:
    try:
        with urllib.request.urlopen(url, timeout=TIMEOUT_S) as response:  # noqa: S310 (https registry URL)
            return response.read()
    except (urllib.error.URLError, OSError) as exc:
        raise FetchError(f"cannot download {url}: {exc}") from exc


def install(root: Path, registry: str) -> list[str]:
    """Install what ``root/package-lock.json`` pins into ``root/node_modules``; the ``name@version``s installed."""
    done = []
    for folder, name, version, integrity in locked_packages(root):
        if installed(folder, version, integrity, root):
            continue
        url = tarball_url(name, version, registry)
        print(f"Installing {name}@{version} from {url}")
        data = download(url)
        check_integrity(data, integrity, url)
        unpack(data, folder, integrity)
        done.append(f"{name}@{version}")
    return done


def main() -> int:
    registry = os.environ.get("NPM_CONFIG_REGISTRY") or DEFAULT_REGISTRY
    try:
        install(ROOT, registry)
    except FetchError as exc:
        print(f"fetch_js: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
