"""The node-health figures of the heartbeat (daqbroker_agent.health): standard library, None when unknown."""

from __future__ import annotations

from daqbroker_agent import health

MEMINFO = "MemTotal:       16000000 kB\nMemFree:         1000000 kB\nMemAvailable:    4000000 kB\nBuffers: 1 kB\n"


def test_memory_is_read_from_meminfo_available_over_total(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text(MEMINFO)
    assert health.memory(meminfo) == (4_000_000 * 1024, 75.0)


def test_memory_falls_back_to_memfree_and_is_none_without_meminfo(tmp_path):
    meminfo = tmp_path / "meminfo"
    meminfo.write_text("MemTotal: 1000 kB\nMemFree: 250 kB\n")
    assert health.memory(meminfo) == (250 * 1024, 75.0)
    assert health.memory(tmp_path / "absent") == (None, None)
    meminfo.write_text("garbage\n")
    assert health.memory(meminfo) == (None, None)


def test_node_health_measures_the_spool_disk_and_the_oldest_readings_age(tmp_path):
    figures = health.node_health(tmp_path, depth=12, oldest_us=1_000_000_000_000_000, now=1_000_000_090.5)
    assert figures["spool_depth"] == 12
    assert figures["spool_oldest_age_seconds"] == 90.5
    assert figures["spool_disk_free_bytes"] > 0 and 0 <= figures["spool_disk_used_percent"] <= 100
    assert figures["cpu_load"] is None or figures["cpu_load"] >= 0


def test_node_health_says_none_for_what_it_cannot_read(tmp_path):
    figures = health.node_health(tmp_path / "gone", depth=0, oldest_us=None)
    assert figures["spool_disk_free_bytes"] is None and figures["spool_disk_used_percent"] is None
    assert figures["spool_oldest_age_seconds"] is None
