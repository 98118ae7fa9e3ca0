"""Recordings: empty collections for a fresh account, 404 for unknown recordings."""

import pytest
from twilio.base.exceptions import TwilioRestException

TWIML_URL = "http://127.0.0.1:9/twiml"


def test_account_recordings_empty(root_client):
    assert root_client.recordings.list() == []


def test_account_recordings_envelope(callflow):
    resp = callflow.request("GET", callflow.api_url("Recordings.json"))
    assert resp.status_code == 200
    body = resp.json()
    assert body["recordings"] == []
    assert body["page"] == 0
    assert body["next_page_uri"] is None


def test_call_recordings_empty(root_client, from_number):
    call = root_client.calls.create(to="+15005550001", from_=from_number, url=TWIML_URL)
    assert root_client.calls(call.sid).recordings.list() == []


def test_unknown_recording(root_client):
    with pytest.raises(TwilioRestException) as err:
        root_client.recordings("RE" + "0" * 32).fetch()
    assert (err.value.status, err.value.code) == (404, 20404)


def test_unknown_call_recording(root_client, from_number):
    call = root_client.calls.create(to="+15005550001", from_=from_number, url=TWIML_URL)
    with pytest.raises(TwilioRestException) as err:
        root_client.calls(call.sid).recordings("RE" + "0" * 32).fetch()
    assert err.value.status == 404
