"""The small web server behind ``fedmm dashboard``: one page, a JSON view, SVG charts.

Both live views (the run view in ``server/dashboard.py``, a hospital's view in
``client/dashboard.py``) build a :class:`DashboardApp` from a few read-only handlers and serve
it with uvicorn. Shared here: the access rules (a random token compared in constant time, taken
from ``?token=`` once and then kept in an HttpOnly cookie, a browser being sent on to the same
page without it in the address bar; on a loopback address the ``Host`` header must name
loopback too, against DNS rebinding), the page with its polling script (no
CDN: it works offline), and serving in the foreground or in a thread.

The handlers read files on each request and never write; they run in a worker thread, so a
slow disk never stalls the event loop.
"""

from __future__ import annotations

import asyncio
import errno
import hmac
import html
import ipaddress
import json
import os
import secrets
import socket
import stat
import threading
import time
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
TOKEN_PARAM = "token"
COOKIE_PREFIX = "fedmm_dashboard_"
POLL_MS = 2000
VIEW_PATH = "/api/view"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "::1"})
MAX_READ_BYTES = 32 * 2**20  # a file shown whole: metrics.jsonl, the audit log, the report
MAX_LINE_BYTES = 4 * 2**20  # one JSON line of it
MAX_CONNECTIONS = 64
REQUEST_DEADLINE_S = 10.0  # a connection that has not sent a whole request by then is closed


class DashboardError(RuntimeError):
    """The dashboard cannot start as asked; the message says why in one line."""


@dataclass(frozen=True)
class Response:
    """What a handler answers: status, media type and body."""

    body: bytes
    content_type: str = "text/html; charset=utf-8"
    status: int = 200

    @classmethod
    def json(cls, value: Any) -> Response:
        return cls(json.dumps(value).encode(), "application/json")

    @classmethod
    def svg(cls, text: str) -> Response:
        return cls(text.encode(), "image/svg+xml")

    @classmethod
    def text(cls, text: str, status: int) -> Response:
        return cls(text.encode(), "text/plain; charset=utf-8", status)


Handler = Callable[[Mapping[str, str]], Response]


def is_loopback(host: str) -> bool:
    """Whether ``host`` (a name or an address) stays on this machine."""
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def read_inside(root: Path, path: Path, limit: int | None = None) -> bytes:
    """The bytes of ``path``, a regular file under ``root``, reached without following a
    symbolic link below ``root`` (one planted in a run or state folder must not show a file
    from elsewhere) and opened without blocking (a FIFO is refused, not waited on). Over
    ``limit`` bytes (:data:`MAX_READ_BYTES`): OSError(EFBIG) instead of reading it. Missing:
    FileNotFoundError."""
    limit = MAX_READ_BYTES if limit is None else limit
    parts = path.relative_to(root).parts
    folder = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for part in parts[:-1]:
            inner = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=folder)
            os.close(folder)
            folder = inner
        fd = os.open(parts[-1], os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)
    finally:
        os.close(folder)
    with os.fdopen(fd, "rb") as handle:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise OSError(errno.EINVAL, "not a regular file", str(path))
        if info.st_size > limit:
            raise OSError(errno.EFBIG, f"{info.st_size} bytes, more than the {limit} this view "
                          "reads", str(path))
        data = handle.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"more than the {limit} bytes this view reads", str(path))
    return data


def json_lines(text: str) -> list[Any]:
    """The JSON values of ``text``'s lines, in order; a torn, hostile (over
    :data:`MAX_LINE_BYTES`, nested past the parser's depth) or unreadable line ends the list."""
    values = []
    for line in text.splitlines():
        if not line.strip():
            continue
        if len(line) > MAX_LINE_BYTES:
            break
        try:
            values.append(json.loads(line))
        except (ValueError, RecursionError):
            break
    return values


def new_token() -> str:
    return secrets.token_urlsafe(24)


def secret_prefix() -> str:
    """Where a view behind a token is served: ``/v/`` and a random name (see
    :class:`DashboardApp`)."""
    return "/v/" + secrets.token_urlsafe(9)


def _host_only(header: str) -> str:
    """``127.0.0.1:8050`` → ``127.0.0.1``; ``[::1]:8050`` → ``::1``."""
    if header.startswith("["):
        return header[1:].partition("]")[0]
    return header.rpartition(":")[0] if header.count(":") == 1 else header


