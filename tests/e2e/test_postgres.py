"""callflow on PostgreSQL when the database goes away and comes back: the API answers 503 with
Retry-After (not 500), SIP answers OPTIONS with 503 (so a SIP edge's health check takes the node
out) and refuses new INVITEs, and both recover once the database returns, with what was stored
before the outage intact. The test runs its own throwaway server (tests/postgres.sh), since it
stops it."""

from __future__ import annotations

import socket
import subprocess
import uuid
from pathlib import Path

import pytest

from harness import create_database, free_port, wait_until
from test_sip import trunk_toml

POSTGRES_SH = Path(__file__).resolve().parents[1] / "postgres.sh"


def options_status(sip_addr: str) -> str:
    """The status line of callflow's answer to one OPTIONS over UDP ("" if none in 2 s)."""
    host, port = sip_addr.rsplit(":", 1)
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    sock.bind(("127.0.0.1", 0))
    me = sock.getsockname()[1]
    tag = uuid.uuid4().hex[:8]
    msg = (
        f"OPTIONS sip:{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP 127.0.0.1:{me};branch=z9hG4bK{tag}\r\n"
        f"From: <sip:probe@127.0.0.1:{me}>;tag={tag}\r\n"
        f"To: <sip:{host}:{port}>\r\nCall-ID: {tag}@probe\r\nCSeq: 1 OPTIONS\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    )
    try:
        sock.sendto(msg.encode(), (host, int(port)))
        data, _ = sock.recvfrom(65536)
        return data.decode(errors="replace").split("\r\n", 1)[0]
    except socket.timeout:
        return ""
    finally:
        sock.close()


@pytest.fixture
def postgres():
    """(server URL, cluster folder) of a throwaway PostgreSQL server, stopped at the end."""
    if not list(Path("/usr/lib/postgresql").glob("*/bin/initdb")):
        pytest.skip("PostgreSQL's binaries are not installed (tests/run installs them)")
    out = subprocess.run([str(POSTGRES_SH), "start"], check=True, capture_output=True, text=True, timeout=180)
    values = dict(part.split("=", 1) for part in out.stdout.split()[1:])
    url, folder = values["CALLFLOW_TEST_POSTGRES"], values["PGTEST_DIR"]
    try:
        yield url, folder
    finally:
        subprocess.run([str(POSTGRES_SH), "stop", folder], timeout=120)


def test_a_lost_database_is_a_503_and_the_node_recovers_when_it_returns(callflow_factory, postgres):
    server_url, folder = postgres
    server = callflow_factory(
        env={"CALLFLOW_DATABASE_URL": create_database(server_url, "outage")}, start=False
    )
    # a trunk on loopback, so OPTIONS from 127.0.0.1 are a trunk's keep-alives (not refused 403)
    server.config_toml = trunk_toml(free_port(udp_too=True))
    server.start()
    client = server.client()
    number = client.incoming_phone_numbers.create(phone_number="+15005550006", voice_url="http://127.0.0.1:9/")
    calls = f"/2010-04-01/Accounts/{server.account_sid}/Calls.json"
    assert server.request("GET", calls).status_code == 200
    assert options_status(server.sip_addr) == "SIP/2.0 200 OK"

    subprocess.run([str(POSTGRES_SH), "pause", folder], check=True, timeout=120)
    seen = {}

    def refused_api():
        seen["r"] = server.request("GET", calls)
        return seen["r"].status_code == 503

    assert wait_until(refused_api, 30, interval=0.5), (
        f"the API did not answer 503 without its database\n{server.log_tail()}"
    )
    r = seen["r"]
    assert r.headers.get("Retry-After") == "1", r.headers
    assert r.json()["code"] == 20503, r.text
    refused = wait_until(lambda: options_status(server.sip_addr) == "SIP/2.0 503 Service Unavailable", 15, interval=0.5)
    assert refused, f"OPTIONS were not refused without the database\n{server.log_tail()}"

    subprocess.run([str(POSTGRES_SH), "resume", folder], check=True, timeout=120)
    back = wait_until(lambda: server.request("GET", calls).status_code == 200, 60, interval=0.5)
    assert back, f"the API did not recover\n{server.log_tail()}"
    ok = wait_until(lambda: options_status(server.sip_addr) == "SIP/2.0 200 OK", 15, interval=0.5)
    assert ok, f"SIP did not take calls again\n{server.log_tail()}"
    assert [n.sid for n in client.incoming_phone_numbers.list()] == [number.sid]
    assert server.running, "the node stayed up through the outage"
    # the session holding its node lock died with the server; it is renewed, and the node leads
    # again (a node that missed its heartbeats while the database was away is not dead)
    log = lambda: server.log_path.read_text(errors="replace")  # noqa: E731
    assert wait_until(lambda: "the cluster session was renewed" in log(), 15, 0.5), server.log_tail()
    assert wait_until(
        lambda: "leading the cluster" in log()[log().index("the cluster session was renewed"):], 15, 0.5
    ), server.log_tail()
    assert "declared dead" not in log()
