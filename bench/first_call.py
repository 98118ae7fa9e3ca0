#!/usr/bin/env python3
"""The first call of a fresh server against the ones after it (issue 19, item 6): for each of
--runs fresh servers (a new data dir each, so nothing is compiled or cached yet), bench/probe.py
places one call as soon as the server says it is ready, then --after more, one a second, and this
prints each call's INVITE→200 (the flow fetches its TwiML while the call rings and answers for
its first verb), and what the server's log says the built-in call flow's compile took at start.

    CALLFLOW_BIN=target/release/callflow python3 bench/first_call.py [--runs 3] [--after 3]

Loopback only; every call ends within probe's own timeouts.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from harness import DEFAULT_FROM, CallflowServer, WebhookReceiver, free_port  # noqa: E402

TWIML = b'<?xml version="1.0" encoding="UTF-8"?><Response><Pause length="1"/><Hangup/></Response>'
TRUNK = """[[trunks]]
name = "telco"
host = "127.0.0.1"
port = 5999
inbound_sources = ["127.0.0.1/32"]
"""


def probe(server: CallflowServer, calls: int) -> list:
    """INVITE→200 (ms) of `calls` calls one a second, from probe's JSON summary."""
    with tempfile.TemporaryDirectory() as d:
        out = Path(d) / "calls.csv"
        subprocess.run(
            [sys.executable, str(ROOT / "bench" / "probe.py"), "--target", server.sip_addr,
             "--number", DEFAULT_FROM, "--rate", "1", "--duration", str(calls),
             "--call-timeout", "10", "--hold-timeout", "5", "--csv", str(out)],
            check=False, timeout=120, capture_output=True,
        )
        rows = out.read_text().splitlines()[1:]
        header = out.read_text().splitlines()[0].split(",")
        col = header.index("invite_to_200_ms")
        return [float(r.split(",")[col]) if r.split(",")[col] else None for r in rows]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--after", type=int, default=3)
    args = ap.parse_args()
    app = WebhookReceiver()
    app.body = TWIML
    app.start()
    results = []
    try:
        for run in range(args.runs):
            server = CallflowServer(config_toml=TRUNK)
            server.sip_addr  # noqa: B018 (chosen at construction)
            server.start()
            try:
                server.client().incoming_phone_numbers.create(
                    phone_number=DEFAULT_FROM, voice_url=app.url("/voice"), voice_method="POST"
                )
                first = probe(server, 1)
                after = probe(server, args.after)
                m = re.search(r"ms=(\d+).*built-in call flow ready|built-in call flow ready.*ms=(\d+)", server.log_text())
                compile_ms = int(next(g for g in m.groups() if g)) if m else None
                results.append({"first": first, "after": after, "compile_ms": compile_ms})
                print(f"run {run + 1}: first call INVITE→200 {first} ms; next {after} ms; "
                      f"built-in flow compiled at start in {compile_ms} ms", flush=True)
            finally:
                server.stop()
                server.cleanup()
    finally:
        app.stop()
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
