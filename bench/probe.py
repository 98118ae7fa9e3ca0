#!/usr/bin/env python3
"""A minimal SIP caller (UAC over UDP, loopback) that times what SIPp cannot: for each call, the
INVITE, the 180, the 200, the first RTP packet and the first RTP packet carrying audio (a payload
that is not all µ-law silence), then the call's end. Used by bench/flows.sh next to SIPp's load.

    python3 bench/probe.py --target 127.0.0.1:5060 --number +15005550006 --rate 2 --duration 30 \
        [--call-timeout 20] [--hold-timeout 10] [--csv calls.csv] [--json summary.json]

Each call has its own SIP and RTP sockets on 127.0.0.1. The INVITE offers PCMU (and
telephone-event) at the RTP socket; 1xx are noted, the 200 is ACKed (at its Contact; again for
every retransmitted 200), a final error is ACKed and counted. The probe sends no RTP. It then
waits for the far end's BYE (a flow that ends with <Hangup/>) and answers 200; if none comes
within --hold-timeout s of the 200, it sends its own BYE and waits for the 200 to it. Every
request is retransmitted on T1 = 500 ms doubling (the INVITE until a provisional response),
and every call ends after --call-timeout s whatever happened.

Receive times are the kernel's (SO_TIMESTAMPNS), so the probe's own scheduling delay on a busy
machine does not count; the INVITE's time is read just before it is sent. All times are
CLOCK_REALTIME on one machine. Prints a summary (percentiles by nearest rank) and exits 0 only if
every call was answered, heard audio and ended.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import selectors
import socket
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Optional

# Linux values (asm-generic/socket.h); Python's socket module does not export them.
SO_TIMESTAMPNS = 35
SCM_TIMESTAMPNS = SO_TIMESTAMPNS
T1_S = 0.5
# µ-law codes for 0 and -0: a payload made only of these is silence.
ULAW_SILENCE = (0xFF, 0x7F)
MAX_DATAGRAM = 65535

COMPACT = {"via": "v", "from": "f", "to": "t", "call-id": "i", "contact": "m", "content-length": "l"}


def now_ns() -> int:
    return time.time_ns()


def rand_hex(n: int) -> str:
    return os.urandom(n).hex()


class Message:
    """A parsed SIP message: first line, headers (name lowercased, in order), body."""

    def __init__(self, data: bytes):
        head, _, self.body = data.partition(b"\r\n\r\n")
        lines = head.decode("utf-8", "replace").split("\r\n")
        self.first = lines[0]
        self.headers: list[tuple[str, str]] = []
        for line in lines[1:]:
            if line[:1] in (" ", "\t") and self.headers:  # folded line
                k, v = self.headers[-1]
                self.headers[-1] = (k, v + " " + line.strip())
                continue
            k, _, v = line.partition(":")
            self.headers.append((k.strip().lower(), v.strip()))
        parts = self.first.split(" ", 2)
        self.is_response = parts[0].startswith("SIP/")
        self.status = int(parts[1]) if self.is_response and len(parts) > 1 and parts[1].isdigit() else 0
        self.method = "" if self.is_response else parts[0]

    def all(self, name: str) -> list[str]:
        names = {name, COMPACT.get(name, name)}
        return [v for k, v in self.headers if k in names]

    def get(self, name: str) -> str:
        vals = self.all(name)
        return vals[0] if vals else ""

    def cseq(self) -> tuple[int, str]:
        num, _, method = self.get("cseq").partition(" ")
        return (int(num) if num.isdigit() else -1, method.strip().upper())


def tag_of(header: str) -> str:
    m = re.search(r";\s*tag=([^;>\s]+)", header)
    return m.group(1) if m else ""


def uri_of(header: str) -> str:
    m = re.search(r"<([^>]+)>", header)
    return m.group(1) if m else header.split(";")[0].strip()


def host_port(uri: str, default: tuple[str, int]) -> tuple[str, int]:
    m = re.match(r"sips?:(?:[^@]*@)?(\[[^\]]+\]|[^:;>]+)(?::(\d+))?", uri)
    if not m:
        return default
    return (m.group(1).strip("[]"), int(m.group(2) or 5060))


def recv_ts(sock: socket.socket) -> tuple[bytes, int]:
    """One datagram and its kernel receive time (ns), else the time read now."""
    data, anc, _, _ = sock.recvmsg(MAX_DATAGRAM, socket.CMSG_SPACE(16))
    for level, kind, raw in anc:
        if level == socket.SOL_SOCKET and kind == SCM_TIMESTAMPNS and len(raw) >= 16:
            sec, nsec = struct.unpack("qq", raw[:16])
            return data, sec * 1_000_000_000 + nsec
    return data, now_ns()


def udp_socket() -> socket.socket:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)
    s.bind(("127.0.0.1", 0))
    s.setblocking(False)
    return s


@dataclass
class Call:
    index: int
    target: tuple[str, int]
    number: str
    sip: socket.socket = field(default_factory=udp_socket)
    rtp: socket.socket = field(default_factory=udp_socket)
    call_id: str = field(default_factory=lambda: rand_hex(12) + "@probe")
    from_tag: str = field(default_factory=lambda: rand_hex(6))
    branch: str = field(default_factory=lambda: "z9hG4bK" + rand_hex(8))
    state: str = "new"  # new, calling, proceeding, confirmed, bye-sent, done
    result: str = ""  # ok, failed, timeout, no-audio
    note: str = ""
    code: int = 0
    to_header: str = ""
    remote: Optional[tuple[str, int]] = None  # where in-dialog requests go (the 200's Contact)
    remote_uri: str = ""
    t_invite: int = 0
    t_provisional: int = 0
    t_ringing: int = 0
    t_answer: int = 0
    t_rtp: int = 0
    t_audio: int = 0
    t_end: int = 0
    ended_by: str = ""
    rtp_packets: int = 0
    audio_packets: int = 0
    early_rtp: int = 0  # RTP before the 200 reached us
    invite_retrans: int = 0
    pending: Optional[bytes] = None  # the request being retransmitted
    pending_to: Optional[tuple[str, int]] = None
    retrans_at: float = 0.0
    retrans_every: float = T1_S
    deadline: float = 0.0
    hold_until: float = 0.0
    done_at: float = 0.0

    # ---- messages -----------------------------------------------------------------------------
    def local(self) -> str:
        return "%s:%d" % self.sip.getsockname()

    def invite(self) -> bytes:
        rtp_port = self.rtp.getsockname()[1]
        sdp = (
            "v=0\r\n"
            f"o=probe {self.index + 1} 1 IN IP4 127.0.0.1\r\n"
            "s=-\r\n"
            "c=IN IP4 127.0.0.1\r\n"
            "t=0 0\r\n"
            f"m=audio {rtp_port} RTP/AVP 0 101\r\n"
            "a=rtpmap:0 PCMU/8000\r\n"
            "a=rtpmap:101 telephone-event/8000\r\n"
            "a=fmtp:101 0-15\r\n"
            "a=ptime:20\r\n"
            "a=sendrecv\r\n"
        ).encode()
        host, port = self.target
        head = (
            f"INVITE sip:{self.number}@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.local()};branch={self.branch};rport\r\n"
            f"From: <sip:+15551110001@127.0.0.1>;tag={self.from_tag}\r\n"
            f"To: <sip:{self.number}@{host}:{port}>\r\n"
            f"Call-ID: {self.call_id}\r\n"
            "CSeq: 1 INVITE\r\n"
            f"Contact: <sip:probe@{self.local()}>\r\n"
            "Max-Forwards: 70\r\n"
            "User-Agent: callflow bench probe\r\n"
            "Content-Type: application/sdp\r\n"
            f"Content-Length: {len(sdp)}\r\n\r\n"
        )
        return head.encode() + sdp

    def ack(self, branch: str, uri: str) -> bytes:
        return (
            f"ACK {uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.local()};branch={branch};rport\r\n"
            f"From: <sip:+15551110001@127.0.0.1>;tag={self.from_tag}\r\n"
            f"To: {self.to_header}\r\n"
            f"Call-ID: {self.call_id}\r\n"
            "CSeq: 1 ACK\r\n"
            "Max-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    def bye(self) -> bytes:
        return (
            f"BYE {self.remote_uri} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {self.local()};branch=z9hG4bK{rand_hex(8)};rport\r\n"
            f"From: <sip:+15551110001@127.0.0.1>;tag={self.from_tag}\r\n"
            f"To: {self.to_header}\r\n"
            f"Call-ID: {self.call_id}\r\n"
            "CSeq: 2 BYE\r\n"
            "Max-Forwards: 70\r\n"
            "Content-Length: 0\r\n\r\n"
        ).encode()

    @staticmethod
    def reply(req: Message, code: int, reason: str) -> bytes:
        lines = [f"SIP/2.0 {code} {reason}"]
        lines += [f"Via: {v}" for v in req.all("via")]
        lines += [f"From: {req.get('from')}", f"To: {req.get('to')}", f"Call-ID: {req.get('call-id')}"]
        lines += [f"CSeq: {req.get('cseq')}", "Content-Length: 0", "", ""]
        return "\r\n".join(lines).encode()

    # ---- driving ------------------------------------------------------------------------------
    def send(self, data: bytes, to: tuple[str, int]) -> None:
        try:
            self.sip.sendto(data, to)
        except OSError as e:  # a full buffer or a refused port: the retransmission covers it
            self.note = self.note or f"send: {e}"

    def send_request(self, data: bytes, to: tuple[str, int], mono: float) -> None:
        self.pending, self.pending_to = data, to
        self.retrans_every, self.retrans_at = T1_S, mono + T1_S
        self.send(data, to)

    def start(self, mono: float, call_timeout: float) -> None:
        self.deadline = mono + call_timeout
        self.state = "calling"
        data = self.invite()
        self.t_invite = now_ns()
        self.send_request(data, self.target, mono)

    def finish(self, result: str, mono: float, note: str = "") -> None:
        if self.state == "done":
            return
        self.state, self.result = "done", result
        self.pending = None
        if note:
            self.note = note
        self.t_end = self.t_end or now_ns()
        # Keep the sockets a moment for retransmissions of the last message, then close.
        self.done_at = mono + 1.0

    def on_sip(self, data: bytes, ts: int, mono: float, hold_timeout: float) -> None:
        try:
            msg = Message(data)
        except Exception as e:  # a probe, not a parser: note what it could not read
            self.note = f"unparsable message: {e}"
            return
        if msg.is_response:
            self.on_response(msg, ts, mono, hold_timeout)
        else:
            self.on_request(msg, ts, mono)

    def on_response(self, msg: Message, ts: int, mono: float, hold_timeout: float) -> None:
        num, method = msg.cseq()
        if method == "INVITE" and num == 1:
            if msg.status < 200:
                if not self.t_provisional:
                    self.t_provisional = ts
                if msg.status in (180, 183) and not self.t_ringing:
                    self.t_ringing = ts
                if self.state == "calling":
                    self.state = "proceeding"
                    self.pending = None  # an INVITE is not retransmitted after a provisional
                return
            if msg.status < 300:
                self.to_header = msg.get("to")
                contact = uri_of(msg.get("contact")) if msg.get("contact") else ""
                if not self.t_answer:
                    self.t_answer = ts
                    self.remote_uri = contact or f"sip:{self.number}@{self.target[0]}:{self.target[1]}"
                    self.remote = host_port(self.remote_uri, self.target)
                    self.state = "confirmed"
                    self.pending = None
                    self.hold_until = mono + hold_timeout
                # every 2xx (retransmissions too) gets an ACK, a new transaction each time
                if self.remote:
                    self.send(self.ack("z9hG4bK" + rand_hex(8), self.remote_uri), self.remote)
                return
            # a final error: ACK in the INVITE's transaction, to where the INVITE went
            self.to_header = msg.get("to")
            host, port = self.target
            self.send(self.ack(self.branch, f"sip:{self.number}@{host}:{port}"), self.target)
            self.code = msg.status
            self.finish("failed", mono, msg.first)
        elif method == "BYE" and self.state == "bye-sent" and msg.status >= 200:
            self.t_end = ts
            self.finish("ok", mono)

    def on_request(self, msg: Message, ts: int, mono: float) -> None:
        if msg.method == "ACK":
            return
        src = None
        via = msg.get("via")
        m = re.search(r"SIP/2\.0/UDP\s+([^;:\s]+)(?::(\d+))?", via)
        if m:
            src = (m.group(1), int(m.group(2) or 5060))
        to = src or self.remote or self.target
        if msg.method == "BYE":
            self.send(self.reply(msg, 200, "OK"), to)
            if self.state != "done":
                self.t_end = ts
                self.ended_by = "callee"
                self.finish("ok" if self.t_answer else "failed", mono, "" if self.t_answer else "BYE before 200")
        else:
            self.send(self.reply(msg, 501, "Not Implemented"), to)

    def on_rtp(self, data: bytes, ts: int) -> None:
        if len(data) < 12 or data[0] >> 6 != 2:
            return
        cc = data[0] & 0x0F
        pt = data[1] & 0x7F
        payload = data[12 + 4 * cc :]
        self.rtp_packets += 1
        if not self.t_rtp:
            self.t_rtp = ts
        if not self.t_answer:
            self.early_rtp += 1
        if pt == 0 and any(b not in ULAW_SILENCE for b in payload):
            self.audio_packets += 1
            if not self.t_audio:
                self.t_audio = ts

    def on_timer(self, mono: float) -> None:
        if self.state == "done":
            return
        if mono >= self.deadline:
            self.finish("timeout", mono, f"no end within the call timeout (state {self.state})")
            return
        if self.pending is not None and mono >= self.retrans_at:
            if self.state == "calling":
                self.invite_retrans += 1
            self.send(self.pending, self.pending_to or self.target)
            self.retrans_every = min(self.retrans_every * 2, 4.0)
            self.retrans_at = mono + self.retrans_every
        if self.state == "confirmed" and mono >= self.hold_until and self.remote:
            self.state = "bye-sent"
            self.ended_by = "probe"
            self.send_request(self.bye(), self.remote, mono)

    def close(self) -> None:
        self.sip.close()
        self.rtp.close()


def ms(a: int, b: int) -> Optional[float]:
    return (b - a) / 1e6 if a and b else None


def percentile(values: list[float], p: float) -> Optional[float]:
    """Nearest rank: the smallest value with at least p% of the values at or below it."""
    if not values:
        return None
    v = sorted(values)
    rank = max(1, -(-len(v) * p // 100))
    return v[int(rank) - 1]


def summarize(calls: list[Call]) -> dict:
    def series(f) -> list[float]:
        return [x for x in (f(c) for c in calls) if x is not None]

    out: dict = {
        "calls": len(calls),
        "ok": sum(c.result == "ok" and c.t_audio > 0 for c in calls),
        "answered": sum(c.t_answer > 0 for c in calls),
        "failed": sum(c.result == "failed" for c in calls),
        "timeout": sum(c.result == "timeout" for c in calls),
        "no_audio": sum(c.t_answer > 0 and c.t_audio == 0 for c in calls),
        "early_rtp": sum(c.early_rtp > 0 for c in calls),
        "invite_retrans": sum(c.invite_retrans for c in calls),
        "codes": sorted({c.code for c in calls if c.code}),
    }
    metrics = {
        "invite_to_180": series(lambda c: ms(c.t_invite, c.t_ringing)),
        "invite_to_200": series(lambda c: ms(c.t_invite, c.t_answer)),
        "answer_to_rtp": series(lambda c: ms(c.t_answer, c.t_rtp) if c.t_answer else None),
        "answer_to_audio": series(lambda c: ms(c.t_answer, c.t_audio) if c.t_answer else None),
        "answer_to_end": series(lambda c: ms(c.t_answer, c.t_end) if c.ended_by == "callee" else None),
        "audio_packets": series(lambda c: float(c.audio_packets) if c.t_answer else None),
    }
    for name, vals in metrics.items():
        out[name] = {
            "n": len(vals),
            "p50": percentile(vals, 50),
            "p99": percentile(vals, 99),
            "max": max(vals) if vals else None,
        }
    return out


def fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.1f}"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--target", required=True, help="host:port of the SIP server (UDP)")
    ap.add_argument("--number", required=True, help="the called number (Request-URI user)")
    ap.add_argument("--rate", type=float, default=2.0, help="calls per second (default 2)")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds of call starts (default 10)")
    ap.add_argument("--calls", type=int, help="number of calls (default: rate x duration, at least 1)")
    ap.add_argument("--call-timeout", type=float, default=20.0, help="s; any call ends after this")
    ap.add_argument("--hold-timeout", type=float, default=10.0, help="s after the 200 before our own BYE")
    ap.add_argument("--csv", help="write one row per call here")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args()

    host, _, port = args.target.rpartition(":")
    target = (host, int(port))
    if not (0 < args.rate <= 50) or args.duration <= 0 or args.call_timeout <= 0:
        ap.error("--rate must be in (0, 50], --duration and --call-timeout positive")
    total = args.calls if args.calls is not None else max(1, round(args.rate * args.duration))
    if not 1 <= total <= 10000:
        ap.error("between 1 and 10000 calls")

    sel = selectors.DefaultSelector()
    calls: list[Call] = []
    live: list[Call] = []
    t0 = time.monotonic()
    # a hard bound on the whole run, whatever the far end does
    hard_end = t0 + total / args.rate + args.call_timeout + 5
    started = 0
    while True:
        mono = time.monotonic()
        while started < total and mono >= t0 + started / args.rate:
            c = Call(started, target, args.number)
            sel.register(c.sip, selectors.EVENT_READ, (c, "sip"))
            sel.register(c.rtp, selectors.EVENT_READ, (c, "rtp"))
            c.start(mono, args.call_timeout)
            calls.append(c)
            live.append(c)
            started += 1
        for c in live:
            c.on_timer(mono)
        for c in [c for c in live if c.state == "done" and mono >= c.done_at]:
            sel.unregister(c.sip)
            sel.unregister(c.rtp)
            c.close()
            live.remove(c)
        if started == total and not live:
            break
        if mono >= hard_end:
            for c in live:
                c.finish("timeout", mono, "the probe's run ended first")
                sel.unregister(c.sip)
                sel.unregister(c.rtp)
                c.close()
            live.clear()
            break
        wait = 0.05
        if started < total:
            wait = min(wait, max(0.0, t0 + started / args.rate - mono))
        for key, _ in sel.select(wait):
            c, kind = key.data
            sock = key.fileobj
            for _ in range(64):  # drain, bounded
                try:
                    data, ts = recv_ts(sock)
                except (BlockingIOError, InterruptedError):
                    break
                except OSError:
                    break
                if kind == "sip":
                    c.on_sip(data, ts, time.monotonic(), args.hold_timeout)
                else:
                    c.on_rtp(data, ts)
                if sock.fileno() < 0:
                    break

    summary = summarize(calls)
    summary["rate"] = args.rate
    if args.json:
        with open(args.json, "w") as f:
            json.dump(summary, f, indent=1)
    if args.csv:
        with open(args.csv, "w") as f:
            f.write(
                "index,result,code,ended_by,invite_to_180_ms,invite_to_200_ms,answer_to_rtp_ms,"
                "answer_to_audio_ms,answer_to_end_ms,rtp_packets,audio_packets,early_rtp,invite_retrans,note\n"
            )
            for c in calls:
                f.write(
                    ",".join(
                        str(x)
                        for x in (
                            c.index, c.result, c.code, c.ended_by,
                            fmt(ms(c.t_invite, c.t_ringing)), fmt(ms(c.t_invite, c.t_answer)),
                            fmt(ms(c.t_answer, c.t_rtp)), fmt(ms(c.t_answer, c.t_audio)),
                            fmt(ms(c.t_answer, c.t_end)), c.rtp_packets, c.audio_packets,
                            c.early_rtp, c.invite_retrans, '"' + c.note.replace('"', "'") + '"',
                        )
                    )
                    + "\n"
                )
    s = summary
    print(
        f"probe: {s['calls']} calls at {args.rate:g}/s: {s['ok']} ok (answered, heard audio, ended), "
        f"{s['failed']} failed {s['codes'] or ''}, {s['timeout']} timed out, {s['no_audio']} answered without audio"
    )
    for name in ("invite_to_200", "answer_to_rtp", "answer_to_audio", "answer_to_end"):
        m = s[name]
        print(f"probe: {name:16} n={m['n']:<4} p50={fmt(m['p50'])} ms  p99={fmt(m['p99'])} ms  max={fmt(m['max'])} ms")
    return 0 if s["ok"] == s["calls"] else 1


if __name__ == "__main__":
    sys.exit(main())
