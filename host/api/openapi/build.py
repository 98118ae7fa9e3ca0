#!/usr/bin/env python3
"""Builds callflow's /openapi.json from two sources, each the one description of its part:

- the Twilio-compatible 2010-04-01 API, derived from Twilio's own OpenAPI description (MIT
  licensed): the paths and operations callflow serves are kept, the rest and the schemas nothing
  references are dropped, and every operation also names callflow's error body;
- callflow's own API, written by hand in callflow.json beside this script: /v1 (plugins, plugin
  bindings, plugin invocations, a call's events, callouts, their participants and results),
  /health, /metrics, /openapi.json and the recording media (.wav, .mp3) Twilio's description
  leaves out.

Paths: the 2010-04-01 API is listed in Twilio's `.json` form and /v1 without a suffix, as each
resource's `uri` spells it. The router answers both forms of every resource: collections are
registered with and without `.json`, and a single resource's SID parameter drops a `.json` suffix.
`Results` and `Results.csv` are both listed. The test that compares the document with the router
(host/api/tests/all/openapi.rs) reads a route as its segments, with each parameter (and any
suffix it carries) as one placeholder and a final `.json` dropped.

Run from the repository root:
  python3 host/api/openapi/build.py ../shared/reference/twilio_api_v2010.subset.json \
      > host/api/openapi/openapi.json
"""
import json
import os
import sys

SERVED = {
    "/2010-04-01/Accounts.json": ["get", "post"],
    "/2010-04-01/Accounts/{Sid}.json": ["get", "post"],
    "/2010-04-01/Accounts/{AccountSid}/Calls.json": ["get", "post"],
    "/2010-04-01/Accounts/{AccountSid}/Calls/{Sid}.json": ["get", "post"],
    "/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}/Recordings.json": ["get"],
    "/2010-04-01/Accounts/{AccountSid}/Calls/{CallSid}/Recordings/{Sid}.json": ["get", "delete"],
    "/2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers.json": ["get", "post"],
    "/2010-04-01/Accounts/{AccountSid}/IncomingPhoneNumbers/{Sid}.json": ["get", "post", "delete"],
    "/2010-04-01/Accounts/{AccountSid}/Recordings.json": ["get"],
    "/2010-04-01/Accounts/{AccountSid}/Recordings/{Sid}.json": ["get", "delete"],
}

METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")

OWN = os.path.join(os.path.dirname(os.path.abspath(__file__)), "callflow.json")

# callflow's error body, in callflow.json, for the operations Twilio's description gives none
ERROR = {"$ref": "#/components/responses/callflow.Error"}


def refs(node, found):
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref" and isinstance(v, str):
                found.add(v.rsplit("/", 1)[-1])
            else:
                refs(v, found)
    elif isinstance(node, list):
        for v in node:
            refs(v, found)


def merge(into, more, what):
    """Adds `more` to `into`; a name in both is a mistake in one of the sources."""
    for k, v in more.items():
        if k in into:
            sys.exit(f"build.py: {what} {k} is in both Twilio's description and callflow.json")
        into[k] = v


def main(src):
    spec = json.load(open(src))
    own = json.load(open(OWN))
    paths = {}
    for path, ops in SERVED.items():
        item = spec["paths"][path]
        # Twilio's per-path `servers` (its own host) would override ours.
        kept = {k: v for k, v in item.items() if k in ops or (k not in METHODS and k != "servers")}
        for k in ops:
            kept[k]["responses"].setdefault("default", ERROR)
        paths[path] = kept
    merge(paths, own["paths"], "path")
    schemas = spec["components"]["schemas"]
    keep = set()
    refs(paths, keep)
    refs(own["components"], keep)
    while True:
        more = set()
        for name in keep:
            refs(schemas.get(name, {}), more)
        if more <= keep:
            break
        keep |= more
    spec["paths"] = paths
    spec["components"]["schemas"] = {k: v for k, v in schemas.items() if k in keep}
    for section, items in own["components"].items():
        merge(spec["components"].setdefault(section, {}), items, section)
    used = {t for item in paths.values() for k, op in item.items() if k in METHODS for t in op.get("tags", [])}
    tags = [t for t in spec.get("tags", []) if t["name"] in used] + own["tags"]
    spec["tags"] = sorted(tags, key=lambda t: t["name"])
    spec["servers"] = [{"url": "/"}]
    spec["info"] = {
        "title": "callflow: Twilio-compatible 2010-04-01 API and callflow's own /v1 API",
        "version": "0.1.0",
        "description": "The parts of Twilio's 2010-04-01 REST API that callflow serves, derived from "
        "Twilio's OpenAPI description (twilio/twilio-oai, MIT License, Copyright (C) 2023 Twilio, Inc.), "
        "and callflow's own API: /v1 (plugins, plugin bindings and invocations, a call's events, "
        "callouts with their participants and results), /health, /metrics and this document. "
        "Every route the server answers is described here.",
        "license": {"name": "MIT (the Twilio description this is derived from)"},
    }
    json.dump(spec, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
