"""SIP end to end: SIPp plays the telco on both sides of the real `callflow` binary.

Inbound, SIPp calls callflow's SIP address (tests/sipp/uac_*.xml); outbound, a trunk points at a
SIPp server (tests/sipp/uas_*.xml) and the call is placed through the REST API with Twilio's
library. Every test checks SIPp's own verdict (exactly one successful call, none failed: the
scenario saw the messages it expects, in order, with the checks written in it) as well as what the
API and the status callbacks say. The TwiML of the calls is a 10 s <Pause> served by a local
WebhookReceiver, so that callflow keeps a call up until SIPp hangs up (a dead Url would end it).
"""

from __future__ import annotations

import array
import io
import json
import wave

import pytest
import requests
from twilio.base.exceptions import TwilioRestException
from twilio.request_validator import RequestValidator

from harness import DEFAULT_FROM, ROOT_AUTH_TOKEN, WebhookReceiver, free_port, wait_until
from sipp import SippServer, _SippRun, run_sipp, sipp_path

# The caller in tests/sipp/uac_*.xml (their From user).
SIPP_CALLER = "+15551110000"
# An E.164 number no account owns.
UNKNOWN_NUMBER = "+15005550199"
# Where outbound calls go (the Request-URI user SippServer gets).
CALLEE = "+15551230001"

# Bounds for waits on a slow shared 2-core machine.
WAIT_S = 20.0
SIPP_TIMEOUT_S = 20.0
HOLD_TWIML = '<?xml version="1.0" encoding="UTF-8"?><Response><Pause length="10"/></Response>'
FINAL_STATUSES = {"completed", "busy", "no-answer", "failed", "canceled"}
ALL_EVENTS = ["initiated", "ringing", "answered", "completed"]


@pytest.fixture(autouse=True)
def _sipp_installed():
    if sipp_path() is None:
        pytest.fail("sipp is not installed: `apt-get install sip-tester` (tests/run does it)")


def trunk_toml(port: int, auth: bool = False, transport: str = "udp") -> str:
    """callflow's config: one trunk at 127.0.0.1:port taking inbound calls from 127.0.0.1."""
    credentials = 'username = "callflow"\npassword = "secret"\n' if auth else ""
    return (
        "[[trunks]]\n"
        'name = "telco"\n'
        'host = "127.0.0.1"\n'
        f"port = {port}\n"
        f'transport = "{transport}"\n'
        f"{credentials}"
        'inbound_sources = ["127.0.0.1/32"]\n'
        "cps = 50.0\n"
        "max_channels = 20\n"
    )


@pytest.fixture
def twiml():
    """Serves the calls' TwiML (a long <Pause>) and records the voice webhooks."""
    rec = WebhookReceiver()
    rec.body = HOLD_TWIML.encode()
    rec.start()
    yield rec
    rec.stop()


@pytest.fixture
def start_callflow(callflow_factory):
    """`start_callflow(trunk_port, auth=False)`: a callflow with the trunk config, running."""

    def start(trunk_port: int, auth: bool = False, transport: str = "udp"):
        server = callflow_factory(start=False)
        server.config_toml = trunk_toml(trunk_port, auth, transport)
        return server.start()

    return start


@pytest.fixture
def sipp_dir(tmp_path):
    """A fresh folder under pytest's tmp dir for each SIPp run's files (kept for inspection)."""
    counter = iter(range(1000))

    def make(name: str):
        path = tmp_path / f"sipp-{next(counter)}-{name}"
        path.mkdir()
        return path

    return make


@pytest.fixture
def far_end(sipp_dir):
    """`far_end(scenario, **kw)`: a started SippServer, stopped at teardown."""
    servers = []

    def make(scenario: str, **kwargs) -> SippServer:
        server = SippServer(
            scenario, timeout_s=kwargs.pop("timeout_s", 60.0), workdir=sipp_dir(scenario), **kwargs
        )
        servers.append(server)
        return server.start()

    yield make
    for server in servers:
        server.stop()


def provision_number(client, twiml):
    """The root account's number, whose VoiceUrl holds the call (a <Pause>)."""
    return client.incoming_phone_numbers.create(
        phone_number=DEFAULT_FROM, voice_url=twiml.url("/voice"), voice_method="POST"
    )


