"""Callouts end to end: SIPp plays a telco (tests/sipp/uas_callout.xml) that answers, refuses or
ignores each number by its last digit, and the real binary calls a few hundred participants,
retries them as the bound policy says, survives a kill -9, and keeps its configured rate.

The fate of a number, by its last digit: 0-5 answered (SIPp hangs up after 500 ms), 6-7 busy
(486), 8-9 rings until callflow gives up at the callout's `Timeout` (CANCEL, `no-answer`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import time
from collections import Counter
from datetime import datetime

import pytest

from harness import DEFAULT_FROM, create_database, wait_until
from sipp import SippServer, sipp_path
from test_sip import trunk_toml

HOLD_TWIML = "<Response><Pause length=\"10\"/></Response>"
OUTCOME_BY_DIGIT = {d: "completed" for d in "012345"} | {"6": "busy", "7": "busy", "8": "no-answer", "9": "no-answer"}


@pytest.fixture(autouse=True)
def _sipp_installed():
    if sipp_path() is None:
        pytest.fail("sipp is not installed: `apt-get install sip-tester` (tests/run does it)")


@pytest.fixture
def telco(tmp_path):
    """`telco(calls)`: a SIPp far end playing uas_callout for up to `calls` calls."""
    servers = []

    def make(calls: int, timeout_s: float = 300.0) -> SippServer:
        workdir = tmp_path / f"sipp-{len(servers)}"
        workdir.mkdir()
        server = SippServer("uas_callout", calls=calls, timeout_s=timeout_s, workdir=workdir)
        servers.append(server)
        return server.start()

    yield make
    for s in servers:
        s.stop()


def postgres_database() -> str:
    """A fresh database on the PostgreSQL server `CALLFLOW_TEST_POSTGRES` names (tests/run
    starts one with tests/postgres.sh); skipped, and said so, without one."""
    server = os.environ.get("CALLFLOW_TEST_POSTGRES")
    if not server:
        pytest.skip("CALLFLOW_TEST_POSTGRES is not set (tests/run sets it)")
    return create_database(server, "callflow_e2e")


def start(callflow_factory, sipp: SippServer, cps: float = 200.0, channels: int = 100, env=None):
    server = callflow_factory(start=False, env=env)
    server.config_toml = trunk_toml(sipp.port).replace("cps = 50.0", f"cps = {cps}").replace(
        "max_channels = 20", f"max_channels = {channels}"
    )
    server.start()
    client = server.client()
    client.incoming_phone_numbers.create(phone_number=DEFAULT_FROM, voice_url="http://127.0.0.1:9/")
    return server


def v1(server, path: str) -> str:
    return f"/v1/Accounts/{server.account_sid}/{path}"


def create_callout(server, **params) -> dict:
    form = {"Name": "warning", "From": DEFAULT_FROM, "Twiml": HOLD_TWIML} | params
    r = server.request("POST", v1(server, "Callouts.json"), data=form)
    assert r.status_code == 201, r.text
    return r.json()


def add_participants(server, sid: str, numbers: list) -> dict:
    body = json.dumps([{"phone_number": n} for n in numbers])
    r = server.request(
        "POST",
        v1(server, f"Callouts/{sid}/Participants.json"),
        data=body,
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code in (200, 201), r.text
    return r.json()


def set_status(server, sid: str, status: str) -> dict:
    r = server.request("POST", v1(server, f"Callouts/{sid}.json"), data={"Status": status})
    assert r.status_code == 200, r.text
    return r.json()


def fetch(server, sid: str) -> dict:
    r = server.request("GET", v1(server, f"Callouts/{sid}.json"))
    assert r.status_code == 200, r.text
    return r.json()


def wait_finished(server, sid: str, timeout: float) -> dict:
    last = {}

    def done():
        last["c"] = fetch(server, sid)
        return last["c"]["status"] in ("completed", "stopped")

    try:
        wait_until(done, timeout, interval=0.5)
    except Exception:
        raise AssertionError(f"callout not finished after {timeout} s: {last.get('c')}\n{server.log_tail()}")
    return last["c"]


def results(server, sid: str) -> list:
    r = server.request("GET", v1(server, f"Callouts/{sid}/Results.csv"))
    assert r.status_code == 200, r.text
    return list(csv.DictReader(io.StringIO(r.text)))


def all_calls(server) -> list:
    """Every Call resource of the account, through Twilio's library (it pages)."""
    return server.client().calls.list(page_size=1000)


