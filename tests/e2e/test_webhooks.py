"""Status callbacks: parameters, Twilio signatures, GET callbacks, and the persistent delivery outbox."""

import time
from email.utils import parsedate_to_datetime
from urllib.parse import parse_qsl, urlsplit

from twilio.request_validator import RequestValidator

from harness import ROOT_ACCOUNT_SID, ROOT_AUTH_TOKEN, WebhookReceiver

TO = "+15005550001"
TWIML_URL = "http://127.0.0.1:9/twiml"
# After the first callback arrives, how long to keep listening for unwanted duplicates.
QUIET_PERIOD_S = 1.5

RETRY_ENV = {"CALLFLOW_WEBHOOK_RETRY_BASE_MS": "200", "CALLFLOW_WEBHOOK_RETRY_MAX_MS": "1000"}


def canceled_call(client, from_number, **kwargs):
    call = client.calls.create(to=TO, from_=from_number, url=TWIML_URL, **kwargs)
    client.calls(call.sid).update(status="canceled")
    return call


def only_callback(receiver, path_prefix, timeout=10.0):
    """Wait for the first request under `path_prefix`, then make sure no second one follows."""
    where = lambda r: r.path.startswith(path_prefix)  # noqa: E731
    got = receiver.wait_for_count(1, where, timeout=timeout)
    assert got, f"no request to {path_prefix} within {timeout} s"
    time.sleep(QUIET_PERIOD_S)
    got = receiver.matching(where)
    assert len(got) == 1, [r.path for r in got]
    return got[0]


def test_status_callback_on_cancel(root_client, from_number, receiver):
    url = receiver.url("/cb?token=abc")
    call = canceled_call(root_client, from_number, status_callback=url)
    req = only_callback(receiver, "/cb")

    assert req.method == "POST"
    assert req.path == "/cb?token=abc"
    assert req.url == url
    assert req.headers["content-type"].startswith("application/x-www-form-urlencoded")
    form = req.form
    assert len(form) == len(req.params), "a parameter was sent twice"
    assert form["CallSid"] == call.sid
    assert form["AccountSid"] == ROOT_ACCOUNT_SID
    assert form["From"] == from_number
    assert form["To"] == TO
    assert form["CallStatus"] == "canceled"
    assert form["Direction"] == "outbound-api"
    assert form["ApiVersion"] == "2010-04-01"
    assert form["CallbackSource"] == "call-progress-events"
    int(form["SequenceNumber"])
    parsedate_to_datetime(form["Timestamp"])
    # The query string belongs to the URL, not to the signed body parameters.
    assert "token" not in form

    signature = req.signature
    assert signature, "X-Twilio-Signature missing"
    assert RequestValidator(ROOT_AUTH_TOKEN).validate(url, form, signature)
    assert not RequestValidator("0" * 32).validate(url, form, signature)


def test_status_callback_get(root_client, from_number, receiver):
    url = receiver.url("/get-cb?token=abc")
    call = canceled_call(
        root_client, from_number, status_callback=url, status_callback_method="GET"
    )
    req = only_callback(receiver, "/get-cb")

    assert req.method == "GET"
    assert req.body == b""
    assert req.path.startswith("/get-cb?token=abc&")
    query = dict(parse_qsl(urlsplit(req.path).query, keep_blank_values=True))
    assert query["token"] == "abc"
    assert query["CallSid"] == call.sid
    assert query["CallStatus"] == "canceled"
    assert query["AccountSid"] == ROOT_ACCOUNT_SID
    # For GET, Twilio signs the full URL (parameters included) with no body parameters.
    assert RequestValidator(ROOT_AUTH_TOKEN).validate(req.url, {}, req.signature)
    assert not RequestValidator("0" * 32).validate(req.url, {}, req.signature)


def test_subaccount_callback_signed_with_its_token(make_subaccount, receiver):
    sub, sub_client = make_subaccount()
    sub_client.incoming_phone_numbers.create(phone_number="+15005550008")
    url = receiver.url("/sub-cb")
    call = canceled_call(sub_client, "+15005550008", status_callback=url)
    req = only_callback(receiver, "/sub-cb")
    assert req.form["CallSid"] == call.sid
    assert req.form["AccountSid"] == sub.sid
    assert RequestValidator(sub.auth_token).validate(url, req.form, req.signature)
    assert not RequestValidator(ROOT_AUTH_TOKEN).validate(url, req.form, req.signature)


def test_each_call_gets_its_own_callback(root_client, from_number, receiver):
    calls = [
        canceled_call(root_client, from_number, status_callback=receiver.url(f"/many/{i}"))
        for i in range(3)
    ]
    got = receiver.wait_for_count(3, lambda r: r.path.startswith("/many/"), timeout=10)
    time.sleep(QUIET_PERIOD_S)
    got = receiver.matching(lambda r: r.path.startswith("/many/"))
    assert sorted((r.path, r.form["CallSid"]) for r in got) == sorted(
        (f"/many/{i}", c.sid) for i, c in enumerate(calls)
    )


def test_callback_retried_while_receiver_down(callflow_factory):
    server = callflow_factory(env=RETRY_ENV)
    client = server.client()
    client.incoming_phone_numbers.create(phone_number="+15005550006")
    receiver = WebhookReceiver()  # port chosen, nothing listening yet
    try:
        call = canceled_call(client, "+15005550006", status_callback=receiver.url("/late"))
        time.sleep(1.0)  # let a few attempts fail with "connection refused"
        receiver.start()
        req = only_callback(receiver, "/late", timeout=15)
        assert req.form["CallSid"] == call.sid
        assert req.form["CallStatus"] == "canceled"
    finally:
        receiver.stop()


def test_outbox_survives_restart(callflow_factory):
    """Callbacks that could not be delivered before a restart are delivered after it, once each."""
    receiver = WebhookReceiver().start()
    receiver.stop()  # keep the port, refuse connections
    server = callflow_factory(env=RETRY_ENV)
    client = server.client()
    client.incoming_phone_numbers.create(phone_number="+15005550006")
    url = receiver.url("/outbox?run=1")
    try:
        sids = [canceled_call(client, "+15005550006", status_callback=url).sid for _ in range(5)]
        time.sleep(0.5)  # first attempts fail
        server.stop()
        server.start()
        receiver.start()
        where = lambda r: r.path.startswith("/outbox")  # noqa: E731
        got = receiver.wait_for_count(5, where, timeout=20)
        assert len(got) >= 5, f"only {len(got)} of 5 callbacks arrived within 20 s"
        time.sleep(2.0)
        got = receiver.matching(where)
        assert sorted(r.form["CallSid"] for r in got) == sorted(sids)
        for r in got:
            assert r.path == "/outbox?run=1"
            assert r.form["CallStatus"] == "canceled"
            assert RequestValidator(ROOT_AUTH_TOKEN).validate(url, r.form, r.signature)
    finally:
        receiver.stop()