def fetch_until(client, sid: str, statuses, timeout: float = WAIT_S):
    """Fetch the call until its status is in `statuses` (bounded); returns the last fetch."""
    last = {}

    def check():
        call = client.calls(sid).fetch()
        last["call"] = call
        return call if call.status in statuses else None

    wait_until(check, timeout, interval=0.2)
    return last["call"]


def callbacks_for(receiver: WebhookReceiver, sid: str) -> list:
    return [r.form for r in receiver.requests if r.form.get("CallSid") == sid]


def final_callback(receiver: WebhookReceiver, sid: str, timeout: float = WAIT_S):
    """The status callback of the call's final status (bounded wait), or None."""

    def find():
        for form in callbacks_for(receiver, sid):
            if form.get("CallStatus") in FINAL_STATUSES:
                return form
        return None

    return wait_until(find, timeout, interval=0.1)


def holding_caller(sip_addr: str, sipp_dir, timeout_s: float = 150) -> _SippRun:
    """SIPp calling `sip_addr` (uac_answered_wait_bye), started: once answered, it holds the
    call until the BYE comes, which is what its run waits for."""
    caller = _SippRun(
        "uac_answered_wait_bye",
        sip_addr,
        local_ip="127.0.0.1",
        port=None,
        calls=1,
        rate=None,
        service=DEFAULT_FROM,
        timeout_s=timeout_s,
        workdir=sipp_dir("uac_answered_wait_bye"),
    )
    caller.start()
    return caller


def answered_inbound(client, timeout: float = WAIT_S):
    """The latest inbound call once it is in progress (bounded wait), or None."""

    def answered():
        calls = [c for c in client.calls.list(limit=5) if c.direction == "inbound"]
        return calls[0] if calls and calls[0].status == "in-progress" else None

    return wait_until(answered, timeout, interval=0.1)


def assert_one_good_call(result, what: str = "SIPp") -> None:
    assert result.counts() == (1, 0) and result.ok, f"{what} did not pass:\n{result.describe()}"


# -- inbound: SIPp calls callflow ------------------------------------------------------------


def test_inbound_call_is_answered_and_completed(start_callflow, twiml, sipp_dir):
    callflow = start_callflow(free_port(udp_too=True))
    # A fresh data dir: the built-in call flow was compiled before the node said it was ready
    # (and took calls), so the first call does not wait for that compile.
    log = callflow.log_text()
    compiled, ready = log.find("built-in call flow ready"), log.find("callflow is ready")
    assert 0 <= compiled < ready, callflow.log_tail()
    client = callflow.client()
    provision_number(client, twiml)

    result = run_sipp(
        "uac_answer_bye",
        callflow.sip_addr,
        service=DEFAULT_FROM,
        extra=["-d", "1000"],  # hold the call 1 s between the ACK and the BYE
        timeout_s=SIPP_TIMEOUT_S,
        workdir=sipp_dir("uac_answer_bye"),
    )
    assert_one_good_call(result)

    def completed_inbound():
        calls = [c for c in client.calls.list(limit=20) if c.direction == "inbound"]
        return calls if calls and all(c.status == "completed" for c in calls) else None

    calls = wait_until(completed_inbound, WAIT_S, interval=0.2)
    listed = [(c.sid, c.direction, c.status) for c in client.calls.list(limit=20)]
    assert calls, f"no completed inbound call listed after {WAIT_S:.0f} s: {listed}"
    assert len(calls) == 1, listed
    call = calls[0]
    assert call._from == SIPP_CALLER
    assert call.to == DEFAULT_FROM
    assert call.direction == "inbound"
    assert call.status == "completed"
    assert call.duration is not None and int(call.duration) >= 1, call.duration

    # The caller hung up during the <Pause>: the flow's plugin heard `hangup` last.
    def flow_events():
        r = callflow.request("GET", f"/v1/Accounts/{callflow.account_sid}/Calls/{call.sid}/Events")
        assert r.status_code == 200, r.text
        events = [e["detail"]["event"] for e in r.json()["events"] if e["kind"] == "flow.event"]
        return events if events and events[-1] == "Hangup" else None

    events = wait_until(flow_events, WAIT_S, interval=0.2)
    assert events, "no hangup event reached the flow"


