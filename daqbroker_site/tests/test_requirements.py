"""The hash-locked requirement files are in step with the pins people edit (docs/dependencies.md).

scripts/bootstrap installs only the .lock files; a pin changed in a requirements*.txt without running
scripts/lock would silently not be installed. These read the files, no network.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PIN = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)")


def normal(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def pins(filename: str) -> dict[str, str]:
    """name -> version of every ``name==version`` line, following ``-r`` includes."""
    found: dict[str, str] = {}
    for line in (ROOT / filename).read_text().splitlines():
        if line.startswith("-r "):
            found |= pins(line.split(maxsplit=1)[1])
        elif match := PIN.match(line):
            found[normal(match[1])] = match[2]
    return found


def locked(filename: str) -> dict[str, tuple[str, int]]:
    """name -> (version, number of hashes) of a lock file made by scripts/lock."""
    found: dict[str, tuple[str, int]] = {}
    name = ""
    for line in (ROOT / filename).read_text().splitlines():
        if match := PIN.match(line):
            name = normal(match[1])
            found[name] = (match[2], 0)
        elif line.strip().startswith("--hash=sha256:") and name:
            version, hashes = found[name]
            found[name] = (version, hashes + 1)
    return found


SETS = ["requirements.txt", "requirements-dev.txt", "requirements-mysql.txt"]


@pytest.mark.parametrize("requirements", SETS)
def test_every_pin_is_in_its_lock_file_at_the_same_version(requirements):
    lock = locked(requirements.replace(".txt", ".lock"))
    stale = {name: version for name, version in pins(requirements).items() if lock.get(name, ("",))[0] != version}
    assert stale == {}, f"run scripts/lock: {requirements} pins {stale}, its lock file does not"


@pytest.mark.parametrize("requirements", SETS)
def test_every_locked_package_carries_hashes(requirements):
    lock = locked(requirements.replace(".txt", ".lock"))
    assert lock and [name for name, (_, hashes) in lock.items() if hashes == 0] == []


def test_the_dev_set_runs_the_versions_production_runs():
    runtime, dev = locked("requirements.lock"), locked("requirements-dev.lock")
    assert {name: dev.get(name, ("",))[0] for name in runtime} == {name: v for name, (v, _) in runtime.items()}
