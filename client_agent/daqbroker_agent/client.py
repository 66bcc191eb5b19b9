"""HTTP to the server's ``/api/v1/``, with the standard library only (``http.client``).

One keep-alive connection per thread. A request on a reused connection that the server had already
closed (an idle keep-alive timing out) is sent once more on a fresh connection: every request the agent
makes may be repeated (uploads carry a batch id and the server's ingest is idempotent). Anything else
that is not an HTTP answer raises :class:`ServerUnreachable`.
"""

from __future__ import annotations

import email.utils
import http.client
import json
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from daqbroker_agent import __version__

USER_AGENT = f"daqbroker-agent/{__version__}"
MAX_RETRY_AFTER = 3600.0


class ServerUnreachable(Exception):
    """No HTTP answer: refused, reset, timed out, TLS failure, DNS failure."""


@dataclass(frozen=True)
class Reply:
    status: int
    headers: Mapping[str, str]  # lower-case names
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body) if self.body else None

    def detail(self) -> str:
        """The server's explanation (DRF's ``detail``), or the start of the body."""
        try:
            data = self.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and "detail" in data:
            return str(data["detail"])
        if isinstance(data, dict):
            return "; ".join(f"{k}: {v}" for k, v in data.items())[:500]
        return self.body[:300].decode(errors="replace")

    @property
    def retry_after(self) -> float | None:
        """Seconds to wait from the ``Retry-After`` header (delta-seconds or an HTTP date), if any."""
        value = self.headers.get("retry-after")
        if not value:
            return None
        try:
            seconds = float(value)
        except ValueError:
            try:
                moment = email.utils.parsedate_to_datetime(value)
            except (TypeError, ValueError):
                return None
            seconds = moment.timestamp() - time.time()
        return min(max(seconds, 0.0), MAX_RETRY_AFTER)


class ApiClient:
    def __init__(
        self,
        url: str,
        token_source: Callable[[], str],
        *,
        timeout: float = 60.0,
        ca_file: str = "",
    ):
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"{url!r} is not an http:// or https:// URL")
        self.url = url.rstrip("/")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port
        self.base_path = parts.path.rstrip("/")
        self.timeout = timeout
        self._context = ssl.create_default_context(cafile=ca_file or None) if self.scheme == "https" else None
        self._token_source = token_source
        self._token_lock = threading.Lock()
        self._token = token_source()
        self._local = threading.local()

    # -- the token ------------------------------------------------------------------------------------

    @property
    def token(self) -> str:
        return self._token

    def refresh_token(self) -> bool:
        """Read the token again (after a 401); True when it changed."""
        with self._token_lock:
            fresh = self._token_source()
            changed = fresh != self._token
            self._token = fresh
        return changed

    # -- requests -------------------------------------------------------------------------------------

    def _connection(self) -> tuple[http.client.HTTPConnection, bool]:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            return conn, True
        if self.scheme == "https":
            conn = http.client.HTTPSConnection(self.host, self.port, timeout=self.timeout, context=self._context)
        else:
            conn = http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)
        self._local.conn = conn
        return conn, False

    def close(self) -> None:
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: Mapping[str, str] | None = None
    ) -> Reply:
        all_headers = {
            "Authorization": f"Bearer {self._token}",
            "User-Agent": USER_AGENT,
            "Accept": "application/json",
            **(headers or {}),
        }
        if body is not None:
            all_headers.setdefault("Content-Type", "application/json")
        for attempt in (1, 2):
            conn, reused = self._connection()
            try:
                conn.request(method, self.base_path + path, body=body, headers=all_headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError) as exc:
                self.close()
                if reused and attempt == 1:
                    continue  # the server closed an idle keep-alive connection: once more, fresh
                raise ServerUnreachable(_describe(exc)) from None
            except (OSError, http.client.HTTPException) as exc:
                self.close()
                raise ServerUnreachable(_describe(exc)) from None
            if response.getheader("connection", "").lower() == "close":
                self.close()
            return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
        raise AssertionError("unreachable")  # pragma: no cover

    def get_json(self, path: str, headers: Mapping[str, str] | None = None) -> Reply:
        return self.request("GET", path, headers=headers)

    def post_json(self, path: str, payload: Any) -> Reply:
        body = json.dumps(payload, separators=(",", ":"), allow_nan=False).encode()
        return self.request("POST", path, body=body)


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, TimeoutError):
        return f"timed out ({text})"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return text