def test_inbound_call_rings_while_its_first_document_is_fetched(start_callflow, twiml, sipp_dir):
    """Twilio's order: the VoiceUrl is fetched while the call rings (CallStatus=ringing), the call
    is answered for the first verb that needs the line, and later requests say in-progress."""
    callflow = start_callflow(free_port(udp_too=True))
    client = callflow.client()
    provision_number(client, twiml)
    twiml.body = (
        '<Response><Gather timeout="1" action="/after"><Say>hello</Say></Gather>'
        '<Redirect>/after</Redirect></Response>'
    ).encode()

    result = run_sipp(
        "uac_answer_bye",
        callflow.sip_addr,
        service=DEFAULT_FROM,
        extra=["-d", "4000"],
        timeout_s=SIPP_TIMEOUT_S,
        workdir=sipp_dir("uac_answer_bye"),
    )
    assert_one_good_call(result)
    fetched = wait_until(lambda: len(twiml.requests) >= 2 and twiml.requests, WAIT_S, interval=0.2)
    assert fetched, f"expected the first fetch and the redirect, got {twiml.requests}"
    first, second = fetched[0], fetched[1]
    assert (first.path, first.form.get("CallStatus")) == ("/voice", "ringing"), first.form
    assert (second.path, second.form.get("CallStatus")) == ("/after", "in-progress"), second.form
    sid = first.form["CallSid"]
    r = callflow.request("GET", f"/v1/Accounts/{callflow.account_sid}/Calls/{sid}/Events")
    kinds = [e["kind"] for e in r.json()["events"]]
    assert kinds.index("flow.answered") > kinds.index("flow.event"), kinds


@pytest.mark.parametrize(
    "reason,code,status", [("busy", 486, "busy"), ("rejected", 603, "no-answer")]
)
def test_inbound_call_rejected_by_its_twiml_is_never_answered(
    start_callflow, twiml, sipp_dir, reason, code, status
):
    callflow = start_callflow(free_port(udp_too=True))
    client = callflow.client()
    provision_number(client, twiml)
    twiml.body = f'<Response><Reject reason="{reason}"/><Say>never heard</Say></Response>'.encode()

    result = run_sipp(
        "uac_rapidpro_reject",
        callflow.sip_addr,
        service=DEFAULT_FROM,
        timeout_s=SIPP_TIMEOUT_S,
        workdir=sipp_dir(f"uac_reject_{reason}"),
    )
    # the scenario fails on a 200 OK: the call was never answered
    assert_one_good_call(result)
    assert f"final response: SIP/2.0 {code}" in result.logs, result.logs
    calls = wait_until(
        lambda: [c for c in client.calls.list(limit=5) if c.status in FINAL_STATUSES],
        WAIT_S,
        interval=0.2,
    )
    assert calls and len(calls) == 1, client.calls.list(limit=5)
    # Twilio's <Reject>: the call ends busy or no-answer, by its reason, and lasted nothing
    assert calls[0].status == status and int(calls[0].duration or 0) == 0
    assert [r.form.get("CallStatus") for r in twiml.requests] == ["ringing"]


def test_inbound_call_over_tcp(start_callflow, twiml, sipp_dir):
    """The same call over TCP (one connection, messages framed by Content-Length)."""
    callflow = start_callflow(free_port(udp_too=True))
    client = callflow.client()
    provision_number(client, twiml)

    result = run_sipp(
        "uac_answer_bye",
        callflow.sip_addr,
        service=DEFAULT_FROM,
        extra=["-t", "t1", "-d", "1000"],
        timeout_s=SIPP_TIMEOUT_S,
        workdir=sipp_dir("uac_answer_bye_tcp"),
    )
    assert_one_good_call(result)

    def completed():
        calls = client.calls.list(limit=20)
        return calls if calls and all(c.status == "completed" for c in calls) else None

    calls = wait_until(completed, WAIT_S, interval=0.2)
    assert calls and len(calls) == 1, [(c.sid, c.status) for c in client.calls.list(limit=20)]
    assert calls[0].direction == "inbound"
    assert int(calls[0].duration) >= 1, calls[0].duration


def test_inbound_call_to_unknown_number_is_rejected_404(start_callflow, twiml, sipp_dir):
    callflow = start_callflow(free_port(udp_too=True))
    client = callflow.client()
    provision_number(client, twiml)  # some number exists, just not the one called

    result = run_sipp(
        "uac_expect_404",
        callflow.sip_addr,
        service=UNKNOWN_NUMBER,
        timeout_s=SIPP_TIMEOUT_S,
        workdir=sipp_dir("uac_expect_404"),
    )
    assert_one_good_call(result)
    assert client.calls.list(limit=20) == []


