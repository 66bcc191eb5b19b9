"""The suite's own wiring for pytest-xdist: each worker a Redis database of its own (docs/testing.md)."""

import pytest

from conftest import redis_url_for_worker, xdist_worker_index


@pytest.mark.parametrize(
    ("url", "worker", "expected"),
    [
        ("redis://127.0.0.1:6379/15", 0, "redis://127.0.0.1:6379/15"),
        ("redis://127.0.0.1:6379/15", 1, "redis://127.0.0.1:6379/14"),
        ("redis://127.0.0.1:6379/13", 3, "redis://127.0.0.1:6379/10"),
        ("redis://:secret@redis.example:6380/4", 2, "redis://:secret@redis.example:6380/2"),
        ("redis://127.0.0.1:6379", 1, "redis://127.0.0.1:6379"),  # no number: left as given
    ],
)
def test_each_worker_gets_the_base_database_number_minus_its_index(url, worker, expected):
    assert redis_url_for_worker(url, worker) == expected


def test_a_base_number_too_low_for_the_workers_is_refused_with_the_reason():
    with pytest.raises(pytest.UsageError, match="too low a database number for 3 workers"):
        redis_url_for_worker("redis://127.0.0.1:6379/1", 2)


@pytest.mark.parametrize(("name", "index"), [("", 0), ("gw0", 0), ("gw7", 7), ("master", 0)])
def test_the_worker_index_comes_from_xdist_s_worker_name(monkeypatch, name, index):
    monkeypatch.setenv("PYTEST_XDIST_WORKER", name)
    assert xdist_worker_index() == index
