"""Who `charlm serve` answers, and for how long: what keeps other web pages and idle sockets out.

A page on another site can still make the browser send requests here: DNS rebinding gives it a
name that resolves to 127.0.0.1 (the Host header then names the attacker's domain), and a form or
a `text/plain` fetch is a "simple" request that runs without a CORS preflight. So, like Jupyter,
the server answers only loopback Host names (and the address it was told to listen on), refuses
a request whose Origin is not the page's own, and takes POST bodies only as application/json,
which a foreign page cannot send without a preflight this server never grants.
"""

from __future__ import annotations

from urllib.parse import urlsplit

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.trustedhost import TrustedHostMiddleware
from starlette.responses import JSONResponse
from uvicorn.protocols.http.h11_impl import H11Protocol

LOOPBACK_HOSTS = ("localhost", "127.0.0.1", "[::1]")
# A connection that sends no complete request head within this is closed (uvicorn's own
# keep-alive timeout starts only after a first answer, so idle sockets would be held forever).
IDLE_SECONDS = 10
KEEP_ALIVE_SECONDS = 5
# Connections and requests at once; past it uvicorn answers 503 instead of running out of descriptors.
MAX_CONCURRENCY = 100
MAX_HOST_CHARS = 253  # the longest DNS name


def allowed_hosts(bound: str) -> list[str]:
    """Host header names answered: loopback, plus the address `serve --host` listens on."""
    bound = bound.lower()
    if ":" in bound and not bound.startswith("["):
        bound = f"[{bound}]"  # an IPv6 literal appears bracketed in a Host header
    return list(dict.fromkeys([*LOOPBACK_HOSTS, bound]))


def _refusal(method: str, headers: Headers) -> tuple[int, str] | None:
    origin = headers.get("origin")
    if origin is not None:
        parts = urlsplit(origin)
        if parts.scheme not in ("http", "https") or parts.netloc.lower() != headers.get("host", "").lower():
            return 403, f"requests from another site ({origin[:80]!r}) are refused; open the page from this server"
    if method == "POST":
        kind = headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "application/json":
            return 415, "POST bodies must be JSON sent with Content-Type: application/json"
    return None


class SameOriginMiddleware:
    """Refuse a foreign Origin (403) and a POST that is not application/json (415), as one JSON line."""

    def __init__(self, app):
        self.app = app

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http":
            refused = _refusal(scope["method"], Headers(scope=scope))
            if refused is not None:
                status, message = refused
                await JSONResponse({"error": message}, status_code=status)(scope, receive, send)
                return
        await self.app(scope, receive, send)


def middleware(bound: str) -> list[Middleware]:
    return [Middleware(TrustedHostMiddleware, allowed_hosts=allowed_hosts(bound), www_redirect=False),
            Middleware(SameOriginMiddleware)]


class BoundedH11Protocol(H11Protocol):
    """uvicorn's HTTP/1.1, closing a connection that starts no request within IDLE_SECONDS of
    opening or of its last answer (a stalled or half-sent request head included)."""

    def connection_made(self, transport) -> None:
        super().connection_made(transport)
        self._watch()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        self._watch()

    def _watch(self) -> None:
        self.loop.call_later(IDLE_SECONDS, self._close_if_idle, self.cycle)

    def _close_if_idle(self, cycle_then) -> None:
        if self.cycle is cycle_then and not self.transport.is_closing():
            self.transport.close()


def server_options() -> dict:
    """uvicorn.run's keywords for the bounds above."""
    return dict(http=BoundedH11Protocol, timeout_keep_alive=KEEP_ALIVE_SECONDS, limit_concurrency=MAX_CONCURRENCY,
                timeout_graceful_shutdown=2)