def test_inbound_call_from_unknown_source_is_rejected_403(start_callflow, twiml, sipp_dir):
    callflow = start_callflow(free_port(udp_too=True))
    client = callflow.client()
    provision_number(client, twiml)

    # 127.0.0.2 is loopback too, but outside the trunk's inbound_sources (127.0.0.1/32)
    result = run_sipp(
        "uac_expect_403",
        callflow.sip_addr,
        local_ip="127.0.0.2",
        service=DEFAULT_FROM,
        timeout_s=SIPP_TIMEOUT_S,
        workdir=sipp_dir("uac_expect_403"),
    )
    assert_one_good_call(result)
    assert client.calls.list(limit=20) == []


def test_options_from_a_trunk_is_answered_200(start_callflow, sipp_dir):
    callflow = start_callflow(free_port(udp_too=True))
    result = run_sipp(
        "uac_options",
        callflow.sip_addr,
        timeout_s=SIPP_TIMEOUT_S,
        workdir=sipp_dir("uac_options"),
    )
    assert_one_good_call(result)


# -- outbound: callflow calls a SIPp server through the trunk --------------------------------


def place_call(client, receiver, twiml, **kwargs):
    return client.calls.create(
        to=CALLEE,
        from_=DEFAULT_FROM,
        url=twiml.url("/twiml"),
        status_callback=receiver.url("/status"),
        status_callback_event=ALL_EVENTS,
        **kwargs,
    )


def outbound(start_callflow, far_end, twiml, scenario: str, auth: bool = False):
    """The far end playing `scenario`, and a client of a callflow whose trunk points at it."""
    sipp = far_end(scenario)
    callflow = start_callflow(sipp.port, auth=auth)
    client = callflow.client()
    provision_number(client, twiml)
    return sipp, client


def assert_answered_and_completed(client, receiver, sid, sipp):
    call = fetch_until(client, sid, FINAL_STATUSES)
    sipp_result = sipp.wait(WAIT_S)
    assert call.status == "completed", f"status {call.status}\n{sipp_result.describe()}"
    assert call.duration is not None and int(call.duration) >= 1, call.duration
    assert_one_good_call(sipp_result, "SIPp (far end)")
    final = final_callback(receiver, sid)
    statuses = [f.get("CallStatus") for f in callbacks_for(receiver, sid)]
    assert final is not None, f"no final status callback; got {statuses}"
    assert final["CallStatus"] == "completed", statuses
    assert int(final["CallDuration"]) >= 1, final
    # SIPp sent 180 then 200: the ringing and answered events came before the final one
    assert "ringing" in statuses and "in-progress" in statuses, statuses


def test_outbound_call_answered_then_hung_up_by_far_end(
    start_callflow, far_end, twiml, receiver
):
    sipp, client = outbound(start_callflow, far_end, twiml, "uas_answer")
    call = place_call(client, receiver, twiml, timeout=15)
    assert_answered_and_completed(client, receiver, call.sid, sipp)


def test_send_digits_are_keyed_to_the_far_end_once_it_answers(callflow_factory, twiml):
    """`SendDigits` on Calls.json: once the callee answers, the digits go to it as RFC 4733
    events (`w` waits half a second), before the call's TwiML runs. The callee here is
    callflow itself (its trunk points at its own SIP address), whose number runs a <Gather>:
    the digits it collects from the call's real RTP are the ones sent."""
    server = callflow_factory(start=False)
    server.config_toml = trunk_toml(server.sip_port)
    server.start()
    client = server.client()
    provision_number(client, twiml)
    gather = b'<Response><Gather numDigits="4" timeout="10" finishOnKey="" action="/gathered"/></Response>'
    twiml.routes["/voice"] = gather
    twiml.routes["/outbound"] = b'<Response><Pause length="5"/></Response>'
    call = client.calls.create(
        to=DEFAULT_FROM, from_=DEFAULT_FROM, url=twiml.url("/outbound"), send_digits="w12*#"
    )
    gathered = twiml.wait_for(
        lambda reqs: [r for r in reqs if r.path.startswith("/gathered")], timeout=WAIT_S
    )
    assert gathered, f"the callee gathered nothing\n{server.log_tail()}"
    assert gathered[0].form["Digits"] == "12*#", gathered[0].form
    # the callee is the inbound leg, not the call that sent the digits
    assert gathered[0].form["CallSid"] != call.sid

    def noted():
        r = server.request("GET", f"/v1/Accounts/{server.account_sid}/Calls/{call.sid}/Events")
        return any("SendDigits" in json.dumps(e["detail"]) for e in r.json()["events"])

    assert wait_until(noted, WAIT_S, interval=0.1), "the call's events do not say the digits were sent"


