"""Responses are written in bounded pieces, and a client that stops reading is dropped.

Under gunicorn a response is written with blocking ``sendall`` calls: a client that stops reading holds
its worker thread until the kernel buffers drain, that is forever (the gthread worker keeps notifying
its arbiter, so gunicorn's ``--timeout`` never fires). A handful of stalled downloads then take every
thread and the site stops answering anyone. This WSGI wrapper sets a send timeout on the connection's
socket (``DAQBROKER_SEND_TIMEOUT_SECONDS``) and splits every body into writes of at most 64 KiB, so
that a write that makes no progress for that long fails, gunicorn closes the connection, and the
thread (and any export slot the request held) is freed. Without gunicorn (runserver, tests) only the
splitting applies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator

WRITE_BYTES = 64 * 1024


class BoundedWrites:
    def __init__(self, app: Callable, send_timeout: Callable[[], float]):
        self.app = app
        self.send_timeout = send_timeout

    def __call__(self, environ: dict, start_response: Callable) -> Iterable[bytes]:
        sock = environ.get("gunicorn.socket")
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.settimeout(self.send_timeout())
        result: Iterable[bytes] = self.app(environ, start_response)
        file_wrapper = environ.get("wsgi.file_wrapper")
        if isinstance(file_wrapper, type) and isinstance(result, file_wrapper):
            return result  # static files: sendfile, bounded by the same socket timeout
        return _Pieces(result)


class _Pieces:
    """The app's body iterable, each item cut to at most WRITE_BYTES; ``close`` is passed on (WSGI)."""

    def __init__(self, result: Iterable[bytes]):
        self.result = result
        self.pieces = self._cut(result)

    @staticmethod
    def _cut(result: Iterable[bytes]) -> Iterator[bytes]:
        for item in result:
            if len(item) <= WRITE_BYTES:
                yield item
            else:
                for start in range(0, len(item), WRITE_BYTES):
                    yield item[start : start + WRITE_BYTES]

    def __iter__(self) -> Iterator[bytes]:
        return self.pieces

    def close(self) -> None:
        close = getattr(self.result, "close", None)
        if close is not None:
            close()
