"""A RapidPro simulator for the end-to-end tests: mailroom's side of the TW ("Somleng") channel,
and the RapidPro web API route that starts flows.

What it plays, from /work/shared/reference/rapidpro-contract.md (RapidPro's own source):

- The HTTPS callback server mailroom runs (`POST /mr/ivr/c/{channel}/{handle|status|incoming}`),
  with a certificate for `localhost` and 127.0.0.1 from a test CA (`TestCA`, made with `trustme`)
  that callflow is told to trust (`[webhooks] ca_file`). Every request is checked as mailroom
  checks it (POST, form-urlencoded, `X-Twilio-Signature` as `twCalculateSignature` computes it,
  `CallSid`, `CallStatus` on resumes) and recorded with the outcome; the answer is TwiML written
  exactly as mailroom writes it (Go's `encoding/xml`: two-space indented flow documents, one-line
  error and empty documents, open/close pairs for empty elements, comments under `<Response>`).
  What a call hears is a per-test `Flow`: a document for the start (or an incoming call), then
  one per resume, chosen by `wait_type` (and `timeout=true` / `empty=true`).
- Mailroom as a client of callflow (`RapidProSim.start_call`, `hangup_call`, and the recording
  download inside a Record resume): exactly the requests mailroom sends, with its headers.
- The RapidPro web API's `POST /api/v2/flow_starts.json` (token auth, JSON), with a failure mode
  (the first N requests answer 500) to test a client's retries.

Every wait is bounded; the server listens on loopback only.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import http.server
import json
import re
import ssl
import threading
import time
import urllib.parse
import uuid as uuidlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional, Union

import requests

from harness import free_port, serve, shut_down, wait_until

ERROR_MESSAGE = "An error has occurred, please try again later."
XML_HEADER = '<?xml version="1.0" encoding="UTF-8"?>\n'
FORM = "application/x-www-form-urlencoded"
# mailroom's maps (services/ivr/twiml/service.go)
DIAL_STATUSES = {"completed", "answered", "busy", "no-answer", "failed", "canceled"}
IVR_ROUTE = re.compile(
    r"^/mr/ivr/c/(?P<channel>[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12})"
    r"/(?P<kind>handle|status|incoming)$"
)
FLOW_STARTS = "/api/v2/flow_starts.json"
# mailroom retries a recording download 45 times, 1 s apart (core/ivr/resumes.go)
DOWNLOAD_TRIES = 45
DOWNLOAD_SLEEP_S = 1.0


# -- the test CA ---------------------------------------------------------------------------------


class TestCA:
    """A throwaway certificate authority and a server certificate for `localhost` and 127.0.0.1.

    `ca_file` is the PEM callflow is told to trust (`[webhooks] ca_file`); `server_context()` is
    what the simulator serves with."""

    __test__ = False  # not a pytest test class, despite its name

    __test__ = False  # not a pytest test class

    def __init__(self, directory: Path):
        import trustme

        self._ca = trustme.CA(organization_name="callflow e2e test CA")
        self._cert = self._ca.issue_cert("localhost", "127.0.0.1")
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        self.ca_file = directory / "rapidpro-test-ca.pem"
        self._ca.cert_pem.write_to_path(str(self.ca_file))

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self._cert.configure_cert(ctx)
        return ctx

    def webhooks_toml(self, timeout_ms: int = 70000) -> str:
        """callflow's `[webhooks]` table for talking to the simulator: this CA, loopback allowed,
        and a timeout above mailroom's 60 s."""
        return (
            "\n[webhooks]\n"
            "allow_private = true\n"
            f"timeout_ms = {timeout_ms}\n"
            f'ca_file = "{self.ca_file}"\n'
        )


# -- TwiML exactly as mailroom writes it ---------------------------------------------------------


def go_escape(text: str) -> str:
    """Go's `xml.EscapeText` (used for character data and attribute values alike)."""
    out = []
    for ch in text:
        out.append(
            {
                '"': "&#34;",
                "'": "&#39;",
                "&": "&amp;",
                "<": "&lt;",
                ">": "&gt;",
                "\t": "&#x9;",
                "\n": "&#xA;",
                "\r": "&#xD;",
            }.get(ch, ch)
        )
    return "".join(out)


