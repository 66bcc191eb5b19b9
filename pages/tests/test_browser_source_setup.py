"""End to end in Chromium: a new administrator sets up a file source from an uploaded sample, with no JSON
typed, and the first collection stores every line. Screenshots at 1280 px and 390 px
(``test-artifacts/screenshots/source-setup-*.png``, used by docs/source-setup.md)."""

from __future__ import annotations

import os
import sys

import pytest

from collection.models import RejectedSample, Sample, TextSample
from collection.services.collect import collect_source
from collection.tests.test_agent_e2e import AGENT_PATH, Process
from instruments.models import DataSource
from pages.tests.browser import SCREENSHOTS

pytestmark = pytest.mark.django_db(transaction=True)

SAMPLE = "".join(
    [
        "Timestamp,Air Temperature [deg C],Rel Humidity (%),Status\n",
        *(
            f"2026-01-01 {i // 6:02d}:{i % 6}0:00,{12 + i / 10:.1f},"
            f"{-9999 if i in (3, 7) else 70 + i},{'OK' if i % 3 else 'WARN'}\n"
            for i in range(12)
        ),
    ]
)


def wait_for_preview(page) -> None:
    page.wait_for_function("() => document.body.dataset.previewing === 'no'")
    page.wait_for_selector("#preview tbody tr")


def test_a_new_administrator_sets_up_a_source_from_a_sample_without_json(site, visitors, tmp_path):
    folder = tmp_path / "logger"
    folder.mkdir()
    (folder / "station.csv").write_text(SAMPLE)
    olivia = visitors("olivia")
    olivia.log_in()
    page = olivia.desktop
    olivia.open("/instruments/alpha-station/")
    page.click("text=New data source")
    page.wait_for_url("**/sources/new/")

    page.fill("#id_name", "station logger")
    page.set_input_files("#id_sample", str(folder / "station.csv"))
    page.wait_for_selector("#channels input[name='channel-0-slug']")
    wait_for_preview(page)
    assert page.input_value("#channels input[name='channel-0-units']") == "degC"
    assert page.input_value("#channels input[name='channel-1-missing_values']") == "-9999"
    assert page.input_value("#opt-header_lines") == "1"
    assert "timestamp.timezone" in page.inner_text("#questions")  # the zone is asked, not guessed

    # Where the files are, and the zone: typed into labelled fields, the preview following.
    page.fill("#opt-path", str(folder))
    page.fill("#opt-pattern", "*.csv")
    page.fill("#opt-timestamp-timezone", "Europe/Lisbon")
    page.wait_for_function("() => document.querySelector('#preview thead').textContent.includes('Europe/Lisbon')")
    wait_for_preview(page)
    assert page.locator("#setup-errors .message-error").count() == 0
    page.screenshot(path=str(SCREENSHOTS / "source-setup-desktop.png"), full_page=True)

    phone = olivia.phone
    phone.goto("/instruments/alpha-station/sources/new/")
    phone.set_input_files("#id_sample", str(folder / "station.csv"))
    wait_for_preview(phone)
    phone.screenshot(path=str(SCREENSHOTS / "source-setup-phone.png"), full_page=True)

    page.click("#save-source")
    page.wait_for_url("**/instruments/alpha-station/#sources")
    assert "station logger" in page.inner_text("section[aria-labelledby=sources-title]")

    source = DataSource.objects.get(name="station logger")
    assert source.enabled and source.config["timestamp"]["timezone"] == "Europe/Lisbon"
    channels = {c.slug: c for c in source.channels.all()}
    assert set(channels) == {"air-temperature", "rel-humidity", "status"}
    run = collect_source(source.pk)
    assert run is not None and run.error == "", run.error if run else None
    lines = SAMPLE.count("\n") - 1
    for slug in ("air-temperature", "rel-humidity"):
        assert Sample.objects.filter(channel=channels[slug]).count() == lines
    assert TextSample.objects.filter(channel=channels["status"]).count() == lines
    assert Sample.objects.filter(channel=channels["rel-humidity"], quality=2).count() == 2  # the sentinels
    assert not RejectedSample.objects.filter(source=source).exists()


