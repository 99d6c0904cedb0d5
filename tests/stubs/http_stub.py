"""A small, reusable, threaded stub HTTP server for tests (loopback only, ephemeral port).

Real client libraries (yfinance/curl_cffi, alpaca-py/requests, ...) talk to it over real HTTP,
so the tests exercise their URL building, headers, retries and error handling.

* Routes: ``server.route("GET", "/v2/orders/{order_id}", handler)``; ``{name}`` segments become
  ``request.path_params``. A handler gets a ``RecordedRequest`` and returns a ``StubResponse``
  (or a dict/list, sent as JSON with status 200).
* Scripts: ``server.script("/v2/stocks/bars", StubResponse(status=503), times=2)`` answers the
  next two matching requests with 503, then the route answers again. Scripts are consumed
  before routes, first in, first out. ``StubResponse(hang_s=5)`` sleeps before answering, to
  trigger client timeouts.
* Log: every request (matched or not) is recorded with the response that was sent back:
  ``server.requests``, ``server.requests_for(path)``; unmatched ones also land in
  ``server.unmatched`` (answered 404) so a test can assert nothing unexpected was called.

``loopback_only()`` is the matching network guard: inside it, any attempt to reach a
non-loopback host (Python sockets, DNS lookups, and curl_cffi, whose libcurl opens its own
sockets) raises and is recorded, and ambient proxy variables are cleared.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

JSONLike = dict[str, Any] | list[Any]


@dataclass
class StubResponse:
    """What the stub sends back. ``body`` dict/list → JSON, str → UTF-8 text, bytes → as is."""

    status: int = 200
    body: JSONLike | str | bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    hang_s: float = 0.0  # sleep before answering (released early when the server stops)

    def encoded(self) -> tuple[bytes, str]:
        if self.body is None:
            return b"", "text/plain; charset=utf-8"
        if isinstance(self.body, bytes):
            return self.body, "application/octet-stream"
        if isinstance(self.body, str):
            return self.body.encode(), "text/plain; charset=utf-8"
        return json.dumps(self.body, separators=(",", ":")).encode(), "application/json; charset=utf-8"


def json_error(status: int, message: str, **extra: Any) -> StubResponse:
    """A JSON error answer, e.g. ``json_error(401, "request is not authorized", code=40110000)``."""
    return StubResponse(status=status, body={"message": message, **extra})


@dataclass
class RecordedRequest:
    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]  # lower-cased names
    body: bytes
    path_params: dict[str, str] = field(default_factory=dict)
    route: str | None = None  # the matched route pattern, None if unmatched
    response_status: int | None = None
    response_body: bytes | None = None  # None when the client went away before the answer

    def param(self, name: str, default: str | None = None) -> str | None:
        """The first value of a query parameter."""
        values = self.query.get(name)
        return values[0] if values else default

    def json(self) -> Any:
        return json.loads(self.body or b"null")

    def response_json(self) -> Any:
        assert self.response_body is not None, "no response body was sent"
        return json.loads(self.response_body)


Handler = Callable[[RecordedRequest], "StubResponse | JSONLike"]


def _compile(pattern: str) -> re.Pattern[str]:
    # "/v2/stocks/{symbol}/bars" → ^/v2/stocks/(?P<symbol>[^/]+)/bars$ ; the rest is literal.
    parts = re.split(r"(\{[A-Za-z_][A-Za-z0-9_]*\})", pattern)
    regex = "".join(f"(?P<{p[1:-1]}>[^/]+)" if p.startswith("{") else re.escape(p) for p in parts)
    return re.compile(f"^{regex}$")


@dataclass
class _Route:
    method: str
    pattern: str
    regex: re.Pattern[str]
    handler: Handler


@dataclass
class _Script:
    method: str | None
    regex: re.Pattern[str]
    response: StubResponse
    remaining: int


class StubHTTPServer:
    """Threaded HTTP/1.1 server on 127.0.0.1 with an ephemeral port. Use as a context manager."""

    def __init__(self, host: str = "127.0.0.1") -> None:
        if host not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("the stub only listens on loopback")
        self._lock = threading.Lock()
        self._routes: list[_Route] = []
        self._scripts: list[_Script] = []
        self._log: list[RecordedRequest] = []
        self._stopping = threading.Event()
        self._httpd = ThreadingHTTPServer((host, 0), self._make_handler())
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # a hanging handler must not block stop()
        self._thread: threading.Thread | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> StubHTTPServer:
        if self._thread is None:
            self._thread = threading.Thread(
                target=self._httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name="stub-http",
                daemon=True,
            )
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()  # wake hanging handlers
        if self._thread is not None:
            self._httpd.shutdown()
            self._thread.join(timeout=5)
            self._thread = None
        self._httpd.server_close()

    def __enter__(self) -> StubHTTPServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- configuration -----------------------------------------------------------------------

    def route(self, method: str, pattern: str, handler: Handler | StubResponse | JSONLike) -> None:
        """Answer ``method pattern`` with ``handler`` (a later route for the same pattern wins)."""
        fn: Handler = handler if callable(handler) else (lambda _req, _h=handler: _h)  # type: ignore[misc]
        with self._lock:
            self._routes.insert(0, _Route(method.upper(), pattern, _compile(pattern), fn))

    def script(
        self, pattern: str, response: StubResponse, *, times: int = 1, method: str | None = None
    ) -> None:
        """Answer the next ``times`` requests matching ``pattern`` with ``response``, then fall through."""
        with self._lock:
            self._scripts.append(
                _Script(method.upper() if method else None, _compile(pattern), response, times)
            )

    def fail(self, pattern: str, status: int, *, times: int = 1, body: JSONLike | str | None = None) -> None:
        """Shortcut: answer ``status`` (JSON body) ``times`` times, then succeed again."""
        self.script(
            pattern,
            StubResponse(status=status, body=body or {"message": f"stub status {status}"}),
            times=times,
        )

    def hang(self, pattern: str, *, seconds: float, times: int = 1) -> None:
        """Shortcut: hold the next ``times`` matching requests for ``seconds`` (client timeout)."""
        self.script(
            pattern, StubResponse(status=504, body={"message": "stub hang"}, hang_s=seconds), times=times
        )

    def reset(self) -> None:
        """Drop scripts and the request log (routes stay)."""
        with self._lock:
            self._scripts.clear()
            self._log.clear()

    # -- inspection --------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        with self._lock:
            return list(self._log)

    @property
    def unmatched(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.route is None]

    def requests_for(self, pattern: str, method: str | None = None) -> list[RecordedRequest]:
        regex = _compile(pattern)
        return [
            r for r in self.requests if regex.match(r.path) and (method is None or r.method == method.upper())
        ]

    # -- dispatch ----------------------------------------------------------------------------

    def _dispatch(self, req: RecordedRequest) -> StubResponse:
        with self._lock:
            self._log.append(req)
            script = next(
                (
                    s
                    for s in self._scripts
                    if s.remaining > 0 and s.regex.match(req.path) and s.method in (None, req.method)
                ),
                None,
            )
            if script is not None:
                script.remaining -= 1
                req.route = script.regex.pattern
                return script.response
            for route in self._routes:
                m = route.regex.match(req.path)
                if m and route.method == req.method:
                    req.route, req.path_params = route.pattern, m.groupdict()
                    handler = route.handler
                    break
            else:
                return json_error(404, f"stub: no route for {req.method} {req.path}")
        # handlers run outside the lock so slow handlers don't serialise the server
        try:
            out = handler(req)
        except Exception as exc:  # a broken handler is a test bug: answer 500 and say why
            return json_error(500, f"stub handler error: {exc!r}")
        return out if isinstance(out, StubResponse) else StubResponse(body=out)

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class _Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self) -> None:
                parts = urlsplit(self.path)
                length = int(self.headers.get("Content-Length") or 0)
                req = RecordedRequest(
                    method=self.command,
                    path=parts.path,
                    query=parse_qs(parts.query, keep_blank_values=True),
                    headers={k.lower(): v for k, v in self.headers.items()},
                    body=self.rfile.read(length) if length else b"",
                )
                resp = server._dispatch(req)
                if resp.hang_s and server._stopping.wait(resp.hang_s):
                    self.close_connection = True
                    return
                payload, content_type = resp.encoded()
                with server._lock:  # recorded before sending so the client never sees it missing
                    req.response_status, req.response_body = resp.status, payload
                try:
                    self.send_response(resp.status)
                    headers = {"Content-Type": content_type, **resp.headers}
                    for name, value in headers.items():
                        self.send_header(name, value)
                    self.send_header("Content-Length", str(len(payload)))
                    self.end_headers()
                    if self.command != "HEAD":
                        self.wfile.write(payload)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout)
                    self.close_connection = True

            do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = do_HEAD = _handle

            def log_message(self, format: str, *args: Any) -> None:  # keep test output quiet
                pass

        return _Handler


# -- network guard ---------------------------------------------------------------------------

_MISSING = object()
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy")


class NonLoopbackAccess(AssertionError):
    """A test tried to reach a host other than this machine."""


def _is_loopback(host: object) -> bool:
    if isinstance(host, bytes):
        host = host.decode()
    text = str(host).strip("[]").split("%")[0].lower()
    if text == "localhost":
        return True
    try:
        return ipaddress.ip_address(text).is_loopback
    except ValueError:
        return False


@contextmanager
def loopback_only() -> Iterator[list[str]]:
    """Refuse (raise ``NonLoopbackAccess``) and record every attempt to leave 127.0.0.1/::1.

    Yields the list of violations: a library may swallow the exception (e.g. turn it into a
    connection error that looks "transient"), so callers should also assert the list is empty.
    """
    violations: list[str] = []

    def deny(what: str) -> None:
        violations.append(what)
        raise NonLoopbackAccess(f"test tried to reach {what} (only loopback is allowed)")

    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def connect(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            deny(f"socket {address!r}")
        return real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> Any:
        if self.family in (socket.AF_INET, socket.AF_INET6) and not _is_loopback(address[0]):
            deny(f"socket {address!r}")
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if host is not None and not _is_loopback(host):
            deny(f"DNS lookup of {host!r}")
        return real_getaddrinfo(host, *args, **kwargs)

    patches: list[tuple[Any, str, Any]] = [
        (socket.socket, "connect", connect),
        (socket.socket, "connect_ex", connect_ex),
        (socket, "getaddrinfo", getaddrinfo),
    ]
    try:  # libcurl resolves and connects in C: guard curl_cffi at its request entry point
        from curl_cffi.requests import Session as CurlSession

        real_request = CurlSession.request

        def curl_request(self: Any, method: Any, url: str, *args: Any, **kwargs: Any) -> Any:
            host = urlsplit(str(url)).hostname
            if not _is_loopback(host or ""):
                deny(f"curl_cffi {method} {url}")
            proxies = kwargs.get("proxies") or kwargs.get("proxy") or getattr(self, "proxies", None)
            if proxies and (not isinstance(proxies, dict) or any(proxies.values())):
                deny(f"curl_cffi via proxy {proxies!r}")
            return real_request(self, method, url, *args, **kwargs)

        patches.append((CurlSession, "request", curl_request))
    except ImportError:  # pragma: no cover - curl_cffi is a yfinance dependency
        pass

    # restore exactly: an attribute that was inherited (socket.socket.connect) is deleted again
    saved = [(owner, name, vars(owner).get(name, _MISSING)) for owner, name, _ in patches]
    saved_env = {k: os.environ.pop(k) for k in _PROXY_VARS if k in os.environ}
    for owner, name, fn in patches:
        setattr(owner, name, fn)
    try:
        yield violations
    finally:
        for owner, name, fn in saved:
            if fn is _MISSING:
                delattr(owner, name)
            else:
                setattr(owner, name, fn)
        os.environ.update(saved_env)


@pytest.fixture(autouse=True)
def loopback_guard():
    """Fail the test if anything tries to reach a non-loopback host (import it into a module)."""
    with loopback_only() as violations:
        yield
    assert not violations, f"non-loopback network access: {violations}"
