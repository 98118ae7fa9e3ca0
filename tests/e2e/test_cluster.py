"""Several nodes on one PostgreSQL database (issue 17): two real callflow processes share a
database made for the test (CALLFLOW_TEST_POSTGRES names the server tests/run starts).

- a callout runs on both nodes at once, and every participant gets exactly the attempts its
  policy allows: no INVITE is sent twice, however the two dispatchers and schedulers race;
- a node killed with -9 is declared dead by the other within seconds, and the survivor ends
  the dead node's calls at the far end (SIPp's caller, left in silence, gets a BYE) and in the
  store;
- a second process under a running node's name is refused at start.
"""

from __future__ import annotations

import json
import re
import signal
import time
from collections import Counter

import pytest

from harness import DEFAULT_FROM, wait_until
from test_callouts import (
    OUTCOME_BY_DIGIT,
    add_participants,
    assert_attempts_survived_a_crash,
    create_callout,
    fetch,
    invite_times,
    numbers,
    postgres_database,
    results,
    set_status,
    telco,  # noqa: F401 (a fixture)
    wait_finished,
)
from test_sip import (  # noqa: F401 (sipp_dir and twiml are fixtures)
    answered_inbound,
    assert_one_good_call,
    fetch_until,
    holding_caller,
    provision_number,
    sipp_dir,
    trunk_toml,
    twiml,
)

DEAD_AFTER_MS = 2_000


@pytest.fixture
def cluster(callflow_factory):
    """`cluster(config_toml, names, env)`: nodes of one fresh PostgreSQL database, started in
    order, each with `env` besides."""

    def make(config_toml: str, names=("a", "b"), env=None):
        database = postgres_database()
        nodes = []
        for name in names:
            node = callflow_factory(
                start=False,
                env={"CALLFLOW_DATABASE_URL": database, "CALLFLOW_NODE": name} | (env or {}),
            )
            node.config_toml = config_toml + f"\n[cluster]\ndead_after_ms = {DEAD_AFTER_MS}\n"
            nodes.append(node.start())
        return nodes

    return make


def placed(node) -> int:
    """Outbound calls this node's current run sent."""
    return node.log_path.read_text(errors="replace").count("outbound call placed")


def test_two_nodes_share_a_callout_and_send_each_attempt_once(cluster, telco):
    people = numbers("+1555600", 60)
    expected_attempts = {p: 1 if OUTCOME_BY_DIGIT[p[-1]] == "completed" else 3 for p in people}
    total = sum(expected_attempts.values())
    sipp = telco(calls=total)
    config = trunk_toml(sipp.port).replace("cps = 50.0", "cps = 100.0").replace(
        "max_channels = 20", "max_channels = 100"
    )
    a, b = cluster(config)
    a.client().incoming_phone_numbers.create(phone_number=DEFAULT_FROM, voice_url="http://127.0.0.1:9/")

    c = create_callout(
        a,
        Timeout="2",
        MaxConcurrent="40",
        CallsPerSecond="40",
        RetryConfig=json.dumps({"max_attempts": 3, "delay": {"fixed_seconds": 1}}),
    )
    add_participants(a, c["sid"], people)
    set_status(a, c["sid"], "running")
    # either node answers for the callout, from the shared database
    final = wait_finished(b, c["sid"], timeout=180)
    assert final["status"] == "completed"
    rows = results(a, c["sid"])
    wrong = [
        (r["phone_number"], r["outcome"], r["attempts"])
        for r in rows
        if r["outcome"] != OUTCOME_BY_DIGIT[r["phone_number"][-1]]
        or int(r["attempts"]) != expected_attempts[r["phone_number"]]
    ]
    assert len(rows) == 60 and not wrong, wrong
    # the telco saw each attempt once, and both nodes sent some of them
    result = sipp.wait(30)
    assert result.counts() == (total, 0), result.describe()
    per_node = (placed(a), placed(b))
    assert sum(per_node) == total and min(per_node) > 0, per_node
    calls = a.client().calls.list(page_size=1000)
    assert Counter(call.to for call in calls) == Counter(expected_attempts)


