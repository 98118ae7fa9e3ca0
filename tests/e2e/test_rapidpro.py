"""RapidPro end to end: the RapidPro simulator (rapidpro.py) plays mailroom against the real
`callflow` binary, and SIPp is the phone.

Outbound, the simulator starts calls exactly as mailroom does (Calls.json with To, From, Url,
StatusCallback, maybe MachineDetection) and answers callflow's HTTPS callbacks with mailroom's
TwiML; the phone is SIPp at the far end of a trunk (tests/sipp/uas_rapidpro.xml), whose behaviour
is chosen by the last digit of the number called. Inbound, SIPp calls a number whose VoiceUrl is
mailroom's /incoming URL. Every exchange is checked from mailroom's side: signatures (mailroom's
own algorithm, with the channel's token), query strings, CallStatus on resumes, the order of the
201 and the first callback, only the final status callback, the recording download on the first
try. See /work/shared/reference/rapidpro-contract.md.
"""

from __future__ import annotations

import json
import sqlite3
import re
import time
import urllib.parse
import uuid as uuidlib

import pytest

from harness import DEFAULT_FROM, free_port, is_sid, wait_until
from rapidpro import (
    ERROR_MESSAGE,
    Channel,
    Flow,
    RapidProSim,
    Reply,
    TestCA,
    dial_doc,
    gather_doc,
    hangup_doc,
    record_doc,
    reject_doc,
    say,
)
from sipp import SippServer, run_sipp, sipp_path
from test_sip import SIPP_CALLER, sipp_dir, trunk_toml  # noqa: F401 (sipp_dir is a fixture)
from test_twiml import call_log

# The phone's numbers: the last digit picks what tests/sipp/uas_rapidpro.xml does.
SILENT = "+15551230000"  # answers, says nothing, waits for our BYE
PRESSES_1 = "+15551230001"  # answers, presses 1 after 3 s
SPEAKS = "+15551230002"  # answers, speaks for 7 s after 2 s
HANGS_UP = "+15551230003"  # answers, hangs up after 1 s
MACHINE = "+15551230004"  # answers with 7 s of speech at once (a machine's greeting)
UNAVAILABLE = "+15551230005"  # 180, then 480 (no-answer)
BUSY = "+15551230006"  # 486
BROKEN = "+15551230007"  # 503 (failed)
RINGS = "+15551230008"  # rings until CANCEL

WAIT_S = 30.0
# After a final status callback, how long to listen for another one.
QUIET_S = 1.5
FINAL = {"completed", "busy", "no-answer", "failed", "canceled"}


@pytest.fixture(autouse=True)
def _sipp_installed():
    if sipp_path() is None:
        pytest.fail("sipp is not installed: `apt-get install sip-tester` (tests/run does it)")


@pytest.fixture(scope="module")
def sim_ca(tmp_path_factory):
    return TestCA(tmp_path_factory.mktemp("rapidpro-ca"))


@pytest.fixture
def sim(sim_ca):
    s = RapidProSim(sim_ca).start()
    yield s
    s.stop()


@pytest.fixture
def phone(sipp_dir):  # noqa: F811
    """`phone(calls=1)`: SIPp playing uas_rapidpro for up to `calls` calls, stopped at teardown."""
    servers = []

    def make(calls: int = 1, timeout_s: float = 90.0) -> SippServer:
        server = SippServer("uas_rapidpro", calls=calls, timeout_s=timeout_s, workdir=sipp_dir("uas_rapidpro"))
        servers.append(server)
        return server.start()

    yield make
    for s in servers:
        s.stop()


@pytest.fixture
def rapidpro_callflow(callflow_factory, sim_ca):
    """`rapidpro_callflow(trunk_port)`: a callflow trusting the test CA, its trunk at the port,
    the root account owning DEFAULT_FROM (the channel's address)."""

    def start(trunk_port: int, voice_url=None, status_callback=None, extra_toml: str = ""):
        server = callflow_factory(start=False)
        server.config_toml = trunk_toml(trunk_port) + sim_ca.webhooks_toml() + extra_toml
        server.start()
        kwargs = {}
        if status_callback:
            kwargs.update(status_callback=status_callback, status_callback_method="POST")
        server.client().incoming_phone_numbers.create(
            phone_number=DEFAULT_FROM,
            voice_url=voice_url or "http://127.0.0.1:9/unused",
            voice_method="POST",
            **kwargs,
        )
        return server

    return start


def channel_of(sim: RapidProSim, callflow, **kwargs) -> Channel:
    """The TW channel RapidPro would have for this account: our credentials, our number,
    `send_url` = callflow's base URL."""
    return sim.add_channel(
        Channel(callflow.account_sid, callflow.auth_token, DEFAULT_FROM, callflow.base_url, **kwargs)
    )


# -- assertions shared by the tests --------------------------------------------------------------


def assert_mailroom_satisfied(sim: RapidProSim) -> None:
    """mailroom found nothing wrong: every IVR request was a signed form POST that passed its
    checks (and nothing went to a path it does not serve)."""
    assert sim.problems() == [], sim.problems()
    for r in sim.all_requests():
        if r.route in ("handle", "status", "incoming"):
            assert r.method == "POST", r.target
            assert r.headers.get("content-type", "").startswith("application/x-www-form-urlencoded"), r.headers
            assert r.valid, f"bad signature on {r.target}: {r.headers.get('x-twilio-signature')}"
            assert r.host == sim.domain, r.host