def test_the_admins_configuration_field_is_a_form_of_the_options(site, visitors, tmp_path):
    source = site.alpha_source
    olivia = visitors("olivia")
    olivia.log_in()
    page = olivia.desktop
    page.goto(f"/admin/instruments/datasource/{source.pk}/change/")
    assert not page.is_visible("#id_config")  # the JSON is behind "Edit as JSON"
    assert "glob pattern of the files" in page.inner_text(".config-form")  # each option with its help

    page.fill("#id_config-path", "")  # an error is shown beside the option it names
    page.click("input[name=_continue]")
    page.wait_for_load_state("load")
    assert "path: is required" in page.inner_text("#id_config-path >> xpath=..")

    page.fill("#id_config-path", str(tmp_path))
    page.fill("#id_config-pattern", "*.dat")
    page.fill("#id_config-header_lines", "4")
    page.check(".config-raw-toggle")
    assert '"header_lines": 4' in page.input_value("#id_config")
    page.click("input[name=_continue]")
    page.wait_for_load_state("load")
    source.refresh_from_db()
    assert (source.config["path"], source.config["pattern"], source.config["header_lines"]) == (
        str(tmp_path),
        "*.dat",
        4,
    )


def test_an_agent_source_is_set_up_from_lines_the_agent_sends(site, visitors, live_server, tmp_path):
    """A real agent process, polling the live server, sends the first lines of a file on its machine; the
    page waits for them, says why when the agent refuses a folder, and saves a remote-agent source."""
    folder, secret = tmp_path / "logger", tmp_path / "secret"
    folder.mkdir()
    secret.mkdir()
    (folder / "station.csv").write_text(SAMPLE)
    (secret / "keys.csv").write_text("SECRET-LINE\n")
    agent = start_agent_process(site.tokens["agent_scoped"], live_server.url, tmp_path, allowed=[folder])
    try:
        olivia = visitors("olivia")
        olivia.log_in()
        page = olivia.desktop
        page.goto("/instruments/alpha-station/sources/new/")
        page.fill("#id_name", "remote logger")
        page.select_option("#id_agent", label="Agent alpha-logger (on its machine)")
        assert page.is_hidden("#read-folder") and page.is_visible("#ask-agent")
        page.fill("#opt-path", str(secret))  # outside the agent's allowed_paths: it says so, and reads nothing
        page.click("#ask-agent")
        page.wait_for_function("() => document.body.dataset.waiting === 'agent'")
        assert "Waiting for the agent alpha-logger" in page.inner_text("#preview-status")
        page.wait_for_selector("#setup-errors .message-error", timeout=60_000)
        assert "is not under this agent's allowed_paths" in page.inner_text("#setup-errors")
        assert "SECRET-LINE" not in page.content()

        page.fill("#opt-path", str(folder))
        page.click("#ask-agent")
        page.wait_for_selector("#channels input[name='channel-0-slug']", timeout=60_000)
        wait_for_preview(page)
        assert "agent alpha-logger: file station.csv" in page.inner_text("#sample-origin")
        assert page.input_value("#channels input[name='channel-1-missing_values']") == "-9999"
        page.fill("#opt-timestamp-timezone", "Europe/Lisbon")
        page.wait_for_function(
            "() => document.querySelector('#preview thead').textContent.includes('Lisbon')", timeout=60_000
        )
        wait_for_preview(page)
        assert "rel-humidity" in page.inner_text("#preview thead").lower()
        assert "a missing-value sentinel" in page.inner_text("#preview tbody")
        page.screenshot(path=str(SCREENSHOTS / "source-setup-agent.png"), full_page=True)
        page.click("#save-source")
        page.wait_for_url("**/instruments/alpha-station/#sources")
    finally:
        agent.stop()
    source = DataSource.objects.get(name="remote logger")
    assert source.kind == "agent" and source.agent.name == "alpha-logger"
    assert source.config["collect"]["path"] == str(folder) and source.config["collect"]["kind"] == "file"
    assert source.channels.count() == 3