@dataclass
class DashboardApp:
    """An ASGI app serving GET routes, each a read-only :data:`Handler`.

    ``token``: required on every request (query parameter once, then the cookie) when set.
    ``loopback_only_hosts``: refuse a ``Host`` header that does not name loopback.
    ``prefix``: the routes are served under it (``/v/<random>``, see :func:`secret_prefix`),
    and so is the cookie: browsers send a cookie to every port of a host, and this keeps
    another local user's server on ``127.0.0.1`` from receiving the token with it."""

    routes: Mapping[str, Handler]
    token: str | None = None
    loopback_only_hosts: bool = True
    prefix: str = ""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                event = await receive()
                if event["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif event["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "http":
            return
        response, cookie = self._refusal(scope), None
        if response is None:
            query = {k: v[-1] for k, v in parse_qs(scope.get("query_string", b"").decode(
                "latin-1")).items()}
            path = scope["path"]
            handler = (self.routes.get(path[len(self.prefix):])
                       if path.startswith(self.prefix + "/") else None)
            if self.token is not None and TOKEN_PARAM in query:
                cookie = self._cookie(scope)
                if _navigation(scope):  # the token leaves the address bar and history
                    response = Response(b"", status=303)
                    await _send(send, response, cookie, head=True,
                                location=path if handler else self.prefix + "/")
                    return
            response = (Response.text("not found", 404) if handler is None
                        else await asyncio.to_thread(handler, query))
        await _send(send, response, cookie, head=scope["method"] == "HEAD")

    def _refusal(self, scope: Scope) -> Response | None:
        if scope["method"] not in ("GET", "HEAD"):
            return Response.text("read-only: GET only", 405)
        headers = {k.decode("latin-1").lower(): v.decode("latin-1")
                   for k, v in scope.get("headers", [])}
        if self.loopback_only_hosts and not is_loopback(_host_only(headers.get("host", ""))):
            return Response.text("this dashboard answers loopback host names only", 403)
        if self.token is not None and not self._authorised(scope, headers):
            return Response.text("token required: open the URL printed when the dashboard "
                                 "started", 401)
        return None

    def _cookie_name(self, scope: Scope) -> str:
        server = scope.get("server") or ("", 0)
        return f"{COOKIE_PREFIX}{server[1] or 0}"

    def _cookie(self, scope: Scope) -> str:
        return (f"{self._cookie_name(scope)}={self.token}; HttpOnly; SameSite=Strict; "
                f"Path={self.prefix}/"
                + ("; Secure" if scope.get("scheme") == "https" else ""))

    def _authorised(self, scope: Scope, headers: Mapping[str, str]) -> bool:
        assert self.token is not None
        offered = parse_qs(scope.get("query_string", b"").decode("latin-1")).get(TOKEN_PARAM, [])
        name = self._cookie_name(scope) + "="
        offered += [part.strip()[len(name):] for part in headers.get("cookie", "").split(";")
                    if part.strip().startswith(name)]
        expected = self.token.encode()
        return any(hmac.compare_digest(value.encode(), expected) for value in offered)


def _navigation(scope: Scope) -> bool:
    """Whether a browser opens this URL in its address bar (Fetch Metadata)."""
    return any(k.lower() == b"sec-fetch-mode" and v == b"navigate"
               for k, v in scope.get("headers", []))


async def _send(send: Send, response: Response, cookie: str | None, *, head: bool,
                location: str | None = None) -> None:
    headers = [(b"content-type", response.content_type.encode()),
               (b"content-length", str(len(response.body)).encode()),
               (b"cache-control", b"no-store"),
               (b"x-content-type-options", b"nosniff"),
               (b"referrer-policy", b"no-referrer"),
               (b"content-security-policy",
                b"default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
                b"script-src 'unsafe-inline'; connect-src 'self'")]
    if cookie is not None:
        headers.append((b"set-cookie", cookie.encode()))
    if location is not None:
        headers.append((b"location", location.encode()))
    await send({"type": "http.response.start", "status": response.status, "headers": headers})
    await send({"type": "http.response.body", "body": b"" if head else response.body})


_STYLE = """
body{font:14px/1.4 system-ui,sans-serif;margin:1.5em;color:#222;max-width:1200px}
h1{font-size:1.4em;margin:0 0 .3em}h2{font-size:1.1em;margin:1.2em 0 .4em}
table{border-collapse:collapse;font-size:13px}td,th{border:1px solid #ccc;padding:2px 6px;
text-align:right}th{background:#f3f3f3}td.l,th.l{text-align:left}
.ok{background:#dff3df}.refused{background:#fde2c8}.dropped,.failed,.rejected,.error{
background:#f7d0d0}.muted{color:#777}.charts img{width:24.5%;min-width:240px}
pre{background:#f7f7f7;padding:.6em;overflow:auto;max-height:30em}
"""

_SCRIPT = """
async function refresh(){
  try{
    const r=await fetch('%(view)s',{credentials:'same-origin',cache:'no-store'});
    if(!r.ok){document.getElementById('conn').textContent='server answered '+r.status;return;}
    const v=await r.json();
    for(const [id,markup] of Object.entries(v.sections)){
      const el=document.getElementById(id);
      if(el&&el.dataset.markup!==markup){el.innerHTML=markup;el.dataset.markup=markup;}
    }
    document.getElementById('conn').textContent='updated '+new Date().toLocaleTimeString();
  }catch(e){document.getElementById('conn').textContent='not reachable';}
}
setInterval(refresh,%(poll)d);
"""


def page(title: str, sections: Mapping[str, str]) -> str:
    """The whole page: the sections as rendered now, refreshed from the JSON view."""
    body = "".join(f'<section id="{html.escape(key)}">{markup}</section>'
                   for key, markup in sections.items())
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}"
            f"</title><style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>"
            f"<div class='muted' id='conn'>live: refreshes every {POLL_MS // 1000} s</div>"
            f"{body}<script>{_SCRIPT % {'view': VIEW_PATH.lstrip('/'), 'poll': POLL_MS}}"
            "</script></body></html>")


