"""The browser files committed under static/vendor/ are the ones package-lock.json pins, untouched.

package-lock.json's integrity is the sha512 of the npm tarball, not of a file inside it, so
scripts/vendor_js.py (which checks a tarball against the lock before copying from it) records in
static/vendor/vendor.json the version and integrity it copied from and each file's own sha512. These
tests hold the three together: a hand-edited file, a lock bumped without re-copying, or a file dropped
in without its record all fail. ``scripts/vendor_js.py --check`` compares the files with the tarballs
themselves (it needs npm and the registry, so it is a maintainer's step, not a test).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from django.contrib.staticfiles import finders
from django.core import checks
from django.core.management import call_command

ROOT = Path(__file__).resolve().parents[2]
VENDOR = ROOT / "static" / "vendor"
MANIFEST = json.loads((VENDOR / "vendor.json").read_text())
LOCK = json.loads((ROOT / "package-lock.json").read_text())["packages"]
PACKAGES = sorted(MANIFEST["packages"].items())
FILES = sorted((target, record) for _, entry in PACKAGES for target, record in entry["files"].items())


@pytest.mark.parametrize(("package", "entry"), PACKAGES, ids=[name for name, _ in PACKAGES])
def test_each_vendored_package_was_copied_from_the_tarball_package_lock_pins(package, entry):
    locked = LOCK.get(f"node_modules/{package}")
    assert locked, f"{package} is vendored but package-lock.json does not pin it"
    assert (entry["version"], entry["integrity"]) == (locked["version"], locked["integrity"]), (
        f"package-lock.json pins {package}@{locked['version']}; static/vendor/ holds {entry['version']}: "
        "run python3 scripts/vendor_js.py"
    )


@pytest.mark.parametrize(("target", "record"), FILES, ids=[target for target, _ in FILES])
def test_each_vendored_file_has_the_sha512_recorded_when_it_was_copied(target, record):
    assert hashlib.sha512((VENDOR / target).read_bytes()).hexdigest() == record["sha512"]


def test_every_package_in_package_lock_is_vendored():
    pinned = {key.removeprefix("node_modules/") for key in LOCK if key}
    assert pinned == set(MANIFEST["packages"])


def test_every_file_under_static_vendor_is_recorded():
    present = {path.relative_to(VENDOR).as_posix() for path in VENDOR.rglob("*") if path.is_file()}
    assert present - {"vendor.json"} == {target for target, _ in FILES}


@pytest.mark.parametrize(("package", "entry"), PACKAGES, ids=[name for name, _ in PACKAGES])
def test_each_vendored_package_keeps_its_licence_beside_it(package, entry):
    licences = [record for target, record in entry["files"].items() if Path(target).name.startswith("LICEN")]
    assert licences, f"{package}: copy its licence file too (vendor.json)"


@pytest.mark.parametrize("bundle", ["plotly-basic.min.js", "plotly-cartesian.min.js"])
def test_the_plot_library_is_found_by_the_ordinary_static_finders(bundle):
    found = finders.find(f"vendor/plotly/{bundle}")
    assert found and Path(found) == VENDOR / "plotly" / bundle


@pytest.mark.django_db
def test_migrate_and_the_system_checks_do_not_need_the_static_files(settings, tmp_path):
    """A checkout whose static files are missing (or not collected yet) still migrates."""
    settings.STATICFILES_DIRS = [tmp_path / "absent"]
    assert finders.find("vendor/plotly/plotly-cartesian.min.js") is None  # really gone for this test
    errors = [m for m in checks.run_checks(include_deployment_checks=False) if m.is_serious()]
    assert errors == []
    call_command("migrate", skip_checks=False, verbosity=0)  # runs the same checks, fails on an error
