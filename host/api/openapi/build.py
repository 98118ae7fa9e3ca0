#!/usr/bin/env python3
"""Derives callflow's /openapi.json from Twilio's own OpenAPI description (MIT licensed).

Keeps the paths and operations callflow serves, drops the rest and the schemas nothing references,
and states the origin. Run: python3 host/api/openapi/build.py ../shared/reference/twilio_api_v2010.subset.json
"""
import json
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


def main(src):
    spec = json.load(open(src))
    paths = {}
    for path, ops in SERVED.items():
        item = spec["paths"][path]
        paths[path] = {k: v for k, v in item.items() if k in ops or k not in ("get", "post", "delete", "put")}
    schemas = spec["components"]["schemas"]
    keep = set()
    refs(paths, keep)
    while True:
        more = set()
        for name in keep:
            refs(schemas.get(name, {}), more)
        if more <= keep:
            break
        keep |= more
    spec["paths"] = paths
    spec["components"]["schemas"] = {k: v for k, v in schemas.items() if k in keep}
    spec["servers"] = [{"url": "/"}]
    spec["info"] = {
        "title": "callflow: Twilio-compatible 2010-04-01 API",
        "version": "0.1.0",
        "description": "The parts of Twilio's 2010-04-01 REST API that callflow serves. Derived from "
        "Twilio's OpenAPI description (twilio/twilio-oai, MIT License, Copyright (C) 2023 Twilio, Inc.).",
        "license": {"name": "MIT (the Twilio description this is derived from)"},
    }
    json.dump(spec, sys.stdout, indent=1, sort_keys=True)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main(sys.argv[1])
