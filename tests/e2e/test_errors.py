"""Service endpoints, authentication, malformed requests, rate limiting and root credentials."""

import base64
import re
import select
import socket
import time

import pytest
import requests
from openapi_spec_validator import validate
from twilio.base.exceptions import TwilioRestException

from harness import ROOT_ACCOUNT_SID, ROOT_AUTH_TOKEN, wait_until


def assert_error_body(resp, status, code=None):
    assert resp.status_code == status, resp.text
    assert resp.headers.get("Content-Type", "").startswith("application/json")
    body = resp.json()
    assert body["status"] == status
    assert isinstance(body["message"], str) and body["message"]
    assert "more_info" in body
    assert isinstance(body["code"], int)
    if code is not None:
        assert body["code"] == code
    return body


# -- service endpoints ----------------------------------------------------------------------


def test_health(callflow):
    assert callflow.request("GET", "/health", auth=None).status_code == 200


def test_metrics(callflow):
    callflow.request("GET", callflow.api_url("Calls.json"))
    resp = callflow.request("GET", "/metrics", auth=None)
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert "callflow_http_requests_total" in resp.text


def test_openapi(callflow):
    resp = callflow.request("GET", "/openapi.json", auth=None)
    assert resp.status_code == 200
    doc = resp.json()
    assert doc["openapi"].startswith("3.")
    assert "/2010-04-01/Accounts/{AccountSid}/Calls.json" in doc["paths"]
    assert "post" in doc["paths"]["/v1/Accounts/{AccountSid}/Callouts"]
    # a valid OpenAPI 3 document: every $ref resolves, every path parameter is declared, every
    # operationId is unique (the routes it lists are checked against the router in host/api)
    validate(doc)


def test_sigterm_exits_cleanly(callflow):
    # A graceful shutdown (exit 0 on SIGTERM, before the harness resorts to SIGKILL) is what lets
    # the outbox and in-flight requests finish on a restart.
    assert callflow.stop() == 0


# -- authentication -------------------------------------------------------------------------


def test_wrong_token(callflow):
    resp = callflow.request(
        "GET", callflow.api_url("Calls.json"), auth=(ROOT_ACCOUNT_SID, "0" * 32)
    )
    assert_error_body(resp, 401, 20003)


def test_wrong_token_through_library(callflow):
    client = callflow.client(ROOT_ACCOUNT_SID, "0" * 32)
    with pytest.raises(TwilioRestException) as err:
        client.api.v2010.accounts(ROOT_ACCOUNT_SID).fetch()
    assert (err.value.status, err.value.code) == (401, 20003)


def test_unknown_account_credentials(callflow):
    other = "AC" + "1" * 32
    resp = callflow.request("GET", callflow.api_url("Calls.json", other), auth=(other, ROOT_AUTH_TOKEN))
    assert_error_body(resp, 401, 20003)


def test_no_auth(callflow):
    resp = callflow.request("GET", callflow.api_url("Calls.json"), auth=None)
    assert_error_body(resp, 401)


def test_malformed_auth_header(callflow):
    for value in ("Basic !!!notbase64", "Bearer abc", "Basic " + base64.b64encode(b"nocolon").decode()):
        resp = callflow.request(
            "GET", callflow.api_url("Calls.json"), auth=None, headers={"Authorization": value}
        )
        assert resp.status_code == 401, value


def test_path_account_differs_from_credentials(callflow):
    other = "AC" + "2" * 32
    resp = callflow.request("GET", callflow.api_url("Calls.json", other))
    assert resp.status_code in (401, 404)
    resp = callflow.request("GET", f"/2010-04-01/Accounts/{other}.json")
    assert resp.status_code in (401, 404)


def test_subaccount_credentials_on_root_path(callflow, make_subaccount):
    sub, _ = make_subaccount()
    resp = callflow.request(
        "GET", callflow.api_url("Calls.json", ROOT_ACCOUNT_SID), auth=(sub.sid, sub.auth_token)
    )
    assert resp.status_code in (401, 403, 404)


# -- malformed requests ---------------------------------------------------------------------


def test_unknown_path(callflow):
    assert_error_body(callflow.request("GET", "/no/such/thing"), 404)
    assert_error_body(callflow.request("GET", callflow.api_url("NoSuchResource.json")), 404)


def test_method_not_allowed(callflow):
    resp = callflow.request("DELETE", callflow.api_url("Calls.json"))
    assert resp.status_code == 405