def start_agent_process(token: str, url: str, tmp_path, *, allowed) -> Process:
    token_file = tmp_path / "token"
    token_file.write_text(token)
    config = tmp_path / "agent.toml"
    config.write_text("allowed_paths = [{}]\n".format(", ".join(f'"{path}"' for path in allowed)))
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTEST", "DJANGO", "DATABASE"))}
    env.update(
        PYTHONPATH=AGENT_PATH,
        DAQBROKER_AGENT_URL=url,
        DAQBROKER_AGENT_TOKEN_FILE=str(token_file),
        DAQBROKER_AGENT_SPOOL=str(tmp_path / "spool"),
        DAQBROKER_AGENT_CONFIG_POLL_SECONDS="1",
        DAQBROKER_AGENT_HEARTBEAT_SECONDS="1",
        DAQBROKER_AGENT_CONFIG=str(config),
    )
    return Process("agent", [sys.executable, "-m", "daqbroker_agent", "run"], env, tmp_path).start()


def test_a_modbus_source_is_set_up_from_a_register_map_with_live_values(site, visitors, modbus_device):
    """No JSON and no sample: the register map as a table, an entry's error named beside the page, Test
    connection reading live values from pymodbus's server, and the source saved and collected."""
    import struct

    words = struct.pack(">f", 21.5)
    device = modbus_device(holding=[int.from_bytes(words[:2], "big"), int.from_bytes(words[2:], "big"), 40])
    olivia = visitors("olivia")
    olivia.log_in()
    page = olivia.desktop
    page.goto("/instruments/alpha-station/sources/new/")
    page.fill("#id_name", "plc")
    page.select_option("#id_kind", "modbus")
    assert page.is_visible("#entries") and page.is_visible("#test-protocol") and page.is_hidden("#id_sample")
    page.fill("#opt-host", "127.0.0.1")
    page.fill("#opt-port", str(device.port))
    page.fill("input[name='entry-0-field']", "temperature")
    page.fill("input[name='entry-0-address']", "0")
    page.select_option("select[name='entry-0-type']", "float32")
    page.click("#add-entry")
    page.fill("input[name='entry-1-field']", "flow")
    page.fill("input[name='entry-1-address']", "two")  # not a number: named with its entry
    page.fill("input[name='entry-1-scale']", "0.5")
    page.press("input[name='entry-1-scale']", "Tab")
    page.wait_for_function("() => document.querySelector('#setup-errors').textContent.includes('registers[1].address')")
    page.fill("input[name='entry-1-address']", "2")
    page.press("input[name='entry-1-address']", "Tab")
    page.wait_for_function("() => document.querySelector('#setup-errors').textContent === ''")
    page.wait_for_function("() => document.querySelectorAll('#channels input[name$=\"-slug\"]').length === 2")
    assert page.input_value("#channels input[name='channel-1-slug']") == "flow"

    page.click("#test-protocol")
    page.wait_for_selector("#preview tbody tr")
    page.wait_for_function("() => document.body.dataset.previewing === 'no'")
    row = page.inner_text("#preview tbody tr")
    assert "21.5" in row and "20" in row, row
    assert f"127.0.0.1:{device.port}" in page.inner_text("#sample-origin")
    page.screenshot(path=str(SCREENSHOTS / "source-setup-modbus.png"), full_page=True)

    page.click("#save-source")
    page.wait_for_url("**/instruments/alpha-station/#sources")
    source = DataSource.objects.get(name="plc")
    assert source.kind == "modbus" and source.enabled
    assert [(r["field"], r["address"], r["type"]) for r in source.config["registers"]] == [
        ("temperature", 0, "float32"),
        ("flow", 2, "uint16"),
    ]
    run = collect_source(source.pk)
    assert run is not None and run.error == "", run.error if run else None
    stored = dict(Sample.objects.filter(channel__source=source).values_list("channel__slug", "value"))
    assert stored == {"temperature": 21.5, "flow": 20.0}


