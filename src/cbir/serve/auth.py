"""``cbir serve`` off loopback: a bearer token (or the cookie of a login form) and the usual response headers.

With a token, every request needs ``Authorization: Bearer <token>`` or the session cookie that
``POST /login`` sets after checking the token; only the login page and its stylesheet are open.
The cookie holds an HMAC of the token, never the token, and the token is compared in constant
time. Without a token the server may only listen on a loopback address (:func:`token_problem`).
"""

from __future__ import annotations

import hashlib
import hmac
import html
import ipaddress
import json
from urllib.parse import parse_qs

from starlette.types import ASGIApp, Message, Receive, Scope, Send

TOKEN_ENV = "CBIR_TOKEN"
MIN_TOKEN_LENGTH = 16
SESSION_COOKIE = "cbir_session"
LOGIN_PATH = "/login"
LOGOUT_PATH = "/logout"
OPEN_PATHS = frozenset({LOGIN_PATH, "/static/style.css"})
API_PREFIXES = ("/api/", "/openapi.json")
MAX_LOGIN_BODY = 4096
CONTENT_SECURITY_POLICY = (
    "default-src 'self'; img-src 'self' blob: data:; object-src 'none'; base-uri 'none'; "
    "frame-ancestors 'none'; form-action 'self'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}
MAKE_TOKEN = "python -c 'import secrets; print(secrets.token_urlsafe(32))'"


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return host == "localhost"


def token_problem(host: str, token: str | None) -> str | None:
    """Why the server must not start with this address and token (None: it may)."""
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        return (
            f"the token is {len(token)} characters long; use at least {MIN_TOKEN_LENGTH} random characters, "
            f"e.g. {TOKEN_ENV}=$({MAKE_TOKEN})"
        )
    if token is None and not is_loopback(host):
        return (
            f"--host {host} is not a loopback address: anyone who can reach this machine could use the server. "
            f"Give a token with the {TOKEN_ENV} environment variable (or --token, which other users can see in "
            f"the process list), e.g. export {TOKEN_ENV}=$({MAKE_TOKEN}); clients then send "
            "'Authorization: Bearer <token>', and browsers log in at /login"
        )
    return None


def session_value(token: str) -> str:
    """The session cookie's value: an HMAC of the token (the cookie never carries the token itself)."""
    return hmac.new(token.encode(), b"cbir serve session v1", hashlib.sha256).hexdigest()


def _same(given: str, expected: str) -> bool:
    return hmac.compare_digest(given.encode("utf-8", "surrogateescape"), expected.encode())


def _headers(scope: Scope) -> dict[str, str]:
    return {key.decode("latin-1").lower(): value.decode("latin-1") for key, value in scope["headers"]}


def _cookies(header: str) -> dict[str, str]:
    cookies = {}
    for part in header.split(";"):
        name, _, value = part.strip().partition("=")
        if name:
            cookies[name] = value
    return cookies


async def _send(send: Send, status: int, body: bytes, headers: list[tuple[str, str]]) -> None:
    raw = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in [*headers, ("content-length", str(len(body)))]]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def login_page(message: str = "") -> bytes:
    note = f'<p id="login-error" role="alert">{html.escape(message)}</p>' if message else ""
    return f"""<!doctype html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <meta name="viewport" content="width=device-width, initial-scale=1">
  <title>cbir: log in</title>
  <link rel="stylesheet" href="/static/style.css">
</head>
<body>
  <header><h1>cbir <span class="subtitle">content-based image retrieval</span></h1></header>
  <main id="login">
    <form method="post" action="{LOGIN_PATH}">
      <h2>Log in</h2>
      <p class="muted">This server asks for the token it was started with.</p>
      <label for="token">Token</label>
      <input type="password" id="token" name="token" autocomplete="current-password" required>
      <button type="submit">Log in</button>
      {note}
    </form>
  </main>
</body>
</html>
""".encode()


class TokenAuth:
    """ASGI middleware: requests need the bearer token or the session cookie; ``/login`` sets the cookie.

    Unauthenticated API requests (``/api/...``, ``/openapi.json``) get a 401 with
    ``WWW-Authenticate: Bearer``; pages get a redirect to the login form.
    """

    def __init__(self, app: ASGIApp, token: str) -> None:
        self.app = app
        self.token = token
        self.session = session_value(token)

    def authenticated(self, headers: dict[str, str]) -> bool:
        scheme, _, credentials = headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and _same(credentials.strip(), self.token):
            return True
        cookie = _cookies(headers.get("cookie", "")).get(SESSION_COOKIE)
        return cookie is not None and _same(cookie, self.session)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path, method = scope["path"], scope["method"]
        if path == LOGIN_PATH:
            await self.login(scope, receive, send)
            return
        if path == LOGOUT_PATH:
            expired = f"{SESSION_COOKIE}=; Max-Age=0; Path=/; HttpOnly; SameSite=Strict"
            await _send(send, 303, b"", [("location", LOGIN_PATH), ("set-cookie", expired)])
            return
        headers = _headers(scope)
        if path in OPEN_PATHS or self.authenticated(headers):
            await self.app(scope, receive, send)
            return
        if path.startswith(API_PREFIXES) or method not in ("GET", "HEAD"):
            detail = "this server needs its token: send 'Authorization: Bearer <token>' or log in at /login"
            body = json.dumps({"detail": detail}).encode()
            await _send(send, 401, body, [("content-type", "application/json"),
                                          ("www-authenticate", 'Bearer realm="cbir serve"')])  # fmt: skip
            return
        await _send(send, 303, b"", [("location", LOGIN_PATH), ("cache-control", "no-store")])

    async def login(self, scope: Scope, receive: Receive, send: Send) -> None:
        html_type = ("content-type", "text/html; charset=utf-8")
        if scope["method"] != "POST":
            await _send(send, 200, login_page(), [html_type, ("cache-control", "no-store")])
            return
        body = b""
        more = True
        while more:
            message: Message = await receive()
            if message["type"] == "http.disconnect":
                return
            body += message.get("body", b"")
            more = message.get("more_body", False)
            if len(body) > MAX_LOGIN_BODY:
                await _send(send, 413, login_page("The form is too large."), [html_type])
                return
        fields = parse_qs(body.decode("utf-8", "replace"), keep_blank_values=True)
        given = (fields.get("token") or [""])[0]
        if not _same(given, self.token):
            await _send(send, 401, login_page("Wrong token."), [html_type, ("cache-control", "no-store")])
            return
        secure = "; Secure" if scope.get("scheme") == "https" else ""
        cookie = f"{SESSION_COOKIE}={self.session}; Path=/; HttpOnly; SameSite=Strict{secure}"
        await _send(send, 303, b"", [("location", "/"), ("set-cookie", cookie), ("cache-control", "no-store")])


class SecurityHeaders:
    """ASGI middleware: the CSP, ``nosniff``, ``no-referrer`` and ``DENY`` framing on every response."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.headers = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in SECURITY_HEADERS.items()]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                present = {key.lower() for key, _ in message.get("headers", [])}
                message["headers"] = [*message.get("headers", []), *(h for h in self.headers if h[0] not in present)]
            await send(message)

        await self.app(scope, receive, with_headers)