def post_oversized(server, path, body_size, timeout=10.0):
    """POST a body of `body_size` bytes and return the response status.

    Written on a raw socket because a server may answer 413 before reading the body: then the
    write side breaks while the answer is already waiting to be read.
    """
    body = b"To=%2B15005550001&From=%2B15005550006&Url=http%3A%2F%2F127.0.0.1%3A9%2F&Pad="
    body += b"x" * (body_size - len(body))
    creds = base64.b64encode(f"{server.account_sid}:{server.auth_token}".encode()).decode()
    head = (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{server.http_port}\r\n"
        f"Authorization: Basic {creds}\r\n"
        "Content-Type: application/x-www-form-urlencoded\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    ).encode()
    deadline = time.monotonic() + timeout
    received = b""
    with socket.create_connection(("127.0.0.1", server.http_port), timeout=timeout) as sock:
        sock.sendall(head)
        sock.setblocking(False)
        sent = 0
        while b"\r\n" not in received and time.monotonic() < deadline:
            want_write = [sock] if sent < len(body) else []
            readable, writable, _ = select.select([sock], want_write, [], 0.1)
            if readable:
                try:
                    chunk = sock.recv(65536)
                except (ConnectionResetError, BlockingIOError):
                    chunk = b""
                if not chunk:
                    break
                received += chunk
            elif writable:
                try:
                    sent += sock.send(body[sent : sent + 65536])
                except BlockingIOError:
                    pass
                except (BrokenPipeError, ConnectionResetError):
                    sent = len(body)  # the server stopped reading; its answer may follow
    match = re.match(rb"HTTP/1\.[01] (\d{3})", received)
    assert match, f"no HTTP status line received: {received[:200]!r}"
    return int(match.group(1))


def test_body_over_one_mib(callflow, from_number):
    path = f"/2010-04-01/Accounts/{ROOT_ACCOUNT_SID}/Calls.json"
    assert post_oversized(callflow, path, 1024 * 1024 + 4096) == 413
    # The server still works and created nothing.
    assert callflow.request("GET", callflow.api_url("Calls.json")).json()["calls"] == []


def test_body_under_limit_is_read(callflow, from_number):
    # A large but allowed body is parsed normally (the padding is an unknown parameter).
    path = f"/2010-04-01/Accounts/{ROOT_ACCOUNT_SID}/Calls.json"
    assert post_oversized(callflow, path, 512 * 1024) == 201


# -- rate limiting --------------------------------------------------------------------------


def test_rate_limit(callflow_factory):
    server = callflow_factory(env={"CALLFLOW_API_RATE_LIMIT": "5"})
    sub = server.client().api.v2010.accounts.create(friendly_name="unaffected")
    time.sleep(1.0)  # refill the root's bucket after the create
    session = requests.Session()
    session.auth = (server.account_sid, server.auth_token)
    url = server.url(f"/2010-04-01/Accounts/{server.account_sid}.json")
    responses = [session.get(url, timeout=5) for _ in range(30)]
    codes = [r.status_code for r in responses]
    assert codes[:3] == [200, 200, 200], codes
    limited = [r for r in responses if r.status_code == 429]
    assert limited, f"no 429 in {codes}"
    assert_error_body(limited[0], 429, 20429)
    assert set(codes) <= {200, 429}, codes

    # Another account has its own budget.
    sub_url = server.url(f"/2010-04-01/Accounts/{sub.sid}.json")
    for _ in range(3):
        assert requests.get(sub_url, auth=(sub.sid, sub.auth_token), timeout=5).status_code == 200


# -- root credentials -----------------------------------------------------------------------


SID_RE = re.compile(r"AC[0-9a-f]{32}")
TOKEN_RE = re.compile(r"(?<![0-9A-Za-z])[0-9a-f]{32}(?![0-9A-Za-z])")


def test_generated_root_credentials_printed_once(callflow_factory):
    server = callflow_factory(root_credentials=False)
    log = wait_until(lambda: SID_RE.search(server.log_text()) and server.log_text(), timeout=5)
    assert log, f"no AccountSid in the first run's output:\n{server.log_tail()}"
    sids = set(SID_RE.findall(log))
    assert len(sids) == 1, sids
    sid = sids.pop()
    tokens = [t for t in TOKEN_RE.findall(log) if t != sid[2:]]
    working = [
        t for t in dict.fromkeys(tokens)
        if server.request("GET", f"/2010-04-01/Accounts/{sid}.json", auth=(sid, t)).status_code == 200
    ]
    assert len(working) == 1, f"no printed token works for {sid}"
    token = working[0]

    server.restart()
    assert token not in server.log_text(), "the AuthToken was printed again"
    resp = server.request("GET", f"/2010-04-01/Accounts/{sid}.json", auth=(sid, token))
    assert resp.status_code == 200
    assert resp.json()["sid"] == sid