@dataclass
class El:
    """One TwiML element: a tag, attributes in mailroom's order, and text or children."""

    tag: str
    attrs: list = field(default_factory=list)  # [(name, value)], None values left out
    text: Optional[str] = None
    children: list = field(default_factory=list)

    def render(self, indent: Optional[str], depth: int) -> str:
        attrs = "".join(f' {k}="{go_escape(str(v))}"' for k, v in self.attrs if v is not None)
        head = f"<{self.tag}{attrs}>"
        if self.children:
            inner = "".join(_line(indent, depth + 1) + c.render(indent, depth + 1) for c in self.children)
            return head + inner + _line(indent, depth) + f"</{self.tag}>"
        return head + go_escape(self.text or "") + f"</{self.tag}>"


@dataclass
class Comment:
    text: str

    def render(self, indent: Optional[str], depth: int) -> str:
        return f"<!--{self.text}-->"


def _line(indent: Optional[str], depth: int) -> str:
    return "" if indent is None else "\n" + indent * depth


def say(text: str, language: Optional[str] = "en-US") -> El:
    return El("Say", [("language", language)], text=text)


def play(url: str) -> El:
    return El("Play", text=url)


def redirect(url: str) -> El:
    return El("Redirect", text=url)


def hangup() -> El:
    return El("Hangup")


def reject() -> El:
    return El("Reject")


def gather(action: str, *prompts: El, num_digits=None, finish_on_key=None, timeout=30) -> El:
    """mailroom's Gather: numDigits, finishOnKey, timeout, action (in that order), prompts inside."""
    attrs = [
        ("numDigits", num_digits),
        ("finishOnKey", finish_on_key),
        ("timeout", timeout),
        ("action", action),
    ]
    return El("Gather", attrs, children=list(prompts))


def record(action: str, max_length: int = 600) -> El:
    return El("Record", [("action", action), ("maxLength", max_length)])


def dial(action: str, number: str, timeout: int = 60, time_limit: int = 7200) -> El:
    return El("Dial", [("action", action), ("timeout", timeout), ("timeLimit", time_limit)], text=number)


def response(*commands, comment: Optional[str] = None, indent: bool = True) -> str:
    """A whole document: `xml.Header`, then `<Response>` (MarshalIndent with two spaces when
    `indent`, else Marshal). An empty comment is left out, as Go does."""
    children = ([Comment(comment)] if comment else []) + list(commands)
    root = El("Response", children=children)
    ind = "  " if indent else None
    if not children:
        return XML_HEADER + "<Response></Response>"
    return XML_HEADER + root.render(ind, 0)


def gather_doc(resume_url: str, *prompts: El, num_digits=None, finish_on_key=None, timeout=30) -> str:
    """A flow waiting for digits, as `ResponseForSprint` writes it: the Gather, then a Redirect
    to the same resume URL with `&timeout=true`."""
    action = resume_url + "&wait_type=gather"
    return response(
        gather(action, *prompts, num_digits=num_digits, finish_on_key=finish_on_key, timeout=timeout),
        redirect(action + "&timeout=true"),
    )


def record_doc(resume_url: str, *prompts: El) -> str:
    """A flow waiting for a recording: the prompts, Record (maxLength 600), Redirect `&empty=true`."""
    action = resume_url + "&wait_type=record"
    return response(*prompts, record(action), redirect(action + "&empty=true"))


def dial_doc(resume_url: str, number: str, *prompts: El, timeout=60, time_limit=7200) -> str:
    return response(*prompts, dial(resume_url + "&wait_type=dial", number, timeout, time_limit))


def hangup_doc(*prompts: El) -> str:
    """The end of a flow: its last messages, then Hangup."""
    return response(*prompts, hangup())


def error_doc(message: str) -> str:
    """mailroom's `WriteErrorResponse`: one line, the error as a comment (`--` becomes `__`)."""
    return response(say(ERROR_MESSAGE, language=None), hangup(), comment=message.replace("--", "__"), indent=False)


def empty_doc(message: str) -> str:
    """mailroom's `WriteEmptyResponse`: `<Response><!--message--></Response>` on one line."""
    return response(comment=message.replace("--", "__"), indent=False)


def reject_doc() -> str:
    """mailroom's `WriteRejectResponse`: `<Response><Reject></Reject></Response>`."""
    return response(reject(), indent=False)


# -- signatures ----------------------------------------------------------------------------------