def assert_started(sim: RapidProSim, started, to: str) -> str:
    """Calls.json answered 201 with a JSON `sid`; returns it."""
    assert started.status_code == 201, started.body
    assert started.json is not None and is_sid(started.sid, "CA"), started.body
    assert started.json.get("status") != "failed", started.body
    assert started.json.get("to") == to, started.body
    return started.sid


def first_handle(sim: RapidProSim, started, timeout: float = WAIT_S):
    got = wait_until(lambda: sim.requests_to("handle", started.call.uuid), timeout)
    assert got, f"no start callback within {timeout} s; requests: {[r.target for r in sim.all_requests()]}"
    return got[0]


def assert_start_request(sim: RapidProSim, started, channel: Channel, to: str):
    """The first callback is the start, to `Url` verbatim, after our 201, for the sid we got."""
    start = first_handle(sim, started)
    assert start.step == "start"
    assert start.target == f"/mr/ivr/c/{channel.uuid}/handle?action=start&call={started.call.uuid}"
    # mailroom stores the sid from the 201 before the call can start: the callback must not come
    # before the driver had the answer
    assert start.received_at > started.responded_at, (start.received_at, started.responded_at)
    form = start.form_dict
    assert form["CallSid"] == started.sid
    assert form["AccountSid"] == channel.account_sid
    assert form["From"] == channel.address and form["To"] == to
    assert form["CallStatus"] == "in-progress"
    assert form["Direction"] == "outbound-api"
    assert form["ApiVersion"] == "2010-04-01"
    return start


def final_status(sim: RapidProSim, sid: str, timeout: float = WAIT_S):
    """The one status callback of `sid`: it arrives, and no other follows (mailroom sends no
    StatusCallbackEvent, so only the final status is due)."""
    final = sim.wait_final_status(sid, timeout)
    assert final is not None, f"no status callback for {sid} within {timeout} s"
    time.sleep(QUIET_S)
    callbacks = sim.status_callbacks(sid)
    statuses = [c.form_dict.get("CallStatus") for c in callbacks]
    assert len(callbacks) == 1, f"status callbacks {statuses}: only the final one is due"
    form = final.form_dict
    assert form["CallStatus"] in FINAL, form
    assert final.target == urllib.parse.urlsplit(sim.status_url(sim.channels[final.channel])).path
    return form


def assert_completed_with_duration(form: dict) -> int:
    assert form["CallStatus"] == "completed", form
    assert re.fullmatch(r"[0-9]+", form.get("CallDuration", "")), form
    return int(form["CallDuration"])


def phone_result(phone: SippServer, calls: int = 1):
    result = phone.wait(WAIT_S)
    assert result.counts() == (calls, 0), f"the phone (SIPp) did not pass:\n{result.describe()}"
    return result


def flow_commands(callflow, sid: str) -> list:
    return [e["detail"] for e in call_log(callflow, sid) if e["kind"] == "flow.command"]


def said(callflow, sid: str) -> list:
    return [c["Say"]["text"] for c in flow_commands(callflow, sid) if isinstance(c, dict) and "Say" in c]


def outbound(sim, phone, rapidpro_callflow, flow: Flow, calls: int = 1, **channel_kwargs):
    """The phone, a callflow whose trunk reaches it, the channel, and the test's flow."""
    far = phone(calls)
    callflow = rapidpro_callflow(far.port)
    channel = channel_of(sim, callflow, **channel_kwargs)
    sim.flow = flow
    return far, callflow, channel


def call_out(sim, phone, rapidpro_callflow, flow: Flow, to: str, calls: int = 1, **channel_kwargs):
    """`outbound`, then mailroom starts a call to `to`, checked (201 and sid, then the start
    request): the phone, callflow, the channel, the started call, its sid, the start request."""
    far, callflow, channel = outbound(sim, phone, rapidpro_callflow, flow, calls, **channel_kwargs)
    started = sim.start_call(channel, to)
    sid = assert_started(sim, started, to)
    start = assert_start_request(sim, started, channel, to)
    return far, callflow, channel, started, sid, start


def resumes_of(sim, started) -> list:
    """The call's requests to /handle after its start, in order."""
    return [r for r in sim.requests_to("handle", started.call.uuid) if r.step != "start"]


# -- Exchange A/B: start an outbound call --------------------------------------------------------