def numbers(prefix: str, n: int) -> list:
    return [f"{prefix}{i:04d}" for i in range(n)]


def test_callout_makes_exactly_the_attempts_the_policy_allows(callflow_factory, telco):
    people = numbers("+1555200", 200)
    expected_attempts = {p: 1 if OUTCOME_BY_DIGIT[p[-1]] == "completed" else 3 for p in people}
    total = sum(expected_attempts.values())
    sipp = telco(calls=total)
    server = start(callflow_factory, sipp)

    c = create_callout(
        server,
        Timeout="2",
        MaxConcurrent="40",
        CallsPerSecond="60",
        RetryConfig=json.dumps({"max_attempts": 3, "delay": {"fixed_seconds": 1}}),
    )
    added = add_participants(server, c["sid"], people + people[:5])
    assert (added["added"], added["merged"]) == (200, 5), added
    set_status(server, c["sid"], "running")
    final = wait_finished(server, c["sid"], timeout=240)

    assert final["status"] == "completed"
    s = final["summary"]
    assert (s["total"], s["pending"], s["in_progress"]) == (200, 0, 0), s
    assert (s["completed"], s["busy"], s["no_answer"], s["failed"]) == (120, 40, 40, 0), s
    assert s["attempts"] == total, s

    rows = results(server, c["sid"])
    assert len(rows) == 200
    for row in rows:
        phone = row["phone_number"]
        want = OUTCOME_BY_DIGIT[phone[-1]]
        assert row["outcome"] == want, row
        assert row["last_call_status"] == want, row
        assert int(row["attempts"]) == expected_attempts[phone], row

    # The Call resources agree: one per attempt, linked to the callout, the right statuses.
    calls = all_calls(server)
    assert len(calls) == total
    by_status = Counter(call.status for call in calls)
    assert by_status == Counter({"completed": 120, "busy": 120, "no-answer": 120}), by_status
    per_number = Counter(call.to for call in calls)
    assert per_number == Counter(expected_attempts)

    # The telco saw every attempt, each one through its scenario without a failure.
    result = sipp.wait(30)
    assert result.counts() == (total, 0), result.describe()


def test_a_callout_on_a_busy_machine_ends_every_participant_as_its_policy_says(callflow_factory, telco):
    """Alerts go out when machines are busy (issue 19): with spinning processes taking both
    cores, every participant still ends as the retry policy says (answered, or busy and
    no-answer after three attempts), none `errored` because a plugin lost time to the load."""
    people = numbers("+1555500", 30)
    expected_attempts = {p: 1 if OUTCOME_BY_DIGIT[p[-1]] == "completed" else 3 for p in people}
    total = sum(expected_attempts.values())
    sipp = telco(calls=total)
    server = start(callflow_factory, sipp)
    burners = [
        subprocess.Popen(["sh", "-c", "while :; do :; done"]) for _ in range(2 * (os.cpu_count() or 2))
    ]
    try:
        c = create_callout(
            server,
            Timeout="2",
            MaxConcurrent="30",
            CallsPerSecond="30",
            RetryConfig=json.dumps({"max_attempts": 3, "delay": {"fixed_seconds": 1}}),
        )
        add_participants(server, c["sid"], people)
        set_status(server, c["sid"], "running")
        final = wait_finished(server, c["sid"], timeout=180)
    finally:
        for b in burners:
            b.kill()
            b.wait()
    assert final["status"] == "completed"
    rows = results(server, c["sid"])
    wrong = [
        (r["phone_number"], r["outcome"], r["attempts"], r.get("reason"))
        for r in rows
        if r["outcome"] != OUTCOME_BY_DIGIT[r["phone_number"][-1]]
        or int(r["attempts"]) != expected_attempts[r["phone_number"]]
    ]
    assert len(rows) == 30 and not wrong, f"{wrong}\n{server.log_tail()}"
    assert sipp.wait(30).counts() == (total, 0)