def test_a_recorded_call_tells_its_recording_status_callback(
    start_callflow, far_end, twiml, receiver
):
    """`Record=true` with `RecordingStatusCallback` and both events: `in-progress` when the
    recording starts and `completed` once it is stored, with Twilio's parameters, signed, for
    the recording the API then lists; an event Twilio does not know is refused at create."""
    sipp, client = outbound(start_callflow, far_end, twiml, "uas_answer")
    with pytest.raises(TwilioRestException) as refused:
        place_call(
            client, receiver, twiml, record=True,
            recording_status_callback=receiver.url("/rec"),
            recording_status_callback_event=["paused"],
        )
    assert refused.value.status == 400 and "RecordingStatusCallbackEvent" in refused.value.msg
    call = place_call(
        client, receiver, twiml, timeout=15, record=True,
        recording_status_callback=receiver.url("/rec"),
        recording_status_callback_event=["in-progress", "completed"],
    )
    assert_answered_and_completed(client, receiver, call.sid, sipp)
    told = receiver.wait_for(
        lambda reqs: (lambda r: r if len(r) >= 2 else None)(
            [q for q in reqs if q.path.startswith("/rec")]
        ),
        timeout=WAIT_S,
    )
    assert told, [q.path for q in receiver.requests]
    started, completed = told[0].form, told[1].form
    assert [started["RecordingStatus"], completed["RecordingStatus"]] == ["in-progress", "completed"]
    recs = client.recordings.list(call_sid=call.sid)
    assert len(recs) == 1
    for form in (started, completed):
        assert form["CallSid"] == call.sid and form["RecordingSid"] == recs[0].sid, form
        assert form["RecordingSource"] == "OutboundAPI" and form["RecordingChannels"] == "1"
        assert form["RecordingUrl"].endswith(f"/Recordings/{recs[0].sid}")
    assert int(completed["RecordingDuration"]) >= 1, completed
    assert "RecordingDuration" not in started
    for req in told:
        assert RequestValidator(ROOT_AUTH_TOKEN).validate(req.url, req.form, req.signature)


def test_a_dual_channel_call_recording_keeps_each_side_on_its_channel(
    start_callflow, far_end, twiml, receiver
):
    """`Record=true` with `RecordingChannels=dual`: a two-channel WAV, the call's own party (the
    callee here, silent) on the left and what callflow sent it (a <Say>) on the right."""
    sipp, client = outbound(start_callflow, far_end, twiml, "uas_answer")
    with pytest.raises(TwilioRestException) as refused:
        place_call(client, receiver, twiml, record=True, recording_channels="stereo")
    assert refused.value.status == 400 and "RecordingChannels" in refused.value.msg
    twiml.routes["/twiml"] = b"<Response><Say>This call is recorded on two channels.</Say></Response>"
    call = place_call(client, receiver, twiml, timeout=15, record=True, recording_channels="dual")
    assert_answered_and_completed(client, receiver, call.sid, sipp)
    recs = wait_until(lambda: client.recordings.list(call_sid=call.sid), WAIT_S, interval=0.2)
    assert recs, "no recording"
    assert recs[0].channels == 2
    wav = requests.get(
        f"{client.api.base_url}/2010-04-01/Accounts/{client.account_sid}/Recordings/{recs[0].sid}.wav",
        auth=(client.username, client.password),
        timeout=10,
    )
    assert wav.status_code == 200, wav.status_code
    with wave.open(io.BytesIO(wav.content)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getsampwidth()) == (2, 8000, 2)
        frames = w.readframes(w.getnframes())
    samples = array.array("h", frames)
    left, right = samples[0::2], samples[1::2]
    assert max(abs(v) for v in right) > 2000, "the <Say> is not on the right channel"
    assert max(abs(v) for v in left) < 500, "the silent callee's channel holds sound"


def test_outbound_call_with_digest_authentication(start_callflow, far_end, twiml, receiver):
    sipp, client = outbound(start_callflow, far_end, twiml, "uas_auth", auth=True)
    call = place_call(client, receiver, twiml, timeout=15)
    assert_answered_and_completed(client, receiver, call.sid, sipp)


