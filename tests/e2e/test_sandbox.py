"""The plugin sandbox against the real server (issue 14): a plugin that waits fails at once with
its reason, and accounts whose uploads loop or sleep cannot stall another account's call.

The abuse guest (plugins/tests/abuse, `callflow_test_abuse.wasm`) misbehaves as its config asks;
it is run through `POST /v1/Accounts/{AC}/Plugins/{ZP}/Invocations` (what `callflow plugins run`
calls), which runs one event in the real sandbox with the default 10 ms deadline and answers
`{commands, state, logs}`, 400 with the reason when the plugin failed, 503 with Retry-After when
plugin capacity is overloaded. Times are asserted only as generous behaviour bounds ("it did not
wait for the hour"), never as performance.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections import Counter

import pytest
import requests

from harness import DEFAULT_FROM, WebhookReceiver, free_port, wait_until
from sipp import run_sipp, sipp_path
from test_plugins import wasm
from test_sip import sipp_dir, start_callflow  # noqa: F401 (fixtures)

HTTP_TIMEOUT_S = 15.0
# "did not hang": an hour's sleep, a timer, a spin must all answer well within this
FAST_S = 5.0
# The abuse runs at most this long, and each abusive thread sends at most ABUSE_MAX_REQUESTS.
ABUSE_MAX_S = 45.0
ABUSE_MAX_REQUESTS = 3000
ABUSERS_PER_ACCOUNT = 4
WAIT_S = 20.0

CANNOT_WAIT = "a plugin cannot wait"
DEADLINE = re.compile(r"past its \d+ ms deadline")


def upload(server, account_sid, token, name, plugin="callflow_test_abuse") -> str:
    """Uploads a built test/example plugin as the account's (raw body); returns its ZP sid."""
    resp = requests.post(
        f"{server.base_url}/v1/Accounts/{account_sid}/Plugins",
        params={"Name": name},
        data=wasm(plugin).read_bytes(),
        headers={"Content-Type": "application/wasm"},
        auth=(account_sid, token),
        timeout=HTTP_TIMEOUT_S,
    )
    assert resp.status_code in (200, 201), resp.text
    body = resp.json()
    assert body["world"] == "call-flow" and body["sid"].startswith("ZP"), body
    return body["sid"]


def bind(server, account_sid: str, token: str, plugin: str, config: dict) -> dict:
    """Binds `plugin` as the account's call flow (account-wide) with `config`."""
    resp = requests.post(
        f"{server.base_url}/v1/Accounts/{account_sid}/PluginBindings",
        data={"Plugin": plugin, "Config": json.dumps(config)},
        auth=(account_sid, token),
        timeout=HTTP_TIMEOUT_S,
    )
    assert resp.status_code in (200, 201), resp.text
    binding = resp.json()
    assert binding["plugin"] == plugin and binding["world"] == "call-flow", binding
    assert binding["phone_number_sid"] is None and binding["callout_sid"] is None, binding
    return binding


def invoke(server, account_sid: str, token: str, plugin: str, config: dict, session=None):
    """Runs the plugin's `start` event in the sandbox; (response, seconds it took)."""
    started = time.monotonic()
    resp = (session or requests).post(
        f"{server.base_url}/v1/Accounts/{account_sid}/Plugins/{plugin}/Invocations",
        data={"Event": "start", "Config": json.dumps(config)},
        auth=(account_sid, token),
        timeout=HTTP_TIMEOUT_S,
    )
    return resp, time.monotonic() - started


def message_of(resp) -> str:
    """An error answer's `message` (or the start of its body, if it is not the API's JSON)."""
    try:
        return resp.json()["message"]
    except (ValueError, KeyError, TypeError):
        return resp.text[:200]


def says(body: dict) -> list:
    """The texts of the `say` commands a successful invocation returned."""
    return [c["Say"]["text"] for c in body["commands"] if isinstance(c, dict) and "Say" in c]


