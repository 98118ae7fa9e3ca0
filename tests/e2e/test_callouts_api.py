"""The callouts API and `callflow callouts` against the real binary, without SIP: create with
contacts, show, list, pause/resume/stop, watch, export, and the API's answers to bad uploads and
refused status changes. The server has no trunk, so attempts stay queued; call outcomes are the
SIPp suite's business (test_callouts.py)."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import time

import requests

from harness import DEFAULT_FROM, ROOT_ACCOUNT_SID, ROOT_AUTH_TOKEN, free_port

CLI_TIMEOUT_S = 60
FLOW_URL = "http://127.0.0.1:9/flow"
HEADER = (
    "participant_sid,phone_number,time_zone,status,outcome,attempts,last_call_sid,"
    "last_call_status,last_call_duration,last_sip_response_code,reason,metadata"
)

CONTACTS = """phone_number,time_zone,name
+254700000001,Africa/Nairobi,Amina
+254 700 000 002,,Baraka
not-a-number,,Nobody
00254700000001,,Amina again
+254700000003,,"Chao, Jr."
"""


def cli(url: str, *args, account=ROOT_ACCOUNT_SID, token=ROOT_AUTH_TOKEN, binary=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLFLOW_")}
    env.update(CALLFLOW_URL=url, CALLFLOW_ACCOUNT_SID=account, CALLFLOW_AUTH_TOKEN=token)
    return subprocess.run(
        [str(binary), "callouts", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def callouts_url(server, account=ROOT_ACCOUNT_SID) -> str:
    return f"{server.base_url}/v1/Accounts/{account}/Callouts"


def create(server, auth=(ROOT_ACCOUNT_SID, ROOT_AUTH_TOKEN), **params) -> requests.Response:
    form = {"Name": "flood warning", "From": DEFAULT_FROM, "Url": FLOW_URL}
    form.update(params)
    return requests.post(callouts_url(server, auth[0]), data=form, auth=auth, timeout=10)


def test_the_cli_runs_a_callout_from_contacts_to_results(callflow, from_number, tmp_path):
    run = lambda *args: cli(callflow.base_url, *args, binary=callflow.binary)  # noqa: E731
    contacts = tmp_path / "contacts.csv"
    contacts.write_text(CONTACTS)
    made = run(
        "create", "--name", "flood warning", "--from", from_number, "--url", FLOW_URL,
        "--calls-per-second", "2", "--max-concurrent", "5", "--calling-hours", "08:00-20:00",
        "--time-zone", "Africa/Nairobi", "--retry-config", '{"max_attempts": 2}',
        "--priority", "-5", "--param", "Timeout=20", "--contacts", str(contacts),
    )
    assert made.returncode == 0, made.stderr
    lines = made.stdout.splitlines()
    sid = lines[0]
    assert sid.startswith("CO") and len(sid) == 34, made.stdout
    assert "added 3, merged 1, invalid 1, total 3" in made.stdout
    assert "invalid line 4:" in made.stdout and "not-a-number" in made.stdout

    shown = run("show", sid)
    assert shown.returncode == 0, shown.stderr
    assert f"{sid}  draft  flood warning" in shown.stdout
    assert "3 total: 3 pending" in shown.stdout
    as_json = json.loads(run("show", sid, "--json").stdout)
    assert as_json["priority"] == -5
    assert as_json["call"]["timeout"] == 20
    assert as_json["calling_hours"] == {"start": "08:00", "end": "20:00", "time_zone": "Africa/Nairobi"}
    assert as_json["summary"]["total"] == 3
    assert {d["bucket"] for d in as_json["analysis"]["durations"]} >= {"0-9s", "5m+"}

    assert sid in run("list").stdout

    more = tmp_path / "more.json"
    more.write_text('[{"phone": "+254700000004"}, {"phone_number": "+254700000001"}]')
    added = run("add", sid, "--contacts", str(more))
    assert added.returncode == 0, added.stderr
    assert "added 1, merged 1, invalid 0, total 4" in added.stdout

    for command, status in [("start", "running"), ("pause", "paused"), ("resume", "running"), ("stop", "stopped")]:
        res = run(command, sid)
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == f"{sid}  {status}", (command, res.stdout)

    # A stopped callout: watch ends at once, start is refused with the API's message.
    watched = run("watch", sid, "--interval", "0.2")
    assert watched.returncode == 0, watched.stderr
    assert f"{sid} stopped:" in watched.stdout
    refused = run("start", sid)
    assert refused.returncode != 0
    assert "409" in refused.stderr and "stopped" in refused.stderr
    assert "Stack backtrace" not in refused.stderr

    exported = run("export", sid)
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.DictReader(io.StringIO(exported.stdout)))
    assert exported.stdout.splitlines()[0] == HEADER
    assert [r["phone_number"] for r in rows] == ["+254700000001", "+254700000002", "+254700000003", "+254700000004"]
    assert rows[0]["time_zone"] == "Africa/Nairobi"
    assert json.loads(rows[2]["metadata"]) == {"name": "Chao, Jr."}
    assert all(r["participant_sid"].startswith("CP") for r in rows)


def test_cli_errors_are_the_api_messages_and_watch_does_not_spin(callflow, tmp_path):
    run = lambda *args, **kw: cli(callflow.base_url, *args, binary=callflow.binary, **kw)  # noqa: E731
    missing = "CO" + "0" * 32
    for args in (["show", missing], ["start", missing], ["watch", missing], ["export", missing]):
        res = run(*args)
        assert res.returncode != 0, args
        assert "was not found" in res.stderr, (args, res.stderr)
    bad = run("create", "--name", "x", "--from", DEFAULT_FROM, "--url", FLOW_URL)
    assert bad.returncode != 0
    assert "not yet verified" in bad.stderr
    wrong_token = run("list", token="0" * 32)
    assert wrong_token.returncode != 0 and "401" in wrong_token.stderr

    # Nobody listening: a few failed polls, then a clear error.
    started = time.monotonic()
    gone = cli(f"http://127.0.0.1:{free_port()}", "watch", missing, "--interval", "0.1", binary=callflow.binary)
    assert gone.returncode != 0
    assert "polls" in gone.stderr and "failed in a row" in gone.stderr, gone.stderr
    assert time.monotonic() - started < 20


def test_uploads_report_bad_rows_and_merge_duplicates(callflow, from_number):
    r = create(callflow)
    assert r.status_code == 201, r.text
    sid = r.json()["sid"]
    assert r.json()["status"] == "draft"
    url = f"{callouts_url(callflow)}/{sid}/Participants"
    auth = (ROOT_ACCOUNT_SID, ROOT_AUTH_TOKEN)
    up = requests.post(url, data=CONTACTS.encode(), headers={"Content-Type": "text/csv"}, auth=auth, timeout=10)
    assert up.status_code == 201, up.text
    body = up.json()
    assert (body["added"], body["merged"], body["invalid_count"], body["total"]) == (3, 1, 1, 3)
    assert body["invalid"][0]["line"] == 4
    assert "not-a-number" in body["invalid"][0]["error"]

    again = requests.post(
        url,
        json=[{"phone_number": "+254700000002", "metadata": {"ward": "7"}}, {"phone": "12"}],
        auth=auth,
        timeout=10,
    )
    assert again.status_code == 200, again.text  # nothing new: only a merge
    assert (again.json()["added"], again.json()["merged"]) == (0, 1)
    assert again.json()["invalid"] == [{"index": 1, "error": '"12" is not an international phone number (a country code and number, 6 to 15 digits)'}]

    listed = requests.get(url, params={"PhoneNumber": "+254700000002"}, auth=auth, timeout=10).json()
    assert [p["metadata"] for p in listed["participants"]] == [{"ward": "7"}]
    participant = listed["participants"][0]
    fetched = requests.get(f"{url}/{participant['sid']}", auth=auth, timeout=10).json()
    assert fetched["phone_number"] == "+254700000002" and fetched["attempts"] == []

    unsupported = requests.post(url, data=b"+254700000009", headers={"Content-Type": "text/plain"}, auth=auth, timeout=10)
    assert unsupported.status_code == 415


def test_status_changes_and_the_409_on_starting_a_stopped_callout(callflow, from_number, make_subaccount):
    r = create(callflow, CallingHours='{"start": "08:00", "end": "20:00", "days": ["mon", "fri"]}', TimeZone="Africa/Nairobi")
    assert r.status_code == 201, r.text
    sid = r.json()["sid"]
    url = f"{callouts_url(callflow)}/{sid}"
    auth = (ROOT_ACCOUNT_SID, ROOT_AUTH_TOKEN)
    set_status = lambda s: requests.post(url, data={"Status": s}, auth=auth, timeout=10)  # noqa: E731
    assert set_status("paused").status_code == 409
    assert set_status("running").json()["status"] == "running"
    assert set_status("stopped").json()["status"] == "stopped"
    refused = set_status("running")
    assert refused.status_code == 409
    assert refused.json()["code"] == 20409
    assert "stopped" in refused.json()["message"]
    no_more = requests.post(
        f"{url}/Participants", data=b"phone\n+254700000001\n", headers={"Content-Type": "text/csv"}, auth=auth, timeout=10
    )
    assert no_more.status_code == 409

    bad = create(callflow, RetryConfig='{"retry_statuses": ["canceled"]}')
    assert bad.status_code == 400 and "RetryConfig" in bad.json()["message"]

    # Another account's callout looks missing, through its own path or the owner's.
    sub, _ = make_subaccount()
    sub_auth = (sub.sid, sub.auth_token)
    assert requests.get(f"{callouts_url(callflow, sub.sid)}/{sid}", auth=sub_auth, timeout=10).status_code == 404
    assert requests.get(url, auth=sub_auth, timeout=10).status_code == 404
    results = requests.get(f"{url}/Results.csv", auth=auth, timeout=10)
    assert results.status_code == 200
    assert results.headers["content-type"].startswith("text/csv")
    assert results.text.splitlines() == [HEADER]
