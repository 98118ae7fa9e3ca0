#!/usr/bin/env python3
"""The customer's app for bench/flows.sh and bench/sip.sh: a threaded HTTP server on loopback that
answers every POST or GET of /voice with one fixed TwiML document, serves /tone.wav (a tone as an 8 kHz 16-bit
mono WAV, with an ETag and a long max-age so callflow fetches it once and plays it from its
cache), and counts the requests it served by path (GET /stats, as JSON).

    python3 bench/twiml_app.py PORT [--tone-ms 500] [--pause-s 1] [--document TWIML]

The document: <Play>http://127.0.0.1:PORT/tone.wav</Play><Pause length="PAUSE"/><Hangup/>, or
the one `--document` gives (bench/sip.sh: <Response><Pause length="60"/></Response>).
The tone starts at full level at its first sample, so that the first non-silent RTP payload a
caller receives marks the start of the prompt.
"""

from __future__ import annotations

import argparse
import http.server
import io
import json
import math
import struct
import threading
import wave

RATE = 8000


def tone_wav(ms: int, hz: float = 1000.0) -> bytes:
    n = RATE * ms // 1000
    # sin(2*pi*1000*t + pi/2): the first sample is the peak, never near zero
    pcm = b"".join(
        struct.pack("<h", int(12000 * math.sin(2 * math.pi * hz * i / RATE + math.pi / 2)))
        for i in range(n)
    )
    buf = io.BytesIO()
    with wave.open(buf, "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(RATE)
        w.writeframes(pcm)
    return buf.getvalue()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("port", type=int)
    ap.add_argument("--tone-ms", type=int, default=500)
    ap.add_argument("--pause-s", type=int, default=1)
    ap.add_argument("--document", help="answer /voice with this TwiML instead")
    args = ap.parse_args()

    wav = tone_wav(args.tone_ms)
    etag = '"tone-%d"' % args.tone_ms
    doc = (
        args.document
        or '<?xml version="1.0" encoding="UTF-8"?><Response>'
        f"<Play>http://127.0.0.1:{args.port}/tone.wav</Play>"
        f'<Pause length="{args.pause_s}"/><Hangup/></Response>'
    ).encode()
    counts: dict[str, int] = {}
    lock = threading.Lock()

    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # http.server's send_response/end_headers write the head, then the body separately: with
        # Nagle's algorithm on, the body waits for the client's delayed ACK of the head (40 ms
        # on Linux), which showed as a 44 ms INVITE->200 on most calls. So: no Nagle, and each
        # response in one write.
        disable_nagle_algorithm = True

        def reply(self, code: int, ctype: str, body: bytes, headers: dict[str, str] | None = None) -> None:
            fields = {"Content-Type": ctype, "Content-Length": str(len(body)), **(headers or {})}
            head = f"HTTP/1.1 {code} {self.responses[code][0]}\r\n" + "".join(
                f"{k}: {v}\r\n" for k, v in fields.items()
            )
            self.wfile.write(head.encode() + b"\r\n" + body)

        def answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(min(length, 1 << 20))
            path = self.path.split("?", 1)[0]
            with lock:
                counts[path] = counts.get(path, 0) + 1
            if path == "/voice":
                self.reply(200, "text/xml", doc)
            elif path == "/tone.wav":
                if self.headers.get("If-None-Match") == etag:
                    self.reply(304, "audio/wav", b"", {"ETag": etag, "Cache-Control": "max-age=3600"})
                else:
                    self.reply(200, "audio/wav", wav, {"ETag": etag, "Cache-Control": "max-age=3600"})
            elif path == "/stats":
                with lock:
                    body = json.dumps(counts, sort_keys=True).encode()
                self.reply(200, "application/json", body)
            else:
                self.reply(404, "text/plain", b"not found\n")

        do_GET = do_POST = answer

        def log_message(self, *args) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", args.port), Handler)
    server.daemon_threads = True
    server.serve_forever()


if __name__ == "__main__":
    main()