def test_waiting_plugins_fail_fast_with_their_reason(callflow, make_subaccount):
    account, _ = make_subaccount("waiter")
    sid, token = account.sid, account.auth_token
    plugin = upload(callflow, sid, token, "abuse")

    def run(config: dict):
        resp, took = invoke(callflow, sid, token, plugin, config)
        assert took < FAST_S, f"{config}: answered after {took:.1f} s"
        return resp

    # an hour's sleep, a blocking wait or a poll on a WASI timer: refused at once, as waits
    for config in (
        {"abuse": "sleep", "secs": 3600},
        {"abuse": "timer-block"},
        {"abuse": "timer-poll"},
    ):
        resp = run(config)
        assert resp.status_code == 400, (config, resp.status_code, resp.text)
        message = resp.json()["message"]
        assert message.startswith("the plugin failed: "), (config, message)
        assert CANNOT_WAIT in message, (config, message)

    # spinning on the clock or on a timer: time stands still, so only the deadline stops it
    for config in ({"abuse": "clock-spin"}, {"abuse": "timer-spin"}):
        resp = run(config)
        assert resp.status_code == 400, (config, resp.status_code, resp.text)
        message = resp.json()["message"]
        assert DEADLINE.search(message), (config, message)
        assert CANNOT_WAIT not in message, (config, message)

    # exit() is named (WASI 0.2's exit carries only success or failure, so the guest's 3 arrives
    # as a failure status), and the reason carries no Wasm frames or backtrace
    resp = run({"abuse": "exit"})
    assert resp.status_code == 400, resp.text
    message = resp.json()["message"]
    exited = r"the plugin failed: the plugin called exit \(failure\) instead of returning"
    assert re.fullmatch(exited, message), message
    assert "backtrace" not in resp.text.lower() and "wasm" not in resp.text.lower(), resp.text
    assert "0x" not in message and len(message) < 300, message

    # stdin is there, empty and at its end: reading it returns at once
    resp = run({"abuse": "stdin"})
    assert resp.status_code == 200, resp.text
    assert says(resp.json()) == ["stdin: 0 bytes (true)"], resp.json()

    # and the same plugin behaves when asked to
    resp = run({"abuse": "none"})
    assert resp.status_code == 200, resp.text
    assert len(says(resp.json())) == 1, resp.json()


GATHER_ONE = b"""<?xml version="1.0" encoding="UTF-8"?>
<Response>
  <Gather numDigits="1" action="/gather" timeout="10"><Say>Press one.</Say></Gather>
  <Say>Nothing was pressed.</Say>
</Response>"""

THANKS = b"""<?xml version="1.0" encoding="UTF-8"?>
<Response><Say>Thank you.</Say><Hangup/></Response>"""


class Abuser:
    """Threads that keep running one account's misbehaving plugin through the Invocations
    endpoint until `stop()`, ABUSE_MAX_S or ABUSE_MAX_REQUESTS; they record every answer."""

    def __init__(self, server, account_sid, token, plugin, config, threads=ABUSERS_PER_ACCOUNT):
        self.args = (server, account_sid, token, plugin, config)
        self.statuses = Counter()  # HTTP status, or the exception's class name
        self.messages = Counter()  # the 400s' and 503s' messages
        self.retry_after = set()  # the 503s' Retry-After headers
        self.slowest = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def start(self) -> "Abuser":
        for t in self._threads:
            t.start()
        return self

    def _run(self):
        deadline = time.monotonic() + ABUSE_MAX_S
        with requests.Session() as session:
            for _ in range(ABUSE_MAX_REQUESTS):
                if self._stop.is_set() or time.monotonic() >= deadline:
                    return
                try:
                    resp, took = invoke(*self.args, session=session)
                except requests.RequestException as exc:
                    with self._lock:
                        self.statuses[type(exc).__name__] += 1
                    time.sleep(0.05)
                    continue
                with self._lock:
                    self.statuses[resp.status_code] += 1
                    self.slowest = max(self.slowest, took)
                    if resp.status_code in (400, 503):
                        self.messages[message_of(resp)] += 1
                    if resp.status_code == 503:
                        self.retry_after.add(resp.headers.get("Retry-After"))

    def count(self, status) -> int:
        with self._lock:
            return self.statuses[status]

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=HTTP_TIMEOUT_S + 5)
        assert not any(t.is_alive() for t in self._threads), "an abusive thread did not end"

    def report(self) -> str:
        return (
            f"statuses {dict(self.statuses)}, slowest {self.slowest:.2f} s, "
            f"messages {dict(self.messages)}"
        )


@pytest.fixture
def app():
    rec = WebhookReceiver()
    rec.routes = {"/voice": GATHER_ONE, "/gather": THANKS}
    rec.start()
    yield rec
    rec.stop()