@pytest.mark.parametrize("slash", ["", "/"], ids=["send_url", "send_url-with-trailing-slash"])
def test_start_say_and_hangup(sim, phone, rapidpro_callflow, slash):
    """Calls.json exactly as mailroom sends it (with a `send_url` ending in `/`, the path starts
    `//2010-04-01`): 201 with a sid; the start callback after it; the flow's Say then Hangup; the
    final status `completed` with an integer CallDuration and nothing before it."""
    flow = Flow(start=lambda c: hangup_doc(say("Hello from RapidPro. Goodbye.")))
    far, callflow, channel = outbound(sim, phone, rapidpro_callflow, flow)

    started = sim.start_call(channel, SILENT, send_url=callflow.base_url + slash)
    assert started.url.endswith(("/Calls.json"))
    assert ("//2010-04-01/" in started.url) == (slash == "/"), started.url
    sid = assert_started(sim, started, SILENT)
    assert started.request_body == urllib.parse.urlencode(
        sorted(
            {
                "To": SILENT,
                "From": DEFAULT_FROM,
                "Url": sim.handle_url(channel, started.call.uuid),
                "StatusCallback": sim.status_url(channel),
            }.items()
        )
    )
    assert_start_request(sim, started, channel, SILENT)
    phone_result(far)  # the phone got our BYE

    form = final_status(sim, sid)
    assert_completed_with_duration(form)
    assert form["CallSid"] == sid
    assert sim.calls[started.call.uuid].status == "D"
    assert said(callflow, sid) == ["Hello from RapidPro. Goodbye."]
    assert flow_commands(callflow, sid)[-1] == "Hangup"
    assert_mailroom_satisfied(sim)


# -- Exchange C: resumes -------------------------------------------------------------------------


def test_gather_with_digits_in_mailroom_exact_form(sim, phone, rapidpro_callflow):
    """mailroom's own Gather document (numDigits 1, timeout 30, the action with `&amp;`, a
    Redirect with timeout=true after it): the phone presses 1 and the action gets Digits=1 with
    its query string intact."""
    flow = Flow(
        start=lambda c: gather_doc(c.resume_url, say("Hello there. Please enter one or two."), num_digits=1),
        gather=lambda c: hangup_doc(say("Great! You said One.")),
    )
    far, callflow, channel, started, sid, start = call_out(sim, phone, rapidpro_callflow, flow, PRESSES_1)
    assert 'timeout="30"' in start.answer and "&amp;wait_type=gather" in start.answer
    phone_result(far)

    resumes = resumes_of(sim, started)
    assert [r.step for r in resumes] == ["gather"], [r.target for r in resumes]
    gathered = resumes[0]
    assert gathered.target == (
        f"/mr/ivr/c/{channel.uuid}/handle?action=resume&call={started.call.uuid}&wait_type=gather"
    )
    assert gathered.form_dict["Digits"] == "1"
    assert gathered.form_dict["CallStatus"] == "in-progress"
    assert gathered.form_dict["CallSid"] == sid
    assert_completed_with_duration(final_status(sim, sid))
    assert_mailroom_satisfied(sim)


def test_gather_timeout_falls_through_to_the_redirect(sim, phone, rapidpro_callflow):
    """No digits: the Gather's action is not called; the Redirect after it is, with its
    `timeout=true` (a short Gather timeout keeps the test fast)."""
    flow = Flow(
        start=lambda c: gather_doc(c.resume_url, say("Enter a number."), finish_on_key="#", timeout=2),
        gather_timeout=lambda c: hangup_doc(say("We did not hear from you.")),
    )
    far, callflow, channel, started, sid, _ = call_out(sim, phone, rapidpro_callflow, flow, SILENT)
    phone_result(far)

    resumes = resumes_of(sim, started)
    assert [r.step for r in resumes] == ["gather_timeout"], [r.target for r in resumes]
    timed_out = resumes[0]
    assert timed_out.target == (
        f"/mr/ivr/c/{channel.uuid}/handle?action=resume&call={started.call.uuid}"
        "&wait_type=gather&timeout=true"
    )
    assert timed_out.form_dict["CallStatus"] == "in-progress"
    assert not timed_out.form_dict.get("Digits"), timed_out.form_dict
    assert said(callflow, sid)[-1] == "We did not hear from you."
    assert_completed_with_duration(final_status(sim, sid))
    assert_mailroom_satisfied(sim)


def test_record_with_audio_is_downloadable_on_the_first_try(sim, phone, rapidpro_callflow):
    """The phone speaks: the Record action gets a RecordingUrl without an extension, and
    `{RecordingUrl}.mp3` answers 200 audio to mailroom's Basic-auth GET the first time, made
    while the action request waits (as mailroom does)."""
    flow = Flow(
        start=lambda c: record_doc(c.resume_url, say("Speak.")),
        record=lambda c: hangup_doc(say("Thank you.")),
    )
    far, callflow, channel, started, sid, _ = call_out(sim, phone, rapidpro_callflow, flow, SPEAKS)
    phone_result(far)

    resumes = resumes_of(sim, started)
    assert [r.step for r in resumes] == ["record"], [r.target for r in resumes]
    rec = resumes[0]
    assert rec.target == (
        f"/mr/ivr/c/{channel.uuid}/handle?action=resume&call={started.call.uuid}&wait_type=record"
    )
    form = rec.form_dict
    url = form["RecordingUrl"]
    last = urllib.parse.urlsplit(url).path.rsplit("/", 1)[-1]
    assert url.startswith("http") and "." not in last, url
    assert re.fullmatch(r"[0-9]+", form["RecordingDuration"]) and int(form["RecordingDuration"]) >= 1, form
    assert form["CallStatus"] == "in-progress"
    assert len(rec.downloads) == 1, rec.downloads
    first = rec.downloads[0]
    assert first.url == url + ".mp3"
    assert first.status == 200, first
    assert first.content_type.startswith("audio/"), first
    assert first.length > 4000, first
    assert_completed_with_duration(final_status(sim, sid))
    assert_mailroom_satisfied(sim)


