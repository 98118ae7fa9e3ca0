"""Shared bytes (issue 17): with `[storage] url = "s3://…"`, uploaded plugins and recordings
live in S3-compatible object storage that every node reaches. Two nodes on one PostgreSQL
database and one S3 server (moto's server mode, from the Python package registry, on loopback):

- a plugin uploaded through node a runs on node b (its API's sandboxed run, and a call b places
  runs it as its flow);
- a recording made on node b is played back through node a, and deleted through it.
"""

from __future__ import annotations

import io
import subprocess
import sys
import wave
from pathlib import Path

import pytest
import requests

from harness import DEFAULT_FROM, free_port, wait_until
from sipp import SippServer
from test_cluster import cluster  # noqa: F401 (a fixture)
from test_plugins import wasm
from test_sip import fetch_until, sipp_dir, trunk_toml  # noqa: F401 (sipp_dir is a fixture)


@pytest.fixture
def s3(tmp_path):
    """The endpoint of an S3 server on loopback with an empty bucket `callflow`."""
    port = free_port()
    server = Path(sys.executable).parent / "moto_server"
    if not server.exists():
        pytest.fail("moto's server is not installed (tests/requirements.txt: moto[server]; tests/run installs it)")
    log = open(tmp_path / "moto.log", "wb")
    proc = subprocess.Popen(
        [str(server), "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True,
    )
    endpoint = f"http://127.0.0.1:{port}"
    try:
        def up():
            try:
                return requests.put(f"{endpoint}/callflow", timeout=2).status_code == 200
            except requests.RequestException:
                return False

        assert wait_until(up, 30, 0.2), (tmp_path / "moto.log").read_text(errors="replace")
        yield endpoint
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def objects(endpoint: str) -> str:
    """The bucket's listing (S3's XML)."""
    return requests.get(f"{endpoint}/callflow", timeout=5).text


def storage_env(endpoint: str) -> dict:
    return {
        "CALLFLOW_STORAGE_URL": "s3://callflow/alerts",
        "CALLFLOW_STORAGE_ENDPOINT": endpoint,
        "AWS_ACCESS_KEY_ID": "test",
        "AWS_SECRET_ACCESS_KEY": "test",
        "AWS_REGION": "us-east-1",
    }


def test_plugins_and_recordings_reach_every_node(cluster, s3, sipp_dir):
    telco = SippServer("uas_answer", calls=1, timeout_s=60, workdir=sipp_dir("telco")).start()
    try:
        a, b = cluster(trunk_toml(telco.port), env=storage_env(s3))
        auth = (a.account_sid, a.auth_token)
        v1 = f"/v1/Accounts/{a.account_sid}"

        # a plugin uploaded through a is in the bucket, and b runs it
        r = requests.post(a.url(f"{v1}/Plugins"), data=wasm("callflow_plugin_hello").read_bytes(), auth=auth, timeout=30)
        assert r.status_code == 201, r.text
        plugin = r.json()
        assert f"alerts/plugins/{plugin['sha256']}.wasm" in objects(s3)
        assert not (a.data_dir / "plugins" / f"{plugin['sha256']}.wasm").exists()
        r = requests.post(
            b.url(f"{v1}/Plugins/{plugin['sid']}/Invocations"),
            data={"Config": '{"greeting": "from the bucket"}'}, auth=auth, timeout=30,
        )
        assert r.status_code == 200, r.text
        assert "from the bucket" in r.text

        # bound for the account, it is the flow of a call b places; the call is recorded
        r = requests.post(
            a.url(f"{v1}/PluginBindings"),
            data={"World": "call-flow", "Plugin": plugin["sid"], "Config": '{"greeting": "hello"}'},
            auth=auth, timeout=10,
        )
        assert r.status_code == 201, r.text
        b.client().incoming_phone_numbers.create(phone_number=DEFAULT_FROM, voice_url="http://127.0.0.1:9/")
        call = b.client().calls.create(to="+15558675310", from_=DEFAULT_FROM, url="http://127.0.0.1:9/", record=True)
        ended = fetch_until(a.client(), call.sid, ("completed", "failed", "busy", "no-answer"), timeout=30)
        assert ended.status == "completed", ended.status
    finally:
        telco.stop()
    events = a.request("GET", f"{v1}/Calls/{call.sid}/Events").json()["events"]
    assert any("greeted +15558675310" in str(e) for e in events), events

    # the recording b made is played and deleted through a
    recs = wait_until(lambda: a.client().recordings.list(call_sid=call.sid), 20, 0.2)
    assert recs and len(recs) == 1, recs
    rec = recs[0]
    assert f"alerts/recordings/{rec.sid}.wav" in objects(s3)
    media = f"/2010-04-01/Accounts/{a.account_sid}/Recordings/{rec.sid}"
    wav = requests.get(a.url(f"{media}.wav"), auth=auth, timeout=10)
    assert wav.status_code == 200 and wav.headers["content-type"] == "audio/x-wav", wav.status_code
    with wave.open(io.BytesIO(wav.content)) as w:
        # the plugin says its greeting and hangs up: well under a second of audio
        assert (w.getframerate(), w.getnchannels()) == (8000, 1) and w.getnframes() > 1600
    mp3 = requests.get(a.url(f"{media}.mp3"), auth=auth, timeout=10)
    assert mp3.status_code == 200 and len(mp3.content) > 1000
    assert requests.delete(a.url(f"{media}.json"), auth=auth, timeout=10).status_code == 204
    assert f"recordings/{rec.sid}" not in objects(s3)
    assert requests.get(b.url(f"{media}.wav"), auth=auth, timeout=10).status_code == 404
