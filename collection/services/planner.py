"""The query planner's statistics on SQLite, refreshed by a periodic task (docs/performance.md#many-things).

PostgreSQL's autovacuum analyses tables as they grow and MariaDB's InnoDB recalculates its persistent
statistics by itself; SQLite keeps none until ``ANALYZE`` runs. Without them its planner guesses, and at
100,000 channels it guessed wrong: the plot page's channel picker and the API's channel list sorted every
channel (a full scan and a temporary B-tree) instead of walking the instruments' name index and each
instrument's channels in order, and stopping at the first page.

``analysis_limit`` makes ``ANALYZE`` sample about that many rows of each index instead of reading all of
them, so a run costs milliseconds however many readings the database holds.
"""

from __future__ import annotations

from django.db import connections

ANALYSIS_LIMIT = 1000


def refresh_planner_statistics(using: str = "default") -> bool:
    """Refresh SQLite's ``sqlite_stat1`` (sampled); nothing to do on the other engines (returns False)."""
    connection = connections[using]
    if connection.vendor != "sqlite":
        return False
    with connection.cursor() as cursor:
        cursor.execute(f"PRAGMA analysis_limit = {ANALYSIS_LIMIT}")
        cursor.execute("ANALYZE")
    return True