def test_record_without_audio_falls_through_to_the_empty_redirect(sim, phone, rapidpro_callflow):
    """The phone is silent: no Record action; the Redirect after it, with `empty=true`."""
    flow = Flow(
        start=lambda c: record_doc(c.resume_url, say("Speak.")),
        record_empty=lambda c: hangup_doc(say("We heard nothing.")),
    )
    far, callflow, channel, started, sid, _ = call_out(sim, phone, rapidpro_callflow, flow, SILENT)
    phone_result(far)

    resumes = resumes_of(sim, started)
    assert [r.step for r in resumes] == ["record_empty"], [r.target for r in resumes]
    empty = resumes[0]
    assert empty.target == (
        f"/mr/ivr/c/{channel.uuid}/handle?action=resume&call={started.call.uuid}"
        "&wait_type=record&empty=true"
    )
    assert not empty.form_dict.get("RecordingUrl"), empty.form_dict
    assert empty.downloads == []
    assert said(callflow, sid)[-1] == "We heard nothing."
    assert_completed_with_duration(final_status(sim, sid))
    assert_mailroom_satisfied(sim)


@pytest.mark.parametrize(
    "dialled, statuses",
    [(HANGS_UP, {"completed", "answered"}), (BUSY, {"busy"})],
    ids=["answered", "busy"],
)
def test_dial_reports_a_status_mailroom_accepts(sim, phone, rapidpro_callflow, dialled, statuses):
    """mailroom's `<Dial action=… timeout="60" timeLimit="7200">+number</Dial>`: the action gets
    a DialCallStatus in mailroom's accepted set and an integer DialCallDuration."""
    flow = Flow(
        start=lambda c: dial_doc(c.resume_url, dialled, say("Connecting you.")),
        dial=lambda c: hangup_doc(say("Goodbye.")),
    )
    far, callflow, channel, started, sid, start = call_out(sim, phone, rapidpro_callflow, flow, SILENT, calls=2)
    assert 'timeout="60" timeLimit="7200">' + dialled + "</Dial>" in start.answer
    phone_result(far, calls=2)

    resumes = resumes_of(sim, started)
    assert [r.step for r in resumes] == ["dial"], [r.target for r in resumes]
    dialed = resumes[0]
    assert dialed.target == (
        f"/mr/ivr/c/{channel.uuid}/handle?action=resume&call={started.call.uuid}&wait_type=dial"
    )
    form = dialed.form_dict
    assert form["DialCallStatus"] in statuses, form
    assert re.fullmatch(r"[0-9]+", form["DialCallDuration"]), form
    if "completed" in statuses:
        assert int(form["DialCallDuration"]) >= 1, form
    assert form["CallStatus"] == "in-progress"
    assert said(callflow, sid)[-1] == "Goodbye."
    assert_completed_with_duration(final_status(sim, sid))
    assert_mailroom_satisfied(sim)


# -- Exchange F: hang-up request -----------------------------------------------------------------


def test_hangup_request_mid_call_answers_200_then_the_final_status(sim, phone, rapidpro_callflow):
    """mailroom's wait expired: `POST Calls/{sid}.json Status=completed` answers exactly 200, the
    phone gets our BYE, and the final status callback still follows."""
    flow = Flow(start=lambda c: gather_doc(c.resume_url, say("Enter a number."), timeout=30))
    far, callflow, channel, started, sid, _ = call_out(sim, phone, rapidpro_callflow, flow, SILENT)
    # the call is waiting in its Gather
    waiting = wait_until(
        lambda: any(isinstance(c, dict) and "Gather" in c for c in flow_commands(callflow, sid)),
        WAIT_S,
        interval=0.1,
    )
    assert waiting, flow_commands(callflow, sid)

    resp = sim.hangup_call(channel, sid)
    assert resp.status_code == 200, resp.text
    phone_result(far)
    form = final_status(sim, sid)
    assert_completed_with_duration(form)
    # the Gather was cut short: neither its action nor its Redirect was called
    assert [r.step for r in sim.requests_to("handle", started.call.uuid)] == ["start"]
    assert_mailroom_satisfied(sim)


# -- Exchange D: the final status of calls that never connected -----------------------------------


@pytest.mark.parametrize(
    "number, status",
    [(BUSY, "busy"), (UNAVAILABLE, "no-answer"), (BROKEN, "failed")],
    ids=["busy", "no-answer", "failed"],
)
def test_unanswered_call_ends_with_its_status_and_only_that_callback(
    sim, phone, rapidpro_callflow, number, status
):
    """A call the phone refuses: no /handle at all, one status callback with the status mailroom
    retries on (never `completed`)."""
    flow = Flow(start=lambda c: hangup_doc(say("Nobody should hear this.")))
    far, callflow, channel = outbound(sim, phone, rapidpro_callflow, flow)
    started = sim.start_call(channel, number)
    sid = assert_started(sim, started, number)
    phone_result(far)
    form = final_status(sim, sid)
    assert form["CallStatus"] == status, form
    assert sim.requests_to("handle") == []
    assert sim.calls[started.call.uuid].status == "E"  # mailroom would retry it
    assert_mailroom_satisfied(sim)