def table(headers: list[str], rows: list[tuple[list[str], dict[str, str]]]) -> str:
    """An HTML table; each row is (cells already escaped, attributes of its <tr>)."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    body = "".join(
        "<tr" + "".join(f' {k}="{html.escape(v)}"' for k, v in attrs.items()) + ">"
        + "".join(cell if cell.startswith("<td") else f"<td>{cell}</td>" for cell in cells)
        + "</tr>" for cells, attrs in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def number(value: Any, digits: int = 3) -> str:
    """A figure for a table cell: rounded, "–" when absent, escaped text when not a number."""
    if value is None:
        return "–"
    try:
        return f"{float(value):.{digits}f}"
    except (TypeError, ValueError):
        return html.escape(str(value))


DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8050


@dataclass(frozen=True)
class Listen:
    """Where to serve: address, port (0: any free one) and optional TLS files."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @property
    def scheme(self) -> str:
        return "https" if self.tls_cert else "http"

    def url(self, port: int, token: str | None, prefix: str = "") -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return (f"{self.scheme}://{host}:{port}{prefix}/"
                + (f"?{TOKEN_PARAM}={token}" if token else ""))


def bind(listen: Listen) -> socket.socket:
    """The listening socket, bound now so that a port in use is one clear error."""
    family = socket.AF_INET6 if ":" in listen.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((listen.host, listen.port))
    except OSError as error:
        sock.close()
        raise DashboardError(f"cannot listen on {listen.host}:{listen.port} "
                             f"({error.strerror or error}); pick another --port") from None
    sock.listen(64)
    sock.set_inheritable(True)
    return sock


@dataclass
class Served:
    """A dashboard listening: its URL, and (when in a thread) a way to stop it."""

    url: str
    port: int
    server: Any
    thread: threading.Thread | None = None

    def stop(self, timeout: float = 5.0) -> None:
        self.server.should_exit = True
        if self.thread is not None:
            self.thread.join(timeout)


def _guarded_protocol() -> type:
    """uvicorn's h11 protocol, bounded against clients that hold connections open: past
    :data:`MAX_CONNECTIONS` a new one is closed at once, and one that has not sent a whole
    request within :data:`REQUEST_DEADLINE_S` of connecting (or of its last answer) is closed,
    however slowly it trickles bytes. uvicorn alone times out only idle keep-alive connections,
    so a few hundred half-sent requests would hold file descriptors of the process that runs
    the dashboard (``fedmm server --dashboard``: the server's) until it could open no more."""
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class Guarded(H11Protocol):
        _deadline: asyncio.TimerHandle | None = None

        def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
            super().connection_made(transport)
            if len(self.connections) > MAX_CONNECTIONS:
                transport.close()
                return
            self._arm()

        def _arm(self) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            self._deadline = self.loop.call_later(REQUEST_DEADLINE_S, self._expire)

        def _expire(self) -> None:
            if self.cycle is None or self.cycle.response_complete:  # no request being answered
                self.transport.close()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._deadline is not None:
                self._deadline.cancel()
            super().connection_lost(exc)

    return Guarded


def _uvicorn_server(app: DashboardApp, listen: Listen) -> Any:
    import uvicorn

    if (listen.tls_cert is None) != (listen.tls_key is None):
        raise DashboardError("give both --tls-cert and --tls-key, or neither")
    return uvicorn.Server(uvicorn.Config(
        app, log_config=None, access_log=False, lifespan="on", server_header=False,
        log_level="warning", proxy_headers=False, limit_concurrency=MAX_CONNECTIONS,
        http=_guarded_protocol(),
        ssl_certfile=str(listen.tls_cert) if listen.tls_cert else None,
        ssl_keyfile=str(listen.tls_key) if listen.tls_key else None))


def serve(app: DashboardApp, listen: Listen, *, in_thread: bool,
          on_ready: Callable[[Served], None] = lambda served: None) -> Served:
    """Serve ``app``: in a daemon thread (returns once listening) or in the foreground
    (returns when stopped; Ctrl-C raises KeyboardInterrupt after a clean shutdown)."""
    sock = bind(listen)
    port = sock.getsockname()[1]
    served = Served(listen.url(port, app.token, app.prefix), port, _uvicorn_server(app, listen))
    if not in_thread:
        on_ready(served)
        served.server.run(sockets=[sock])
        return served
    served.thread = threading.Thread(target=served.server.run, kwargs={"sockets": [sock]},
                                     name="fedmm-dashboard", daemon=True)
    served.thread.start()
    deadline = time.monotonic() + 30
    while not served.server.started:
        if not served.thread.is_alive() or time.monotonic() > deadline:
            raise DashboardError(f"the dashboard did not start on {listen.host}:{port}")
        time.sleep(0.02)
    on_ready(served)
    return served
