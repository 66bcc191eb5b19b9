"""Third-party browser files served by the app itself, taken from the Python packages that ship them.

The pages must work on a network with no internet: no CDN. Plotly's JavaScript comes inside the
``plotly`` PyPI package (pinned in requirements.txt), so installing the requirements is all it takes;
no Node.js, no build step. This finder exposes exactly the files listed in ``VENDOR_FILES`` (not the
rest of the package's data) to ``runserver``, WhiteNoise and ``collectstatic``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from django.contrib.staticfiles.finders import BaseFinder
from django.core.checks import Error
from django.core.files.storage import FileSystemStorage

# static path -> (package, file inside the package)
VENDOR_FILES: dict[str, tuple[str, str]] = {
    "vendor/plotly/plotly.min.js": ("plotly", "package_data/plotly.min.js"),
}


def _package_file(package: str, relative: str) -> Path | None:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    path = Path(next(iter(spec.submodule_search_locations))) / relative
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
            Error(f"{package} does not ship {relative}: install requirements.txt", id="daqbroker.E001")
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
