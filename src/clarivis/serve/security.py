"""Who may talk to the service: the API key and the Host header, both checked in one ASGI
middleware in front of every route, the docs, the web page and its static files included.

- The key (when set) guards everything but the liveness probes (`/healthz`, `/v2/health/live`),
  which a container runtime or load balancer calls without credentials and which say nothing but
  "the process answers"; `/metrics` is opened with `public_metrics` for a Prometheus scraper.
  Clients send it as `X-API-Key: KEY` or `Authorization: Bearer KEY`; a browser signs in once on
  the login form at `/`, which sets an HttpOnly, SameSite=Strict cookie (so no other site's page
  can make the browser send it).
- The Host header must name the server (DNS rebinding: a web page on evil.example that resolves
  its own name to 127.0.0.1 would otherwise reach a loopback service from the user's browser).
  Allowed hosts default to the bind address; `0.0.0.0`/`::` bind to every interface, so any name
  may reach them and only `--allowed-hosts` narrows it.
"""

from __future__ import annotations

import hashlib
import hmac
import json
from collections.abc import Iterable
from urllib.parse import parse_qs

from clarivis.extras import needs

with needs("serve", "clarivis serve"):
    from starlette.types import ASGIApp, Receive, Scope, Send

API_KEY_HEADER = "X-API-Key"
COOKIE = "clarivis_key"
LOGIN_PATH = "/login"
# Paths no check applies to: liveness only. Readiness is guarded: it names the model version.
OPEN_PATHS = frozenset({"/healthz", "/v2/health/live"})
LOOPBACK_NAMES = ("127.0.0.1", "localhost", "::1")
WILDCARD_BINDS = ("0.0.0.0", "::", "")


def allowed_hosts_for(bind_host: str, extra: Iterable[str] = ()) -> list[str] | None:
    """Host header names the server answers to: `extra` when given (`*` allows any), else the bind
    address (its loopback aliases for a loopback bind); None means any (a wildcard bind)."""
    names = [h.strip().lower() for h in extra if h.strip()]
    if names:
        return None if "*" in names else names
    host = bind_host.strip().lower()
    if host in WILDCARD_BINDS:
        return None
    if host in LOOPBACK_NAMES:
        return list(LOOPBACK_NAMES)
    return [host]


class AccessGuard:
    """ASGI middleware: 400 for a Host header not allowed, 401 without the key."""

    def __init__(self, app: ASGIApp, *, api_key: str | None, allowed_hosts: list[str] | None,
                 public_metrics: bool = False) -> None:
        self.app = app
        self.api_key = api_key
        self.allowed_hosts = None if allowed_hosts is None else {h.lower().strip("[]") for h in allowed_hosts}
        self.open_paths = OPEN_PATHS | ({"/metrics"} if public_metrics else set())

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] in OPEN_PATHS:
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        if not self._host_ok(headers.get("host", "")):
            await _json(send, 400, "Host header not allowed for this server; use the address it "
                                   "listens on, or start it with --allowed-hosts NAME")
            return
        if self.api_key is None or scope["path"] in self.open_paths:
            await self.app(scope, receive, send)
            return
        if scope["path"] == LOGIN_PATH and scope["method"] == "POST":
            await self._login(receive, send)
            return
        if self._key_ok(headers):
            await self.app(scope, receive, send)
            return
        if scope["method"] == "GET" and scope["path"] == "/" and "text/html" in headers.get("accept", ""):
            await _send(send, 401, LOGIN_PAGE.encode(), b"text/html; charset=utf-8")
            return
        await _json(send, 401, f"missing or wrong API key; send it as header {API_KEY_HEADER}: KEY "
                               "or Authorization: Bearer KEY", [(b"www-authenticate", b"Bearer")])

    def _host_ok(self, host: str) -> bool:
        return self.allowed_hosts is None or host_name(host) in self.allowed_hosts

    def _key_ok(self, headers: dict[str, str]) -> bool:
        given = headers.get(API_KEY_HEADER.lower())
        bearer = headers.get("authorization", "")
        if given is None and bearer.lower().startswith("bearer "):
            given = bearer[7:].strip()
        if given is None:
            given = _cookie(headers.get("cookie", ""), COOKIE)
        return given is not None and key_matches(given, self.api_key or "")

    async def _login(self, receive: Receive, send: Send) -> None:
        """The login form's POST: the key in a form field -> the cookie, back to the page."""
        body, more = b"", True
        while more and len(body) < 4096:  # a key is short; a larger body is not a login
            message = await receive()
            body += message.get("body", b"")
            more = message.get("more_body", False)
        given = (parse_qs(body.decode("latin-1")).get("key") or [""])[0]
        if not key_matches(given, self.api_key or ""):
            await _send(send, 401, LOGIN_PAGE.replace("<!--error-->", "<p>wrong key</p>").encode(),
                        b"text/html; charset=utf-8")
            return
        cookie = f"{COOKIE}={given}; HttpOnly; SameSite=Strict; Path=/".encode("latin-1")
        await _send(send, 303, b"", b"text/plain", [(b"location", b"/"), (b"set-cookie", cookie)])


def host_name(host: str) -> str:
    """The name in a Host header, without the port: 'localhost:8000' -> 'localhost',
    '[::1]:8000' -> '::1'."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:host.find("]")] if "]" in host else host[1:]
    return host.rsplit(":", 1)[0]


def key_matches(given: str, api_key: str) -> bool:
    """Constant-time: the time taken says nothing about how much of the key was right. Both
    sides are hashed first, so their lengths do not show either."""
    digest = hashlib.sha256
    return hmac.compare_digest(digest(given.encode()).digest(), digest(api_key.encode()).digest())


def add_security_scheme(schema: dict) -> dict:
    """The API-key scheme in an OpenAPI document: every operation needs it but the liveness
    probes (and /metrics when it is public)."""
    schemes = schema.setdefault("components", {}).setdefault("securitySchemes", {})
    schemes["ApiKey"] = {"type": "apiKey", "in": "header", "name": API_KEY_HEADER}
    schemes["Bearer"] = {"type": "http", "scheme": "bearer"}
    schema["security"] = [{"ApiKey": []}, {"Bearer": []}]
    for path in OPEN_PATHS:
        for operation in schema.get("paths", {}).get(path, {}).values():
            operation["security"] = []
    return schema


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        key, _, value = part.strip().partition("=")
        if key == name:
            return value
    return None


async def _json(send: Send, status: int, detail: str, headers: list | None = None) -> None:
    await _send(send, status, json.dumps({"detail": detail}).encode(), b"application/json", headers)


async def _send(send: Send, status: int, body: bytes, content_type: bytes,
                headers: list | None = None) -> None:
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", content_type), (b"content-length", str(len(body)).encode()),
                            *(headers or [])]})
    await send({"type": "http.response.body", "body": body})


LOGIN_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>clarivis: sign in</title>
<style>body{font-family:system-ui,sans-serif;max-width:28rem;margin:4rem auto;padding:0 1rem}
input{font:inherit;padding:.4rem;width:100%;box-sizing:border-box;margin:.5rem 0}</style></head>
<body><h1>clarivis</h1><p>This server needs its API key.</p><!--error-->
<form method="post" action="/login"><label>API key <input name="key" type="password"
autocomplete="current-password" autofocus required></label><button type="submit">Sign in</button></form>
</body></html>
"""