@pytest.mark.parametrize(
    "scenario, timeout, status, sip_code",
    [
        ("uas_busy", 15, "busy", "486"),
        ("uas_no_answer", 2, "no-answer", "487"),  # callflow CANCELs at the ring timeout
        ("uas_503", 15, "failed", "503"),
    ],
)
def test_outbound_call_not_answered(
    start_callflow, far_end, twiml, receiver, scenario, timeout, status, sip_code
):
    sipp, client = outbound(start_callflow, far_end, twiml, scenario)
    call = place_call(client, receiver, twiml, timeout=timeout)
    fetched = fetch_until(client, call.sid, FINAL_STATUSES)
    sipp_result = sipp.wait(WAIT_S)
    assert fetched.status == status, f"status {fetched.status}\n{sipp_result.describe()}"
    assert_one_good_call(sipp_result, "SIPp (far end)")
    final = final_callback(receiver, call.sid)
    statuses = [f.get("CallStatus") for f in callbacks_for(receiver, call.sid)]
    assert final is not None, f"no final status callback; got {statuses}"
    assert final["CallStatus"] == status, statuses
    assert final.get("SipResponseCode") == sip_code, final
    assert "in-progress" not in statuses, statuses


def test_outbound_ringing_call_canceled_through_the_api(
    start_callflow, far_end, twiml, receiver
):
    sipp, client = outbound(start_callflow, far_end, twiml, "uas_no_answer")
    call = place_call(client, receiver, twiml, timeout=30)

    ringing = fetch_until(client, call.sid, {"ringing"} | FINAL_STATUSES)
    assert ringing.status == "ringing", f"status {ringing.status}\n{sipp.stop().describe()}"
    client.calls(call.sid).update(status="canceled")

    fetched = fetch_until(client, call.sid, FINAL_STATUSES)
    sipp_result = sipp.wait(WAIT_S)
    assert fetched.status == "canceled", f"status {fetched.status}\n{sipp_result.describe()}"
    # SIPp got a CANCEL (uas_no_answer); the 30 s ring timeout would have made it `no-answer`
    assert_one_good_call(sipp_result, "SIPp (far end)")
    final = final_callback(receiver, call.sid)
    statuses = [f.get("CallStatus") for f in callbacks_for(receiver, call.sid)]
    assert final is not None and final["CallStatus"] == "canceled", statuses


def test_a_restart_after_kill_9_sends_bye_to_the_answered_caller(start_callflow, twiml, sipp_dir):
    """Killed mid-call, callflow's next run ends the call at the far end: the caller, who would
    otherwise sit in silence, gets a BYE (from the dialog the call logged when answered), and
    the call is completed."""
    callflow = start_callflow(free_port(udp_too=True))
    client = callflow.client()
    provision_number(client, twiml)
    twiml.body = b'<Response><Pause length="60"/></Response>'
    caller = holding_caller(callflow.sip_addr, sipp_dir)
    try:
        call = answered_inbound(client)
        assert call is not None, f"the call was not answered\n{callflow.log_tail()}"

        def dialog_kept():
            r = callflow.request("GET", f"/v1/Accounts/{callflow.account_sid}/Calls/{call.sid}/Events")
            return any(e["kind"] == "sip.dialog" for e in r.json()["events"])

        assert wait_until(dialog_kept, WAIT_S, interval=0.1), "the answered dialog was not logged"
        callflow.kill()
        callflow.start()
        assert caller.wait(60), "SIPp saw no BYE within 60 s of the restart"
        result = caller.result()
    finally:
        caller.kill(graceful=False)
        caller.close()
    assert_one_good_call(result, "SIPp (the caller)")
    ended = fetch_until(client, call.sid, FINAL_STATUSES)
    assert ended.status == "completed", ended.status