def tw_signature(url: str, form: list, auth_token: str) -> str:
    """mailroom's `twCalculateSignature`: the URL, then each key (sorted byte-wise) followed by
    each of its values in the order received; HMAC-SHA1; standard Base64."""
    by_key: dict = {}
    for k, v in form:
        by_key.setdefault(k, []).append(v)
    data = url + "".join(k + "".join(by_key[k]) for k in sorted(by_key, key=lambda s: s.encode()))
    mac = hmac.new(auth_token.encode(), data.encode(), hashlib.sha1).digest()
    return base64.b64encode(mac).decode()


# -- what the simulator records ------------------------------------------------------------------


@dataclass
class Channel:
    """A TW channel as RapidPro stores it: our account's credentials, the channel's address (a
    number of the account), and `send_url` (callflow's base URL; mailroom appends the API path)."""

    account_sid: str
    auth_token: str
    address: str
    send_url: str
    uuid: str = field(default_factory=lambda: str(uuidlib.uuid4()))
    machine_detection: bool = False


@dataclass
class Reply:
    """A non-TwiML answer from a flow step, e.g. mailroom's 400 JSON for an unknown channel."""

    status: int
    body: str
    content_type: str = "application/json"


@dataclass
class Download:
    """One GET of `{RecordingUrl}.mp3` made while handling a Record resume."""

    url: str
    status: Optional[int]
    content_type: str = ""
    length: int = 0
    error: str = ""
    authorized: bool = True


@dataclass
class SimRequest:
    """A request the simulator received, and what it made of it."""

    method: str
    target: str  # RequestURI: path and query as received
    path: str
    route: str  # handle | status | incoming | flow_starts | other
    channel: Optional[str]
    query: list  # [(k, v)] of the query string
    form: list  # [(k, v)] of the form body (r.PostForm)
    headers: dict  # lower-cased names
    body: bytes
    received_at: float  # time.monotonic() once the request line and headers were read
    host: str
    signature_valid: Optional[bool] = None  # None where no signature is expected
    problems: list = field(default_factory=list)  # contract checks that failed
    status: int = 0  # what we answered
    answer: str = ""
    call_uuid: Optional[str] = None
    step: Optional[str] = None  # start, incoming, gather, gather_timeout, record, ...
    downloads: list = field(default_factory=list)  # [Download] (Record resumes)
    answered_at: float = 0.0

    @property
    def params(self) -> dict:
        """r.Form as mailroom reads it: body values first, then the query's (first one wins)."""
        merged: dict = {}
        for k, v in self.form + self.query:
            merged.setdefault(k, v)
        return merged

    @property
    def form_dict(self) -> dict:
        return dict(self.form)

    @property
    def valid(self) -> bool:
        return bool(self.signature_valid)


@dataclass
class SimCall:
    """A call as mailroom's `ivr_call` row sees it."""

    uuid: str
    channel: Channel
    urn: str  # tel:+...
    direction: str  # "O" outbound, "I" inbound
    status: str = "P"  # P pending, W wired, I in progress, D completed, E errored, F failed
    external_id: Optional[str] = None  # our CallSid
    error_reason: Optional[str] = None
    duration: Optional[int] = None
    started_request_at: float = 0.0  # the driver sent Calls.json
    wired_at: float = 0.0  # the driver had the 201 and its sid
    events: list = field(default_factory=list)  # (time, what)


@dataclass
class StartResult:
    """What `start_call` got back from callflow's Calls.json."""

    call: SimCall
    status_code: int
    body: str
    json: Optional[dict]
    sid: Optional[str]
    sent_at: float
    responded_at: float
    request_body: str
    request_headers: dict
    url: str


@dataclass
class FlowStart:
    """A `POST /api/v2/flow_starts.json` the simulator received."""

    received_at: float
    headers: dict
    body: bytes
    json: Optional[dict]
    status: int
    authorized: bool
    answer: Optional[dict] = None


Step = Union[str, Reply, Callable[["StepContext"], Union[str, Reply]]]


@dataclass
class StepContext:
    sim: "RapidProSim"
    call: SimCall
    request: SimRequest
    resume_url: str