def test_hangup_request_before_answer_cancels_the_call(sim, phone, rapidpro_callflow):
    """While the phone rings, mailroom's hang-up request answers 200 and the call ends
    `canceled` (the phone got our CANCEL)."""
    flow = Flow(start=lambda c: hangup_doc(say("Nobody should hear this.")))
    far, callflow, channel = outbound(sim, phone, rapidpro_callflow, flow)
    started = sim.start_call(channel, RINGS)
    sid = assert_started(sim, started, RINGS)
    client = callflow.client()
    ringing = wait_until(lambda: client.calls(sid).fetch().status == "ringing", WAIT_S, 0.1)
    assert ringing, client.calls(sid).fetch().status

    resp = sim.hangup_call(channel, sid)
    assert resp.status_code == 200, resp.text
    phone_result(far)
    form = final_status(sim, sid)
    assert form["CallStatus"] == "canceled", form
    assert sim.requests_to("handle") == []
    assert_mailroom_satisfied(sim)


def test_a_call_nobody_answers_rings_for_60_seconds(sim, phone, rapidpro_callflow):
    """mailroom sends no Timeout: Twilio's default ring timeout, 60 s, applies, and the call
    ends `no-answer` (slow by nature: it waits out the minute)."""
    flow = Flow(start=lambda c: hangup_doc(say("Nobody should hear this.")))
    far, callflow, channel = outbound(sim, phone, rapidpro_callflow, flow)
    started = sim.start_call(channel, RINGS)
    sid = assert_started(sim, started, RINGS)
    final = sim.wait_final_status(sid, timeout=80)
    assert final is not None, "no status callback within 80 s"
    rang = final.received_at - started.responded_at
    assert final.form_dict["CallStatus"] == "no-answer", final.form_dict
    assert 58.0 <= rang <= 66.0, f"rang for {rang:.1f} s"
    phone_result(far)
    assert_mailroom_satisfied(sim)


# -- machine detection ---------------------------------------------------------------------------


def test_machine_detection_machine_gets_mailroom_error_twiml_and_ends(sim, phone, rapidpro_callflow):
    """A channel with machine_detection: Calls.json carries MachineDetection=Enable; a machine's
    greeting gives AnsweredBy=machine_start on the start request, mailroom answers its error
    TwiML (and would retry), and the call ends cleanly."""
    flow = Flow(start=lambda c: hangup_doc(say("Nobody should hear this.")))
    far, callflow, channel = outbound(sim, phone, rapidpro_callflow, flow, machine_detection=True)
    started = sim.start_call(channel, MACHINE)
    assert "MachineDetection=Enable" in started.request_body.split("&")
    sid = assert_started(sim, started, MACHINE)
    start = assert_start_request(sim, started, channel, MACHINE)
    assert start.form_dict.get("AnsweredBy") == "machine_start", start.form_dict
    assert ERROR_MESSAGE in start.answer
    phone_result(far)
    assert said(callflow, sid) == [ERROR_MESSAGE]
    assert flow_commands(callflow, sid)[-1] == "Hangup"
    form = final_status(sim, sid)
    assert_completed_with_duration(form)
    assert sim.calls[started.call.uuid].status == "E"  # errored by the machine, kept so
    assert_mailroom_satisfied(sim)


def test_machine_detection_silence_is_unknown_and_the_flow_runs(sim, phone, rapidpro_callflow):
    """Nobody speaks: AnsweredBy=unknown, which mailroom ignores; the flow runs."""
    flow = Flow(start=lambda c: hangup_doc(say("Hello.")))
    far, callflow, channel, started, sid, start = call_out(sim, phone, rapidpro_callflow, flow, SILENT, machine_detection=True)
    assert start.form_dict.get("AnsweredBy") in ("unknown", "human"), start.form_dict
    phone_result(far)
    assert said(callflow, sid) == ["Hello."]
    assert_completed_with_duration(final_status(sim, sid))
    assert_mailroom_satisfied(sim)


# -- Exchange E: incoming calls ------------------------------------------------------------------


def incoming(sim, rapidpro_callflow, channel_uuid=None):
    """A callflow whose number's VoiceUrl is mailroom's /incoming and StatusCallback its /status
    (pasted by hand, as RapidPro's channel page says), and the channel."""
    trunk = free_port(udp_too=True)
    probe = Channel("AC", "x", DEFAULT_FROM, "")  # URLs need the uuid before the server exists
    if channel_uuid:
        probe.uuid = channel_uuid
    callflow = rapidpro_callflow(trunk, voice_url=sim.incoming_url(probe), status_callback=sim.status_url(probe))
    channel = Channel(callflow.account_sid, callflow.auth_token, DEFAULT_FROM, callflow.base_url, uuid=probe.uuid)
    return callflow, channel


