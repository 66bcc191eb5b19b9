#!/usr/bin/env python3
"""Copies the browser files the pages serve out of the npm packages that package-lock.json pins.

The files themselves are committed under static/vendor/ (the site needs no Node.js, no network and no
build step). This script is only for adding or upgrading one, on a machine with npm:

    npm install --package-lock-only plotly.js-cartesian-dist-min@4.2.0   # package.json + package-lock.json
    python3 scripts/vendor_js.py            # npm pack, check the lock's integrity, copy, record sha512
    python3 scripts/vendor_js.py --check    # the committed files are exactly the tarballs' (no changes)

static/vendor/vendor.json names, per package, the files taken from its tarball and where they go; the
script fills in the version and integrity from package-lock.json and each file's own sha512, which
daqbroker_site/tests/test_vendor_static.py checks against the committed files and the lock.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import json
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VENDOR = ROOT / "static" / "vendor"
MANIFEST = VENDOR / "vendor.json"


def sri_sha512(data: bytes) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(data).digest()).decode()


def locked(package: str) -> tuple[str, str]:
    entry = json.loads((ROOT / "package-lock.json").read_text())["packages"].get(f"node_modules/{package}")
    if not entry or "version" not in entry or "integrity" not in entry:
        sys.exit(f"package-lock.json pins no {package}: run npm install --package-lock-only {package}@VERSION")
    return entry["version"], entry["integrity"]


def packed(package: str, version: str, integrity: str, folder: Path) -> tarfile.TarFile:
    npm = shutil.which("npm")
    if npm is None:
        sys.exit("scripts/vendor_js.py needs npm (apt-get install npm)")
    out = subprocess.run(
        [npm, "pack", f"{package}@{version}", "--json", "--pack-destination", str(folder)],
        check=True,
        capture_output=True,
        text=True,
    )
    tarball = folder / json.loads(out.stdout)[0]["filename"]
    if sri_sha512(tarball.read_bytes()) != integrity:
        sys.exit(f"{tarball.name} does not match package-lock.json's integrity {integrity}: refusing it")
    return tarfile.open(tarball)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="compare the committed files, write nothing")
    check = parser.parse_args().check
    manifest = json.loads(MANIFEST.read_text())
    differ = []
    with tempfile.TemporaryDirectory() as tmp:
        for package, entry in manifest["packages"].items():
            version, integrity = locked(package)
            with packed(package, version, integrity, Path(tmp)) as tar:
                for target, record in entry["files"].items():
                    member = tar.extractfile(f"package/{record['from']}")
                    if member is None:
                        sys.exit(f"{package}@{version} has no file {record['from']}")
                    data = member.read()
                    path = VENDOR / target
                    if check:
                        if not path.is_file() or path.read_bytes() != data:
                            differ.append(target)
                        continue
                    path.parent.mkdir(parents=True, exist_ok=True)
                    path.write_bytes(data)
                    record["sha512"] = hashlib.sha512(data).hexdigest()
            entry.update(version=version, integrity=integrity)
            print(f"{package}@{version}: {', '.join(entry['files'])}")
    if check:
        if differ:
            print("differ from the locked tarballs: " + ", ".join(differ))
            return 1
        print("static/vendor/ matches package-lock.json's tarballs")
        return 0
    MANIFEST.write_text(json.dumps(manifest, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