class Flow:
    """The documents a test's voice flow answers with.

    Steps: `start` (outbound start), `incoming` (an incoming call; without it, mailroom's
    "missed call handled"), and the resumes `gather`, `gather_timeout`, `record`, `record_empty`,
    `dial`. A step is a TwiML string, a `Reply`, a function of a `StepContext` returning either,
    or a list of those used in turn (the last one repeats). A step the flow lacks ends the call
    the way a finished flow does: `<Hangup>`.
    """

    def __init__(self, **steps: Union[Step, list]):
        unknown = set(steps) - {"start", "incoming", "gather", "gather_timeout", "record", "record_empty", "dial"}
        if unknown:
            raise ValueError(f"unknown flow steps {sorted(unknown)}")
        self.steps = steps
        self._used: dict = {}
        self._lock = threading.Lock()

    def has(self, name: str) -> bool:
        return name in self.steps

    def answer(self, name: str, ctx: StepContext) -> Union[str, Reply]:
        step = self.steps.get(name)
        if step is None:
            return hangup_doc()
        if isinstance(step, list):
            with self._lock:
                i = self._used.get(name, 0)
                self._used[name] = i + 1
            step = step[min(i, len(step) - 1)]
        if callable(step):
            return step(ctx)
        return step


# -- the simulator -------------------------------------------------------------------------------