def test_abusive_accounts_do_not_stall_a_third_accounts_call(start_callflow, app, sipp_dir):
    if sipp_path() is None:
        pytest.fail("sipp is not installed: `apt-get install sip-tester` (tests/run does it)")
    callflow = start_callflow(free_port(udp_too=True))
    root = callflow.client()
    a, b, c = (
        root.api.v2010.accounts.create(friendly_name=n) for n in ("looper", "sleeper", "good")
    )

    loop_cfg = {"abuse": "loop"}
    sleep_cfg = {"abuse": "sleep", "secs": 3600}
    abusers = {}
    for account, config in ((a, loop_cfg), (b, sleep_cfg)):
        plugin = upload(callflow, account.sid, account.auth_token, "abuse")
        bind(callflow, account.sid, account.auth_token, plugin, config)
        abusers[account.sid] = Abuser(callflow, account.sid, account.auth_token, plugin, config)
    looper, sleeper = abusers[a.sid], abusers[b.sid]

    # C: a number whose VoiceUrl is the TwiML app (the built-in interpreter runs it), and an
    # upload of its own (not bound), run through the same endpoint as the abusers
    c_client = callflow.client(c.sid, c.auth_token)
    c_client.incoming_phone_numbers.create(
        phone_number=DEFAULT_FROM, voice_url=app.url("/voice"), voice_method="POST"
    )
    c_plugin = upload(callflow, c.sid, c.auth_token, "behaves")

    try:
        for abuser in abusers.values():
            abuser.start()
        # the abuse is under way (both abusers already had plugin failures) before the call
        assert wait_until(lambda: looper.count(400) and sleeper.count(400), WAIT_S), (
            f"looper: {looper.report()}; sleeper: {sleeper.report()}"
        )

        c_runs = []

        def run_c():
            for _ in range(5):
                try:
                    resp, took = invoke(callflow, c.sid, c.auth_token, c_plugin, {"abuse": "none"})
                    c_runs.append((resp.status_code, took, resp.text))
                except requests.RequestException as exc:
                    c_runs.append((type(exc).__name__, HTTP_TIMEOUT_S, str(exc)))
                time.sleep(0.3)

        before = (looper.count(400), sleeper.count(400))
        c_thread = threading.Thread(target=run_c, daemon=True)
        c_thread.start()
        result = run_sipp(
            "uac_press_1",
            callflow.sip_addr,
            service=DEFAULT_FROM,
            timeout_s=40.0,
            workdir=sipp_dir("uac_press_1"),
        )
        c_thread.join(timeout=5 * (HTTP_TIMEOUT_S + 1))
        # the abuse went on during the call, not only before it
        during = (looper.count(400) - before[0], sleeper.count(400) - before[1])
        assert min(during) > 0, f"looper: {looper.report()}; sleeper: {sleeper.report()}"
        assert result.counts() == (1, 0) and result.ok, f"SIPp did not pass:\n{result.describe()}"

        voice = [r for r in app.requests if r.path.split("?")[0] == "/voice"]
        gather = [r for r in app.requests if r.path.split("?")[0] == "/gather"]
        assert len(voice) == 1, [r.path for r in app.requests]
        assert voice[0].form["AccountSid"] == c.sid, voice[0].form
        assert len(gather) == 1 and gather[0].form["Digits"] == "1", [r.form for r in gather]
        call_sid = voice[0].form["CallSid"]
        call = wait_until(
            lambda: (x := c_client.calls(call_sid).fetch()).status == "completed" and x,
            WAIT_S,
            interval=0.2,
        )
        assert call, f"the call did not complete: {c_client.calls(call_sid).fetch().status}"

        # C's own plugin ran, every time, while the others' plugins were looping and sleeping
        assert not c_thread.is_alive() and len(c_runs) == 5, c_runs
        for status, took, text in c_runs:
            assert status == 200, (status, text)
            assert says(json.loads(text)) == ["event for CA00000000000000000000000000000000"], text
            assert took < FAST_S, f"C's plugin answered after {took:.1f} s"
    finally:
        for abuser in abusers.values():
            abuser.stop()
    # (shown with -s; the assertions below carry the same reports)
    print(f"\nlooper: {looper.report()}\nsleeper: {sleeper.report()}")
    print(f"C's runs: {[(status, round(took, 3)) for status, took, _ in c_runs]}")

    # the abusers really ran: their plugins failed for what they did, answers were 400s (or a
    # 503 saying capacity is overloaded), never a success, a 500 or a hang
    for name, abuser, reason in (
        ("looper", looper, lambda m: DEADLINE.search(m)),
        ("sleeper", sleeper, lambda m: CANNOT_WAIT in m),
    ):
        report = f"{name}: {abuser.report()}"
        assert abuser.count(400) >= 5, report
        assert set(abuser.statuses) <= {400, 503}, report
        for message in abuser.messages:
            if message.startswith("the plugin failed: "):
                assert reason(message), report
            else:
                assert "overloaded" in message, report
        assert abuser.retry_after <= {"1"}, report

    health = requests.get(callflow.url("/health"), timeout=5)
    assert health.status_code == 200, health.text
