"""Who may do what: the loopback rule, the token (bearer header or login cookie), CSRF and headers."""

from __future__ import annotations

import hmac
import ipaddress
import secrets
import threading
import time

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from daemon.errors import ConfigError

SESSION_COOKIE = "i2vd_session"
LOOPBACK_NAMES = ("localhost",)
UNSAFE_METHODS = ("POST", "PUT", "PATCH", "DELETE")
# No inline script or style anywhere; media and posters come from this origin only.
SECURITY_HEADERS = {
    "content-security-policy": "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; "
                               "media-src 'self'; connect-src 'self'; object-src 'none'; base-uri 'none'; "
                               "form-action 'self'; frame-ancestors 'none'",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "same-origin",
    "cross-origin-opener-policy": "same-origin",
    "cross-origin-resource-policy": "same-origin",
}


def is_loopback(host: str) -> bool:
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, has_token: bool) -> None:
    """Refuse to serve beyond this machine without a token."""
    if not has_token and not is_loopback(host):
        raise ConfigError(
            f"web_address {host} is reachable from other machines, and web_token is not set: set "
            "I2VD_WEB_TOKEN (16 or more characters) or bind to 127.0.0.1")


class Gate:
    """The token check: bearer header for scripts, a login session (cookie) for the page.

    A session is a random id the web process keeps with its expiry; logging out, or restarting the
    web, ends it. The token itself never sits in a browser.
    """

    def __init__(self, token: str | None, session_seconds: float = 12 * 3600) -> None:
        self.token = token
        self.session_seconds = session_seconds
        self._sessions: dict[str, float] = {}  # id -> monotonic expiry
        self._lock = threading.Lock()

    @property
    def open(self) -> bool:
        return self.token is None

    def start_session(self) -> str:
        """A new session id for the login cookie."""
        session = secrets.token_urlsafe(32)
        now = time.monotonic()
        with self._lock:
            self._sessions = {k: t for k, t in self._sessions.items() if t > now}  # forget the expired
            self._sessions[session] = now + self.session_seconds
        return session

    def end_session(self, request: Request) -> None:
        with self._lock:
            self._sessions.pop(request.cookies.get(SESSION_COOKIE, ""), None)

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(given.strip())

    def allowed(self, request: Request) -> bool:
        if self.open or self.bearer(request):
            return True
        with self._lock:
            expiry = self._sessions.get(request.cookies.get(SESSION_COOKIE, ""))
        return expiry is not None and expiry > time.monotonic()


def cross_site(request: Request) -> bool:
    """A state change a browser sent on behalf of another site (CSRF).

    Browsers say where a request comes from in Sec-Fetch-Site, computed by the browser itself, so it
    holds behind a TLS reverse proxy too; older browsers only send Origin, compared with Host. Scripts
    (curl, requests) send neither and are not browsers, so they pass (with the token, if one is set).
    """
    site = request.headers.get("sec-fetch-site")
    if site is not None:
        return site not in ("same-origin", "none")
    origin = request.headers.get("origin")
    if origin is None:
        return False
    return origin != f"{request.url.scheme}://{request.headers.get('host', '')}"


def host_allowed(host: str) -> bool:
    """A Host header naming this machine: a DNS-rebound name (evil.example -> 127.0.0.1) is not."""
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]", 1)[0]
    return is_loopback(name)


class HostCheck:
    """On a loopback address, refuses every request (schema, static files and login included) whose Host
    is not a loopback name, before any route runs."""

    def __init__(self, app: ASGIApp, bound_host: str) -> None:
        self.app = app
        self.enabled = is_loopback(bound_host)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.enabled:
            await self.app(scope, receive, send)
            return
        host = dict(scope["headers"]).get(b"host", b"").decode("latin-1")
        if host_allowed(host):
            await self.app(scope, receive, send)
            return
        await _refuse(send, 400, b'{"code": "bad_host", "error": "This server answers to localhost names only.", '
                      b'"hint": "Open it as http://127.0.0.1:PORT/ or set web_address and web_token.", '
                      b'"field_errors": []}')


class SecurityHeaders:
    """Adds SECURITY_HEADERS to every response (pages, API, files, errors)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [(k, v) for k, v in message.get("headers", [])
                           if k.decode().lower() not in SECURITY_HEADERS]
                headers += [(k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items()]
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, with_headers)


class BodyLimit:
    """Refuses request bodies over `limit` bytes before they are parsed or spooled to disk."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.limit:
            await _too_large(send, self.limit)
            return
        seen = 0

        async def counting() -> Message:
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.limit:
                raise BodyTooLarge()
            return message

        try:
            await self.app(scope, counting, send)
        except BodyTooLarge:
            await _too_large(send, self.limit)


class BodyTooLarge(Exception):
    """The request body is larger than the upload limit."""


async def _too_large(send: Send, limit: int) -> None:
    await _refuse(send, 413, b'{"code": "image_too_large", "error": "The upload is larger than '
                  + str(limit).encode() + b' bytes.", "hint": "Shrink the image or raise max_image_bytes.", '
                  b'"field_errors": []}')


async def _refuse(send: Send, status: int, body: bytes) -> None:
    """A JSON refusal sent before any route runs, with the security headers."""
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]})
    await send({"type": "http.response.body", "body": body})
