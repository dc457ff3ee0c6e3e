"""The server's one public port: a TLS endpoint that forwards only Flower's Fleet API.

Flower 1.42's SuperLink serves three APIs on one port: Control (``flwr ls``, ``flwr run``,
``flwr supernode register``), Runtime (tasks; without a secret in subprocess isolation) and the
Fleet API hospitals use. Without account login, anyone who reaches that port with the public CA
certificate may use all three. So ``fedmm server`` binds its SuperLink to 127.0.0.1 and puts
this gateway on the public address, with the consortium's certificate. A request goes through
only when it is a ``POST`` to exactly one of the Fleet routes (the list is read from Flower's
own Fleet router), without a query string; anything else is answered ``404`` here and never
reaches the SuperLink. SuperNodes' signed headers (node authentication) travel unchanged, so
the SuperLink still checks every hospital's key; the gateway adds no trust of its own.

It also turns away what needs no SuperLink to turn away, before reading a byte of the body:
a request not signed within Flower's timestamp window (``401``) or signed by a key the server
does not allow (``403``; its activation alone goes on, for the SuperLink to refuse),
and a body larger than its route needs (``413``: only ``push-object`` carries a model). It
sets ``X-Forwarded-For`` to the real peer and drops any forwarding header the peer sent, so
the SuperLink's log names who really connected.
"""

from __future__ import annotations

import contextlib
import logging
import ssl
import threading
import time
from collections.abc import Awaitable, Callable, MutableMapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

log = logging.getLogger("fedmm.server")
MAX_BODY_BYTES = 1 << 30  # a push-object carries one model's arrays at most
MAX_SMALL_BODY_BYTES = 1 << 20  # every other Fleet request is a small protobuf
LARGE_ROUTES = frozenset({"/v1/fleet/push-object", "/v1/fleet/push-messages"})
# A key the server does not allow is still sent on to the SuperLink here: its refusal is what
# tells the hospital's SuperNode (and `fedmm client`) that the key is not registered.
ACTIVATION_ROUTES = frozenset({"/v1/fleet/activate-node", "/v1/fleet/register-node"})
MAX_CONNECTIONS = 256
# Hop-by-hop headers (RFC 9110 §7.6.1) and what the two hops set themselves.
NOT_FORWARDED = frozenset({b"connection", b"keep-alive", b"proxy-authenticate",
                           b"proxy-authorization", b"te", b"trailer", b"transfer-encoding",
                           b"upgrade", b"host", b"content-length", b"forwarded",
                           b"x-forwarded-for", b"x-forwarded-proto", b"x-forwarded-host",
                           b"x-forwarded-port", b"x-real-ip"})
Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]


@cache
def fleet_paths() -> frozenset[str]:
    """Every route of Flower's Fleet API (``/v1/fleet/...``), from its own router."""
    from flwr.superlink.routers.fleet.router import router

    return frozenset(route.path for route in router.routes)  # type: ignore[attr-defined]


class GatewayError(RuntimeError):
    """The gateway cannot start; the message names the file or address and what to do."""


async def _respond(send: Send, status: int, text: str) -> None:
    body = text.encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"),
                            (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})


