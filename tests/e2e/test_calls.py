"""Calls: create, validation, list with filters and paging, fetch, update, and isolation.

Until the SIP layer dispatches calls, a created call stays `queued`; these tests rely on that only
where they cancel or update a queued call.
"""

from datetime import datetime
from urllib.parse import parse_qs, urlsplit

import pytest
from twilio.base.exceptions import TwilioRestException

from harness import DEFAULT_FROM, ROOT_ACCOUNT_SID, is_sid

TO = "+15005550001"
TWIML_URL = "http://127.0.0.1:9/twiml"


def create_call(client, from_number, to=TO, **kwargs):
    if "twiml" not in kwargs:
        kwargs.setdefault("url", TWIML_URL)
    return client.calls.create(to=to, from_=from_number, **kwargs)


# -- create ---------------------------------------------------------------------------------


def test_create_call(root_client, from_number):
    resp = root_client.calls.create_with_http_info(to=TO, from_=from_number, url=TWIML_URL)
    assert resp.status_code == 201
    call = resp.data
    assert is_sid(call.sid, "CA")
    assert call.account_sid == ROOT_ACCOUNT_SID
    assert call.status == "queued"
    assert call.direction == "outbound-api"
    assert call.to == TO
    assert call._from == from_number
    assert call.api_version == "2010-04-01"
    assert call.uri == f"/2010-04-01/Accounts/{ROOT_ACCOUNT_SID}/Calls/{call.sid}.json"
    assert isinstance(call.date_created, datetime)
    assert call.start_time is None
    assert call.end_time is None


def test_create_call_with_twiml(root_client, from_number):
    call = root_client.calls.create(
        to=TO, from_=from_number, twiml="<Response><Say>Flood warning</Say></Response>"
    )
    assert call.status == "queued"
    assert root_client.calls(call.sid).fetch().sid == call.sid


def test_create_call_with_all_parameters(root_client, from_number):
    call = root_client.calls.create(
        to=TO,
        from_=from_number,
        url=TWIML_URL,
        method="GET",
        status_callback="http://127.0.0.1:9/status",
        status_callback_method="POST",
        status_callback_event=["initiated", "ringing", "answered", "completed"],
        timeout=30,
        fallback_url="http://127.0.0.1:9/fallback",
        fallback_method="POST",
        send_digits="1234#",
        time_limit=600,
        record=True,
        recording_channels="dual",
        recording_status_callback="http://127.0.0.1:9/recording",
        recording_status_callback_event=["in-progress", "completed", "absent"],
        machine_detection="Enable",
        machine_detection_timeout=10,
        machine_detection_speech_threshold=2000,
        machine_detection_speech_end_threshold=1000,
        machine_detection_silence_timeout=4000,
    )
    assert call.status == "queued"
    assert call.direction == "outbound-api"


def test_call_sids_are_unique(root_client, from_number):
    sids = {create_call(root_client, from_number).sid for _ in range(5)}
    assert len(sids) == 5


def test_from_must_be_own_number(root_client, from_number, make_subaccount):
    with pytest.raises(TwilioRestException) as err:
        root_client.calls.create(to=TO, from_="+15005559999", url=TWIML_URL)
    assert err.value.status == 400
    assert err.value.code == 21210
    # Another account's number does not count either.
    _, sub_client = make_subaccount()
    with pytest.raises(TwilioRestException) as err:
        sub_client.calls.create(to=TO, from_=from_number, url=TWIML_URL)
    assert err.value.status == 400
    assert err.value.code == 21210


VALID = {"To": TO, "From": DEFAULT_FROM, "Url": TWIML_URL}


def without(key, **changes):
    form = {k: v for k, v in VALID.items() if k != key}
    form.update(changes)
    return form


