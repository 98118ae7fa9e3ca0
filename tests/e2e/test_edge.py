"""Kamailio as the SIP edge of several nodes (deploy/kamailio/callflow-edge.cfg, Debian's
kamailio): two callflow nodes on one PostgreSQL database behind one real Kamailio.

- calls from the telco are spread over the nodes, and keep going through when a node is killed
  (the edge takes it out on the failed INVITE or its failed OPTIONS, and tries the other);
- outbound calls leave through the edge, so the telco sees one address, and the telco's BYE
  finds its way back to the node through the recorded route.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from harness import DEFAULT_FROM, free_port, wait_until
from sipp import SippServer, run_sipp
from test_cluster import cluster  # noqa: F401 (a fixture)
from test_postgres import options_status
from test_sip import fetch_until, provision_number, sipp_dir, trunk_toml, twiml  # noqa: F401

EDGE_CFG = Path(__file__).resolve().parents[2] / "deploy" / "kamailio" / "callflow-edge.cfg"


def kamailio_modules() -> str:
    found = sorted(Path("/usr/lib").glob("*/kamailio/modules")) + sorted(Path("/usr/lib").glob("kamailio/modules"))
    if not found:
        pytest.fail("kamailio is not installed: `apt-get install kamailio` (tests/run does it)")
    return str(found[0])


@pytest.fixture
def edge(tmp_path):
    """`edge(port, nodes, gateways)`: Kamailio on 127.0.0.1:port with the nodes' SIP addresses as
    set 1 and the telco gateways as set 2; stopped at teardown."""
    procs = []

    def start(port: int, nodes, gateways=()):
        folder = tmp_path / f"kamailio-{len(procs)}"
        folder.mkdir()
        listing = folder / "dispatcher.list"
        listing.write_text(
            "".join(f"1 sip:{n} 0 0\n" for n in nodes) + "".join(f"2 sip:{g} 0 0\n" for g in gateways)
        )
        log = open(folder / "kamailio.log", "wb")
        proc = subprocess.Popen(
            [
                "kamailio", "-f", str(EDGE_CFG), "-L", kamailio_modules(),
                "-A", f'DISPATCHER_LIST="{listing}"', "-l", f"udp:127.0.0.1:{port}",
                "-DD", "-E", "-Y", str(folder), "-P", str(folder / "kamailio.pid"), "-m", "64", "-M", "8",
            ],
            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
        )
        procs.append((proc, log, folder))
        up = wait_until(lambda: options_status(f"127.0.0.1:{port}") == "SIP/2.0 200 OK", 20, 0.2)
        assert up, f"kamailio did not start:\n{(folder / 'kamailio.log').read_text(errors='replace')[-3000:]}"
        return folder

    yield start
    for proc, log, _ in procs:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


def inbound(node) -> int:
    """Inbound calls this node's current run took."""
    return node.log_path.read_text(errors="replace").count("inbound call call=")


def test_the_edge_spreads_calls_over_the_nodes_and_routes_around_a_dead_one(cluster, twiml, sipp_dir, edge):
    port = free_port(udp_too=True)
    a, b = cluster(trunk_toml(port))
    edge(port, nodes=[a.sip_addr, b.sip_addr])
    provision_number(a.client(), twiml)
    twiml.body = b'<Response><Pause length="10"/></Response>'

    def calls(n: int, name: str):
        return run_sipp(
            "uac_edge_bye", f"127.0.0.1:{port}", calls=n, rate=5.0, service=DEFAULT_FROM,
            extra=["-d", "300"], timeout_s=60, workdir=sipp_dir(name),
        )

    first = calls(10, "both")
    assert first.counts() == (10, 0), first.describe()
    spread = (inbound(a), inbound(b))
    assert sum(spread) == 10 and min(spread) >= 3, spread

    b.kill()
    second = calls(10, "one-left")
    assert second.counts() == (10, 0), second.describe()
    assert inbound(a) == spread[0] + 10, (spread, inbound(a))


def test_outbound_calls_leave_through_the_edge(cluster, twiml, sipp_dir, edge):
    port = free_port(udp_too=True)
    # the telco answers the edge's OPTIONS probes (-aa: 200), as a real gateway does; each probe
    # is a "call" to SIPp, so its count is not the test's measure: callflow's call and the
    # messages SIPp saw are
    telco = SippServer(
        "uas_edge_answer", calls=10_000, timeout_s=60, extra=["-aa"], workdir=sipp_dir("telco")
    ).start()
    try:
        a, b = cluster(trunk_toml(port))
        edge(port, nodes=[a.sip_addr, b.sip_addr], gateways=[f"127.0.0.1:{telco.port}"])
        client = a.client()
        provision_number(client, twiml)
        call = client.calls.create(
            to="+15558675310", from_=DEFAULT_FROM, twiml='<Response><Pause length="10"/></Response>'
        )
        ended = fetch_until(client, call.sid, ("completed", "failed", "busy", "no-answer"), timeout=30)
    finally:
        result = telco.stop()
    # answered, then hung up by the telco (its BYE found the node through the recorded route)
    assert ended.status == "completed", f"{ended.status}\n{result.describe()}"
    assert int(ended.duration) >= 1, ended.duration
    invite = result.messages[result.messages.index("INVITE sip:"):]
    top_via = next(line for line in invite.splitlines() if line.startswith("Via:"))
    # the telco sees the edge, not the node
    assert top_via.startswith(f"Via: SIP/2.0/UDP 127.0.0.1:{port};"), top_via
    assert "BYE sip:" in invite and "Route: <sip:127.0.0.1:" in invite, result.describe()