def test_incoming_call_with_a_voice_flow(sim, rapidpro_callflow, sipp_dir):  # noqa: F811
    """SIPp calls our number: /incoming gets Caller=+E.164 and CallSid, signed; the flow gathers
    three digits and a recording (downloadable at once), then hangs up; the final status goes to
    /status."""
    callflow, channel = incoming(sim, rapidpro_callflow)
    sim.add_channel(channel)
    sim.flow = Flow(
        incoming=lambda c: gather_doc(c.resume_url, say("Enter three digits."), num_digits=3),
        gather=lambda c: record_doc(c.resume_url, say("Now speak.")),
        record=lambda c: hangup_doc(say("Thank you.")),
    )
    result = run_sipp("uac_ivr", callflow.sip_addr, service=DEFAULT_FROM, timeout_s=60.0,
                      workdir=sipp_dir("uac_ivr"))
    assert result.counts() == (1, 0) and result.ok, f"SIPp did not pass:\n{result.describe()}"

    [inc] = sim.requests_to("incoming")
    form = inc.form_dict
    assert form["Caller"] == SIPP_CALLER and form["From"] == SIPP_CALLER
    assert form["To"] == DEFAULT_FROM
    assert is_sid(form["CallSid"], "CA")
    assert form["Direction"] == "inbound"
    assert inc.target == f"/mr/ivr/c/{channel.uuid}/incoming"
    sid = form["CallSid"]
    call_uuid = inc.call_uuid
    steps = [r.step for r in sim.requests_to("handle", call_uuid)]
    assert steps == ["gather", "record"], steps
    gathered, recorded = sim.requests_to("handle", call_uuid)
    assert gathered.form_dict["Digits"] == "123"
    assert gathered.target.endswith(f"handle?action=resume&call={call_uuid}&wait_type=gather")
    assert recorded.downloads and recorded.downloads[0].status == 200, recorded.downloads
    assert len(recorded.downloads) == 1
    assert_completed_with_duration(final_status(sim, sid))
    assert sim.calls[call_uuid].status == "D"
    assert_mailroom_satisfied(sim)


def test_incoming_call_without_a_flow_is_hung_up_cleanly(sim, rapidpro_callflow, sipp_dir):  # noqa: F811
    """No trigger matched: `<Response><!--missed call handled--></Response>`; callflow ends the
    call without an application error, and reports its final status. Twilio answers every call
    whose first verb is not <Reject> ("Using <Reject> as the first verb in your response is the
    only way to prevent Twilio from answering a call"; <Hangup> first "does not prevent Twilio
    from answering the call"): the caller (uac_hear) sees a 200 OK, then our BYE."""
    callflow, channel = incoming(sim, rapidpro_callflow)
    sim.add_channel(channel)
    sim.flow = Flow()  # no incoming step: mailroom's missed call
    result = run_sipp("uac_hear", callflow.sip_addr, service=DEFAULT_FROM,
                      keys={"rtp_port": str(free_port(udp_too=True))}, timeout_s=30.0,
                      workdir=sipp_dir("uac_hear"))
    assert result.counts() == (1, 0) and result.ok, f"SIPp did not pass:\n{result.describe()}"
    [inc] = sim.requests_to("incoming")
    assert inc.answer.endswith("<Response><!--missed call handled--></Response>")
    sid = inc.form_dict["CallSid"]
    assert said(callflow, sid) == [], "an empty document says nothing (no application error)"
    form = final_status(sim, sid)
    assert form["CallStatus"] == "completed", form
    assert_mailroom_satisfied(sim)


def test_incoming_call_rejected_is_never_answered(sim, rapidpro_callflow, sipp_dir):  # noqa: F811
    """An incoming call that triggered a non-voice flow: `<Response><Reject></Reject></Response>`.
    Twilio never answers such a call: SIPp gets a final 603 (or 486), never a 200 OK."""
    callflow, channel = incoming(sim, rapidpro_callflow)
    sim.add_channel(channel)
    sim.flow = Flow(incoming=lambda c: reject_doc())
    result = run_sipp("uac_rapidpro_reject", callflow.sip_addr, service=DEFAULT_FROM, timeout_s=20.0,
                      workdir=sipp_dir("uac_rapidpro_reject"))
    assert result.counts() == (1, 0) and result.ok, (
        f"the rejected call was not refused with 603/486 before any 200:\n{result.describe()}"
    )
    fetched = wait_until(lambda: sim.requests_to("incoming"), WAIT_S)
    assert fetched, "the VoiceUrl was not fetched"
    assert "final response: SIP/2.0 603" in result.logs or "final response: SIP/2.0 486" in result.logs
    sid = fetched[0].form_dict["CallSid"]
    # Twilio: a <Reject> (reason "rejected", the default) ends the call `no-answer`
    call = wait_until(lambda: (c := callflow.client().calls(sid).fetch()).status in FINAL and c, WAIT_S, 0.2)
    assert call and call.status == "no-answer", call and call.status
    form = final_status(sim, sid)
    assert form["CallStatus"] == "no-answer", form
    assert_mailroom_satisfied(sim)


# -- mailroom's JSON errors, and bad signatures --------------------------------------------------


