"""Third-party browser files served by the app itself, taken from the npm packages that ship them.

The pages must work on a network with no internet: no CDN. The browser libraries are pinned in
``package.json``/``package-lock.json`` and installed into ``node_modules/`` by ``scripts/bootstrap``
(``scripts/fetch_js.py``: the registry tarball, checked against the lockfile's digest; no Node.js, no
build step). This finder exposes exactly the files listed in ``VENDOR_FILES`` (not the rest of the
packages) to ``runserver``, WhiteNoise and ``collectstatic``.
"""

from __future__ import annotations

from pathlib import Path

from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import Error
from django.core.files.storage import FileSystemStorage

NODE_MODULES = Path(__file__).resolve().parent.parent / "node_modules"

# static path -> (npm package, file inside the package)
VENDOR_FILES: dict[str, tuple[str, str]] = {
    # plotly.js's "basic" partial bundle (scatter, bar, pie): 1.2 MB instead of the full 4.6 MB, which
    # matters for a first visit, where Chromium spends most of its time compiling the library.
    "vendor/plotly/plotly-basic.min.js": ("plotly.js-basic-dist-min", "plotly-basic.min.js"),
}


def _package_file(package: str, relative: str) -> Path | None:
    path = NODE_MODULES / package / relative
    return path if path.is_file() else None


class VendorFinder(BaseFinder):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.files: dict[str, Path] = {}
        for static_path, (package, relative) in VENDOR_FILES.items():
            found = _package_file(package, relative)
            if found is not None:
                self.files[static_path] = found

    def check(self, **kwargs):
        return [
            Error(
                f"node_modules/{package}/{relative} is missing",
                hint="Run scripts/bootstrap (or python3 scripts/fetch_js.py) to install package-lock.json.",
                id="daqbroker.E001",
            )
            for static_path, (package, relative) in VENDOR_FILES.items()
            if static_path not in self.files
        ]

    def find(self, path, find_all=False, **kwargs):
        found = self.files.get(path)
        if found is None:
            return [] if find_all else None
        return [str(found)] if find_all else str(found)

    def list(self, ignore_patterns):
        for static_path, found in self.files.items():
            storage = FileSystemStorage(location=str(found.parent))
            storage.prefix = str(Path(static_path).parent)
            yield found.name, storage