@pytest.mark.parametrize("backend", ["sqlite", "postgres"])
def test_a_callout_survives_kill_9_without_extra_or_forgotten_attempts(callflow_factory, telco, backend):
    env = {"CALLFLOW_DATABASE_URL": postgres_database()} if backend == "postgres" else None
    people = numbers("+1555300", 120)
    sipp = telco(calls=1000)
    server = start(callflow_factory, sipp, env=env)
    c = create_callout(
        server,
        Timeout="2",
        MaxConcurrent="20",
        CallsPerSecond="30",
        RetryConfig=json.dumps({"max_attempts": 3, "delay": {"fixed_seconds": 1}}),
    )
    add_participants(server, c["sid"], people)
    set_status(server, c["sid"], "running")

    # Crash in the middle: some participants done, some calling, some waiting for a retry.
    wait_until(lambda: fetch(server, c["sid"])["summary"]["attempts"] >= 100, 120, interval=0.2)
    mid = fetch(server, c["sid"])["summary"]
    assert mid["pending"] + mid["in_progress"] > 0, mid
    server.kill()
    server.start()

    final = wait_finished(server, c["sid"], timeout=240)
    s = final["summary"]
    assert (s["total"], s["pending"], s["in_progress"]) == (120, 0, 0), s

    per_number = assert_attempts_survived_a_crash(server, c["sid"], people)
    assert sum(per_number.values()) == s["attempts"]


def assert_attempts_survived_a_crash(server, callout: str, people: list) -> Counter:
    """Every participant of a three-attempt callout that a crash (or a dead node) interrupted
    is there, called no more than the policy allows, each attempt a real call, and ended as its
    number's fate says (an answered one completed, a busy or silent one after three attempts,
    one of which the crash may have turned into a failure). Returns the calls per number."""
    per_number = Counter(call.to for call in all_calls(server))
    rows = {row["phone_number"]: row for row in results(server, callout)}
    assert set(rows) == set(people), "a participant was forgotten"
    for phone in people:
        row = rows[phone]
        attempts = int(row["attempts"])
        assert 1 <= attempts <= 3, row
        assert per_number[phone] == attempts, (row, per_number[phone])
        want = OUTCOME_BY_DIGIT[phone[-1]]
        if want == "completed":
            # an attempt the crash cut short ends failed, and is retried
            assert row["outcome"] == "completed", row
        else:
            assert attempts == 3, row
            assert row["outcome"] in (want, "failed"), row
    return per_number


def invite_times(messages: str) -> list:
    """Arrival times (seconds) of the INVITEs in SIPp's -trace_msg log."""
    times = []
    stamp = None
    lines = messages.splitlines()
    pattern = re.compile(r"^-+ (\d{4}-\d\d-\d\d)\s+(\d\d:\d\d:\d\d\.\d+)")
    for i, line in enumerate(lines):
        m = pattern.match(line)
        if m:
            stamp = datetime.fromisoformat(f"{m.group(1)} {m.group(2)}").timestamp()
            continue
        if line.startswith("INVITE sip") and stamp is not None and "received" in lines[i - 2]:
            times.append(stamp)
            stamp = None
    return times