class RapidProSim:
    """mailroom's callback server, mailroom's client calls, and RapidPro's flow-starts API.

        sim = RapidProSim(ca).start()
        channel = sim.add_channel(Channel(sid, token, "+15005550006", callflow.base_url))
        sim.flow = Flow(start=lambda c: hangup_doc(say("Hello", "en-US")))
        started = sim.start_call(channel, "+15551230000")
    """

    def __init__(self, ca: TestCA, port: Optional[int] = None, api_token: str = "sim-token"):
        self.ca = ca
        self.port = port or free_port()
        self.api_token = api_token
        self.flow = Flow()
        self.channels: dict = {}
        # The token mailroom checks signatures with, per channel (defaults to the channel's own;
        # set a wrong one to play a channel configured with another token).
        self.validation_tokens: dict = {}
        self.calls: dict = {}  # uuid -> SimCall
        self.requests: list = []
        self.flow_starts: list = []
        self.flow_start_failures = 0  # the first N flow starts answer 500
        self.flow_start_failure_status = 500
        self.starts: list = []  # [StartResult]
        self._lock = threading.Lock()
        self._server = None
        self._thread = None

    # -- addresses ------------------------------------------------------------------------------

    @property
    def domain(self) -> str:
        """mailroom's callback domain for the channel (`callback_domain`)."""
        return f"localhost:{self.port}"

    @property
    def base_url(self) -> str:
        return f"https://{self.domain}"

    def handle_url(self, channel: Channel, call_uuid: str, action: str = "start") -> str:
        return f"https://{self.domain}/mr/ivr/c/{channel.uuid}/handle?action={action}&call={call_uuid}"

    def resume_url(self, channel: Channel, call_uuid: str) -> str:
        return self.handle_url(channel, call_uuid, "resume")

    def status_url(self, channel: Channel) -> str:
        return f"https://{self.domain}/mr/ivr/c/{channel.uuid}/status"

    def incoming_url(self, channel: Channel) -> str:
        return f"https://{self.domain}/mr/ivr/c/{channel.uuid}/incoming"

    def add_channel(self, channel: Channel, validation_token: Optional[str] = None) -> Channel:
        self.channels[channel.uuid] = channel
        if validation_token is not None:
            self.validation_tokens[channel.uuid] = validation_token
        return channel

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> "RapidProSim":
        if self._server is not None:
            return self
        sim = self
        context = self.ca.server_context()

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def _handle(self):
                received_at = time.monotonic()
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                status, ctype, payload = sim._dispatch(self, body, received_at)
                data = payload.encode() if isinstance(payload, str) else payload
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Connection", "close")
                self.close_connection = True
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_PUT = do_DELETE = do_HEAD = do_PATCH = _handle

            def log_message(self, format, *args):
                pass

        class Server(http.server.ThreadingHTTPServer):
            allow_reuse_address = True
            daemon_threads = True

            def get_request(self):
                sock, addr = self.socket.accept()
                sock.settimeout(30)
                return context.wrap_socket(sock, server_side=True, do_handshake_on_connect=False), addr

            def finish_request(self, request, client_address):
                try:
                    request.do_handshake()
                except (ssl.SSLError, OSError):
                    return  # a client that does not trust us, or went away
                super().finish_request(request, client_address)

            def handle_error(self, request, client_address):
                pass  # clients hanging up mid-request are not our failures

        self._server, self._thread = serve(Server(("127.0.0.1", self.port), Handler))
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        shut_down(server, self._thread)
        self._thread = None

    def __enter__(self) -> "RapidProSim":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- queries for tests ----------------------------------------------------------------------

    def requests_to(self, route: str, call_uuid: Optional[str] = None) -> list:
        with self._lock:
            return [
                r
                for r in self.requests
                if r.route == route and (call_uuid is None or r.call_uuid == call_uuid)
            ]

    def all_requests(self) -> list:
        with self._lock:
            return list(self.requests)

    def call_by_sid(self, sid: str) -> Optional[SimCall]:
        with self._lock:
            for call in self.calls.values():
                if call.external_id == sid:
                    return call
        return None

    def status_callbacks(self, sid: Optional[str] = None) -> list:
        return [r for r in self.requests_to("status") if sid is None or r.form_dict.get("CallSid") == sid]

    def wait_for(self, predicate: Callable[[], object], timeout: float = 20.0, interval: float = 0.05):
        return wait_until(predicate, timeout, interval)

    def wait_final_status(self, sid: str, timeout: float = 20.0) -> Optional[SimRequest]:
        """The status callback of `sid` (bounded wait), or None."""
        got = wait_until(lambda: self.status_callbacks(sid), timeout, 0.05)
        return got[0] if got else None

    def problems(self) -> list:
        """Every contract check that failed on any request, as (route, target, problem)."""
        return [(r.route, r.target, p) for r in self.all_requests() for p in r.problems]

    # -- mailroom as callflow's client ----------------------------------------------------------

    @staticmethod
    def _client_headers(channel: Channel) -> dict:
        auth = base64.b64encode(f"{channel.account_sid}:{channel.auth_token}".encode()).decode()
        return {
            # What Go's net/http sends with mailroom's postRequest.
            "User-Agent": "Go-http-client/1.1",
            "Authorization": f"Basic {auth}",
            "Content-Type": FORM,
            "Accept": "application/json",
            "Accept-Encoding": "gzip",
        }

    @staticmethod
    def _go_encode(form: dict) -> str:
        """Go's `url.Values.Encode()`: keys sorted, QueryEscape'd."""
        return urllib.parse.urlencode(sorted(form.items()))

    def start_call(
        self, channel: Channel, to: str, send_url: Optional[str] = None, call_uuid: Optional[str] = None
    ) -> StartResult:
        """mailroom's `RequestCall`: POST `{send_url}/2010-04-01/Accounts/{sid}/Calls.json` with
        To, From, Url, StatusCallback (and MachineDetection=Enable when the channel has it).
        On a 201 with a `sid` (and no `"status":"failed"`) the call is wired (W) with that sid;
        anything else fails it (F), as mailroom does."""
        base = channel.send_url if send_url is None else send_url
        call = SimCall(uuid=call_uuid or str(uuidlib.uuid4()), channel=channel, urn=f"tel:{to}", direction="O")
        with self._lock:
            self.calls[call.uuid] = call
        form = {
            "To": to,
            "From": channel.address,
            "Url": self.handle_url(channel, call.uuid),
            "StatusCallback": self.status_url(channel),
        }
        if channel.machine_detection:
            form["MachineDetection"] = "Enable"
        url = base + f"/2010-04-01/Accounts/{channel.account_sid}/Calls.json"
        body = self._go_encode(form)
        headers = self._client_headers(channel)
        call.started_request_at = time.monotonic()
        resp = requests.post(url, data=body, headers=headers, timeout=30)
        responded_at = time.monotonic()
        parsed = None
        try:
            parsed = resp.json()
        except ValueError:
            pass
        sid = parsed.get("sid") if isinstance(parsed, dict) else None
        with self._lock:
            if resp.status_code == 201 and sid and parsed.get("status") != "failed":
                call.external_id = sid
                call.status = "W"
                call.wired_at = responded_at
            else:
                call.status = "F"
            call.events.append((responded_at, f"Calls.json {resp.status_code}"))
        result = StartResult(
            call=call,
            status_code=resp.status_code,
            body=resp.text,
            json=parsed,
            sid=sid,
            sent_at=call.started_request_at,
            responded_at=responded_at,
            request_body=body,
            request_headers=headers,
            url=url,
        )
        with self._lock:
            self.starts.append(result)
        return result

    def hangup_call(self, channel: Channel, sid: str, send_url: Optional[str] = None) -> requests.Response:
        """mailroom's `HangupCall`: POST `Calls/{sid}.json` with `Status=completed` (it expects
        exactly 200, and marks its call F whatever the answer)."""
        base = channel.send_url if send_url is None else send_url
        url = base + f"/2010-04-01/Accounts/{channel.account_sid}/Calls/{sid}.json"
        resp = requests.post(
            url, data=self._go_encode({"Status": "completed"}), headers=self._client_headers(channel), timeout=30
        )
        call = self.call_by_sid(sid)
        if call is not None:
            with self._lock:
                call.status = "F"
                call.events.append((time.monotonic(), f"hangup {resp.status_code}"))
        return resp

    def _download(self, channel: Channel, url: str) -> list:
        """mailroom's recording download: GET with Basic auth until a 200 (45 tries, 1 s apart)."""
        attempts = []
        for i in range(DOWNLOAD_TRIES):
            try:
                resp = requests.get(
                    url,
                    auth=(channel.account_sid, channel.auth_token),
                    headers={"User-Agent": "Go-http-client/1.1"},
                    timeout=30,
                )
                attempts.append(
                    Download(url, resp.status_code, resp.headers.get("Content-Type", ""), len(resp.content))
                )
                if resp.status_code == 200:
                    break
            except requests.RequestException as exc:
                attempts.append(Download(url, None, error=str(exc)))
            time.sleep(DOWNLOAD_SLEEP_S)
        return attempts

    # -- mailroom's callback server -------------------------------------------------------------

    def _dispatch(self, handler, body: bytes, received_at: float):
        raw_target = handler.path
        split = urllib.parse.urlsplit(raw_target)
        headers = {k.lower(): v for k, v in handler.headers.items()}
        ctype = (headers.get("content-type") or "").split(";")[0].strip().lower()
        form = urllib.parse.parse_qsl(body.decode("utf-8", "replace"), True) if ctype == FORM else []
        match = IVR_ROUTE.match(split.path)
        route = match.group("kind") if match else ("flow_starts" if split.path == FLOW_STARTS else "other")
        req = SimRequest(
            method=handler.command,
            target=raw_target,
            path=split.path,
            route=route,
            channel=match.group("channel") if match else None,
            query=urllib.parse.parse_qsl(split.query, True),
            form=form,
            headers=headers,
            body=body,
            received_at=received_at,
            host=headers.get("host", ""),
        )
        if route == "handle":
            req.call_uuid = req.params.get("call")  # known even when the signature fails
        try:
            if route == "flow_starts":
                status, ctype_out, payload = self._flow_start(req)
            elif route == "other":
                status, ctype_out, payload = 404, "text/plain; charset=utf-8", "404 page not found\n"
                req.problems.append(f"unknown path {split.path}")
            elif req.method != "POST":
                # mailroom's routes are POST only
                status, ctype_out, payload = 405, "text/plain; charset=utf-8", ""
                req.problems.append(f"{req.method} instead of POST")
            else:
                status, ctype_out, payload = self._ivr(req, ctype)
        except Exception as exc:  # a bug in a test's flow must not hang callflow
            req.problems.append(f"simulator error: {exc!r}")
            status, ctype_out, payload = 500, "text/plain", f"simulator error: {exc!r}"
        req.status = status
        req.answer = payload if isinstance(payload, str) else payload.decode("utf-8", "replace")
        req.answered_at = time.monotonic()
        with self._lock:
            self.requests.append(req)
        return status, ctype_out, payload

    def _xml(self, doc: str):
        # mailroom sets no Content-Type; Go's sniffer calls this text/xml
        return 200, "text/xml; charset=utf-8", doc

    def _ivr(self, req: SimRequest, ctype: str):
        channel = self.channels.get(req.channel)
        if channel is None:
            # writeGenericErrorResponse: before any TwiML, a JSON 400
            err = {"error": f"no active channel with uuid: {req.channel}"}
            return 400, "application/json", json.dumps(err)
        if ctype != FORM:
            req.problems.append(f"content type {ctype!r}, not {FORM}")
        # ValidateRequestSignature
        actual = req.headers.get("x-twilio-signature")
        token = self.validation_tokens.get(channel.uuid, channel.auth_token)
        url = f"https://{req.host}{req.headers.get('x-forwarded-path') or req.target}"
        if not actual:
            req.signature_valid = False
            return self._xml(error_doc("request failed signature validation: missing request signature header"))
        expected = tw_signature(url, req.form, token)
        req.signature_valid = hmac.compare_digest(expected, actual)
        if not req.signature_valid:
            return self._xml(
                error_doc(f"request failed signature validation: invalid request signature: {actual}")
            )
        if req.route == "incoming":
            return self._incoming(channel, req)
        if req.route == "status":
            return self._status(channel, req)
        return self._handle(channel, req)

    def _incoming(self, channel: Channel, req: SimRequest):
        params = req.params
        tel = params.get("Caller") or params.get("From") or ""
        if not re.fullmatch(r"\+[1-9][0-9]{6,14}", tel):
            req.problems.append(f"Caller/From {tel!r} is not an E.164 number")
            return self._xml(error_doc(f"unable to find URN in request: invalid phone number: {tel}"))
        sid = params.get("CallSid")
        if not sid:
            req.problems.append("no CallSid")
            return self._xml(error_doc("unable to get external id from request: no CallSid parameter found"))
        call = SimCall(uuid=str(uuidlib.uuid4()), channel=channel, urn=f"tel:{tel}", direction="I",
                       status="I", external_id=sid)
        with self._lock:
            self.calls[call.uuid] = call
        req.call_uuid = call.uuid
        req.step = "incoming"
        if not self.flow.has("incoming"):
            return self._xml(empty_doc("missed call handled"))
        ctx = StepContext(self, call, req, self.resume_url(channel, call.uuid))
        return self._answer(self.flow.answer("incoming", ctx))

    def _status(self, channel: Channel, req: SimRequest):
        params = req.params
        sid = params.get("CallSid")
        if not sid:
            req.problems.append("status callback without CallSid")
            return self._xml(error_doc("unable to get call id for request: no CallSid parameter found"))
        call = self.call_by_sid(sid)
        if call is None or call.channel.uuid != channel.uuid:
            return self._xml(empty_doc("unknown call, ignoring"))
        req.call_uuid = call.uuid
        status, reason, duration = self._status_for(req)
        with self._lock:
            call.events.append((req.received_at, f"status {params.get('CallStatus')}"))
            if call.status in ("E", "F"):
                return self._xml(empty_doc(f"status {status} ignored, already errored"))
            if status == "E":
                call.error_reason = reason
                if call.direction == "I":
                    call.status = "F"
                    return self._xml(empty_doc("no flow start found, status updated: F"))
                call.status = "E"
                return self._xml(empty_doc("status updated: E, next_attempt: (a retry would be scheduled)"))
            call.status = status
            if status == "D":
                call.duration = duration
        return self._xml(empty_doc(f"status updated: {status}"))

    def _status_for(self, req: SimRequest):
        """mailroom's `StatusForRequest`."""
        params = req.params
        status = params.get("CallStatus", "")
        if status in ("queued", "ringing"):
            return "W", None, 0
        if status in ("in-progress", "initiated"):
            return "I", None, 0
        if status == "completed":
            raw = params.get("CallDuration", "")
            try:
                duration = int(raw)
            except ValueError:
                req.problems.append(f"CallDuration {raw!r} is not an integer")
                duration = 0
            return "D", None, duration
        if status == "busy":
            return "E", "B", 0
        if status == "no-answer":
            return "E", "N", 0
        if status in ("canceled", "failed"):
            return "E", "P", 0
        req.problems.append(f"unknown CallStatus {status!r}")
        return "F", "P", 0

    def _handle(self, channel: Channel, req: SimRequest):
        params = req.params
        action, call_uuid = params.get("action"), params.get("call")
        if not action or not call_uuid:
            req.problems.append("handle without action or call")
            return 400, "application/json", json.dumps({"error": "IVR callback request failed validation"})
        with self._lock:
            call = self.calls.get(call_uuid)
        if call is None:
            req.problems.append(f"unknown call {call_uuid}")
            return 400, "application/json", json.dumps({"error": f"unable to load call {call_uuid}"})
        req.call_uuid = call.uuid
        if not params.get("CallSid"):
            req.problems.append("no CallSid")
        elif call.external_id and params["CallSid"] != call.external_id:
            req.problems.append(f"CallSid {params['CallSid']} is not the call's {call.external_id}")
        ctx = StepContext(self, call, req, self.resume_url(channel, call.uuid))
        if action == "start":
            req.step = "start"
            with self._lock:
                state = call.status
            if state not in ("W", "I"):
                # StartCall: the call must be wired (our 201 already stored) or in progress
                req.problems.append(f"start callback while the call is {state} (before the 201 was handled?)")
                with self._lock:
                    call.status = "F"
                return self._xml(error_doc(f"call in invalid state: {state}"))
            answered_by = params.get("AnsweredBy", "")
            if answered_by in ("machine_start", "fax"):
                with self._lock:
                    call.status, call.error_reason = "E", "M"
                return self._xml(error_doc("status updated: E, next_attempt: (a retry would be scheduled)"))
            with self._lock:
                call.status = "I"
            return self._answer(self.flow.answer("start", ctx))
        if action != "resume":
            return self._xml(error_doc(f"unknown action: {action}"))
        # ResumeCall
        with self._lock:
            state = call.status
        if state in ("E", "F"):
            return self._xml(error_doc("ending call due to previous status callback"))
        call_status = params.get("CallStatus")
        if call_status not in ("in-progress", "initiated"):
            req.problems.append(f"resume with CallStatus {call_status!r}")
            status, reason, duration = self._status_for(req)
            with self._lock:
                call.status, call.error_reason = status, reason
            return self._xml(error_doc("call completed"))
        wait_type = params.get("wait_type", "")
        if params.get("timeout") == "true":
            req.step = f"{wait_type}_timeout"
        elif params.get("empty") == "true":
            req.step = f"{wait_type}_empty"
        elif wait_type == "gather":
            req.step = "gather"
        elif wait_type == "record":
            req.step = "record" if params.get("RecordingUrl") else "record_empty"
            if params.get("RecordingUrl"):
                req.downloads = self._download(channel, params["RecordingUrl"] + ".mp3")
        elif wait_type == "dial":
            req.step = "dial"
            dial_status = params.get("DialCallStatus", "")
            duration = params.get("DialCallDuration", "")
            if dial_status not in DIAL_STATUSES:
                req.problems.append(f"DialCallStatus {dial_status!r}")
                with self._lock:
                    call.status = "F"
                return self._xml(error_doc(f"unknown Twilio DialCallStatus in callback: {dial_status}"))
            if duration and not re.fullmatch(r"-?[0-9]+", duration):
                req.problems.append(f"DialCallDuration {duration!r}")
                with self._lock:
                    call.status = "F"
                return self._xml(error_doc(f"invalid value for DialCallDuration: {duration}"))
        else:
            req.problems.append(f"unknown wait_type {wait_type!r}")
            with self._lock:
                call.status = "F"
            return self._xml(error_doc(f"unknown wait_type: {wait_type}"))
        if req.step not in ("gather", "gather_timeout", "record", "record_empty", "dial"):
            req.problems.append(f"unexpected resume {req.step}")
        return self._answer(self.flow.answer(req.step, ctx))

    def _answer(self, answer: Union[str, Reply]):
        if isinstance(answer, Reply):
            return answer.status, answer.content_type, answer.body
        return self._xml(answer)

    # -- RapidPro's web API ---------------------------------------------------------------------

    def _flow_start(self, req: SimRequest):
        auth = req.headers.get("authorization", "")
        authorized = auth == f"Token {self.api_token}"
        parsed = None
        try:
            parsed = json.loads(req.body.decode() or "null")
        except ValueError:
            pass
        record = FlowStart(req.received_at, req.headers, req.body, parsed, 0, authorized)
        with self._lock:
            index = len(self.flow_starts)
            self.flow_starts.append(record)  # counted at once: concurrent starts get their own turn
        if req.method != "POST":
            record.status = 405
            payload = {"detail": f'Method "{req.method}" not allowed.'}
        elif not authorized:
            record.status = 403
            payload = {"detail": "Invalid token."}
        elif index < self.flow_start_failures:
            record.status = self.flow_start_failure_status
            payload = {"detail": "Server Error (simulated)"}
        elif not isinstance(parsed, dict) or not parsed.get("flow"):
            record.status = 400
            payload = {"flow": ["This field is required."]}
        else:
            record.status = 201
            now = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
            payload = {
                "uuid": str(uuidlib.uuid4()),
                "flow": {"uuid": parsed["flow"], "name": "Simulated flow"},
                "status": "pending",
                "groups": [],
                "contacts": [],
                "urns": list(parsed.get("urns") or []),
                "restart_participants": True,
                "exclude_active": False,
                "extra": parsed.get("extra") or parsed.get("params") or {},
                "params": parsed.get("params") or parsed.get("extra") or {},
                "created_on": now,
                "modified_on": now,
            }
        record.answer = payload
        req.step = "flow_start"
        return record.status, "application/json", json.dumps(payload)

    def successful_flow_starts(self) -> list:
        with self._lock:
            return [f for f in self.flow_starts if f.status == 201]