def test_a_json_400_from_incoming_is_an_application_error(sim, rapidpro_callflow, sipp_dir):  # noqa: F811
    """/incoming for a channel mailroom does not know answers HTTP 400 JSON before any TwiML:
    an application error, and the call ends."""
    callflow, channel = incoming(sim, rapidpro_callflow)  # the channel is never added
    result = run_sipp("uac_hear", callflow.sip_addr, service=DEFAULT_FROM,
                      keys={"rtp_port": str(free_port(udp_too=True))}, timeout_s=30.0,
                      workdir=sipp_dir("uac_hear"))
    assert result.counts() == (1, 0) and result.ok, f"SIPp did not pass:\n{result.describe()}"
    [inc] = sim.requests_to("incoming")
    assert inc.status == 400 and json.loads(inc.answer)["error"].startswith("no active channel")
    sid = inc.form_dict["CallSid"]
    texts = said(callflow, sid)
    assert texts and "application error" in texts[-1].lower(), texts
    assert flow_commands(callflow, sid)[-1] == "Hangup"
    call = wait_until(lambda: (c := callflow.client().calls(sid).fetch()).status in FINAL and c, WAIT_S, 0.2)
    assert call and call.status == "completed", call and call.status


def test_a_json_400_from_handle_is_an_application_error(sim, phone, rapidpro_callflow):
    """A start callback answered with mailroom's generic 400 JSON: application error, the call
    ends, and its final status is reported."""
    body = json.dumps({"error": "unable to load call #42: sql: no rows in result set"})
    flow = Flow(start=Reply(400, body))
    far, callflow, channel, started, sid, start = call_out(sim, phone, rapidpro_callflow, flow, SILENT)
    assert start.status == 400
    phone_result(far)
    texts = said(callflow, sid)
    assert texts and "application error" in texts[-1].lower(), texts
    assert flow_commands(callflow, sid)[-1] == "Hangup"
    assert_completed_with_duration(final_status(sim, sid))
    assert_mailroom_satisfied(sim)


def test_a_channel_with_another_token_gets_mailroom_error_twiml_and_the_call_ends(
    sim, phone, rapidpro_callflow
):
    """RapidPro's channel holds a token other than the account's: every request fails mailroom's
    signature check, mailroom answers its error TwiML (200), and callflow says it and hangs up."""
    far = phone(1)
    callflow = rapidpro_callflow(far.port)
    channel = Channel(callflow.account_sid, callflow.auth_token, DEFAULT_FROM, callflow.base_url)
    sim.add_channel(channel, validation_token="0" * 32)  # mailroom validates with the wrong token
    sim.flow = Flow(start=lambda c: hangup_doc(say("Nobody should hear this.")))
    started = sim.start_call(channel, SILENT)
    sid = assert_started(sim, started, SILENT)
    start = first_handle(sim, started)
    assert start.signature_valid is False
    assert start.status == 200
    assert "<!--request failed signature validation: invalid request signature: " in start.answer
    phone_result(far)
    assert said(callflow, sid) == [ERROR_MESSAGE]
    assert flow_commands(callflow, sid)[-1] == "Hangup"
    final = sim.wait_final_status(sid, WAIT_S)
    assert final is not None and final.form_dict["CallStatus"] == "completed", final
    assert all(r.signature_valid is False for r in sim.all_requests()), [
        (r.target, r.signature_valid) for r in sim.all_requests()
    ]
    assert callflow.client().calls(sid).fetch().status == "completed"


# -- the RapidPro adapter: a flow per answered callout participant -------------------------------


def v1(server, path: str) -> str:
    return f"/v1/Accounts/{server.account_sid}/{path}"


