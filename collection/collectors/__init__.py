"""One collector per kind of source, behind the ``Collector`` interface of ``collectors.base``."""

from collection.collectors.base import Collected, Collector
from collection.collectors.file import FileCollector

COLLECTORS: dict[str, Collector] = {"file": FileCollector()}

__all__ = ["COLLECTORS", "Collected", "Collector"]
