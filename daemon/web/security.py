"""Who may do what: the loopback rule, the token (bearer header or login cookie), CSRF and headers."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress

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


def check_exposure(host: str, token: str | None) -> None:
    """Refuse to serve beyond this machine without a token."""
    if token is None and not is_loopback(host):
        raise ConfigError(
            f"web_address {host} is reachable from other machines, and web_token is not set: set "
            "I2VD_WEB_TOKEN (16 or more characters) or bind to 127.0.0.1")


class Gate:
    """The token check: bearer header for scripts, a login cookie for the page."""

    def __init__(self, token: str | None) -> None:
        self.token = token

    @property
    def open(self) -> bool:
        return self.token is None

    def session_value(self) -> str:
        """The cookie's value: derived from the token, so the token itself never sits in a browser."""
        return hmac.new(self.token.encode(), b"i2vd-web-session", hashlib.sha256).hexdigest()

    def token_matches(self, given: str) -> bool:
        return self.token is not None and hmac.compare_digest(given.encode(), self.token.encode())

    def bearer(self, request: Request) -> bool:
        scheme, _, given = request.headers.get("authorization", "").partition(" ")
        return scheme.lower() == "bearer" and self.token_matches(given.strip())

    def allowed(self, request: Request) -> bool:
        if self.open or self.bearer(request):
            return True
        cookie = request.cookies.get(SESSION_COOKIE, "")
        return hmac.compare_digest(cookie.encode(), self.session_value().encode())


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
    return origin.partition("://")[2] != request.headers.get("host", "")


def host_allowed(request: Request, bound_host: str) -> bool:
    """On loopback, only loopback host names: a DNS-rebound name (evil.example -> 127.0.0.1) is refused."""
    if not is_loopback(bound_host):
        return True
    host = request.headers.get("host", "")
    name = host.rsplit(":", 1)[0] if not host.startswith("[") else host[1:].split("]", 1)[0]
    return is_loopback(name)


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
    body = (b'{"code": "image_too_large", "error": "The upload is larger than ' + str(limit).encode()
            + b' bytes.", "hint": "Shrink the image or raise max_image_bytes.", "field_errors": []}')
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode()),
                            *((k.encode(), v.encode()) for k, v in SECURITY_HEADERS.items())]})
    await send({"type": "http.response.body", "body": body})
