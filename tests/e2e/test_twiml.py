"""TwiML end to end: SIPp is a caller working through an IVR that a Twilio app serves, and the
real `callflow` binary runs it with the built-in TwiML interpreter, flite for <Say>, the media
workers for digits and recordings.

The caller (tests/sipp/uac_ivr.xml) hears a greeting and a <Gather>, presses 1 2 3 (RFC 2833
from sip-tester's pcaps), hears a <Record>'s beep and speaks (g711a.pcap); the app's action URLs
receive the digits and the recording, signed, and the recording downloads as MP3 with Basic auth;
the app's <Hangup/> ends the call, which SIPp sees as callflow's BYE.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import threading
import time
import urllib.request

import pytest
import requests
from twilio.request_validator import RequestValidator

from harness import DEFAULT_FROM, WebhookReceiver, free_port, wait_until
from sipp import run_sipp, sipp_path
from test_sip import SIPP_CALLER, far_end, sipp_dir, start_callflow  # noqa: F401 (fixtures)

WAIT_S = 30.0

VOICE = b"""<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Say>Welcome.</Say>
  <Gather numDigits="3" action="/gather" timeout="8">
    <Say>Enter three digits.</Say>
  </Gather>
  <Say>We did not get your digits.</Say>
</Response>"""

AFTER_GATHER = b"""<?xml version="1.0" encoding="UTF-8"?>
<Response><Record maxLength="30" timeout="4" action="/recorded"/></Response>"""

AFTER_RECORD = b"""<?xml version="1.0" encoding="UTF-8"?><Response><Hangup/></Response>"""


@pytest.fixture(autouse=True)
def _sipp_installed():
    if sipp_path() is None:
        pytest.fail("sipp is not installed: `apt-get install sip-tester` (tests/run does it)")


@pytest.fixture
def app():
    rec = WebhookReceiver()
    rec.routes = {"/voice": VOICE, "/gather": AFTER_GATHER, "/recorded": AFTER_RECORD}
    rec.start()
    yield rec
    rec.stop()


def requests_to(app: WebhookReceiver, path: str) -> list:
    return [r for r in app.requests if r.path.split("?")[0] == path]


def call_log(callflow, sid: str) -> list:
    """The call's event log (GET /v1/Accounts/{AC}/Calls/{CA}/Events)."""
    resp = requests.get(
        f"{callflow.base_url}/v1/Accounts/{callflow.account_sid}/Calls/{sid}/Events",
        auth=(callflow.account_sid, callflow.auth_token),
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return resp.json()["events"]


def assert_signed(app: WebhookReceiver, req, token: str) -> None:
    url = f"http://{req.host}{req.path}"
    signature = req.headers.get("x-twilio-signature", "")
    assert RequestValidator(token).validate(url, dict(req.params), signature), (url, req.params)


def ivr_call(callflow, app, sipp_dir):
    """The IVR caller (uac_ivr) calls the account's number, whose VoiceUrl is the app."""
    callflow.client().incoming_phone_numbers.create(
        phone_number=DEFAULT_FROM, voice_url=app.url("/voice"), voice_method="POST"
    )
    result = run_sipp(
        "uac_ivr",
        callflow.sip_addr,
        service=DEFAULT_FROM,
        timeout_s=60.0,
        workdir=sipp_dir("uac_ivr"),
    )
    assert result.counts() == (1, 0) and result.ok, f"SIPp did not pass:\n{result.describe()}"


def test_an_inbound_caller_gathers_digits_and_records(start_callflow, app, sipp_dir):
    callflow = start_callflow(free_port(udp_too=True))
    client = callflow.client()
    ivr_call(callflow, app, sipp_dir)

    token = callflow.auth_token
    voice = wait_until(lambda: requests_to(app, "/voice"), WAIT_S, interval=0.2)
    assert voice, "the VoiceUrl was fetched"
    first = voice[0]
    assert first.method == "POST"
    assert first.form["From"] == SIPP_CALLER and first.form["To"] == DEFAULT_FROM
    assert first.form["Direction"] == "inbound"
    # Twilio fetches an inbound call's first document while it rings
    assert first.form["CallStatus"] == "ringing"
    assert first.form["ApiVersion"] == "2010-04-01"
    assert_signed(app, first, token)

    gather = requests_to(app, "/gather")
    assert len(gather) == 1, [r.path for r in app.requests]
    assert gather[0].form["Digits"] == "123"
    assert gather[0].form["CallSid"] == first.form["CallSid"]
    assert gather[0].form["CallStatus"] == "in-progress"
    assert_signed(app, gather[0], token)

    recorded = requests_to(app, "/recorded")
    assert len(recorded) == 1, [r.path for r in app.requests]
    form = recorded[0].form
    assert_signed(app, recorded[0], token)
    assert form["RecordingUrl"].startswith("http") and not form["RecordingUrl"].endswith(".mp3")
    assert 4 <= int(form["RecordingDuration"]) <= 9, form["RecordingDuration"]
    assert form["RecordingSid"].startswith("RE")

    # The recording downloads as MP3 with Basic auth, on the first try.
    mgr = urllib.request.HTTPPasswordMgrWithDefaultRealm()
    mgr.add_password(None, form["RecordingUrl"], callflow.account_sid, token)
    opener = urllib.request.build_opener(urllib.request.HTTPBasicAuthHandler(mgr))
    req = urllib.request.Request(
        form["RecordingUrl"] + ".mp3",
        headers={
            "Authorization": "Basic "
            + base64.b64encode(f"{callflow.account_sid}:{token}".encode()).decode()
        },
    )
    with opener.open(req, timeout=10) as resp:
        body = resp.read()
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("audio/mpeg")
    assert len(body) > 4000, len(body)

    call = client.calls(first.form["CallSid"]).fetch()
    assert call.status == "completed"
    assert int(call.duration) >= 10, call.duration


HOLD = b"""<?xml version="1.0" encoding="UTF-8"?><Response><Pause length="25"/></Response>"""


def test_a_redirect_through_the_api_changes_a_live_call(start_callflow, app, sipp_dir):
    callflow = start_callflow(free_port(udp_too=True))
    client = callflow.client()
    app.routes = {"/voice": HOLD, "/next": AFTER_RECORD}
    client.incoming_phone_numbers.create(
        phone_number=DEFAULT_FROM, voice_url=app.url("/voice"), voice_method="POST"
    )
    box = {}
    runner = threading.Thread(
        target=lambda: box.setdefault(
            "result",
            run_sipp(
                "uac_hear",
                callflow.sip_addr,
                service=DEFAULT_FROM,
                keys={"rtp_port": str(free_port(udp_too=True))},
                timeout_s=40.0,
                workdir=sipp_dir("uac_hear"),
            ),
        )
    )
    started = time.monotonic()
    runner.start()
    voice = wait_until(lambda: requests_to(app, "/voice"), WAIT_S, interval=0.2)
    assert voice, "the VoiceUrl was fetched"
    sid = voice[0].form["CallSid"]
    client.calls(sid).update(url=app.url("/next"), method="POST")
    runner.join(timeout=45)
    result = box["result"]
    assert result.counts() == (1, 0) and result.ok, f"SIPp did not pass:\n{result.describe()}"
    # Hung up by the new document, long before the 25 s <Pause> would have ended.
    assert time.monotonic() - started < 20
    nxt = requests_to(app, "/next")
    assert len(nxt) == 1 and nxt[0].form["CallSid"] == sid
    assert_signed(app, nxt[0], callflow.auth_token)
    call = wait_until(
        lambda: (c := client.calls(sid).fetch()).status == "completed" and c, WAIT_S, interval=0.2
    )
    assert call, "the call completed"


def test_a_bound_recording_plugin_trims_what_is_kept_and_notifies(start_callflow, app, sipp_dir):
    """The account binds the SDK's trim-silence example: the Record verb's recording keeps only
    what the plugin keeps, and the plugin's notification arrives."""
    from test_plugins import cli, wasm

    callflow = start_callflow(free_port(udp_too=True))
    # (a peak threshold well above the line noise the caller sends after speaking)
    config = {"threshold": 4000, "padding_ms": 200, "min_length_ms": 500,
              "notify": {"url": app.url("/notify")}}
    up = cli(callflow, "upload", str(wasm("callflow_example_trim_silence")), "--name", "trim",
             "--bind", "--config", json.dumps(config))
    assert up.returncode == 0, up.stderr
    ivr_call(callflow, app, sipp_dir)

    recorded = wait_until(lambda: requests_to(app, "/recorded"), WAIT_S, interval=0.2)
    form = recorded[0].form
    notified = wait_until(lambda: requests_to(app, "/notify"), WAIT_S, interval=0.2)
    note = json.loads(notified[0].body)
    assert note["kept"] is True, note
    assert note["call_sid"] == form["CallSid"], note
    # the quiet start (the beep's tail, the caller's first breath) was cut, and what the app
    # and the Recording resource see is what was kept, not what was heard
    assert note["start_ms"] > 0 and note["duration_ms"] < note["original_ms"], note
    kept_s = int(form["RecordingDuration"])
    assert abs(kept_s * 1000 - note["duration_ms"]) < 1000, (kept_s, note)
    rec = callflow.client().recordings(form["RecordingSid"]).fetch()
    assert abs(int(rec.duration) - kept_s) <= 1, (rec.duration, kept_s)


def test_an_uploaded_sdk_plugin_drives_a_real_call(start_callflow, sipp_dir):
    """The account binds the SDK's menu example instead of TwiML: no webhook at all."""
    from test_plugins import cli, wasm

    callflow = start_callflow(free_port(udp_too=True))
    client = callflow.client()
    client.incoming_phone_numbers.create(phone_number=DEFAULT_FROM)
    config = {
        "greeting": "Welcome to the river authority.",
        "options": {"1": {"label": "river levels", "say": "The river is at its normal level."}},
        "return_to_menu": False,
    }
    up = cli(callflow, "upload", str(wasm("callflow_example_menu")), "--name", "menu", "--bind",
             "--config", json.dumps(config))
    assert up.returncode == 0, up.stderr
    result = run_sipp(
        "uac_press_1",
        callflow.sip_addr,
        service=DEFAULT_FROM,
        timeout_s=60.0,
        workdir=sipp_dir("uac_press_1"),
    )
    assert result.counts() == (1, 0) and result.ok, f"SIPp did not pass:\n{result.describe()}"
    calls = [c for c in client.calls.list(limit=5) if c.direction == "inbound"]
    assert len(calls) == 1
    sid = calls[0].sid
    log = call_log(callflow, sid)
    flow = [(e["kind"], e["detail"]) for e in log if e["kind"].startswith("flow.")]
    events = [d["event"] for k, d in flow if k == "flow.event"]
    gathered = [e["Gathered"] for e in events if isinstance(e, dict) and "Gathered" in e]
    assert gathered and gathered[0]["digits"] == "1", flow
    commands = [d if isinstance(d, str) else next(iter(d)) for k, d in flow if k == "flow.command"]
    assert "Gather" in commands and commands[-1] == "Hangup", commands
    assert not [d for k, d in flow if k == "flow.error"], flow

    # `callflow replay` re-runs the call's events: the same build gives the same commands, the
    # hello plugin does not.
    same = replay(callflow, sid, wasm("callflow_example_menu"))
    assert same.returncode == 0 and "no differences" in same.stdout, same.stdout + same.stderr
    other = replay(callflow, sid, wasm("callflow_plugin_hello"))
    assert other.returncode == 1 and "DIFFERENT" in other.stdout, other.stdout + other.stderr


def replay(callflow, sid: str, plugin) -> subprocess.CompletedProcess:
    env = dict(os.environ)
    env.update(
        CALLFLOW_URL=callflow.base_url,
        CALLFLOW_ACCOUNT_SID=callflow.account_sid,
        CALLFLOW_AUTH_TOKEN=callflow.auth_token,
    )
    return subprocess.run(
        [str(callflow.binary), "replay", sid, "--plugin", str(plugin)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


OUTBOUND_VOICE = b"""<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Gather numDigits="1" action="gather" timeout="10"><Say>Press one to confirm.</Say></Gather>
  <Say>Nothing pressed.</Say>
</Response>"""


def call_far_end(start_callflow, far_end, app, scenario: str, **create):
    """An outbound call (its TwiML at the app's /voice) to SIPp playing `scenario`: the SIPp
    server, callflow, its client and the call."""
    from test_sip import CALLEE

    sipp = far_end(scenario)
    callflow = start_callflow(sipp.port)
    client = callflow.client()
    client.incoming_phone_numbers.create(phone_number=DEFAULT_FROM)
    call = client.calls.create(to=CALLEE, from_=DEFAULT_FROM, url=app.url("/voice"), **create)
    return sipp, callflow, client, call


def test_an_outbound_call_gathers_a_digit_from_the_far_end(start_callflow, far_end, app):
    from test_sip import CALLEE, final_callback

    app.routes = {"/voice": OUTBOUND_VOICE, "/gather": AFTER_RECORD}
    sipp, callflow, client, call = call_far_end(
        start_callflow, far_end, app, "uas_press_1", status_callback=app.url("/status")
    )
    result = sipp.wait(WAIT_S)
    assert result.counts() == (1, 0) and result.ok, f"SIPp did not pass:\n{result.describe()}"
    voice = requests_to(app, "/voice")
    assert len(voice) == 1
    assert voice[0].form["CallStatus"] == "in-progress"
    assert voice[0].form["Direction"] == "outbound-api"
    assert voice[0].form["To"] == CALLEE
    gather = requests_to(app, "/gather")
    assert len(gather) == 1 and gather[0].form["Digits"] == "1", [r.path for r in app.requests]
    assert_signed(app, gather[0], callflow.auth_token)
    final = final_callback(app, call.sid)
    assert final is not None and final["CallStatus"] == "completed", final


DIAL = b"""<?xml version="1.0" encoding="UTF-8"?>
<Response><Dial action="/dialed" timeout="10">+15551230001</Dial></Response>"""


def call_and_dial(start_callflow, far_end, app, sipp_dir, voice, far, calls=1, start=None):
    """SIPp calls the account's number, whose VoiceUrl answers `voice` (a <Dial>, action
    `/dialed`; or a function of the far end's port giving it); the far end plays `far` for
    `calls` legs (0: it must never be called), reached through the trunk (or as `start(port)`
    configures callflow). Returns the server, a client and the far end's result (None when it
    was not to be called; the caller's is checked here)."""
    callee = far_end(far, calls=max(calls, 1))
    if callable(voice):
        voice = voice(callee.port)
    app.routes = {"/voice": voice, "/dialed": AFTER_RECORD}
    callflow = (start or start_callflow)(callee.port)
    client = callflow.client()
    client.incoming_phone_numbers.create(
        phone_number=DEFAULT_FROM, voice_url=app.url("/voice"), voice_method="POST"
    )
    caller = run_sipp(
        "uac_hear",
        callflow.sip_addr,
        service=DEFAULT_FROM,
        keys={"rtp_port": str(free_port(udp_too=True))},
        timeout_s=40.0,
        workdir=sipp_dir("uac_hear"),
    )
    assert caller.counts() == (1, 0) and caller.ok, f"caller:\n{caller.describe()}"
    return callflow, client, (callee.wait(WAIT_S) if calls else None)


@pytest.mark.parametrize("far, status", [("uas_answer", "completed"), ("uas_busy", "busy")])
def test_dial_bridges_a_child_call_and_reports_its_outcome(
    start_callflow, far_end, app, sipp_dir, far, status
):
    from test_sip import CALLEE

    callflow, client, far_result = call_and_dial(start_callflow, far_end, app, sipp_dir, DIAL, far)
    assert far_result.counts() == (1, 0) and far_result.ok, f"callee:\n{far_result.describe()}"

    dialed = requests_to(app, "/dialed")
    assert len(dialed) == 1, [r.path for r in app.requests]
    form = dialed[0].form
    assert_signed(app, dialed[0], callflow.auth_token)
    assert form["DialCallStatus"] == status, form
    child = client.calls(form["DialCallSid"]).fetch()
    assert child.direction == "outbound-dial"
    assert child.parent_call_sid == form["CallSid"]
    assert child.to == CALLEE
    assert child.status == status
    if status == "completed":
        assert int(form["DialCallDuration"]) >= 1, form


def dial_sip(port: int) -> bytes:
    return (
        '<?xml version="1.0" encoding="UTF-8"?><Response><Dial action="/dialed" timeout="10">'
        f"<Sip>sip:+15551230001@127.0.0.1:{port};transport=udp</Sip></Dial></Response>"
    ).encode()


@pytest.mark.parametrize("allowed", [True, False], ids=["private-allowed", "policy-refuses"])
def test_dial_sip_calls_the_uri_directly_under_the_egress_policy(
    callflow_factory, far_end, app, sipp_dir, allowed
):
    """<Sip> goes to the URI's host, not the trunk (which points nowhere here); loopback is a
    private address, so it is called only when [sip] dial_private_uris allows it."""
    from test_sip import trunk_toml

    def start(_port):
        server = callflow_factory(start=False)
        flag = "true" if allowed else "false"
        server.config_toml = trunk_toml(free_port(udp_too=True)) + f"[sip]\ndial_private_uris = {flag}\n"
        return server.start()

    callflow, client, far_result = call_and_dial(
        None, far_end, app, sipp_dir, dial_sip, "uas_answer", calls=int(allowed), start=start
    )
    if allowed:
        assert far_result.counts() == (1, 0) and far_result.ok, f"callee:\n{far_result.describe()}"
    dialed = wait_until(lambda: requests_to(app, "/dialed"), WAIT_S, interval=0.2)
    assert dialed and len(dialed) == 1, [r.path for r in app.requests]
    form = dialed[0].form
    if allowed:
        assert form["DialCallStatus"] == "completed", form
        child = client.calls(form["DialCallSid"]).fetch()
        assert child.to.startswith("sip:+15551230001@127.0.0.1:"), child.to
        assert child.direction == "outbound-dial" and child.status == "completed"
    else:
        assert form["DialCallStatus"] == "failed", form
        log = call_log(callflow, form["CallSid"])
        assert "egress policy refuses" in json.dumps(log), log


DIAL_RECORDED = b"""<?xml version="1.0" encoding="UTF-8"?>
<Response><Dial action="/dialed" timeLimit="4" record="record-from-answer">+15551230004</Dial></Response>"""


def test_a_recorded_dial_stores_the_conversation_and_reports_it_at_the_action(
    start_callflow, far_end, app, sipp_dir
):
    """tests/sipp/uas_rapidpro.xml answers a number ending in 4 and speaks at once (g711a.pcap,
    7 s); the Dial's 4 s time limit ends the bridge. The action gets RecordingUrl/Sid/Duration,
    the Recording (source DialVerb, on the parent call) exists first, and its WAV holds the
    callee's speech."""
    import io
    import wave

    callflow, client, far_result = call_and_dial(
        start_callflow, far_end, app, sipp_dir, DIAL_RECORDED, "uas_rapidpro"
    )
    assert far_result.counts() == (1, 0) and far_result.ok, f"callee:\n{far_result.describe()}"
    dialed = requests_to(app, "/dialed")
    assert len(dialed) == 1, [r.path for r in app.requests]
    form = dialed[0].form
    assert form["DialCallStatus"] == "completed", form
    assert form["RecordingSid"].startswith("RE"), form
    assert not form["RecordingUrl"].endswith((".wav", ".mp3")), form["RecordingUrl"]
    assert 3 <= int(form["RecordingDuration"]) <= 5, form
    rec = client.recordings(form["RecordingSid"]).fetch()
    assert rec.call_sid == form["CallSid"] and rec.source == "DialVerb", (rec.call_sid, rec.source)
    assert int(rec.duration) == int(form["RecordingDuration"])
    wav = requests.get(
        form["RecordingUrl"] + ".wav", auth=(callflow.account_sid, callflow.auth_token), timeout=10
    )
    assert wav.status_code == 200, wav.status_code
    with wave.open(io.BytesIO(wav.content)) as w:
        assert (w.getframerate(), w.getnchannels()) == (8000, 1)
        frames = w.readframes(w.getnframes())
    samples = memoryview(frames).cast("h")
    loud = sum(1 for x in samples if abs(x) > 2000)
    assert loud > 800, f"the callee's speech is not in the recording ({loud} loud samples)"


def test_a_call_created_with_record_is_recorded_whole(start_callflow, far_end, app):
    """Record=true on Calls.json: the call is recorded from the answer to the end, both sides;
    the callee (uas_rapidpro, a number ending in 4) speaks at once and the TwiML holds 3 s."""
    import io
    import wave

    app.routes = {"/voice": b'<Response><Pause length="3"/></Response>'}
    callee = far_end("uas_rapidpro")
    callflow = start_callflow(callee.port)
    client = callflow.client()
    client.incoming_phone_numbers.create(phone_number=DEFAULT_FROM)
    call = client.calls.create(
        to="+15551230004", from_=DEFAULT_FROM, url=app.url("/voice"), record=True
    )
    result = callee.wait(WAIT_S)
    assert result.counts() == (1, 0) and result.ok, f"callee:\n{result.describe()}"
    recs = wait_until(lambda: client.recordings.list(call_sid=call.sid), WAIT_S, interval=0.2)
    assert recs and len(recs) == 1, recs
    rec = recs[0]
    assert rec.source == "OutboundAPI" and 2 <= int(rec.duration) <= 5, (rec.source, rec.duration)
    wav = requests.get(
        callflow.url(f"/2010-04-01/Accounts/{callflow.account_sid}/Recordings/{rec.sid}.wav"),
        auth=(callflow.account_sid, callflow.auth_token),
        timeout=10,
    )
    assert wav.status_code == 200, wav.status_code
    with wave.open(io.BytesIO(wav.content)) as w:
        frames = w.readframes(w.getnframes())
    loud = sum(1 for x in memoryview(frames).cast("h") if abs(x) > 2000)
    assert loud > 800, f"the callee's speech is not in the recording ({loud} loud samples)"


DIAL_TWO = b"""<?xml version="1.0" encoding="UTF-8"?>
<Response><Dial action="/dialed" timeout="10">
  <Number>+15551230008</Number>
  <Number>+15551230000</Number>
</Dial></Response>"""


def test_dial_rings_every_number_and_bridges_the_first_to_answer(
    start_callflow, far_end, app, sipp_dir
):
    """Two numbers ring at once (tests/sipp/uas_callout.xml: one ending in 8 rings and never
    answers, one ending in 0 answers): the answered one is bridged, the other is cancelled."""
    callflow, client, far_result = call_and_dial(
        start_callflow, far_end, app, sipp_dir, DIAL_TWO, "uas_callout", calls=2
    )
    assert far_result.counts() == (2, 0), f"callee:\n{far_result.describe()}"

    dialed = requests_to(app, "/dialed")
    assert len(dialed) == 1, [r.path for r in app.requests]
    form = dialed[0].form
    assert form["DialCallStatus"] == "completed", form
    winner = client.calls(form["DialCallSid"]).fetch()
    assert winner.to == "+15551230000" and winner.status == "completed"
    children = client.calls.list(parent_call_sid=form["CallSid"])
    assert sorted(c.to for c in children) == ["+15551230000", "+15551230008"]
    loser = next(c for c in children if c.to == "+15551230008")
    assert loser.status == "canceled", loser.status


@pytest.mark.parametrize("broken", ["refused", "http-500"])
def test_a_broken_webhook_ends_in_the_application_error_and_a_clean_hangup(
    start_callflow, app, sipp_dir, broken
):
    callflow = start_callflow(free_port(udp_too=True))
    client = callflow.client()
    if broken == "refused":
        # nothing listens there; the URL's credentials must not reach the server log
        url = f"http://ann:s3cret@127.0.0.1:{free_port()}/voice"
    else:
        app.status = 500
        url = app.url("/voice")
    client.incoming_phone_numbers.create(phone_number=DEFAULT_FROM, voice_url=url)
    result = run_sipp(
        "uac_hear",
        callflow.sip_addr,
        service=DEFAULT_FROM,
        keys={"rtp_port": str(free_port(udp_too=True))},
        timeout_s=40.0,
        workdir=sipp_dir("uac_hear"),
    )
    # SIPp's scenario ends only with callflow's BYE: the call was hung up by us.
    assert result.counts() == (1, 0) and result.ok, f"SIPp did not pass:\n{result.describe()}"
    calls = [c for c in client.calls.list(limit=5) if c.direction == "inbound"]
    assert len(calls) == 1
    call = wait_until(
        lambda: (c := client.calls(calls[0].sid).fetch()).status == "completed" and c,
        WAIT_S,
        interval=0.2,
    )
    assert call, "the call completed"
    log = call_log(callflow, call.sid)
    said = [e["detail"] for e in log if e["kind"] == "flow.command" and "Say" in e["detail"]]
    assert said and "application error" in said[-1]["Say"]["text"], log
    commands = [e["detail"] for e in log if e["kind"] == "flow.command"]
    assert commands[-1] == "Hangup", commands
    # the operator hears of it: a warning with the call, and a count by Twilio's code (11200:
    # the document could not be had)
    text = callflow.log_text()
    warning = next((l for l in text.splitlines() if "application error" in l and call.sid in l), None)
    assert warning and "kind=11200" in warning, text[-3000:]
    assert "s3cret" not in text, warning
    metrics = requests.get(f"{callflow.base_url}/metrics", timeout=10).text
    assert 'callflow_application_errors_total{kind="11200"} 1' in metrics, metrics


def test_async_machine_detection_runs_beside_the_flow_and_tells_its_callback(
    start_callflow, far_end, app
):
    """`AsyncAmd=true`: the flow's first fetch goes out at once (no `AnsweredBy` yet) and the
    verdict reaches `AsyncAmdStatusCallback` while the flow runs, signed like every webhook."""
    app.routes = {"/voice": b'<Response><Pause length="6"/></Response>'}
    sipp, callflow, client, call = call_far_end(
        start_callflow,
        far_end,
        app,
        "uas_machine",
        machine_detection="Enable",
        async_amd="true",
        async_amd_status_callback=app.url("/amd"),
    )
    amd = wait_until(lambda: requests_to(app, "/amd"), WAIT_S, interval=0.1)
    assert amd, f"no AsyncAmdStatusCallback\n{callflow.log_tail()}"
    voice = requests_to(app, "/voice")
    assert len(voice) == 1 and "AnsweredBy" not in voice[0].form, voice[0].form
    form = amd[0].form
    assert (form["CallSid"], form["AnsweredBy"]) == (call.sid, "machine_start"), form
    assert int(form["MachineDetectionDuration"]) > 0
    assert RequestValidator(callflow.auth_token).validate(amd[0].url, form, amd[0].signature)
    result = sipp.wait(WAIT_S)
    assert result.counts() == (1, 0) and result.ok, f"SIPp did not pass:\n{result.describe()}"
    assert client.calls(call.sid).fetch().answered_by == "machine_start"


def test_machine_detection_sets_answered_by_before_the_first_fetch(start_callflow, far_end, app):
    app.routes = {"/voice": AFTER_RECORD}
    sipp, _, client, call = call_far_end(
        start_callflow, far_end, app, "uas_machine", machine_detection="Enable"
    )
    result = sipp.wait(WAIT_S)
    assert result.counts() == (1, 0) and result.ok, f"SIPp did not pass:\n{result.describe()}"
    voice = requests_to(app, "/voice")
    assert len(voice) == 1
    # 7 s of continuous speech from the first moment: a machine's greeting.
    assert voice[0].form["AnsweredBy"] == "machine_start", voice[0].form
    assert client.calls(call.sid).fetch().answered_by == "machine_start"
