"""IncomingPhoneNumbers: create, list, fetch, update, delete, and validation."""

from datetime import datetime

import pytest
from twilio.base.exceptions import TwilioRestException

from harness import ROOT_ACCOUNT_SID, is_sid

NUMBER = "+15005550006"


def create_full(client, number=NUMBER):
    return client.incoming_phone_numbers.create(
        phone_number=number,
        friendly_name="Hotline",
        voice_url="http://127.0.0.1:9/voice?x=1",
        voice_method="GET",
        voice_fallback_url="http://127.0.0.1:9/fallback",
        status_callback="http://127.0.0.1:9/status",
        status_callback_method="POST",
    )


def test_create_number(root_client):
    pn = create_full(root_client)
    assert is_sid(pn.sid, "PN")
    assert pn.account_sid == ROOT_ACCOUNT_SID
    assert pn.phone_number == NUMBER
    assert pn.friendly_name == "Hotline"
    assert pn.voice_url == "http://127.0.0.1:9/voice?x=1"
    assert pn.voice_method == "GET"
    assert pn.voice_fallback_url == "http://127.0.0.1:9/fallback"
    assert pn.status_callback == "http://127.0.0.1:9/status"
    assert pn.status_callback_method == "POST"
    assert pn.api_version == "2010-04-01"
    assert isinstance(pn.date_created, datetime)
    assert pn.uri == f"/2010-04-01/Accounts/{ROOT_ACCOUNT_SID}/IncomingPhoneNumbers/{pn.sid}.json"


def test_create_number_answers_201_with_defaults(root_client):
    resp = root_client.incoming_phone_numbers.create_with_http_info(phone_number=NUMBER)
    assert resp.status_code == 201
    # Twilio's defaults: POST for the voice and status callback methods.
    assert resp.data.voice_method == "POST"
    assert resp.data.status_callback_method == "POST"


def test_fetch_number(root_client):
    created = create_full(root_client)
    pn = root_client.incoming_phone_numbers(created.sid).fetch()
    assert pn.sid == created.sid
    assert pn.phone_number == NUMBER
    assert pn.voice_url == created.voice_url
    assert pn.voice_method == "GET"


def test_list_numbers_and_filter(root_client):
    a = create_full(root_client, "+15005550006")
    b = create_full(root_client, "+15005550007")
    all_sids = {pn.sid for pn in root_client.incoming_phone_numbers.list()}
    assert all_sids == {a.sid, b.sid}
    only_b = root_client.incoming_phone_numbers.list(phone_number="+15005550007")
    assert [pn.sid for pn in only_b] == [b.sid]


def test_list_envelope(callflow, root_client):
    create_full(root_client)
    resp = callflow.request("GET", callflow.api_url("IncomingPhoneNumbers.json"))
    assert resp.status_code == 200
    body = resp.json()
    assert len(body["incoming_phone_numbers"]) == 1
    assert body["page"] == 0
    assert body["page_size"] == 50
    assert body["next_page_uri"] is None
    assert body["first_page_uri"].startswith(
        f"/2010-04-01/Accounts/{ROOT_ACCOUNT_SID}/IncomingPhoneNumbers.json"
    )


def test_update_number(root_client):
    created = create_full(root_client)
    updated = root_client.incoming_phone_numbers(created.sid).update(
        voice_url="http://127.0.0.1:9/new", voice_method="POST", friendly_name="Renamed"
    )
    assert updated.voice_url == "http://127.0.0.1:9/new"
    assert updated.voice_method == "POST"
    assert updated.friendly_name == "Renamed"
    fetched = root_client.incoming_phone_numbers(created.sid).fetch()
    assert fetched.voice_url == "http://127.0.0.1:9/new"
    assert fetched.friendly_name == "Renamed"
    # Untouched fields keep their values.
    assert fetched.voice_fallback_url == "http://127.0.0.1:9/fallback"
    assert fetched.phone_number == NUMBER


def test_delete_number(root_client):
    created = create_full(root_client)
    resp = root_client.incoming_phone_numbers(created.sid).delete_with_http_info()
    assert resp.status_code == 204
    with pytest.raises(TwilioRestException) as err:
        root_client.incoming_phone_numbers(created.sid).fetch()
    assert err.value.status == 404
    assert err.value.code == 20404
    assert root_client.incoming_phone_numbers.list() == []


def test_deleted_number_can_be_created_again(root_client):
    created = create_full(root_client)
    root_client.incoming_phone_numbers(created.sid).delete()
    again = create_full(root_client)
    assert again.sid != created.sid


def test_duplicate_number_rejected(root_client):
    create_full(root_client)
    with pytest.raises(TwilioRestException) as err:
        create_full(root_client)
    assert err.value.status == 400
    assert len(root_client.incoming_phone_numbers.list()) == 1


@pytest.mark.parametrize("bad", ["abc", "not a number"])
def test_invalid_number_rejected(root_client, bad):
    with pytest.raises(TwilioRestException) as err:
        root_client.incoming_phone_numbers.create(phone_number=bad)
    assert err.value.status == 400
    assert err.value.code == 21421


def test_missing_number_rejected(callflow):
    resp = callflow.request(
        "POST", callflow.api_url("IncomingPhoneNumbers.json"), data={"FriendlyName": "x"}
    )
    assert resp.status_code == 400
    assert resp.json()["status"] == 400


def test_unknown_number_is_404(root_client):
    with pytest.raises(TwilioRestException) as err:
        root_client.incoming_phone_numbers("PN" + "0" * 32).fetch()
    assert err.value.status == 404
    assert err.value.code == 20404


def test_subaccount_cannot_see_root_number(root_client, make_subaccount):
    created = create_full(root_client)
    _, sub_client = make_subaccount()
    assert sub_client.incoming_phone_numbers.list() == []
    with pytest.raises(TwilioRestException) as err:
        sub_client.incoming_phone_numbers(created.sid).fetch()
    assert err.value.status == 404
    with pytest.raises(TwilioRestException) as err:
        sub_client.incoming_phone_numbers(created.sid).delete()
    assert err.value.status == 404
    assert root_client.incoming_phone_numbers(created.sid).fetch().sid == created.sid
