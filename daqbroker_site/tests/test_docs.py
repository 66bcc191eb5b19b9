"""The manual in docs/ stays true to the code, and the README stays a short front door.

The mkdocs build (`scripts/test`, `--strict`) checks links and anchors between pages; these tests check
what it cannot: that every environment variable the code reads is in docs/configuration.md's table (and
that the table names none that nothing reads), that no code points into the README, and that the
README's links lead somewhere.
"""

from __future__ import annotations

import re
from pathlib import Path

from django.apps import apps

from daqbroker_agent.settings import ENV_PREFIX, FILE_ONLY_OPTIONS, OPTIONS

REPO = Path(__file__).resolve().parents[2]
CONFIGURATION_PAGE = REPO / "docs" / "configuration.md"
SERVER_PACKAGES = ["daqbroker_site", "instruments", "accounts", "collection"]

# A variable named in a Python string literal ("DAQBROKER_DEBUG"), or read by a shell script or the
# Procfile ($DAQBROKER_HOST, ${DAQBROKER_PORT:-8000}). A literal ending in "_" is a prefix, not a name.
PYTHON_NAME = re.compile(r"""["'](DAQBROKER_[A-Z0-9_]*[A-Z0-9])["']""")
SHELL_NAME = re.compile(r"\$\{?(DAQBROKER_[A-Z0-9_]*[A-Z0-9])")
# The agent builds some names from its prefix: ENV_PREFIX + "CONFIG", f"{ENV_PREFIX}TOKEN".
AGENT_BUILT_NAME = re.compile(r"""ENV_PREFIX\s*\+\s*["']([A-Z0-9_]+)["']|\{ENV_PREFIX\}([A-Z0-9_]*[A-Z0-9])""")
TABLE_ROW_NAME = re.compile(r"^\| `([A-Z][A-Z0-9_]*)` \|", re.MULTILINE)


def _python_sources() -> list[Path]:
    """The server's code (its tests and migrations left out), the benchmarks, the scripts, conftest.py
    and the agent package: everything that may read a variable when DAQBroker runs or is tested."""
    files = [REPO / "conftest.py", *REPO.glob("bench/*.py"), *REPO.glob("scripts/*.py")]
    files += REPO.glob("client_agent/daqbroker_agent/*.py")
    for package in SERVER_PACKAGES:
        files += [
            path
            for path in (REPO / package).rglob("*.py")
            if "tests" not in path.relative_to(REPO).parts and "migrations" not in path.relative_to(REPO).parts
        ]
    return files


def variables_read_by_the_code() -> set[str]:
    names: set[str] = set()
    for path in _python_sources():
        names |= set(PYTHON_NAME.findall(path.read_text()))
    for path in [*(p for p in (REPO / "scripts").iterdir() if p.suffix == ""), REPO / "Procfile", REPO / ".ci" / "run"]:
        if path.is_file():
            names |= set(SHELL_NAME.findall(path.read_text()))
    # The browser tests read one more (they are tests, but the variable is a setting of the test run).
    names |= set(PYTHON_NAME.findall((REPO / "pages" / "tests" / "test_browser.py").read_text()))
    # The agent reads DAQBROKER_AGENT_<OPTION> for each of its options (but those only its file sets), and a
    # few names it builds.
    names |= {ENV_PREFIX + option.upper() for option in OPTIONS if option not in FILE_ONLY_OPTIONS}
    for path in REPO.glob("client_agent/daqbroker_agent/*.py"):
        names |= {ENV_PREFIX + "".join(groups) for groups in AGENT_BUILT_NAME.findall(path.read_text())}
    return names


def variables_in_the_configuration_table() -> set[str]:
    return {name for name in TABLE_ROW_NAME.findall(CONFIGURATION_PAGE.read_text()) if name.startswith("DAQBROKER_")}


def test_the_scan_finds_the_variables_it_must():
    # Guards the scan itself: a regex that found nothing would make the next test pass vacuously.
    found = variables_read_by_the_code()
    assert {
        "DAQBROKER_DEBUG",  # settings.py
        "DAQBROKER_ADMIN_PASSWORD",  # seed_demo
        "DAQBROKER_HOST",  # scripts/run, Procfile
        "DAQBROKER_TEST_ENGINES",  # scripts/test
        "DAQBROKER_TEST_REDIS_URL",  # conftest.py
        "DAQBROKER_AGENT_BATCH_SIZE",  # the agent's options
        "DAQBROKER_AGENT_CONFIG",  # the agent's settings module
    } <= found
    assert not any(name.endswith("_") for name in found)


def test_every_variable_the_code_reads_is_in_the_configuration_table():
    missing = variables_read_by_the_code() - variables_in_the_configuration_table()
    assert not missing, f"add a row to docs/configuration.md for: {', '.join(sorted(missing))}"


def test_the_configuration_table_names_no_variable_that_nothing_reads():
    stale = variables_in_the_configuration_table() - variables_read_by_the_code()
    assert not stale, f"docs/configuration.md documents variables nothing reads: {', '.join(sorted(stale))}"


def test_no_code_or_template_points_into_the_readme():
    # Help texts, docstrings and pages name a docs page; the README is only a front door. Migrations are
    # history (an old one may quote an old help text), and this file has to say the word.
    sources = [REPO / "conftest.py", *REPO.glob("templates/**/*.html"), *REPO.glob("static/**/*.js")]
    for folder in [*SERVER_PACKAGES, "client_agent", "bench", "scripts"]:
        sources += (REPO / folder).rglob("*.py")
    offenders = []
    for path in sources:
        if "migrations" in path.relative_to(REPO).parts or path == Path(__file__):
            continue
        if "README" in path.read_text(errors="replace"):
            offenders.append(str(path.relative_to(REPO)))
    assert not offenders, f"point to a page in docs/ instead of the README: {offenders}"


def test_no_model_help_text_points_into_the_readme():
    offenders = [
        f"{model.__name__}.{field.name}"
        for model in apps.get_models()
        for field in model._meta.get_fields()
        if "README" in str(getattr(field, "help_text", ""))
    ]
    assert not offenders


def test_the_readme_is_a_short_front_door_with_the_two_commands():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 150
    assert "```sh\nscripts/run\n```" in readme
    assert "```sh\nscripts/test\n```" in readme
    assert "scripts/test" in (REPO / ".ci" / "run").read_text()


def test_the_readmes_relative_links_lead_to_files_that_exist():
    link = re.compile(r"\]\(([^)#\s]+)(?:#[^)]*)?\)")
    broken = []
    for readme in [REPO / "README.md", REPO / "client_agent" / "README.md"]:
        for target in link.findall(readme.read_text()):
            if "://" in target:
                continue
            if not (readme.parent / target).exists():
                broken.append(f"{readme.relative_to(REPO)} -> {target}")
    assert not broken, broken
