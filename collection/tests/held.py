"""A transaction held open on another connection, for tests of row locks between two writers (PostgreSQL and
MariaDB; SQLite has one writer for the whole database)."""

from __future__ import annotations

import threading

from django.db import connections, transaction

DEADLINE = 30  # seconds a held transaction waits for the test to finish with it (never reached when all is well)


class HeldTransaction:
    """Another connection (a thread) that runs ``work`` in a transaction and holds it open, uncommitted,
    until ``commit()`` (or DEADLINE)."""

    def __init__(self, work):
        self.work = work
        self.ready, self.release = threading.Event(), threading.Event()
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        assert self.ready.wait(DEADLINE), "the other connection never got its transaction open"
        if self.error:
            raise self.error

    def _run(self) -> None:
        try:
            with transaction.atomic():
                self.work()
                self.ready.set()
                self.release.wait(DEADLINE)
        except BaseException as error:  # reported to the test
            self.error = error
            self.ready.set()
        finally:
            connections.close_all()

    def commit(self) -> None:
        self.release.set()
        self.thread.join(DEADLINE)
        assert not self.thread.is_alive(), "the held transaction did not end"
        if self.error:
            raise self.error


def someone_waits_on_a_lock() -> bool:
    """Whether a connection to this database is waiting for a lock another transaction holds (PostgreSQL
    and MariaDB), asked on a connection of its own."""
    connection = connections.create_connection("default")
    try:
        with connection.cursor() as cursor:
            if connection.vendor == "postgresql":
                cursor.execute(
                    "SELECT count(*) FROM pg_stat_activity "
                    "WHERE datname = current_database() AND wait_event_type = 'Lock'"
                )
            else:
                cursor.execute("SELECT count(*) FROM information_schema.INNODB_TRX WHERE trx_state = 'LOCK WAIT'")
            return cursor.fetchone()[0] > 0
    finally:
        connection.close()