def pem_of_openssh(path: Path) -> bytes:
    """An allowed hospital's ``.pub`` file as the PEM bytes SuperNodes send."""
    from cryptography.hazmat.primitives import serialization

    key = serialization.load_ssh_public_key(Path(path).read_bytes())
    return key.public_bytes(serialization.Encoding.PEM,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def signature_check(headers: dict[bytes, bytes], allowed: frozenset[bytes]) -> int:
    """``200`` when the request carries a fresh timestamp signed by one of the ``allowed`` keys
    (PEM), as Flower's node authentication checks it; ``403`` when it is validly signed by a key
    this server does not allow (Flower's SuperNode then stops and says so, as for an
    unregistered key); ``401`` otherwise."""
    import binascii
    import datetime
    from base64 import b64decode

    from flwr.common.constant import (
        SYSTEM_TIME_TOLERANCE,
        TIMESTAMP_HEADER,
        TIMESTAMP_TOLERANCE,
    )
    from flwr.supercore.constant import FLEET_HTTP_PUBLIC_KEY_HEADER, FLEET_HTTP_SIGNATURE_HEADER
    from flwr.supercore.primitives.asymmetric import bytes_to_public_key, verify_signature

    try:
        public = b64decode(headers[FLEET_HTTP_PUBLIC_KEY_HEADER.encode()], validate=True)
        signature = b64decode(headers[FLEET_HTTP_SIGNATURE_HEADER.encode()], validate=True)
        timestamp = headers[TIMESTAMP_HEADER.encode()].decode("ascii")
        age = (datetime.datetime.now(datetime.UTC)
               - datetime.datetime.fromisoformat(timestamp)).total_seconds()
        if not -SYSTEM_TIME_TOLERANCE < age < TIMESTAMP_TOLERANCE + SYSTEM_TIME_TOLERANCE:
            return 401
        if not verify_signature(bytes_to_public_key(public), timestamp.encode("ascii"),
                                signature):
            return 401
        return 200 if public in allowed else 403
    except (KeyError, ValueError, TypeError, UnicodeError, binascii.Error):
        return 401


class FleetGateway:
    """The ASGI app: signed Fleet requests to ``upstream``, everything else turned away."""

    def __init__(self, *, upstream: str, upstream_ca: Path,
                 allowed: frozenset[bytes] | None = None) -> None:
        """``allowed``: the hospitals' public keys (PEM); ``None`` leaves authentication to
        the SuperLink alone."""
        self.upstream, self.upstream_ca = upstream.rstrip("/"), upstream_ca
        self.allowed = allowed
        self.client: Any = None
        self.refused = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(receive, send)
        elif scope["type"] == "http":
            await self._forward(scope, receive, send)

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        import httpx

        while True:
            event = await receive()
            if event["type"] == "lifespan.startup":
                context = ssl.create_default_context(cafile=str(self.upstream_ca))
                self.client = httpx.AsyncClient(verify=context, timeout=httpx.Timeout(
                    60.0, connect=10.0), limits=httpx.Limits(max_connections=256))
                await send({"type": "lifespan.startup.complete"})
            elif event["type"] == "lifespan.shutdown":
                if self.client is not None:
                    await self.client.aclose()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def _body(self, receive: Receive, limit: int) -> bytes | None:
        chunks, size = [], 0
        while True:
            event = await receive()
            if event["type"] == "http.disconnect":
                return None
            chunk = event.get("body", b"")
            size += len(chunk)
            if size > limit:
                return None
            chunks.append(chunk)
            if not event.get("more_body", False):
                return b"".join(chunks)

    async def _forward(self, scope: Scope, receive: Receive, send: Send) -> None:
        import httpx

        path = scope["path"]
        if scope["method"] != "POST" or path not in fleet_paths() or scope["query_string"]:
            self.refused += 1
            await _respond(send, 404, "not found: this port serves only Flower's Fleet API\n")
            return
        received = {k.lower(): v for k, v in scope["headers"]}
        verdict = 200 if self.allowed is None else signature_check(received, self.allowed)
        if verdict == 403 and path in ACTIVATION_ROUTES:
            verdict = 200  # the SuperLink refuses it in its own words, which the SuperNode reads
        if verdict != 200:
            self.refused += 1
            await _respond(send, verdict, "not signed by a hospital key this server allows\n")
            return
        limit = MAX_BODY_BYTES if path in LARGE_ROUTES else MAX_SMALL_BODY_BYTES
        declared = received.get(b"content-length", b"0")
        if not declared.isdigit() or int(declared) > limit:
            await _respond(send, 413, "request body too large\n")
            return
        body = await self._body(receive, limit)
        if body is None:
            await _respond(send, 413, "request body too large\n")
            return
        peer = (scope.get("client") or ("unknown", 0))[0]
        headers = [(k, v) for k, v in scope["headers"] if k.lower() not in NOT_FORWARDED]
        headers.append((b"x-forwarded-for", str(peer).encode()))
        request = self.client.build_request("POST", self.upstream + path, headers=headers,
                                            content=body)
        try:
            response = await self.client.send(request, stream=True)
        except httpx.HTTPError as error:
            log.warning("gateway: the SuperLink did not answer %s (%s)", path, error)
            await _respond(send, 502, "the aggregation server is not ready\n")
            return
        try:
            await send({"type": "http.response.start", "status": response.status_code,
                        "headers": [(k, v) for k, v in response.headers.raw
                                    if k.lower() not in NOT_FORWARDED - {b"content-length"}]})
            async for chunk in response.aiter_raw():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
            await send({"type": "http.response.body", "body": b""})
        finally:
            await response.aclose()


@dataclass
class Gateway:
    """:class:`FleetGateway` served by uvicorn with TLS in a thread of this process."""

    host: str
    port: int
    certfile: Path
    keyfile: Path
    upstream: str
    upstream_ca: Path
    allowed: frozenset[bytes] | None = None

    def __post_init__(self) -> None:
        self.app = FleetGateway(upstream=self.upstream, upstream_ca=self.upstream_ca,
                                allowed=self.allowed)
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def start(self, timeout: float = 30.0) -> None:
        import uvicorn

        try:
            ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(
                str(self.certfile), str(self.keyfile))
        except (ssl.SSLError, OSError) as error:
            raise GatewayError(f"{self.certfile} / {self.keyfile}: not a usable certificate "
                               f"and key ({getattr(error, 'reason', None) or error}); make "
                               "them with `fedmm keys init`") from None
        self._server = uvicorn.Server(uvicorn.Config(
            self.app, host=self.host, port=self.port, ssl_certfile=str(self.certfile),
            ssl_keyfile=str(self.keyfile), log_config=None, access_log=False,
            lifespan="on", proxy_headers=False, server_header=False, log_level="warning",
            limit_concurrency=MAX_CONNECTIONS, h11_max_incomplete_event_size=64 * 1024))
        self._thread = threading.Thread(target=self._server.run, name="fedmm-gateway",
                                        daemon=True)
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise GatewayError(f"could not listen on {self.host}:{self.port} (in use, or "
                                   "not an address of this machine?)")
            time.sleep(0.05)

    def stop(self) -> None:
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            with contextlib.suppress(RuntimeError):
                self._thread.join(timeout=10.0)
        self._server, self._thread = None, None