def test_a_recording_is_on_disk_as_it_is_made_and_survives_kill_9(start_callflow, twiml, sipp_dir):
    """A <Record> is written to the spool as it is recorded (the file grows during the call, a
    second at a time: memory stays flat), and when callflow is killed mid-recording, its next
    run makes a Recording of the call from what reached the disk: all but the last second."""
    callflow = start_callflow(free_port(udp_too=True))
    client = callflow.client()
    provision_number(client, twiml)
    twiml.body = (
        b'<Response><Record maxLength="60" timeout="30" finishOnKey="" playBeep="false" '
        b'trim="do-not-trim"/></Response>'
    )
    # the digits, then 7 s of speech, then it waits for the BYE
    caller = _SippRun(
        "uac_play_pcaps",
        callflow.sip_addr,
        local_ip="127.0.0.1",
        port=None,
        calls=1,
        rate=None,
        service=DEFAULT_FROM,
        timeout_s=90,
        workdir=sipp_dir("uac_play_pcaps"),
    )
    caller.start()
    spool = callflow.data_dir / "spool"
    try:
        call = answered_inbound(client)
        assert call is not None, f"the call was not answered\n{callflow.log_tail()}"

        def spooled():
            files = list(spool.glob(f"*{call.sid}*.pcm"))
            return files[0] if files else None

        tape = wait_until(spooled, WAIT_S, interval=0.05)
        assert tape is not None, f"no spool file for the recording: {list(spool.glob('*'))}"
        sizes = []

        def four_seconds_on_disk():
            sizes.append(tape.stat().st_size)
            return sizes[-1] >= 4 * 16_000

        assert wait_until(four_seconds_on_disk, WAIT_S, interval=0.05), sizes
        # it grew during the call, a second (16,000 bytes) at a time (a stat in the middle of
        # a write may see part of one: those are left out)
        grown = sorted({n for n in sizes if n % 16_000 == 0})
        assert len(grown) >= 3, sorted(set(sizes))
        on_disk = tape.stat().st_size
        callflow.kill()
        callflow.start()
        assert caller.wait(60), "SIPp saw no BYE within 60 s of the restart"
    finally:
        caller.kill(graceful=False)
        caller.close()
    recs = wait_until(lambda: client.recordings.list(call_sid=call.sid), WAIT_S, interval=0.2)
    assert recs and len(recs) == 1, f"no recording of the call\n{callflow.log_tail()}"
    rec = recs[0]
    assert int(rec.duration) >= on_disk // 16_000, (rec.duration, on_disk)
    wav = callflow.request("GET", f"/2010-04-01/Accounts/{callflow.account_sid}/Recordings/{rec.sid}.wav")
    assert wav.status_code == 200
    # a 44-byte header and every sample that was on disk at the kill (and perhaps a little more)
    assert len(wav.content) - 44 >= on_disk, (len(wav.content), on_disk)
    assert not list(spool.glob("*.pcm")), "the spool file was kept after its recording was stored"
    assert "kept a recording a crash interrupted" in callflow.log_text()


def test_a_restart_after_kill_9_cancels_the_ringing_outbound_call(
    start_callflow, far_end, twiml, receiver
):
    """Killed while an outbound call rings, callflow's next run CANCELs the INVITE the dead run
    sent (and ACKs its 487): the callee stops ringing now, not at its own timeout."""
    sipp = far_end("uas_no_answer")
    callflow = start_callflow(sipp.port)
    client = callflow.client()
    provision_number(client, twiml)
    call = place_call(client, receiver, twiml, timeout=55)
    ringing = fetch_until(client, call.sid, {"ringing"} | FINAL_STATUSES)
    assert ringing.status == "ringing", f"status {ringing.status}\n{sipp.stop().describe()}"

    def dialog_kept():
        r = callflow.request("GET", f"/v1/Accounts/{callflow.account_sid}/Calls/{call.sid}/Events")
        return any(e["kind"] == "sip.dialog" for e in r.json()["events"])

    assert wait_until(dialog_kept, WAIT_S, interval=0.1), "the INVITE's dialog was not logged"
    callflow.kill()
    callflow.start()
    # uas_no_answer passes only with the CANCEL, its 200, the 487 and our ACK
    sipp_result = sipp.wait(40)
    assert_one_good_call(sipp_result, "SIPp (far end)")
    ended = fetch_until(client, call.sid, FINAL_STATUSES)
    assert ended.status == "failed", ended.status


def test_outbound_call_to_an_unreachable_tcp_trunk_fails_at_once(start_callflow, twiml, receiver):
    """Nothing listens on the trunk's TCP port: the refused connection fails the call right away
    (a transport error), not after timer B's 32 s."""
    callflow = start_callflow(free_port(), transport="tcp")
    client = callflow.client()
    provision_number(client, twiml)
    call = place_call(client, receiver, twiml)

    def final():
        fetched = client.calls(call.sid).fetch()
        return fetched if fetched.status in FINAL_STATUSES else None

    fetched = wait_until(final, WAIT_S, interval=0.2)
    assert fetched is not None, f"no final status in {WAIT_S:.0f} s"
    assert fetched.status == "failed", fetched.status