def test_callout_starts_one_rapidpro_flow_per_answered_participant_across_a_restart(
    sim, callflow_factory, sim_ca, tmp_path
):
    """A callout bound to `builtin:rapidpro` (on: answered): SIPp's uas_callout answers numbers
    ending 0-5, is busy for 6-7 and never answers 8-9; busy and unanswered numbers are retried.
    callflow is killed (-9) in the middle and restarted. Each answered participant gets exactly
    one flow start (tel: URN, extra with callout, participant, attempt, status), the unanswered
    none; the first flow starts fail with 500 and are retried."""
    workdir = tmp_path / "sipp-telco"
    workdir.mkdir()
    people = [f"+1555800{i:04d}" for i in range(30)]
    answered = {p for p in people if p[-1] in "012345"}
    telco = SippServer("uas_callout", calls=400, timeout_s=240.0, workdir=workdir).start()
    try:
        server = callflow_factory(start=False)
        server.config_toml = (
            trunk_toml(telco.port).replace("cps = 50.0", "cps = 100.0").replace("max_channels = 20", "max_channels = 50")
            + sim_ca.webhooks_toml()
        )
        server.start()
        server.client().incoming_phone_numbers.create(phone_number=DEFAULT_FROM, voice_url="http://127.0.0.1:9/")
        sim.flow_start_failures = 3  # RapidPro is down for the first three flow starts
        flow_uuid = str(uuidlib.uuid4())

        r = server.request("POST", v1(server, "Callouts.json"), data={
            "Name": "flood warning",
            "From": DEFAULT_FROM,
            "Twiml": '<Response><Pause length="10"/></Response>',
            "Timeout": "2",
            "MaxConcurrent": "10",
            "CallsPerSecond": "10",
            "RetryConfig": json.dumps({"max_attempts": 3, "delay": {"fixed_seconds": 1}}),
        })
        assert r.status_code == 201, r.text
        callout = r.json()["sid"]
        # the API token as a secret of the binding: sent to RapidPro, shown and copied nowhere
        config = {"url": sim.base_url, "flow": flow_uuid, "on": "answered"}
        r = server.request("POST", v1(server, "PluginBindings.json"), data={
            "World": "call-events",
            "Plugin": "builtin:rapidpro",
            "CalloutSid": callout,
            "Config": json.dumps(config),
            "Secrets": json.dumps({"token": sim.api_token}),
        })
        assert r.status_code == 201, f"binding builtin:rapidpro: {r.status_code} {r.text}"
        assert r.json()["secrets"] == ["token"] and sim.api_token not in r.text, r.text
        r = server.request(
            "POST", v1(server, f"Callouts/{callout}/Participants.json"),
            data=json.dumps([{"phone_number": p} for p in people]),
            headers={"Content-Type": "application/json"},
        )
        assert r.status_code in (200, 201), r.text
        r = server.request("POST", v1(server, f"Callouts/{callout}.json"), data={"Status": "running"})
        assert r.status_code == 200, r.text

        def summary():
            r = server.request("GET", v1(server, f"Callouts/{callout}.json"))
            assert r.status_code == 200, r.text
            return r.json()

        # kill -9 in the middle: some participants answered, RapidPro refused their first flow
        # starts (their retries wait in callflow's outbox), others are still being called
        mid = wait_until(
            lambda: len(sim.flow_starts) >= 3 and (s := summary())["summary"]["completed"] >= 5 and s, 90, 0.1
        )
        assert mid, f"the callout did not get going: {summary()}; flow starts {len(sim.flow_starts)}"
        assert mid["status"] == "running" and mid["summary"]["pending"] + mid["summary"]["in_progress"] > 0, mid
        killed_at = time.monotonic()
        before_kill = len(sim.flow_starts)
        server.kill()
        server.start()
        done = wait_until(lambda: (s := summary())["status"] in ("completed", "stopped") and s, 150, 0.5)
        assert done and done["status"] == "completed", summary()

        # every answered participant's flow start goes through (after RapidPro's 500s)
        wait_until(lambda: len(sim.successful_flow_starts()) >= len(answered), 60, 0.2)
        time.sleep(2.0)  # and no duplicate follows
        ok = sim.successful_flow_starts()
        print(f"flow starts before the kill: {before_kill}; after: {len(sim.flow_starts) - before_kill}; "
              f"statuses {[(round(f.received_at - killed_at, 1), f.status) for f in sim.flow_starts]}")
        assert [f.status for f in sim.flow_starts[:3]] == [500, 500, 500], [f.status for f in sim.flow_starts]
        assert all(f.authorized for f in sim.flow_starts)
        urns = [tuple(f.json["urns"]) for f in ok]
        assert sorted(urns) == sorted((f"tel:{p}",) for p in answered), urns
        rows = {row["phone_number"]: row for row in _results(server, callout)}
        for f in ok:
            assert f.json["flow"] == flow_uuid
            assert f.headers.get("content-type", "").startswith("application/json")
            extra = f.json["extra"]
            phone_number = f.json["urns"][0][len("tel:"):]
            assert extra["callout"] == callout, extra
            assert extra["participant"].startswith("CP"), extra
            assert isinstance(extra["attempt"], int) and extra["attempt"] >= 1, extra
            assert extra["status"] == "completed", extra
            assert rows[phone_number]["outcome"] == "completed", rows[phone_number]
        assert len({f.json["extra"]["participant"] for f in ok}) == len(ok)
        # the refused flow starts were retried after the restart: they outlived the kill
        refused = {f.json["extra"]["participant"] for f in sim.flow_starts[:3]}
        retried = [f for f in ok if f.json["extra"]["participant"] in refused]
        assert len(retried) == len(refused) and all(f.received_at > killed_at for f in retried), [
            (round(f.received_at - killed_at, 1), f.json["extra"]["participant"]) for f in retried
        ]
        # the token went to RapidPro on every flow start (above), yet the API shows its name only,
        # and the calls' pins name the binding instead of copying it
        listed = server.request("GET", v1(server, "PluginBindings.json"))
        assert listed.status_code == 200 and sim.api_token not in listed.text, listed.text
        with sqlite3.connect(server.data_dir / "callflow.db") as db:
            pins = [row[0] for row in db.execute("SELECT plugins FROM calls")]
        assert pins and all(sim.api_token not in p and '"binding":"ZB' in p for p in pins), pins[:2]
    finally:
        telco.stop()


def _results(server, callout: str) -> list:
    import csv
    import io

    r = server.request("GET", v1(server, f"Callouts/{callout}/Results.csv"))
    assert r.status_code == 200, r.text
    return list(csv.DictReader(io.StringIO(r.text)))
