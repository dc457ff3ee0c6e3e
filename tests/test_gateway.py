"""The server's public port forwards Flower's Fleet API and nothing else, over real TLS."""

from __future__ import annotations

import json
import ssl
import threading
import time
import urllib.error
import urllib.request

import pytest

from common.pki import init_keys, make_loopback_tls
from common.processes import free_port
from server.gateway import Gateway, GatewayError, fleet_paths


def _echo_app():
    async def app(scope, receive, send):
        if scope["type"] != "http":
            return
        body = b""
        while True:
            event = await receive()
            body += event.get("body", b"")
            if not event.get("more_body"):
                break
        payload = json.dumps({"path": scope["path"], "body": body.decode(),
                              "headers": {k.decode(): v.decode()
                                          for k, v in scope["headers"]}}).encode()
        await send({"type": "http.response.start", "status": 200,
                    "headers": [(b"content-type", b"application/json"),
                                (b"x-upstream", b"superlink")]})
        await send({"type": "http.response.body", "body": payload})
    return app


@pytest.fixture(scope="module")
def gateway(tmp_path_factory):
    """A gateway with the consortium's certificate in front of an HTTPS stand-in for the
    SuperLink (loopback certificate) that echoes what reached it."""
    import uvicorn

    root = tmp_path_factory.mktemp("gateway")
    layout = init_keys(root / "keys", server_hosts=["fl.example.org", "127.0.0.1"],
                       hospitals=[])
    loopback = make_loopback_tls(root / "loopback")
    upstream_port = free_port()
    upstream = uvicorn.Server(uvicorn.Config(
        _echo_app(), host="127.0.0.1", port=upstream_port, ssl_certfile=str(loopback.cert),
        ssl_keyfile=str(loopback.key), log_config=None, lifespan="off", log_level="error"))
    thread = threading.Thread(target=upstream.run, daemon=True)
    thread.start()
    while not upstream.started:
        time.sleep(0.05)
    front = Gateway(host="127.0.0.1", port=free_port(), certfile=layout.server_cert,
                    keyfile=layout.server_key, upstream=f"https://127.0.0.1:{upstream_port}",
                    upstream_ca=loopback.ca_cert)
    front.start()
    yield front, layout
    front.stop()
    upstream.should_exit = True
    thread.join(timeout=10)


def _post(gateway: Gateway, ca, path: str, *, method: str = "POST", body: bytes = b"x",
          headers: dict[str, str] | None = None):
    context = ssl.create_default_context(cafile=str(ca))
    request = urllib.request.Request(f"https://127.0.0.1:{gateway.port}{path}", data=body,
                                     method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, context=context, timeout=10) as response:
            return response.status, dict(response.headers), response.read()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read()


def test_fleet_routes_reach_the_superlink_with_their_signed_headers(gateway) -> None:
    front, layout = gateway
    status, headers, body = _post(front, layout.ca_cert, "/v1/fleet/pull-messages",
                                  body=b"protobuf", headers={"flwr-public-key": "abc",
                                                             "flwr-signature": "sig"})
    echoed = json.loads(body)
    assert status == 200 and headers["x-upstream"] == "superlink"
    assert echoed["path"] == "/v1/fleet/pull-messages" and echoed["body"] == "protobuf"
    assert echoed["headers"]["flwr-public-key"] == "abc"
    assert echoed["headers"]["flwr-signature"] == "sig"
    assert len(fleet_paths()) >= 10


@pytest.mark.parametrize("path", [
    "/v1/control/list-runs", "/v1/control/start-run", "/v1/control/register-node",
    "/v1/runtime/acquire-task", "/v1/runtime/pull-task-input", "/health", "/docs",
    "/v1/fleet/../control/list-runs", "/v1/fleet/pull-messages/../../control/list-runs",
    "/v1/fleet/pull-messages?x=/v1/control/list-runs", "/v1/fleet", "/"])
def test_everything_else_is_answered_here(gateway, path) -> None:
    front, layout = gateway
    before = front.app.refused
    status, _, body = _post(front, layout.ca_cert, path)
    assert status == 404 and b"only Flower's Fleet API" in body
    assert front.app.refused == before + 1


def test_only_post_is_forwarded(gateway) -> None:
    front, layout = gateway
    status, _, _ = _post(front, layout.ca_cert, "/v1/fleet/pull-messages", method="GET",
                         body=None)
    assert status == 404