def test_a_callout_keeps_its_rate_over_a_minute(callflow_factory, telco):
    """10 calls per second for a minute: the INVITE rate at the telco is within 2%."""
    rate, seconds = 10.0, 60
    count = int(rate * seconds) + 1
    # numbers ending 0-5: all answered, so nothing is retried
    people = [f"+1555400{i:04d}" for i in range(3 * count) if (i % 10) < 6][:count]
    sipp = telco(calls=count, timeout_s=seconds + 60)
    server = start(callflow_factory, sipp)
    c = create_callout(server, CallsPerSecond=str(rate), MaxConcurrent="100")
    add_participants(server, c["sid"], people)
    set_status(server, c["sid"], "running")
    wait_finished(server, c["sid"], timeout=seconds + 60)
    result = sipp.wait(30)
    assert result.counts() == (count, 0), result.describe()

    times = invite_times(result.messages)
    assert len(times) == count, f"{len(times)} INVITEs parsed of {count}"
    span = times[-1] - times[0]
    measured = (len(times) - 1) / span
    print(f"configured {rate}/s, measured {measured:.3f}/s over {span:.1f} s")
    assert abs(measured - rate) / rate <= 0.02, f"measured {measured:.3f}/s over {span:.1f} s"


def test_an_account_at_its_limit_does_not_hold_up_another(callflow_factory, telco):
    """`[dispatch] account_max_calls = 2`: one account queues 150 calls that ring forever, so
    two of them ring and the rest wait; another account's call, queued behind all of them, goes
    out at once and is answered."""
    sipp = telco(calls=200)
    server = callflow_factory(start=False)
    server.config_toml = (
        trunk_toml(sipp.port).replace("cps = 50.0", "cps = 200.0").replace("max_channels = 20", "max_channels = 100")
        + "\n[dispatch]\naccount_max_calls = 2\n"
    )
    server.start()
    root = server.client()
    root.incoming_phone_numbers.create(phone_number=DEFAULT_FROM, voice_url="http://127.0.0.1:9/")
    busy_account = [
        root.calls.create(to=f"+1555600{i:04d}8", from_=DEFAULT_FROM, twiml=HOLD_TWIML, timeout=60)
        for i in range(150)
    ]
    sub = root.api.v2010.accounts.create(friendly_name="other")
    other = server.client(sub.sid, sub.auth_token)
    other.incoming_phone_numbers.create(phone_number="+15005550007", voice_url="http://127.0.0.1:9/")
    call = other.calls.create(to="+15556000000", from_="+15005550007", twiml=HOLD_TWIML)

    def done():
        c = other.calls(call.sid).fetch()
        return c if c.status == "completed" else None

    finished = wait_until(done, 30, interval=0.3)
    assert finished is not None, f"the other account's call is {other.calls(call.sid).fetch().status}"
    ringing = [c for c in root.calls.list(status="ringing", page_size=200)]
    queued = [c for c in root.calls.list(status="queued", page_size=200)]
    assert len(ringing) <= 2, len(ringing)
    assert len(ringing) + len(queued) == len(busy_account)


def test_pausing_holds_attempts_already_queued(callflow_factory, telco):
    """With two channels, most of the ten claimed attempts wait in the queue; a pause keeps them
    there (no INVITE leaves while paused), and resuming lets them and the rest go out."""
    people = numbers("+1555700", 30)  # last digits 0-9: only those ending 0-5 answer
    people = [p for p in people if p[-1] in "012345"][:12]
    sipp = telco(calls=len(people))
    server = start(callflow_factory, sipp, channels=2)
    c = create_callout(server, MaxConcurrent="10", RetryConfig=json.dumps({"max_attempts": 1}))
    add_participants(server, c["sid"], people)
    set_status(server, c["sid"], "running")
    time.sleep(0.3)
    set_status(server, c["sid"], "paused")
    time.sleep(1.5)  # what was sent before the pause settles

    def sent():
        return sum(1 for call in all_calls(server) if call.status != "queued")

    before = sent()
    time.sleep(3.0)
    after = sent()
    queued = len(all_calls(server)) - after
    assert before == after, f"{after - before} attempts went out while paused"
    assert queued > 0, "nothing was held in the queue"

    set_status(server, c["sid"], "running")
    final = wait_finished(server, c["sid"], timeout=60)
    assert (final["summary"]["completed"], final["summary"]["attempts"]) == (len(people), len(people))