def test_an_mqtt_source_is_set_up_from_topics_with_a_retained_message_shown(site, visitors, private_mosquitto):
    import uuid

    from paho.mqtt import publish

    broker = private_mosquitto()
    prefix = f"greenhouse-{uuid.uuid4().hex[:8]}"
    publish.single(f"{prefix}/bench/env", '{"t": 19.75}', qos=1, retain=True, hostname=broker.host, port=broker.port)
    olivia = visitors("olivia")
    olivia.log_in()
    page = olivia.desktop
    page.goto("/instruments/alpha-station/sources/new/")
    page.fill("#id_name", "greenhouse sensors")
    page.select_option("#id_kind", "mqtt")
    page.fill("#opt-host", broker.host)
    page.fill("#opt-port", str(broker.port))
    page.fill("input[name='entry-0-name']", "t")
    page.fill("input[name='entry-0-topic']", f"{prefix}/#/env")  # '#' not last: named with its entry
    page.press("input[name='entry-0-topic']", "Tab")
    page.wait_for_function("() => document.querySelector('#setup-errors').textContent.includes('fields[0].topic')")
    page.fill("input[name='entry-0-topic']", f"{prefix}/+/env")
    page.fill("input[name='entry-0-path']", "t")
    page.press("input[name='entry-0-path']", "Tab")
    page.wait_for_function("() => document.querySelector('#setup-errors').textContent === ''")
    page.click("#test-protocol")
    page.wait_for_selector("#preview tbody tr")
    page.wait_for_function("() => document.body.dataset.previewing === 'no'")
    assert "19.75" in page.inner_text("#preview tbody tr")

    page.click("#save-source")
    page.wait_for_url("**/instruments/alpha-station/#sources")
    source = DataSource.objects.get(name="greenhouse sensors")
    assert source.kind == "mqtt" and source.config["fields"] == [{"name": "t", "topic": f"{prefix}/+/env", "path": "t"}]
    assert list(source.channels.values_list("slug", "source_field")) == [("t", "t")]


def test_an_opc_ua_source_is_set_up_from_node_ids_with_their_current_values(site, visitors, opcua_server):
    opcua_server.write("temperature", 22.5)
    olivia = visitors("olivia")
    olivia.log_in()
    page = olivia.desktop
    page.goto("/instruments/alpha-station/sources/new/")
    page.fill("#id_name", "process")
    page.select_option("#id_kind", "opcua")
    page.fill("#opt-host", opcua_server.host)
    page.fill("#opt-port", str(opcua_server.port))
    page.fill("#opt-path", "/daqbroker-test/")
    page.fill("input[name='entry-0-node']", opcua_server.node("temperature"))
    page.fill("input[name='entry-0-name']", "temperature")
    page.press("input[name='entry-0-name']", "Tab")
    page.wait_for_function("() => document.querySelectorAll('#channels input[name$=\"-slug\"]').length === 1")
    page.click("#test-protocol")
    page.wait_for_selector("#preview tbody tr", timeout=60_000)
    page.wait_for_function("() => document.body.dataset.previewing === 'no'", timeout=60_000)
    assert "22.5" in page.inner_text("#preview tbody"), page.inner_text("#setup-errors")
    page.click("#save-source")
    page.wait_for_url("**/instruments/alpha-station/#sources")
    source = DataSource.objects.get(name="process")
    assert source.kind == "opcua" and source.config["nodes"][0]["node"] == opcua_server.node("temperature")