def test_a_certificate_that_does_not_load_is_named(tmp_path) -> None:
    (tmp_path / "server.crt").write_text("not a certificate")
    (tmp_path / "server.key").write_text("not a key")
    gateway = Gateway(host="127.0.0.1", port=free_port(), certfile=tmp_path / "server.crt",
                      keyfile=tmp_path / "server.key", upstream="https://127.0.0.1:9",
                      upstream_ca=tmp_path / "ca.crt")
    with pytest.raises(GatewayError, match=r"server\.crt / .*server\.key: not a usable"):
        gateway.start()


def test_a_superlink_that_is_down_is_a_502(tmp_path) -> None:
    layout = init_keys(tmp_path / "keys", server_hosts=["127.0.0.1"], hospitals=[])
    loopback = make_loopback_tls(tmp_path / "loopback")
    front = Gateway(host="127.0.0.1", port=free_port(), certfile=layout.server_cert,
                    keyfile=layout.server_key, upstream=f"https://127.0.0.1:{free_port()}",
                    upstream_ca=loopback.ca_cert)
    front.start()
    try:
        status, _, body = _post(front, layout.ca_cert, "/v1/fleet/pull-messages")
        assert status == 502 and b"not ready" in body
    finally:
        front.stop()


def _signed_headers(private_key, *, age_s: float = 0.0) -> dict[str, str]:
    """What Flower's SuperNode sends (flwr/supernode/node_auth_http_interceptor.py)."""
    import datetime
    from base64 import b64encode

    from flwr.supercore.primitives.asymmetric import public_key_to_bytes, sign_message

    stamp = (datetime.datetime.now(datetime.UTC)
             - datetime.timedelta(seconds=age_s)).isoformat()
    return {"flwr-public-key": b64encode(public_key_to_bytes(private_key.public_key())).decode(),
            "flwr-timestamp": stamp,
            "flwr-signature": b64encode(sign_message(private_key, stamp.encode())).decode()}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory, gateway):
    """The same upstream behind a gateway that knows the allowed hospitals' keys."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from server.gateway import pem_of_openssh

    front, layout = gateway
    root = tmp_path_factory.mktemp("guarded")
    allowed_key, other_key = ec.generate_private_key(ec.SECP384R1()), \
        ec.generate_private_key(ec.SECP384R1())
    pub = root / "hospital.pub"
    pub.write_bytes(allowed_key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                                          serialization.PublicFormat.OpenSSH))
    guard = Gateway(host="127.0.0.1", port=free_port(), certfile=layout.server_cert,
                    keyfile=layout.server_key, upstream=front.upstream,
                    upstream_ca=front.upstream_ca, allowed=frozenset({pem_of_openssh(pub)}))
    guard.start()
    yield guard, layout, allowed_key, other_key
    guard.stop()


def test_only_requests_signed_by_an_allowed_hospital_reach_the_superlink(guarded) -> None:
    guard, layout, allowed_key, other_key = guarded
    path = "/v1/fleet/pull-messages"
    assert _post(guard, layout.ca_cert, path)[0] == 401
    assert _post(guard, layout.ca_cert, path, headers=_signed_headers(other_key))[0] == 403
    stale = _signed_headers(allowed_key, age_s=3600)
    assert _post(guard, layout.ca_cert, path, headers=stale)[0] == 401
    status, _, body = _post(guard, layout.ca_cert, path, headers=_signed_headers(allowed_key))
    assert status == 200 and json.loads(body)["path"] == path
    activation = "/v1/fleet/activate-node"  # the SuperLink answers an unknown key itself
    assert _post(guard, layout.ca_cert, activation, headers=_signed_headers(other_key))[0] == 200
    assert _post(guard, layout.ca_cert, activation)[0] == 401


def test_the_superlink_sees_the_real_peer_not_a_forged_one(guarded) -> None:
    guard, layout, allowed_key, _ = guarded
    headers = {**_signed_headers(allowed_key), "X-Forwarded-For": "10.9.9.9",
               "Forwarded": "for=10.9.9.9", "X-Real-IP": "10.9.9.9"}
    _, _, body = _post(guard, layout.ca_cert, "/v1/fleet/pull-messages", headers=headers)
    seen = json.loads(body)["headers"]
    assert seen["x-forwarded-for"] == "127.0.0.1"
    assert "forwarded" not in seen and "x-real-ip" not in seen


def test_a_body_larger_than_its_route_needs_is_refused_before_it_is_read(guarded) -> None:
    guard, layout, allowed_key, _ = guarded
    big = b"\0" * ((1 << 20) + 1)
    status, _, _ = _post(guard, layout.ca_cert, "/v1/fleet/pull-messages", body=big,
                         headers=_signed_headers(allowed_key))
    assert status == 413
    status, _, _ = _post(guard, layout.ca_cert, "/v1/fleet/push-object", body=big,
                         headers=_signed_headers(allowed_key))
    assert status == 200
