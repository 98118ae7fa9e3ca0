"""Accounts: the root account, subaccounts, and the wall between accounts."""

from datetime import datetime

import pytest
from twilio.base.exceptions import TwilioRestException

from harness import ROOT_ACCOUNT_SID, ROOT_AUTH_TOKEN, is_sid


def test_fetch_own_account(root_client):
    account = root_client.api.v2010.accounts(ROOT_ACCOUNT_SID).fetch()
    assert account.sid == ROOT_ACCOUNT_SID
    assert account.status == "active"
    assert account.type == "Full"
    assert account.auth_token == ROOT_AUTH_TOKEN
    # The library parses RFC 2822 dates into datetimes and leaves anything else as a string.
    assert isinstance(account.date_created, datetime)
    assert isinstance(account.date_updated, datetime)
    assert account.uri == f"/2010-04-01/Accounts/{ROOT_ACCOUNT_SID}.json"


def test_fetch_own_account_raw_json(callflow):
    resp = callflow.request("GET", f"/2010-04-01/Accounts/{ROOT_ACCOUNT_SID}.json")
    assert resp.status_code == 200
    assert resp.headers["Content-Type"].startswith("application/json")
    body = resp.json()
    for key in ("sid", "friendly_name", "status", "type", "auth_token", "date_created",
                "date_updated", "uri", "subresource_uris"):
        assert key in body, key
    assert body["subresource_uris"]["calls"] == f"/2010-04-01/Accounts/{ROOT_ACCOUNT_SID}/Calls.json"


def test_root_creates_subaccount(root_client, callflow):
    sub = root_client.api.v2010.accounts.create(friendly_name="Flood warnings")
    assert is_sid(sub.sid, "AC")
    assert sub.sid != ROOT_ACCOUNT_SID
    assert sub.friendly_name == "Flood warnings"
    assert sub.status == "active"
    assert sub.owner_account_sid == ROOT_ACCOUNT_SID
    assert sub.auth_token and len(sub.auth_token) == 32
    assert sub.auth_token != ROOT_AUTH_TOKEN
    int(sub.auth_token, 16)

    # Root can fetch it, and sees the same token.
    fetched = root_client.api.v2010.accounts(sub.sid).fetch()
    assert fetched.sid == sub.sid
    assert fetched.friendly_name == "Flood warnings"
    assert fetched.auth_token == sub.auth_token


def test_create_subaccount_answers_201(root_client):
    resp = root_client.api.v2010.accounts.create_with_http_info(friendly_name="x")
    assert resp.status_code == 201


def test_list_accounts_includes_root_and_subaccounts(root_client):
    a = root_client.api.v2010.accounts.create(friendly_name="a")
    b = root_client.api.v2010.accounts.create(friendly_name="b")
    sids = [acc.sid for acc in root_client.api.v2010.accounts.list()]
    assert set(sids) == {ROOT_ACCOUNT_SID, a.sid, b.sid}
    assert len(sids) == 3


def test_list_accounts_filter_friendly_name(root_client):
    root_client.api.v2010.accounts.create(friendly_name="alpha")
    beta = root_client.api.v2010.accounts.create(friendly_name="beta")
    found = root_client.api.v2010.accounts.list(friendly_name="beta")
    assert [acc.sid for acc in found] == [beta.sid]


def test_subaccount_fetches_itself(make_subaccount):
    sub, sub_client = make_subaccount("self")
    me = sub_client.api.v2010.accounts(sub.sid).fetch()
    assert me.sid == sub.sid
    assert me.status == "active"
    assert me.auth_token == sub.auth_token


def test_subaccount_cannot_fetch_root(make_subaccount):
    _, sub_client = make_subaccount()
    with pytest.raises(TwilioRestException) as err:
        sub_client.api.v2010.accounts(ROOT_ACCOUNT_SID).fetch()
    assert err.value.status in (401, 403, 404)


def test_subaccount_cannot_fetch_sibling(make_subaccount):
    _, first_client = make_subaccount("first")
    second, _ = make_subaccount("second")
    with pytest.raises(TwilioRestException) as err:
        first_client.api.v2010.accounts(second.sid).fetch()
    assert err.value.status in (401, 403, 404)


def test_subaccount_list_does_not_show_parent_or_siblings(make_subaccount):
    sub, sub_client = make_subaccount("first")
    make_subaccount("second")
    sids = [acc.sid for acc in sub_client.api.v2010.accounts.list()]
    assert ROOT_ACCOUNT_SID not in sids
    assert sids in ([], [sub.sid])


def test_subaccount_cannot_create_accounts_under_root(make_subaccount, root_client):
    _, sub_client = make_subaccount()
    before = {acc.sid for acc in root_client.api.v2010.accounts.list()}
    try:
        created = sub_client.api.v2010.accounts.create(friendly_name="grandchild")
    except TwilioRestException as exc:
        assert exc.status in (400, 401, 403, 404)
    else:
        # If allowed at all, the new account must not belong to the root directly.
        assert created.owner_account_sid != ROOT_ACCOUNT_SID
    after = {acc.sid for acc in root_client.api.v2010.accounts.list()}
    assert len(after - before) <= 1


def test_update_friendly_name(root_client):
    sub = root_client.api.v2010.accounts.create(friendly_name="before")
    updated = root_client.api.v2010.accounts(sub.sid).update(friendly_name="after")
    assert updated.friendly_name == "after"
    assert root_client.api.v2010.accounts(sub.sid).fetch().friendly_name == "after"


def test_subaccount_updates_own_friendly_name(make_subaccount):
    sub, sub_client = make_subaccount("mine")
    sub_client.api.v2010.accounts(sub.sid).update(friendly_name="renamed")
    assert sub_client.api.v2010.accounts(sub.sid).fetch().friendly_name == "renamed"


def test_fetch_unknown_account(root_client):
    with pytest.raises(TwilioRestException) as err:
        root_client.api.v2010.accounts("AC" + "9" * 32).fetch()
    assert err.value.status in (401, 403, 404)


def test_subaccount_credentials_survive_restart(callflow, root_client):
    sub = root_client.api.v2010.accounts.create(friendly_name="durable")
    callflow.restart()
    me = callflow.client(sub.sid, sub.auth_token).api.v2010.accounts(sub.sid).fetch()
    assert me.friendly_name == "durable"