def test_a_callout_survives_the_loss_of_a_node(cluster, telco):
    """kill -9 one of two nodes mid-callout: the other declares it dead, ends its calls at the
    far end (a CANCEL for each ringing one; the answered ones have hung up or get a BYE) and in
    the store, and finishes the callout: every participant done, none forgotten, no number called
    more often than its policy allows, and SIPp's own count of INVITEs per number agrees with the
    API's attempts."""
    people = numbers("+1555800", 120)
    sipp = telco(calls=1000, timeout_s=300)
    config = trunk_toml(sipp.port).replace("cps = 50.0", "cps = 100.0").replace(
        "max_channels = 20", "max_channels = 100"
    )
    a, b = cluster(config)
    a.client().incoming_phone_numbers.create(phone_number=DEFAULT_FROM, voice_url="http://127.0.0.1:9/")
    c = create_callout(
        a,
        Timeout="2",
        MaxConcurrent="30",
        CallsPerSecond="30",
        RetryConfig=json.dumps({"max_attempts": 3, "delay": {"fixed_seconds": 1}}),
    )
    add_participants(a, c["sid"], people)
    set_status(a, c["sid"], "running")
    # kill b in the middle: some participants done, some calling (on both nodes), some waiting
    assert wait_until(lambda: fetch(a, c["sid"])["summary"]["attempts"] >= 80 and placed(b) > 10, 120, 0.2)
    b.kill()

    final = wait_finished(a, c["sid"], timeout=240)
    s = final["summary"]
    assert (s["total"], s["pending"], s["in_progress"]) == (120, 0, 0), s
    per_number = assert_attempts_survived_a_crash(a, c["sid"], people)
    result = sipp.stop()
    at_telco = Counter(re.findall(r"^INVITE sip:(\+\d+)@", result.messages, re.M))
    assert at_telco == per_number, (at_telco - per_number, per_number - at_telco)
    log = a.log_path.read_text(errors="replace")
    assert "a node stopped beating" in log
    # the dead node's ringing calls were cancelled by the survivor
    assert "ended at the far end (CANCEL)" in log, a.log_tail()


def test_two_nodes_keep_a_callouts_rate_together(cluster, telco):
    """A callout at 10 calls a second on two nodes for half a minute: each takes half the rate
    (its share), so the telco sees 10 a second within 2%, not 20 (a trunk's cps and channels,
    an account's rate and caps are shared the same way)."""
    rate, count = 10.0, 301
    people = [f"+1555700{i:04d}" for i in range(3 * count) if (i % 10) < 6][:count]  # answered
    sipp = telco(calls=count, timeout_s=150)
    a, b = cluster(trunk_toml(sipp.port).replace("cps = 50.0", "cps = 100.0").replace(
        "max_channels = 20", "max_channels = 100"))
    for node, other in ((a, "b"), (b, "a")):
        # both count two nodes before the callout starts
        assert wait_until(lambda: "nodes=2" in node.log_path.read_text(errors="replace"), 15, 0.2), (
            f"the node never counted {other}\n{node.log_tail()}"
        )
    a.client().incoming_phone_numbers.create(phone_number=DEFAULT_FROM, voice_url="http://127.0.0.1:9/")
    c = create_callout(a, CallsPerSecond=str(rate), MaxConcurrent="100")
    add_participants(a, c["sid"], people)
    set_status(a, c["sid"], "running")
    wait_finished(a, c["sid"], timeout=120)
    result = sipp.wait(30)
    assert result.counts() == (count, 0), result.describe()
    times = invite_times(result.messages)
    assert len(times) == count
    measured = (len(times) - 1) / (times[-1] - times[0])
    per_node = (placed(a), placed(b))
    print(f"configured {rate}/s, measured {measured:.2f}/s over {times[-1] - times[0]:.1f} s; per node {per_node}")
    assert abs(measured - rate) / rate <= 0.02, f"measured {measured:.2f}/s"
    assert min(per_node) >= count // 3, per_node