@pytest.mark.parametrize(
    "form,code",
    [
        pytest.param(without("To"), 21201, id="missing-To"),
        pytest.param(without(None, To="hello"), 21211, id="invalid-To"),
        pytest.param(without("From"), 21213, id="missing-From"),
        pytest.param(without("Url"), 21205, id="no-Url-or-Twiml"),
        pytest.param(without(None, Url="notaurl"), 21205, id="Url-notaurl"),
        pytest.param(without(None, Url="ftp://x"), 21205, id="Url-ftp"),
        pytest.param(without(None, Method="PUT"), 20001, id="Method-PUT"),
        pytest.param(without(None, Timeout="soon"), 20001, id="Timeout-not-integer"),
        pytest.param(without(None, MachineDetectionTimeout="2"), 20001, id="AMD-Timeout-below-3"),
        pytest.param(
            without(None, MachineDetectionSpeechThreshold="long"), 20001, id="AMD-SpeechThreshold-not-integer"
        ),
        pytest.param(
            without(None, MachineDetectionSilenceTimeout="100"), 20001, id="AMD-SilenceTimeout-below-2000"
        ),
        pytest.param(without(None, RecordingChannels="stereo"), 20001, id="RecordingChannels-stereo"),
        pytest.param(
            without(None, RecordingStatusCallback="http://127.0.0.1:9/r", RecordingStatusCallbackMethod="PUT"),
            20001,
            id="RecordingStatusCallbackMethod-PUT",
        ),
    ],
)
def test_create_call_validation(callflow, from_number, form, code):
    resp = callflow.request("POST", callflow.api_url("Calls.json"), data=form)
    assert resp.status_code == 400, resp.text
    body = resp.json()
    assert body["code"] == code
    assert body["status"] == 400
    assert isinstance(body["message"], str) and body["message"]
    assert "more_info" in body
    # Nothing was created.
    listed = callflow.request("GET", callflow.api_url("Calls.json")).json()
    assert listed["calls"] == []


def test_create_call_validation_through_library(root_client, from_number):
    with pytest.raises(TwilioRestException) as err:
        root_client.calls.create(to="hello", from_=from_number, url=TWIML_URL)
    assert (err.value.status, err.value.code) == (400, 21211)


# -- list -----------------------------------------------------------------------------------


def test_list_newest_first_and_follows_pages(root_client, from_number):
    created = [create_call(root_client, from_number).sid for _ in range(7)]
    listed = [c.sid for c in root_client.calls.list(page_size=3)]
    assert listed == list(reversed(created))


def test_page_objects(root_client, from_number):
    created = [create_call(root_client, from_number).sid for _ in range(7)]
    first = root_client.calls.page(page_size=3)
    second = first.next_page()
    third = second.next_page()
    assert first.next_page_url is not None
    assert third.next_page_url is None
    pages = [[c.sid for c in page] for page in (first, second, third)]  # a Page iterates once
    assert [len(p) for p in pages] == [3, 3, 1]
    assert [sid for p in pages for sid in p] == list(reversed(created))


def test_paging_envelope(callflow, root_client, from_number):
    for _ in range(7):
        create_call(root_client, from_number)
    base = f"/2010-04-01/Accounts/{ROOT_ACCOUNT_SID}/Calls.json"
    resp = callflow.request("GET", base, params={"PageSize": 3})
    assert resp.status_code == 200
    body = resp.json()
    assert len(body["calls"]) == 3
    assert body["page"] == 0
    assert body["page_size"] == 3
    assert body["previous_page_uri"] is None
    assert body["uri"].startswith(base)
    assert body["first_page_uri"].startswith(base)
    next_uri = body["next_page_uri"]
    assert next_uri.startswith(base)
    query = parse_qs(urlsplit(next_uri).query)
    assert query["Page"] == ["1"]
    assert query["PageSize"] == ["3"]
    assert query["PageToken"][0]

    page1 = callflow.request("GET", next_uri).json()
    assert page1["page"] == 1
    assert page1["previous_page_uri"] is not None
    assert not {c["sid"] for c in page1["calls"]} & {c["sid"] for c in body["calls"]}


def test_page_size_default_and_max(callflow, root_client, from_number):
    for _ in range(3):
        create_call(root_client, from_number)
    body = callflow.request("GET", callflow.api_url("Calls.json")).json()
    assert body["page_size"] == 50
    assert len(body["calls"]) == 3
    assert body["next_page_uri"] is None
    body = callflow.request("GET", callflow.api_url("Calls.json"), params={"PageSize": 1000}).json()
    assert body["page_size"] == 1000


def test_page_size_over_max_is_not_honoured(callflow):
    resp = callflow.request("GET", callflow.api_url("Calls.json"), params={"PageSize": 5000})
    # Either rejected, or clamped to the maximum.
    if resp.status_code == 200:
        assert resp.json()["page_size"] <= 1000
    else:
        assert resp.status_code == 400


def test_list_filters(root_client, from_number):
    other_from = "+15005550007"
    root_client.incoming_phone_numbers.create(phone_number=other_from)
    a1 = create_call(root_client, from_number, to="+15005550101").sid
    a2 = create_call(root_client, from_number, to="+15005550102").sid
    b1 = create_call(root_client, other_from, to="+15005550101").sid
    root_client.calls(a2).update(status="canceled")

    assert [c.sid for c in root_client.calls.list(to="+15005550101")] == [b1, a1]
    assert [c.sid for c in root_client.calls.list(from_=other_from)] == [b1]
    assert [c.sid for c in root_client.calls.list(status="canceled")] == [a2]
    assert [c.sid for c in root_client.calls.list(status="queued")] == [b1, a1]
    assert [c.sid for c in root_client.calls.list(to="+15005550101", from_=from_number)] == [a1]


