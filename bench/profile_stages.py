#!/usr/bin/env python3
"""Classifies `perf script -F comm,tid,ip,sym` samples of callflow by stage, and prints each
stage's share of the samples and, given the run's CPU per call in µs, its µs per call.

    profile_stages.py SCRIPT_FILE [CPU_US_PER_CALL]

A sample belongs to a thread-level stage by its thread's name (sqlite's worker threads, the
plugin threads, the media workers, the epoch ticker); a sample of a tokio worker to the first
stage, in the order below, one of whose patterns matches any frame of its stack (so a store
call made by a call leg counts as the store's).
"""
import sys, collections, re
# categories: (name, regex on a frame symbol); the first category whose pattern matches any frame
# (searched in this priority order) wins for the sample
CATS = [
 ("store (sqlite, in its worker threads)", None),   # by thread name
 ("plugins (wasmtime, plugin threads)", None),
 ("media workers", None),
 ("epoch ticker", None),
 ("store client (sqlx futures, channels to the sqlite thread)", r"sqlx_|flume::"),
 ("webhook fetch (reqwest/hyper, signing)", r"reqwest::|hyper::|hyper_util::|callflow_engine::webhook|rustls|h2::"),
 ("plugin submit/await (runtime API on tokio)", r"callflow_runtime::"),
 ("SIP stack (driver, UA, transactions, parse)", r"callflow_sip::|rsip::"),
 ("call legs (driver, leg, admission, dispatch)", r"callflow_engine::telephony|callflow_engine::leg|callflow_engine::live"),
 ("flow session (TwiML commands, logging)", r"callflow_engine::flow|callflow_engine::plugins"),
 ("engine: calls/outbox/events/callouts", r"callflow_engine::"),
 ("API (axum)", r"callflow_api::|axum::"),
 ("media handles (commands, channels)", r"callflow_media::"),
 ("tokio scheduling, wake-ups, timers", r"tokio::"),
]
counts = collections.Counter(); total = 0
comm = None; frames = []
def flush():
    global total
    if comm is None: return
    total += 1
    if comm.startswith("sqlx-sqlite"):
        counts[CATS[0][0]] += 1; return
    if comm.startswith("callflow-plugin"):
        counts[CATS[1][0]] += 1; return
    if comm.startswith("media-"):
        counts[CATS[2][0]] += 1; return
    if comm.startswith("callflow-epoch"):
        counts[CATS[3][0]] += 1; return
    for name, pat in CATS[4:]:
        r = re.compile(pat)
        if any(r.search(f) for f in frames):
            counts[name] += 1; return
    counts["other (" + comm + ")"] += 1
for line in open(sys.argv[1], errors="replace"):
    if not line.strip():
        continue
    if not line.startswith(("\t", " ")):
        flush()
        parts = line.split()
        comm = parts[0]; frames = []
    else:
        p = line.strip().split(None, 1)
        if len(p) == 2: frames.append(p[1])
flush()
per_call_us = float(sys.argv[2]) if len(sys.argv) > 2 else None
print(f"{total} samples")
for name, n in counts.most_common():
    share = n / total
    extra = f"  ~{share*per_call_us:.0f} µs/call" if per_call_us else ""
    print(f"{share*100:5.1f}%  {name}{extra}")