def test_a_surviving_node_ends_the_calls_of_a_killed_one(cluster, twiml, sipp_dir):
    a, b = cluster(trunk_toml(9))
    client = a.client()
    provision_number(client, twiml)
    twiml.body = b'<Response><Pause length="60"/></Response>'
    # SIPp calls node b, which answers and holds the call
    caller = holding_caller(b.sip_addr, sipp_dir, timeout_s=120)
    try:
        call = answered_inbound(client, 30)
        assert call is not None, f"the call was not answered\n{b.log_tail()}"

        def dialog_kept():
            r = a.request("GET", f"/v1/Accounts/{a.account_sid}/Calls/{call.sid}/Events")
            return any(e["kind"] == "sip.dialog" for e in r.json()["events"])

        assert wait_until(dialog_kept, 30, interval=0.1), "the answered dialog was not logged"
        b.kill()
        killed = time.monotonic()
        # node a, alone now, declares b dead after DEAD_AFTER_MS and sends the BYE
        assert caller.wait(30), f"SIPp saw no BYE within 30 s of the kill\n{a.log_tail()}"
        took = time.monotonic() - killed
        result = caller.result()
    finally:
        caller.kill(graceful=False)
        caller.close()
    assert_one_good_call(result, "SIPp (the caller)")
    ended = fetch_until(client, call.sid, ("completed",))
    assert ended.status == "completed", ended.status
    events = a.request("GET", f"/v1/Accounts/{a.account_sid}/Calls/{call.sid}/Events").json()["events"]
    assert any("node b stopped during the call" in json.dumps(e) for e in events), events
    print(f"BYE {took:.1f} s after the kill (dead after {DEAD_AFTER_MS} ms)")
    assert "a node stopped beating" in a.log_path.read_text(errors="replace")


def test_a_redirect_sent_to_any_node_reaches_the_call_another_node_drives(cluster, twiml, sipp_dir):
    """`POST Calls/{Sid}.json` with new Twiml (`<Hangup/>`), sent to node a, for a call node b
    answered: a forwards it to b, where the call's leg is; the leg follows the new document and
    hangs up (SIPp's caller gets the BYE), through Twilio's own library. A request for a call
    nobody has is answered by the node it was sent to."""
    a, b = cluster(trunk_toml(9))
    provision_number(a.client(), twiml)
    twiml.body = b'<Response><Pause length="60"/></Response>'
    caller = holding_caller(b.sip_addr, sipp_dir, timeout_s=60)
    try:
        call = answered_inbound(a.client(), 30)
        assert call is not None, f"the call was not answered\n{b.log_tail()}"
        redirected = a.client().calls(call.sid).update(twiml="<Response><Hangup/></Response>")
        assert redirected.sid == call.sid
        assert caller.wait(20), f"SIPp saw no BYE\n{b.log_tail()}"
        ended = fetch_until(a.client(), call.sid, ("completed",))
        assert ended.status == "completed", ended.status
        result = caller.result()
    finally:
        caller.kill(graceful=False)
        caller.close()
    # the BYE came from b's leg: a, which has no leg for the call, could only have marked it
    # completed in the database and left the caller in silence
    assert_one_good_call(result, "SIPp (the caller)")
    r = a.request("GET", f"/v1/Accounts/{a.account_sid}/Calls/{call.sid}/Events")
    kinds = [e["kind"] for e in r.json()["events"]]
    assert "completed" in kinds, kinds
    # a request for an unknown call on a is answered by a, as ever
    r = a.request("POST", f"/2010-04-01/Accounts/{a.account_sid}/Calls/CA{'0' * 32}.json", data={"Status": "completed"})
    assert r.status_code == 404, r.text


def test_a_second_process_under_a_running_nodes_name_is_refused(cluster, callflow_factory):
    (a,) = cluster("", names=("a",))
    twin = callflow_factory(
        start=False,
        env={"CALLFLOW_DATABASE_URL": a.extra_env["CALLFLOW_DATABASE_URL"], "CALLFLOW_NODE": "a"},
    )
    with pytest.raises(Exception) as refused:
        twin.start()
    assert 'another node named "a" is running on this database' in str(refused.value)
    assert a.running


def test_a_node_that_froze_past_its_deadline_stops_when_it_wakes(cluster):
    """A node that stops beating without dying (SIGSTOP: a hung process, a long pause) is
    declared dead like a killed one; when it runs again its heartbeat tells it so and it
    exits, rather than go on with calls the other node has ended."""
    a, b = cluster("")
    b.proc.send_signal(signal.SIGSTOP)
    try:
        assert wait_until(
            lambda: "a node stopped beating" in a.log_path.read_text(errors="replace"), 20, 0.2
        ), a.log_tail()
    finally:
        b.proc.send_signal(signal.SIGCONT)
    assert wait_until(lambda: b.proc.poll() is not None, 20, 0.2), "the frozen node went on"
    assert b.proc.returncode != 0
    assert "declared dead by the cluster" in b.log_path.read_text(errors="replace")
    assert a.running
