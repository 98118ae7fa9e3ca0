#!/usr/bin/env python3
"""What long recordings cost in memory (issue 19, item 2): --calls SIPp calls (silent callers
that hold until the BYE) each run a <Record> that never stops on silence, for --seconds; the
server's resident memory (VmRSS) is read once every call records and again at the end, and the
growth is printed per call and per minute of recording. A recorder that held its audio in RAM
grows 16 KB per call per second (0.94 MiB per call-minute); one that writes to the spool does
not grow with the length.

    CALLFLOW_BIN=target/release/callflow python3 bench/recording_memory.py [--calls 50] [--seconds 60]

Loopback only; SIPp is stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "e2e"))

from harness import DEFAULT_FROM, CallflowServer, WebhookReceiver, wait_until  # noqa: E402
from sipp import _SippRun  # noqa: E402

TWIML = (
    b'<Response><Record maxLength="3600" timeout="0" finishOnKey="" playBeep="false" '
    b'trim="do-not-trim"/></Response>'
)
TRUNK = """[[trunks]]
name = "telco"
host = "127.0.0.1"
port = 5999
inbound_sources = ["127.0.0.1/32"]
cps = 200.0
max_channels = 1000
"""


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=50)
    ap.add_argument("--seconds", type=int, default=60)
    args = ap.parse_args()
    app = WebhookReceiver()
    app.body = TWIML
    app.start()
    server = CallflowServer(config_toml=TRUNK)
    server.start()
    caller = None
    try:
        client = server.client()
        client.incoming_phone_numbers.create(
            phone_number=DEFAULT_FROM, voice_url=app.url("/voice"), voice_method="POST"
        )
        caller = _SippRun(
            "uac_answered_wait_bye",
            server.sip_addr,
            local_ip="127.0.0.1",
            port=None,
            calls=args.calls,
            rate=float(args.calls),
            service=DEFAULT_FROM,
            timeout_s=args.seconds + 120,
            workdir=None,
        )
        caller.start()

        def all_recording():
            live = [c for c in client.calls.list(status="in-progress", limit=args.calls + 10)]
            return len(live) >= args.calls

        assert wait_until(all_recording, 60, interval=0.5), "not every call was answered"
        time.sleep(2)
        before = rss_kib(server.proc.pid)
        time.sleep(args.seconds)
        after = rss_kib(server.proc.pid)
        spool = sum(p.stat().st_size for p in (server.data_dir / "spool").glob("*.pcm")) \
            if (server.data_dir / "spool").exists() else 0
        grown = after - before
        per_call_minute = grown / args.calls / (args.seconds / 60)
        print(f"{args.calls} calls recording for {args.seconds} s: RSS {before} -> {after} KiB "
              f"(+{grown} KiB, {per_call_minute:.0f} KiB per call-minute); spool on disk "
              f"{spool // 1024} KiB")
    finally:
        if caller is not None:
            caller.kill(graceful=False)
            caller.close()
        server.stop()
        server.cleanup()
        app.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
