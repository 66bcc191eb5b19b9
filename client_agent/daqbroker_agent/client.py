"""HTTP to the server's ``/api/v1/``, with the standard library only (``http.client``).

One keep-alive connection per thread. A request on a reused connection that the server had already
closed (an idle keep-alive timing out) is sent once more on a fresh connection: every request the agent
makes may be repeated (uploads carry a batch id and the server's ingest is idempotent). Anything else
that is not an HTTP answer raises :class:`ServerUnreachable`.
"""

from __future__ import annotations

import email.utils
import html
import http.client
import json
import re
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
REASON_CHARS = 200  # the most of a body a log line quotes
_SCRIPTS = re.compile(rb"<(script|style)\b.*?</\1\s*>", re.IGNORECASE | re.DOTALL)
_TAGS = re.compile(rb"<[^>]*>")
_SPACE = re.compile(r"\s+")
# Words by which a server's answer blames its database (DRF's detail, or Django's debug page title).
_DATABASE_WORDS = re.compile(r"database|OperationalError|InterfaceError|connection to server|could not connect", re.I)
STATUS_MEANING = {
    500: "the server failed on its side",
    502: "a proxy in front of the server got no valid answer from it (is the DAQBroker server down?)",
    503: "the server is unavailable for now",
    504: "a proxy in front of the server gave up waiting for it (is it overloaded, or its database slow?)",
}


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
        """The server's explanation on one line: DRF's ``detail`` when there is one, else the start of the
        body (an HTML page's text without its markup), whitespace collapsed, at most 200 characters."""
        try:
            data = self.json()
        except ValueError:
            data = None
        if isinstance(data, dict) and "detail" in data:
            text = str(data["detail"])
        elif isinstance(data, dict):
            text = "; ".join(f"{k}: {v}" for k, v in data.items())
        else:
            body = self.body[:65536]
            if b"<" in body[:1024]:  # an error page (a proxy's, or Django's): its text, not its markup
                body = _TAGS.sub(b" ", _SCRIPTS.sub(b" ", body))
                text = html.unescape(body.decode(errors="replace"))
            else:
                text = body.decode(errors="replace")
        text = _SPACE.sub(" ", text).strip()
        if len(text) > REASON_CHARS:
            text = text[: REASON_CHARS - 1] + "…"
        return text or "(no explanation in the answer)"

    def blames_database(self) -> bool:
        """The server's answer says its database is the cause (a 5xx whose detail or page names it)."""
        return self.status >= 500 and bool(_DATABASE_WORDS.search(self.detail()))

    def explain(self) -> str:
        """One line for the log: the status, what it means, the server's reason, and the database when the
        server blames it. Never a whole page."""
        meaning = STATUS_MEANING.get(self.status, "")
        text = f"{self.status}" + (f" ({meaning})" if meaning else "") + f": {self.detail()}"
        if self.blames_database():
            text += " — the server's database is the cause: readings wait here until it answers again"
        return text

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