def test_filters_survive_paging(root_client, from_number):
    wanted = [create_call(root_client, from_number, to="+15005550201").sid for _ in range(3)]
    for _ in range(2):
        create_call(root_client, from_number, to="+15005550202")
    listed = [c.sid for c in root_client.calls.list(to="+15005550201", page_size=2)]
    assert listed == list(reversed(wanted))


# -- fetch / update -------------------------------------------------------------------------


def test_fetch_call(root_client, from_number):
    created = create_call(root_client, from_number)
    call = root_client.calls(created.sid).fetch()
    assert call.sid == created.sid
    assert call.status == "queued"
    assert call.to == TO
    assert call._from == from_number
    assert call.date_created == created.date_created


def test_update_url_of_queued_call(root_client, from_number):
    created = create_call(root_client, from_number)
    resp = root_client.calls(created.sid).update_with_http_info(
        url="http://127.0.0.1:9/other", method="GET"
    )
    assert resp.status_code == 200
    assert resp.data.sid == created.sid
    assert resp.data.status == "queued"


def test_update_rejects_bad_url(root_client, from_number):
    created = create_call(root_client, from_number)
    with pytest.raises(TwilioRestException) as err:
        root_client.calls(created.sid).update(url="notaurl")
    assert err.value.status == 400


def test_cancel_queued_call(root_client, from_number):
    created = create_call(root_client, from_number)
    updated = root_client.calls(created.sid).update(status="canceled")
    assert updated.status == "canceled"
    assert root_client.calls(created.sid).fetch().status == "canceled"


def test_complete_queued_call_ends_canceled(root_client, from_number):
    created = create_call(root_client, from_number)
    updated = root_client.calls(created.sid).update(status="completed")
    assert updated.status == "canceled"
    assert root_client.calls(created.sid).fetch().status == "canceled"


@pytest.mark.parametrize(
    "change", [{"url": "http://127.0.0.1:9/late"}, {"status": "canceled"}, {"status": "completed"}]
)
def test_update_finished_call(root_client, from_number, change):
    created = create_call(root_client, from_number)
    root_client.calls(created.sid).update(status="canceled")
    with pytest.raises(TwilioRestException) as err:
        root_client.calls(created.sid).update(**change)
    assert err.value.status == 400
    assert err.value.code == 21220
    assert root_client.calls(created.sid).fetch().status == "canceled"


def test_update_invalid_status(root_client, from_number):
    created = create_call(root_client, from_number)
    with pytest.raises(TwilioRestException) as err:
        root_client.calls(created.sid).update(status="ringing")
    assert err.value.status == 400
    assert root_client.calls(created.sid).fetch().status == "queued"


def test_unknown_call(root_client):
    sid = "CA" + "0" * 32
    with pytest.raises(TwilioRestException) as err:
        root_client.calls(sid).fetch()
    assert (err.value.status, err.value.code) == (404, 20404)
    with pytest.raises(TwilioRestException) as err:
        root_client.calls(sid).update(status="canceled")
    assert (err.value.status, err.value.code) == (404, 20404)


def test_subaccount_cannot_see_root_calls(root_client, from_number, make_subaccount):
    created = create_call(root_client, from_number)
    _, sub_client = make_subaccount()
    assert sub_client.calls.list() == []
    with pytest.raises(TwilioRestException) as err:
        sub_client.calls(created.sid).fetch()
    assert err.value.status == 404
    with pytest.raises(TwilioRestException) as err:
        sub_client.calls(created.sid).update(status="canceled")
    assert err.value.status == 404
    assert root_client.calls(created.sid).fetch().status == "queued"


def test_subaccount_calls_are_its_own(root_client, make_subaccount):
    sub, sub_client = make_subaccount()
    sub_client.incoming_phone_numbers.create(phone_number="+15005550008")
    call = sub_client.calls.create(to=TO, from_="+15005550008", url=TWIML_URL)
    assert call.account_sid == sub.sid
    assert [c.sid for c in sub_client.calls.list()] == [call.sid]
    assert root_client.calls.list() == []


def test_calls_survive_restart(callflow, root_client, from_number):
    created = create_call(root_client, from_number)
    canceled = create_call(root_client, from_number)
    root_client.calls(canceled.sid).update(status="canceled")
    callflow.restart()
    client = callflow.client()
    assert client.calls(created.sid).fetch().to == TO
    assert client.calls(canceled.sid).fetch().status == "canceled"
