"""Plugins through the CLI against the real server: upload, list, bind, and a refused upload."""

import json
import os
import subprocess
from pathlib import Path

import requests

from harness import REPO_ROOT, ROOT_ACCOUNT_SID, ROOT_AUTH_TOKEN

WASM_DIR = REPO_ROOT / "target" / "wasm-plugins" / "wasm32-wasip2" / "release"
CLI_TIMEOUT_S = 60


def cli(server, *args):
    env = dict(os.environ)
    env.update(
        CALLFLOW_URL=server.base_url,
        CALLFLOW_ACCOUNT_SID=ROOT_ACCOUNT_SID,
        CALLFLOW_AUTH_TOKEN=ROOT_AUTH_TOKEN,
    )
    return subprocess.run(
        [str(server.binary), "plugins", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )


def wasm(name: str) -> Path:
    path = WASM_DIR / f"{name}.wasm"
    assert path.is_file(), f"{path} is built by host/runtime's build script (cargo build)"
    return path


def test_upload_bind_and_list_with_the_cli(callflow):
    up = cli(callflow, "upload", str(wasm("callflow_plugin_hello")), "--name", "greeter", "--bind", "--config", '{"greeting":"hi"}')
    assert up.returncode == 0, up.stderr
    sid = up.stdout.split()[0]
    assert sid.startswith("ZP") and "call-flow" in up.stdout
    assert "bound" in up.stdout

    listed = cli(callflow, "list")
    assert listed.returncode == 0, listed.stderr
    assert sid in listed.stdout and "greeter" in listed.stdout

    bindings = requests.get(
        f"{callflow.base_url}/v1/Accounts/{ROOT_ACCOUNT_SID}/PluginBindings",
        auth=(ROOT_ACCOUNT_SID, ROOT_AUTH_TOKEN),
        timeout=10,
    ).json()["bindings"]
    assert [(b["plugin"], b["world"], b["config"]) for b in bindings] == [(sid, "call-flow", {"greeting": "hi"})]


def test_the_cli_runs_an_uploaded_flow_in_the_sandbox(callflow):
    up = cli(callflow, "upload", str(wasm("callflow_example_menu")))
    assert up.returncode == 0, up.stderr
    sid = up.stdout.split()[0]
    config = '{"greeting": "Welcome.", "options": {"1": {"label": "levels", "say": "The river is low."}}}'
    start = cli(callflow, "run", sid, "--config", config)
    assert start.returncode == 0, start.stderr
    step = json.loads(start.stdout)
    assert "Gather" in step["commands"][0], step
    pressed = cli(callflow, "run", sid, "--event", "gathered", "--digits", "1", "--state", step["state"], "--config", config)
    assert pressed.returncode == 0, pressed.stderr
    assert "The river is low." in pressed.stdout


def test_a_plugin_that_imports_the_filesystem_is_refused_with_the_reason(callflow):
    up = cli(callflow, "upload", str(wasm("callflow_test_fs_import")))
    assert up.returncode != 0
    assert "wasi:filesystem" in up.stderr
    assert "Stack backtrace" not in up.stderr
    listed = cli(callflow, "list")
    assert listed.stdout.strip() == ""


def test_cli_without_credentials_says_what_is_missing(callflow):
    env = {k: v for k, v in os.environ.items() if not k.startswith("CALLFLOW_")}
    res = subprocess.run(
        [str(callflow.binary), "plugins", "list", "--url", callflow.base_url],
        env=env,
        capture_output=True,
        text=True,
        timeout=CLI_TIMEOUT_S,
    )
    assert res.returncode != 0
    assert "CALLFLOW_AUTH_TOKEN" in res.stderr
